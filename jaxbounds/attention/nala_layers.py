"""Flax shells over :func:`~jaxbounds.attention.nalaformer.nala_attention`: the NaLaFormer
attention block for sequences (1-D RoPE, causal or not) and for image tokens (2-D RoPE).

The block wrapper of the official NaLaFormer code (Meng et al., arXiv 2506.21137), for
tokens x ∈ [batch, N, C] with H heads of dim d = C/H:

    q, k, v, g = split(Linear(C → 4C)(x))
    o = nala_attention(q, k, v; RoPE)                     (per head)
    o = o + LePE(v)      depthwise conv: width 5 along the sequence (causal when causal),
                         5×5 on the image grid
    o = LayerNorm(o) · SiLU(g)
    y = Linear(C → C)(o)

LePE is the locally-enhanced positional encoding of CSWin (Dong et al., arXiv 2107.00652).
Parameter names: ``qkvg`` (Dense 4C), ``lepe`` (depthwise conv), ``norm`` (LayerNorm),
``out`` (Dense C).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbounds import _checks
from jaxbounds.attention.nalaformer import nala_attention
from jaxbounds.attention.rope import rope_1d, rope_2d

__all__ = ["NaLaAttention", "NaLaAttention2D"]


def _nala_block(module, x, spatial, rope, *, causal, lepe_kernel):
    """The shared body, called inside ``module``'s compact ``__call__`` (so its layers are
    ``module``'s children): x [B, N, C]; spatial: the token grid ((N,) or (h, w))."""
    batch, n, c = x.shape
    head_dim = c // module.num_heads
    qkvg = nn.Dense(4 * c, dtype=module.dtype, name="qkvg")(x)
    q, k, v, g = jnp.split(qkvg, 4, axis=-1)
    heads = lambda t: t.reshape(batch, n, module.num_heads, head_dim)
    o = nala_attention(heads(q), heads(k), heads(v), causal=causal, rope=rope,
                       power_scale=module.power_scale, eps=module.eps,
                       implementation=module.implementation, feature_map=module.feature_map)
    o = o.reshape(batch, n, c)
    # Causal LePE: left padding only, so token i sees tokens i-4..i.
    padding = [(lepe_kernel[0] - 1, 0)] if causal else "SAME"
    lepe = nn.Conv(c, lepe_kernel, padding=padding, feature_group_count=c,
                   dtype=module.dtype, name="lepe")
    o = o + lepe(v.reshape(batch, *spatial, c)).reshape(batch, n, c)
    o = nn.LayerNorm(dtype=module.dtype, name="norm")(o) * jax.nn.silu(g)
    return nn.Dense(c, dtype=module.dtype, name="out")(o)


class _NaLaOptions(nn.Module):
    """The fields both NaLa layers share (see :class:`NaLaAttention`)."""

    num_heads: int
    power_scale: float = 3.0
    eps: float = 1e-6
    rope_base: float = 10000.0
    implementation: str | Sequence[str] | None = None
    feature_map: str = "relu"
    dtype: jnp.dtype | None = None


class NaLaAttention(_NaLaOptions):
    """NaLaFormer attention over a sequence ``x [batch, seq, features]`` with 1-D RoPE.

    Attributes:
      num_heads: heads; ``features / num_heads`` must be even.
      causal: causal attention and a causal (left-padded) width-``lepe_width`` LePE.
      power_scale, eps, feature_map, implementation: passed to ``nala_attention``.
      rope_base: RoPE base frequency.
    """

    causal: bool = True
    lepe_width: int = 5

    @nn.compact
    def __call__(self, x):
        if x.ndim != 3:
            raise ValueError(f"x must be [batch, seq, features], got shape {x.shape}.")
        head_dim = _checks.check_heads(x.shape[-1], self.num_heads, 2)
        rope = rope_1d(x.shape[1], head_dim, base=self.rope_base)
        return _nala_block(self, x, (x.shape[1],), rope, causal=self.causal,
                           lepe_kernel=(self.lepe_width,))


class NaLaAttention2D(_NaLaOptions):
    """NaLaFormer attention over image tokens ``x [batch, height, width, features]`` with
    axial 2-D RoPE and a ``lepe_size × lepe_size`` depthwise LePE (non-causal).

    ``features / num_heads`` must be a multiple of 4 (2-D RoPE). Returns the same shape.
    """

    lepe_size: int = 5

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(
                f"x must be [batch, height, width, features], got shape {x.shape}.")
        batch, h, w, c = x.shape
        head_dim = _checks.check_heads(c, self.num_heads, 4)
        rope = rope_2d(h, w, head_dim, base=self.rope_base)
        y = _nala_block(self, x.reshape(batch, h * w, c), (h, w), rope, causal=False,
                        lepe_kernel=(self.lepe_size, self.lepe_size))
        return y.reshape(batch, h, w, c)
