"""Flax linen attention modules, thin shells over the pure attention functions.

- ``SelfAttention(num_heads, qkv_features, *, attention="softmax"|"nala"|"hyper", causal)``:
  one parameter tree for every attention type, so a trained model can be patched layer by
  layer (:mod:`jaxbounds.attention.self_attention`).
- ``NaLaAttention`` (sequence, 1-D RoPE) and ``NaLaAttention2D`` (image tokens, 2-D RoPE):
  the full NaLaFormer block wrapper (:mod:`jaxbounds.attention.nala_layers`).
"""

from jaxbounds.attention.nala_layers import NaLaAttention, NaLaAttention2D
from jaxbounds.attention.self_attention import SelfAttention

__all__ = ["NaLaAttention", "NaLaAttention2D", "SelfAttention"]
