"""``SelfAttention``: multi-head self-attention whose attention function is a switch.

    q = x W_q,  k = x W_k,  v = x W_v   (Dense ``query``, ``key``, ``value``: [d_in, F])
    y = attention(q, k, v) W_o          (Dense ``out``: [F, d_out])

with ``attention`` one of

* ``"softmax"``: exact softmax attention (:func:`~jaxbounds.attention.softmax.softmax_attention`);
* ``"nala"``: NaLaFormer norm-aware linear attention
  (:func:`~jaxbounds.attention.nalaformer.nala_attention`, default power scale and ε);
* ``"hyper"``: HyperAttention (:func:`~jaxbounds.attention.hyper.hyper_attention`).

With ``rope=True``, q and k are rotated by 1-D rotary position embeddings
(:func:`~jaxbounds.attention.rope.rope_1d`, the half-split pairing) before the attention
function, for every ``attention``.

The parameters are the four Dense layers and nothing else, whatever ``attention`` is: a
model trained with ``"softmax"`` can be re-instantiated with ``"hyper"`` for some layers and
applied to the same params (HyperAttention's "patch the last ℓ layers" experiment).

Randomness for ``"hyper"``: pass ``hyper_key=`` to ``__call__``, or let the module draw it
with ``self.make_rng("hyper")``, i.e. ``model.apply(params, x, rngs={"hyper": key})``. With
neither, the call raises a flax error naming the missing "hyper" rng collection.
"""

from __future__ import annotations

import flax.linen as nn
import jax

ATTENTIONS = ("softmax", "nala", "hyper")

__all__ = ["ATTENTIONS", "SelfAttention"]


class SelfAttention(nn.Module):
    """Multi-head self-attention, layout ``x [batch, seq, d_in] -> [batch, seq, d_out]``.

    Attributes:
      num_heads: number of heads; must divide ``qkv_features``.
      qkv_features: F, the width of q, k and v (head_dim = F / num_heads).
      attention: "softmax" | "nala" | "hyper" (never changes the param tree).
      causal: mask keys after the query.
      out_features: d_out, default d_in.
      use_bias: biases in the four Dense layers.
      block_size, sample_size, num_projections, min_seq_len: HyperAttention settings.
      implementation: kernel implementation for "nala" and "hyper" (None = default).
      rope: rotate q and k by 1-D RoPE (positions 0 … seq − 1) before attending.
    """

    num_heads: int
    qkv_features: int
    attention: str = "softmax"
    causal: bool = False
    out_features: int | None = None
    use_bias: bool = True
    block_size: int = 256
    sample_size: int = 256
    num_projections: int = 7
    min_seq_len: int = 4096
    implementation: str | None = None
    rope: bool = False

    @nn.compact
    def __call__(self, x, *, hyper_key: jax.Array | None = None):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
        if not isinstance(self.num_heads, int) or self.num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {self.num_heads!r}.")
        if self.qkv_features % self.num_heads:
            raise ValueError(f"qkv_features={self.qkv_features} must be divisible by "
                             f"num_heads={self.num_heads}.")
        if x.ndim != 3:
            raise ValueError(f"x must be [batch, seq, features], got shape {tuple(x.shape)}.")
        batch, seq, d_in = x.shape
        head_dim = self.qkv_features // self.num_heads
        dense = lambda width, name: nn.Dense(width, use_bias=self.use_bias, name=name)
        split = lambda t: t.reshape(batch, seq, self.num_heads, head_dim)
        q = split(dense(self.qkv_features, "query")(x))
        k = split(dense(self.qkv_features, "key")(x))
        v = split(dense(self.qkv_features, "value")(x))
        tables = None
        if self.rope:
            from jaxbounds.attention.rope import apply_rope, rope_1d

            tables = rope_1d(seq, head_dim)
            if self.attention != "nala":  # nala_attention rotates its features itself
                q, k = apply_rope(q, tables), apply_rope(k, tables)

        if self.attention == "softmax":
            from jaxbounds.attention.softmax import softmax_attention

            y = softmax_attention(q, k, v, causal=self.causal)
        elif self.attention == "nala":
            from jaxbounds.attention.nalaformer import nala_attention

            y = nala_attention(q, k, v, causal=self.causal, rope=tables,
                               implementation=self.implementation)
        else:
            from jaxbounds.attention.hyper import hyper_attention

            key = hyper_key if hyper_key is not None else self.make_rng("hyper")
            y = hyper_attention(q, k, v, key=key, causal=self.causal, block_size=self.block_size,
                                sample_size=self.sample_size,
                                num_projections=self.num_projections,
                                min_seq_len=self.min_seq_len,
                                implementation=self.implementation)
        y = y.astype(x.dtype).reshape(batch, seq, self.qkv_features)
        return dense(self.out_features or d_in, "out")(y)
