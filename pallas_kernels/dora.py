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

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _backend
from pallas_kernels.registry import KernelSpec, register

_F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class DoRABlockSizes:
    """Tile sizes of the fused DoRA GEMM. All powers of two, ≥ 16 (Triton's dot)."""

    block_m: int = 64
    block_n: int = 64
    block_k: int = 32
    block_r: int = 16
    num_warps: int = 4
    num_stages: int = 3

    @classmethod
    def default(cls, tokens: int, d_in: int, d_out: int, rank: int,
                dtype=jnp.float32) -> DoRABlockSizes:
        """Blocks chosen from the shapes and dtype: large tiles for large problems, never
        above the (power-of-two rounded) problem size so that small problems are not
        over-padded; narrower tiles for 4-byte inputs (shared memory per stage)."""

        def fit(n: int, cap: int) -> int:
            return max(16, min(cap, _backend.next_power_of_2(n)))

        big = tokens * d_out >= 1 << 20
        if not big:
            return cls(block_m=fit(tokens, 64), block_n=fit(d_out, 64), block_k=fit(d_in, 32),
                       block_r=fit(rank, 16), num_warps=4, num_stages=3)
        # Large problems: the fastest configurations of experiments/tune_dora.py on an H200
        # at (T, d_in, d_out, r) = (2048, 8192, 8192, 384).
        if jnp.dtype(dtype).itemsize >= 4:
            return cls(block_m=fit(tokens, 128), block_n=fit(d_out, 128), block_k=fit(d_in, 32),
                       block_r=fit(rank, 32), num_warps=4, num_stages=3)
        # (128 × 256 tiles were ~20% faster for the forward alone, but with the residual h
        # output of the differentiated forward they exceed the H200's shared memory.)
        return cls(block_m=fit(tokens, 128), block_n=fit(d_out, 128), block_k=fit(d_in, 64),
                   block_r=fit(rank, 64), num_warps=8, num_stages=3)

    def validate(self) -> None:
        for field in ("block_m", "block_n", "block_k", "block_r"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 16 or value & (value - 1):
                raise ValueError(
                    f"block_sizes.{field} must be a power of two >= 16 (Triton's dot), "
                    f"got {value!r}."
                )


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

    grid = (t_p // bm, n_p // bn)
    in_specs = [
        pl.BlockSpec((bm, k_p), lambda i, j: (i, 0)),
        pl.BlockSpec((k_p, bn), lambda i, j: (0, j)),
        pl.BlockSpec((bm, r_p), lambda i, j: (i, 0)),
        pl.BlockSpec((r_p, bn), lambda i, j: (0, j)),
        pl.BlockSpec((bn,), lambda i, j: (j,)),
    ]
    out_shape = [jax.ShapeDtypeStruct((t_p, n_p), out_dtype)]
    out_specs = [pl.BlockSpec((bm, bn), lambda i, j: (i, j))]
    if with_unscaled:  # h in the output dtype: bf16 h halves the epilogue's shared memory
        out_shape.append(jax.ShapeDtypeStruct((t_p, n_p), out_dtype))
        out_specs.append(pl.BlockSpec((bm, bn), lambda i, j: (i, j)))

    kwargs = {}
    if implementation == "triton":
        kwargs["compiler_params"] = _backend.compiler_params(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages
        )
    outs = pl.pallas_call(
        functools.partial(_dora_matmul_kernel, block_k=bk, block_r=br,
                          tf32=implementation == "triton"),
        grid=grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        interpret=implementation == "interpret",
        name="dora_matmul",
        **kwargs,
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


def _check_inputs(x, w0, xa, b, g) -> None:
    for name, arr, ndim in (("x", x, 2), ("w0", w0, 2), ("xa", xa, 2), ("b", b, 2), ("g", g, 1)):
        if not hasattr(arr, "shape") or not hasattr(arr, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(arr).__name__}.")
        if arr.ndim != ndim:
            raise ValueError(f"{name} must have rank {ndim}, got shape {tuple(arr.shape)}.")
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(f"{name} must have a floating dtype, got {arr.dtype}.")
    tokens, d_in = x.shape
    d_out, rank = w0.shape[1], b.shape[0]
    expected = {"w0": (d_in, d_out), "xa": (tokens, rank), "b": (rank, d_out), "g": (d_out,)}
    for name, arr in (("w0", w0), ("xa", xa), ("b", b), ("g", g)):
        if tuple(arr.shape) != expected[name]:
            raise ValueError(
                f"{name} must have shape {expected[name]} (from x {tuple(x.shape)}, "
                f"w0 {tuple(w0.shape)}, b {tuple(b.shape)}), got {tuple(arr.shape)}."
            )


def dora_matmul(
    x,
    w0,
    xa,
    b,
    g,
    *,
    scale=1.0,
    block_sizes: DoRABlockSizes | None = None,
    implementation: str | None = None,
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
      implementation: "xla" | "triton" | "interpret" | None (see ``_backend``). ``None``
        on a CUDA GPU picks "triton" for 16-bit inputs and "xla" for float32 ones (measured:
        the kernel is slower than cuBLAS TF32 there); pass "triton" to force the kernel.

    Returns:
      [T, d_out] in the promoted dtype of x and w0. Differentiable in every array argument.
    """
    _check_inputs(x, w0, xa, b, g)
    # Measured on an H200 (docs/dora.md): the kernel beats XLA on 16-bit inputs; on float32
    # it runs at about a third of cuBLAS's TF32 speed, so the default then stays on XLA.
    base_dtype = jnp.result_type(x.dtype, w0.dtype)
    implementation = _backend.resolve_implementation(
        implementation, kernel_preferred=jnp.dtype(base_dtype).itemsize <= 2)
    if implementation == "xla":
        return dora_matmul_reference(x, w0, xa, b, g, scale=scale)
    blocks = block_sizes or DoRABlockSizes.default(
        x.shape[0], x.shape[1], w0.shape[1], b.shape[0], jnp.result_type(x.dtype, w0.dtype))
    blocks.validate()
    # s is folded into the thin [T, r] operand outside the kernel: no array constant is
    # closed over, and its gradient comes from ordinary autodiff.
    xa_scaled = (xa.astype(_F32) * jnp.asarray(scale, _F32)).astype(xa.dtype)
    dtypes = tuple(jnp.dtype(v.dtype) for v in (x, w0, xa_scaled, b, g))
    return _dora_matmul_fused(x, w0, xa_scaled, b, g, blocks, implementation, dtypes)


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
