"""Exact softmax attention: the reference that every faster attention is measured against.

For queries ``q [batch, n, heads, d]``, keys and values ``k, v [batch, m, heads, d_v]`` and
scale ``s`` (default ``1/√d``):

    logits_ij = s · q_i·k_j   (−∞ where masked: j > i when causal, or mask_ij False)
    lse_i     = log Σ_j exp(logits_ij)
    out_i     = Σ_j exp(logits_ij − lse_i) v_j

Computed in float32 (float64 for float64 inputs) whatever the input dtype; ``out`` is
returned in ``q.dtype`` and ``lse`` in the compute dtype, laid out ``[batch, n, heads]``.
A row with every key masked gets ``out = 0`` and
``lse = −∞`` (the identity of the log-sum-exp merge), never NaN. ``causal`` aligns the
first query with the first key (query ``i`` sees keys ``j ≤ i``), as
``jax.nn.dot_product_attention(is_causal=True)`` does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbounds import _checks

__all__ = ["softmax_attention"]


def softmax_attention(q, k, v, *, causal: bool = False, scale: float | None = None,
                      return_lse: bool = False, mask: jax.Array | None = None):
    """Exact attention ``softmax(s·q kᵀ) v``; with ``return_lse`` also the log-sum-exp.

    Args:
      q: ``[batch, n, heads, d]``. k: ``[batch, m, heads, d]``. v: ``[batch, m, heads, d_v]``.
      causal: mask keys after the query (``j > i``).
      scale: logit scale, default ``1/√d``.
      return_lse: also return ``lse [batch, n, heads]`` (float32, or float64).
      mask: optional boolean, broadcastable to ``[batch, heads, n, m]``; True keeps.
    """
    _checks.check_qkv(q, k, v)
    if mask is not None:
        _checks.check_array("mask", mask, ndim=4, kind=None)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    compute = jnp.promote_types(q.dtype, jnp.float32)  # float32, or float64 under x64
    logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(compute), k.astype(compute)) * scale
    keep = None
    if causal:
        n, m = q.shape[1], k.shape[1]
        keep = jnp.arange(m)[None, :] <= jnp.arange(n)[:, None]
        keep = keep[None, None]
    if mask is not None:
        keep = mask if keep is None else jnp.logical_and(keep, mask)
    if keep is not None:
        logits = jnp.where(keep, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    weights = jnp.exp(logits - jax.lax.stop_gradient(row_max))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    safe_total = jnp.where(total > 0, total, 1.0)
    probs = weights / safe_total
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v.astype(compute)).astype(q.dtype)
    if not return_lse:
        return out
    lse = jnp.where(
        total[..., 0] > 0, jnp.log(safe_total[..., 0]) + jax.lax.stop_gradient(row_max[..., 0]),
        -jnp.inf,
    )
    return out, jnp.transpose(lse, (0, 2, 1))
