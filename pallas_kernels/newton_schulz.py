"""Fused Newton–Schulz iteration: the symmetric products computed once per tile pair.

One quintic step on a tall X ∈ [m, n] (m ≥ n; a fat X is transposed first, so the Gram
matrix is always over the smaller side):

    G = XᵀX,   P = b·G + c·G²,   X ← a·X + X·P

(for a fat X this is X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ). G and P = b·G + c·G² are
symmetric, X·P is not: two of the three products per step are symmetric.

Kernels, per step (each program owns one output tile and one float32 accumulator):

* gram: grid (n/bn)², only the programs with i ≤ j compute G[i, j] = Σ_k X[k, i]ᵀ X[k, j]
  (about half the FLOPs) and write it twice, at (i, j) and transposed at (j, i). Diagonal
  tiles are symmetrised (½(T + Tᵀ)), so G is exactly symmetric.
* poly: the same upper-triangle grid over G; G² tile by tile, with b·G + c·G² in the
  epilogue, mirrored the same way (P is exactly symmetric).
* apply: grid (m/bm, n/bn); X·P with a·X in the epilogue.

Inputs are zero-padded to the tiles once per call (zero rows and columns of X stay zero
through every step and leave the real block unchanged). Intermediates are stored in X's
dtype: bfloat16 inputs multiply in bfloat16 with float32 accumulation; float32 inputs ask
for full float32 products, because the aggressive early quintic steps amplify TF32 rounding
beyond their design interval. On an H200 (jax 0.11.2) the float32 kernel nevertheless lands
2.5e-3 from the XLA HIGHEST path, a TF32-sized error, so it is recorded as not verified and
the default never runs it; the bfloat16 kernel is verified. float64 has no kernel (the op
falls back to "xla" in a sequence).

Not differentiable through the kernel: the iteration is used inside weight projections and
optimiser updates, which are not differentiated. ``jax.grad`` through the kernel path
raises; the "xla" path differentiates as ordinary jax.numpy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _backend, _checks, _tiling
from pallas_kernels.op import Op
from pallas_kernels.registry import KernelSpec, register

_F32 = jnp.float32
_HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True, kw_only=True)
class NewtonSchulzBlockSizes(_tiling.BlockSizes):
    """Tiles of the Newton–Schulz kernels: ``block_n`` the Gram tile (over the smaller side
    n), ``block_m`` the row tile of X in the update, ``block_k`` the contraction tile."""

    TILES = ("block_n", "block_m", "block_k")
    block_n: int = 64
    block_m: int = 64
    block_k: int = 32

    @classmethod
    def default(cls, m: int, n: int, dtype=jnp.float32) -> NewtonSchulzBlockSizes:
        """Generic caps (larger ones for 16-bit inputs on big problems on a GPU), each fitted
        to the problem size (power-of-two rounded) so that small problems are not over-padded."""
        big = _backend.cuda_available() and m * n >= 1 << 20
        if big and jnp.dtype(dtype).itemsize == 2:
            caps = dict(block_n=128, block_m=128, block_k=64, num_warps=8, num_stages=3)
        elif big:
            caps = dict(block_n=64, block_m=64, block_k=32, num_warps=4, num_stages=3)
        else:
            caps = dict(block_n=64, block_m=64, block_k=32)
        sizes = dict(block_n=n, block_m=m, block_k=n)
        return cls(**{k: _tiling.fit(sizes[k], v) if k in sizes else v for k, v in caps.items()})


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def newton_schulz_steps_reference(x, coefficients, *, precision=_HIGHEST):
    """The quintic steps X ← a·X + X·(b·G + c·G²), G = XᵀX, in plain jax.numpy.

    A fat X is transposed, so the Gram matrix is over the smaller side. Batched over
    leading dims; computes in x's dtype with matrix products at ``precision``.
    """
    tall = x.shape[-2] >= x.shape[-1]
    if not tall:
        x = _mT(x)
    for a, b, c in coefficients:
        gram = jnp.matmul(_mT(x), x, precision=precision)
        gram2 = jnp.matmul(gram, gram, precision=precision)
        x = a * x + jnp.matmul(x, b * gram + c * gram2, precision=precision)
    return x if tall else _mT(x)


# --- kernels -------------------------------------------------------------------------------


def _contract(lhs_ref, rhs_ref, *, block_k, trans_lhs):
    """Σ_k lhs[k]·rhs[k] over ``block_k`` slices of the contraction axis, float32."""
    lhs_axis = 0 if trans_lhs else 1
    num_k = lhs_ref.shape[lhs_axis] // block_k
    out_shape = (lhs_ref.shape[1 - lhs_axis], rhs_ref.shape[1])

    def step(k, acc):
        ks = pl.ds(pl.multiple_of(k * block_k, block_k), block_k)
        lhs = lhs_ref[ks, :] if trans_lhs else lhs_ref[:, ks]
        return acc + _backend.dot(lhs, rhs_ref[ks, :], trans_a=trans_lhs)

    return jax.lax.fori_loop(0, num_k, step, jnp.zeros(out_shape, _F32))


def _store_mirrored(out_ref, tile, i, j, block_n):
    """Write a tile of a symmetric matrix at (i, j) and its transpose at (j, i); a diagonal
    tile is symmetrised first, so the whole matrix is exactly symmetric."""
    tile = jnp.where(i == j, 0.5 * (tile + tile.T), tile).astype(out_ref.dtype)
    rows, cols = pl.ds(i * block_n, block_n), pl.ds(j * block_n, block_n)
    out_ref[rows, cols] = tile
    out_ref[cols, rows] = tile.T


def _gram_kernel(xi_ref, xj_ref, out_ref, *, block_k, block_n):
    """G[i, j] = X[:, i]ᵀ·X[:, j] for i ≤ j, mirrored."""
    i, j = pl.program_id(1), pl.program_id(2)

    @pl.when(i <= j)
    def _():
        acc = _contract(xi_ref, xj_ref, block_k=block_k, trans_lhs=True)
        _store_mirrored(out_ref, acc, i, j, block_n)


def _poly_kernel(gi_ref, gj_ref, out_ref, *, b, c, block_k, block_n):
    """P[i, j] = b·G[i, j] + c·(G·G)[i, j] for i ≤ j, mirrored."""
    i, j = pl.program_id(1), pl.program_id(2)

    @pl.when(i <= j)
    def _():
        tile = b * gi_ref[:, pl.ds(j * block_n, block_n)].astype(_F32)
        if c != 0:
            tile = tile + c * _contract(gi_ref, gj_ref, block_k=block_k, trans_lhs=False)
        _store_mirrored(out_ref, tile, i, j, block_n)


def _apply_kernel(x_ref, p_ref, out_ref, *, a, block_k, block_n):
    """X_new[r, j] = a·X[r, j] + (X·P)[r, j]."""
    j = pl.program_id(2)
    acc = _contract(x_ref, p_ref, block_k=block_k, trans_lhs=False)
    x = x_ref[:, pl.ds(j * block_n, block_n)].astype(_F32)
    out_ref[...] = (a * x + acc).astype(out_ref.dtype)


def _symmetric_call(kernel, operand, row_spec, col_spec, *, blocks, implementation, **static):
    """A kernel over the upper-triangle tile pairs of a [batch, n_p, n_p] symmetric output."""
    batch, n_p = operand.shape[0], operand.shape[-1]
    nb = n_p // blocks.block_n
    return _tiling.pallas_call(
        kernel, name=f"newton_schulz_{kernel.__name__.strip('_').removesuffix('_kernel')}",
        blocks=blocks, implementation=implementation, grid=(batch, nb, nb),
        in_specs=[row_spec, col_spec],
        out_specs=pl.BlockSpec((None, n_p, n_p), lambda s, i, j: (s, 0, 0)),
        out_shape=jax.ShapeDtypeStruct((batch, n_p, n_p), operand.dtype),
        block_k=blocks.block_k, block_n=blocks.block_n, **static,
    )(operand, operand)


def _gram(x, *, blocks, implementation):
    """XᵀX of a padded [batch, m_p, n_p] X, exactly symmetric."""
    m_p, bn = x.shape[1], blocks.block_n
    col = pl.BlockSpec((None, m_p, bn), lambda s, i, j: (s, 0, i))
    col_j = pl.BlockSpec((None, m_p, bn), lambda s, i, j: (s, 0, j))
    return _symmetric_call(_gram_kernel, x, col, col_j, blocks=blocks,
                           implementation=implementation)


def _poly(gram, b, c, *, blocks, implementation):
    """b·G + c·G² of a padded symmetric [batch, n_p, n_p] G, exactly symmetric."""
    n_p, bn = gram.shape[-1], blocks.block_n
    row = pl.BlockSpec((None, bn, n_p), lambda s, i, j: (s, i, 0))
    col = pl.BlockSpec((None, n_p, bn), lambda s, i, j: (s, 0, j))
    return _symmetric_call(_poly_kernel, gram, row, col, blocks=blocks,
                           implementation=implementation, b=b, c=c)


def _apply(x, poly, a, *, blocks, implementation):
    """a·X + X·P of a padded [batch, m_p, n_p] X."""
    batch, m_p, n_p = x.shape
    bm, bn = blocks.block_m, blocks.block_n
    return _tiling.pallas_call(
        _apply_kernel, name="newton_schulz_apply", blocks=blocks,
        implementation=implementation, grid=(batch, m_p // bm, n_p // bn),
        in_specs=[pl.BlockSpec((None, bm, n_p), lambda s, r, j: (s, r, 0)),
                  pl.BlockSpec((None, n_p, bn), lambda s, r, j: (s, 0, j))],
        out_specs=pl.BlockSpec((None, bm, bn), lambda s, r, j: (s, r, j)),
        out_shape=jax.ShapeDtypeStruct(x.shape, x.dtype),
        a=a, block_k=blocks.block_k, block_n=bn,
    )(x, poly)


def _pad_to_tiles(x, blocks):
    """[..., m, n] (tall) -> zero-padded [batch, m_p, n_p]."""
    x = x.reshape((-1, *x.shape[-2:]))
    rows = max(blocks.block_m, blocks.block_k)
    cols = max(blocks.block_n, blocks.block_k)
    return _backend.pad_axis(_backend.pad_axis(x, 1, rows), 2, cols)


def _no_grad(x):
    @jax.custom_jvp
    def identity(y):
        return y

    @identity.defjvp
    def _(primals, tangents):
        raise NotImplementedError(
            "newton_schulz_steps's Pallas kernel is not differentiable; use "
            "implementation='xla' to differentiate through the iteration.")

    return identity(x)


def _newton_schulz_kernel_path(x, coefficients, *, precision, block_sizes, implementation):
    del precision  # the kernel always multiplies at full input precision
    if jnp.dtype(x.dtype).itemsize > 4:
        raise NotImplementedError(f"newton_schulz_steps has no Pallas kernel for {x.dtype}; use "
                                  "implementation='xla'.")
    coefficients = _checks.check_coefficients(coefficients)
    tall = x.shape[-2] >= x.shape[-1]
    work = x if tall else _mT(x)
    m, n = work.shape[-2:]
    blocks = block_sizes or NewtonSchulzBlockSizes.default(m, n, x.dtype)
    blocks.validate()
    y = _pad_to_tiles(_no_grad(work), blocks)
    for a, b, c in coefficients:
        poly = _poly(_gram(y, blocks=blocks, implementation=implementation), b, c,
                     blocks=blocks, implementation=implementation)
        y = _apply(y, poly, a, blocks=blocks, implementation=implementation)
    y = y[:, :m, :n].reshape(work.shape)
    return y if tall else _mT(y)


def _newton_schulz_xla(x, coefficients, *, precision, block_sizes):
    del block_sizes
    return newton_schulz_steps_reference(x, coefficients, precision=precision)


_NEWTON_SCHULZ = Op.pallas("newton_schulz", xla=_newton_schulz_xla,
                           kernel=_newton_schulz_kernel_path,
                           dtype_of=lambda x, *_, **__: x.dtype)


def newton_schulz_steps(
    x,
    coefficients,
    *,
    precision=_HIGHEST,
    block_sizes: NewtonSchulzBlockSizes | None = None,
    implementation: str | Sequence[str] | None = None,
):
    """Quintic Newton–Schulz steps X ← a·X + X·(b·G + c·G²), G = XᵀX (the smaller Gram).

    For a fat X the same map reads X ← a·X + (b·A + c·A²)·X with A = X·Xᵀ. X is used as
    given: scale it first (σ_max ≤ 1) for the matrix-sign schedules.

    Args:
      x: [..., m, n] floating matrix (batched over leading dims).
      coefficients: a sequence of (a, b, c) Python numbers, one triple per step.
      precision: matrix-product precision of the "xla" path (the kernel always uses full
        float32 products for float32 and bfloat16 products with float32 accumulation for
        bfloat16).
      block_sizes: tiles of the kernel; default :meth:`NewtonSchulzBlockSizes.default`.
      implementation: a name in :data:`~pallas_kernels.op.IMPLEMENTATIONS`, a sequence of
        them tried in order, or None (see :mod:`pallas_kernels.op`).

    Returns:
      [..., m, n] in x's dtype. Differentiable only through the "xla" path.
    """
    _checks.check_matrix("x", x)
    coefficients = _checks.check_coefficients(coefficients)
    return _NEWTON_SCHULZ(x, coefficients, precision=precision, block_sizes=block_sizes,
                          implementation=implementation)


# --- registration for gpu_check and the kernel tests -------------------------------------

_SHAPES = {  # (m, n): small is odd-sized on purpose (padding) and fat (transposed).
    "small": (48, 80),
    "medium": (1024, 1024),
    "large": (4096, 4096),
}
# Three quintic steps (optax's "dion" schedule).
_COEFFICIENTS = ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377),
                 (3.7418, -5.5913, 2.3037))


def _make_inputs(dtype):
    def make(key, size):
        m, n = _SHAPES[size]
        x = jax.random.normal(key, (m, n), _F32)
        x = x / jnp.linalg.norm(x)  # σ_max ≤ 1, as the schedule expects
        return (x.astype(dtype),)

    return make


def _run(x, implementation):
    return newton_schulz_steps(x, _COEFFICIENTS, implementation=implementation)


def _reference(x):
    return newton_schulz_steps_reference(x.astype(_F32), _COEFFICIENTS).astype(x.dtype)


# bfloat16: three aggressive steps with bfloat16 intermediates land ~5e-2 from float64.
for _dtype, _rtol in ((jnp.float32, 1e-3), (jnp.bfloat16, 6e-2)):
    _name = jnp.dtype(_dtype).name
    register(KernelSpec(f"newton_schulz_{_name}", "lipschitz", _make_inputs(_dtype), _run,
                        _reference, {_name: _rtol}, differentiable=False))
