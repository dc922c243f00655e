r"""Sparse linear regression under local differential privacy (LDP): mechanisms, the
non-interactive estimator, and the minimax-rate calculators.

Paper: Liyang Zhu, Meng Ding, Vaneet Aggarwal, Jinhui Xu and Di Wang, "Improved analysis of
sparse linear regression in local differential privacy model" (ICLR 2024, arXiv 2310.07367).
Mechanisms: Dwork, McSherry, Nissim and Smith (2006) for Laplace; Dwork and Roth, "The
algorithmic foundations of differential privacy" (2014), Thm A.1, for the Gaussian.

Model and protocol
------------------
Users i = 1 … n each hold (x_i, y_i) with y_i = ⟨x_i, β*⟩ + noise, β* k-sparse in ℝ^d. In
the *non-interactive* (NLDP) protocol each user sends one message, computed from her own
data only, and the server estimates β* from the n messages:

1. Clip (:func:`clip_data`): x̃_i = clip(x_i, −r, r) per coordinate (so ‖x̃_i‖_∞ ≤ r) and
   ỹ_i = clip(y_i, −r', r').
2. Release (:func:`privatize_statistics`) the sufficient statistics
   v_i = (upper triangle of x̃_i x̃_iᵀ, diagonal included: d(d+1)/2 numbers;  x̃_i ỹ_i: d
   numbers) plus noise. The symmetric matrix is returned mirrored from its noisy upper
   triangle (post-processing).
3. Server (:func:`sparse_estimate`): Σ̂ = (1/n) Σ_i M_i, ĉ = (1/n) Σ_i c_i, Σ̄ = Σ̂ with its
   eigenvalues raised to at least ``min_eigenvalue`` (post-processing), then either the
   hard-thresholded least squares β̂ = H_k(Σ̄⁻¹ ĉ) (``method="threshold_ls"``) or iterative
   hard thresholding β ← H_k(β − η(Σ̄β − ĉ)), η = 1/λ_max(Σ̄), from β = 0
   (``method="iht"``). H_k keeps the k entries of largest magnitude (:func:`hard_threshold`).

With public unlabeled data (x'_1 … x'_m, no labels) the server estimates Σ from the public
x's (clipped the same way) and the users release only x̃_i ỹ_i (:func:`privatize_products`)
with the whole budget ε. Its error then has a covariance-estimate term ∝ 1/√m besides the privacy
term ∝ 1/(√n ε), so the public-data rate needs m to grow with n (m ≳ c·n·ε²).

Privacy accounting (sensitivities of one user's release)
--------------------------------------------------------
Two neighbouring inputs are two arbitrary users' data; after clipping, each off-diagonal
entry x̃_a x̃_b lies in [−r², r²] (range 2r²), each diagonal entry x̃_a² in [0, r²] (range r²)
and each entry x̃_a ỹ in [−r r', r r'] (range 2 r r'). Hence
(:func:`release_sensitivity`)

* L1: Δ₁(matrix) = d(d−1)/2 · 2r² + d · r² = d² r²,   Δ₁(vector) = 2 d r r';
* L2: Δ₂(matrix) = r² √(2d(d−1) + d),                  Δ₂(vector) = 2 √d r r'.

These are sound upper bounds (never below the true sensitivity). The pair x = r·1, y = r'
against x' = 0 attains ‖v − v'‖₁ = d(d+1)/2 · r² + d r r', so the L1 matrix bound is tight
within a factor 2.

* Laplace, pure ε-LDP (``mechanism="laplace"``, the default). Joint release
  (``matrix_share=None``): every coordinate gets Lap(b), b = (Δ₁(matrix) + Δ₁(vector))/ε.
  Split (``matrix_share=s``): the matrix gets Lap(Δ₁(matrix)/(sε)) and the vector
  Lap(Δ₁(vector)/((1 − s)ε)), ε-LDP by basic composition (sε + (1 − s)ε = ε). The joint
  release equals the split with s = Δ₁(matrix)/(Δ₁(matrix) + Δ₁(vector)). Lap(b) has
  density e^{−|z|/b}/(2b) and variance 2b².
* Gaussian, **(ε, δ)-LDP only** (``mechanism="gaussian"``, needs ``delta``): N(0, σ²) on
  every coordinate, σ = Δ₂ √(2 ln(1.25/δ))/ε with Δ₂ the L2 sensitivity of the released
  vector (joint: √(Δ₂(matrix)² + Δ₂(vector)²)); valid for ε ∈ (0, 1) (Dwork and Roth,
  Thm A.1). Its privacy loss L = ln(p(o)/p'(o)) is N(μ, 2μ) with μ = Δ₂²/(2σ²), and
  P[L > ε] ≤ δ.
* Public-data variant: only x̃ỹ is released, with Δ₁ = 2 d r r' (Laplace) or
  Δ₂ = 2 √d r r' (Gaussian) and the whole ε.

Everything the server does afterwards is post-processing and costs no privacy.

Rates (paper) and what this implementation attains
--------------------------------------------------
ℓ2 estimation error ‖β̂ − β*‖₂ for sub-Gaussian data, up to constants and logarithms
(calculators, constants exposed as ``constant`` and defaulting to 1):

* NLDP lower bound (:func:`nldp_lower_bound`): √(d k log d) / (√n ε).
* NLDP upper bound (:func:`nldp_upper_bound`): d √k / (√n ε); with public unlabeled data
  (``public_data=True``) improved by √d to √(d k) / (√n ε).
* Sequentially interactive lower bound (:func:`interactive_lower_bound`): √(d k)/(√n ε).
* Sequentially interactive upper bound (:func:`interactive_upper_bound`): k √d/(√n ε).

The dependence on n and ε, ∝ 1/(√n ε), is what this implementation reproduces (the
experiment ``ldp_regression`` fits the slopes). In d the Gaussian mechanism matches the
paper's d√k (per-entry noise ∝ Δ₂ ∝ d r²), while the Laplace mechanism, whose per-entry
noise is ∝ Δ₁ ∝ d² r², pays an extra factor of about d: pure ε-LDP at the paper's rate needs
a mechanism with better high-dimensional noise (e.g. Duchi, Jordan and Wainwright's ℓ∞
mechanism), which is not implemented here.

Conventions
-----------
Pure functions, jit-compiled, vmappable (over keys, ε, data), float64 when
``jax_enable_x64`` is on (the dtype follows the inputs). Randomness is explicit
(``jax.random`` keys). Bad input: concrete values are checked eagerly and raise
``ValueError``/``TypeError`` naming the argument, the value and the expected range (ε ≤ 0,
δ ∉ (0, 1), k ∉ [1, d], n ≤ 0, clip ≤ 0, shapes). Traced out-of-range values (under
``jit``/``vmap``) give NaN outputs; the ``checked_*`` variants raise under jit instead.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import (
    check_at_most,
    check_choice,
    check_int,
    check_matrix,
    check_mechanism,
    check_shape,
    in_ranges,
    nan_unless,
    require,
    with_checked,
)
from jaxbounds._dtypes import as_float, float_dtype

__all__ = [
    "MECHANISMS",
    "METHODS",
    "checked_gaussian_sigma",
    "checked_interactive_lower_bound",
    "checked_interactive_upper_bound",
    "checked_laplace_scale",
    "checked_nldp_lower_bound",
    "checked_nldp_upper_bound",
    "clip_data",
    "gaussian_mechanism",
    "gaussian_sigma",
    "hard_threshold",
    "interactive_lower_bound",
    "interactive_upper_bound",
    "laplace_mechanism",
    "laplace_scale",
    "ldp_sparse_regression",
    "make_sparse_regression",
    "nldp_lower_bound",
    "nldp_upper_bound",
    "privatize_products",
    "privatize_statistics",
    "release_noise_scales",
    "release_sensitivity",
    "sparse_estimate",
    "upper_triangle",
]

MECHANISMS = ("laplace", "gaussian")
"""``"laplace"``: pure ε-LDP. ``"gaussian"``: (ε, δ)-LDP only."""

METHODS = ("threshold_ls", "iht")
"""Server estimators: hard-thresholded least squares, iterative hard thresholding."""


# ------------------------------------------------------------------- argument ranges

_POSITIVE = (lambda v: v > 0, "> 0")
_OPEN01 = (lambda v: (v > 0) & (v < 1), "in (0, 1)")
_GAUSSIAN_EPSILON = (_OPEN01[0], "in (0, 1) for the Gaussian mechanism (Dwork and Roth, "
                                 "Thm A.1)")
_LAPLACE = {"sensitivity": _POSITIVE, "epsilon": _POSITIVE}
_GAUSSIAN = {"sensitivity": _POSITIVE, "epsilon": _GAUSSIAN_EPSILON, "delta": _OPEN01}
_CLIPS = {"clip_x": _POSITIVE, "clip_y": _POSITIVE}


def _data(x, y):
    """Check ``x`` [n, d] and ``y`` [n] (any numeric dtype)."""
    n = check_matrix("x", x, kind="numeric").shape[0]
    check_shape("y", y, (n,), " to match x")


def _share(matrix_share):
    if matrix_share is not None:
        require("matrix_share", matrix_share, _OPEN01[0], "in (0, 1) or None")


# ----------------------------------------------------------------------- mechanisms


@with_checked(ranges=_LAPLACE)
def laplace_scale(sensitivity, epsilon):
    """Laplace scale b = Δ₁/ε of the pure ε-DP Laplace mechanism (noise variance 2b²).

    ``sensitivity`` = Δ₁ > 0 (L1 sensitivity of the released vector), ``epsilon`` > 0.
    Broadcasts. Bad input: ValueError eagerly, NaN under jit (see :func:`checked_laplace_scale`).
    """
    sensitivity, epsilon = as_float(sensitivity, epsilon)
    return nan_unless(in_ranges(_LAPLACE, sensitivity=sensitivity, epsilon=epsilon),
                      sensitivity / epsilon)


@with_checked(ranges=_GAUSSIAN)
def gaussian_sigma(sensitivity, epsilon, delta):
    """σ = Δ₂ √(2 ln(1.25/δ)) / ε of the (ε, δ)-DP Gaussian mechanism (Dwork and Roth 2014,
    Thm A.1), valid for ε ∈ (0, 1), δ ∈ (0, 1). This is **not** pure ε-DP.

    ``sensitivity`` = Δ₂ > 0 is the L2 sensitivity. Broadcasts. Bad input: ValueError
    eagerly, NaN under jit (see :func:`checked_gaussian_sigma`).
    """
    s, e, d = as_float(sensitivity, epsilon, delta)
    valid = in_ranges(_GAUSSIAN, sensitivity=s, epsilon=e, delta=d)
    d_safe = jnp.where(valid, d, 0.5)
    return nan_unless(valid, s * jnp.sqrt(2 * jnp.log(1.25 / d_safe)) / e)


checked_laplace_scale = laplace_scale.checked
checked_gaussian_sigma = gaussian_sigma.checked
# The unchecked computations, for use inside other traced functions.
_laplace_scale = laplace_scale.__wrapped__
_gaussian_sigma = gaussian_sigma.__wrapped__


@with_checked(ranges=_LAPLACE)
def laplace_mechanism(key, value, sensitivity, epsilon):
    """Pure ε-DP Laplace mechanism: value + Lap(b) i.i.d. per entry, b = Δ₁/ε.

    If every pair of neighbouring inputs gives values with ‖v − v'‖₁ ≤ Δ₁ (``sensitivity``),
    the output densities satisfy p(o)/p'(o) = exp((‖o − v'‖₁ − ‖o − v‖₁)/b) ≤ e^ε.
    ``sensitivity`` and ``epsilon`` are scalars (traced values allowed; out of range gives
    NaN). Bad input: ValueError eagerly.
    """
    value = jnp.asarray(value, float_dtype(value, sensitivity, epsilon))
    scale = _laplace_scale(sensitivity, epsilon).astype(value.dtype)
    return value + scale * jax.random.laplace(key, value.shape, value.dtype)


@with_checked(ranges=_GAUSSIAN)
def gaussian_mechanism(key, value, sensitivity, epsilon, delta):
    """(ε, δ)-DP Gaussian mechanism (**not** pure ε-DP): value + N(0, σ²) i.i.d. per entry,
    σ = :func:`gaussian_sigma` (Δ₂, ε, δ), ε ∈ (0, 1).

    The privacy loss between neighbours at L2 distance Δ₂ is N(μ, 2μ), μ = Δ₂²/(2σ²), and
    P[loss > ε] ≤ δ. Bad input: ValueError eagerly, NaN under jit.
    """
    value = jnp.asarray(value, float_dtype(value, sensitivity, epsilon, delta))
    sigma = _gaussian_sigma(sensitivity, epsilon, delta).astype(value.dtype)
    return value + sigma * jax.random.normal(key, value.shape, value.dtype)


# ----------------------------------------------------------------- the user's side


@with_checked(ranges=_CLIPS)
def clip_data(x, y, clip_x, clip_y):
    """Per-coordinate clipping: x̃ = clip(x, −r, r) (so ‖x̃‖_∞ ≤ r), ỹ = clip(y, −r', r').

    ``clip_x`` = r > 0, ``clip_y`` = r' > 0. Any shapes (broadcast against the clip values).
    """
    x, y, clip_x, clip_y = as_float(x, y, clip_x, clip_y)
    x_c = nan_unless(clip_x > 0, jnp.clip(x, -clip_x, clip_x))
    y_c = nan_unless(clip_y > 0, jnp.clip(y, -clip_y, clip_y))
    return x_c, y_c


_clip_data = clip_data.__wrapped__


def upper_triangle(matrices):
    """The d(d+1)/2 upper-triangle entries (diagonal included, row-major) of ``[..., d, d]``."""
    d = jnp.shape(matrices)[-1]
    rows, cols = np.triu_indices(d)
    return matrices[..., rows, cols]


def _symmetric_from_upper(values, d):
    # a gather (entry (a, b) reads upper-triangle position of (min(a, b), max(a, b))): several
    # times faster on CPU than two scatters into a zero [n, d, d] array, same values
    rows, cols = np.triu_indices(d)
    position = np.empty((d, d), np.int32)
    position[rows, cols] = position[cols, rows] = np.arange(rows.size)
    return values[..., position]


def _release_checks(d, norm, **_):
    check_int("d", d, minimum=1)
    check_choice("norm", norm, (1, 2))


@with_checked(ranges=_CLIPS, checks=_release_checks, static_argnames=("d", "norm"))
def release_sensitivity(d: int, clip_x, clip_y, *, norm: int = 1):
    """Sensitivities (matrix part, vector part) of one user's release, for ‖x̃‖_∞ ≤ r,
    |ỹ| ≤ r'. The matrix part is the upper triangle of x̃x̃ᵀ (d(d+1)/2 numbers).

    ``norm=1``: (d² r², 2 d r r'). ``norm=2``: (r² √(2d(d−1) + d), 2 √d r r'). Sound upper
    bounds: each off-diagonal entry has range 2r², each diagonal entry r², each x̃_a ỹ 2 r r'.
    """
    r, r_y = as_float(clip_x, clip_y)
    valid = (r > 0) & (r_y > 0)
    if norm == 1:
        matrix, vector = d * d * r**2, 2 * d * r * r_y
    else:
        matrix = r**2 * math.sqrt(2 * d * (d - 1) + d)
        vector = 2 * math.sqrt(d) * r * r_y
    return nan_unless(valid, matrix), nan_unless(valid, vector)


def release_noise_scales(d: int, epsilon, clip_x, clip_y, *, mechanism="laplace", delta=None,
                         matrix_share=None, public=False):
    """Per-coordinate noise scales (matrix part, vector part) of one user's release.

    Laplace: the Laplace scales b (noise variance 2b²). Gaussian: the standard deviations σ.
    ``public=True``: the public-data variant, where only x̃ỹ is released (the matrix scale is
    then NaN). See the module docstring for the accounting.
    """
    check_int("d", d, minimum=1)
    check_mechanism(mechanism, epsilon, delta)
    for name, value in (("clip_x", clip_x), ("clip_y", clip_y)):
        require(name, value, *_POSITIVE)
    _share(matrix_share)
    if public and matrix_share is not None:
        raise ValueError("matrix_share must be None when public=True (no matrix is released).")
    return _noise_scales(d, epsilon, clip_x, clip_y, mechanism, delta, matrix_share, public)


def _noise_scales(d, epsilon, clip_x, clip_y, mechanism, delta, matrix_share, public):
    norm = 1 if mechanism == "laplace" else 2
    s_mat, s_vec = release_sensitivity.__wrapped__(d, clip_x, clip_y, norm=norm)
    dtype = s_mat.dtype
    epsilon = jnp.asarray(epsilon, dtype)

    def scale(sensitivity, eps):
        if mechanism == "laplace":
            return _laplace_scale(sensitivity, eps)
        return _gaussian_sigma(sensitivity, eps, delta)

    if public:
        return jnp.asarray(jnp.nan, dtype), scale(s_vec, epsilon)
    if matrix_share is None:
        joint = s_mat + s_vec if norm == 1 else jnp.sqrt(s_mat**2 + s_vec**2)
        b = scale(joint, epsilon)
        return b, b
    share = jnp.asarray(matrix_share, dtype)
    valid = (share > 0) & (share < 1)
    share = jnp.where(valid, share, 0.5)
    return (nan_unless(valid, scale(s_mat, share * epsilon)),
            nan_unless(valid, scale(s_vec, (1 - share) * epsilon)))


def _noise(key, shape, mechanism, dtype):
    if mechanism == "laplace":
        return jax.random.laplace(key, shape, dtype)
    return jax.random.normal(key, shape, dtype)


@functools.partial(jax.jit, static_argnames=("mechanism", "public", "split"))
def _privatize(key, x, y, epsilon, clip_x, clip_y, delta, matrix_share, *, mechanism, public,
               split):
    dtype = float_dtype(x, y, epsilon, clip_x, clip_y)
    x_c, y_c = _clip_data(jnp.asarray(x, dtype), jnp.asarray(y, dtype), clip_x, clip_y)
    n, d = x_c.shape
    b_mat, b_vec = _noise_scales(d, epsilon, clip_x, clip_y, mechanism, delta,
                                 matrix_share if split else None, public)
    vectors = x_c * y_c[:, None]
    if public:
        return vectors + b_vec.astype(dtype) * _noise(key, (n, d), mechanism, dtype)
    m = d * (d + 1) // 2
    noise = _noise(key, (n, m + d), mechanism, dtype)
    upper = upper_triangle(x_c[:, :, None] * x_c[:, None, :])
    upper = upper + b_mat.astype(dtype) * noise[:, :m]
    vectors = vectors + b_vec.astype(dtype) * noise[:, m:]
    return _symmetric_from_upper(upper, d), vectors


def _release_arguments(x, y, epsilon, clip_x, clip_y, mechanism, delta):
    """The eager checks shared by :func:`privatize_statistics` and :func:`privatize_products`."""
    _data(x, y)
    check_mechanism(mechanism, epsilon, delta)
    for name, value in (("clip_x", clip_x), ("clip_y", clip_y)):
        require(name, value, *_POSITIVE)


def privatize_statistics(key, x, y, epsilon, *, clip_x=1.0, clip_y=1.0, mechanism="laplace",
                         delta=None, matrix_share=None):
    """Each user's LDP release of her sufficient statistics (non-interactive protocol).

    For each row i: clip (:func:`clip_data`), then release M_i = x̃_i x̃_iᵀ + N_i (noise on
    the d(d+1)/2 upper-triangle entries, mirrored) and c_i = x̃_i ỹ_i + n_i.

    * ``mechanism="laplace"``: pure ε-LDP. ``matrix_share=None`` releases the d(d+1)/2 + d
      numbers jointly with Lap((d²r² + 2dr r')/ε); ``matrix_share=s`` splits ε into sε for
      the matrix (Lap(d²r²/(sε))) and (1 − s)ε for the vector (Lap(2dr r'/((1 − s)ε))).
    * ``mechanism="gaussian"``, ``delta`` in (0, 1), ε in (0, 1): (ε, δ)-LDP only, with
      σ = Δ₂ √(2 ln(1.25/δ))/ε (:func:`release_noise_scales`).

    Args: ``key`` (one key; users get independent noise), ``x`` [n, d], ``y`` [n],
    ``epsilon`` (scalar; may be traced, e.g. vmapped: out of range gives NaN), ``clip_x`` = r,
    ``clip_y`` = r'. Returns (matrices [n, d, d], vectors [n, d]).
    """
    _release_arguments(x, y, epsilon, clip_x, clip_y, mechanism, delta)
    _share(matrix_share)
    return _privatize(key, x, y, epsilon, clip_x, clip_y, delta,
                      0.5 if matrix_share is None else matrix_share,
                      mechanism=mechanism, public=False, split=matrix_share is not None)


def privatize_products(key, x, y, epsilon, *, clip_x=1.0, clip_y=1.0, mechanism="laplace",
                       delta=None):
    """The public-data variant's release: only c_i = x̃_i ỹ_i + n_i, with the whole ε.

    Laplace (pure ε-LDP): Lap(2 d r r'/ε). Gaussian ((ε, δ)-LDP only): σ = 2√d r r'
    √(2 ln(1.25/δ))/ε. Returns vectors [n, d]. Arguments as :func:`privatize_statistics`.
    """
    _release_arguments(x, y, epsilon, clip_x, clip_y, mechanism, delta)
    return _privatize(key, x, y, epsilon, clip_x, clip_y, delta, 0.5,
                      mechanism=mechanism, public=True, split=False)


# ------------------------------------------------------------------ the server's side


@functools.partial(jax.jit, static_argnames=("k",))
def _hard_threshold(v, k):
    _, idx = jax.lax.top_k(jnp.abs(v), k)
    mask = jnp.any(jax.nn.one_hot(idx, v.shape[-1], dtype=bool), axis=-2)
    return jnp.where(mask, v, 0)


def hard_threshold(v, k: int):
    """H_k(v): keep the k entries of largest magnitude along the last axis, zero the rest."""
    d = jnp.shape(v)[-1] if jnp.ndim(v) else 0
    check_int("k", k, minimum=1, maximum=d)
    return _hard_threshold(v, k)


@functools.partial(jax.jit, static_argnames=("k", "method", "num_iters"))
def _sparse_estimate(cov, xy, k, min_eigenvalue, *, method, num_iters):
    cov, xy, floor = as_float(cov, xy, min_eigenvalue)
    sym = (cov + jnp.swapaxes(cov, -1, -2)) / 2
    evals, evecs = jnp.linalg.eigh(sym)
    evals = jnp.maximum(evals, floor)
    if method == "threshold_ls":
        coef = jnp.einsum("ij,j,kj,k->i", evecs, 1 / evals, evecs, xy)
        beta = _hard_threshold(coef, k)
    else:
        cov_bar = (evecs * evals) @ evecs.T
        step = 1 / evals[-1]

        def body(_, beta):
            return _hard_threshold(beta - step * (cov_bar @ beta - xy), k)

        beta = jax.lax.fori_loop(0, num_iters, body, jnp.zeros_like(xy))
    return nan_unless(floor > 0, beta)


def sparse_estimate(cov, xy, k: int, *, method="iht", min_eigenvalue=1e-2,
                    num_iters=200):
    """The server's k-sparse estimate from aggregated (noisy) statistics.

    ``cov`` [d, d] ≈ Σ̂ = mean of the released matrices (or the public covariance), ``xy``
    [d] ≈ ĉ = mean of the released vectors. Σ̄ = Σ̂ symmetrised with its eigenvalues raised
    to ≥ ``min_eigenvalue`` (> 0). ``method="threshold_ls"``: β̂ = H_k(Σ̄⁻¹ĉ).
    ``method="iht"``: ``num_iters`` steps of β ← H_k(β − (Σ̄β − ĉ)/λ_max(Σ̄)) from 0.
    Post-processing only (no privacy cost). vmap over a leading batch axis for many problems.
    """
    d = check_matrix("cov", cov, kind="numeric").shape[0]
    check_shape("cov", cov, (d, d), " (square)")
    check_shape("xy", xy, (d,), " like cov")
    check_int("k", k, minimum=1, maximum=d)
    check_choice("method", method, METHODS)
    check_int("num_iters", num_iters, minimum=1)
    require("min_eigenvalue", min_eigenvalue, *_POSITIVE)
    return _sparse_estimate(cov, xy, k, min_eigenvalue, method=method, num_iters=num_iters)


def ldp_sparse_regression(key, x, y, k: int, epsilon, *, clip_x=1.0, clip_y=1.0,
                          public_x=None, mechanism="laplace", delta=None, matrix_share=None,
                          method="iht", min_eigenvalue=1e-2, num_iters=200):
    """End to end: users privatise (non-interactive LDP), the server estimates a k-sparse β.

    Without ``public_x``: :func:`privatize_statistics` then :func:`sparse_estimate` on the
    means of the released matrices and vectors. With ``public_x`` [m, d] (public unlabeled
    data): the server uses (1/m) Σ x̃'x̃'ᵀ of the clipped public x's as Σ̂, and the users
    release only x̃ỹ (:func:`privatize_products`) with the whole ε. Pure ε-LDP with
    ``mechanism="laplace"``; (ε, δ)-LDP with ``mechanism="gaussian"``. Returns β̂ [d].
    """
    _data(x, y)
    check_int("k", k, minimum=1, maximum=jnp.shape(x)[1])
    common = dict(clip_x=clip_x, clip_y=clip_y, mechanism=mechanism, delta=delta)
    if public_x is None:
        mats, vecs = privatize_statistics(key, x, y, epsilon, matrix_share=matrix_share,
                                          **common)
        cov = mats.mean(0)
    else:
        if jnp.ndim(public_x) != 2 or jnp.shape(public_x)[1] != jnp.shape(x)[1]:
            raise ValueError(f"public_x must have shape [m, d] with d = {jnp.shape(x)[1]}, got "
                             f"{jnp.shape(public_x)}.")
        if matrix_share is not None:
            raise ValueError("matrix_share must be None with public_x (no matrix released).")
        vecs = privatize_products(key, x, y, epsilon, **common)
        x_pub = jnp.clip(jnp.asarray(public_x, vecs.dtype), -clip_x, clip_x)
        cov = x_pub.T @ x_pub / x_pub.shape[0]
    return sparse_estimate(cov, vecs.mean(0), k, method=method, min_eigenvalue=min_eigenvalue,
                           num_iters=num_iters)


def make_sparse_regression(key, n: int, beta, *, design="rademacher", noise_std=0.5):
    """Synthetic sub-Gaussian data: x [n, d] with i.i.d. Rademacher (±1) or standard Gaussian
    entries (Σ = I), y = xβ + N(0, noise_std²). Returns (x, y)."""
    check_int("n", n, minimum=1)
    check_choice("design", design, ("rademacher", "gaussian"))
    require("noise_std", noise_std, lambda v: v >= 0, ">= 0")
    return _make_data(key, n, *as_float(beta), noise_std, design=design)


@functools.partial(jax.jit, static_argnames=("n", "design"))
def _make_data(key, n, beta, noise_std, *, design):
    kx, ky = jax.random.split(key)
    d = beta.shape[-1]
    if design == "rademacher":
        x = jax.random.rademacher(kx, (n, d), beta.dtype)
    else:
        x = jax.random.normal(kx, (n, d), beta.dtype)
    y = x @ beta + noise_std * jax.random.normal(ky, (n,), beta.dtype)
    return x, y


# --------------------------------------------------------------- rate calculators


_RATE = {"n": _POSITIVE, "d": (lambda v: v >= 1, ">= 1"), "k": (lambda v: v >= 1, ">= 1"),
         "epsilon": _POSITIVE, "constant": _POSITIVE}
_rate = with_checked(lambda k, d, **_: [(jnp.asarray(k) <= jnp.asarray(d), "k must be <= d")],
                     ranges=_RATE, checks=lambda k, d, **_: check_at_most("k", k, "d", d))


def _rate_prepare(n, d, k, epsilon, constant):
    n, d, k, epsilon, constant = as_float(n, d, k, epsilon, constant)
    valid = in_ranges(_RATE, n=n, d=d, k=k, epsilon=epsilon, constant=constant) & (k <= d)
    safe = lambda v: jnp.where(valid, v, 1)
    return valid, safe(n), safe(d), safe(k), safe(epsilon), safe(constant)


@_rate
def nldp_lower_bound(n, d, k, epsilon, *, constant=1.0):
    """Non-interactive ε-LDP minimax lower bound on ‖β̂ − β*‖₂ (Zhu et al. 2024, Thm 1):
    C √(d k log d) / (√n ε), sub-Gaussian data, k-sparse β* (natural log; 0 at d = 1).

    Broadcasts; n > 0, 1 ≤ k ≤ d, ε > 0, C = ``constant`` > 0. Bad input: ValueError
    eagerly, NaN under jit (see :func:`checked_nldp_lower_bound`).
    """
    valid, n, d, k, e, c = _rate_prepare(n, d, k, epsilon, constant)
    return nan_unless(valid, c * jnp.sqrt(d * k * jnp.log(d)) / (jnp.sqrt(n) * e))


@_rate
def nldp_upper_bound(n, d, k, epsilon, *, constant=1.0, public_data=False):
    """Non-interactive LDP upper bound of the paper's algorithm (up to logarithms):
    C d √k / (√n ε); with public unlabeled data (``public_data=True``) improved by √d to
    C √(d k) / (√n ε). Same conventions as :func:`nldp_lower_bound`.
    """
    valid, n, d, k, e, c = _rate_prepare(n, d, k, epsilon, constant)
    d_factor = jnp.where(public_data, jnp.sqrt(d), d)
    return nan_unless(valid, c * d_factor * jnp.sqrt(k) / (jnp.sqrt(n) * e))


@_rate
def interactive_lower_bound(n, d, k, epsilon, *, constant=1.0):
    """Sequentially interactive ε-LDP lower bound: C √(d k) / (√n ε). Conventions as
    :func:`nldp_lower_bound`."""
    valid, n, d, k, e, c = _rate_prepare(n, d, k, epsilon, constant)
    return nan_unless(valid, c * jnp.sqrt(d * k) / (jnp.sqrt(n) * e))


@_rate
def interactive_upper_bound(n, d, k, epsilon, *, constant=1.0):
    """Sequentially interactive LDP upper bound (up to logarithms): C k √d / (√n ε).
    Conventions as :func:`nldp_lower_bound`."""
    valid, n, d, k, e, c = _rate_prepare(n, d, k, epsilon, constant)
    return nan_unless(valid, c * k * jnp.sqrt(d) / (jnp.sqrt(n) * e))


checked_nldp_lower_bound = nldp_lower_bound.checked
checked_nldp_upper_bound = nldp_upper_bound.checked
checked_interactive_lower_bound = interactive_lower_bound.checked
checked_interactive_upper_bound = interactive_upper_bound.checked
