"""Parameter-efficient adapters (DoRA)."""

from jaxbounds.adapters import dora

__all__ = ["dora"]
