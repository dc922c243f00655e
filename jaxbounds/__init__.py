"""jaxbounds: attention and adapter layers, Lipschitz transformers, verification and bound
calculators for JAX. Pure functions first; Flax modules and optax transforms are thin shells.
"""

from jaxbounds import adapters, bounds, data

__version__ = "0.1.0"
__all__ = ["adapters", "bounds", "data"]
