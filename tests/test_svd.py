"""Concatenated-matrix SVD bounds: soundness by simulation (zero violations), the ordering
Weyl ≥ residual, exactness of the incremental estimate, the clustering's ε guarantee and
the bad-input policy. Everything runs in float64."""

import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.bounds import svd

DRAWS = 1000


@pytest.fixture
def rng(request):
    """A fixed seed per test (derived from its name), so every run draws the same inputs."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def reference_error(blocks, r):
    s = np.linalg.svd(np.concatenate(blocks, axis=1), compute_uv=False)
    return np.sqrt(np.sum(s[r:] ** 2) / np.sum(s**2))


def random_blocks(rng, draws, n, widths):
    """Gaussian blocks, each scaled by its own log-normal factor (so the norm order varies)."""
    scales = np.exp(rng.standard_normal((draws, len(widths))))
    return [rng.standard_normal((draws, n, c)) * scales[:, k, None, None]
            for k, c in enumerate(widths)]


def shared_subspace_blocks(rng, draws, n, widths, dim):
    """Blocks U·B_k + σ·noise sharing one dim-dimensional subspace U; σ from 0 (exactly low
    rank, true error ~1e-16) to 0.3 on a log scale."""
    u = np.linalg.qr(rng.standard_normal((draws, n, dim)))[0]
    sigma = 10.0 ** rng.uniform(-9, -0.5, draws)
    sigma[: draws // 10] = 0.0
    scales = np.exp(rng.standard_normal((draws, len(widths))))
    return [(u @ rng.standard_normal((draws, dim, c))
             + sigma[:, None, None] * rng.standard_normal((draws, n, c)))
            * scales[:, k, None, None] for k, c in enumerate(widths)]


def all_figures(r):
    def figures(*blocks, basis):
        blocks = list(blocks)
        return jnp.stack([svd.concat_svd_error(blocks, r), svd.weyl_bound(blocks, r),
                          svd.residual_bound(blocks, r), svd.certified_bound(blocks, r),
                          svd.projection_bound(blocks, basis),
                          svd.incremental_estimate(blocks, r).error])

    return jax.jit(jax.vmap(figures))


@pytest.mark.parametrize("kind, n, widths, r", [
    ("random", 6, (2, 3, 1, 2), 2),
    ("shared subspace", 8, (3, 2, 3, 1, 2), 3),
])
def test_bounds_are_sound_and_ordered(rng, kind, n, widths, r):
    with jax.enable_x64(True):
        if kind == "random":
            blocks = random_blocks(rng, DRAWS, n, widths)
        else:
            blocks = shared_subspace_blocks(rng, DRAWS, n, widths, dim=2)
        basis = rng.standard_normal((DRAWS, n, r))  # any basis: re-orthonormalised inside
        out = np.asarray(all_figures(r)(*blocks, basis=basis))
        assert out.dtype == np.float64
        true, weyl, residual, certified, projection, estimate = out.T
        assert np.all(np.isfinite(out))
        reference = np.array([reference_error([b[i] for b in blocks], r)
                              for i in range(0, DRAWS, 50)])
        np.testing.assert_allclose(true[::50], reference, rtol=1e-10, atol=1e-12)
        # Soundness: exactly zero violations, no tolerance in the comparison.
        assert np.sum(weyl < true) == 0
        assert np.sum(residual < true) == 0
        assert np.sum(certified < true) == 0
        assert np.sum(projection < true) == 0
        # The ordering Weyl ≥ residual holds exactly (L_residual ≥ L_Weyl by construction).
        assert np.sum(weyl < residual) == 0
        assert np.all((out[:, 1:5] <= 1.0) & (out[:, 1:5] > 0.0))
        # the docs: no bound drops below √τ (the outward tolerance; ≈ 1e-6 in float64)
        tau = svd.outward_tolerance(np.float64, n, sum(widths))
        print(f"{kind}: smallest bound / √τ = {out[:, 1:5].min() / np.sqrt(tau):.6f}")
        assert out[:, 1:5].min() >= np.sqrt(tau) * (1 - 1e-9)
        # The certified bound is close to the truth where the estimate is good.
        gap = certified - true
        print(f"{kind}: mean weyl/true {np.mean(weyl / np.maximum(true, 1e-12)):.3g}, "
              f"residual/true {np.mean(residual / np.maximum(true, 1e-12)):.3g}, "
              f"median certified − true {np.median(gap):.2g}, "
              f"estimate < true in {np.sum(estimate < true)} draws")
        assert np.median(gap) < 1e-3


def test_shared_subspace_bounds_are_loose_but_the_certified_one_is_tight(rng):
    with jax.enable_x64(True):
        n, dim, r = 12, 3, 4
        u = np.linalg.qr(rng.standard_normal((n, dim)))[0]
        blocks = [u @ rng.standard_normal((dim, 4)) + 1e-3 * rng.standard_normal((n, 4))
                  for _ in range(6)]
        true = float(svd.concat_svd_error(blocks, r))
        weyl, residual = float(svd.weyl_bound(blocks, r)), float(svd.residual_bound(blocks, r))
        certified = float(svd.certified_bound(blocks, r))
        assert true <= certified <= 1.01 * true + 1e-6
        assert residual > 20 * true and weyl >= residual


def test_exact_error_matches_numpy_and_edge_cases(rng):
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((5, c)) for c in (2, 4, 1)]
        for r in (1, 2, 4):
            np.testing.assert_allclose(svd.concat_svd_error(blocks, r),
                                       reference_error(blocks, r), rtol=1e-12)
        assert float(svd.concat_svd_error(blocks, 5)) == 0.0  # r ≥ min(n, C)
        assert float(svd.concat_svd_error([np.zeros((3, 2))], 1)) == 0.0
        assert float(svd.weyl_bound([np.zeros((3, 2))], 1)) == 0.0
        # A 3-D stack is the same as the list of its blocks.
        stack = rng.standard_normal((3, 5, 2))
        assert float(svd.residual_bound(stack, 2)) == float(svd.residual_bound(list(stack), 2))


def test_weyl_bound_matches_the_head_formula(rng):
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((6, c)) * s for c, s in ((2, 1.0), (3, 5.0), (1, 3.0),
                                                              (2, 0.1))]
        total = sum(np.sum(b**2) for b in blocks)
        # norm order: block 1 (3 cols), 2 (1 col), 0 (2 cols), 3; r = 4 → head = {1, 2}.
        head = np.sum(blocks[1] ** 2) + np.sum(blocks[2] ** 2)
        expected = np.sqrt((total - head) / total)
        bound = float(svd.weyl_bound(blocks, 4, outward_rtol=0.0))
        np.testing.assert_allclose(bound, expected, rtol=1e-12)
        assert float(svd.weyl_bound(blocks, 4)) >= bound
        # r = 2: the largest block alone has 3 > 2 columns, the head is empty → 1.
        assert float(svd.weyl_bound(blocks, 2)) == 1.0


def test_incremental_estimate_is_exact_when_its_rank_covers_the_matrix(rng):
    with jax.enable_x64(True):
        n, rank = 10, 4
        u = rng.standard_normal((n, rank))
        blocks = [u @ rng.standard_normal((rank, c)) for c in (3, 5, 2, 4)]
        for r, p in ((2, 2), (1, 3), (3, 1)):
            est = svd.incremental_estimate(blocks, r, oversampling=p)
            np.testing.assert_allclose(est.error, reference_error(blocks, r), rtol=1e-9,
                                       atol=1e-9)
            assert est.basis.shape == (n, r) and est.eigenvalues.shape == (r + p,)
        est = svd.incremental_estimate(blocks, rank, oversampling=0)
        assert float(est.error) < 1e-7
        # Its basis certifies it: the projection bound equals the estimate up to rounding.
        bound = float(svd.projection_bound(blocks, est.basis))
        assert bound >= float(svd.concat_svd_error(blocks, rank)) and bound < 1e-5


def test_projection_bound_with_any_basis_and_rank_deficient_ones(rng):
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((7, 3)) for _ in range(3)]
        for r in (1, 3, 6):
            basis = rng.standard_normal((7, r))
            assert float(svd.projection_bound(blocks, basis)) >= float(
                svd.concat_svd_error(blocks, r))
        # The top singular vectors give the exact error (+ the outward tolerance).
        u = np.linalg.svd(np.concatenate(blocks, 1))[0][:, :3]
        tight = float(svd.projection_bound(blocks, u, outward_rtol=0.0))
        np.testing.assert_allclose(tight, reference_error(blocks, 3), rtol=1e-10)
        zero = float(svd.projection_bound(blocks, np.zeros((7, 2))))  # QR completes it
        assert zero >= float(svd.concat_svd_error(blocks, 2))


def group_blocks(rng, n=16, groups=3, per_group=3, width=4, dim=2, noise=0.01):
    bases = [np.linalg.qr(rng.standard_normal((n, dim)))[0] for _ in range(groups)]
    blocks = [bases[g] @ rng.standard_normal((dim, width)) * np.exp(rng.normal())
              for g in range(groups) for _ in range(per_group)]
    blocks = [b + noise * np.linalg.norm(b) / np.sqrt(b.size) * rng.standard_normal(b.shape)
              for b in blocks]
    return [blocks[i] for i in rng.permutation(len(blocks))]


def check_partition(clustering, count):
    members = [i for c in clustering.clusters for i in c] + list(clustering.singletons)
    assert sorted(members) == list(range(count))
    assert all(len(c) >= 2 for c in clustering.clusters)


@pytest.mark.parametrize("method", svd.METHODS)
def test_clustering_respects_eps_when_checked_by_a_full_svd(rng, method):
    with jax.enable_x64(True):
        blocks = group_blocks(rng)
        r, eps = 4, 0.1
        result = svd.greedy_clustering(blocks, r, eps, method=method)
        check_partition(result, len(blocks))
        assert all(f <= eps for f in result.figures)
        true = [float(svd.concat_svd_error([blocks[i] for i in c], r))
                for c in result.clusters]
        ratio = svd.compression_ratio(blocks, result.clusters, r)
        print(f"{method}: clusters {result.clusters}, true errors {np.round(true, 4)}, "
              f"ratio {ratio:.3f}")
        if method == "approximate":  # an estimate: violations are measured, not forbidden
            print(f"approximate: {sum(t > eps for t in true)} violations")
        else:
            assert all(t <= f for t, f in zip(true, result.figures))
            assert all(t <= eps for t in true)
        if method == "certified":  # the shared subspaces are found
            assert ratio > 1.5


def test_clustering_patience_and_compression_ratio(rng):
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((8, 4)) for _ in range(6)]  # nothing compresses
        result = svd.greedy_clustering(blocks, 2, 0.05, method="maxnorm", patience=2)
        assert result.clusters == () and len(result.singletons) == 6
        assert result.evaluations == 5 + 4  # two seeds tried, then the rest given up
        assert svd.compression_ratio(blocks, (), 2) == 1.0
    shapes = [np.zeros((10, c)) for c in (4, 6, 5)]
    # cluster {0, 1}: c = 10, r = 2 → 10·2 + 2·10 = 40; singleton 2: 50; original 150.
    assert svd.compression_ratio(shapes, [(0, 1)], 2) == pytest.approx(150 / 90)
    # r̃ = min(r, n, c): a 10 × 10 cluster at r = 20 costs 10·10 + 10·10.
    assert svd.compression_ratio(shapes, [(0, 1)], 20) == pytest.approx(150 / 250)
    with pytest.raises(ValueError, match="distinct"):
        svd.compression_ratio(shapes, [(0, 0)], 2)


def test_bad_input_raises_naming_the_argument():
    good = [np.ones((4, 2)), np.ones((4, 3))]
    for fn in (svd.concat_svd_error, svd.weyl_bound, svd.residual_bound,
               svd.incremental_estimate, svd.certified_bound):
        with pytest.raises(ValueError, match=r"r must be >= 1, got 0"):
            fn(good, 0)
        with pytest.raises(ValueError, match=r"r must be >= 1"):
            fn(good, -3)
        with pytest.raises(TypeError, match="r must be an int"):
            fn(good, 2.5)
        with pytest.raises(ValueError, match=r"blocks\[1\] must have 4 rows"):
            fn([np.ones((4, 2)), np.ones((5, 2))], 1)
        with pytest.raises(ValueError, match="non-empty"):
            fn([], 1)
        with pytest.raises(ValueError, match=r"blocks\[0\] must be a 2-D array"):
            fn([np.ones(4)], 1)
        with pytest.raises(TypeError, match="real"):
            fn([np.ones((4, 2), complex)], 1)
    for eps in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="eps must be in"):
            svd.greedy_clustering(good, 1, eps)
    with pytest.raises(ValueError, match="method must be one of"):
        svd.greedy_clustering(good, 1, 0.1, method="kmeans")
    with pytest.raises(ValueError, match="patience must be >= 1"):
        svd.greedy_clustering(good, 1, 0.1, patience=0)
    with pytest.raises(ValueError, match="basis must be a 2-D array with 4 rows"):
        svd.projection_bound(good, np.ones((5, 2)))
    with pytest.raises(ValueError, match="outward_rtol must be"):
        svd.weyl_bound(good, 1, outward_rtol=-1.0)
    with pytest.raises(ValueError, match="oversampling must be >= 0"):
        svd.incremental_estimate(good, 1, oversampling=-1)


def test_float32_inputs_stay_float32_without_x64(rng):
    blocks = [rng.standard_normal((5, 2)).astype(np.float32) for _ in range(3)]
    with jax.enable_x64(False):
        bound = svd.residual_bound(blocks, 2)
        assert bound.dtype == jnp.float32
        assert float(bound) >= float(svd.concat_svd_error(blocks, 2))


# ---------------------------------------------------------------- NaN and infinity

NAN_FIGURES = {
    "concat_svd_error": lambda blocks: svd.concat_svd_error(blocks, 2),
    "weyl_bound": lambda blocks: svd.weyl_bound(blocks, 2),
    "residual_bound": lambda blocks: svd.residual_bound(blocks, 2),
    "certified_bound": lambda blocks: svd.certified_bound(blocks, 2),
    "incremental_estimate": lambda blocks: svd.incremental_estimate(blocks, 2).error,
    "projection_bound": lambda blocks: svd.projection_bound(blocks, np.eye(5)[:, :2]),
}


@pytest.mark.parametrize("name, bad", [(name, np.nan) for name in NAN_FIGURES]
                         + [("concat_svd_error", np.inf), ("weyl_bound", np.inf)])
def test_non_finite_blocks_raise_eagerly_and_give_nan_under_jit(rng, name, bad):
    """Never the optimistic 0 (or any finite value) for NaN or infinity in the blocks."""
    figure = NAN_FIGURES[name]
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((5, c)) for c in (2, 3, 1)]
        blocks[1][2, 0] = bad
        with pytest.raises(ValueError, match=r"blocks\[1\] must be finite"):
            figure(blocks)
        traced = jax.jit(lambda *b: figure(list(b)))(*blocks)
        assert np.isnan(float(traced)), (name, float(traced))
        if name != "weyl_bound":
            return
        # under vmap only the bad draw is NaN
        good = [rng.standard_normal((5, c)) for c in (2, 3, 1)]
        batch = [np.stack([g, b]) for g, b in zip(good, blocks)]
        out = np.asarray(jax.vmap(lambda *b: figure(list(b)))(*batch))
        assert np.isfinite(out[0]) and np.isnan(out[1]), out


def test_non_finite_basis_raises_eagerly_and_gives_nan_under_jit(rng):
    with jax.enable_x64(True):
        blocks = [rng.standard_normal((5, 2)) for _ in range(3)]
        basis = rng.standard_normal((5, 2))
        basis[3, 1] = np.nan
        with pytest.raises(ValueError, match="basis must be finite"):
            svd.projection_bound(blocks, basis)
        assert np.isnan(float(jax.jit(lambda q: svd.projection_bound(blocks, q))(basis)))


# ------------------------------------------------------------ worst-case search

SEARCH_BOUNDS = ("weyl_bound", "residual_bound", "certified_bound")


def powell_coverage(figure, unpack, r, starts):
    """Powell's method maximising true/bound from each start: (best true/bound per start,
    violations, evaluations) over every instance evaluated."""
    from scipy import optimize

    state = {"violations": 0, "evaluations": 0, "best": 0.0}

    def objective(theta):
        blocks = unpack(theta)
        true = reference_error(blocks, r)
        bound = float(figure(*blocks))
        state["evaluations"] += 1
        state["violations"] += bound < true
        state["best"] = max(state["best"], true / bound)
        return -true / bound

    coverage = []
    for start in starts:
        state["best"] = 0.0
        optimize.minimize(objective, start, method="Powell",
                          options={"maxfev": 300, "xtol": 1e-6})
        coverage.append(state["best"])
    return coverage, state["violations"], state["evaluations"]


def test_worst_case_search_over_the_blocks(rng):
    """Powell's method over the entries of small instances maximises true/bound for each
    bound (a uniform draw rarely comes near the instances where a bound is tight): no
    evaluated instance may violate, and the coverage (best true/bound) is reported. The
    bounds are exact on orthogonal single-column blocks (the last start), so there the
    coverage must reach 1 − 1e-6."""
    n, widths, r = 4, (1, 1, 2, 1), 2
    shapes = [(n, c) for c in widths]
    sizes = [n * c for c in widths]

    def unpack(theta):
        parts = np.split(theta, np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    with jax.enable_x64(True):
        q = np.linalg.qr(rng.standard_normal((n, n)))[0]
        exact_start = np.concatenate([(q[:, [0]] * 3.0).ravel(), (q[:, [1]] * 2.0).ravel(),
                                      np.zeros(n * 2), (q[:, [2]] * 1.0).ravel()])
        starts = [rng.standard_normal(sum(sizes)) for _ in range(3)] + [exact_start]
        for name in SEARCH_BOUNDS:
            figure = jax.jit(lambda *b, name=name: getattr(svd, name)(list(b), r))
            coverage, violations, evaluations = powell_coverage(figure, unpack, r, starts)
            print(f"{name}: {evaluations} instances, {violations} violations, coverage "
                  f"(best true/bound) {max(coverage):.9f}; from each start "
                  f"{', '.join(f'{c:.4f}' for c in coverage)}")
            assert violations == 0, name
            assert max(coverage) >= 1 - 1e-6, name
