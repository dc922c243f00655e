"""Jiang et al. generalization measures (jaxbounds.bounds.measures) against an independent
NumPy/float64 computation on a tiny Flax MLP and CNN; power iteration; path-norm; margins;
the flatness bisection; bad input."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds._linalg import power_iteration
from jaxbounds.bounds import measures as M
from jaxbounds.bounds.spectral import spectral_norm, spectral_norms


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(7)(x))
        x = nn.relu(nn.Dense(6)(x))
        return nn.Dense(4)(x)


class TinyCNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(3, (3, 3), padding="SAME")(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(4)(x)


# --- NumPy float64 reference ---------------------------------------------------------------


def np_params(variables):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)["params"]


def np_mlp(p, x):
    h = np.maximum(x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"], 0)
    h = np.maximum(h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"], 0)
    return h @ p["Dense_2"]["kernel"] + p["Dense_2"]["bias"]


def np_conv_same(x, k, b):
    kh, kw = k.shape[:2]
    xp = np.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
    out = np.zeros(x.shape[:3] + (k.shape[-1],))
    for a in range(kh):
        for c in range(kw):
            patch = xp[:, a:a + x.shape[1], c:c + x.shape[2], :]
            out += np.einsum("nhwi,io->nhwo", patch, k[a, c])
    return out + b


def np_cnn(p, x):
    h = np.maximum(np_conv_same(x, p["Conv_0"]["kernel"], p["Conv_0"]["bias"]), 0)
    h = h.reshape(h.shape[0], -1)
    return h @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


def np_matrix(kernel):
    if kernel.ndim == 2:
        return kernel.T
    return np.transpose(kernel, (3, 2, 0, 1)).reshape(kernel.shape[-1], -1)  # (out, in·kh·kw)


def np_kernels(p):
    return [leaf for path, leaf in jax.tree_util.tree_flatten_with_path(p)[0]
            if path[-1].key == "kernel"]


def np_reference(p, p0, forward, x, y, m, sigma, sigma_mag, eps=1e-3):
    """Every measure of Jiang et al. Appendix C in NumPy float64, given σ and σ'."""
    ws = [np_matrix(k) for k in np_kernels(p)]
    w0s = [np_matrix(k) for k in np_kernels(p0)]
    d = len(ws)
    spec2 = np.array([np.linalg.svd(w, compute_uv=False)[0] ** 2 for w in ws])
    fro2 = np.array([np.sum(w**2) for w in ws])
    dist_fro2 = np.array([np.sum((w - v) ** 2) for w, v in zip(ws, w0s)])
    dist_spec2 = np.array([np.linalg.svd(w - v, compute_uv=False)[0] ** 2
                           for w, v in zip(ws, w0s)])
    wvec = np.concatenate([k.ravel() for k in np_kernels(p)])
    w0vec = np.concatenate([k.ravel() for k in np_kernels(p0)])
    logits = forward(p, x)
    margins = []
    for row, label in zip(logits, y):
        others = np.delete(row, label)
        margins.append(row[label] - others.max())
    gamma = abs(np.sort(margins)[max(1, len(y) // 10) - 1])
    squared = jax.tree_util.tree_map(np.square, p)
    path = forward(squared, np.ones((1,) + x.shape[1:])).sum()
    lps, lpf = np.sum(np.log(spec2)), np.sum(np.log(fro2))
    lg2 = np.log(gamma**2)
    omega = wvec.size
    den = eps**2 + sigma_mag**2 * (wvec - w0vec) ** 2

    def mag(ref_sq):
        num = eps**2 + (sigma_mag**2 + 1) * ref_sq / omega
        return 0.25 * np.sum(np.log(num / den)) + np.log(m / sigma_mag) + 10

    return {
        "params": omega,
        "inverse_margin": 1 / gamma**2,
        "log_prod_of_spec": lps,
        "log_prod_of_spec_over_margin": lps - lg2,
        "log_spec_init_main": lps - lg2 + np.log(np.sum(dist_fro2 / spec2)),
        "log_spec_orig_main": lps - lg2 + np.log(np.sum(fro2 / spec2)),
        "fro_over_spec": np.sum(fro2 / spec2),
        "log_sum_of_spec_over_margin": np.log(d) + (lps - lg2) / d,
        "log_sum_of_spec": np.log(d) + lps / d,
        "log_prod_of_fro": lpf,
        "log_prod_of_fro_over_margin": lpf - lg2,
        "log_sum_of_fro_over_margin": np.log(d) + (lpf - lg2) / d,
        "log_sum_of_fro": np.log(d) + lpf / d,
        "fro_dist": np.sum(dist_fro2),
        "dist_spec_init": np.sum(dist_spec2),
        "param_norm": np.sum(fro2),
        "l2": np.linalg.norm(wvec),
        "l2_dist": np.linalg.norm(wvec - w0vec),
        "path_norm": path,
        "path_norm_over_margin": path / gamma**2,
        "pacbayes_init": np.sum((wvec - w0vec) ** 2) / (4 * sigma**2) + np.log(m / sigma) + 10,
        "pacbayes_orig": np.sum(wvec**2) / (4 * sigma**2) + np.log(m / sigma) + 10,
        "pacbayes_flatness": 1 / sigma**2,
        "pacbayes_mag_init": mag(np.sum((wvec - w0vec) ** 2)),
        "pacbayes_mag_orig": mag(np.sum(wvec**2)),
        "pacbayes_mag_flatness": 1 / sigma_mag**2,
    }


def make_case(model, x_shape, seed):
    # Shapes from flax (eval_shape: nothing compiled), values from NumPy: cheap to build.
    rng = np.random.default_rng(seed)
    x = rng.normal(size=x_shape)
    y = rng.integers(0, 4, x_shape[0]).astype(np.int32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *x_shape[1:])))
    init = jax.tree_util.tree_map(lambda s: jnp.asarray(0.5 * rng.normal(size=s.shape)), shapes)
    trained = jax.tree_util.tree_map(
        lambda a: a + jnp.asarray(0.3 * rng.normal(size=a.shape)), init)
    return trained, init, jnp.asarray(x), jnp.asarray(y), jax.random.PRNGKey(seed)


CASES = {
    "mlp": (TinyMLP(), (50, 5), np_mlp),
    "cnn": (TinyCNN(), (30, 5, 5, 2), np_cnn),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_measure_matches_numpy_float64(name, x64):
    model, x_shape, forward = CASES[name]
    trained, init, x, y, key = make_case(model, x_shape, seed=len(name))
    m = 1000
    result = M.generalization_measures(trained, init, model.apply, (x, y), key=key,
                                       num_train=m, power_iters=400, search_depth=6,
                                       mc_samples=4)
    measures, diag = result["measures"], result["diagnostics"]
    assert set(measures) == set(M.MEASURE_NAMES)
    sigma, sigma_mag = float(diag["pacbayes_sigma"]), float(diag["pacbayes_mag_sigma"])
    assert 0 < sigma < 2 and 0 < sigma_mag < 2
    ref = np_reference(np_params(trained), np_params(init), forward, np.asarray(x),
                       np.asarray(y), m, sigma, sigma_mag)
    for measure, expected in ref.items():
        got = float(measures[measure])
        assert measures[measure].dtype == jnp.float64, measure
        np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12, err_msg=measure)
        normalized = float(result["normalized"][measure])
        if measure.startswith("log_"):
            np.testing.assert_allclose(normalized, 0.5 * (expected - math.log(m)), rtol=1e-9,
                                       atol=1e-12, err_msg=measure)
        else:
            np.testing.assert_allclose(normalized, math.sqrt(expected / m), rtol=1e-9,
                                       err_msg=measure)
    ws = [np_matrix(k) for k in np_kernels(np_params(trained))]
    np.testing.assert_allclose(np.asarray(diag["spectral_norms"]),
                               [np.linalg.norm(w, 2) for w in ws], rtol=1e-10)
    np.testing.assert_allclose(float(diag["train_accuracy"]),
                               np.mean(forward(np_params(trained), np.asarray(x)).argmax(1)
                                       == np.asarray(y)))


def test_conv_kernel_reshape_is_pytorch_view():
    kernel = np.arange(3 * 3 * 2 * 4, dtype=np.float32).reshape(3, 3, 2, 4)  # kh kw in out
    matrix = np.asarray(M.kernel_to_matrix(kernel))
    assert matrix.shape == (4, 2 * 3 * 3)
    torch_layout = np.transpose(kernel, (3, 2, 0, 1))  # [out, in, kh, kw]
    np.testing.assert_array_equal(matrix, torch_layout.reshape(4, -1))
    np.testing.assert_array_equal(np.asarray(M.kernel_to_matrix(kernel[0, 0])), kernel[0, 0].T)


def test_kernel_leaves_skip_biases_and_non_kernels():
    params = {"params": {"Dense_0": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)},
                         "odd": {"kernel": jnp.ones(5)}, "scale": jnp.ones((2, 2))}}
    assert [name for name, _ in M.kernel_leaves(params)] == ["params/Dense_0/kernel"]


def test_power_iteration_matches_exact_spectral_norm():
    w = jax.random.normal(jax.random.PRNGKey(3), (3, 40, 9))  # a batch of 3 matrices
    exact = jnp.linalg.norm(w, 2, axis=(-2, -1))
    np.testing.assert_allclose(np.asarray(spectral_norm(w, num_iters=200)), np.asarray(exact),
                               rtol=1e-5)
    sigma, v = power_iteration(w, num_iters=200, key=jax.random.PRNGKey(1))
    np.testing.assert_allclose(np.asarray(sigma), np.asarray(exact), rtol=1e-5)
    wv = np.asarray(jnp.einsum("...pq,...q->...p", w, v))  # ‖Wv‖ = σ for the top right vector
    np.testing.assert_allclose(np.linalg.norm(wv, axis=-1), np.asarray(exact), rtol=1e-5)


def test_power_iteration_float64_and_padding_and_zero(x64):
    rng = np.random.default_rng(0)
    mats = [rng.normal(size=s) for s in [(9, 4), (4, 9), (9, 9), (1, 6)]]
    exact = [np.linalg.norm(a, 2) for a in mats]
    got = spectral_norms([jnp.asarray(a) for a in mats], num_iters=500, pad=True)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), exact, rtol=1e-10)
    grouped = spectral_norms([jnp.asarray(a) for a in mats[:2]], num_iters=500, pad=False)
    np.testing.assert_allclose(np.asarray(grouped), exact[:2], rtol=1e-10)
    assert float(spectral_norm(jnp.zeros((3, 4)))) == 0.0


def test_power_iteration_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        spectral_norm(jnp.ones(3))
    with pytest.raises(ValueError, match="num_iters"):
        spectral_norm(jnp.ones((3, 3)), num_iters=0)
    with pytest.raises(TypeError, match="floating"):
        spectral_norm(jnp.ones((3, 3), jnp.int32))
    with pytest.raises(ValueError, match="empty"):
        spectral_norms([])


def test_path_norm_of_linear_net_is_sum_of_squares():
    for use_bias in (False, True):
        model = nn.Dense(3, use_bias=use_bias)
        params, _, _, _, _ = make_case(model, (2, 5), seed=int(use_bias))
        expected = sum(float(jnp.sum(leaf**2)) for leaf in jax.tree_util.tree_leaves(params))
        got = float(M.path_norm(params, model.apply, (5,)))
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    kernel = params["params"]["kernel"]
    np.testing.assert_allclose(
        float(M.path_norm({"params": {"kernel": kernel}}, nn.Dense(3, use_bias=False).apply,
                          (5,))), float(jnp.sum(kernel**2)), rtol=1e-6)


def test_margins_and_percentile():
    logits = jnp.array([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 1.0], [0.0, -1.0, 4.0]])
    labels = jnp.array([0, 1, 2, 2])
    np.testing.assert_allclose(np.asarray(M.classification_margins(logits, labels)),
                               [2.0, -3.0, 0.0, 4.0])
    margins = jnp.arange(20.0)[::-1]  # 19..0
    assert float(M.percentile_margin(margins)) == 1.0  # k = 20 // 10 = 2 -> 2nd smallest
    assert M.margin_rank(20) == 2 and M.margin_rank(5) == 1 and M.margin_rank(100) == 10
    assert float(M.percentile_margin(margins, 50.0)) == 9.0  # k = 10
    assert float(M.percentile_margin(jnp.array([4.0, -2.0, 7.0]))) == -2.0  # k clamps to 1
    with pytest.raises(ValueError, match="percentile"):
        M.percentile_margin(margins, 0.0)


def test_inverse_margin_uses_absolute_tenth_percentile():
    # A linear "net" whose logits are the inputs themselves: margins are known in closed form.
    apply_fn = lambda p, x: x @ p["params"]["kernel"]  # noqa: E731
    params = {"params": {"kernel": jnp.eye(2)}}
    gaps = jnp.linspace(-1.0, 3.0, 30)  # margin_i = gaps_i for label 0
    x = jnp.stack([gaps, jnp.zeros(30)], axis=1)
    y = jnp.zeros(30, jnp.int32)
    result = M.generalization_measures(params, params, apply_fn, (x, y), flatness=False)
    gamma = float(jnp.sort(gaps)[2])  # k = 3
    np.testing.assert_allclose(float(result["diagnostics"]["margin"]), gamma, rtol=1e-6)
    np.testing.assert_allclose(float(result["measures"]["inverse_margin"]), 1 / gamma**2,
                               rtol=1e-5)
    assert not any(name.startswith("pacbayes") for name in result["measures"])


def _blobs(n=300, dim=50, seed=0):
    # Two Gaussian classes in 50-D: noise on the 100 weights moves each example's logit gap
    # nearly independently, so one draw's accuracy already has little variance.
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)) + np.where(y[:, None] == 1, 0.3, -0.3)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def _linear(p, x):
    return x @ p["kernel"] + p["bias"]


def _linear_params(scale=1.0, dim=50):
    column = 0.3 * jnp.ones(dim)
    return {"kernel": scale * jnp.stack([-column, column], axis=1), "bias": jnp.zeros(2)}


def test_flatness_bisection_hits_the_target_drop():
    x, y = _blobs()
    params = _linear_params()
    found = jax.jit(lambda p, k: M.pac_bayes_sigma(p, _linear, x, y, key=k))(
        params, jax.random.PRNGKey(0))
    assert bool(found["converged"])
    assert abs(float(found["drop"]) - 0.1) < 0.01
    assert 0 < float(found["sigma"]) < 2
    # Re-measure the drop at the returned σ with fresh, many more draws: 0.1 up to MC error.
    base = float(M._accuracy(_linear(params, x), y))
    acc = M.perturbed_accuracy(params, _linear, x, y, found["sigma"],
                               key=jax.random.PRNGKey(7), num_samples=200)
    assert abs(abs(float(acc) - base) - 0.1) < 0.02
    # The magnitude-aware search too (noise std √(σ²w² + ε²)).
    mag = M.pac_bayes_sigma(params, _linear, x, y, key=jax.random.PRNGKey(1),
                            magnitude_eps=1e-3)
    assert bool(mag["converged"]) and abs(float(mag["drop"]) - 0.1) < 0.01


def test_flatness_bisection_runs_to_the_bracket_end_for_a_flat_net():
    x, y = _blobs()
    params = _linear_params(scale=1e3)
    found = M.pac_bayes_sigma(params, _linear, x, y, key=jax.random.PRNGKey(0),
                              search_depth=15)
    assert not bool(found["converged"]) and int(found["iterations"]) == 15
    np.testing.assert_allclose(float(found["sigma"]), 2.0 - 2.0**-14, rtol=1e-6)
    assert float(found["drop"]) < 0.09


def test_measures_under_jit_give_nan_for_bad_traced_labels_and_checked_variant_raises():
    model = TinyMLP()
    params, _, x, _, _ = make_case(model, (20, 5), seed=5)  # float32 here (no x64)
    good = jnp.arange(20, dtype=jnp.int32) % 4
    fn = jax.jit(lambda p, yy: M.generalization_measures(
        p, p, model.apply, (x, yy), flatness=False)["measures"])
    traced = fn(params, good)
    assert all(bool(jnp.isfinite(traced[name])) for name in traced if "init" not in name)
    bad = good.at[3].set(9)
    assert all(bool(jnp.isnan(v)) for v in fn(params, bad).values())
    with pytest.raises(ValueError, match="labels in"):
        M.generalization_measures(params, params, model.apply, (x, bad), flatness=False)
    with pytest.raises(Exception, match="labels in"):
        M.checked_generalization_measures(params, params, model.apply, (x, bad),
                                          flatness=False)


def test_bad_input_is_rejected_with_named_arguments():
    model = TinyMLP()
    x = jnp.ones((10, 5))
    y = jnp.zeros(10, jnp.int32)
    p = model.init(jax.random.PRNGKey(0), x)
    key = jax.random.PRNGKey(0)
    call = lambda *a, **k: M.generalization_measures(*a, **k)  # noqa: E731
    with pytest.raises(ValueError, match="key is required"):
        call(p, p, model.apply, (x, y))
    with pytest.raises(ValueError, match="same tree structure"):
        call(p, {"params": {}}, model.apply, (x, y), key=key)
    bad_init = jax.tree_util.tree_map(lambda a: a, p)
    bad_init["params"]["Dense_0"]["kernel"] = jnp.ones((5, 8))
    with pytest.raises(ValueError, match="params_init leaf"):
        call(p, bad_init, model.apply, (x, y), key=key)
    with pytest.raises(ValueError, match="no weight matrix"):
        call({"b": jnp.ones(3)}, {"b": jnp.ones(3)}, lambda q, v: v, (x, y), key=key)
    with pytest.raises(ValueError, match=r"y must have shape \[10\]"):
        call(p, p, model.apply, (x, y[:4]), key=key)
    with pytest.raises(TypeError, match="integer labels"):
        call(p, p, model.apply, (x, y.astype(jnp.float32)), key=key)
    with pytest.raises(TypeError, match="pair"):
        call(p, p, model.apply, x, key=key)
    with pytest.raises(ValueError, match="num_train"):
        call(p, p, model.apply, (x, y), key=key, num_train=0)
    with pytest.raises(TypeError, match="num_train"):
        call(p, p, model.apply, (x, y), key=key, num_train=3.5)
    with pytest.raises(ValueError, match="power_iters"):
        call(p, p, model.apply, (x, y), key=key, power_iters=0)
    with pytest.raises(ValueError, match="target_drop"):
        call(p, p, model.apply, (x, y), key=key, target_drop=1.5)
    with pytest.raises(ValueError, match="sigma_bracket"):
        call(p, p, model.apply, (x, y), key=key, sigma_bracket=(2.0, 1.0))
    with pytest.raises(ValueError, match="margin_percentile"):
        call(p, p, model.apply, (x, y), key=key, margin_percentile=0)
    with pytest.raises(ValueError, match="magnitude_eps"):
        call(p, p, model.apply, (x, y), key=key, magnitude_eps=-1.0)
    with pytest.raises(ValueError, match="logits of shape"):
        call(p, p, lambda q, v: model.apply(q, v)[:, :1], (x, y), key=key)
    with pytest.raises(TypeError, match="callable"):
        call(p, p, "apply", (x, y), key=key)
