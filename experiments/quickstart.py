"""Quickstart: a tour of the framework on its embedded default.

It trains a small Lipschitz-certified character transformer on the bundled Shakespeare text
(Muon + the spectral hard cap, :mod:`experiments.lipschitz_transformer`), prints a generated
sample, the validation accuracy and the certified Lipschitz bound, and writes
``runs/quickstart/results.json``. About two minutes on a laptop CPU.
"""

from __future__ import annotations

from typing import Any

from experiments import lipschitz_transformer
from experiments._runner import RunConfig, write_results

BANNER = (
    "jaxbounds quickstart: a Lipschitz-certified transformer (Newhouse et al. 2025). "
    "The other tours: `python -m experiments list`."
)


def run(config: RunConfig, *, spec: lipschitz_transformer.TrainSpec | None = None
        ) -> dict[str, Any]:
    """Print the banner, train and certify the small model, write ``results.json``."""
    print(BANNER)
    print(f"results go to {config.run_dir}/\n")
    result = lipschitz_transformer.quickstart_run(spec, seed=config.seed)
    summary = {k: result[k] for k in ("val_accuracy", "val_loss", "lipschitz_bound",
                                      "per_layer", "sample", "seconds")}
    write_results(config.run_dir / "results.json", {"name": config.name, **summary})
    return summary
