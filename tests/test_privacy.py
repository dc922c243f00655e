"""LDP sparse regression (jaxbounds.bounds.privacy): noise scales against ε, empirical
privacy checks (histogram ratio of the scalar Laplace mechanism, exact density ratio of a
user's whole release on the worst-case pair, privacy-loss distribution of the Gaussian
(ε, δ) mechanism), consistency of the estimator, the rate calculators and bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy import stats

from jaxbounds.bounds import privacy as pv


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def worst_case_pair(d, r, r_y):
    """Two users after clipping: x = r·1, y = r' against x' = 0, y' = −r' (the pair has
    ‖v − v'‖₁ = d(d+1)/2·r² + d·r·r', at least half the L1 sensitivity bound d²r² + 2d r r')."""
    return (np.full(d, r), r_y), (np.zeros(d), -r_y)


def release_vector(x, y):
    """The released statistics v = (upper triangle of x xᵀ, x y) without noise."""
    x = np.asarray(x, float)
    return np.concatenate([np.outer(x, x)[np.triu_indices(len(x))], x * y])


def as_vector(mats, vecs):
    return np.concatenate([np.asarray(pv.upper_triangle(mats)), np.asarray(vecs)], axis=-1)


# ------------------------------------------------------------------ noise scales


def test_laplace_scale_is_sensitivity_over_epsilon_and_variance_is_2b2():
    assert float(pv.laplace_scale(3.0, 0.5)) == 6.0
    b = float(pv.laplace_scale(2.0, 0.8))
    noise = np.asarray(pv.laplace_mechanism(jax.random.key(0), jnp.zeros(400_000), 2.0, 0.8))
    # Var(L²) = E L⁴ − (E L²)² = 24b⁴ − 4b⁴ = 20b⁴: standard error of the variance estimate
    se = math.sqrt(20) * b**2 / math.sqrt(noise.size)
    assert abs(noise.var() - 2 * b**2) < 4 * se
    assert abs(noise.mean()) < 4 * math.sqrt(2) * b / math.sqrt(noise.size)
    # the median absolute deviation of Lap(b) is b ln 2
    assert abs(np.median(np.abs(noise)) - b * math.log(2)) < 0.01 * b


def test_release_noise_scales_follow_the_accounting():
    d, r, r_y, eps = 6, 1.5, 2.0, 0.7
    l1_mat, l1_vec = d * d * r**2, 2 * d * r * r_y
    assert np.allclose(pv.release_sensitivity(d, r, r_y), (l1_mat, l1_vec))
    assert np.allclose(pv.release_sensitivity(d, r, r_y, norm=2),
                       (r**2 * math.sqrt(2 * d * (d - 1) + d), 2 * math.sqrt(d) * r * r_y))
    joint = pv.release_noise_scales(d, eps, r, r_y)
    assert np.allclose(joint, ((l1_mat + l1_vec) / eps,) * 2)
    split = pv.release_noise_scales(d, eps, r, r_y, matrix_share=0.25)
    assert np.allclose(split, (l1_mat / (0.25 * eps), l1_vec / (0.75 * eps)))
    # the proportional split is the joint release
    share = l1_mat / (l1_mat + l1_vec)
    assert np.allclose(pv.release_noise_scales(d, eps, r, r_y, matrix_share=share), joint)
    assert np.isclose(pv.release_noise_scales(d, eps, r, r_y, public=True)[1], l1_vec / eps)
    gauss = pv.release_noise_scales(d, 0.5, r, r_y, mechanism="gaussian", delta=1e-5)
    l2 = math.hypot(r**2 * math.sqrt(2 * d * (d - 1) + d), 2 * math.sqrt(d) * r * r_y)
    assert np.allclose(gauss, (l2 * math.sqrt(2 * math.log(1.25e5)) / 0.5,) * 2)


def test_privatize_statistics_noise_matches_its_epsilon():
    d, n, r, r_y, eps = 3, 20_000, 1.0, 2.0, 2.0
    x = jax.random.normal(jax.random.key(1), (n, d))
    y = jax.random.normal(jax.random.key(2), (n,)) * 3
    x_c, y_c = (np.asarray(v) for v in pv.clip_data(x, y, r, r_y))
    clean = np.stack([release_vector(a, b) for a, b in zip(x_c[:5], y_c[:5])])
    for share in (None, 0.4):
        mats, vecs = pv.privatize_statistics(jax.random.key(3), x, y, eps, clip_x=r,
                                             clip_y=r_y, matrix_share=share)
        assert mats.shape == (n, d, d) and vecs.shape == (n, d) and mats.dtype == jnp.float64
        np.testing.assert_array_equal(mats, np.swapaxes(mats, 1, 2))  # symmetric
        released = as_vector(mats, vecs)
        noise = released - np.concatenate(
            [np.asarray(pv.upper_triangle(x_c[:, :, None] * x_c[:, None, :])), x_c * y_c[:, None]],
            axis=1)
        assert np.allclose(released[:5] - noise[:5], clean)
        b_mat, b_vec = (float(b) for b in pv.release_noise_scales(d, eps, r, r_y,
                                                                     matrix_share=share))
        m = d * (d + 1) // 2
        for part, b in ((noise[:, :m], b_mat), (noise[:, m:], b_vec)):
            se = math.sqrt(20) * b**2 / math.sqrt(part.size)
            assert abs(part.var() - 2 * b**2) < 5 * se
        # independent noise across users and coordinates
        assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.03


# ------------------------------------------------------------- privacy checks


def test_sensitivity_bounds_are_sound_and_nearly_tight():
    d, r, r_y = 5, 1.3, 0.7
    l1_mat, l1_vec = (float(v) for v in pv.release_sensitivity(d, r, r_y))
    l2_mat, l2_vec = (float(v) for v in pv.release_sensitivity(d, r, r_y, norm=2))
    rng = np.random.default_rng(0)
    # random clipped points, and the vertices of the box (where the worst cases lie)
    xs = np.concatenate([rng.uniform(-r, r, (300, d)), rng.choice([-r, 0.0, r], (300, d))])
    ys = np.concatenate([rng.uniform(-r_y, r_y, 300), rng.choice([-r_y, r_y], 300)])
    v = np.stack([release_vector(a, b) for a, b in zip(xs, ys)])
    m = d * (d + 1) // 2
    diff = v[:, None, :] - v[None, :, :]
    assert np.abs(diff[..., :m]).sum(-1).max() <= l1_mat
    assert np.abs(diff[..., m:]).sum(-1).max() <= l1_vec
    assert np.sqrt((diff[..., :m] ** 2).sum(-1)).max() <= l2_mat * (1 + 1e-12)
    assert np.sqrt((diff[..., m:] ** 2).sum(-1)).max() <= l2_vec * (1 + 1e-12)
    (xa, ya), (xb, yb) = worst_case_pair(d, r, r_y)
    gap = np.abs(release_vector(xa, ya) - release_vector(xb, yb)).sum()
    assert np.isclose(gap, d * (d + 1) / 2 * r**2 + d * r * r_y)
    assert gap >= 0.5 * (l1_mat + l1_vec)


def laplace_histogram_ratio(scale, eps, sensitivity=1.0, n=400_000, min_count=2_000):
    """Max over bins of the count ratio between outputs on inputs 0 and Δ, and its
    allowance for sampling error (4 standard errors of a log count ratio)."""
    k0, k1 = jax.random.split(jax.random.key(42))
    a = np.asarray(pv.laplace_mechanism(k0, jnp.zeros(n), sensitivity, eps)) if scale is None \
        else np.asarray(jax.random.laplace(k0, (n,))) * scale
    b = sensitivity + (np.asarray(pv.laplace_mechanism(k1, jnp.zeros(n), sensitivity, eps))
                       if scale is None else np.asarray(jax.random.laplace(k1, (n,))) * scale)
    edges = np.linspace(-4, 5, 91) * sensitivity
    ca, _ = np.histogram(a, edges)
    cb, _ = np.histogram(b, edges)
    ok = (ca >= min_count) & (cb >= min_count)
    log_ratio = np.abs(np.log(ca[ok] / cb[ok]))
    allowance = 4 * np.sqrt(1 / ca[ok] + 1 / cb[ok])
    return log_ratio, allowance


def test_laplace_mechanism_histogram_ratio_stays_within_e_eps():
    eps = 1.0
    log_ratio, allowance = laplace_histogram_ratio(None, eps)
    assert len(log_ratio) > 30
    assert np.all(log_ratio <= eps + allowance)
    # the bound is attained outside [0, Δ]: the check is not vacuous
    assert log_ratio.max() >= eps - allowance.max()
    # and it catches a mechanism calibrated for 2ε while claiming ε
    log_ratio, allowance = laplace_histogram_ratio(0.5, eps)
    assert np.any(log_ratio > eps + allowance)


def laplace_log_ratio(outputs, v, v_prime, b):
    """ln p_v(o) − ln p_v'(o) for i.i.d. Lap(b) noise on every released coordinate."""
    return (np.abs(outputs - v_prime).sum(-1) - np.abs(outputs - v).sum(-1)) / b


@pytest.mark.parametrize("share", [None, 0.3])
def test_user_release_density_ratio_within_e_eps_on_the_worst_case_pair(share):
    d, r, r_y, eps, draws = 4, 1.0, 2.0, 0.5, 20_000
    (xa, ya), (xb, yb) = worst_case_pair(d, r, r_y)
    x = jnp.broadcast_to(jnp.asarray(xa), (draws, d))
    y = jnp.full((draws,), ya)
    mats, vecs = pv.privatize_statistics(jax.random.key(7), x, y, eps, clip_x=r, clip_y=r_y,
                                         matrix_share=share)
    out = as_vector(mats, vecs)
    va, vb = release_vector(xa, ya), release_vector(xb, yb)
    b_mat, b_vec = (float(b) for b in pv.release_noise_scales(d, eps, r, r_y,
                                                                 matrix_share=share))
    m = d * (d + 1) // 2
    loss = (laplace_log_ratio(out[:, :m], va[:m], vb[:m], b_mat)
            + laplace_log_ratio(out[:, m:], va[m:], vb[m:], b_vec))
    assert np.all(np.abs(loss) <= eps * (1 + 1e-12))
    # the privacy loss's supremum for this pair, ‖Δv‖₁/b, is at least half of ε ...
    sup = np.abs(va - vb)[:m].sum() / b_mat + np.abs(va - vb)[m:].sum() / b_vec
    assert eps / 2 <= sup <= eps * (1 + 1e-12)
    # ... and the samples come close to it (the check is not vacuous)
    assert loss.max() > 0.6 * sup
    # the same outputs judged with half the noise scale would violate ε
    assert laplace_log_ratio(out, va, vb, (b_mat if share is None else min(b_mat, b_vec)) / 4
                             ).max() > eps


def test_public_variant_release_is_eps_ldp():
    d, r, r_y, eps, draws = 6, 1.0, 1.5, 1.0, 20_000
    (xa, ya), _ = worst_case_pair(d, r, r_y)
    xb, yb = np.full(d, r), -r_y  # flips every x·y entry: ‖Δv‖₁ = 2 d r r' = Δ₁ exactly
    out = np.asarray(pv.privatize_products(
        jax.random.key(8), jnp.broadcast_to(jnp.asarray(xa), (draws, d)),
        jnp.full((draws,), ya), eps, clip_x=r, clip_y=r_y))
    b = float(pv.release_noise_scales(d, eps, r, r_y, public=True)[1])
    loss = laplace_log_ratio(out, xa * ya, xb * yb, b)
    assert np.all(np.abs(loss) <= eps * (1 + 1e-12))
    assert loss.max() > 0.8 * eps


def test_gaussian_mechanism_meets_its_eps_delta_guarantee_only():
    eps, delta, sens = 0.5, 1e-3, 2.0
    sigma = float(pv.gaussian_sigma(sens, eps, delta))
    assert np.isclose(sigma, sens * math.sqrt(2 * math.log(1.25 / delta)) / eps)
    # exact privacy-loss distribution N(μ, 2μ), μ = Δ²/(2σ²): P[L > ε] ≤ δ on a grid
    for e in (0.05, 0.3, 0.6, 0.95):
        for dl in (1e-6, 1e-3, 0.1):
            s = float(pv.gaussian_sigma(1.0, e, dl))
            mu = 1 / (2 * s**2)
            assert stats.norm.sf((e - mu) / math.sqrt(2 * mu)) <= dl
    # Monte Carlo on a user's public-variant release, worst-case pair (x·y flipped)
    d, r, r_y, draws = 4, 1.0, 1.0, 200_000
    e, dl = 0.5, 0.05  # a large δ so that the tail is visible in the sample
    x = jnp.ones((draws, d))
    out = np.asarray(pv.privatize_products(jax.random.key(9), x, jnp.full((draws,), r_y), e,
                                           clip_x=r, clip_y=r_y, mechanism="gaussian",
                                           delta=dl))
    s = float(pv.release_noise_scales(d, e, r, r_y, mechanism="gaussian", delta=dl,
                                      public=True)[1])
    va, vb = np.full(d, r * r_y), np.full(d, -r * r_y)
    loss = (((out - vb) ** 2).sum(-1) - ((out - va) ** 2).sum(-1)) / (2 * s**2)
    mu = ((va - vb) ** 2).sum() / (2 * s**2)
    assert abs(loss.mean() - mu) < 5 * math.sqrt(2 * mu / draws)
    frac = (loss > e).mean()
    assert frac <= dl + 4 * math.sqrt(dl * (1 - dl) / draws)
    # not pure ε-LDP: the loss exceeds ε with positive probability
    assert frac > 0


# ------------------------------------------------------------------- estimator


def test_hard_threshold_keeps_the_k_largest_magnitudes():
    v = jnp.array([[0.1, -3.0, 2.0, 0.5], [4.0, 0.0, -1.0, 2.0]])
    np.testing.assert_array_equal(pv.hard_threshold(v, 2), [[0, -3, 2, 0], [4, 0, 0, 2]])
    np.testing.assert_array_equal(pv.hard_threshold(v[0], 4), v[0])


def test_estimator_converges_as_n_grows_with_eps_fixed():
    k, eps, r_y = 2, 4.0, 3.0
    beta = jnp.array([0.0, 1.0, 0.0, -1.0, 0.0]) / math.sqrt(2)
    errors = {("stats", "iht"): [], ("stats", "threshold_ls"): [], ("public", "iht"): []}
    for n in (2_000, 20_000, 100_000):
        per_seed = {key: [] for key in errors}
        for seed in range(2):
            key = jax.random.fold_in(jax.random.key(10), seed)
            x, y = pv.make_sparse_regression(jax.random.fold_in(key, n), n, beta)
            x_pub, _ = pv.make_sparse_regression(jax.random.fold_in(key, n + 1), n, beta)
            for source, method in errors:
                est = pv.ldp_sparse_regression(
                    jax.random.fold_in(key, 1), x, y, k, eps, clip_y=r_y, method=method,
                    public_x=x_pub if source == "public" else None)
                assert int((est != 0).sum()) <= k
                per_seed[(source, method)].append(float(jnp.linalg.norm(est - beta)))
        for key in errors:
            errors[key].append(np.mean(per_seed[key]))
    for key, errs in errors.items():
        assert errs[0] > errs[1] > errs[2], (key, errs)
        assert errs[0] / errs[2] > 3 and errs[2] < 0.25, (key, errs)
    # public covariance: only x·y is privatised, with much less noise
    assert errors[("public", "iht")][-1] < errors[("stats", "iht")][-1]


def test_sparse_estimate_recovers_beta_from_exact_statistics():
    cov = jnp.eye(6) + 0.2 * (jnp.ones((6, 6)) - jnp.eye(6))
    beta = jnp.array([0.0, 2.0, 0.0, 0.0, -1.0, 0.0])
    for method in pv.METHODS:
        est = pv.sparse_estimate(cov, cov @ beta, 2, method=method, num_iters=500)
        np.testing.assert_allclose(est, beta, atol=1e-8)


def test_mechanisms_jit_and_vmap_over_epsilon_share_the_noise():
    x = jax.random.normal(jax.random.key(11), (50, 3))
    y = jax.random.normal(jax.random.key(12), (50,))
    eps = jnp.array([0.5, 1.0, 2.0])
    f = jax.jit(jax.vmap(lambda e: pv.privatize_statistics(jax.random.key(13), x, y, e)[1]))
    out = np.asarray(f(eps))
    clean = np.asarray(pv.clip_data(x, y, 1.0, 1.0)[0] * pv.clip_data(x, y, 1.0, 1.0)[1][:, None])
    noise = out - clean
    np.testing.assert_allclose(noise[0] * 0.5, noise[1] * 1.0, rtol=1e-10)
    np.testing.assert_allclose(noise[2] * 2.0, noise[1] * 1.0, rtol=1e-10)
    single = pv.privatize_statistics(jax.random.key(13), x, y, 1.0)[1]
    np.testing.assert_allclose(out[1], single, rtol=1e-12)


# ---------------------------------------------------------------- rate calculators


def test_bound_values_and_scaling():
    n, d, k, eps = 400.0, 10.0, 3.0, 0.5
    assert np.isclose(pv.nldp_lower_bound(n, d, k, eps), math.sqrt(d * k * math.log(d)) / 10)
    assert np.isclose(pv.nldp_upper_bound(n, d, k, eps), d * math.sqrt(k) / 10)
    assert np.isclose(pv.nldp_upper_bound(n, d, k, eps, public_data=True),
                      math.sqrt(d * k) / 10)
    assert np.isclose(pv.interactive_lower_bound(n, d, k, eps), math.sqrt(d * k) / 10)
    assert np.isclose(pv.interactive_upper_bound(n, d, k, eps), k * math.sqrt(d) / 10)
    assert np.isclose(pv.nldp_lower_bound(n, d, k, eps, constant=3.0),
                      3 * pv.nldp_lower_bound(n, d, k, eps))
    fns = [pv.nldp_lower_bound, pv.nldp_upper_bound, pv.interactive_lower_bound,
           pv.interactive_upper_bound]
    for fn in fns:
        base = float(fn(n, d, k, eps))
        assert np.isclose(fn(4 * n, d, k, eps), base / 2)  # n^{-1/2}
        assert np.isclose(fn(n, d, k, 2 * eps), base / 2)  # ε^{-1}
        assert fn(n, d, k, eps).dtype == jnp.float64
    # orderings: lower ≤ upper, interactive lower ≤ NLDP lower (d ≥ 3), public: √d better
    ds = np.array([3.0, 10.0, 100.0, 1e4])  # log d >= 1
    ks = np.array([1.0, 2.0, 50.0, 100.0])
    lower, upper = pv.nldp_lower_bound(n, ds, ks, eps), pv.nldp_upper_bound(n, ds, ks, eps)
    assert np.all(lower <= upper)
    assert np.all(pv.interactive_lower_bound(n, ds, ks, eps) <= lower)
    assert np.all(pv.interactive_lower_bound(n, ds, ks, eps)
                  <= pv.interactive_upper_bound(n, ds, ks, eps))
    np.testing.assert_allclose(upper / pv.nldp_upper_bound(n, ds, ks, eps, public_data=True),
                               np.sqrt(ds))
    # jit and vmap agree with the loop
    ns = jnp.array([10.0, 100.0, 1000.0])
    batched = jax.jit(jax.vmap(lambda m: pv.nldp_upper_bound(m, d, k, eps)))(ns)
    np.testing.assert_allclose(batched, [float(pv.nldp_upper_bound(m, d, k, eps)) for m in ns])


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize("call, match", [
    (lambda: pv.laplace_scale(1.0, 0.0), "epsilon"),
    (lambda: pv.laplace_scale(1.0, -1.0), "epsilon"),
    (lambda: pv.laplace_scale(0.0, 1.0), "sensitivity"),
    (lambda: pv.gaussian_sigma(1.0, 0.5, 0.0), "delta"),
    (lambda: pv.gaussian_sigma(1.0, 0.5, 1.0), "delta"),
    (lambda: pv.gaussian_sigma(1.0, 1.5, 0.1), "epsilon"),
    (lambda: pv.gaussian_mechanism(jax.random.key(0), 0.0, 1.0, 0.5, 1.2), "delta"),
    (lambda: pv.nldp_lower_bound(100, 5, 6, 1.0), "k"),
    (lambda: pv.nldp_upper_bound(0, 5, 2, 1.0), "n"),
    (lambda: pv.interactive_upper_bound(-3, 5, 2, 1.0), "n"),
    (lambda: pv.interactive_lower_bound(10, 5, 2, 0.0), "epsilon"),
    (lambda: pv.nldp_lower_bound(10, 5, 2, 1.0, constant=0.0), "constant"),
    (lambda: pv.clip_data(jnp.ones(3), 1.0, 0.0, 1.0), "clip_x"),
    (lambda: pv.clip_data(jnp.ones(3), 1.0, 1.0, -1.0), "clip_y"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 0.0),
     "epsilon"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 1.0,
                                     clip_x=0.0), "clip_x"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 1.0,
                                     matrix_share=1.0), "matrix_share"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(5), 1.0),
     "y must have shape"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 0.5,
                                     mechanism="gaussian"), "delta"),
    (lambda: pv.privatize_statistics(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 0.5,
                                     delta=1e-5), "delta must be None"),
    (lambda: pv.privatize_products(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 0.5,
                                   mechanism="exponential"), "mechanism"),
    (lambda: pv.ldp_sparse_regression(jax.random.key(0), jnp.ones((4, 3)), jnp.ones(4), 4, 1.0),
     "k"),
    (lambda: pv.sparse_estimate(jnp.eye(3), jnp.ones(3), 0), "k"),
    (lambda: pv.sparse_estimate(jnp.eye(3), jnp.ones(3), 1, method="lasso"), "method"),
    (lambda: pv.hard_threshold(jnp.ones(3), 5), "k"),
    (lambda: pv.make_sparse_regression(jax.random.key(0), 0, jnp.ones(3)), "n"),
])
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_traced_bad_values_give_nan_and_checked_variants_raise():
    assert np.isnan(jax.jit(pv.laplace_scale)(1.0, -1.0))
    assert np.isnan(jax.jit(pv.gaussian_sigma)(1.0, 0.5, 2.0))
    assert np.isnan(jax.jit(pv.nldp_lower_bound)(100.0, 5.0, 6.0, 1.0))
    assert np.isnan(jax.jit(pv.nldp_upper_bound)(-1.0, 5.0, 2.0, 1.0))
    f = jax.jit(lambda e: pv.privatize_products(jax.random.key(0), jnp.ones((4, 3)),
                                                jnp.ones(4), e))
    assert np.all(np.isnan(f(-1.0))) and np.all(np.isfinite(f(1.0)))
    assert np.isclose(pv.checked_nldp_upper_bound(100.0, 5.0, 2.0, 1.0), 5 * math.sqrt(2) / 10)
    assert np.isclose(pv.checked_laplace_scale(2.0, 4.0), 0.5)
    for call in (lambda: pv.checked_nldp_lower_bound(100.0, 5.0, 6.0, 1.0),
                 lambda: pv.checked_interactive_upper_bound(0.0, 5.0, 2.0, 1.0),
                 lambda: pv.checked_laplace_scale(1.0, 0.0),
                 lambda: pv.checked_gaussian_sigma(1.0, 0.5, 1.5)):
        with pytest.raises(checkify.JaxRuntimeError):
            call()
