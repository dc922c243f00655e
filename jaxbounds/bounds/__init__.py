"""Sound calculators for the theoretical bounds of recent papers: pure, jit-compiled,
vmappable, float64-capable functions, one module per family.

- :mod:`~jaxbounds.bounds.pac_bayes`: PAC-Bayes, Occam, Catoni and exact binomial bounds.
- :mod:`~jaxbounds.bounds.measures`: Jiang et al.'s generalization measures
  (:mod:`~jaxbounds.bounds.spectral` for power-iteration spectral norms).
- :mod:`~jaxbounds.bounds.retrieval`: embedding-dimension limits of retrieval (LIMIT).
- :mod:`~jaxbounds.bounds.nuclear`: Matrix Nuclear-Norm and matrix entropy.
- :mod:`~jaxbounds.bounds.sensitivity`: leverage scores, Lewis weights, ℓp sensitivities.
- :mod:`~jaxbounds.bounds.sampling`: Christoffel, DPP and volume sampling, weighted LS.
- :mod:`~jaxbounds.bounds.svd`: concatenated-matrix SVD compression bounds and clustering.
- :mod:`~jaxbounds.bounds.privacy`: sparse regression under local differential privacy.

Modules are imported on first use: ``from jaxbounds.bounds import pac_bayes``.
"""

import importlib

_MODULES = (
    "measures", "nuclear", "pac_bayes", "privacy", "retrieval", "sampling", "sensitivity",
    "spectral", "svd",
)
__all__ = list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"jaxbounds.bounds.{name}")
    raise AttributeError(f"module 'jaxbounds.bounds' has no attribute {name!r}")
