"""Sound calculators for the theoretical bounds of recent papers: pure, jit-compiled,
vmappable, float64-capable functions, one module per family.

- :mod:`~jaxbounds.bounds.pac_bayes`: PAC-Bayes, Occam, Catoni and exact binomial bounds.
- :mod:`~jaxbounds.bounds.measures`: Jiang et al.'s generalization measures
  (:mod:`~jaxbounds.bounds.spectral` for power-iteration spectral norms).
- :mod:`~jaxbounds.bounds.retrieval`: embedding-dimension limits of retrieval (LIMIT).
- :mod:`~jaxbounds.bounds.nuclear`: Matrix Nuclear-Norm and matrix entropy.

Modules are imported on first use: ``from jaxbounds.bounds import pac_bayes``.
"""

import importlib

_MODULES = ("measures", "nuclear", "pac_bayes", "retrieval", "spectral")
__all__ = list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"jaxbounds.bounds.{name}")
    raise AttributeError(f"module 'jaxbounds.bounds' has no attribute {name!r}")
