"""HyperAttention: near-linear attention from sortLSH blocks plus a sampled residual.

Han, Kapralov, Woodruff, Zandieh, Karbasi et al., "HyperAttention: Long-context Attention in
Near-Linear Time", arXiv 2310.05869 (Algorithms 2–4). For q, k, v ``[batch, n, heads, d]``
and the scale c = 1/√d, with exact attention ``A = softmax(c·q kᵀ)`` written through its
unnormalised rows ``Σ_j e^{s_ij} v_j / Σ_j e^{s_ij}``:

1. **sortLSH** (:mod:`~jaxbounds.attention.lsh`). r shared random hyperplanes hash each
   query and key to a bucket; queries and keys are stable-sorted (separately) by the
   inverse-Gray-code rank of their bucket, so neighbouring buckets differ in one bit.
2. **Block-diagonal part, exact.** Sorted query block t attends exactly to sorted key
   block t (b keys): out_B, lse_B = log Σ_{j ∈ B(i)} e^{s_ij}
   (:func:`pallas_kernels.block_attention.block_attention`).
3. **Residual, sampled.** m key indices drawn uniformly with replacement; the samples in
   query i's own block are masked out (they are already in step 2) and
   lse_R = log Σ_{s ∉ B(i)} e^{s_{i,j_s}} + log(n/m), an unbiased estimate (in e^{lse})
   of the off-block mass Σ_{j ∉ B(i)} e^{s_ij}; out_R is the matching average of the
   sampled values (:func:`pallas_kernels.block_attention.sampled_attention`).
4. **Merge** by lse: lse = log(e^{lse_B} + e^{lse_R}),
   out = e^{lse_B − lse} out_B + e^{lse_R − lse} out_R; then undo the query sort.
5. **Causal** (Algorithm 4): split the sequence in halves; the two diagonal halves are
   causal problems of size n/2 (recursed on, the halves stacked as extra heads), the
   lower-left quarter (second-half queries, first-half keys) is non-causal, merged into
   the second half by lse. Any part of length ≤ ``min_seq_len`` is computed exactly.

What is exact and what is sampled: everything of length ≤ ``min_seq_len`` and the
block-diagonal part are exact; only the off-block mass (and its values) is sampled. With
``sample_size=0`` the result is exact attention restricted to the sorted blocks.

Randomness is one explicit key, split into a hyperplane key (one [d, r] matrix shared by
every batch, head, causal level and shard) and a sampling key. The samples of batch b and
head h come from ``fold_in(fold_in(sample_key, b + batch_offset), h + head_offset)`` (then
``fold_in`` by part for the causal recursion), so under ``shard_map`` over batch and heads
a shard that passes its global offsets draws exactly what the unsharded call draws.

Hashing, argsort and the gathers stay in XLA (the Triton lowering has no sort); only the
two attention pieces are Pallas kernels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from jaxbounds import _checks
from jaxbounds.attention import lsh
from jaxbounds.attention.softmax import softmax_attention
from pallas_kernels import implementation_sequence, sampled_attention
from pallas_kernels.block_attention import block_attention

__all__ = ["hyper_attention", "hyper_keys", "merge_lse", "per_head_keys", "sample_indices"]

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class _Config:
    block_size: int
    sample_size: int
    min_seq_len: int
    scale: float
    implementation: str | tuple[str, ...] | None


# --- small pieces (public for tests and for users who want to inspect a draw) --------------


def hyper_keys(key):
    """(hyperplane_key, sample_key) = the split of ``key`` used by :func:`hyper_attention`."""
    key = _as_typed_key(key)
    proj_key, sample_key = jax.random.split(key)
    return proj_key, sample_key


def _as_typed_key(key):
    if hasattr(key, "dtype") and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))


def per_head_keys(sample_key, batch: int, heads: int, batch_offset=0, head_offset=0):
    """[batch, heads] keys fold_in(fold_in(sample_key, b + batch_offset), h + head_offset):
    they depend on the *global* batch and head index only, not on the local shape."""
    b_idx = jnp.arange(batch) + batch_offset
    h_idx = jnp.arange(heads) + head_offset
    per_batch = jax.vmap(lambda b: jax.random.fold_in(sample_key, b))(b_idx)
    return jax.vmap(lambda kb: jax.vmap(lambda h: jax.random.fold_in(kb, h))(h_idx))(per_batch)


def sample_indices(keys, n: int, m: int) -> jax.Array:
    """int32 [*keys.shape, m]: m indices uniform on [0, n) with replacement, one row per key."""
    flat = keys.reshape(-1)
    idx = jax.vmap(lambda k: jax.random.randint(k, (m,), 0, n, dtype=jnp.int32))(flat)
    return idx.reshape(*keys.shape, m)


def _fold(keys, data: int):
    flat = keys.reshape(-1)
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(flat).reshape(keys.shape)


def merge_lse(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions by their log-sum-exp (safe when either is −∞).

    lse = log(e^{lse_a} + e^{lse_b}); out = e^{lse_a − lse}·out_a + e^{lse_b − lse}·out_b.
    Outputs [..., n, d_v], lse [..., n]; returns (out float32, lse float32).
    """
    lse_a = lse_a.astype(_F32)
    lse_b = lse_b.astype(_F32)
    top = jnp.maximum(lse_a, lse_b)
    top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
    wa = jnp.exp(lse_a - top)
    wb = jnp.exp(lse_b - top)
    total = wa + wb
    safe = jnp.where(total > 0, total, 1.0)
    out = (wa / safe)[..., None] * out_a.astype(_F32) + (wb / safe)[..., None] * out_b.astype(
        _F32)
    lse = jnp.where(total > 0, jnp.log(safe) + top, -jnp.inf)
    return out, lse


# --- the algorithm (head-major [batch, heads, n, d] inside) -------------------------------


def _exact(q, k, v, causal, scale):
    t = lambda x: jnp.swapaxes(x, 1, 2)
    out, lse = softmax_attention(t(q), t(k), t(v), causal=causal, scale=scale,
                                 return_lse=True)
    return t(out).astype(_F32), jnp.swapaxes(lse, 1, 2)


def _gather_rows(x, idx):
    """x [B, H, n, d], idx [B, H, m] -> x[b, h, idx[b, h]] of shape [B, H, m, d]."""
    return jnp.take_along_axis(x, idx[..., None], axis=2)


def _noncausal_parts(q, k, v, keys, planes, cfg: _Config):
    """The pieces of Algorithm 3 in *sorted query order*: a dict with the query and key
    permutations, (out_block, lse_block) and, when sample_size > 0, (out_res, lse_res) with
    lse_res already shifted by log(n/m). Requires n > min_seq_len handling by the caller."""
    n = q.shape[2]
    b = min(cfg.block_size, n)
    perm_q = lsh.sort_lsh_permutation(q, planes)
    perm_k = lsh.sort_lsh_permutation(k, planes)
    q_s, k_s, v_s = _gather_rows(q, perm_q), _gather_rows(k, perm_k), _gather_rows(v, perm_k)
    out, lse = block_attention(q_s, k_s, v_s, block_size=b, scale=cfg.scale,
                               implementation=cfg.implementation)
    parts = {"perm_q": perm_q, "perm_k": perm_k, "out_block": out.astype(_F32),
             "lse_block": lse}
    if cfg.sample_size > 0:
        m = cfg.sample_size
        idx = sample_indices(keys, n, m)
        sample_block = jnp.take_along_axis(lsh.inverse_permutation(perm_k), idx, axis=2) // b
        out_r, lse_r = sampled_attention(q_s, _gather_rows(k, idx), _gather_rows(v, idx),
                                         sample_block, block_size=b, scale=cfg.scale,
                                         implementation=cfg.implementation)
        parts.update(sample_idx=idx, sample_block=sample_block, out_res=out_r.astype(_F32),
                     lse_res=lse_r + math.log(n / m))
    return parts


def _noncausal(q, k, v, keys, planes, cfg: _Config):
    """HyperAttention without a mask (Algorithm 3); keys [B, H] per-head sampling keys."""
    if q.shape[2] <= cfg.min_seq_len:
        return _exact(q, k, v, False, cfg.scale)
    parts = _noncausal_parts(q, k, v, keys, planes, cfg)
    out, lse = parts["out_block"], parts["lse_block"]
    if "out_res" in parts:
        out, lse = merge_lse(out, lse, parts["out_res"], parts["lse_res"])
    inv_q = lsh.inverse_permutation(parts["perm_q"])
    return _gather_rows(out, inv_q), jnp.take_along_axis(lse, inv_q, axis=2)


def _causal(q, k, v, keys, planes, cfg: _Config):
    """Algorithm 4: recursion on the diagonal halves, non-causal lower-left quarter."""
    batch, heads, n, d = q.shape
    if n <= cfg.min_seq_len:
        return _exact(q, k, v, True, cfg.scale)
    half = n // 2
    stack = lambda x: x.reshape(batch, heads * 2, half, x.shape[-1])  # head h, half t -> 2h+t
    diag_keys = jnp.stack([_fold(keys, 1), _fold(keys, 2)], axis=-1).reshape(batch, heads * 2)
    out_d, lse_d = _causal(stack(q), stack(k), stack(v), diag_keys, planes, cfg)
    out_d = out_d.reshape(batch, heads, 2, half, -1)
    lse_d = lse_d.reshape(batch, heads, 2, half)
    out_off, lse_off = _noncausal(q[:, :, half:], k[:, :, :half], v[:, :, :half],
                                  _fold(keys, 0), planes, cfg)
    out_low, lse_low = merge_lse(out_d[:, :, 1], lse_d[:, :, 1], out_off, lse_off)
    return (jnp.concatenate([out_d[:, :, 0], out_low], axis=2),
            jnp.concatenate([lse_d[:, :, 0], lse_low], axis=2))


# --- public function ----------------------------------------------------------------------


def hyper_attention(q, k, v, *, key, causal: bool = False, block_size: int = 256,
                    sample_size: int = 256, num_projections: int = 7,
                    min_seq_len: int = 4096, return_lse: bool = False,
                    implementation: str | Sequence[str] | None = None, scale: float | None = None,
                    batch_offset=0, head_offset=0):
    """HyperAttention (Han et al. 2023): sortLSH blocks exact, the rest sampled.

    Args:
      q, k: ``[batch, n, heads, d]``; v: ``[batch, n, heads, d_v]`` (same n for all).
      key: a ``jax.random`` key (typed or raw uint32[2]); drives the hyperplanes and the
        samples (see :func:`hyper_keys`, :func:`per_head_keys`).
      causal: Algorithm 4 (recursion on halves) instead of Algorithm 3.
      block_size: b, a power of two; n (and, when causal, each recursion part longer than
        ``min_seq_len``) must be a multiple of it. A part shorter than b is one block.
        The Pallas paths need b ≥ 16.
      sample_size: m uniform key samples per (batch, head, part); 0 turns sampling off.
      num_projections: r hyperplanes (2^r buckets), at most 30.
      min_seq_len: parts of length ≤ this are computed exactly (the whole call if n ≤ it).
      return_lse: also return lse ``[batch, n, heads]`` (float32), the log of the estimated
        normaliser Σ_j e^{c·q_i·k_j}.
      implementation: for the two attention kernels (:func:`pallas_kernels.sampled_attention`
        and ``block_attention``): "xla" | "triton" | "interpret", a sequence of them tried in
        order, or None for their default.
        Hashing, sorting and gathers are XLA in every case, so all implementations see the
        same permutations and samples for the same key.
      scale: c, default 1/√d.
      batch_offset, head_offset: global index of this call's first batch row and head (ints
        or traced int scalars, e.g. from ``jax.lax.axis_index`` under ``shard_map``): the
        samples depend only on global indices, so shards reproduce the unsharded draw.

    Returns:
      out ``[batch, n, heads, d_v]`` in q's dtype, and with ``return_lse`` also lse.
      Differentiable in q, k, v (the permutation and the samples are piecewise constant).

    Raises:
      ValueError: for bad ranks or shapes, head dims that differ, a block_size that is not
        a power of two, n not a multiple of block_size, or bad counts.
      TypeError: for non-floating inputs or non-integer counts.
    """
    _checks.check_qkv(q, k, v, same_seq="(HyperAttention aligns sorted query and key blocks)")
    _checks.check_key("key", key)
    _checks.check_power_of_two("block_size", block_size)
    _checks.check_int("sample_size", sample_size, minimum=0)
    _checks.check_int("min_seq_len", min_seq_len, minimum=0)
    _checks.check_int("num_projections", num_projections, minimum=1,
                      maximum=lsh.MAX_PROJECTIONS)
    _checks.check_hyper_lengths(q.shape[1], block_size, min_seq_len, causal=causal)
    if implementation is not None:  # validated even when every part is exact
        implementation_sequence(implementation)
        implementation = implementation if isinstance(implementation, str) else tuple(
            implementation)
    d = q.shape[-1]
    scale = d ** -0.5 if scale is None else float(scale)
    batch, n, heads, _ = q.shape
    proj_key, sample_key = hyper_keys(key)
    planes = lsh.hyperplanes(proj_key, d, num_projections)
    keys = per_head_keys(sample_key, batch, heads, batch_offset, head_offset)
    cfg = _Config(block_size=block_size, sample_size=sample_size, min_seq_len=min_seq_len,
                  scale=scale, implementation=implementation)
    t = lambda x: jnp.swapaxes(x, 1, 2)
    run = _causal if causal else _noncausal
    out, lse = run(t(q), t(k), t(v), keys, planes, cfg)
    out = t(out).astype(q.dtype)
    if return_lse:
        return out, jnp.swapaxes(lse, 1, 2)
    return out
