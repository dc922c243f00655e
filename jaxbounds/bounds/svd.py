r"""Concatenated-matrix SVD compression: error bounds, an incremental estimate, clustering.

Shamrai, "Concatenated Matrix SVD: Compression Bounds, Incremental Approximation, and
Error-Constrained Clustering" (arXiv 2601.11626, 2026). A collection of matrices with the
same row count n, A_1 ∈ ℝ^{n×c_1}, …, A_K ∈ ℝ^{n×c_K}, is compressed by concatenating it,
M = [A_1, …, A_K] ∈ ℝ^{n×C} (C = Σ c_k), and truncating the SVD of M at rank r: one shared
left factor U_r (n × r) and per-block right factors. Which blocks can share a factor?

Formulas
--------
* The relative rank-r error (:func:`concat_svd_error`, exact, by a float64 SVD of M):

      e_r(M) = √((‖M‖_F² − Σ_{i≤r} σ_i(M)²) / ‖M‖_F²) = √(Σ_{i>r} σ_i(M)² / ‖M‖_F²).

  By Eckart–Young it is the smallest ‖M − X‖_F/‖M‖_F over rank-r X. e_r = 0 for r ≥ rank M
  and, by convention, for M = 0.
* Every bound below is a lower bound L ≤ Σ_{i≤r} σ_i(M)², turned into the upper bound

      e_r(M) ≤ √(max(0, ‖M‖_F² − L) / ‖M‖_F²).

* **Weyl bound** (:func:`weyl_bound`): sort the blocks by Frobenius norm, largest first. The
  head H is the longest prefix of that order whose column count stays ≤ r, and L = ‖H‖_F².
  Sound: H has ≤ r columns, so ‖H‖_F² = Σ_{i≤r} σ_i(H)², and σ_i(H) ≤ σ_i(M) (deleting
  columns never increases a singular value: Weyl / Cauchy interlacing).
* **Residual bound** (:func:`residual_bound`): keep an orthonormal basis Q of what has been
  processed (first the head, then the other blocks in norm order). For each new block take
  R_k = (I − QQᵀ)A_k (with one re-orthogonalisation pass), extend Q by the numerically new
  directions N_k of R_k, and collect the singular values of D_k = N_kᵀA_k (= those of R_k
  up to the dropped, negligible directions) and of the head. L is the sum of the squares
  of the r largest collected values (and never less than the Weyl L, which is also valid,
  so residual ≤ Weyl holds exactly, in floating point too).
* **Incremental truncated-SVD estimate** (:func:`incremental_estimate`), **not a bound**:
  a state (Q, S), Q ∈ ℝ^{n×k} with k = r + p (p = ``oversampling``), S = diag(λ), with
  MMᵀ ≈ QSQᵀ. For a new block A: Y = QᵀA, R = A − QY = Q_res·B, the extended Gram
  G = [[S + YYᵀ, YBᵀ], [BYᵀ, BBᵀ]], G = VΛVᵀ (``eigh``), keep the top k pairs:
  Q ← [Q, Q_res]·V_k, S ← Λ_k. The estimate is √(max(0, ‖M‖_F² − Σ_{i≤r} λ_i)/‖M‖_F²). It
  is exact when k ≥ rank M (nothing is ever truncated) and can fall below e_r otherwise.
* **Certified projection bound** (:func:`projection_bound`, beyond the paper): for any
  n × r matrix Q with orthonormal columns, QQᵀM has rank ≤ r, so by Eckart–Young

      e_r(M)² ≤ ‖M − QQᵀM‖_F² / ‖M‖_F² = (‖M‖_F² − Σ_k ‖QᵀA_k‖_F²) / ‖M‖_F²,

  computed block by block. With Q from the incremental estimate this certifies the estimate
  (:func:`certified_bound`): on blocks that share a low-rank subspace it is near the true
  error, where the Weyl and residual bounds can be many times looser (they count the energy
  of every block outside the head only through its residual's own top singular values).

Soundness of the residual bound
-------------------------------
Let N_0 (directions of the head H) and N_1, N_2, … (new directions of the residuals) be
the blocks of U = [N_0, N_1, …], whose columns are orthonormal, and let the column sets of
H, A_1, A_2, … be disjoint pieces of M. Write D_j = N_jᵀ(columns of piece j); for j ≥ 1,
D_j = N_jᵀA_j = N_jᵀR_j because N_j ⊥ Q. In the basis U, UᵀM is block upper triangular
with diagonal blocks D_j (N_jᵀA_k = 0 for j > k, since A_k ∈ span(Q_k) + span(R_k)), but
only this is needed: pick r_j top left singular vectors V_j of each D_j with Σ r_j = r, and
the rank-r orthogonal projection P = Σ_j N_jV_jV_jᵀN_jᵀ. Then, by Ky Fan's maximum principle,

    Σ_{i≤r} σ_i(M)² ≥ ‖PM‖_F² = Σ_j ‖V_jᵀN_jᵀM‖_F² ≥ Σ_j ‖V_jᵀD_j‖_F²
                    = Σ_j Σ_{i≤r_j} σ_i(D_j)²,

(the second step drops the columns of M outside piece j). Choosing the r_j to take the r
largest values of the union gives L. The argument needs U orthonormal, and nothing else: not
that N_j span all of range(R_j). So the implementation (a) keeps only the directions of R_j
with singular value > ``rank_rtol``·‖A_j‖_F (default √eps; smaller ones are rounding noise
whose computed vectors need not be orthogonal to Q), (b) re-orthogonalises those against Q
and re-orthonormalises them by QR, and (c) takes the singular values of D_j = N_jᵀA_j as
computed, not those of R_j.

Floating point: the outward tolerance
-------------------------------------
In floating point, U is orthonormal only up to η = ‖UᵀU − I‖₂ ≈ (a few)·n·u (u the unit
roundoff) after the re-orthogonalisation and QR; then L overstates the exact quantity by a
factor ≤ (1 + η)², and the SVDs, matrix products and sums of squares each add relative
errors of order (n + C)·u in units of ‖M‖_F². The subtraction ‖M‖_F² − L cancels, so these
errors are absolute in units of ‖M‖_F². Every bound therefore adds the outward tolerance

    τ = ``outward_rtol`` (default: eps · max(:data:`OUTWARD_ULPS`, 16·(n + C)))

to its squared relative error before the square root: bound = √(min(1, max(0, ‖M‖_F² − L)
/‖M‖_F² + τ)). In float64 τ ≈ 9e-13 for n + C ≤ 256, so a bound is never below √τ ≈ 1e-6
(M ≠ 0; tested). The projection bound re-orthonormalises the given Q by QR first (any
orthonormal Q is valid; QR's completion of rank-deficient columns is harmless) and adds the
same τ. The bounds are meant for float64 (``jax_enable_x64``); in float32 τ ≈ 5e-4 (a floor
of about 0.02).

Clustering (:func:`greedy_clustering`)
--------------------------------------
Sort the blocks by Frobenius norm; seed a cluster with the largest remaining block and the
following ones while the seed has ≤ r columns; try the other remaining blocks in norm order
(``order="norm"``) or by increasing relative residual ‖(I − QQᵀ)A‖_F/‖A‖_F against an
orthonormal basis Q of the seed (``order="residual"``), and add each one whose addition keeps
the method's error figure ≤ ε. If nothing joined, the largest block becomes a singleton;
after ``patience`` singletons in a row all the rest become singletons. Methods and their
figures: ``"maxnorm"`` (Weyl bound, norm order), ``"residual"`` (residual bound, residual
order), ``"approximate"`` (incremental estimate, norm order; may violate ε) and
``"certified"`` (projection bound on the incremental basis, norm order; beyond the paper).
For the three bound-based methods the true error of every cluster is ≤ its figure ≤ ε.

Compression ratio (:func:`compression_ratio`)
---------------------------------------------
original = Σ_k n·c_k parameters. A cluster with total column count c stores rank-r̃ factors,
r̃ = min(r, n, c): n·r̃ (shared left factor, singular values folded in) + r̃·c (right
factors). A singleton stores its n·c_k entries as they are. The ratio is original /
(Σ_clusters (n·r̃ + r̃·c) + Σ_singletons n·c_k); > 1 means savings. (A cluster with
c ≤ r̃·n/(n − r̃) costs at least as much as storing it raw; the definition does not hide
that.)

API and conventions
-------------------
``blocks`` is a non-empty list/tuple of 2-D arrays with the same number of rows, or one 3-D
array [K, n, c] (K blocks of equal shape). The computation runs in the floating dtype of the
blocks (float64 with ``jax_enable_x64``). The calculators are pure and jit-compiled
internally (the rank r and the shapes are static; the blocks are zero-padded to a common
width and their count to a power of two, which changes none of the quantities, so few shapes
compile); they can be called inside ``jax.jit``/``jax.vmap`` over the block values. Bad
input: an empty list, blocks that are not 2-D, mismatched row counts, a
non-integer or non-positive r, ε ∉ (0, 1), complex blocks raise ``ValueError``/``TypeError``
naming the argument. Concrete blocks (and a concrete ``basis``) holding NaN or infinity raise
a ``ValueError`` naming the argument (``blocks[i]``, ``basis``); traced ones (under
``jax.jit``/``jax.vmap``) make every error figure NaN, never a finite value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbounds._checks import check_finite, check_int, check_number, nan_unless, require
from jaxbounds._dtypes import float_dtype

__all__ = [
    "DEFAULT_OVERSAMPLING",
    "DEFAULT_PATIENCE",
    "METHODS",
    "OUTWARD_ULPS",
    "Clustering",
    "IncrementalEstimate",
    "certified_bound",
    "compression_ratio",
    "concat_svd_error",
    "greedy_clustering",
    "incremental_estimate",
    "outward_tolerance",
    "projection_bound",
    "residual_bound",
    "weyl_bound",
]

OUTWARD_ULPS = 4096
"""The outward tolerance τ is at least this many machine epsilons (float64: 9.1e-13)."""

DEFAULT_OVERSAMPLING = 5
"""Extra columns p of the incremental estimate's state (k = r + p)."""

DEFAULT_PATIENCE = 10
"""Singletons in a row after which the greedy clustering stops seeding clusters."""

METHODS = ("maxnorm", "residual", "approximate", "certified")
"""Greedy clustering methods: Weyl, residual, incremental estimate, certified projection."""

_DEFAULT_ORDER = {"maxnorm": "norm", "residual": "residual", "approximate": "norm",
                  "certified": "norm"}


# ----------------------------------------------------------------------------- checks


def _as_blocks(blocks, name: str = "blocks") -> list[jax.Array]:
    """Validate ``blocks`` and return them as a list of 2-D float arrays (same rows)."""
    if hasattr(blocks, "ndim") and hasattr(blocks, "shape"):
        if blocks.ndim != 3:
            raise ValueError(f"{name} must be a non-empty list of 2-D arrays or one 3-D array "
                             f"[K, n, c], got an array of shape {tuple(blocks.shape)}.")
        blocks = [blocks[i] for i in range(blocks.shape[0])]
    if not isinstance(blocks, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of 2-D arrays, got "
                        f"{type(blocks).__name__}.")
    if len(blocks) == 0:
        raise ValueError(f"{name} must be a non-empty list of 2-D arrays, got an empty "
                         f"{type(blocks).__name__}.")
    arrays = []
    for i, block in enumerate(blocks):
        try:
            array = block if isinstance(block, jax.Array) else jnp.asarray(block)
        except Exception as err:  # noqa: BLE001 - not an array
            raise TypeError(f"{name}[{i}] must be a 2-D numeric array, got "
                            f"{type(block).__name__}.") from err
        if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == bool):
            raise TypeError(f"{name}[{i}] must be numeric, got dtype {array.dtype}.")
        if array.ndim != 2:
            raise ValueError(f"{name}[{i}] must be a 2-D array (n rows × c columns), got "
                             f"shape {tuple(array.shape)}.")
        if 0 in array.shape:
            raise ValueError(f"{name}[{i}] must have at least one row and one column, got "
                             f"shape {tuple(array.shape)}.")
        if array.shape[0] != (arrays[0].shape[0] if arrays else array.shape[0]):
            raise ValueError(f"{name}[{i}] must have {arrays[0].shape[0]} rows like "
                             f"{name}[0] (blocks are concatenated side by side), got shape "
                             f"{tuple(array.shape)}.")
        check_finite(f"{name}[{i}]", array)
        arrays.append(array)
    dtype = float_dtype(*arrays)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(f"{name} must be real, got dtype {dtype}.")
    return [a.astype(dtype) for a in arrays]


def _tolerance(name, value) -> float | None:
    """``None``, or ``value`` checked as a finite number >= 0."""
    return None if value is None else check_number(name, value, low=0.0)


def outward_tolerance(dtype, n: int, columns: int) -> float:
    """τ = eps(dtype) · max(:data:`OUTWARD_ULPS`, 16·(n + columns)): the default outward
    tolerance added to the squared relative error of every bound (see the module docstring).
    """
    return float(jnp.finfo(dtype).eps) * max(OUTWARD_ULPS, 16 * (n + columns))


def _default_rank_rtol(dtype) -> float:
    return float(np.sqrt(jnp.finfo(dtype).eps))


# ------------------------------------------------------------------------ shared core


def _bucket(count: int) -> int:
    return 1 << (count - 1).bit_length()


def _stack(arrays: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Zero-pad the blocks to a common width and their count to a power of two: the stack
    [K_b, n, c_max] and the true widths [K_b] (0 for the padding blocks). Zero columns and
    zero blocks change no singular value, norm or head (a width-0 block fits any head)."""
    cmax = max(a.shape[1] for a in arrays)
    padded = [jnp.pad(a, ((0, 0), (0, cmax - a.shape[1]))) for a in arrays]
    extra = _bucket(len(arrays)) - len(arrays)
    padded += [jnp.zeros_like(padded[0])] * extra
    widths = np.array([a.shape[1] for a in arrays] + [0] * extra, np.int32)
    return jnp.stack(padded), jnp.asarray(widths)


def _sorted_by_norm(stack, widths):
    sq = jnp.sum(stack * stack, axis=(1, 2))
    order = jnp.argsort(-sq, stable=True)
    return stack[order], widths[order], sq[order]


def _relative_tail(total, tail):
    """√(tail/‖M‖²) clipped to [0, 1]: 0 for M = 0, NaN when ‖M‖² or the tail is not finite
    (NaN or infinity in traced blocks): never the optimistic 0 for bad input."""
    positive = total > 0
    e2 = jnp.clip(tail / jnp.where(positive, total, 1), 0, 1)
    value = jnp.where(positive, jnp.sqrt(e2), jnp.zeros_like(e2))
    return nan_unless(jnp.isfinite(total) & jnp.isfinite(tail), value)


def _upper_from_lower(total, lower, tau):
    """√(min(1, max(0, ‖M‖² − L)/‖M‖² + τ)), 0 for M = 0, NaN for non-finite input. The
    max(0, ·) comes before τ, so no bound of a non-zero M is below √τ, even when rounding
    puts L above ‖M‖²."""
    return _relative_tail(total, jnp.maximum(total - lower, 0) + tau * total)


def _prepare(blocks, outward_rtol):
    arrays = _as_blocks(blocks)
    n, columns = arrays[0].shape[0], sum(a.shape[1] for a in arrays)
    tau = _tolerance("outward_rtol", outward_rtol)
    if tau is None:
        tau = outward_tolerance(arrays[0].dtype, n, columns)
    return arrays, tau


# ---------------------------------------------------------------------- exact error


@functools.partial(jax.jit, static_argnames=("r",))
def _concat_error_core(m, r):
    s = jnp.linalg.svd(m, compute_uv=False)
    sq = s * s
    # NaN or infinity in M must reach the result, whatever the SVD makes of it.
    total = nan_unless(jnp.all(jnp.isfinite(m)), jnp.sum(sq))
    return _relative_tail(total, jnp.sum(sq[r:]))


def concat_svd_error(blocks, r: int) -> jax.Array:
    """Exact relative rank-r error e_r(M) = √(Σ_{i>r} σ_i(M)² / ‖M‖_F²) of M = [A_1, …, A_K].

    By a full SVD of the concatenation (Eckart–Young: the best rank-r approximation's
    relative Frobenius error). 0 when r ≥ min(n, C) and for M = 0. A scalar array.
    """
    arrays = _as_blocks(blocks)
    r = check_int("r", r, minimum=1)
    return _concat_error_core(jnp.concatenate(arrays, axis=1), r)


# ------------------------------------------------------------------------- Weyl bound


@jax.jit
def _weyl_core(stack, widths, r, tau):
    stack, widths, sq = _sorted_by_norm(stack, widths)
    head = jnp.cumsum(widths) <= r
    return _upper_from_lower(jnp.sum(sq), jnp.sum(jnp.where(head, sq, 0)), tau)


def weyl_bound(blocks, r: int, *, outward_rtol: float | None = None) -> jax.Array:
    """Weyl upper bound on e_r(M): L = ‖H‖_F² for the head H (Shamrai 2026, the first bound).

    H = the largest blocks by Frobenius norm, as long a prefix of that order as keeps its
    column count ≤ r (empty when the largest block alone has more than r columns: the bound
    is then 1). e_r(M) ≤ √(min(1, (‖M‖_F² − ‖H‖_F²)/‖M‖_F² + τ)), τ = ``outward_rtol``
    (default :func:`outward_tolerance`). Sound by interlacing (module docstring).
    """
    arrays, tau = _prepare(blocks, outward_rtol)
    r = check_int("r", r, minimum=1)
    stack, widths = _stack(arrays)
    return _weyl_core(stack, widths, r, tau)


# --------------------------------------------------------------------- residual bound


def _residual_step(q, used, a, rank_rtol):
    """Project ``a`` off span(q) (twice), take its numerically new directions N (orthonormal,
    ⊥ q), return the singular values of Nᵀa and q extended by N (columns at ``used``...)."""
    width = q.shape[1]
    norm = jnp.sqrt(jnp.sum(a * a))
    res = a - q @ (q.T @ a)
    res = res - q @ (q.T @ res)
    u, s, _ = jnp.linalg.svd(res, full_matrices=False)
    j = jnp.arange(s.shape[0])
    keep = (s > rank_rtol * norm) & (j < width - used)  # a prefix: s is sorted
    new = u * keep
    new = new - q @ (q.T @ new)
    new = jnp.linalg.qr(new)[0] * keep
    values = jnp.linalg.svd(new.T @ a, compute_uv=False)
    q = q.at[:, used + j].add(new, mode="drop")
    return q, used + jnp.sum(keep), values


@functools.partial(jax.jit, static_argnames=("r",))
def _residual_core(stack, widths, r, tau, rank_rtol):
    count, n, cmax = stack.shape
    stack, widths, sq = _sorted_by_norm(stack, widths)
    head = jnp.cumsum(widths) <= r
    total = jnp.sum(sq)
    weyl_lower = jnp.sum(jnp.where(head, sq, 0))
    hmax = min(count, r)
    h = (stack[:hmax] * head[:hmax, None, None]).transpose(1, 0, 2).reshape(n, hmax * cmax)
    q = jnp.zeros((n, min(n, count * cmax)), stack.dtype)
    q, used, head_values = _residual_step(q, jnp.int32(0), h, rank_rtol)

    def body(carry, a):
        q, used = carry
        q, used, values = _residual_step(q, used, a, rank_rtol)
        return (q, used), values

    rest = stack * (~head)[:, None, None]
    _, rest_values = lax.scan(body, (q, used), rest)
    values = jnp.concatenate([head_values, rest_values.ravel()])
    squares = values * values
    top = lax.top_k(squares, min(r, squares.shape[0]))[0]
    lower = jnp.maximum(jnp.sum(top), weyl_lower)
    return _upper_from_lower(total, lower, tau)


def residual_bound(blocks, r: int, *, outward_rtol: float | None = None,
                   rank_rtol: float | None = None) -> jax.Array:
    """Residual upper bound on e_r(M) (Shamrai 2026, the second bound), made sound in floats.

    L = the sum of the r largest squared singular values among those of the head H (as in
    :func:`weyl_bound`) and of D_k = N_kᵀA_k for the other blocks in norm order, N_k the
    new directions of the residual R_k = (I − QQᵀ)A_k (one re-orthogonalisation pass)
    beyond the basis Q of everything before; L is at least the Weyl L, so this bound is
    never above :func:`weyl_bound`. Directions of R_k with singular value ≤ ``rank_rtol``
    ·‖A_k‖_F (default √eps) are not added to Q. τ = ``outward_rtol`` as in
    :func:`weyl_bound`. Soundness argument: the module docstring.
    """
    arrays, tau = _prepare(blocks, outward_rtol)
    r = check_int("r", r, minimum=1)
    rank_rtol = _tolerance("rank_rtol", rank_rtol)
    if rank_rtol is None:
        rank_rtol = _default_rank_rtol(arrays[0].dtype)
    stack, widths = _stack(arrays)
    return _residual_core(stack, widths, r, tau, rank_rtol)


# --------------------------------------------------------------- incremental estimate


class IncrementalEstimate(NamedTuple):
    """Result of :func:`incremental_estimate`."""

    error: jax.Array
    """The estimated e_r(M) (not a bound: it can fall below the truth)."""
    basis: jax.Array
    """n × min(r, k): the top-r columns of the state Q (orthonormal, or zero columns where
    the estimated Gram has no energy). Feed it to :func:`projection_bound`."""
    eigenvalues: jax.Array
    """The k = min(r + p, n) tracked eigenvalues of QSQᵀ ≈ MMᵀ, descending."""


@functools.partial(jax.jit, static_argnames=("k",))
def _incremental_core(stack, r, k, rank_rtol):
    count, n, cmax = stack.shape
    stack, _, _ = _sorted_by_norm(stack, jnp.zeros(count, jnp.int32))

    def body(carry, a):
        q, lam, total = carry
        a_sq = jnp.sum(a * a)
        total = total + a_sq
        y = q.T @ a
        res = a - q @ y
        y2 = q.T @ res
        res, y = res - q @ y2, y + y2
        u, s, vt = jnp.linalg.svd(res, full_matrices=False)
        keep = s > rank_rtol * jnp.sqrt(a_sq)
        q_res = u * keep
        b = (s * keep)[:, None] * vt
        top_left = jnp.diag(lam) + y @ y.T
        cross = y @ b.T
        gram = jnp.block([[top_left, cross], [cross.T, b @ b.T]])
        w, v = jnp.linalg.eigh(gram)
        w, v = w[::-1][:k], v[:, ::-1][:, :k]
        live = w > rank_rtol**2 * total
        q = (jnp.concatenate([q, q_res], axis=1) @ v) * live
        return (q, jnp.where(live, w, 0), total), None

    init = (jnp.zeros((n, k), stack.dtype), jnp.zeros(k, stack.dtype),
            jnp.zeros((), stack.dtype))
    (q, lam, total), _ = lax.scan(body, init, stack)
    error = _upper_from_lower(total, jnp.sum(jnp.where(jnp.arange(k) < r, lam, 0)), 0.0)
    return error, q, lam


def incremental_estimate(blocks, r: int, *, oversampling: int = DEFAULT_OVERSAMPLING,
                         rank_rtol: float | None = None) -> IncrementalEstimate:
    """Incremental truncated-SVD estimate of e_r(M) (Shamrai 2026): an estimate, not a bound.

    Processes the blocks in decreasing Frobenius norm with the state (Q, S), MMᵀ ≈ QSQᵀ of
    rank k = min(r + ``oversampling``, n): for a block A, Y = QᵀA (one re-orthogonalisation
    pass), R = A − QY = Q_res·B (by an SVD of R, dropping directions with singular value ≤
    ``rank_rtol``·‖A‖_F, default √eps), G = [[S + YYᵀ, YBᵀ], [BYᵀ, BBᵀ]], G = VΛVᵀ, keep the
    top k pairs: Q ← [Q, Q_res]V_k, S ← Λ_k (columns with eigenvalue ≤ rank_rtol²·‖M‖_F² so
    far are zeroed). Returns :class:`IncrementalEstimate` (error, basis, eigenvalues), the
    error being √(max(0, ‖M‖_F² − Σ_{i≤r} λ_i)/‖M‖_F²). Exact (up to rounding) when
    k ≥ rank M. Certify it with :func:`projection_bound` on ``.basis``.
    """
    arrays = _as_blocks(blocks)
    r = check_int("r", r, minimum=1)
    oversampling = check_int("oversampling", oversampling, minimum=0)
    rank_rtol = _tolerance("rank_rtol", rank_rtol)
    if rank_rtol is None:
        rank_rtol = _default_rank_rtol(arrays[0].dtype)
    k = min(r + oversampling, arrays[0].shape[0])
    stack, _ = _stack(arrays)
    error, q, lam = _incremental_core(stack, r, k, rank_rtol)
    return IncrementalEstimate(error, q[:, :min(r, k)], lam)


# ------------------------------------------------------------------- projection bound


@jax.jit
def _projection_core(stack, basis, tau):
    q = jnp.linalg.qr(basis)[0]
    total = jnp.sum(stack * stack)
    projected = jnp.einsum("nr,knc->krc", q, stack)
    return _upper_from_lower(total, jnp.sum(projected * projected), tau)


def projection_bound(blocks, basis, *, outward_rtol: float | None = None) -> jax.Array:
    """Certified upper bound on e_r(M), r = ``basis.shape[1]``, from any n × r ``basis``.

    Q = the orthonormal factor of a QR of ``basis`` (re-orthonormalised: QQᵀM then has rank
    ≤ r whatever ``basis`` was, even rank-deficient). By Eckart–Young
    e_r(M)² ≤ ‖M − QQᵀM‖_F²/‖M‖_F² = (‖M‖_F² − Σ_k ‖QᵀA_k‖_F²)/‖M‖_F², summed block by
    block; the bound adds the outward tolerance τ = ``outward_rtol`` (default
    :func:`outward_tolerance`) to this squared error against rounding (QR's loss of
    orthogonality, the cancellation). Beyond the paper.
    """
    arrays, tau = _prepare(blocks, outward_rtol)
    n = arrays[0].shape[0]
    basis = jnp.asarray(basis)
    check_finite("basis", basis)
    if basis.ndim != 2 or basis.shape[0] != n or basis.shape[1] == 0:
        raise ValueError(f"basis must be a 2-D array with {n} rows (the blocks' row count) "
                         f"and at least one column, got shape {tuple(basis.shape)}.")
    if not jnp.issubdtype(basis.dtype, jnp.number) or jnp.issubdtype(basis.dtype,
                                                                      jnp.complexfloating):
        raise TypeError(f"basis must be real, got dtype {basis.dtype}.")
    stack, _ = _stack(arrays)
    return _projection_core(stack, basis.astype(stack.dtype), tau)


def certified_bound(blocks, r: int, *, oversampling: int = DEFAULT_OVERSAMPLING,
                    outward_rtol: float | None = None,
                    rank_rtol: float | None = None) -> jax.Array:
    """:func:`projection_bound` on the basis of :func:`incremental_estimate`: a sound upper
    bound on e_r(M) that is as tight as the incremental estimate is accurate."""
    estimate = incremental_estimate(blocks, r, oversampling=oversampling, rank_rtol=rank_rtol)
    return projection_bound(blocks, estimate.basis, outward_rtol=outward_rtol)


# ------------------------------------------------------------------------- clustering


@dataclasses.dataclass(frozen=True)
class Clustering:
    """Result of :func:`greedy_clustering`: indices into the input list of blocks."""

    clusters: tuple[tuple[int, ...], ...]
    """Blocks compressed together (each with at least two blocks), seed first."""
    singletons: tuple[int, ...]
    """Blocks stored as they are."""
    figures: tuple[float, ...]
    """The method's error figure of each cluster (≤ ε by construction)."""
    method: str
    r: int
    eps: float
    evaluations: int
    """How many times the error figure was computed."""


def _figure_fn(method: str, r: int, oversampling: int):
    if method == "maxnorm":
        return lambda bl: float(weyl_bound(bl, r))
    if method == "residual":
        return lambda bl: float(residual_bound(bl, r))
    if method == "approximate":
        return lambda bl: float(incremental_estimate(bl, r, oversampling=oversampling).error)
    return lambda bl: float(certified_bound(bl, r, oversampling=oversampling))


def _relative_residuals(seed: list[np.ndarray], others: list[np.ndarray], r: int):
    h = np.concatenate(seed, axis=1)
    u, s, _ = np.linalg.svd(h, full_matrices=False)
    keep = s > np.sqrt(np.finfo(h.dtype).eps) * (s[0] if s.size else 0)
    q = u[:, keep][:, :r]
    out = []
    for a in others:
        norm = np.linalg.norm(a)
        res = a - q @ (q.T @ a)
        out.append(np.linalg.norm(res) / norm if norm > 0 else 0.0)
    return np.asarray(out)


def greedy_clustering(blocks, r: int, eps: float, *, method: str = "residual",
                      patience: int = DEFAULT_PATIENCE,
                      oversampling: int = DEFAULT_OVERSAMPLING,
                      order: str | None = None) -> Clustering:
    """Greedy error-constrained clustering of blocks for concatenated rank-r SVD compression.

    Shamrai 2026's three algorithms (``method`` = ``"maxnorm"``, ``"residual"``,
    ``"approximate"``) and a fourth, ``"certified"`` (projection bound on the incremental
    basis). Seed with the largest remaining blocks up to r columns, try the others in
    ``order`` (``"norm"``: decreasing norm; ``"residual"``: increasing relative residual
    against the seed's basis; default per method, see the module docstring), add each one
    that keeps the figure ≤ ``eps``; seeds that attract nothing give a singleton; after
    ``patience`` singletons in a row the rest are singletons. Eager (Python loop over
    concrete blocks); each figure is a jit-compiled calculator of this module.
    """
    arrays = _as_blocks(blocks)
    r = check_int("r", r, minimum=1)
    require("eps", eps, lambda v: (v > 0) & (v < 1), "in (0, 1)")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    patience = check_int("patience", patience, minimum=1)
    oversampling = check_int("oversampling", oversampling, minimum=0)
    order = _DEFAULT_ORDER[method] if order is None else order
    if order not in ("norm", "residual"):
        raise ValueError(f"order must be 'norm' or 'residual', got {order!r}.")
    eps = float(eps)
    figure = _figure_fn(method, r, oversampling)
    host = [np.asarray(a) for a in arrays]
    widths = [a.shape[1] for a in host]
    norms = np.array([np.linalg.norm(a) for a in host])
    remaining = [int(i) for i in np.argsort(-norms, kind="stable")]
    clusters, figures, singletons = [], [], []
    streak = evaluations = 0
    while remaining:
        if streak >= patience:
            singletons.extend(remaining)
            break
        seed, columns = [remaining[0]], widths[remaining[0]]
        for i in remaining[1:]:
            if columns + widths[i] > r:
                break
            seed.append(i)
            columns += widths[i]
        candidates = [i for i in remaining if i not in seed]
        if order == "residual" and candidates:
            res = _relative_residuals([host[i] for i in seed], [host[i] for i in candidates], r)
            candidates = [candidates[j] for j in np.argsort(res, kind="stable")]
        members, value = list(seed), None
        for i in candidates:
            trial = figure([arrays[j] for j in members + [i]])
            evaluations += 1
            if trial <= eps:
                members.append(i)
                value = trial
        if len(members) == len(seed) and len(seed) == 1:
            singletons.append(remaining.pop(0))
            streak += 1
            continue
        if len(members) == len(seed):  # several small seed blocks, nothing else joined
            value = figure([arrays[j] for j in members])
            evaluations += 1
            if value > eps:
                singletons.append(remaining.pop(0))
                streak += 1
                continue
        clusters.append(tuple(members))
        figures.append(float(value))
        remaining = [i for i in remaining if i not in members]
        streak = 0
    return Clustering(tuple(clusters), tuple(singletons), tuple(figures), method, r, eps,
                      evaluations)


def compression_ratio(blocks, clusters: Sequence[Sequence[int]], r: int) -> float:
    """Original parameter count / compressed count (module docstring, "Compression ratio").

    ``blocks``: the blocks (or anything with a ``.shape`` (n, c_k)); ``clusters``: index
    tuples (e.g. ``Clustering.clusters``); blocks in no cluster are singletons stored raw. A
    cluster of c columns costs n·r̃ + r̃·c with r̃ = min(r, n, c).
    """
    if not isinstance(blocks, (list, tuple)) or not blocks:
        raise ValueError("blocks must be a non-empty list of 2-D arrays.")
    shapes = [tuple(np.shape(b)) for b in blocks]
    for i, shape in enumerate(shapes):
        if len(shape) != 2 or shape[0] != shapes[0][0]:
            raise ValueError(f"blocks[{i}] must be 2-D with {shapes[0][0]} rows, got {shape}.")
    r = check_int("r", r, minimum=1)
    n = shapes[0][0]
    seen: set[int] = set()
    compressed = 0
    for cluster in clusters:
        for i in cluster:
            if not 0 <= i < len(shapes) or i in seen:
                raise ValueError(f"clusters must hold distinct indices in [0, {len(shapes)}), "
                                 f"got {i!r} in {tuple(cluster)!r}.")
            seen.add(i)
        c = sum(shapes[i][1] for i in cluster)
        rank = min(r, n, c)
        compressed += n * rank + rank * c
    compressed += sum(n * shapes[i][1] for i in range(len(shapes)) if i not in seen)
    original = sum(n * c for _, c in shapes)
    return original / compressed if compressed else math.inf
