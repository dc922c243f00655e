"""Rotary position embeddings (RoPE), 1-D for sequences and 2-D for image tokens.

Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (arXiv 2104.09864).
We use the "rotate half" pairing: feature ``j`` is rotated together with feature
``j + d/2`` by the angle ``θ_j · pos``, with ``θ_j = base^(−2j/d)``:

    rope(x)[j]       = x[j] cos(θ_j pos) − x[j + d/2] sin(θ_j pos)
    rope(x)[j + d/2] = x[j + d/2] cos(θ_j pos) + x[j] sin(θ_j pos)

The tables are a ``(sin, cos)`` pair, each shaped ``[seq, head_dim]`` (the layout that
``nala_attention(..., rope=...)`` takes), with the angle of pair ``j`` stored at both ``j``
and ``j + d/2``. In 2-D (Heo et al., "Rotary Position Embedding for Vision Transformer",
arXiv 2403.13298, the axial form), the first half of the pairs rotates with the row index
and the second half with the column index; tokens are in row-major order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbounds import _checks

__all__ = ["rope_1d", "rope_2d", "apply_rope"]


def _tables(angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    """angles [seq, d/2] -> (sin, cos), each [seq, d], pair angle at j and j + d/2."""
    full = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(full), jnp.cos(full)


def _frequencies(n_pairs: int, head_dim: int, base: float) -> jax.Array:
    return base ** (-2.0 * jnp.arange(n_pairs, dtype=jnp.float32) / head_dim)


def rope_1d(seq_len: int, head_dim: int, *, base: float = 10000.0, offset: int = 0):
    """``(sin, cos)`` tables, each float32 ``[seq_len, head_dim]``, for positions
    ``offset, ..., offset + seq_len − 1``."""
    _checks.check_multiple("head_dim", head_dim, 2, "for RoPE")
    if not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"seq_len must be a positive int, got {seq_len!r}.")
    pos = jnp.arange(seq_len, dtype=jnp.float32) + offset
    freqs = _frequencies(head_dim // 2, head_dim, base)
    return _tables(pos[:, None] * freqs[None, :])


def rope_2d(height: int, width: int, head_dim: int, *, base: float = 10000.0):
    """Axial 2-D ``(sin, cos)`` tables, each float32 ``[height * width, head_dim]``, for
    row-major image tokens. ``head_dim`` must be a multiple of 4."""
    _checks.check_multiple("head_dim", head_dim, 4, "for RoPE")
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}.")
    quarter = head_dim // 4
    freqs = _frequencies(quarter, head_dim // 2, base)
    rows = jnp.repeat(jnp.arange(height, dtype=jnp.float32), width)
    cols = jnp.tile(jnp.arange(width, dtype=jnp.float32), height)
    angles = jnp.concatenate([rows[:, None] * freqs, cols[:, None] * freqs], axis=-1)
    return _tables(angles)


def apply_rope(x: jax.Array, rope: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Rotate ``x`` ``[batch, seq, heads, head_dim]`` (or ``[seq, heads, head_dim]``) by the
    ``(sin, cos)`` tables ``[seq, head_dim]``. Computes in float32 (float64 for
    float64 ``x``), returns ``x.dtype``."""
    sin, cos = rope
    if sin.shape != cos.shape or sin.ndim != 2:
        raise ValueError(
            f"rope must be a (sin, cos) pair of equal [seq, head_dim] shapes, got "
            f"{sin.shape} and {cos.shape}."
        )
    if x.ndim < 3 or x.shape[-3] != sin.shape[0] or x.shape[-1] != sin.shape[1]:
        raise ValueError(
            f"rope tables of shape {sin.shape} do not match x of shape {x.shape}: expected "
            "[seq, head_dim] with x laid out [..., seq, heads, head_dim]."
        )
    if x.shape[-1] % 2:
        raise ValueError(f"head_dim must be even for RoPE, got {x.shape[-1]}.")
    compute = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.astype(compute)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    sin = sin.astype(compute)[:, None, :]
    cos = cos.astype(compute)[:, None, :]
    return (xf * cos + rotated * sin).astype(x.dtype)
