"""Fused Pallas kernels, each one op with several implementations.

Each op (:func:`dora_matmul`, :func:`causal_linear_attention` and its sums,
:func:`block_attention`, :func:`sampled_attention`) takes ``implementation``: ``"xla"``,
``"triton"``, ``"interpret"``, a sequence of them tried in order, or None for the default
(see :mod:`pallas_kernels.op`). This package imports jax only, never ``jaxbounds``. Every
kernel registers itself in :mod:`pallas_kernels.registry`, which ``gpu_check`` iterates and
whose GPU records decide the default.
"""

from pallas_kernels import registry
from pallas_kernels._backend import cuda_available, device_kind

# The kernel functions are exported under names that differ from their modules', so that
# ``pallas_kernels.block_attention`` stays the module (its ``block_attention`` function is
# ``pallas_kernels.block_attention.block_attention``).
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
    causal_linear_attention_sums,
    causal_linear_attention_sums_reference,
)
from pallas_kernels.newton_schulz import newton_schulz_steps
from pallas_kernels.op import (
    ENV_VAR,
    IMPLEMENTATIONS,
    Op,
    default_implementation,
    implementation_sequence,
)

__all__ = [
    "ENV_VAR",
    "IMPLEMENTATIONS",
    "BlockAttentionBlockSizes",
    "DoRABlockSizes",
    "LinearAttentionBlockSizes",
    "Op",
    "block_attention_reference",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "causal_linear_attention_sums",
    "causal_linear_attention_sums_reference",
    "cuda_available",
    "default_implementation",
    "device_kind",
    "dora_matmul",
    "dora_matmul_reference",
    "implementation_sequence",
    "newton_schulz_steps",
    "registry",
    "sampled_attention",
    "sampled_attention_reference",
]
