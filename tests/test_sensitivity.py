"""ℓp sensitivities, Lewis weights and sensitivity sampling: exact references (NumPy, an
independent HiGHS LP), soundness by sampling the true ratios, unbiasedness of sampling,
jit/vmap, sample-size formulas and the bad-input policy."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy import optimize, sparse
from test_bounds_mutation import sensitivity_search

from jaxbounds.bounds import sensitivity as sens

# Outward tolerance of the soundness comparisons (float64 rounding of the certificates).
SOUND_RTOL = 1e-9


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def rng(request):
    """A fixed seed per test (derived from its name), so every run draws the same inputs."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def heavy_matrix(rng, n=200, d=10):
    A = rng.standard_normal((n, d))
    A[: d // 2] *= 30.0  # a few heavy rows
    A *= rng.lognormal(0.0, 0.5, size=(n, 1))
    return A


def ratios(A, X, p):
    """|⟨a_i, x⟩|^p / ‖Ax‖_p^p for every row i and column x of X: [n, k]."""
    Y = np.abs(A @ X)
    return Y**p / np.sum(Y**p, axis=0, keepdims=True)


# ------------------------------------------------------------------ p = 2 and Lewis


def test_p2_sensitivities_lewis_weights_and_leverage_agree(rng):
    A = heavy_matrix(rng)
    reference = np.einsum("ij,jk,ik->i", A, np.linalg.inv(A.T @ A), A)
    tau = sens.leverage_scores(A)
    np.testing.assert_allclose(tau, reference, rtol=1e-10)
    np.testing.assert_allclose(sens.lewis_weights(A, 2.0), reference, rtol=1e-10)
    bounds = sens.lp_sensitivities(A, 2)
    assert bounds.exact
    np.testing.assert_allclose(bounds.upper, reference, rtol=1e-10)
    # the jittable bracket at p = 2 too
    lower, upper = sens._sensitivity_bounds(jnp.asarray(A), 2.0, 5, 64)
    np.testing.assert_allclose(lower, reference, rtol=1e-10)
    np.testing.assert_allclose(upper, reference, rtol=1e-10)


def test_leverage_scores_sum_to_the_rank_even_when_rank_deficient(rng):
    A = rng.standard_normal((50, 6))
    A = np.concatenate([A, A[:, :2] + A[:, 2:4]], axis=1)  # rank 6, 8 columns
    A[7] = 0.0
    tau = np.asarray(sens.leverage_scores(A))
    assert abs(tau.sum() - 6) < 1e-10 and tau[7] == 0 and np.all(tau <= 1 + 1e-12)
    w = np.asarray(sens.lewis_weights(A, 1.0))
    assert abs(w.sum() - 6) < 1e-9 and w[7] == 0


@pytest.mark.parametrize("p", [0.5, 1.0, 1.5, 3.0, 4.0, 5.0, 6.0])
def test_lewis_weights_sum_to_d_and_solve_the_fixed_point(rng, p):
    A = heavy_matrix(rng, n=120, d=8)
    w, residual = sens.lewis_weights(A, p, return_residual=True)
    w = np.asarray(w)
    assert abs(w.sum() - 8) < 1e-9
    assert float(residual) < 1e-10
    # independent check of w_i = (a_iᵀ (Aᵀ W^{1−2/p} A)⁻¹ a_i)^{p/2} in NumPy
    M = A.T @ (w[:, None] ** (1 - 2 / p) * A)
    phi = np.einsum("ij,jk,ik->i", A, np.linalg.inv(M), A) ** (p / 2)
    np.testing.assert_allclose(phi, w, rtol=1e-9)


def test_lewis_weights_p5_converge_to_the_same_point_from_either_damping(rng):
    A = heavy_matrix(rng, n=100, d=6)
    w_default, res = sens.lewis_weights(A, 5.0, return_residual=True)
    w_slow = sens.lewis_weights(A, 5.0, damping=0.2, num_iters=400)
    np.testing.assert_allclose(w_default, w_slow, rtol=1e-9)
    assert float(res) < 1e-10
    # Cohen–Peng (undamped) is not a contraction at p = 5: it oscillates or blows up
    _, res_cp = sens.lewis_weights(A, 5.0, damping=1.0, num_iters=60, return_residual=True)
    assert not float(res_cp) < 1e-6  # large or NaN


def test_lewis_weights_jit_and_vmap(rng):
    As = jnp.asarray(rng.standard_normal((3, 40, 4)))
    batched = jax.vmap(lambda A: sens.lewis_weights(A, 3.0))(As)
    for A, w in zip(As, batched):
        np.testing.assert_allclose(w, sens.lewis_weights(A, 3.0), rtol=1e-10)
    jitted = jax.jit(lambda A: sens.leverage_scores(A))(As[0])
    np.testing.assert_allclose(jitted, sens.leverage_scores(As[0]), rtol=1e-12)


# --------------------------------------------------------------------- sensitivities


def l1_sensitivities_dual_lp(A, rows):
    """Independent LP: s_i = min{‖u‖_∞ : Aᵀu = a_i} (dual of min ‖Ax‖₁ s.t. ⟨a_i,x⟩ = 1)."""
    n, d = A.shape
    eye, ones = sparse.identity(n), np.ones((n, 1))
    A_ub = sparse.vstack([sparse.hstack([eye, -ones]), sparse.hstack([-eye, -ones])]).tocsr()
    A_eq = np.hstack([A.T, np.zeros((d, 1))])
    cost = np.zeros(n + 1)
    cost[-1] = 1.0
    out = []
    for i in rows:
        res = optimize.linprog(cost, A_ub=A_ub, b_ub=np.zeros(2 * n), A_eq=A_eq, b_eq=A[i],
                               bounds=[(None, None)] * n + [(0, None)], method="highs")
        assert res.status == 0
        out.append(res.fun)
    return np.array(out)


def test_exact_l1_sensitivities_match_an_independent_lp_and_are_sound(rng):
    A = heavy_matrix(rng, n=200, d=10)
    s = sens.lp_sensitivities(A, 1)
    assert s.exact
    s = np.asarray(s.upper)
    rows = rng.choice(200, 40, replace=False)  # the reference LP on a random subset of rows
    np.testing.assert_allclose(s[rows], l1_sensitivities_dual_lp(A, rows), rtol=1e-7,
                               atol=1e-12)
    assert s.sum() <= 10 + 1e-8
    # soundness: no sampled ratio exceeds s (violations counted, must be 0). The exact
    # reference LP above is the worst-case search (coverage 1 on its rows); uniform samples
    # alone reach far less, as the printed coverage shows.
    X = rng.standard_normal((10, 2000))
    sampled = ratios(A, X, 1.0)
    assert np.sum(sampled > s[:, None] * (1 + SOUND_RTOL)) == 0
    print(f"coverage of 2,000 uniform directions: median {np.median(sampled.max(1) / s):.3f}")
    # root leverage bound s_i ≤ τ_i^{1/2} and Chen–Derezinski's s_i ≥ d^{-1/2} w_i
    root = np.asarray(sens.root_leverage_bound(A, 1.0))
    assert np.sum(s > root * (1 + SOUND_RTOL)) == 0
    w = np.asarray(sens.lewis_weights(A, 1.0))
    assert np.sum(s < w / np.sqrt(10) * (1 - SOUND_RTOL)) == 0


def test_l1_sensitivities_by_brute_force_on_a_tiny_matrix(rng):
    # min ‖Ax‖₁ s.t. ⟨a_i,x⟩ = 1 is attained at a vertex: d − 1 other rows with ⟨a_j,x⟩ = 0.
    A = rng.standard_normal((7, 3))
    s = np.asarray(sens.lp_sensitivities(A, 1).upper)
    import itertools

    for i in range(7):
        best = np.inf
        for pair in itertools.combinations([j for j in range(7) if j != i], 2):
            M = A[[i, *pair]]
            x = np.linalg.solve(M, [1.0, 0.0, 0.0])
            best = min(best, np.abs(A @ x).sum())
        assert abs(s[i] - 1 / best) < 1e-9 * max(1.0, s[i])


@pytest.mark.parametrize("p", [1.5, 3.0, 5.0])
def test_sensitivity_bracket_is_sound_and_tight(rng, p):
    A = heavy_matrix(rng, n=100, d=8)
    lower, upper = (np.asarray(v) for v in sens.lp_sensitivities(A, p))
    assert np.all(lower <= upper) and np.all(lower > 0)
    assert np.max(upper / lower) < 1 + 1e-6  # IRLS + dual certificate close the gap (docs)
    X = rng.standard_normal((8, 2000))
    assert np.sum(ratios(A, X, p) > upper[:, None] * (1 + SOUND_RTOL)) == 0
    # Worst-case search (BFGS on the convex problem of each row, an independent dual
    # certificate of its optimum): no ratio found above the upper bound, no lower bound
    # above the certificate; the bracket is exact to 1e-6, so every row's coverage is too.
    found, dual = sensitivity_search(A, p)
    assert np.sum(found > upper * (1 + SOUND_RTOL)) == 0
    assert np.sum(lower > dual * (1 + SOUND_RTOL)) == 0
    coverage = found / upper
    print(f"p = {p}: coverage (found / upper) min {coverage.min():.9f} max "
          f"{coverage.max():.9f}; uniform directions alone: median "
          f"{np.median(ratios(A, X, p).max(1) / upper):.3f}")
    assert coverage.min() >= 1 - 1e-6
    # the optimum of one row by scipy lies inside the bracket
    i = 3
    cons = {"type": "eq", "fun": lambda x: A[i] @ x - 1.0}
    res = optimize.minimize(lambda x: np.sum(np.abs(A @ x) ** p), A[i] / (A[i] @ A[i]),
                            constraints=[cons], method="SLSQP", options={"ftol": 1e-14})
    assert 1 / res.fun <= upper[i] * (1 + 1e-6) and 1 / res.fun >= lower[i] * (1 - 1e-3)
    # closed-form Lewis bounds hold and are never tighter than the dual certificate
    lewis = np.asarray(sens.lewis_sensitivity_bound(A, p))
    assert np.all(upper <= lewis * (1 + SOUND_RTOL))
    if p < 2:
        root = np.asarray(sens.root_leverage_bound(A, p))
        assert np.sum(upper > root * (1 + SOUND_RTOL)) == 0
        assert upper.sum() <= 8 + 1e-8
    else:
        assert upper.sum() <= 8 ** (p / 2) + 1e-8


def test_p1_bracket_under_jit_contains_the_exact_value(rng):
    A = heavy_matrix(rng, n=60, d=5)
    exact = np.asarray(sens.lp_sensitivities(A, 1).upper)
    lower, upper = sens.lp_sensitivities(A, 1, method="bounds")
    assert np.all(np.asarray(lower) <= exact * (1 + SOUND_RTOL))
    assert np.all(np.asarray(upper) >= exact * (1 - SOUND_RTOL))


# -------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("p", [1.0, 3.0])
def test_sampling_is_unbiased(rng, p):
    A = heavy_matrix(rng, n=200, d=6)
    b = rng.standard_normal(200)
    scores = sens.leverage_scores(A) ** (p / 2)
    x = rng.standard_normal(6)
    keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), 4000)
    draw = jax.jit(jax.vmap(lambda k: sens.sensitivity_sample(k, A, 40.0, scores, p, b=b)))
    sample = draw(keys)
    values = np.sum(np.abs(np.asarray(sample.SA) @ x - np.asarray(sample.Sb)) ** p, axis=1)
    truth = np.sum(np.abs(A @ x - b) ** p)
    stderr = values.std() / np.sqrt(len(values))
    assert abs(values.mean() - truth) < 5 * stderr
    q = np.asarray(sample.probabilities[0])
    assert q.sum() <= 40 + 1e-9 and abs(np.asarray(sample.mask).sum(1).mean() - q.sum()) < 1.0
    kept = np.asarray(sample.mask)
    np.testing.assert_allclose(np.asarray(sample.weights)[kept],
                               np.broadcast_to(q ** (-1 / p), kept.shape)[kept], rtol=1e-12)
    SA, Sb, idx = sens.compact_sample(jax.tree.map(lambda v: v[0], sample))
    assert SA.shape == (kept[0].sum(), 6) and Sb.shape == (kept[0].sum(),)
    np.testing.assert_array_equal(idx, np.flatnonzero(kept[0]))


def test_sampling_traced_bad_values_give_nan_and_checked_raises(rng):
    A = rng.standard_normal((30, 3))
    key = jax.random.key(0)
    out = jax.jit(lambda m: sens.sensitivity_sample(key, A, m, np.ones(30), 2.0))(-1.0)
    assert np.all(np.isnan(np.asarray(out.weights)))
    with pytest.raises(checkify.JaxRuntimeError, match="m must be > 0"):
        sens.checked_sensitivity_sample(key, A, jnp.asarray(-1.0), np.ones(30), 2.0)
    with pytest.raises(checkify.JaxRuntimeError, match="scores"):
        sens.checked_sensitivity_sample(key, A, 5.0, -jnp.ones(30), 2.0)
    ok = sens.checked_sensitivity_sample(key, A, 5.0, jnp.ones(30), 2.0)
    assert np.all(np.isfinite(np.asarray(ok.weights)))


# ------------------------------------------------------------------------ distortion


def test_distortion_is_exact_at_p2_and_a_witnessed_lower_estimate(rng):
    A = heavy_matrix(rng, n=120, d=5)
    key = jax.random.key(1)
    sample = sens.sensitivity_sample(key, A, 30.0, sens.leverage_scores(A), 2.0)
    est = sens.subspace_embedding_distortion(sample.SA, A, 2.0, key=key, num_starts=4,
                                             num_steps=20)
    _, R = np.linalg.qr(A)
    sv = np.linalg.svd(np.asarray(sample.SA) @ np.linalg.inv(R), compute_uv=False)
    np.testing.assert_allclose([est.max_ratio, est.min_ratio], [sv.max(), sv.min()], rtol=1e-8)
    est = sens.subspace_embedding_distortion(sample.SA, A, 1.5, key=key, num_starts=4,
                                             num_steps=30)
    for x, ratio in ((est.x_max, est.max_ratio), (est.x_min, est.min_ratio)):
        witnessed = (np.sum(np.abs(np.asarray(sample.SA) @ np.asarray(x)) ** 1.5)
                     / np.sum(np.abs(A @ np.asarray(x)) ** 1.5)) ** (1 / 1.5)
        np.testing.assert_allclose(witnessed, ratio, rtol=1e-9)
    assert float(est.distortion) >= 0
    same = sens.subspace_embedding_distortion(A, A, 2.0, key=key, num_starts=4, num_steps=20)
    assert float(same.distortion) < 1e-12


# ---------------------------------------------------------------------- sample sizes


def test_sample_size_formulas():
    assert float(sens.general_sample_size(4.0, 10, eps=0.1)) == pytest.approx(4000.0)
    assert float(sens.sensitivity_sample_size(9.0, eps=0.5, p=1.0)) == pytest.approx(4 * 81)
    assert float(sens.sensitivity_sample_size(9.0, eps=0.5, p=3.0, constant=2.0)) == (
        pytest.approx(8 * 9 ** (4 / 3)))
    assert float(sens.root_leverage_sample_size(10, eps=0.1, p=1.5, log_factor=3.0)) == (
        pytest.approx(3000.0))
    assert float(sens.mixture_sample_size(10, 20.0, eps=1.0, p=4.0)) == pytest.approx(
        10**0.5 * 20.0)
    assert float(sens.chen_derezinski_sample_size(16, 5.0, eps=1.0, p=1.0)) == (
        pytest.approx(4 * 5.0))
    vec = jax.vmap(lambda e: sens.sensitivity_sample_size(5.0, eps=e, p=3.0))(
        jnp.array([0.1, 0.2]))
    assert vec.shape == (2,) and vec[0] > vec[1]
    traced = jax.jit(lambda e: sens.general_sample_size(3.0, 4, eps=e))(-0.1)
    assert np.isnan(traced)
    with pytest.raises(checkify.JaxRuntimeError, match="eps must be > 0"):
        sens.checked_general_sample_size(3.0, 4, eps=jnp.asarray(-0.1))
    with pytest.raises(ValueError, match="eps must be > 0"):
        sens.general_sample_size(3.0, 4, eps=0.0)
    with pytest.raises(ValueError, match="p must be < 2"):
        sens.root_leverage_sample_size(10, eps=0.1, p=2.5)
    with pytest.raises(ValueError, match="p must be > 2"):
        sens.mixture_sample_size(10, 20.0, eps=0.1, p=1.5)
    with pytest.raises(TypeError, match="needs the keyword argument p"):
        sens.sensitivity_sample_size(5.0, eps=0.1)


# ------------------------------------------------------------------------ bad input


def test_bad_input_raises_with_the_argument_named():
    A = np.ones((5, 2)) + np.eye(5, 2)
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"p must be > 0.*-1"):
        sens.lewis_weights(A, -1.0)
    with pytest.raises(ValueError, match="p must be > 0"):
        sens.lewis_weights(A, 0.0)
    with pytest.raises(ValueError, match="p must be >= 1"):
        sens.lp_sensitivities(A, 0.5)
    with pytest.raises(ValueError, match="p must be <= 2"):
        sens.root_leverage_bound(A, 3.0)
    with pytest.raises(TypeError, match="p must be a static Python number"):
        jax.jit(lambda p: sens.lewis_weights(A, p))(1.0)
    with pytest.raises(TypeError, match="A must have a floating dtype.*int"):
        sens.leverage_scores(np.ones((5, 2), dtype=np.int32))
    with pytest.raises(ValueError, match=r"A must have rank 2.*\(5,\)"):
        sens.leverage_scores(np.ones(5))
    with pytest.raises(ValueError, match="A must be finite"):
        sens.leverage_scores(np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match=r"m must be > 0.*0"):
        sens.sensitivity_sample(key, A, 0, np.ones(5), 1.0)
    with pytest.raises(ValueError, match=r"scores must have shape \(5,\)"):
        sens.sensitivity_sample(key, A, 3, np.ones(4), 1.0)
    with pytest.raises(ValueError, match="scores must be >= 0"):
        sens.sensitivity_sample(key, A, 3, -np.ones(5), 1.0)
    with pytest.raises(ValueError, match="scores must not all be zero"):
        sens.sensitivity_sample(key, A, 3, np.zeros(5), 1.0)
    with pytest.raises(ValueError, match=r"b must have shape \(5,\)"):
        sens.sensitivity_sample(key, A, 3, np.ones(5), 1.0, b=np.ones(3))
    with pytest.raises(ValueError, match="p must be > 0"):
        sens.sensitivity_sample(key, A, 3, np.ones(5), 0.0)
    with pytest.raises(ValueError, match="same number of columns"):
        sens.subspace_embedding_distortion(np.ones((3, 3)), A, 2.0, key=key)
    with pytest.raises(ValueError, match="method='lp' needs p == 1"):
        sens.lp_sensitivities(A, 1.5, method="lp")
    with pytest.raises(ValueError, match="damping"):
        sens.lewis_weights(A, 3.0, damping=1.5)


NAN_CALLS = {
    "leverage_scores": lambda A: sens.leverage_scores(A),
    "lewis_weights": lambda A: sens.lewis_weights(A, 3.0),
    "lewis_sensitivity_bound": lambda A: sens.lewis_sensitivity_bound(A, 1.5),
    "root_leverage_bound": lambda A: sens.root_leverage_bound(A, 1.0),
    "lp_sensitivities p=2": lambda A: sens.lp_sensitivities(A, 2.0).upper,
    "lp_sensitivities bounds": lambda A: sens.lp_sensitivities(A, 1.0, method="bounds"),
    "subspace_embedding_distortion": lambda A: sens.subspace_embedding_distortion(
        A, np.ones((12, 3)) + np.eye(12, 3), 2.0, key=jax.random.key(0), num_starts=1,
        num_steps=2),
}


@pytest.mark.parametrize("name", list(NAN_CALLS))
def test_non_finite_matrix_raises_eagerly_and_gives_nan_under_jit(rng, name):
    """NaN in A never gives a finite score or bound (before: the basis dropped every
    direction and the Lewis weights and sensitivity bracket came out as 0)."""
    A = rng.standard_normal((12, 3))
    A[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"A must be finite|SA must be finite"):
        NAN_CALLS[name](A)
    out = jax.jit(NAN_CALLS[name])(A)
    leaves = [np.asarray(v) for v in jax.tree.leaves(out)
              if jnp.issubdtype(jnp.asarray(v).dtype, jnp.floating)]
    if name == "subspace_embedding_distortion":  # x_max/x_min are points, not figures
        leaves = [np.asarray(v) for v in out[:3]]
    assert all(np.all(np.isnan(v)) for v in leaves), (name, leaves)
