"""jaxbounds: attention and adapter layers, Lipschitz transformers, verification and bound
calculators for JAX. Pure functions first; Flax modules and optax transforms are thin shells.

Every subpackage is reachable from the top-level import and loaded on first use::

    import jaxbounds
    jaxbounds.verify.interval_bounds(...)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_SUBPACKAGES = ("adapters", "attention", "bounds", "data", "lipschitz", "verify")
__all__ = list(_SUBPACKAGES)

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from jaxbounds import adapters, attention, bounds, data, lipschitz, verify  # noqa: F401


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        module = importlib.import_module(f"jaxbounds.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'jaxbounds' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_SUBPACKAGES))
