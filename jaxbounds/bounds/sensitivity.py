r"""ℓp sensitivities, Lewis weights and sensitivity sampling for ℓp subspace embeddings.

Woodruff & Yasuda, "Sharper Bounds for ℓp Sensitivity Sampling" (ICML 2023,
arXiv 2306.00732). For ``A ∈ R^{n×d}`` with rows ``a_i`` and ``p ≥ 1``:

* **ℓp sensitivity** of row i:
  ``s_i = sup_x |⟨a_i, x⟩|^p / ‖Ax‖_p^p = 1 / min{‖Ax‖_p^p : ⟨a_i, x⟩ = 1}``, and the
  **total sensitivity** ``𝔖 = Σ_i s_i``. It depends only on the column space of ``A``;
  ``𝔖 = d`` at p = 2, ``𝔖 ≤ d`` for p < 2 and ``𝔖 ≤ d^{p/2}`` for p > 2.
* **Leverage scores** ``τ_i = a_iᵀ (AᵀA)⁺ a_i = ‖U_i‖²`` for an orthonormal basis ``U`` of the
  column space (here QR, then an SVD of the small R factor so that rank-deficient ``A`` is
  handled): ``Σ τ_i = rank(A)``; ``s_i = τ_i`` at p = 2.
* **ℓp Lewis weights** (Lewis 1978; Cohen & Peng, "ℓp row sampling by Lewis weights",
  STOC 2015, arXiv 1412.0588): the unique ``w > 0`` with
  ``w_i = τ_i(W^{1/2−1/p} A)``, equivalently ``w_i = (a_iᵀ (Aᵀ W^{1−2/p} A)⁻¹ a_i)^{p/2}``;
  ``Σ w_i = rank(A)``.
* **Sensitivity sampling**: keep row i with probability ``q_i = min(1, m·s_i/Σ_j s_j)``
  and rescale it by ``q_i^{−1/p}``, so that ``E‖SAx‖_p^p = ‖Ax‖_p^p`` for every x. ``S`` is
  an ε-subspace embedding when ``(1 − ε)‖Ax‖_p ≤ ‖SAx‖_p ≤ (1 + ε)‖Ax‖_p`` for all x.

Bounds between the scores (used and tested here)
-------------------------------------------------
* Root leverage (p < 2): ``|⟨a_i,x⟩|^p ≤ (τ_i ‖Ax‖₂²)^{p/2} ≤ τ_i^{p/2} ‖Ax‖_p^p`` since
  ``‖y‖₂ ≤ ‖y‖_p``, so ``s_i ≤ τ_i^{p/2}`` (:func:`root_leverage_bound`).
* Lewis weights (Cohen & Peng 2015, Lemma 2.3-style change of measure; see also
  Padmanabhan, Woodruff & Zhang, "Computing approximate ℓp sensitivities", NeurIPS 2023):
  with ``R = Aᵀ W^{1−2/p} A``, Cauchy–Schwarz gives
  ``|⟨a_i,x⟩| ≤ w_i^{1/p} ‖W^{1/2−1/p}Ax‖₂``, and then
  ``s_i ≤ w_i`` for p ≤ 2 and ``s_i ≤ d^{p/2−1} w_i`` for p ≥ 2 (Hölder).
  Conversely ``s_i ≥ d^{p/2−1} w_i`` for p ≤ 2 (Chen & Derezinski, COLT 2021; the footnote
  of arXiv 2306.00732v2). :func:`lewis_sensitivity_bound` returns the upper bounds.
* Duality: ``s_i^{1/p} = min{‖u‖_q : Aᵀu = a_i}`` with ``1/p + 1/q = 1``, so *any* ``u`` with
  ``Aᵀu = a_i`` certifies ``s_i ≤ ‖u‖_q^p``, and *any* ``x`` certifies
  ``s_i ≥ |⟨a_i,x⟩|^p / ‖Ax‖_p^p`` (weak duality; Hölder).

How :func:`lp_sensitivities` computes them
-------------------------------------------
* p = 2: exactly, the leverage scores (jitted).
* p = 1, ``method="lp"`` (the default at p = 1): exactly, one linear program per row,
  ``min 1ᵀ(y⁺ + y⁻)`` s.t. ``U z − y⁺ + y⁻ = 0``, ``⟨u_i, z⟩ = 1``, ``y± ≥ 0`` (``U`` an
  orthonormal basis of the column space), solved by HiGHS through
  ``scipy.optimize.linprog``. This runs **outside jit**, in NumPy, row by row
  (milliseconds per row for n ~ 10³); ``s_i = 1/opt``.
* otherwise (``method="bounds"``): a certified bracket ``lower ≤ s ≤ upper``, jitted and
  vectorised over rows (``lax.map`` in batches):
  - lower: the best ratio ``|⟨a_i,x⟩|^p/‖Ax‖_p^p`` over the Lewis change-of-measure
    direction ``x = R⁻¹a_i`` and the iterates of an IRLS solve of
    ``min ‖Ax‖_p^p s.t. ⟨a_i,x⟩ = 1`` started there (weights ``max(|y_j|, η)^{p−2}``;
    steps damped by ``1/(p − 1)`` for p > 2, the classical convergent choice). Any x is
    valid, so the lower bound holds whether or not IRLS has converged.
  - upper: the smaller of two dual certificates ``‖u‖_q^p``, from the Lewis direction
    ``u = W^{1−2/p}AR⁻¹a_i`` and from the IRLS optimality condition ``u ∝ |y|^{p−1}sign(y)``,
    each projected onto ``{Aᵀu = a_i}`` exactly (a least-norm correction). The Lewis
    certificate is never worse than the closed-form ``w_i`` (p < 2) or ``d^{p/2−1}w_i``
    (p > 2) when w are the exact Lewis weights, and unlike them it is valid for any w.
  The bracket is sound up to float64 rounding (relative ~1e-13); its gap closes as
  ``num_iters`` grows (IRLS), typically to < 1% in 50 iterations.

Lewis weights: the iterations
-----------------------------
In log domain, ``v = log w`` and ``T(v)_i = (p/2) log(a_iᵀ (Aᵀ W^{1−2/p} A)⁺ a_i)``.

* p < 4: **Cohen–Peng**, ``w ← exp(T(v))``, a contraction with factor ``|1 − p/2|`` in
  the ``max|log|`` metric (Cohen & Peng 2015, Lemma 3.3 / Theorem 3.1).
* p ≥ 4: Cohen–Peng no longer contracts. We use the **damped iteration**
  ``v ← (1 − α) v + α T(v)`` with ``α = 2/p``, which is exactly
  ``w ← τ(W^{1/2−1/p} A)`` (each step is a leverage-score computation of the reweighted
  matrix). Its Jacobian is ``(1 − α)I − α(p/2 − 1)P`` where ``P`` (row-stochastic,
  ``P_ij = c_j (a_iᵀR⁻¹a_j)² / a_iᵀR⁻¹a_i``, ``c = w^{1−2/p}``) is similar to a PSD matrix,
  so its eigenvalues lie in ``[1 − αp/2, 1 − α] = [0, 1 − 2/p]``: the iteration converges
  locally at rate ``1 − 2/p``; its only fixed point is the Lewis weights. Global
  convergence of this iteration is not proven here (provable high-precision algorithms:
  Fazel, Lee, Padmanabhan & Sidford, SODA 2022, arXiv 2110.15563, a convex program;
  Apers, Gribling & Sidford 2024, arXiv 2404.02881). Pass ``return_residual=True`` to get
  the relative fixed-point residual ``max_i |φ(w)_i/w_i − 1|`` of the result;
  ``damping`` overrides α for any p.

Both run a fixed number of steps in ``lax.fori_loop`` (jittable, vmappable over A). The
default count is ``2·⌈ln(1e−14)/ln ρ⌉ + 10`` (at most 2000) for the local rate ρ.

Sample sizes (Woodruff & Yasuda 2023, main results of §1.1; constants and polylog
factors exposed as arguments): general sensitivity sampling ``Õ(ε⁻² 𝔖 d)`` (Feldman &
Langberg 2011; Braverman et al. 2016); ℓp sensitivity sampling ``Õ(ε⁻² 𝔖^{2/p})`` for
1 ≤ p < 2 and ``Õ(ε⁻² 𝔖^{2−2/p})`` for p > 2; root-leverage sampling ``Õ(ε⁻² d)`` for
1 ≤ p < 2; leverage + sensitivity mixture ``Õ(ε⁻² d^{2/p} 𝔖^{2−4/p})`` for p > 2; and
Chen & Derezinski's ``Õ(ε⁻² d^{1−p/2} 𝔖)`` for 1 ≤ p < 2 (which, per v2's footnote,
subsumes the paper's p < 2 bound).

Bad input
---------
``A`` must be a 2-D floating array (TypeError otherwise; ValueError for other ranks, empty
or non-finite concrete input; a traced ``A`` holding NaN or infinity makes every score,
weight, bound and distortion NaN, never a finite value). ``p`` is a static Python number
(the algorithm depends on it) and is checked eagerly: ``p > 0`` for Lewis weights,
``p ≥ 1`` for sensitivities and sampling-size formulas, ``0 < p ≤ 2`` for the root-leverage
bound. ``m``, ``scores``, ``eps`` etc. may be traced: concrete values are checked eagerly
(ValueError), traced out-of-range values give NaN, and ``checked_*`` variants raise under
jit through checkify.

All functions are pure and jit-compiled; use float64 (``jax_enable_x64``) for the bounds.
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxbounds._checks import (
    check_choice,
    check_int,
    check_matrix,
    check_number,
    check_same,
    is_traced,
    nan_unless,
    require,
    with_checked,
)
from jaxbounds._dtypes import as_float

__all__ = [
    "DistortionEstimate",
    "Sample",
    "SensitivityBounds",
    "checked_general_sample_size",
    "checked_mixture_sample_size",
    "checked_root_leverage_sample_size",
    "checked_sensitivity_sample",
    "checked_sensitivity_sample_size",
    "chen_derezinski_sample_size",
    "compact_sample",
    "exact_l1_sensitivities",
    "general_sample_size",
    "leverage_scores",
    "lewis_sensitivity_bound",
    "lewis_weights",
    "lp_sensitivities",
    "mixture_sample_size",
    "root_leverage_bound",
    "root_leverage_sample_size",
    "sensitivity_sample",
    "sensitivity_sample_size",
    "subspace_embedding_distortion",
]


# ---------------------------------------------------------------------------- checks


def _matrix(name: str, A) -> jax.Array:
    """``A`` checked as a non-empty, finite, floating 2-D array [n, d], as a jax array."""
    return jnp.asarray(check_matrix(name, A, finite=True))


def _static_p(p, *, low: float, low_open: bool, high: float | None = None,
              high_open: bool = False) -> float:
    """``p`` checked as a static Python number in the given range (it fixes the algorithm)."""
    return check_number("p", p, low=low, low_open=low_open, high=high, high_open=high_open,
                        static=True)


def _nan_unless_finite(matrices, *values):
    """``values`` where every entry of ``matrices`` is finite, NaN elsewhere: a traced NaN
    or infinity in A must not come out as a finite (optimistic) score, e.g. the 0 that a
    basis with every direction dropped would give."""
    valid = functools.reduce(jnp.logical_and, [jnp.all(jnp.isfinite(m)) for m in matrices])
    return tuple(nan_unless(valid, v) for v in values)


# ------------------------------------------------------------------ leverage scores


def _basis(A):
    """(U, mask): U [n, k] orthonormal basis of col(A) (zero columns beyond the rank).

    QR then an SVD of the k×d factor R (k = min(n, d)): A = Q R = (Q U_R) Σ V_Rᵀ. Columns
    whose singular value is below ``max(n, d)·eps·σ_max`` are zeroed (numpy's rank rule).
    """
    n, d = A.shape
    Q, R = jnp.linalg.qr(A)
    U_r, s, _ = jnp.linalg.svd(R, full_matrices=False)
    tol = s[0] * max(n, d) * jnp.finfo(A.dtype).eps
    mask = s > tol
    return (Q @ U_r) * mask, mask


@jax.jit
def _leverage_scores(A):
    U, _ = _basis(A)
    return _nan_unless_finite([A], jnp.sum(U * U, axis=1))[0]


def leverage_scores(A) -> jax.Array:
    """Leverage scores ``τ_i = a_iᵀ (AᵀA)⁺ a_i`` of the rows of ``A [n, d]``.

    Computed as ``‖U_i‖²`` for an orthonormal basis ``U`` of the column space (thin QR,
    then an SVD of the R factor to drop directions below ``max(n, d)·eps·σ_max``), so
    ``Σ τ_i = rank(A)`` and ``0 ≤ τ_i ≤ 1``. Jitted; vmap over a leading batch of matrices.
    Exactly the ℓ2 sensitivities: ``τ_i = sup_x ⟨a_i,x⟩² / ‖Ax‖₂²``.
    """
    A = _matrix("A", A)
    return _leverage_scores(A)


# -------------------------------------------------------------------- Lewis weights


def _default_damping(p: float) -> float:
    return 1.0 if p < 4 else 2.0 / p


def _default_lewis_iters(p: float, damping: float) -> int:
    if damping == 1.0:
        rho = abs(1 - p / 2)
    else:  # eigenvalues of the damped Jacobian lie in [1 − α p/2, 1 − α] (p > 2) or
        #      [1 − α, 1 − α p/2] (p < 2)
        rho = max(abs(1 - damping * p / 2), abs(1 - damping))
    if rho <= 1e-12:
        return 2
    if rho >= 1:
        return 2000
    return int(min(2000, 2 * math.ceil(math.log(1e-14) / math.log(rho)) + 10))


def _lewis_log_map(v, U, nonzero, p):
    """log φ(w) with φ(w)_i = (a_iᵀ (Aᵀ W^{1−2/p} A)⁺ a_i)^{p/2}, for v = log w."""
    expo = 1 - 2 / p
    v_safe = jnp.where(nonzero, v, 0.0)
    scale = jnp.exp(0.5 * expo * v_safe)  # sqrt(w^{1−2/p})
    B = U * scale[:, None]
    Ub, _ = _basis(B)
    tau = jnp.sum(Ub * Ub, axis=1)  # τ(W^{1/2−1/p} A) = w^{1−2/p} a_iᵀ R⁺ a_i
    tau = jnp.where(nonzero, tau, 1.0)
    return jnp.where(nonzero, (p / 2) * (jnp.log(tau) - expo * v_safe), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("p", "num_iters", "damping"))
def _lewis_weights(A, p, num_iters, damping):
    U, _ = _basis(A)
    tau = jnp.sum(U * U, axis=1)
    nonzero = tau > 0
    v0 = jnp.where(nonzero, jnp.log(jnp.where(nonzero, tau, 1.0)), -jnp.inf)
    if p == 2:
        w = jnp.where(nonzero, tau, 0.0)
        return _nan_unless_finite([A], w, jnp.zeros((), A.dtype))

    def body(_, v):
        t = _lewis_log_map(v, U, nonzero, p)
        return jnp.where(nonzero, (1 - damping) * v + damping * t, -jnp.inf)

    v = lax.fori_loop(0, num_iters, body, v0)
    t = _lewis_log_map(v, U, nonzero, p)
    residual = jnp.max(jnp.where(nonzero, jnp.abs(jnp.expm1(t - v)), 0.0))
    w = jnp.where(nonzero, jnp.exp(v), 0.0)
    return _nan_unless_finite([A], w, residual)


def lewis_weights(A, p, *, num_iters: int | None = None, damping: float | None = None,
                  return_residual: bool = False):
    r"""ℓp Lewis weights of the rows of ``A [n, d]``: ``w_i = τ_i(W^{1/2−1/p} A)``.

    Equivalently ``w_i = (a_iᵀ (Aᵀ W^{1−2/p} A)⁻¹ a_i)^{p/2}``; ``Σ w_i = rank(A)``;
    ``w = τ`` (leverage scores) at p = 2. Zero rows get weight 0. ``p > 0`` is static.

    Iteration (module docstring): Cohen–Peng ``w ← φ(w)`` for p < 4 (contraction factor
    ``|1 − p/2|``), the damped log-domain iteration ``log w ← (1 − α) log w + α log φ(w)``
    with ``α = 2/p`` (i.e. ``w ← τ(W^{1/2−1/p}A)``) for p ≥ 4. ``damping`` sets α
    explicitly; ``num_iters`` (static) defaults to a count from the local rate. Runs in
    ``lax.fori_loop``; jit/vmap-compatible.

    Returns ``w``, or ``(w, residual)`` with ``return_residual=True`` where
    ``residual = max_i |φ(w)_i / w_i − 1|`` (relative fixed-point residual).

    Cohen & Peng, "ℓp Row Sampling by Lewis Weights", STOC 2015 (arXiv 1412.0588).
    """
    A = _matrix("A", A)
    p = _static_p(p, low=0.0, low_open=True)
    if damping is None:
        damping = _default_damping(p)
    else:
        damping = check_number("damping", damping, low=0.0, low_open=True, high=1.0,
                               static=True)
    if num_iters is None:
        num_iters = _default_lewis_iters(p, damping)
    num_iters = check_int("num_iters", num_iters, minimum=1)
    w, residual = _lewis_weights(A, p, num_iters, damping)
    return (w, residual) if return_residual else w


def lewis_sensitivity_bound(A, p, *, num_iters: int | None = None) -> jax.Array:
    """Closed-form sensitivity upper bounds from the Lewis weights.

    ``s_i ≤ w_i`` for p ≤ 2 and ``s_i ≤ d^{p/2−1} w_i`` for p ≥ 2, with d = rank(A)
    (Cohen & Peng 2015; Woodruff & Yasuda 2023, §4). Sound when ``w`` are the exact Lewis
    weights; with the iterated weights it is sound up to the fixed-point residual. For a
    bound valid for any weights use ``lp_sensitivities(A, p).upper``. ``p ≥ 1``.
    """
    A = _matrix("A", A)
    p = _static_p(p, low=1.0, low_open=False)
    w = lewis_weights(A, p, num_iters=num_iters)
    if p <= 2:
        return w
    return w * jnp.sum(w) ** (p / 2 - 1)


# -------------------------------------------------------------- root leverage bound


@functools.partial(jax.jit, static_argnames=("p",))
def _root_leverage(A, p):
    return _leverage_scores(A) ** (p / 2)


def root_leverage_bound(A, p) -> jax.Array:
    """Root-leverage bound ``s_i ≤ τ_i^{p/2}`` on the ℓp sensitivities, for 0 < p ≤ 2.

    From ``|⟨a_i,x⟩|² ≤ τ_i ‖Ax‖₂²`` and ``‖y‖₂ ≤ ‖y‖_p`` (p ≤ 2). Summing,
    ``Σ τ_i^{p/2} ≤ n^{1−p/2} d^{p/2}``. These are the probabilities of the root-leverage
    sampling of Woodruff & Yasuda (2023), which needs Õ(ε⁻² d) rows for 1 ≤ p < 2.
    """
    A = _matrix("A", A)
    p = _static_p(p, low=0.0, low_open=True, high=2.0)
    return _root_leverage(A, p)


# ------------------------------------------------------------------- sensitivities


class SensitivityBounds(NamedTuple):
    """Per-row ℓp sensitivities ``lower ≤ s ≤ upper`` (equal where computed exactly)."""

    lower: jax.Array
    upper: jax.Array

    @property
    def exact(self) -> bool:
        return self.lower is self.upper


def _ratio(y, yi, p):
    """|y_i|^p / ‖y‖_p^p, scaled to avoid overflow."""
    m = jnp.max(jnp.abs(y))
    m = jnp.where(m > 0, m, 1.0)
    return (jnp.abs(yi) / m) ** p / jnp.sum((jnp.abs(y) / m) ** p)


def _q_norm_to_p(u, p):
    """‖u‖_q^p with 1/p + 1/q = 1 (q = ∞ at p = 1)."""
    m = jnp.max(jnp.abs(u))
    if p == 1:
        return m
    q = p / (p - 1)
    ms = jnp.where(m > 0, m, 1.0)
    return m**p * jnp.sum((jnp.abs(u) / ms) ** q) ** (p / q)


@functools.partial(jax.jit, static_argnames=("p", "num_iters", "batch_size"))
def _sensitivity_bounds(A, p, num_iters, batch_size):
    U, mask = _basis(A)
    n, k = U.shape
    fill = jnp.diag(1.0 - mask.astype(U.dtype))
    lev = jnp.sum(U * U, axis=1)
    nonzero = lev > 0
    if p == 2:
        return lev, lev
    w, _ = _lewis_weights(A, p, _default_lewis_iters(p, _default_damping(p)),
                          _default_damping(p))
    c = jnp.where(nonzero, jnp.where(nonzero, w, 1.0) ** (1 - 2 / p), 0.0)
    R = U.T @ (c[:, None] * U) + fill
    R_chol = jax.scipy.linalg.cho_factor(R)
    theta = 1.0 if p <= 2 else 1.0 / (p - 1)
    # Least-norm correction onto {Uᵀu = u_i}: u ← u + U(u_i − Uᵀu) (Uᵀ U = diag(mask)).
    project = lambda u, ui: u + U @ (ui - U.T @ u)

    def one_row(i):
        ui = U[i]
        x = jax.scipy.linalg.cho_solve(R_chol, ui)
        y = U @ x
        lower = _ratio(y, y[i], p)
        upper = _q_norm_to_p(project(c * y, ui), p)  # Uᵀ(c·y) = R R⁻¹u_i = u_i

        def irls(_, carry):
            x, best = carry
            y = U @ x
            s = jnp.maximum(jnp.abs(y), 1e-9 * jnp.max(jnp.abs(y)))
            G = U.T @ ((s ** (p - 2))[:, None] * U) + fill
            z = jnp.linalg.solve(G, ui)
            z = z / (ui @ z)
            x = (1 - theta) * x + theta * z
            y = U @ x
            return x, jnp.maximum(best, _ratio(y, y[i], p))

        x, lower = lax.fori_loop(0, num_iters, irls, (x, lower))
        y = U @ x
        s = jnp.maximum(jnp.abs(y), 1e-12 * jnp.max(jnp.abs(y)))
        g = y * s ** (p - 2)
        Utg = U.T @ g
        lam = (ui @ Utg) / (ui @ ui)
        upper = jnp.minimum(upper, _q_norm_to_p(project(g / lam, ui), p))
        upper = jnp.maximum(upper, lower)  # rounding only; weak duality gives lower ≤ s
        return lower, upper

    # Pad the rows to a multiple of the batch (one compiled body, no remainder path).
    batch = min(batch_size, n)
    rows = jnp.minimum(jnp.arange(-(-n // batch) * batch), n - 1)
    lower, upper = lax.map(one_row, rows, batch_size=batch)
    lower, upper = lower[:n], upper[:n]
    zero = jnp.zeros_like(lower)
    return _nan_unless_finite([A], jnp.where(nonzero, lower, zero),
                              jnp.where(nonzero, jnp.minimum(upper, 1.0), zero))


def exact_l1_sensitivities(A) -> np.ndarray:
    """Exact ℓ1 sensitivities by one HiGHS linear program per row (NumPy; not jittable).

    ``1/s_i = min{‖Az‖₁ : ⟨a_i, z⟩ = 1}``, written in equality form over an orthonormal
    basis ``U`` of col(A): minimise ``1ᵀy⁺ + 1ᵀy⁻`` s.t. ``Uz − y⁺ + y⁻ = 0``,
    ``⟨u_i, z⟩ = 1``, ``y± ≥ 0``, z free. Zero rows get 0. Raises RuntimeError if HiGHS
    fails on a row.
    """
    from scipy import optimize, sparse

    A = np.asarray(_matrix("A", A), dtype=np.float64)
    U, mask = (np.asarray(t) for t in jax.jit(_basis)(jnp.asarray(A)))
    U = U[:, mask]
    n, k = U.shape
    eye = sparse.identity(n, format="csr")
    A_eq = sparse.vstack([sparse.hstack([sparse.csr_matrix(U), -eye, eye]),
                          sparse.csr_matrix((1, k + 2 * n))], format="lil")
    cost = np.concatenate([np.zeros(k), np.ones(2 * n)])
    b_eq = np.zeros(n + 1)
    b_eq[-1] = 1.0
    bounds = [(None, None)] * k + [(0, None)] * (2 * n)
    out = np.zeros(n)
    for i in range(n):
        if not np.any(U[i]):
            continue
        A_eq[n, :k] = U[i]
        res = optimize.linprog(cost, A_eq=A_eq.tocsr(), b_eq=b_eq, bounds=bounds,
                               method="highs")
        if res.status != 0:
            raise RuntimeError(f"HiGHS failed on row {i}: {res.message}")
        out[i] = 1.0 / res.fun
    return out


def lp_sensitivities(A, p, *, method: str = "auto", num_iters: int = 50,
                     batch_size: int = 64) -> SensitivityBounds:
    r"""ℓp sensitivities ``s_i = sup_x |⟨a_i,x⟩|^p / ‖Ax‖_p^p`` of the rows of ``A [n, d]``.

    Returns ``SensitivityBounds(lower, upper)`` (``lower is upper`` when exact):

    * p = 2: exact leverage scores (jitted).
    * p = 1 and ``method`` in {"auto", "lp"}: exact, by HiGHS linear programs through
      ``scipy.optimize.linprog`` (:func:`exact_l1_sensitivities`), **outside jit**.
    * otherwise (or ``method="bounds"``, p ≥ 1): a certified bracket, jitted and vectorised
      over rows: lower from feasible x's (Lewis direction + ``num_iters`` IRLS steps),
      upper from dual certificates ``‖u‖_q^p`` with ``Aᵀu = a_i`` (module docstring).
      Sound up to float64 rounding. ``batch_size`` rows are processed at once.

    Total sensitivity: ``Σ s_i`` (= rank at p = 2, ≤ rank for p < 2, ≤ rank^{p/2} for
    p > 2). Woodruff & Yasuda 2023 (arXiv 2306.00732), Padmanabhan et al. 2023.
    """
    A = _matrix("A", A)
    p = _static_p(p, low=1.0, low_open=False)
    check_choice("method", method, ("auto", "lp", "bounds"))
    if method == "lp" and p != 1:
        raise ValueError(f"method='lp' needs p == 1, got p = {p!r}.")
    num_iters = check_int("num_iters", num_iters, minimum=0)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if p == 2:
        s = _leverage_scores(A)
        return SensitivityBounds(s, s)
    if p == 1 and method != "bounds":
        if is_traced(A):
            raise TypeError("exact p = 1 sensitivities run outside jit; use "
                            "method='bounds' under jit.")
        s = jnp.asarray(exact_l1_sensitivities(A), dtype=A.dtype)
        return SensitivityBounds(s, s)
    lower, upper = _sensitivity_bounds(A, p, num_iters, batch_size)
    return SensitivityBounds(lower, upper)


# ------------------------------------------------------------------------ sampling


class Sample(NamedTuple):
    """A fixed-size sensitivity sample: dropped rows are zero rows (``weights == 0``).

    ``SA = weights[:, None] * A``; ``Sb = weights * b`` (None without b);
    ``mask`` (bool [n]) marks kept rows; ``weights = mask · q^{−1/p}``; ``probabilities = q``.
    """

    SA: jax.Array
    Sb: jax.Array | None
    mask: jax.Array
    weights: jax.Array
    probabilities: jax.Array


def _sampling_probabilities(m, scores):
    total = jnp.sum(scores)
    return jnp.minimum(1.0, m * scores / total)


def _sample_checks(key, A, m, scores, p, b):
    n = _matrix("A", A).shape[0]
    _static_p(p, low=0.0, low_open=True)
    if np.ndim(m) != 0:
        raise ValueError(f"m must be a scalar, got shape {np.shape(m)}.")
    if np.shape(scores) != (n,):
        raise ValueError(f"scores must have shape ({n},) (one per row of A), got "
                         f"{np.shape(scores)}.")
    if not is_traced(scores) and not np.sum(np.asarray(scores)) > 0:
        raise ValueError("scores must not all be zero, got a zero sum.")
    if b is not None:
        if np.shape(b) != (n,):
            raise ValueError(f"b must have shape ({n},), got {np.shape(b)}.")
        if not jnp.issubdtype(jnp.result_type(b), jnp.floating):
            raise TypeError(f"b must be a floating-point array, got dtype "
                            f"{jnp.result_type(b)}.")


@with_checked(lambda scores, **_: [(jnp.sum(jnp.asarray(scores)) > 0,
                                    "scores must not all be zero")],
              ranges={"m": (lambda v: v > 0, "> 0"),
                      "scores": (lambda s: (s >= 0) & jnp.isfinite(s), ">= 0 and finite")},
              checks=_sample_checks, static_argnames=("p",))
def sensitivity_sample(key, A, m, scores, p, *, b=None) -> Sample:
    r"""Sensitivity (importance) sampling of the rows of ``A [n, d]`` (and ``b [n]``).

    Row i is kept independently with probability ``q_i = min(1, m·s_i / Σ_j s_j)`` and
    rescaled by ``q_i^{−1/p}``, so ``E‖SAx − Sb‖_p^p = ‖Ax − b‖_p^p`` for every x and
    ``E[#kept] = Σ q_i ≤ m``. ``scores`` are any nonnegative importance scores
    (sensitivities or upper bounds, Lewis weights, leverage, ones for uniform).

    Jittable with a **fixed-size output**: :class:`Sample` holds ``SA`` and ``Sb`` as
    ``[n, d]`` / ``[n]`` arrays whose dropped rows are zero, the keep ``mask``, the
    ``weights`` (``q_i^{−1/p}`` for kept rows, 0 otherwise) and the probabilities ``q``.
    Zero rows do not change any ℓp norm, so ``SA`` can be used as is;
    :func:`compact_sample` gathers the kept rows outside jit.

    ``m > 0`` and ``scores ≥ 0`` (finite, not all 0) are checked eagerly when concrete;
    traced out-of-range values give NaN weights (see :func:`checked_sensitivity_sample`).
    ``p > 0`` is static. Woodruff & Yasuda 2023, §1; Cohen & Peng 2015.
    """
    A = jnp.asarray(A)
    dtype = A.dtype
    scores = jnp.asarray(scores, dtype)
    m = jnp.asarray(m, dtype)
    valid = (m > 0) & jnp.all(scores >= 0) & (jnp.sum(scores) > 0) & jnp.all(
        jnp.isfinite(scores))
    q = _sampling_probabilities(m, jnp.where(valid, scores, 1.0))
    mask = jax.random.uniform(key, q.shape, dtype) < q
    weights = jnp.where(mask, jnp.where(q > 0, q, 1.0) ** (-1.0 / p), 0.0)
    weights = nan_unless(valid, weights)
    q = nan_unless(valid, q)
    SA = weights[:, None] * A
    Sb = None if b is None else weights * jnp.asarray(b, dtype)
    return Sample(SA, Sb, mask & valid, weights, q)


checked_sensitivity_sample = sensitivity_sample.checked


def compact_sample(sample: Sample):
    """``(SA_kept, Sb_kept, indices)``: the kept rows of a :class:`Sample` (NumPy, eager)."""
    mask = np.asarray(sample.mask)
    idx = np.flatnonzero(mask)
    SA = np.asarray(sample.SA)[idx]
    Sb = None if sample.Sb is None else np.asarray(sample.Sb)[idx]
    return SA, Sb, idx


# ---------------------------------------------------------------------- distortion


class DistortionEstimate(NamedTuple):
    """Worst ratios ``‖SAx‖_p/‖Ax‖_p`` found; ``distortion = max(max_ratio − 1, 1 − min_ratio)``.

    A *lower* estimate of the true distortion ``sup_x |‖SAx‖_p/‖Ax‖_p − 1|`` (any x found
    is a witness; the supremum may be larger).
    """

    distortion: jax.Array
    max_ratio: jax.Array
    min_ratio: jax.Array
    x_max: jax.Array
    x_min: jax.Array


def _log_norm_p(y, p):
    m = jnp.max(jnp.abs(y))
    m = jnp.where(m > 0, m, 1.0)
    return jnp.log(m) + jnp.log(jnp.sum((jnp.abs(y) / m) ** p)) / p


@functools.partial(jax.jit, static_argnames=("p", "num_starts", "num_steps"))
def _distortion(SA, A, p, key, num_starts, num_steps, learning_rate):
    n, d = A.shape
    Q, R = jnp.linalg.qr(A)
    # Whitened coordinates: x = R⁺ z, so Ax = Q z (every z on the sphere is a unit-ℓ2 Ax).
    Rp = jnp.linalg.pinv(R)
    B = SA @ Rp  # [n_s, k]; SAx = B z
    k = Q.shape[1]
    # Starts: random, coordinate directions (of z), singular directions of B, and the
    # images of the coordinate directions of x (columns of R).
    _, _, Vt = jnp.linalg.svd(B, full_matrices=False)
    starts = jnp.concatenate([
        jax.random.normal(key, (num_starts, k), A.dtype),
        jnp.eye(k, dtype=A.dtype), Vt, R.T[:d]], axis=0)
    starts = starts / jnp.maximum(jnp.linalg.norm(starts, axis=1, keepdims=True), 1e-300)

    def log_ratio(z):
        return _log_norm_p(B @ z, p) - _log_norm_p(Q @ z, p)

    tx = optax.adam(learning_rate)

    def optimise(sign):
        def run(z0):
            def step(carry, _):
                z, state, best, best_z = carry
                value, grad = jax.value_and_grad(lambda v: sign * log_ratio(v))(z)
                better = value > best
                best = jnp.where(better, value, best)
                best_z = jnp.where(better, z, best_z)
                updates, state = tx.update(-grad, state, z)
                z = optax.apply_updates(z, updates)
                z = z / jnp.maximum(jnp.linalg.norm(z), 1e-300)
                return (z, state, best, best_z), None

            init = (z0, tx.init(z0), -jnp.inf, z0)
            (z, _, best, best_z), _ = lax.scan(step, init, None, length=num_steps)
            final = sign * log_ratio(z)
            return jnp.where(final > best, final, best), jnp.where(final > best, z, best_z)

        values, zs = jax.vmap(run)(starts)
        j = jnp.argmax(values)
        return sign * values[j], Rp @ zs[j]

    log_max, x_max = optimise(1.0)
    log_min, x_min = optimise(-1.0)
    max_ratio, min_ratio = _nan_unless_finite([SA, A], jnp.exp(log_max), jnp.exp(log_min))
    distortion = jnp.maximum(max_ratio - 1, 1 - min_ratio)
    return DistortionEstimate(distortion, max_ratio, min_ratio, x_max, x_min)


def subspace_embedding_distortion(SA, A, p, *, key, num_starts: int = 32,
                                  num_steps: int = 150,
                                  learning_rate: float = 0.05) -> DistortionEstimate:
    r"""Estimate ``sup_x |‖SAx‖_p / ‖Ax‖_p − 1|`` by multi-start optimisation.

    Maximises and minimises ``log ‖SAx‖_p − log ‖Ax‖_p`` over x with adam (optax) on the
    sphere of whitened coordinates ``z = Rx`` (``A = QR``), from ``num_starts`` random
    starts (``key``), the coordinate directions of z and of x, and the right singular
    directions of ``SAR⁻¹`` (exact at p = 2); ``num_steps`` steps each. Keeps the best
    iterate of every run. Returns :class:`DistortionEstimate`; ``distortion`` is a **lower
    estimate** of the true distortion (the ratio at any x is a witness).

    ``SA`` may have any number of rows (e.g. the fixed-size zero-padded rows of
    :class:`Sample`). Jitted; vmap over ``SA`` for many samples of the same A.
    """
    SA = _matrix("SA", SA)
    A = _matrix("A", A)
    check_same("number of columns", SA=SA.shape[1], A=A.shape[1])
    p = _static_p(p, low=1.0, low_open=False)
    num_starts = check_int("num_starts", num_starts, minimum=0)
    num_steps = check_int("num_steps", num_steps, minimum=0)
    require("learning_rate", learning_rate, lambda v: v > 0, "> 0")
    return _distortion(SA, A, p, key, num_starts, num_steps, learning_rate)


# --------------------------------------------------------------- sample sizes


_POSITIVE = (lambda v: v > 0, "> 0")


def _make_size(name, core, p_range, doc, arg_names, p_required=True):
    """Build a sample-size calculator ``constant · ε⁻² · core(args, p) · log_factor``.

    Returns ``(fn, checked_fn)``; ``fn(*arg_names, eps, p=None, constant=1.0,
    log_factor=1.0)``.
    """
    low, low_open, high, high_open = p_range

    def check_p(p, **_):
        if p is None:
            if p_required:
                raise TypeError(f"{name} needs the keyword argument p.")
            return
        _static_p(p, low=low, low_open=low_open, high=high, high_open=high_open)

    def compute(**kwargs):
        args = [kwargs[arg] for arg in arg_names]
        p = 2.0 if kwargs["p"] is None else kwargs["p"]
        *args, eps, constant, log_factor = as_float(*args, kwargs["eps"], kwargs["constant"],
                                                    kwargs["log_factor"])
        valid = (eps > 0) & (constant > 0) & (log_factor > 0)
        for a in args:
            valid = valid & (a > 0)
        safe = [jnp.where(valid, a, 1.0) for a in args]
        eps_s = jnp.where(valid, eps, 1.0)
        value = constant * eps_s ** -2.0 * core(*safe, p) * log_factor
        return nan_unless(valid, value)

    keyword = inspect.Parameter.KEYWORD_ONLY
    compute.__signature__ = inspect.Signature(
        [inspect.Parameter(arg, inspect.Parameter.POSITIONAL_OR_KEYWORD) for arg in arg_names]
        + [inspect.Parameter("eps", keyword),
           inspect.Parameter("p", keyword, default=None),
           inspect.Parameter("constant", keyword, default=1.0),
           inspect.Parameter("log_factor", keyword, default=1.0)])
    compute.__name__ = compute.__qualname__ = name
    compute.__doc__ = doc
    ranges = {arg: _POSITIVE for arg in (*arg_names, "eps", "constant", "log_factor")}
    fn = with_checked(ranges=ranges, checks=check_p, static_argnames=("p",))(compute)
    return fn, fn.checked


general_sample_size, checked_general_sample_size = _make_size(
    "general_sample_size", lambda total, d, p: total * d, (1.0, False, None, False),
    r"""General sensitivity-sampling size ``m = C·ε⁻²·𝔖·d·L``.

    ``general_sample_size(total_sensitivity, d, *, eps, p=None, constant=1.0,
    log_factor=1.0)``: the Õ(ε⁻² 𝔖 d) bound of the sensitivity framework (Feldman &
    Langberg, STOC 2011; Braverman, Feldman, Lang, Statman & Zhou, arXiv 1612.00889), d the
    VC dimension (here the number of columns); L collects the log factors (e.g.
    ``log 𝔖 + log(1/δ)/d``). p is ignored (any p ≥ 1). Arguments > 0 (NaN under jit).""",
    ("total_sensitivity", "d"), p_required=False)

sensitivity_sample_size, checked_sensitivity_sample_size = _make_size(
    "sensitivity_sample_size",
    lambda total, p: total ** (2.0 / p if p < 2 else 2.0 - 2.0 / p),
    (1.0, False, None, False),
    r"""Woodruff–Yasuda ℓp sensitivity-sampling size ``m = C·ε⁻²·𝔖^{γ}·L``.

    ``sensitivity_sample_size(total_sensitivity, *, eps, p, constant=1.0, log_factor=1.0)``
    with ``γ = 2/p`` for 1 ≤ p < 2 and ``γ = 2 − 2/p`` for p ≥ 2 (both give 𝔖 = d at p = 2).
    arXiv 2306.00732, main theorems for sensitivity sampling (tight for 1 ≤ p < 2 up to
    polylogs). L collects the polylog(n, d, ε⁻¹, δ⁻¹) factors hidden in Õ.""",
    ("total_sensitivity",))

root_leverage_sample_size, checked_root_leverage_sample_size = _make_size(
    "root_leverage_sample_size", lambda d, p: d, (1.0, False, 2.0, True),
    r"""Root-leverage sampling size ``m = C·ε⁻²·d·L`` for 1 ≤ p < 2.

    ``root_leverage_sample_size(d, *, eps, p, constant=1.0, log_factor=1.0)``: sampling
    proportional to ``τ_i^{p/2}`` needs Õ(ε⁻² d) rows (arXiv 2306.00732, root leverage
    score sampling theorem).""",
    ("d",))

mixture_sample_size, checked_mixture_sample_size = _make_size(
    "mixture_sample_size", lambda d, total, p: d ** (2.0 / p) * total ** (2.0 - 4.0 / p),
    (2.0, True, None, False),
    r"""Leverage + sensitivity mixture size ``m = C·ε⁻²·d^{2/p}·𝔖^{2−4/p}·L`` for p > 2.

    ``mixture_sample_size(d, total_sensitivity, *, eps, p, constant=1.0, log_factor=1.0)``:
    sampling with ``q_i ∝ τ_i/d + s_i/𝔖`` (arXiv 2306.00732, mixture theorem).""",
    ("d", "total_sensitivity"))

chen_derezinski_sample_size, _ = _make_size(
    "chen_derezinski_sample_size", lambda d, total, p: d ** (1.0 - p / 2.0) * total,
    (1.0, False, 2.0, False),
    r"""Chen–Derezinski size ``m = C·ε⁻²·d^{1−p/2}·𝔖·L`` for 1 ≤ p ≤ 2.

    ``chen_derezinski_sample_size(d, total_sensitivity, *, eps, p, ...)``: from
    ``w_i ≤ d^{1−p/2} s_i`` (Chen & Derezinski, COLT 2021), which per the v2 footnote of
    arXiv 2306.00732 subsumes its 1 ≤ p < 2 sensitivity-sampling bound.""",
    ("d", "total_sensitivity"))
