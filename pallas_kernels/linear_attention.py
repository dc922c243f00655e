"""Chunked causal linear attention with separate numerator and denominator features.

For each batch entry and head, with numerator features ``qn, kn ∈ [N, F]``, denominator
features ``qd, kd ∈ [N, F]``, values ``v ∈ [N, dv]`` and a carried state ``(S₀ ∈ [F, dv],
z₀ ∈ [F])``, the kernel computes the causal prefix sums

    S_i   = S₀ + Σ_{j≤i} kn_jᵀ v_j          num_i = qn_i · S_i        ∈ [dv]
    z_i   = z₀ + Σ_{j≤i} kd_j               den_i = qd_i · z_i        ∈ ℝ

and the final state ``(S_N, z_N)``. The normalised output of :func:`causal_linear_attention`
is ``o_i = num_i / (den_i + ε·c_i)`` with ``c_i = count₀ + i + 1`` the number of keys seen:
this is ``(num_i / c_i) / (den_i / c_i + ε)``, i.e. ε is added to the prefix *mean*, as in
NaLaFormer (Meng et al., arXiv 2506.21137). Separate numerator and denominator features are
what NaLaFormer needs (RoPE-rotated features above, unrotated ones below) and include plain
linear attention (Katharopoulos et al., arXiv 2006.16236) as ``qn = qd, kn = kd``.

Tiling (the chunked form, as in "Transformer Quality in Linear Time", arXiv 2202.10447, and
flash-linear-attention). One program per (batch, head) loops over chunks of C tokens
(``C = 64`` by default) in order, carrying ``S [F, dv]`` and ``z [F]`` in float32 registers
(the Triton lowering has no scratch memory and no sequential grid carry):

    num_c = (tril(qn_c kn_cᵀ)) v_c + qn_c S          den_c = rowsum(tril(qd_c kd_cᵀ)) + qd_c z
    S    += kn_cᵀ v_c                                z    += colsum(kd_c)

Time O(N·C·F + N·F·dv), memory O(N·(F + dv)) (no [N, F, dv] cumulative state).

Backward (``jax.custom_vjp``), two Pallas kernels. With cotangents ``dnum, dden`` (and
``dS_N, dz_N`` of the final state):

* forward scan (state ``S, z`` recomputed):
  ``dqn_c = tril(dnum_c v_cᵀ) kn_c + dnum_c Sᵀ``,  ``dqd_c = tril(dden_c 1ᵀ) kd_c + dden_c zᵀ``;
* reverse scan with ``R = dS_N + Σ_{later} qnᵀ dnum ∈ [F, dv]``, ``r = dz_N + Σ_{later} dden qd``:
  ``dv_c = tril(qn_c kn_cᵀ)ᵀ dnum_c + kn_c R``,  ``dkn_c = tril(dnum_c v_cᵀ)ᵀ qn_c + v_c Rᵀ``,
  ``dkd_c = tril(dden_c 1ᵀ)ᵀ qd_c + r``, and finally ``dS₀ = R``, ``dz₀ = r``.

Shapes and layout: features ``[batch, seq, heads, F]``, values ``[batch, seq, heads, dv]``
(the attention layout; the kernels read it in place), state ``S [batch, heads, F, dv]``,
``z [batch, heads, F]``. The sequence is zero-padded to a multiple of C (padded keys have
zero features, so they add nothing to S or z) and F, dv to powers of two ≥ 16 (Triton's dot).
Accumulation is float32 whatever the input dtype; num, den and the state are float32.
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

_F32 = jnp.float32

__all__ = [
    "LinearAttentionBlockSizes",
    "causal_linear_attention",
    "causal_linear_attention_reference",
    "causal_linear_attention_sums",
    "causal_linear_attention_sums_reference",
]


@dataclasses.dataclass(frozen=True, kw_only=True)
class LinearAttentionBlockSizes(_tiling.BlockSizes):
    """The chunk length (a power of two ≥ 16) and the Triton launch parameters."""

    TILES = ("chunk",)
    chunk: int = 64
    num_stages: int = 1
    tf32: bool = True  # TF32 tensor-core products for float32 operands (Triton only)

    @classmethod
    def default(cls, seq_len: int, features: int, value_dim: int) -> LinearAttentionBlockSizes:
        """Chunk 64, never above the (power-of-two rounded) sequence; 32 when the carried
        state [F, dv] is large (register pressure: the state lives in registers)."""
        chunk = _tiling.fit(seq_len, 64 if features * value_dim <= 128 * 128 else 32)
        num_warps = 4 if features * value_dim <= 64 * 64 else 8
        return cls(chunk=chunk, num_warps=num_warps)


# --- references ---------------------------------------------------------------------------


def _acc(*xs):
    """The accumulation dtype: float32, or float64 for float64 inputs (the XLA paths keep
    float64 end to end; the Pallas kernels accumulate in float32)."""
    return jnp.promote_types(jnp.result_type(*xs), _F32)


def _zero_state(qn, v):
    """Zero (S₀, z₀). Built from ``zeros_like`` of the inputs so that, under ``shard_map``,
    the state varies over the same mesh axes as they do (scan carries and Pallas calls
    require matching types)."""
    b, _, h, f = qn.shape
    acc = _acc(qn, v)
    like = jnp.zeros_like(qn[:, 0, :, :1] * v[:, 0, :, :1], dtype=acc)  # [B, H, 1]
    return (jnp.zeros((b, h, f, v.shape[-1]), acc) + like[..., None],
            jnp.zeros((b, h, f), acc) + like)


def causal_linear_attention_sums_reference(qn, kn, qd, kd, v, s0=None, z0=None):
    """The specification, quadratic in N: explicit causal weight matrices.

    Returns ``(num [B,N,H,dv], den [B,N,H], S [B,H,F,dv], z [B,H,F])``, all float32
    (float64 for float64 inputs).
    """
    if s0 is None or z0 is None:
        s0, z0 = _zero_state(qn, v)
    acc = _acc(qn, kn, qd, kd, v)
    f32 = lambda x: x.astype(acc)
    qn, kn, qd, kd, v = map(f32, (qn, kn, qd, kd, v))
    n = qn.shape[1]
    mask = jnp.tril(jnp.ones((n, n), bool))
    a = jnp.where(mask, jnp.einsum("bihf,bjhf->bhij", qn, kn), 0.0)
    b = jnp.where(mask, jnp.einsum("bihf,bjhf->bhij", qd, kd), 0.0)
    num = jnp.einsum("bhij,bjhv->bihv", a, v) + jnp.einsum("bihf,bhfv->bihv", qn, f32(s0))
    den = jnp.einsum("bhij->bih", b) + jnp.einsum("bihf,bhf->bih", qd, f32(z0))
    s = f32(s0) + jnp.einsum("bjhf,bjhv->bhfv", kn, v)
    z = f32(z0) + jnp.sum(kd, axis=1)
    return num, den, s, z


def _normalise(num, den, eps, count0):
    n = num.shape[1]
    acc = _acc(num, den)
    counts = jnp.asarray(count0, acc) + jnp.arange(1, n + 1, dtype=acc)
    return num / (den + jnp.asarray(eps, acc) * counts[None, :, None])[..., None]


def causal_linear_attention_reference(qn, kn, qd, kd, v, s0=None, z0=None, *, eps=1e-6,
                                      count=0):
    """Quadratic reference of :func:`causal_linear_attention`: ``(o, S, z)``, o in v.dtype."""
    num, den, s, z = causal_linear_attention_sums_reference(qn, kn, qd, kd, v, s0, z0)
    return _normalise(num, den, eps, count).astype(v.dtype), s, z


def _sums_xla(qn, kn, qd, kd, v, s0, z0, *, block_sizes):
    """The ``"xla"`` implementation: the chunked algorithm in plain JAX, linear in N.

    A ``lax.scan`` over chunks carries ``(S, z)``; each step computes its chunk's
    intra-chunk terms (a masked C×C product: quadratic only within the chunk), the
    inter-chunk terms ``qn_c·S``, ``qd_c·z``, and folds ``kn_cᵀ v_c`` into S. The step is
    checkpointed: the backward recomputes a chunk's C×C products instead of storing them, so
    what autodiff keeps is the inputs and the per-chunk carries ``[N/C, F, dv]``, never an
    ``[N, F, dv]`` cumulative state nor ``[N, C]`` weights.
    """
    b, n, h, _ = qn.shape
    dv = v.shape[-1]
    chunk = max(1, min(block_sizes.chunk, n))
    qn, kn, qd, kd, v = (_backend.pad_axis(x, 1, chunk) for x in (qn, kn, qd, kd, v))
    nc = qn.shape[1] // chunk
    # [b, nc·C, h, .] -> [nc, b, C, h, .] and back
    to_chunks = lambda x: jnp.swapaxes(x.reshape(b, nc, chunk, h, x.shape[-1]), 0, 1)
    acc = _acc(qn, kn, qd, kd, v, s0, z0)
    ein = functools.partial(jnp.einsum, preferred_element_type=acc)
    mask = jnp.tril(jnp.ones((chunk, chunk), bool))[None, None]

    def step(carry, x):
        """Chunk c: intra-chunk (masked C×C) terms, its queries against the state of chunks
        < c, then fold chunk c into the state."""
        s, z = carry
        qn_i, kn_i, qd_i, kd_i, v_i = x  # [b, C, h, .]
        a = jnp.where(mask, ein("bihf,bjhf->bhij", qn_i, kn_i), 0.0)
        num_i = ein("bhij,bjhv->bihv", a, v_i) + ein("bihf,bhfv->bihv", qn_i, s)
        bm = jnp.where(mask, ein("bihf,bjhf->bhij", qd_i, kd_i), 0.0)
        den_i = jnp.einsum("bhij->bih", bm) + ein("bihf,bhf->bih", qd_i, z)
        s = s + ein("bjhf,bjhv->bhfv", kn_i, v_i)
        z = z + jnp.sum(kd_i.astype(acc), axis=1)
        return (s, z), (num_i, den_i)

    xs = tuple(map(to_chunks, (qn, kn, qd, kd, v)))
    # "+ zeros_like": under shard_map the carry must vary over the mesh axes the inputs vary
    # over (a zero initial state is otherwise mesh-invariant and the scan rejects it).
    like = jnp.zeros_like(xs[0][0, :, 0, :, :1] * xs[4][0, :, 0, :, :1], dtype=acc)  # [b,h,1]
    init = (s0.astype(acc) + like[..., None], z0.astype(acc) + like)
    (s_fin, z_fin), (num, den) = jax.lax.scan(jax.checkpoint(step), init, xs)
    num = jnp.swapaxes(num, 0, 1).reshape(b, nc * chunk, h, dv)[:, :n]
    den = jnp.swapaxes(den, 0, 1).reshape(b, nc * chunk, h)[:, :n]
    return num, den, s_fin, z_fin


# --- kernels ------------------------------------------------------------------------------


def _tril(chunk):
    row = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0)
    col = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1)
    return col <= row


def _scan_chunks(seq_ref, chunk, tf32, step, init_refs, *, reverse=False):
    """``fori_loop`` over the chunks of one (batch, head) (``seq_ref`` has its rows), in
    reverse order when asked.

    ``step(rows, carry, mask, dot)`` gets the chunk's row slice, the float32 carry, the
    causal C×C mask and the block product; the carry starts from ``init_refs`` in float32.
    """
    num_chunks = seq_ref.shape[0] // chunk
    mask = _tril(chunk)
    dot = functools.partial(_backend.dot, tf32=tf32)

    def body(it, carry):
        c = num_chunks - 1 - it if reverse else it
        rows = pl.ds(pl.multiple_of(c * chunk, chunk), chunk)
        return step(rows, carry, mask, dot)

    init = tuple(ref[...].astype(_F32) for ref in init_refs)
    return jax.lax.fori_loop(0, num_chunks, body, init)


def _fold(kn, kd, v, s, z, dot):
    """The state after a chunk: S + knᵀ v, z + colsum(kd)."""
    return s + dot(kn, v, trans_a=True), z + jnp.sum(kd.astype(_F32), axis=0)


def _store(rows, **outputs):
    """Write each (ref, value) of ``outputs`` at ``rows`` in the ref's dtype."""
    for ref, value in outputs.values():
        ref[(rows,) + (slice(None),) * (len(ref.shape) - 1)] = value.astype(ref.dtype)


def _fwd_kernel(qn_ref, kn_ref, qd_ref, kd_ref, v_ref, s0_ref, z0_ref,
                num_ref, den_ref, s_ref, z_ref, *, chunk, tf32):
    """One (batch, head): loop over chunks carrying S [F, dv] and z [F] in float32."""

    def step(rows, carry, mask, dot):
        s, z = carry
        qn, kn, v = qn_ref[rows, :], kn_ref[rows, :], v_ref[rows, :]
        qd, kd = qd_ref[rows, :], kd_ref[rows, :]
        a = jnp.where(mask, dot(qn, kn, trans_b=True), 0.0)
        bmat = jnp.where(mask, dot(qd, kd, trans_b=True), 0.0)
        _store(rows, num=(num_ref, dot(a, v) + dot(qn, s)),
               den=(den_ref, jnp.sum(bmat, axis=1)
                    + jnp.sum(qd.astype(_F32) * z[None, :], axis=1)))
        return _fold(kn, kd, v, s, z, dot)

    s, z = _scan_chunks(qn_ref, chunk, tf32, step, (s0_ref, z0_ref))
    s_ref[...] = s.astype(s_ref.dtype)
    z_ref[...] = z.astype(z_ref.dtype)


def _bwd_dq_kernel(kn_ref, kd_ref, v_ref, dnum_ref, dden_ref, s0_ref, z0_ref,
                   dqn_ref, dqd_ref, *, chunk, tf32):
    """Forward scan: dqn = tril(dnum vᵀ) kn + dnum Sᵀ, dqd = tril(dden 1ᵀ) kd + dden zᵀ."""

    def step(rows, carry, mask, dot):
        s, z = carry
        kn, kd, v = kn_ref[rows, :], kd_ref[rows, :], v_ref[rows, :]
        dnum, dden = dnum_ref[rows, :], dden_ref[rows].astype(_F32)
        p = jnp.where(mask, dot(dnum, v, trans_b=True), 0.0)
        wd = jnp.where(mask, dden[:, None], 0.0)
        _store(rows, dqn=(dqn_ref, dot(p, kn) + dot(dnum, s, trans_b=True)),
               dqd=(dqd_ref, dot(wd, kd) + dden[:, None] * z[None, :]))
        return _fold(kn, kd, v, s, z, dot)

    _scan_chunks(kn_ref, chunk, tf32, step, (s0_ref, z0_ref))


def _bwd_dkv_kernel(qn_ref, kn_ref, qd_ref, v_ref, dnum_ref, dden_ref, ds_ref, dz_ref,
                    dkn_ref, dkd_ref, dv_ref, ds0_ref, dz0_ref, *, chunk, tf32):
    """Reverse scan with R = dS_N + Σ_later qnᵀ dnum and r = dz_N + Σ_later dden qd."""

    def step(rows, carry, mask, dot):
        big_r, r = carry
        qn, kn, qd, v = qn_ref[rows, :], kn_ref[rows, :], qd_ref[rows, :], v_ref[rows, :]
        dnum, dden = dnum_ref[rows, :], dden_ref[rows].astype(_F32)
        a = jnp.where(mask, dot(qn, kn, trans_b=True), 0.0)  # [i, j]
        p = jnp.where(mask, dot(dnum, v, trans_b=True), 0.0)  # [i, j]
        wd = jnp.where(mask, dden[:, None], 0.0)  # [i, j] = dden_i for j ≤ i
        _store(rows, dv=(dv_ref, dot(a, dnum, trans_a=True) + dot(kn, big_r)),
               dkn=(dkn_ref, dot(p, qn, trans_a=True) + dot(v, big_r, trans_b=True)),
               dkd=(dkd_ref, dot(wd, qd, trans_a=True) + r[None, :]))
        return (big_r + dot(qn, dnum, trans_a=True),
                r + jnp.sum(dden[:, None] * qd.astype(_F32), axis=0))

    big_r, r = _scan_chunks(qn_ref, chunk, tf32, step, (ds_ref, dz_ref), reverse=True)
    ds0_ref[...] = big_r.astype(ds0_ref.dtype)
    dz0_ref[...] = r.astype(dz0_ref.dtype)


# --- pallas_call wrappers (padded shapes) -----------------------------------------------------


def _specs(n, f, dv):
    seq_f = pl.BlockSpec((None, n, None, f), lambda b, h: (b, 0, h, 0))
    seq_v = pl.BlockSpec((None, n, None, dv), lambda b, h: (b, 0, h, 0))
    seq_1 = pl.BlockSpec((None, None, n), lambda b, h: (b, h, 0))
    state = pl.BlockSpec((None, None, f, dv), lambda b, h: (b, h, 0, 0))
    state_1 = pl.BlockSpec((None, None, f), lambda b, h: (b, h, 0))
    return seq_f, seq_v, seq_1, state, state_1


def _call(kernel, name, grid, in_specs, out_specs, out_shape, blocks, implementation):
    return _tiling.pallas_call(
        kernel, name=name, blocks=blocks, implementation=implementation, grid=grid,
        in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, chunk=blocks.chunk,
        tf32=implementation == "triton" and blocks.tf32)


def _fwd_pallas(qn, kn, qd, kd, v, s0, z0, blocks, implementation):
    b, n, h, f = qn.shape
    dv = v.shape[-1]
    seq_f, seq_v, seq_1, state, state_1 = _specs(n, f, dv)
    out_shape = [
        _backend.struct((b, n, h, dv), _F32, qn),
        _backend.struct((b, h, n), _F32, qn),
        _backend.struct((b, h, f, dv), _F32, qn),
        _backend.struct((b, h, f), _F32, qn),
    ]
    return _call(_fwd_kernel, "linear_attention_fwd", (b, h),
                 [seq_f, seq_f, seq_f, seq_f, seq_v, state, state_1],
                 [seq_v, seq_1, state, state_1], out_shape, blocks, implementation,
                 )(qn, kn, qd, kd, v, s0, z0)


def _bwd_pallas(qn, kn, qd, kd, v, s0, z0, dnum, dden, ds, dz, blocks, implementation):
    b, n, h, f = qn.shape
    dv = v.shape[-1]
    seq_f, seq_v, seq_1, state, state_1 = _specs(n, f, dv)
    sds = lambda x: _backend.struct(x.shape, x.dtype, x)
    dqn, dqd = _call(
        _bwd_dq_kernel, "linear_attention_bwd_dq", (b, h),
        [seq_f, seq_f, seq_v, seq_v, seq_1, state, state_1], [seq_f, seq_f],
        [sds(qn), sds(qd)], blocks, implementation,
    )(kn, kd, v, dnum, dden, s0, z0)
    dkn, dkd, dvv, ds0, dz0 = _call(
        _bwd_dkv_kernel, "linear_attention_bwd_dkv", (b, h),
        [seq_f, seq_f, seq_f, seq_v, seq_v, seq_1, state, state_1],
        [seq_f, seq_f, seq_v, state, state_1],
        [sds(kn), sds(kd), sds(v), _backend.struct(s0.shape, _F32, s0),
         _backend.struct(z0.shape, _F32, z0)],
        blocks, implementation,
    )(qn, kn, qd, v, dnum, dden, ds, dz)
    return dqn, dkn, dqd, dkd, dvv, ds0, dz0


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _sums_pallas(qn, kn, qd, kd, v, s0, z0, blocks, implementation):
    return _fwd_pallas(qn, kn, qd, kd, v, s0, z0, blocks, implementation)


def _sums_pallas_fwd(qn, kn, qd, kd, v, s0, z0, blocks, implementation):
    out = _fwd_pallas(qn, kn, qd, kd, v, s0, z0, blocks, implementation)
    return out, (qn, kn, qd, kd, v, s0, z0)


def _sums_pallas_bwd(blocks, implementation, residuals, cotangents):
    qn, kn, qd, kd, v, s0, z0 = residuals
    dnum, dden, ds, dz = cotangents
    return _bwd_pallas(qn, kn, qd, kd, v, s0, z0, dnum.astype(_F32), dden.astype(_F32),
                       ds.astype(_F32), dz.astype(_F32), blocks, implementation)


_sums_pallas.defvjp(_sums_pallas_fwd, _sums_pallas_bwd)


# --- public functions -----------------------------------------------------------------------


def _sums_kernel_path(qn, kn, qd, kd, v, s0, z0, *, block_sizes, implementation):
    b, n, h, f = qn.shape
    dv = v.shape[-1]
    chunk = block_sizes.chunk
    # Zero padding: sequence to the chunk (padded keys add nothing), F and dv to powers of
    # two >= 16 (Triton's dot and tl.arange); sliced off afterwards.
    f_p, dv_p = _tiling.width(f), _tiling.width(dv)
    pad_seq = lambda x, last: _backend.pad_axis(_backend.pad_axis(x, 1, chunk), 3, last)
    qn_p, kn_p, qd_p, kd_p = (pad_seq(x, f_p) for x in (qn, kn, qd, kd))
    v_p = pad_seq(v, dv_p)
    s0_p = _backend.pad_axis(_backend.pad_axis(s0.astype(_F32), 2, f_p), 3, dv_p)
    z0_p = _backend.pad_axis(z0.astype(_F32), 2, f_p)
    num, den, s, z = _sums_pallas(qn_p, kn_p, qd_p, kd_p, v_p, s0_p, z0_p, block_sizes,
                                  implementation)
    num = num[:, :n, :, :dv]
    den = jnp.transpose(den, (0, 2, 1))[:, :n]
    return num, den, s[:, :, :f, :dv], z[:, :, :f]


_SUMS = Op.pallas("causal_linear_attention", xla=_sums_xla, kernel=_sums_kernel_path,
                  dtype_of=lambda qn, *_, **__: qn.dtype)


def causal_linear_attention_sums(qn, kn, qd, kd, v, s0=None, z0=None, *,
                                 block_sizes: LinearAttentionBlockSizes | None = None,
                                 implementation: str | Sequence[str] | None = None):
    """Causal prefix sums ``(num, den, S_N, z_N)`` (see the module docstring).

    Args:
      qn, kn: ``[B, N, H, F]`` numerator features. qd, kd: ``[B, N, H, F]`` denominator
        features. v: ``[B, N, H, dv]``. s0, z0: optional initial state ``[B, H, F, dv]`` and
        ``[B, H, F]`` (zeros when omitted).
      block_sizes: the chunk; default :meth:`LinearAttentionBlockSizes.default`. Any N works:
        the sequence is zero-padded to a multiple of the chunk.
      implementation: "xla" (a checkpointed chunked scan in JAX) | "triton" | "interpret",
        a sequence of them tried in order, or None (see :mod:`pallas_kernels.op`).

    Returns:
      ``num [B, N, H, dv]``, ``den [B, N, H]``, ``S [B, H, F, dv]``, ``z [B, H, F]``, all
      float32. Differentiable in every argument.
    """
    _checks.check_linear_attention_inputs(qn, kn, qd, kd, v, s0, z0)
    if s0 is None:
        s0, z0 = _zero_state(qn, v)
    blocks = block_sizes or LinearAttentionBlockSizes.default(
        qn.shape[1], qn.shape[-1], v.shape[-1])
    blocks.validate()
    return _SUMS(qn, kn, qd, kd, v, s0, z0, block_sizes=blocks, implementation=implementation)


def causal_linear_attention(qn, kn, qd, kd, v, s0=None, z0=None, *, eps=1e-6, count=0,
                            block_sizes: LinearAttentionBlockSizes | None = None,
                            implementation: str | Sequence[str] | None = None):
    """Normalised causal linear attention ``o_i = num_i / (den_i + ε·(count + i + 1))``.

    ``count`` is the number of tokens already folded into ``(s0, z0)`` (an int or an int
    array). Returns ``(o [B, N, H, dv] in v.dtype, S [B, H, F, dv], z [B, H, F])``.
    """
    if isinstance(eps, (int, float)) and eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}.")
    num, den, s, z = causal_linear_attention_sums(
        qn, kn, qd, kd, v, s0, z0, block_sizes=block_sizes, implementation=implementation)
    return _normalise(num, den, eps, count).astype(v.dtype), s, z


# --- registration for gpu_check and the kernel tests -----------------------------------------

_SHAPES = {  # (batch, seq, heads, F, dv): small has seq not a multiple of the chunk (padding)
    "small": (1, 100, 2, 32, 16),
    "medium": (2, 1024, 4, 128, 64),
    "large": (1, 8192, 8, 128, 64),
}
_EPS = 1e-6
_COUNT = 7


def _make_inputs(dtype):
    def make(key, size):
        b, n, h, f, dv = _SHAPES[size]
        ks = jax.random.split(key, 7)
        pos = lambda k: jax.random.uniform(k, (b, n, h, f), _F32, 0.05, 1.0) / f**0.5
        qn = jax.random.normal(ks[0], (b, n, h, f), _F32) / f**0.5
        kn = jax.random.normal(ks[1], (b, n, h, f), _F32) / f**0.5
        qd, kd = pos(ks[2]), pos(ks[3])
        v = jax.random.normal(ks[4], (b, n, h, dv), _F32)
        s0 = _COUNT * jax.random.normal(ks[5], (b, h, f, dv), _F32) / f
        z0 = _COUNT * jax.random.uniform(ks[6], (b, h, f), _F32, 0.05, 1.0) / f**0.5
        return (*(x.astype(dtype) for x in (qn, kn, qd, kd, v)), s0, z0)

    return make


for _dtype, _rtol in ((jnp.float32, 1e-3), (jnp.bfloat16, 1e-2)):
    register(KernelSpec(
        name=f"causal_linear_attention_{jnp.dtype(_dtype).name}",
        family="linear_attention",
        make_inputs=_make_inputs(_dtype),
        run=lambda qn, kn, qd, kd, v, s0, z0, implementation: causal_linear_attention(
            qn, kn, qd, kd, v, s0, z0, eps=_EPS, count=_COUNT, implementation=implementation),
        reference=lambda qn, kn, qd, kd, v, s0, z0: causal_linear_attention_reference(
            qn, kn, qd, kd, v, s0, z0, eps=_EPS, count=_COUNT),
        rtol={jnp.dtype(_dtype).name: _rtol},
        differentiable=True,
        diff_argnums=(0, 1, 2, 3, 4, 5, 6),
    ))
