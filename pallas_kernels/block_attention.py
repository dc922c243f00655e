"""Flash-style softmax attention inside sorted blocks and against sampled keys, with the lse.

The two attention pieces of HyperAttention (Han et al., "HyperAttention: Long-context
Attention in Near-Linear Time", arXiv 2310.05869, Algorithm 3), each returning the output
*and* the log-sum-exp so that the caller can merge them:

(a) ``block_attention``: queries and keys already sorted (by sortLSH) and cut into aligned
    blocks of ``b``; query i attends only the keys of its own block ``⌊i/b⌋``:

        s_ij = c · q_i·k_j  for ⌊j/b⌋ = ⌊i/b⌋,   lse_i = log Σ_j exp s_ij,
        out_i = Σ_j exp(s_ij − lse_i) v_j.

(b) ``sampled_attention``: every query against the same m sampled keys ``k̃_s`` (per batch
    and head), where sample s carries the block ``β_s`` its key occupies in the sorted order;
    entries already covered by (a) are masked out (``β_s = ⌊i/b⌋``), and ``β_s < 0`` marks a
    padding sample that is always masked. A query with every sample masked gets out = 0 and
    lse = −∞ (the identity of the lse merge), never NaN. The caller adds log(n/m).

Layout is head-major: q, k [batch, heads, n, d], v [batch, heads, n, d_v]; samples
ks [batch, heads, m, d], vs [batch, heads, m, d_v], sample_block [batch, heads, m] int32;
out [batch, heads, n, d_v] in q's dtype, lse [batch, heads, n] float32. ``c`` defaults to
1/√d and multiplies q outside the kernel (so the kernel computes softmax(q kᵀ)).

Tiling. Batch and heads are flattened into the first grid axis. The forward grid is
(batch·heads, n / block_q): each program owns block_q queries, keeps the running max m_i,
sum l_i and a float32 accumulator, and loops over block_k-wide key tiles: the b keys of its
own block in (a), all m (padded) samples in (b). block_q divides b, so a query tile lies in
one sorted block and the block-membership test is a scalar comparison.

Backward (``jax.custom_vjp``, Pallas kernels). With the cotangents dO and dlse, and
Δ_i = Σ_d dO_i·O_i computed in XLA,

    P = exp(S − lse),  dP = dO Vᵀ,  dS = P ∘ (dP − (Δ − dlse)),
    dQ = c · dS K,  dK = c · dSᵀ Q,  dV = Pᵀ dO,

i.e. the usual flash-attention backward with Δ replaced by Δ − dlse (lse_i depends on s_ij
with ∂lse_i/∂s_ij = P_ij). Two kernels, as in FlashAttention-2: a dQ kernel over query tiles
and a dK/dV kernel over key tiles (in (b), over sample tiles, each looping over all
queries). jax's own Pallas ``mha`` cannot be reused: it refuses to differentiate when it
returns its residuals.

Heads dims are zero-padded to a power of two ≥ 16 and samples to a multiple of block_k
(padding samples get block −1), so the Triton lowering never reads out of bounds.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _backend, _checks, _tiling
from pallas_kernels.op import Op
from pallas_kernels.registry import KernelSpec, register

__all__ = [
    "BlockAttentionBlockSizes",
    "block_attention",
    "block_attention_reference",
    "sampled_attention",
    "sampled_attention_reference",
]

_F32 = jnp.float32
_NEG_INF = float("-inf")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockAttentionBlockSizes(_tiling.BlockSizes):
    """Tiles of the block/sampled attention kernels: powers of two, ≥ 16 (Triton's dot).

    ``block_q`` must divide the sorted block size b (a query tile never straddles two
    blocks); in (a), ``block_k`` must divide b too.
    """

    TILES = ("block_q", "block_k")
    block_q: int = 64
    block_k: int = 64

    @classmethod
    def default(cls, block_size: int, num_samples: int | None = None,
                head_dim: int = 64) -> BlockAttentionBlockSizes:
        """64 × 64 tiles, shrunk to b (and, for the samples, to the padded m)."""
        block_q = min(64, block_size)
        block_k = min(64, block_size) if num_samples is None else _tiling.fit(num_samples, 64)
        warps = 4 if head_dim <= 64 else 8
        return cls(block_q=block_q, block_k=block_k, num_warps=warps, num_stages=2)

    def validate(self, block_size: int | None = None, *, sampled: bool = False) -> None:
        """The tiles, and (given the sorted block size b) that they divide it."""
        super().validate()
        if block_size is not None:
            _checks.check_divides("block_sizes.block_q", self.block_q, "block_size",
                                  block_size)
            if not sampled:
                _checks.check_divides("block_sizes.block_k", self.block_k, "block_size",
                                      block_size)


# --- references ---------------------------------------------------------------------------


def _masked_softmax_with_lse(logits, keep, v):
    """out, lse of softmax over the last axis of logits [..., n, k], keep (bool or None)
    broadcastable to it, v [..., k, d_v]; safe for fully masked rows (out 0, lse −∞)."""
    if keep is not None:
        logits = jnp.where(keep, logits, -jnp.inf)
    row_max = jnp.max(logits, axis=-1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    weights = jnp.exp(logits - row_max)
    total = jnp.sum(weights, axis=-1, keepdims=True)
    safe_total = jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("...qk,...kd->...qd", weights / safe_total, v.astype(_F32))
    lse = jnp.where(total[..., 0] > 0, jnp.log(safe_total[..., 0]) + row_max[..., 0], -jnp.inf)
    return out, lse


def block_attention_reference(q, k, v, *, block_size: int, scale: float | None = None):
    """(out, lse) of exact attention inside aligned blocks of ``block_size``: plain jnp.

    q, k [B, H, n, d], v [B, H, n, d_v] (head-major, already sorted); n % block_size == 0.
    """
    _checks.check_block_inputs(q, k, v, block_size)
    batch, heads, n, _ = q.shape
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    nb = n // block_size
    blk = lambda x: x.reshape(batch, heads, nb, block_size, x.shape[-1]).astype(_F32)
    logits = jnp.einsum("bhnqd,bhnkd->bhnqk", blk(q) * scale, blk(k))
    out, lse = _masked_softmax_with_lse(logits, None, blk(v))
    return (out.reshape(batch, heads, n, v.shape[-1]).astype(q.dtype),
            lse.reshape(batch, heads, n))


def sampled_attention_reference(q, ks, vs, sample_block, *, block_size: int,
                                scale: float | None = None):
    """(out, lse) of every query against the sampled keys, masking samples in the query's
    own sorted block (``sample_block == i // block_size``) and padding (``< 0``): plain jnp.

    q [B, H, n, d]; ks [B, H, m, d]; vs [B, H, m, d_v]; sample_block int [B, H, m].
    """
    _checks.check_sampled_inputs(q, ks, vs, sample_block, block_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n = q.shape[2]
    logits = jnp.einsum("bhqd,bhkd->bhqk", q.astype(_F32) * scale, ks.astype(_F32))
    q_block = (jnp.arange(n) // block_size)[:, None]
    sb = sample_block[:, :, None, :]
    keep = (sb != q_block) & (sb >= 0)
    out, lse = _masked_softmax_with_lse(logits, keep, vs)
    return out.astype(q.dtype), lse


# --- kernels ------------------------------------------------------------------------------


def _keep_mask(kb, q_block):
    return (kb != q_block) & (kb >= 0)


def _fwd_kernel(q_ref, k_ref, v_ref, *rest, sampled, block_size, block_k, tf32):
    """One tile of block_q queries: online softmax over block_k-wide key tiles."""
    if sampled:
        kb_ref, o_ref, lse_ref = rest
    else:
        o_ref, lse_ref = rest
    q = q_ref[...]
    block_q = q.shape[0]
    num_k = k_ref.shape[0] // block_k
    q_block = pl.program_id(1) * block_q // block_size

    def body(j, carry):
        m_i, l_i, acc = carry
        cols = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[cols, :]
        v = v_ref[cols, :]
        s = _backend.dot(q, k, trans_b=True, tf32=tf32)
        if sampled:
            s = jnp.where(_keep_mask(kb_ref[cols], q_block)[None, :], s, _NEG_INF)
        m_new = jnp.maximum(m_i, jnp.max(s, axis=1))
        m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)
        p = jnp.exp(s - m_safe[:, None])
        alpha = jnp.exp(m_i - m_safe)
        l_new = alpha * l_i + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None] + _backend.dot(p.astype(v.dtype), v, tf32=tf32)
        return m_new, l_new, acc

    m0 = jnp.full((block_q,), _NEG_INF, _F32)
    l0 = jnp.zeros((block_q,), _F32)
    acc0 = jnp.zeros((block_q, o_ref.shape[-1]), _F32)
    m_i, l_i, acc = jax.lax.fori_loop(0, num_k, body, (m0, l0, acc0))
    positive = l_i > 0
    safe_l = jnp.where(positive, l_i, 1.0)
    o_ref[...] = (acc / safe_l[:, None]).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(positive, m_i + jnp.log(safe_l), _NEG_INF)


def _dq_kernel(q_ref, k_ref, v_ref, *rest, sampled, block_size, block_k, tf32):
    """dQ for one query tile: Σ over key tiles of dS K, dS = P ∘ (dP − (Δ − dlse))."""
    if sampled:
        kb_ref, do_ref, lse_ref, delta_ref, dq_ref = rest
    else:
        do_ref, lse_ref, delta_ref, dq_ref = rest
    q = q_ref[...]
    do = do_ref[...]
    lse = lse_ref[...]
    lse = jnp.where(lse == _NEG_INF, 0.0, lse)
    delta = delta_ref[...]
    block_q = q.shape[0]
    num_k = k_ref.shape[0] // block_k
    q_block = pl.program_id(1) * block_q // block_size

    def body(j, dq):
        cols = pl.ds(pl.multiple_of(j * block_k, block_k), block_k)
        k = k_ref[cols, :]
        v = v_ref[cols, :]
        s = _backend.dot(q, k, trans_b=True, tf32=tf32)
        p = jnp.exp(s - lse[:, None])
        if sampled:
            p = jnp.where(_keep_mask(kb_ref[cols], q_block)[None, :], p, 0.0)
        dp = _backend.dot(do, v, trans_b=True, tf32=tf32)
        ds = p * (dp - delta[:, None])
        return dq + _backend.dot(ds.astype(k.dtype), k, tf32=tf32)

    dq = jax.lax.fori_loop(0, num_k, body, jnp.zeros(q.shape, _F32))
    dq_ref[...] = dq.astype(dq_ref.dtype)


def _dkdv_kernel(q_ref, k_ref, v_ref, *rest, sampled, block_size, block_q, tf32):
    """dK, dV for one key tile: Σ over the query tiles that see it of dSᵀ Q and Pᵀ dO."""
    if sampled:
        kb_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest
    else:
        do_ref, lse_ref, delta_ref, dk_ref, dv_ref = rest
    k = k_ref[...]
    v = v_ref[...]
    num_q = q_ref.shape[0] // block_q
    if sampled:
        kb = kb_ref[...]

    def body(t, carry):
        dk, dv = carry
        rows = pl.ds(pl.multiple_of(t * block_q, block_q), block_q)
        q = q_ref[rows, :]
        do = do_ref[rows, :]
        lse = lse_ref[rows]
        lse = jnp.where(lse == _NEG_INF, 0.0, lse)
        delta = delta_ref[rows]
        s = _backend.dot(q, k, trans_b=True, tf32=tf32)
        p = jnp.exp(s - lse[:, None])
        if sampled:  # q_ref holds all n queries: tile t lies in sorted block t·block_q / b
            p = jnp.where(_keep_mask(kb, t * block_q // block_size)[None, :], p, 0.0)
        dv = dv + _backend.dot(p.astype(do.dtype), do, trans_a=True, tf32=tf32)
        dp = _backend.dot(do, v, trans_b=True, tf32=tf32)
        ds = p * (dp - delta[:, None])
        dk = dk + _backend.dot(ds.astype(q.dtype), q, trans_a=True, tf32=tf32)
        return dk, dv

    dk, dv = jax.lax.fori_loop(0, num_q, body,
                               (jnp.zeros(k.shape, _F32), jnp.zeros(v.shape, _F32)))
    dk_ref[...] = dk.astype(dk_ref.dtype)
    dv_ref[...] = dv.astype(dv_ref.dtype)


# --- pallas_call wrappers -----------------------------------------------------------------


def _keys_of_query_tile(sampled, nk, block_size, bq):
    """BlockSpecs, on a grid over query tiles, of the keys a tile sees (all nk samples, or
    the b keys of its sorted block) and of the sample blocks (none in (a))."""
    if sampled:
        key_spec = lambda width: pl.BlockSpec((None, nk, width), lambda b, i: (b, 0, 0))
        return key_spec, [pl.BlockSpec((None, nk), lambda b, i: (b, 0))]
    ratio = block_size // bq
    key_spec = lambda width: pl.BlockSpec((None, block_size, width),
                                          lambda b, i: (b, i // ratio, 0))
    return key_spec, []


def _call(kernel, part, kb, *, block_size, blocks, implementation, **kwargs):
    """The pallas_call of one kernel (``part`` of its name), for (a) or (b) after ``kb``."""
    sampled = kb is not None
    name = f"{'sampled' if sampled else 'block'}_attention_{part}"
    return _tiling.pallas_call(
        kernel, name=name, blocks=blocks, implementation=implementation, sampled=sampled,
        block_size=block_size, tf32=implementation == "triton", **kwargs)


def _fwd_pallas(q, k, v, kb, *, block_size, blocks, implementation):
    """q [G, n, d], k [G, nk, d], v [G, nk, dv] (kb [G, nk] when sampled) -> (o, lse)."""
    g, n, d = q.shape
    nk, dv = k.shape[1], v.shape[-1]
    bq = blocks.block_q
    key_spec, kb_specs = _keys_of_query_tile(kb is not None, nk, block_size, bq)
    return _call(
        _fwd_kernel, "fwd", kb, block_size=block_size, blocks=blocks,
        implementation=implementation, block_k=blocks.block_k, grid=(g, n // bq),
        in_specs=[pl.BlockSpec((None, bq, d), lambda b, i: (b, i, 0)), key_spec(d),
                  key_spec(dv), *kb_specs],
        out_specs=[pl.BlockSpec((None, bq, dv), lambda b, i: (b, i, 0)),
                   pl.BlockSpec((None, bq), lambda b, i: (b, i))],
        out_shape=[jax.ShapeDtypeStruct((g, n, dv), q.dtype),
                   jax.ShapeDtypeStruct((g, n), _F32)],
    )(*(x for x in (q, k, v, kb) if x is not None))


def _bwd_pallas(q, k, v, kb, do, lse, delta, *, block_size, blocks, implementation):
    """dq, dk, dv of the padded, flattened problem (delta already holds Δ − dlse)."""
    g, n, d = q.shape
    nk, dv_width = k.shape[1], v.shape[-1]
    bq, bk = blocks.block_q, blocks.block_k
    sampled = kb is not None
    args = tuple(x for x in (q, k, v, kb, do, lse, delta) if x is not None)
    common = dict(block_size=block_size, blocks=blocks, implementation=implementation)

    # dQ: grid over query tiles, each looping over its key tiles.
    key_spec, kb_specs = _keys_of_query_tile(sampled, nk, block_size, bq)
    q_tile = lambda width: pl.BlockSpec((None, bq, width), lambda b, i: (b, i, 0))
    row_tile = pl.BlockSpec((None, bq), lambda b, i: (b, i))
    dq = _call(
        _dq_kernel, "dq", kb, **common, block_k=bk, grid=(g, n // bq),
        in_specs=[q_tile(d), key_spec(d), key_spec(dv_width), *kb_specs, q_tile(dv_width),
                  row_tile, row_tile],
        out_specs=q_tile(d), out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    )(*args)

    # dK, dV: grid over key tiles, each looping over the query tiles that see it.
    if sampled:
        query_spec = lambda width: pl.BlockSpec((None, n, width), lambda b, j: (b, 0, 0))
        query_rows = pl.BlockSpec((None, n), lambda b, j: (b, 0))
        kb_specs = [pl.BlockSpec((None, bk), lambda b, j: (b, j))]
    else:
        ratio = block_size // bk
        query_spec = lambda width: pl.BlockSpec((None, block_size, width),
                                                lambda b, j: (b, j // ratio, 0))
        query_rows = pl.BlockSpec((None, block_size), lambda b, j: (b, j // ratio))
        kb_specs = []
    k_tile = lambda width: pl.BlockSpec((None, bk, width), lambda b, j: (b, j, 0))
    dk, dv = _call(
        _dkdv_kernel, "dkdv", kb, **common, block_q=bq, grid=(g, nk // bk),
        in_specs=[query_spec(d), k_tile(d), k_tile(dv_width), *kb_specs,
                  query_spec(dv_width), query_rows, query_rows],
        out_specs=[k_tile(d), k_tile(dv_width)],
        out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype),
                   jax.ShapeDtypeStruct(v.shape, v.dtype)],
    )(*args)
    return dq, dk, dv


# --- custom_vjp glue (flattened [G, n, d] arrays, already padded and scaled) --------------


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _fused(q, k, v, kb, block_size, blocks, implementation):
    return _fwd_pallas(q, k, v, kb, block_size=block_size, blocks=blocks,
                       implementation=implementation)


def _fused_fwd(q, k, v, kb, block_size, blocks, implementation):
    o, lse = _fwd_pallas(q, k, v, kb, block_size=block_size, blocks=blocks,
                         implementation=implementation)
    return (o, lse), (q, k, v, kb, o, lse)


def _fused_bwd(block_size, blocks, implementation, residuals, cotangents):
    q, k, v, kb, o, lse = residuals
    do, dlse = cotangents
    # Δ − dlse: the lse cotangent enters the backward only through Δ.
    delta = jnp.sum(do.astype(_F32) * o.astype(_F32), axis=-1) - dlse.astype(_F32)
    dq, dk, dv = _bwd_pallas(q, k, v, kb, do.astype(q.dtype), lse, delta,
                             block_size=block_size, blocks=blocks,
                             implementation=implementation)
    return dq, dk, dv, None


_fused.defvjp(_fused_fwd, _fused_bwd)


# --- implementations ----------------------------------------------------------------------


def _flatten_pad(x, width):
    batch, heads, n, d = x.shape
    x = x.reshape(batch * heads, n, d)
    return jnp.pad(x, ((0, 0), (0, 0), (0, width - d))) if width != d else x


def _run_fused(q, k, v, kb, *, block_size, scale, blocks, implementation):
    """Scale q, flatten batch·heads, pad the head dims, run the kernels, unpad."""
    batch, heads, n, d = q.shape
    dv = v.shape[-1]
    qs = (q.astype(_F32) * scale).astype(q.dtype)
    k_f, v_f = _flatten_pad(k, _tiling.width(d)), _flatten_pad(v, _tiling.width(dv))
    if kb is not None:  # pad the samples to the key tile; padding samples are always masked
        k_f, v_f = (_backend.pad_axis(x, 1, blocks.block_k) for x in (k_f, v_f))
        kb = kb.astype(jnp.int32).reshape(batch * heads, -1)
        kb = jnp.pad(kb, ((0, 0), (0, k_f.shape[1] - kb.shape[1])), constant_values=-1)
    o, lse = _fused(_flatten_pad(qs, _tiling.width(d)), k_f, v_f, kb, block_size, blocks,
                    implementation)
    return (o[..., :dv].reshape(batch, heads, n, dv), lse.reshape(batch, heads, n))


def _block_xla(q, k, v, *, block_size, scale, block_sizes):
    del block_sizes
    return block_attention_reference(q, k, v, block_size=block_size, scale=scale)


def _block_kernel_path(q, k, v, *, block_size, scale, block_sizes, implementation):
    blocks = block_sizes or BlockAttentionBlockSizes.default(block_size, head_dim=q.shape[-1])
    blocks.validate(block_size, sampled=False)
    return _run_fused(q, k, v, None, block_size=block_size, scale=scale, blocks=blocks,
                      implementation=implementation)


def _sampled_xla(q, ks, vs, sample_block, *, block_size, scale, block_sizes):
    del block_sizes
    return sampled_attention_reference(q, ks, vs, sample_block, block_size=block_size,
                                       scale=scale)


def _sampled_kernel_path(q, ks, vs, sample_block, *, block_size, scale, block_sizes,
                         implementation):
    blocks = block_sizes or BlockAttentionBlockSizes.default(block_size, ks.shape[2],
                                                             head_dim=q.shape[-1])
    blocks.validate(block_size, sampled=True)
    return _run_fused(q, ks, vs, sample_block, block_size=block_size, scale=scale,
                      blocks=blocks, implementation=implementation)


_dtype_of_q = lambda q, *_, **__: q.dtype
_BLOCK = Op.pallas("block_attention", xla=_block_xla, kernel=_block_kernel_path,
                   dtype_of=_dtype_of_q)
_SAMPLED = Op.pallas("sampled_attention", xla=_sampled_xla, kernel=_sampled_kernel_path,
                     dtype_of=_dtype_of_q)


# --- public functions ---------------------------------------------------------------------


def block_attention(q, k, v, *, block_size: int, scale: float | None = None,
                    block_sizes: BlockAttentionBlockSizes | None = None,
                    implementation: str | Sequence[str] | None = None):
    """(out, lse) of exact attention inside aligned blocks of the (sorted) sequence.

    Args:
      q, k: [batch, heads, n, d]; v: [batch, heads, n, d_v]; n % block_size == 0.
      block_size: b, a power of two (≥ 16 on the Pallas paths).
      scale: logit scale c, default 1/√d.
      block_sizes: kernel tiles; default :meth:`BlockAttentionBlockSizes.default`.
      implementation: "xla" | "triton" | "interpret", a sequence of them tried in order,
        or None (see :mod:`pallas_kernels.op`).

    Returns:
      out [batch, heads, n, d_v] in q's dtype, lse [batch, heads, n] float32.
      Differentiable in q, k, v, including through lse.
    """
    _checks.check_block_inputs(q, k, v, block_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _BLOCK(q, k, v, block_size=block_size, scale=scale, block_sizes=block_sizes,
                  implementation=implementation)


def sampled_attention(q, ks, vs, sample_block, *, block_size: int, scale: float | None = None,
                      block_sizes: BlockAttentionBlockSizes | None = None,
                      implementation: str | Sequence[str] | None = None):
    """(out, lse) of all queries against m sampled keys, masking samples in the query's own
    sorted block (``sample_block[s] == i // block_size``) and padding (``< 0``).

    Args:
      q: [batch, heads, n, d] sorted queries; ks [batch, heads, m, d]; vs [batch, heads, m,
        d_v]; sample_block: int [batch, heads, m], the sorted block of each sampled key.
      block_size, scale, block_sizes, implementation: as in :func:`block_attention`.

    Returns:
      out [batch, heads, n, d_v] in q's dtype and lse [batch, heads, n] float32, with out 0
      and lse −∞ for a query whose samples are all masked. The caller adds log(n/m) to lse
      to estimate the off-block mass. Differentiable in q, ks, vs (including through lse).
    """
    _checks.check_sampled_inputs(q, ks, vs, sample_block, block_size)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _SAMPLED(q, ks, vs, sample_block, block_size=block_size, scale=scale,
                    block_sizes=block_sizes, implementation=implementation)


# --- registration for gpu_check and the kernel tests -------------------------------------

_SHAPES = {  # (batch, heads, n, d, block_size, m); small: d and m not powers of two (padding)
    "small": (1, 1, 64, 24, 32, 40),
    "medium": (2, 4, 4096, 64, 256, 256),
    "large": (1, 8, 32768, 128, 256, 256),
}


def _make_block_inputs(dtype):
    def make(key, size):
        batch, heads, n, d, _, _ = _SHAPES[size]
        kq, kk, kv = jax.random.split(key, 3)
        shape = (batch, heads, n, d)
        return tuple(jax.random.normal(k_, shape, _F32).astype(dtype) for k_ in (kq, kk, kv))

    return make


def _make_sampled_inputs(dtype):
    def make(key, size):
        batch, heads, n, d, block_size, m = _SHAPES[size]
        kq, kk, kv, kb = jax.random.split(key, 4)
        q = jax.random.normal(kq, (batch, heads, n, d), _F32).astype(dtype)
        ks = jax.random.normal(kk, (batch, heads, m, d), _F32).astype(dtype)
        vs = jax.random.normal(kv, (batch, heads, m, d), _F32).astype(dtype)
        sample_block = jax.random.randint(kb, (batch, heads, m), 0, n // block_size)
        return q, ks, vs, sample_block

    return make


def _block_of(size_inputs):
    q = size_inputs[0]
    n = q.shape[2]
    return next(b for (_, _, n_, _, b, _) in _SHAPES.values() if n_ == n)


for _dtype, _rtol in ((jnp.float32, 1e-3), (jnp.bfloat16, 1e-2)):
    _name = jnp.dtype(_dtype).name
    register(KernelSpec(
        name=f"block_attention_{_name}",
        family="block_attention",
        make_inputs=_make_block_inputs(_dtype),
        run=lambda q, k, v, implementation: block_attention(
            q, k, v, block_size=_block_of((q,)), implementation=implementation),
        reference=lambda q, k, v: block_attention_reference(q, k, v,
                                                            block_size=_block_of((q,))),
        rtol={_name: _rtol},
        differentiable=True,
        diff_argnums=(0, 1, 2),
    ))
    register(KernelSpec(
        name=f"sampled_attention_{_name}",
        family="block_attention",
        make_inputs=_make_sampled_inputs(_dtype),
        run=lambda q, ks, vs, sb, implementation: sampled_attention(
            q, ks, vs, sb, block_size=_block_of((q,)), implementation=implementation),
        reference=lambda q, ks, vs, sb: sampled_attention_reference(
            q, ks, vs, sb, block_size=_block_of((q,))),
        rtol={_name: _rtol},
        differentiable=True,
        diff_argnums=(0, 1, 2),
    ))
