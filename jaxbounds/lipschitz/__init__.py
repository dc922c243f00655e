"""Lipschitz-constrained transformers with certificates (Newhouse et al., arXiv 2507.13338).

- :mod:`~jaxbounds.lipschitz.constraints`: spectral normalise, hammer, weight decay, soft
  and hard caps, and the exact SVD clip.
- :mod:`~jaxbounds.lipschitz.optim`: the optax parameter projection.
- :mod:`~jaxbounds.lipschitz.certificate`: the model's certified Lipschitz bound.
- :mod:`~jaxbounds.lipschitz.transformer`: ``LipschitzMLP`` and ``LipschitzTransformer``.
- :mod:`~jaxbounds.lipschitz.muon`: Muon with the Newton–Schulz op (kernel or XLA).

Modules are imported on first use: ``from jaxbounds.lipschitz import constraints``.
"""

import importlib

_MODULES = ("certificate", "constraints", "muon", "optim", "transformer")
__all__ = list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"jaxbounds.lipschitz.{name}")
    raise AttributeError(f"module 'jaxbounds.lipschitz' has no attribute {name!r}")
