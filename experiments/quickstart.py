"""Quickstart: a tour of the framework on its embedded default.

For now the tour is the DoRA experiment (:mod:`experiments.dora`); its results go under
``runs/quickstart/`` (the run's own name).
"""

from __future__ import annotations

from typing import Any

from experiments import dora
from experiments._runner import RunConfig

BANNER = (
    "jaxbounds quickstart: for now, the tour is the DoRA experiment "
    "(`python -m experiments dora`)."
)


def run(config: RunConfig, *, settings: dora.DoRASettings | None = None) -> dict[str, Any]:
    """Print the banner and run the DoRA experiment with ``config`` (and ``settings``)."""
    print(BANNER)
    print(f"results go to {config.out_dir / config.name}/\n")
    return dora.run(config, settings=settings)
