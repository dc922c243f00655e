"""Weighted least squares with Christoffel, DPP and volume sampling (jaxbounds.bounds.sampling).

Statistical checks use fixed seeds and tolerances from the sampling error: z-scores of at
most 5 standard errors (estimated from the i.i.d. replicates), or chi-square p > 0.001.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from numpy.polynomial import legendre as npleg
from scipy import stats

from jaxbounds.bounds import sampling as S

Z = 5.0  # tolerance in standard errors of the Monte Carlo estimates


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def gauss(num=200):
    """Gauss–Legendre nodes and weights for μ = dx/2 on [−1, 1]."""
    x, w = npleg.leggauss(num)
    return x, w / 2


def bin_integrals(edges, fn, nodes=24):
    """∫_bin fn dμ over each bin [edges[i], edges[i+1]] (Gauss–Legendre per bin)."""
    t, wt = npleg.leggauss(nodes)
    out = []
    for a, b in zip(edges[:-1], edges[1:]):
        x = (a + b) / 2 + (b - a) / 2 * t
        out.append(np.sum(wt * (b - a) / 2 * fn(x)) / 2)
    return np.array(out)


def christoffel_np(x, m):
    return np.sum(np.asarray(S.legendre_basis(jnp.asarray(x), m)) ** 2, axis=-1)


@functools.cache
def dpp_samples(m, count, seed):
    keys = jax.random.split(jax.random.key(seed), count)
    sample = jax.jit(jax.vmap(lambda k: S.projection_dpp_sample(k, m)))
    return np.asarray(sample(keys))


# ----------------------------------------------------------------------------- basis


def test_legendre_basis_is_orthonormal_and_matches_numpy():
    x, w = gauss(80)
    phi = np.asarray(S.legendre_basis(jnp.asarray(x), 40))
    assert phi.shape == (80, 40) and phi.dtype == np.float64
    np.testing.assert_allclose(phi.T @ (w[:, None] * phi), np.eye(40), atol=1e-12)
    for j in (0, 1, 7, 39):
        ref = npleg.legval(x, np.eye(40)[j]) * np.sqrt(2 * j + 1)
        np.testing.assert_allclose(phi[:, j], ref, rtol=1e-10, atol=1e-12)
    assert S.legendre_basis(0.3, 1).shape == (1,)
    assert S.legendre_basis(jnp.zeros((2, 3)), 5).shape == (2, 3, 5)


def test_bernstein_envelope_makes_the_rejection_exact():
    # The samplers accept with probability π √(1 − x²) φ_j(x)² / 4, which must be ≤ 1.
    x = np.linspace(-1, 1, 100_001)
    phi = np.asarray(S.legendre_basis(jnp.asarray(x), 120))
    ratio = np.pi / 4 * np.sqrt(1 - x**2)[:, None] * phi**2
    assert ratio.max() <= 1.0


def test_christoffel_density_integrates_to_one_and_weights():
    x, w = gauss(100)
    for m in (1, 6, 30):
        rho = np.asarray(S.christoffel_density(jnp.asarray(x), m))
        assert abs(np.sum(w * rho) - 1) < 1e-12
        np.testing.assert_allclose(S.optimal_weights(jnp.asarray(x), m), 1 / rho, rtol=1e-12)
    assert float(S.christoffel_density(1.0, 7)) == pytest.approx(7.0)  # k_m(1) = m²
    K = S.projection_kernel(jnp.asarray(x[:5]), jnp.asarray(x[:5]), 6)
    np.testing.assert_allclose(np.diag(K), christoffel_np(x[:5], 6), rtol=1e-12)


# -------------------------------------------------------------- i.i.d. Christoffel


def test_christoffel_sample_chi_square():
    m, n = 8, 20_000
    pts = np.asarray(S.christoffel_sample(jax.random.key(1), m, n))
    assert pts.shape == (n,) and np.all(np.abs(pts) <= 1)
    edges = np.linspace(-1, 1, 41)
    probs = bin_integrals(edges, lambda x: christoffel_np(x, m) / m)
    counts, _ = np.histogram(pts, edges)
    assert stats.chisquare(counts, probs / probs.sum() * n).pvalue > 1e-3


def test_christoffel_sample_with_a_callable_basis():
    basis = functools.partial(S.legendre_basis, m=5)
    pts = np.asarray(S.christoffel_sample(jax.random.key(2), basis, 10_000,
                                          christoffel_bound=5.0))
    edges = np.linspace(-1, 1, 21)
    probs = bin_integrals(edges, lambda x: christoffel_np(x, 5) / 5)
    counts, _ = np.histogram(pts, edges)
    assert stats.chisquare(counts, probs / probs.sum() * len(pts)).pvalue > 1e-3


def test_expected_gram_is_identity_for_weighted_iid_points():
    m, n = 6, 40_000
    pts = jnp.asarray(S.christoffel_sample(jax.random.key(3), m, n))
    phi = np.asarray(S.legendre_basis(pts, m))
    w = np.asarray(S.optimal_weights(pts, m))
    terms = w[:, None, None] * phi[:, :, None] * phi[:, None, :]  # i.i.d., mean = E[G]
    mean, se = terms.mean(0), terms.std(0) / np.sqrt(n)
    assert np.all(np.abs(mean - np.eye(m)) <= Z * se)
    np.testing.assert_allclose(S.gram_matrix(pts, jnp.asarray(w), m), mean, atol=1e-12)


# ----------------------------------------------------------------- projection DPP


def test_dpp_sample_has_m_distinct_points():
    for m in (1, 3, 12):
        pts = np.asarray(S.projection_dpp_sample(jax.random.key(m), m))
        assert pts.shape == (m,) and np.all(np.abs(pts) <= 1)
        assert len(np.unique(pts)) == m
        G = S.gram_matrix(jnp.asarray(pts), S.optimal_weights(jnp.asarray(pts), m), m)
        assert np.linalg.matrix_rank(np.asarray(G)) == m  # the features are independent
    basis = functools.partial(S.legendre_basis, m=4)
    pts = S.projection_dpp_sample(jax.random.key(0), basis, 4, christoffel_bound=4.0)
    assert len(np.unique(np.asarray(pts))) == 4


def test_dpp_one_point_density_matches_christoffel():
    m, count = 6, 2000
    pooled = dpp_samples(m, count, 10).ravel()
    edges = np.linspace(-1, 1, 25)
    probs = bin_integrals(edges, lambda x: christoffel_np(x, m) / m)
    counts, _ = np.histogram(pooled, edges)
    assert stats.chisquare(counts, probs / probs.sum() * pooled.size).pvalue > 1e-3


def test_dpp_pair_correlation_matches_the_projection_kernel():
    m, count, bins = 5, 4000, 6
    samples = dpp_samples(m, count, 11)
    edges = np.linspace(-1, 1, bins + 1)
    idx = np.clip(np.digitize(samples, edges) - 1, 0, bins - 1)  # [count, m]
    per_sample = np.zeros((count, bins, bins))
    for a in range(m):
        for b in range(m):
            if a != b:
                np.add.at(per_sample, (np.arange(count), idx[:, a], idx[:, b]), 1)
    mean = per_sample.mean(0)
    se = per_sample.std(0) / np.sqrt(count)

    # ∫∫_bin×bin ρ₂ dμ dμ with ρ₂(x, y) = K(x,x)K(y,y) − K(x,y)², by Gauss–Legendre.
    t, wt = npleg.leggauss(16)
    expected, independent = np.zeros((bins, bins)), np.zeros((bins, bins))
    for i in range(bins):
        for j in range(bins):
            xi = (edges[i] + edges[i + 1]) / 2 + (edges[1] - edges[0]) / 2 * t
            xj = (edges[j] + edges[j + 1]) / 2 + (edges[1] - edges[0]) / 2 * t
            wij = np.outer(wt, wt) * ((edges[1] - edges[0]) / 2 / 2) ** 2
            K = np.asarray(S.projection_kernel(jnp.asarray(xi), jnp.asarray(xj), m))
            ki, kj = christoffel_np(xi, m), christoffel_np(xj, m)
            expected[i, j] = np.sum(wij * (np.outer(ki, kj) - K**2))
            independent[i, j] = np.sum(wij * np.outer(ki, kj)) * (m - 1) / m
    assert expected.sum() == pytest.approx(m * (m - 1), rel=1e-10)
    assert np.all(np.abs(mean - expected) <= Z * se + 1e-12)
    # Repulsion: fewer pairs in the same bin than independent points with the same density.
    diag_mean, diag_se = np.trace(mean), np.sqrt(np.sum(np.diag(se) ** 2))
    assert np.trace(expected) < np.trace(independent)
    assert diag_mean < np.trace(independent) - Z * diag_se


# -------------------------------------------------------------------- finite DPP


def random_projection(n, r, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, r)))
    return q @ q.T


def test_finite_dpp_inclusion_probabilities_match_diag_k_and_dppy():
    from dppy.finite_dpps import FiniteDPP

    n, r, count = 12, 4, 4000
    K = random_projection(n, r, 0)
    keys = jax.random.split(jax.random.key(5), count)
    ours = np.asarray(jax.vmap(lambda k: S.finite_projection_dpp_sample(k, K, rank=r))(keys))
    assert ours.shape == (count, r)
    assert all(len(set(row)) == r for row in ours)
    incl = np.zeros((count, n))
    incl[np.arange(count)[:, None], ours] = 1
    p = np.diag(K)
    se = np.sqrt(p * (1 - p) / count)
    assert np.all(np.abs(incl.mean(0) - p) <= Z * se)
    pair = incl.T @ incl / count  # P(i, j ∈ X) = K_ii K_jj − K_ij² off the diagonal
    pair_ref = np.outer(p, p) - K**2
    off = ~np.eye(n, dtype=bool)
    pair_se = np.sqrt(np.clip(pair_ref * (1 - pair_ref), 1e-12, None) / count)
    assert np.all(np.abs(pair - pair_ref)[off] <= Z * pair_se[off] + 1e-12)

    dpp = FiniteDPP("correlation", projection=True, K=K)
    dpp.random_state = np.random.RandomState(0)  # noqa: NPY002 - DPPy's own API
    ref_count = 1000
    for _ in range(ref_count):
        dpp.sample_exact(mode="GS", random_state=dpp.random_state)
    ref = np.zeros((ref_count, n))
    for row, sample in enumerate(dpp.list_of_samples):
        assert len(sample) == r
        ref[row, sample] = 1
    ref_se = np.sqrt(p * (1 - p) / ref_count)
    assert np.all(np.abs(ref.mean(0) - p) <= Z * ref_se)
    both_se = np.sqrt(se**2 + ref_se**2)
    assert np.all(np.abs(ref.mean(0) - incl.mean(0)) <= Z * both_se)


def test_finite_dpp_infers_rank_and_rejects_bad_kernels():
    K = random_projection(8, 3, 1)
    assert S.finite_projection_dpp_sample(jax.random.key(0), K).shape == (3,)
    with pytest.raises(ValueError, match="K must be a square"):
        S.finite_projection_dpp_sample(jax.random.key(0), K[:3])
    with pytest.raises(ValueError, match="rank"):
        S.finite_projection_dpp_sample(jax.random.key(0), K, rank=9)


# ----------------------------------------------------- volume and repeated sampling


def test_volume_sample_shape_and_unbiased_gram():
    m, n, count = 4, 9, 1500
    keys = jax.random.split(jax.random.key(7), count)
    pts = jax.vmap(lambda k: S.volume_sample(k, m, n))(keys)
    assert pts.shape == (count, n) and bool(jnp.all(jnp.abs(pts) <= 1))
    grams = np.asarray(jax.vmap(lambda x: S.gram_matrix(x, S.optimal_weights(x, m), m))(pts))
    mean, se = grams.mean(0), grams.std(0) / np.sqrt(count)
    assert np.all(np.abs(mean - np.eye(m)) <= Z * se + 1e-12)
    assert S.volume_sample(jax.random.key(0), m, m).shape == (m,)


def test_repeated_dpp_sample_stops_when_stable_and_respects_the_cap():
    m, delta = 6, 0.5
    out = S.repeated_dpp_sample(jax.random.key(8), m, 30, delta)
    b = int(out.num_batches)
    assert 1 <= b <= 30 and bool(out.stable)
    pts = np.asarray(out.points)
    assert pts.shape == (30 * m,)
    assert np.all(np.isfinite(pts[: b * m])) and np.all(np.isnan(pts[b * m:]))
    x = jnp.asarray(pts[: b * m])
    G = S.gram_matrix(x, S.optimal_weights(x, m), m)
    assert bool(S.is_stable(G, delta))
    if b > 1:  # it did not stop earlier
        y = x[: (b - 1) * m]
        assert not bool(S.is_stable(S.gram_matrix(y, S.optimal_weights(y, m), m), delta))
    capped = S.repeated_dpp_sample(jax.random.key(8), m, 2, 1e-6)
    assert int(capped.num_batches) == 2 and not bool(capped.stable)


# ------------------------------------------------------------------ least squares


def test_weighted_least_squares_recovers_polynomials_in_vm():
    m = 10
    c = np.random.default_rng(0).standard_normal(m)
    for x in (S.christoffel_sample(jax.random.key(9), m, 3 * m),
              S.projection_dpp_sample(jax.random.key(9), m),
              S.volume_sample(jax.random.key(9), m, 2 * m)):
        y = S.evaluate(x, jnp.asarray(c), m)
        coef = S.weighted_least_squares(x, y, S.optimal_weights(x, m), m)
        np.testing.assert_allclose(coef, c, atol=1e-9)
    Y = jnp.stack([y, 2 * y], axis=1)
    coef = S.weighted_least_squares(x, Y, S.optimal_weights(x, m), m)
    np.testing.assert_allclose(coef[:, 1], 2 * c, atol=1e-9)


def test_wls_error_is_near_best_approximation_when_stable():
    m, f = 10, lambda x: 1 / (1 + 25 * x**2)
    xq, wq = gauss(300)
    phi_q = np.asarray(S.legendre_basis(jnp.asarray(xq), m))
    best = phi_q.T @ (wq * f(xq))
    best_err = np.sqrt(np.sum(wq * (f(xq) - phi_q @ best) ** 2))
    x = S.christoffel_sample(jax.random.key(4), m, 20 * m)
    w = S.optimal_weights(x, m)
    assert bool(S.is_stable(S.gram_matrix(x, w, m), 0.5))
    coef = np.asarray(S.weighted_least_squares(x, f(x), w, m))
    err = np.sqrt(np.sum(wq * (f(xq) - phi_q @ coef) ** 2))
    assert best_err <= err <= 3 * best_err


# ---------------------------------------------------------------- sample sizes


def test_sample_size_formula_values():
    assert float(S.c_delta(0.5)) == pytest.approx(1.5 * np.log(1.5) - 0.5, rel=1e-14)
    assert float(S.sample_size(10, 0.5, 0.01)) == 703.0
    for m, d, e in [(1, 0.1, 0.5), (40, 0.5, 0.1), (100, 0.9, 1e-3)]:
        ref = np.ceil(m * np.log(2 * m / e) / ((1 + d) * np.log(1 + d) - d))
        assert float(S.sample_size(m, d, e)) == ref
    vec = S.sample_size(jnp.array([10, 20]), 0.5, 0.01)
    assert vec.shape == (2,) and vec[1] > 2 * vec[0]
    assert bool(jnp.isnan(jax.jit(S.sample_size)(10, 1.5, 0.01)))
    with pytest.raises(checkify.JaxRuntimeError, match="delta"):
        S.checked_sample_size(10, jnp.asarray(1.5), 0.01)
    assert float(S.checked_sample_size(10, 0.5, 0.01)) == 703.0


def test_jit_and_vmap():
    dpp = jax.jit(lambda k: S.projection_dpp_sample(k, 5))
    assert dpp(jax.random.key(0)).shape == (5,)
    keys = jax.random.split(jax.random.key(1), 3)
    assert jax.vmap(lambda k: S.christoffel_sample(k, 5, 7))(keys).shape == (3, 7)
    raw = S.christoffel_sample(jax.random.PRNGKey(0), 3, 4)  # raw uint32 keys work too
    assert raw.shape == (4,)
    traced = jax.jit(lambda k, d: S.repeated_dpp_sample(k, 3, 2, d))(jax.random.key(0), 2.0)
    assert bool(jnp.all(jnp.isnan(traced.points))) and not bool(traced.stable)


# --------------------------------------------------------------------- bad input


def test_bad_input_errors_name_the_argument():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"m\) must be >= 1, got"):
        S.projection_dpp_sample(key, 0)
    with pytest.raises(ValueError, match="m must be >= 1"):
        S.legendre_basis(jnp.zeros(3), -2)
    with pytest.raises(TypeError, match="must be an int"):
        S.christoffel_sample(key, 2.5, 10)
    with pytest.raises(ValueError, match="n must be >= m = 5"):
        S.volume_sample(key, 5, 4)
    with pytest.raises(ValueError, match="n must be >= 1"):
        S.christoffel_sample(key, 5, 0)
    with pytest.raises(ValueError, match=r"m must equal the dimension"):
        S.projection_dpp_sample(key, 5, 6)
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
            S.sample_size(10, bad, 0.1)
        with pytest.raises(ValueError, match=r"eta must be in \(0, 1\)"):
            S.sample_size(10, 0.5, bad)
        with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
            S.repeated_dpp_sample(key, 3, 5, bad)
        with pytest.raises(ValueError, match=r"delta must be in \(0, 1\)"):
            S.is_stable(jnp.eye(3), bad)
    with pytest.raises(ValueError, match="m must be >= 1"):
        S.sample_size(0, 0.5, 0.1)
    with pytest.raises(ValueError, match="max_batches must be >= 1"):
        S.repeated_dpp_sample(key, 3, 0, 0.5)
    with pytest.raises(ValueError, match="christoffel_bound must be given"):
        S.christoffel_sample(key, functools.partial(S.legendre_basis, m=3), 5)
    with pytest.raises(ValueError, match="w must have shape"):
        S.weighted_least_squares(jnp.zeros(4), jnp.zeros(4), jnp.ones(3), 2)
    with pytest.raises(ValueError, match="w must be >= 0"):
        S.gram_matrix(jnp.zeros(2), jnp.array([1.0, -1.0]), 2)
    with pytest.raises(TypeError, match="key"):
        S.christoffel_sample(jnp.zeros(3), 3, 4)
