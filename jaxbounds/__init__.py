"""jaxbounds: attention and adapter layers, Lipschitz transformers, verification and bound
calculators for JAX. Pure functions first; Flax modules and optax transforms are thin shells.
"""

from jaxbounds import adapters

__version__ = "0.1.0"
__all__ = ["adapters"]
