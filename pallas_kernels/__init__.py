"""Fused Pallas kernels, each beside a plain-JAX reference of the same signature.

This package imports jax only, never ``jaxbounds``. Every kernel module registers itself in
:mod:`pallas_kernels.registry`, which ``experiments/gpu_check.py`` iterates.
"""

from pallas_kernels import registry
from pallas_kernels._backend import IMPLEMENTATIONS, resolve_implementation
from pallas_kernels.dora import (
    DoRABlockSizes,
    dora_matmul,
    dora_matmul_reference,
)

__all__ = [
    "IMPLEMENTATIONS",
    "DoRABlockSizes",
    "dora_matmul",
    "dora_matmul_reference",
    "registry",
    "resolve_implementation",
]
