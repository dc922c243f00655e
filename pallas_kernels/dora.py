"""Fused DoRA linear layer: one tiled GEMM over W₀ and the low-rank branch, g in the epilogue.

Computes, for tokens x ∈ [T, d_in] (Flax layout, kernel [d_in, d_out]):

    y = g ⊙ (x·W₀ + s·(xA)·B)

where xA ∈ [T, r] is the (cheap, thin) low-rank input, B ∈ [r, d_out], s is the LoRA scale
and g = m / ‖W₀ + s·AB‖_col ∈ [d_out] is the DoRA column scale (DoRA, Liu et al.,
arXiv 2402.09353; the fused-kernel form follows "Scaling DoRA", arXiv 2603.22276).

Tiling. The grid is (T / block_m, d_out / block_n). Each program owns one [block_m, block_n]
output tile and one float32 accumulator. It loops over the d_in tiles of x and W₀
(block_k wide), then over the r tiles of xA and B (block_r wide), *into the same
accumulator*, and multiplies by g[block_n] in the epilogue. W₀ is read in place: no
concatenated copy [W₀ ; sB] is made per call. Inputs are zero-padded to the block sizes
(the Triton lowering does not clamp out-of-bounds reads); the padding contributes zeros.

Backward (``jax.custom_vjp``). With dy' = dy ⊙ g and h = x·W₀ + s·(xA)·B (the pre-scale
accumulator, written by the forward kernel as a second output when differentiating):

    dx = dy'·W₀ᵀ,  dW₀ = xᵀ·dy',  d(xA) = s·dy'·Bᵀ,  dB = s·(xA)ᵀ·dy',  dg = Σ_t dy ⊙ h.

These are plain XLA matrix products (cuBLAS on GPU); XLA drops the ones whose cotangent
is unused (dW₀ for a frozen base).
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoRABlockSizes(_tiling.BlockSizes):
    """Tile sizes of the fused DoRA GEMM. All powers of two, ≥ 16 (Triton's dot)."""

    TILES = ("block_m", "block_n", "block_k", "block_r")
    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    block_r: int = 16
    num_stages: int = 3

    @classmethod
    def default(cls, tokens: int, d_in: int, d_out: int, rank: int, dtype=jnp.float32, *,
                device_kind: str | None = None) -> DoRABlockSizes:
        """The tuned caps of ``device_kind`` (default: this machine's) for problems with
        ``tokens·d_out >= 2^20``, the generic caps below that, each cap fitted to the
        (power-of-two rounded) problem size so that small problems are not over-padded."""
        if device_kind is None:
            device_kind = _backend.device_kind()
        big = tokens * d_out >= 1 << 20
        caps = cls.tuned("dora_matmul", dtype, device_kind if big else None)
        sizes = dict(block_m=tokens, block_n=d_out, block_k=d_in, block_r=rank)
        return cls(**{k: _tiling.fit(sizes[k], v) if k in sizes else v
                      for k, v in caps.items()})


def dora_matmul_reference(x, w0, xa, b, g, *, scale=1.0):
    """y = g ⊙ (x·W₀ + s·(xA)·B), plain jax.numpy, float32 accumulation.

    Shapes: x [T, d_in], w0 [d_in, d_out], xa [T, r], b [r, d_out], g [d_out].
    Returns [T, d_out] in the promoted dtype of x and w0.
    """
    out_dtype = jnp.result_type(x.dtype, w0.dtype)
    base = jnp.dot(x, w0, preferred_element_type=_F32)
    lora = jnp.dot(xa, b, preferred_element_type=_F32)
    h = base.astype(_F32) + jnp.asarray(scale, _F32) * lora.astype(_F32)
    return (g.astype(_F32)[None, :] * h).astype(out_dtype)


def _dora_matmul_kernel(x_ref, w0_ref, xa_ref, b_ref, g_ref, *out_refs, block_k, block_r, tf32):
    """One [block_m, block_n] tile: Σ_k x_k W₀_k, then Σ_r (s·xA)_r B_r, then ⊙ g."""
    block_m, block_n = out_refs[0].shape
    num_k = x_ref.shape[1] // block_k
    num_r = xa_ref.shape[1] // block_r

    def base_step(k, acc):
        cols = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
        return acc + _backend.dot(x_ref[:, cols], w0_ref[cols, :], tf32=tf32)

    def lora_step(k, acc):
        cols = pl.ds(pl.multiple_of(k * block_r, block_r), block_r)
        return acc + _backend.dot(xa_ref[:, cols], b_ref[cols, :], tf32=tf32)

    acc = jnp.zeros((block_m, block_n), _F32)
    acc = jax.lax.fori_loop(0, num_k, base_step, acc)
    acc = jax.lax.fori_loop(0, num_r, lora_step, acc)
    g = g_ref[...].astype(_F32)
    out_refs[0][...] = (acc * g[None, :]).astype(out_refs[0].dtype)
    if len(out_refs) > 1:  # the pre-scale accumulator, for the backward pass
        out_refs[1][...] = acc.astype(out_refs[1].dtype)


def _dora_matmul_pallas(x, w0, xa_scaled, b, g, *, blocks, implementation, with_unscaled):
    """The padded ``pl.pallas_call``; "triton" and "interpret" both come through here."""
    tokens, d_in = x.shape
    d_out = w0.shape[1]
    out_dtype = jnp.result_type(x.dtype, w0.dtype)
    bm, bn, bk, br = blocks.block_m, blocks.block_n, blocks.block_k, blocks.block_r

    x_p = _backend.pad_axis(_backend.pad_axis(x, 0, bm), 1, bk)
    w0_p = _backend.pad_axis(_backend.pad_axis(w0, 0, bk), 1, bn)
    xa_p = _backend.pad_axis(_backend.pad_axis(xa_scaled, 0, bm), 1, br)
    b_p = _backend.pad_axis(_backend.pad_axis(b, 0, br), 1, bn)
    g_p = _backend.pad_axis(g.astype(_F32), 0, bn)
    t_p, k_p = x_p.shape
    n_p = w0_p.shape[1]
    r_p = xa_p.shape[1]

    in_specs = [
        pl.BlockSpec((bm, k_p), lambda i, j: (i, 0)),
        pl.BlockSpec((k_p, bn), lambda i, j: (0, j)),
        pl.BlockSpec((bm, r_p), lambda i, j: (i, 0)),
        pl.BlockSpec((r_p, bn), lambda i, j: (0, j)),
        pl.BlockSpec((bn,), lambda i, j: (j,)),
    ]
    # with_unscaled: h in the output dtype too (bf16 h halves the epilogue's shared memory)
    count = 2 if with_unscaled else 1
    outs = _tiling.pallas_call(
        _dora_matmul_kernel, name="dora_matmul", blocks=blocks, implementation=implementation,
        grid=(t_p // bm, n_p // bn), in_specs=in_specs,
        out_specs=[pl.BlockSpec((bm, bn), lambda i, j: (i, j))] * count,
        out_shape=[jax.ShapeDtypeStruct((t_p, n_p), out_dtype)] * count,
        block_k=bk, block_r=br, tf32=implementation == "triton",
    )(x_p, w0_p, xa_p, b_p, g_p)
    outs = [o[:tokens, :d_out] for o in outs]
    return outs if with_unscaled else outs[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _dora_matmul_fused(x, w0, xa_scaled, b, g, blocks, implementation, dtypes):
    del dtypes
    return _dora_matmul_pallas(
        x, w0, xa_scaled, b, g, blocks=blocks, implementation=implementation,
        with_unscaled=False,
    )


def _dora_matmul_fused_fwd(x, w0, xa_scaled, b, g, blocks, implementation, dtypes):
    del dtypes
    # symbolic_zeros=True: each primal arrives as CustomVJPPrimal(value, perturbed), so the
    # backward skips the products of unperturbed inputs (dW₀ = xᵀ·dy' for a frozen base).
    primals = (x, w0, xa_scaled, b, g)
    values = [p.value for p in primals]
    perturbed = [p.perturbed for p in primals]
    y, h = _dora_matmul_pallas(
        *values, blocks=blocks, implementation=implementation, with_unscaled=True
    )
    x_v, w0_v, xa_v, b_v, g_v = values
    # A residual is kept only if some wanted cotangent needs it; None marks "not wanted":
    # dx needs W₀, dW₀ needs x, d(xA) needs B, dB needs xA, dg needs h.
    keep = lambda value, wanted: value if wanted else None
    residuals = (
        keep(x_v, perturbed[1]),
        keep(w0_v, perturbed[0]),
        keep(xa_v, perturbed[3]),
        keep(b_v, perturbed[2]),
        g_v,
        keep(h, perturbed[4]),
    )
    return y, residuals


def _dora_matmul_fused_bwd(blocks, implementation, dtypes, residuals, dy):
    del blocks, implementation
    x_dtype, w0_dtype, xa_dtype, b_dtype, g_dtype = dtypes
    x, w0, xa_scaled, b, g, h = residuals
    if isinstance(dy, jax.custom_derivatives.SymbolicZero):
        return (None,) * 5
    dy32 = dy.astype(_F32)
    dy_scaled = dy32 * g.astype(_F32)[None, :]

    def mm(lhs, rhs, dims):
        """Product in the low-precision operand's dtype (if any), accumulated in float32."""
        low = [d for d in (lhs.dtype, rhs.dtype) if jnp.finfo(d).bits < 32]
        dtype = jnp.promote_types(*low) if len(low) == 2 else (low[0] if low else _F32)
        return jax.lax.dot_general(
            lhs.astype(dtype), rhs.astype(dtype), (dims, ((), ())), preferred_element_type=_F32
        )

    dx = None if w0 is None else mm(dy_scaled, w0, ((1,), (1,))).astype(x_dtype)
    dw0 = None if x is None else mm(x, dy_scaled, ((0,), (0,))).astype(w0_dtype)
    dxa = None if b is None else mm(dy_scaled, b, ((1,), (1,))).astype(xa_dtype)
    db = None if xa_scaled is None else mm(xa_scaled, dy_scaled, ((0,), (0,))).astype(b_dtype)
    dg = None if h is None else jnp.sum(dy32 * h.astype(_F32), axis=0).astype(g_dtype)
    return dx, dw0, dxa, db, dg


_dora_matmul_fused.defvjp(_dora_matmul_fused_fwd, _dora_matmul_fused_bwd, symbolic_zeros=True)


def _dora_matmul_xla(x, w0, xa, b, g, *, scale, block_sizes):
    del block_sizes
    return dora_matmul_reference(x, w0, xa, b, g, scale=scale)


def _dora_matmul_kernel_path(x, w0, xa, b, g, *, scale, block_sizes, implementation):
    blocks = block_sizes or DoRABlockSizes.default(
        x.shape[0], x.shape[1], w0.shape[1], b.shape[0], jnp.result_type(x.dtype, w0.dtype))
    blocks.validate()
    # s is folded into the thin [T, r] operand outside the kernel: no array constant is
    # closed over, and its gradient comes from ordinary autodiff.
    xa_scaled = (xa.astype(_F32) * jnp.asarray(scale, _F32)).astype(xa.dtype)
    dtypes = tuple(jnp.dtype(v.dtype) for v in (x, w0, xa_scaled, b, g))
    return _dora_matmul_fused(x, w0, xa_scaled, b, g, blocks, implementation, dtypes)


_DORA_MATMUL = Op.pallas("dora_matmul", xla=_dora_matmul_xla, kernel=_dora_matmul_kernel_path,
                         dtype_of=lambda x, w0, *_, **__: jnp.result_type(x.dtype, w0.dtype))


def dora_matmul(
    x,
    w0,
    xa,
    b,
    g,
    *,
    scale=1.0,
    block_sizes: DoRABlockSizes | None = None,
    implementation: str | Sequence[str] | None = None,
):
    """Fused DoRA GEMM: y = g ⊙ (x·W₀ + s·(xA)·B).

    Args:
      x: [T, d_in] tokens.
      w0: [d_in, d_out] base kernel (read in place, never concatenated).
      xa: [T, r] the low-rank input x·A.
      b: [r, d_out].
      g: [d_out] DoRA column scale m / ‖W₀ + sAB‖.
      scale: the LoRA scale s (Python number or scalar array).
      block_sizes: tile sizes; default :meth:`DoRABlockSizes.default`.
      implementation: a name in :data:`~pallas_kernels.op.IMPLEMENTATIONS`, a sequence of
        them tried in order, or None (see :mod:`pallas_kernels.op`). In the default
        sequence on a CUDA GPU the kernel runs only where the GPU records prefer it (on an
        H200: 16-bit inputs; in float32 it is slower than cuBLAS TF32).

    Returns:
      [T, d_out] in the promoted dtype of x and w0. Differentiable in every array argument.
    """
    _checks.check_dora_inputs(x, w0, xa, b, g)
    return _DORA_MATMUL(x, w0, xa, b, g, scale=scale, block_sizes=block_sizes,
                        implementation=implementation)


# --- registration for gpu_check and the kernel tests -------------------------------------

_SHAPES = {  # (tokens, d_in, d_out, rank): small is odd-sized on purpose (padding).
    "small": (48, 80, 72, 12),
    "medium": (512, 1024, 1024, 64),
    "large": (2048, 4096, 4096, 64),
}
_SCALE = 0.75


def _make_inputs(dtype):
    def make(key, size):
        tokens, d_in, d_out, rank = _SHAPES[size]
        kx, kw, ka, kb, kg = jax.random.split(key, 5)
        x = jax.random.normal(kx, (tokens, d_in), _F32).astype(dtype)
        w0 = (jax.random.normal(kw, (d_in, d_out), _F32) / d_in**0.5).astype(dtype)
        xa = (jax.random.normal(ka, (tokens, rank), _F32)).astype(dtype)
        b = jax.random.normal(kb, (rank, d_out), _F32) / rank**0.5
        g = 1.0 + 0.1 * jax.random.normal(kg, (d_out,), _F32)
        return x, w0, xa, b.astype(dtype), g

    return make


for _dtype, _rtol in ((jnp.float32, 1e-3), (jnp.bfloat16, 1e-2)):
    register(
        KernelSpec(
            name=f"dora_matmul_{jnp.dtype(_dtype).name}",
            family="dora",
            make_inputs=_make_inputs(_dtype),
            run=lambda x, w0, xa, b, g, implementation: dora_matmul(
                x, w0, xa, b, g, scale=_SCALE, implementation=implementation
            ),
            reference=lambda x, w0, xa, b, g: dora_matmul_reference(
                x, w0, xa, b, g, scale=_SCALE
            ),
            rtol={jnp.dtype(_dtype).name: _rtol},
            differentiable=True,
            diff_argnums=(0, 1, 2, 3, 4),
        )
    )
