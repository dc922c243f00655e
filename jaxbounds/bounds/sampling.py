r"""Optimal weighted least squares with i.i.d. Christoffel sampling, projection DPPs and
(generalized) volume sampling.

Setting (Nouy & Michel, "Weighted least-squares approximation with determinantal point
processes and generalized volume sampling", arXiv 2312.14057; Cohen & Migliorati, "Optimal
weighted least-squares methods", SMAI J. Comput. Math. 2017). ``V_m = span{φ_1, …, φ_m}`` is
spanned by m functions orthonormal in L²(μ). The default (and tested) case is the Legendre
basis on [−1, 1] with μ = dx/2 (the uniform probability measure), φ_j = √(2j+1) P_j,
j = 0, …, m − 1. Everywhere below ``basis`` is either

* an ``int`` m: the first m orthonormal Legendre polynomials (:func:`legendre_basis`), or
* a callable ``phi(x) -> [..., m]`` orthonormal in L²(μ) with μ uniform on [−1, 1] (hashable,
  e.g. a module-level function or a ``functools.partial``; it is a static argument of
  ``jit``). The samplers then need ``christoffel_bound`` ≥ sup_x k_m(x)/m (see below).

Formulas
--------
* Christoffel function and density (w.r.t. μ): k_m(x) = Σ_j φ_j(x)² = K(x, x), and
  ρ_m(x) = k_m(x)/m, a probability density since ∫ k_m dμ = m
  (:func:`christoffel_density`). Optimal weights w(x) = m / k_m(x) (:func:`optimal_weights`).
* Weighted least squares (:func:`weighted_least_squares`): ĉ = argmin_c Σ_i w_i
  (y_i − φ(x_i)ᵀc)², solved as the ordinary least-squares problem with rows √w_i φ(x_i)ᵀ
  (SVD-based ``jnp.linalg.lstsq``: minimum-norm solution if rank-deficient).
* Empirical Gram matrix (:func:`gram_matrix`): G = (1/n) Σ_i w_i φ(x_i) φ(x_i)ᵀ. With
  x_i ~ ρ_m dμ i.i.d. and w = m/k_m, E[G] = I. Stability (:func:`is_stable`):
  ‖G − I‖₂ ≤ δ; then ‖f − f̂‖ is within a constant of the best approximation error.
* Sample size for i.i.d. optimal sampling (matrix Chernoff; Cohen & Migliorati 2017,
  Thm 2.1): P(‖G − I‖₂ > δ) ≤ 2m exp(−c_δ n/m) ≤ η as soon as
  n ≥ m ln(2m/η) / c_δ with c_δ = (1 + δ) ln(1 + δ) − δ (:func:`sample_size`, :func:`c_delta`).
* Projection DPP with kernel K(x, y) = Σ_j φ_j(x) φ_j(y) (w.r.t. μ): exactly m points, with
  joint density det[K(x_i, x_j)]/m!; its one-point density is ρ₁(x) = K(x, x) = k_m(x) and its
  pair correlation ρ₂(x, y) = K(x, x)K(y, y) − K(x, y)² (repulsion: ρ₂(x, x) = 0). With
  w = m/k_m, E[G] = (1/m)∫ (m/k_m) φφᵀ k_m dμ = I as well.
* Generalized volume-rescaled sampling of size n ≥ m (Dereziński, Warmuth & Hsu 2022;
  Nouy & Michel 2023): the union of a projection DPP (m points) and n − m i.i.d. points from
  ρ_m, in a uniformly random order (:func:`volume_sample`); again E[G] = I.
* Repeated DPP (:func:`repeated_dpp_sample`): independent projection-DPP batches of m points
  are added until the Gram matrix of all points drawn so far (n = b·m, weights m/k_m) satisfies
  ‖G − I‖₂ ≤ δ, or until ``max_batches`` batches.

Exact samplers
--------------
All samplers are exact in distribution (rejection sampling, no grid or discretisation):

* Legendre: Bernstein's inequality in the sharp form of Antonov & Holševnikov (1981),
  (1 − x²)^{1/4} |P_j(x)| ≤ √(2/π) (j + 1/2)^{−1/2}, gives φ_j(x)² √(1 − x²) ≤ 4/π for
  every j. So the density φ_j(x)²/2 (w.r.t. dx) is at most 2 × the arcsine density
  1/(π√(1 − x²)), and x = cos(πU) followed by acceptance with probability
  π √(1 − x²) φ_j(x)² / 4 samples φ_j² dμ exactly, accepting with probability exactly 1/2
  for every j. :func:`christoffel_sample` is the mixture ρ_m = (1/m) Σ_j φ_j²: pick j
  uniformly, propose from the arcsine law, accept as above; on rejection both j and x are
  drawn afresh (this keeps the mixture exact because every j has the same acceptance rate).
* Callable basis: propose x ~ μ and accept with probability k_m(x)/(m·B), where
  B = ``christoffel_bound`` ≥ sup k_m/m (B = m for Legendre; a smaller B that is not a
  bound makes the sampler inexact, which cannot be checked under ``jit``).
* Projection DPP (:func:`projection_dpp_sample`): the chain rule (Hough, Krishnapur, Peres &
  Virág 2006, Alg. 18; Gautier, Bardenet & Valko 2019). Given x_1, …, x_k, the next point
  has density ‖(I − P_k) φ(x)‖² / (m − k) w.r.t. μ, where P_k projects onto
  span{φ(x_1), …, φ(x_k)} (kept as an orthonormal basis by Gram–Schmidt, twice for
  stability). It is sampled by rejection: propose from ρ_m and accept with probability
  ‖(I − P_k)φ(x)‖² / ‖φ(x)‖² (≤ 1). The two rejection steps (ρ_m from the envelope, then the
  chain-rule ratio) are fused into one accept test with the product probability,
  e.g. π √(1 − x²) ‖(I − P_k)φ(x)‖² / (4m) for Legendre. Proposals are drawn
  ``num_proposals`` at a time and the first accepted one is kept, which is the same as
  proposing one by one. The expected number of proposals is about Σ_k m/(m − k) ≈ m ln m
  (times 2 for the Legendre envelope).
* Finite projection DPP on N points (:func:`finite_projection_dpp_sample`): the same chain
  rule with the Cholesky-type update of DPPy's ``proj_dpp_sampler_kernel_Chol`` — pick i
  with probability d_i / (r − k), d_i = K_ii − Σ_{l<k} c_l(i)² the residual diagonal, then
  c_k = (K[:, i] − Σ_{l<k} c_l c_l(i)) / √d_i.

Everything is jit-compiled (``lax.fori_loop`` over the m chain-rule steps, ``lax.while_loop``
for the rejection loops; sizes m, n, ``max_batches`` and ``basis`` are static), vmaps over
keys, and runs in float64 with ``jax_enable_x64``. Every stochastic function takes an
explicit ``jax.random`` key.

Bad input
---------
Static arguments are checked eagerly and raise ``ValueError`` or ``TypeError`` naming the
argument, the value and the expectation: m ≤ 0, n < m, ``max_batches`` < 1, δ ∉ (0, 1), η
∉ (0, 1), mismatched shapes, a callable basis without ``christoffel_bound``. Traced δ, η
(under ``jit``/``vmap``): :func:`sample_size` and :func:`c_delta` return NaN
(``checked_sample_size`` raises instead), :func:`is_stable` returns False, and
:func:`repeated_dpp_sample` returns NaN points.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbounds._checks import (
    check_array,
    check_int,
    check_key,
    check_shape,
    is_traced,
    nan_unless,
    require,
    with_checked,
)
from jaxbounds._dtypes import as_float

__all__ = [
    "MAX_REJECTION_ROUNDS",
    "RepeatedDPPSample",
    "c_delta",
    "checked_sample_size",
    "christoffel_density",
    "christoffel_function",
    "christoffel_sample",
    "evaluate",
    "finite_projection_dpp_sample",
    "gram_deviation",
    "gram_matrix",
    "is_stable",
    "legendre_basis",
    "optimal_weights",
    "projection_dpp_sample",
    "projection_kernel",
    "repeated_dpp_sample",
    "sample_size",
    "volume_sample",
    "weighted_least_squares",
]

Basis = int | Callable


# ----------------------------------------------------------------------------- helpers


_OPEN01 = (lambda v: (v > 0) & (v < 1), "in (0, 1)")


def _as_basis(basis) -> Basis:
    """A callable basis as is, else the Legendre dimension m checked as an int >= 1."""
    if callable(basis):
        return basis
    return check_int("basis (the dimension m)", basis, minimum=1)


def _features(basis: Basis, x):
    return legendre_basis(x, basis) if isinstance(basis, int) else basis(x)


def _dimension(basis: Basis) -> int:
    if isinstance(basis, int):
        return basis
    shape = jax.eval_shape(basis, jax.ShapeDtypeStruct((1,), jnp.result_type(float))).shape
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(f"basis(x) must map x of shape [n] to [n, m], got shape {shape} for "
                         "n = 1.")
    return int(shape[1])


def _envelope_bound(basis: Basis, christoffel_bound):
    """The static envelope constant: None for Legendre, float B for a callable basis."""
    if isinstance(basis, int):
        return None
    if christoffel_bound is None:
        raise ValueError("christoffel_bound must be given (an upper bound on sup_x k_m(x)/m) "
                         "when basis is a callable, got None.")
    require("christoffel_bound", christoffel_bound, lambda b: b >= 1, ">= 1 (sup k_m/m >= 1)")
    return float(christoffel_bound)


def _propose(key, shape, basis, bound, dtype):
    """Proposal draws: arcsine law for Legendre, μ (uniform on [−1, 1]) otherwise."""
    u = jax.random.uniform(key, shape, dtype)
    return jnp.cos(jnp.pi * u) if bound is None else 2 * u - 1


def _envelope(x, m, bound):
    """Accept-probability factor e(x): accept with e(x)·‖r(x)‖² where ‖r‖² ≤ k_m(x)."""
    if bound is None:  # π √(1 − x²) / (4m): the Bernstein / arcsine envelope
        return jnp.pi * jnp.sqrt(jnp.clip(1 - x * x, 0, None)) / (4 * m)
    return jnp.ones_like(x) / (m * bound)


# ---------------------------------------------------------------------- basis and density


_UNROLL = 64  # up to this m the recurrence is unrolled, beyond it a lax.scan


@functools.partial(jax.jit, static_argnums=1)
def _legendre(x, m):
    (x,) = as_float(x)
    rows = [jnp.ones_like(x), x][:m]
    if m <= _UNROLL:  # unrolled: compiles faster inside the samplers' loops
        for j in range(1, m - 1):  # (j + 1) P_{j+1} = (2j + 1) x P_j − j P_{j−1}
            rows.append(((2 * j + 1) * x * rows[j] - j * rows[j - 1]) / (j + 1))
        rows = jnp.stack(rows, axis=0)
    else:
        def step(carry, j):
            prev, cur = carry
            nxt = ((2 * j + 1) * x * cur - j * prev) / (j + 1)
            return (cur, nxt), nxt

        _, rest = lax.scan(step, (rows[0], x), jnp.arange(1, m - 1, dtype=x.dtype))
        rows = jnp.concatenate([rows[0][None], x[None], rest], axis=0)
    scale = jnp.sqrt(2 * jnp.arange(m, dtype=x.dtype) + 1)
    return jnp.moveaxis(rows, 0, -1) * scale


def legendre_basis(x, m: int):
    r"""Orthonormal Legendre polynomials φ_j = √(2j+1) P_j, j = 0, …, m − 1, at ``x``.

    Orthonormal in L²(μ), μ = dx/2 on [−1, 1]. Computed by the three-term recurrence
    (j + 1) P_{j+1}(x) = (2j + 1) x P_j(x) − j P_{j−1}(x), P_0 = 1, P_1 = x (stable on
    [−1, 1]; ``lax.scan``, jit-compiled). ``x`` of shape [...] gives [..., m].
    """
    m = check_int("m", m, minimum=1)
    return _legendre(x, m)


def christoffel_function(x, basis: Basis):
    r"""k_m(x) = Σ_j φ_j(x)² = K(x, x), the inverse Christoffel function (shape of ``x``)."""
    basis = _as_basis(basis)
    return jnp.sum(_features(basis, x) ** 2, axis=-1)


def christoffel_density(x, basis: Basis):
    r"""ρ_m(x) = k_m(x)/m, the optimal sampling density w.r.t. μ (∫ ρ_m dμ = 1).

    For Legendre, ρ_m(±1) = m, and in the interior ρ_m(x) → 2/(π√(1 − x²)) as m → ∞ (the
    arcsine law, written as a density w.r.t. μ = dx/2).
    """
    basis = _as_basis(basis)
    return christoffel_function(x, basis) / _dimension(basis)


def optimal_weights(x, basis: Basis):
    r"""w(x) = m / k_m(x), the weights that make E[G] = I under ρ_m sampling."""
    basis = _as_basis(basis)
    return _dimension(basis) / christoffel_function(x, basis)


def projection_kernel(x, y, basis: Basis):
    r"""K(x, y) = Σ_j φ_j(x) φ_j(y) for all pairs: [len(x), len(y)]."""
    basis = _as_basis(basis)
    return _features(basis, x) @ _features(basis, y).T


# ------------------------------------------------------------------ least squares, Gram


@functools.partial(jax.jit, static_argnums=2)
def _gram(x, w, basis):
    phi = _features(basis, x)
    return (phi * w[:, None]).T @ phi / x.shape[0]


def gram_matrix(x, w, basis: Basis):
    r"""G = (1/n) Σ_i w_i φ(x_i) φ(x_i)ᵀ, [m, m] (E[G] = I for the optimal samplers)."""
    basis = _as_basis(basis)
    n = check_array("x", x, ndim=1, kind=None).shape[0]
    check_shape("w", w, (n,), " like x")
    require("w", w, lambda v: v >= 0, ">= 0")
    return _gram(x, w, basis)


@jax.jit
def gram_deviation(G):
    r"""‖G − I‖₂ = max_i |λ_i(G) − 1| for a symmetric G (``eigvalsh``)."""
    (G,) = as_float(G)
    return jnp.max(jnp.abs(jnp.linalg.eigvalsh(G) - 1), axis=-1)


def is_stable(G, delta):
    r"""The stability condition ‖G − I‖₂ ≤ δ (δ ∈ (0, 1)); a traced bad δ gives False."""
    require("delta", delta, *_OPEN01)
    if jnp.ndim(G) < 2 or jnp.shape(G)[-1] != jnp.shape(G)[-2]:
        raise ValueError(f"G must be a square matrix [..., m, m], got shape {jnp.shape(G)}.")
    valid = (delta > 0) & (delta < 1)
    return valid & (gram_deviation(G) <= delta)


@functools.partial(jax.jit, static_argnums=3)
def _wls(x, y, w, basis):
    x, y, w = as_float(x, y, w)
    phi = _features(basis, x)
    root = jnp.sqrt(w)
    a = phi * root[:, None]
    b = y * (root if jnp.ndim(y) == 1 else root[:, None])
    return jnp.linalg.lstsq(a, b)[0]


def weighted_least_squares(x, y, w, basis: Basis):
    r"""Coefficients ĉ of min_c Σ_i w_i (y_i − φ(x_i)ᵀc)², shape [m] (or [m, k] for y [n, k]).

    Solved by SVD least squares on the rows √w_i φ(x_i)ᵀ (minimum-norm if rank-deficient,
    e.g. when n < m or points coincide). The approximation is f̂ = Σ_j ĉ_j φ_j
    (:func:`evaluate`). Exact (up to rounding) when y = φ(x)ᵀc for some c and G is invertible.
    """
    basis = _as_basis(basis)
    n = check_array("x", x, ndim=1, kind=None).shape[0]
    check_shape("w", w, (n,), " like x")
    require("w", w, lambda v: v >= 0, ">= 0")
    check_array("y", y, ndim=(1, 2), kind=None)
    check_shape("y", y, (n,) + (None,) * (jnp.ndim(y) - 1), " like x")
    return _wls(x, y, w, basis)


def evaluate(x, coefficients, basis: Basis):
    r"""f̂(x) = Σ_j c_j φ_j(x)."""
    basis = _as_basis(basis)
    return _features(basis, x) @ coefficients


# --------------------------------------------------------------------- sample sizes


def _c_delta(delta):
    return (1 + delta) * jnp.log1p(delta) - delta


def c_delta(delta):
    r"""c_δ = (1 + δ) ln(1 + δ) − δ (matrix Chernoff constant), δ ∈ (0, 1); NaN if traced bad."""
    require("delta", delta, *_OPEN01)
    (delta,) = as_float(delta)
    return nan_unless(_OPEN01[0](delta), _c_delta(delta))


@with_checked(ranges={"m": (lambda v: v >= 1, ">= 1"), "delta": _OPEN01, "eta": _OPEN01})
def sample_size(m, delta, eta):
    r"""Smallest integer n ≥ m ln(2m/η) / c_δ, c_δ = (1 + δ) ln(1 + δ) − δ (a float array).

    With n i.i.d. points from ρ_m and weights m/k_m, P(‖G − I‖₂ > δ) ≤ 2m exp(−c_δ n/m) ≤ η
    (Cohen & Migliorati 2017, Thm 2.1; Tropp's matrix Chernoff bound). E.g. m = 10,
    δ = 1/2, η = 0.01: c_δ ≈ 0.1082 and n = 703. Vectorised over its arguments; under ``jit``
    an out-of-range m, δ or η gives NaN (``checked_sample_size`` raises).
    """
    m, delta, eta = as_float(m, delta, eta)
    value = jnp.ceil(m * jnp.log(2 * m / eta) / _c_delta(delta))
    valid = (m >= 1) & _OPEN01[0](delta) & _OPEN01[0](eta)
    return nan_unless(valid, value)


checked_sample_size = sample_size.checked


# ------------------------------------------------------------------------- samplers

MAX_REJECTION_ROUNDS = 100_000
"""Cap on the rounds of each rejection loop, so that every loop terminates. A point whose
loop hits the cap is NaN. Exact samplers accept with probability ≥ 1/2 per round
(Christoffel) or ≥ 1 − (1 − 1/(2m))^num_proposals per round (DPP), so the cap is never
reached in practice (it would signal a wrong ``christoffel_bound`` or NaN features)."""


def _christoffel_one(key, basis, m, bound, dtype):
    def body(state):
        key, _, _, count = state
        key, kj, kx, ku = jax.random.split(key, 4)
        x = _propose(kx, (), basis, bound, dtype)
        phi = _features(basis, x[None])[0]
        if bound is None:  # mixture: j uniform, accept with π √(1 − x²) φ_j(x)² / 4
            j = jax.random.randint(kj, (), 0, m)
            p = _envelope(x, 1, None) * phi[j] ** 2
        else:
            p = _envelope(x, m, bound) * jnp.sum(phi**2)
        return key, x, jax.random.uniform(ku, (), dtype) < p, count + 1

    init = (key, jnp.asarray(jnp.nan, dtype), jnp.asarray(False), jnp.asarray(0))
    _, x, done, _ = lax.while_loop(lambda s: ~s[2] & (s[3] < MAX_REJECTION_ROUNDS), body, init)
    return jnp.where(done, x, jnp.nan)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _christoffel_sample(key, basis, n, bound):
    m, dtype = _dimension(basis), jnp.result_type(float)
    keys = jax.random.split(key, n)
    return jax.vmap(lambda k: _christoffel_one(k, basis, m, bound, dtype))(keys)


def christoffel_sample(key, basis: Basis, n: int, *, christoffel_bound=None):
    r"""n i.i.d. points from ρ_m dμ = (k_m/m) dμ, shape [n]; exact (rejection, see module doc).

    Legendre (``basis`` = m): the mixture (1/m) Σ_j φ_j² dμ — j uniform, x = cos(πU) from the
    arcsine law, accept with probability π √(1 − x²) φ_j(x)² / 4 (acceptance exactly 1/2).
    Callable basis: x ~ μ accepted with probability k_m(x) / (m · ``christoffel_bound``).
    """
    basis = _as_basis(basis)
    n = check_int("n", n, minimum=1)
    bound = _envelope_bound(basis, christoffel_bound)
    return _christoffel_sample(check_key("key", key), basis, n, bound)


def _dpp_one(key, basis, m, bound, num_proposals, dtype):
    """One projection DPP sample (m points) by the chain rule with fused rejection."""

    def project_out(r, q):
        r = r - (r @ q.T) @ q
        return r - (r @ q.T) @ q  # twice: classical Gram–Schmidt with reorthogonalisation

    def chain_step(k, carry):
        key, points, q = carry
        key, sub = jax.random.split(key)

        def body(state):
            key, _, _, _, count = state
            key, kx, ku = jax.random.split(key, 3)
            xs = _propose(kx, (num_proposals,), basis, bound, dtype)
            r = project_out(_features(basis, xs), q)
            p = _envelope(xs, m, bound) * jnp.sum(r * r, axis=-1)
            accepted = jax.random.uniform(ku, (num_proposals,), dtype) < p
            first = jnp.argmax(accepted)
            return key, jnp.any(accepted), xs[first], r[first], count + 1

        init = (sub, jnp.asarray(False), jnp.zeros((), dtype), jnp.zeros((m,), dtype),
                jnp.asarray(0))
        _, done, x, r, _ = lax.while_loop(
            lambda s: ~s[1] & (s[4] < MAX_REJECTION_ROUNDS), body, init)
        x = jnp.where(done, x, jnp.nan)
        r = project_out(r, q)
        q = q.at[k].set(r / jnp.linalg.norm(r))
        return key, points.at[k].set(x), q

    init = (key, jnp.zeros((m,), dtype), jnp.zeros((m, m), dtype))
    return lax.fori_loop(0, m, chain_step, init)[1]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _dpp_sample(key, basis, bound, num_proposals):
    return _dpp_one(key, basis, _dimension(basis), bound, num_proposals,
                    jnp.result_type(float))


def _num_proposals(num_proposals, m):
    if num_proposals is None:
        return max(8, 2 * m)
    return check_int("num_proposals", num_proposals, minimum=1)


def projection_dpp_sample(key, basis: Basis, m: int | None = None, *, christoffel_bound=None,
                          num_proposals: int | None = None):
    r"""m points (shape [m], in the order drawn) from the projection DPP with kernel
    K(x, y) = Σ_j φ_j(x) φ_j(y) on ([−1, 1], μ).

    The chain rule with rejection (module doc): for k = 0, …, m − 1, propose x ~ ρ_m and accept
    with probability ‖(I − P_k)φ(x)‖² / ‖φ(x)‖², where P_k projects onto
    span{φ(x_1), …, φ(x_k)} (Gram–Schmidt). Exact in distribution; ``lax.fori_loop`` over
    the m steps with a ``lax.while_loop`` of batched proposals (``num_proposals`` per round,
    default max(8, 2m)). The points are almost surely distinct. ``m``, if given, must equal the
    dimension of ``basis`` (for ``basis`` = an int it is that int).
    """
    basis = _as_basis(basis)
    dim = _dimension(basis)
    if m is not None and check_int("m", m, minimum=1) != dim:
        raise ValueError(f"m must equal the dimension of basis ({dim}), got {m}.")
    bound = _envelope_bound(basis, christoffel_bound)
    return _dpp_sample(check_key("key", key), basis, bound, _num_proposals(num_proposals, dim))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _volume_sample(key, basis, n, bound, num_proposals):
    m = _dimension(basis)
    k_dpp, k_iid, k_perm = jax.random.split(key, 3)
    points = _dpp_sample(k_dpp, basis, bound, num_proposals)
    if n > m:
        points = jnp.concatenate([points, _christoffel_sample(k_iid, basis, n - m, bound)])
    return jax.random.permutation(k_perm, points)


def volume_sample(key, basis: Basis, n: int, *, christoffel_bound=None,
                  num_proposals: int | None = None):
    r"""n ≥ m points from generalized volume-rescaled sampling, shape [n].

    The union of one projection DPP sample (m points) and n − m i.i.d. points from ρ_m dμ, in
    a uniformly random order (Dereziński, Warmuth & Hsu 2022: this is volume-rescaled sampling
    of size n w.r.t. ρ_m, joint density ∝ det(Σ_i φ(x_i)φ(x_i)ᵀ/k_m(x_i)) Π ρ_m(x_i);
    Nouy & Michel 2023 for its use in weighted least squares). Weights: m/k_m for every point.
    """
    basis = _as_basis(basis)
    m = _dimension(basis)
    n = check_int("n", n, minimum=1)
    if n < m:
        raise ValueError(f"n must be >= m = {m} (volume sampling needs at least m points), "
                         f"got {n}.")
    bound = _envelope_bound(basis, christoffel_bound)
    return _volume_sample(check_key("key", key), basis, n, bound, _num_proposals(num_proposals, m))


class RepeatedDPPSample(NamedTuple):
    """Result of :func:`repeated_dpp_sample`."""

    points: jax.Array  # [max_batches * m]; the first num_batches * m are drawn, the rest NaN
    num_batches: jax.Array  # int: batches used (1 ≤ b ≤ max_batches)
    stable: jax.Array  # bool: ‖G − I‖₂ ≤ δ for the points drawn (False if the cap was hit)


@functools.partial(jax.jit, static_argnums=(1, 2, 4, 5))
def _repeated(key, basis, max_batches, delta, bound, num_proposals):
    m, dtype = _dimension(basis), jnp.result_type(float)
    delta = jnp.asarray(delta, dtype)
    eye = jnp.eye(m, dtype=dtype)

    def cond(state):
        _, _, b, _, stable = state
        return (~stable) & (b < max_batches)

    def body(state):
        key, points, b, weighted, _ = state
        key, sub = jax.random.split(key)
        batch = _dpp_sample(sub, basis, bound, num_proposals)
        phi = _features(basis, batch)
        w = m / jnp.sum(phi**2, axis=-1)
        weighted = weighted + (phi * w[:, None]).T @ phi
        b = b + 1
        gram = weighted / (b * m)
        stable = jnp.max(jnp.abs(jnp.linalg.eigvalsh(gram - eye))) <= delta
        return key, points.at[b - 1].set(batch), b, weighted, stable

    init = (key, jnp.full((max_batches, m), jnp.nan, dtype), jnp.asarray(0),
            jnp.zeros((m, m), dtype), jnp.asarray(False))
    _, points, b, _, stable = lax.while_loop(cond, body, init)
    valid = (delta > 0) & (delta < 1)
    return RepeatedDPPSample(jnp.where(valid, points.reshape(-1), jnp.nan), b, stable & valid)


def repeated_dpp_sample(key, basis: Basis, max_batches: int, delta, *, christoffel_bound=None,
                        num_proposals: int | None = None) -> RepeatedDPPSample:
    r"""Independent projection-DPP batches (m points each) until ‖G − I‖₂ ≤ δ.

    After each batch b = 1, 2, …, G = (1/(bm)) Σ_i (m/k_m(x_i)) φ(x_i)φ(x_i)ᵀ over all the
    bm points drawn so far; stop at the first b with ‖G − I‖₂ ≤ δ, or at b = ``max_batches``
    (then ``stable`` is False and the points are still returned: the cap bounds the work and
    the output shape, which must be static under ``jit``). Returns
    ``RepeatedDPPSample(points, num_batches, stable)``: ``points`` has shape
    [max_batches·m], the first ``num_batches``·m entries are the sample (in batch order) and
    the rest are NaN. Under ``jit`` a traced δ ∉ (0, 1) gives NaN points and stable = False.
    """
    basis = _as_basis(basis)
    m = _dimension(basis)
    max_batches = check_int("max_batches", max_batches, minimum=1)
    require("delta", delta, *_OPEN01)
    bound = _envelope_bound(basis, christoffel_bound)
    return _repeated(check_key("key", key), basis, max_batches, delta, bound,
                     _num_proposals(num_proposals, m))


@functools.partial(jax.jit, static_argnums=2)
def _finite_dpp(key, kernel, rank):
    n = kernel.shape[0]
    dtype = kernel.dtype

    def step(k, carry):
        key, picked, cols, diag = carry
        key, sub = jax.random.split(key)
        logits = jnp.log(jnp.clip(diag, 0, None))
        i = jax.random.categorical(sub, logits)
        col = (kernel[:, i] - cols.T @ cols[:, i]) / jnp.sqrt(diag[i])
        diag = diag - col**2
        diag = diag.at[i].set(0.0)
        return key, picked.at[k].set(i.astype(jnp.int32)), cols.at[k].set(col), diag

    init = (key, jnp.zeros((rank,), jnp.int32), jnp.zeros((rank, n), dtype),
            jnp.diagonal(kernel))
    return lax.fori_loop(0, rank, step, init)[1]


def finite_projection_dpp_sample(key, K, *, rank: int | None = None):
    r"""Indices (shape [r], in the order drawn) of a sample of the finite projection DPP with
    correlation kernel ``K`` [N, N] (symmetric, K² = K, rank r = tr K).

    The chain rule (the finite analogue of :func:`projection_dpp_sample`; DPPy's
    ``proj_dpp_sampler_kernel_Chol``): d_i = K_ii; for k = 0, …, r − 1 pick i with probability
    d_i / Σ d, set c_k = (K[:, i] − Σ_{l<k} c_l c_l(i)) / √d_i and d ← d − c_k². Inclusion
    probabilities are P(i ∈ X) = K_ii. ``rank`` is static; if omitted it is round(tr K),
    which needs a concrete K. Jit-compiled (``lax.fori_loop``).
    """
    if jnp.ndim(K) != 2 or jnp.shape(K)[0] != jnp.shape(K)[1]:
        raise ValueError(f"K must be a square matrix [N, N], got shape {jnp.shape(K)}.")
    if rank is None:
        if is_traced(K):
            raise ValueError("rank must be given when K is traced (under jit), got None.")
        rank = int(round(float(np.trace(np.asarray(K)))))
    rank = check_int("rank", rank, minimum=1)
    if rank > jnp.shape(K)[0]:
        raise ValueError(f"rank must be <= N = {jnp.shape(K)[0]}, got {rank}.")
    (K,) = as_float(K)
    return _finite_dpp(check_key("key", key), K, rank)
