"""Fused Pallas kernels, each beside a plain-JAX reference of the same signature.

This package imports jax only, never ``jaxbounds``. Every kernel module registers itself in
:mod:`pallas_kernels.registry`, which ``experiments/gpu_check.py`` iterates.
"""

from pallas_kernels import registry

# The kernel functions are exported under names that differ from their modules', so that
# ``pallas_kernels.block_attention`` stays the module (its ``block_attention`` function is
# ``pallas_kernels.block_attention.block_attention``).
from pallas_kernels._backend import IMPLEMENTATIONS, resolve_implementation
from pallas_kernels.block_attention import (
    BlockAttentionBlockSizes,
    block_attention_reference,
    sampled_attention,
    sampled_attention_reference,
)
from pallas_kernels.dora import (
    DoRABlockSizes,
    dora_matmul,
    dora_matmul_reference,
)
from pallas_kernels.linear_attention import (
    LinearAttentionBlockSizes,
    causal_linear_attention,
    causal_linear_attention_reference,
)

__all__ = [
    "IMPLEMENTATIONS",
    "BlockAttentionBlockSizes",
    "DoRABlockSizes",
    "LinearAttentionBlockSizes",
    "block_attention_reference",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "dora_matmul",
    "dora_matmul_reference",
    "registry",
    "resolve_implementation",
    "sampled_attention",
    "sampled_attention_reference",
]
