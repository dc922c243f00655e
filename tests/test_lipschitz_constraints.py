"""Spectral constraints (jaxbounds.lipschitz.constraints) against SVD references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds import _linalg
from jaxbounds.lipschitz import constraints as C

SHAPES = [(64, 64), (96, 40), (40, 96), (3, 48, 32)]


def known_spectrum(seed, shape, sigmas):
    """A float32 matrix [..., m, n] with singular values ``sigmas`` (shuffled), and them sorted."""
    rng = np.random.default_rng(seed)
    *batch, m, n = shape
    r = min(m, n)
    out, svals = [], []
    for _ in range(int(np.prod(batch)) if batch else 1):
        u, _ = np.linalg.qr(rng.standard_normal((m, r)))
        v, _ = np.linalg.qr(rng.standard_normal((n, r)))
        s = rng.permutation(np.asarray(sigmas, np.float64))
        out.append((u * s) @ v.T)
        svals.append(np.sort(s)[::-1])
    w = np.stack(out).reshape(*batch, m, n) if batch else out[0]
    s = np.stack(svals).reshape(*batch, r) if batch else svals[0]
    return jnp.asarray(w, jnp.float32), s


def svals(w):
    return np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)


def spectrum(r, w_max, kind):
    if kind == "linear":
        return np.linspace(0.05, 4.0, r) * w_max
    return np.geomspace(0.05, 4.0, r) * w_max


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["linear", "geometric"])
def test_hard_cap_meets_tolerance(shape, kind):
    w_max = 1.7
    r = min(shape[-2:])
    w, s = known_spectrum(r + len(shape), shape, spectrum(r, w_max, kind))
    out = C.spectral_hard_cap(w, w_max)
    got = svals(out)
    assert np.all(np.isfinite(got))
    assert got.max() <= w_max * (1 + 1e-3)
    np.testing.assert_array_less(np.abs(got - np.minimum(s, w_max)), 1e-2 * w_max)
    # and close to the exact SVD clip as a matrix
    ref = np.asarray(C.svd_clip(w, w_max))
    assert np.abs(np.asarray(out) - ref).max() <= 1e-3 * w_max


def test_hard_cap_rms_norm_and_jit():
    w_max = 1.0
    shape = (96, 40)  # torch layout: fan_out 96, fan_in 40: σ bound = w_max·√(96/40)
    w, s = known_spectrum(3, shape, spectrum(40, 2.0, "linear"))
    out = jax.jit(lambda w: C.spectral_hard_cap(w, w_max, norm="rms", layout="torch"))(w)
    rms = np.sqrt(40 / 96) * svals(out).max()
    assert w_max * (1 - 1e-3) <= rms <= w_max * (1 + 1e-3)
    np.testing.assert_allclose(
        np.asarray(out), np.asarray(C.svd_clip(w, w_max, norm="rms", layout="torch")),
        atol=1e-3)
    # the same weights as a Flax kernel [in=96, out=40]: σ bound = w_max·√(40/96)
    flax_out = C.spectral_hard_cap(w, w_max, norm="rms")
    rms = np.sqrt(96 / 40) * svals(flax_out).max()
    assert w_max * (1 - 1e-3) <= rms <= w_max * (1 + 1e-3)


def test_hard_cap_paper_coefficients_overshoot():
    w_max = 1.0
    w, _ = known_spectrum(5, (64, 64), np.linspace(0.05, 2.0, 64))
    top = svals(C.spectral_hard_cap(w, w_max, paper_coefficients=True)).max()
    assert 1.0 < top < 1.02  # the paper's fixed polynomial overshoots by about 1%
    ours = svals(C.spectral_hard_cap(w, w_max)).max()
    assert ours <= 1 + 1e-3


def test_msign_schedule_converges_on_scalars():
    x = np.geomspace(1e-3, 1.0, 20001)
    for a, b, c in C._msign_schedule(7):
        x = a * x + b * x**3 + c * x**5
    assert np.abs(x - 1).max() < 1e-8
    # more steps only use the attracting fixed-point polynomial
    assert C._msign_schedule(9)[-1] == (1.875, -1.25, 0.375)


def test_msign_matches_polar_factor():
    w, _ = known_spectrum(7, (48, 32), np.geomspace(0.01, 3.0, 32))
    q = C.msign(w)
    u, _, vt = np.linalg.svd(np.asarray(w, np.float64), full_matrices=False)
    np.testing.assert_allclose(np.asarray(q), u @ vt, atol=1e-4)
    np.testing.assert_allclose(np.asarray(C.msign(w.T)), (u @ vt).T, atol=1e-4)


@pytest.mark.parametrize("shape", SHAPES)
def test_spectral_normalize(shape):
    w_max = 1.3
    r = min(shape[-2:])
    sig = spectrum(r, w_max, "linear")
    w, s = known_spectrum(11, shape, sig)
    out = C.spectral_normalize(w, w_max, key=jax.random.key(0), num_iters=64)
    assert svals(out).max() <= w_max * (1 + 1e-3)
    ref = np.asarray(C.spectral_normalize_svd(w, w_max))
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-3 * w_max)
    # below the bound: unchanged
    small, _ = known_spectrum(12, shape, sig / 5)
    np.testing.assert_allclose(np.asarray(C.spectral_normalize(
        small, w_max, key=jax.random.key(1), num_iters=64)), np.asarray(small), atol=1e-6)


def test_spectral_hammer_keeps_other_singular_values():
    w_max = 1.0
    sig = np.concatenate([[4.0], np.linspace(0.05, 3.0, 47)])  # a gap at the top
    w, s = known_spectrum(13, (48, 48), sig)
    out = C.spectral_hammer(w, w_max, key=jax.random.key(2), num_iters=100)
    got = svals(out)
    expected = np.sort(np.concatenate([[w_max], s[1:]]))[::-1]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out), np.asarray(C.spectral_hammer_svd(w, w_max)),
                               atol=1e-4)


def test_spectral_weight_decay_shrinks_only_top():
    sig = np.concatenate([[4.0], np.linspace(0.05, 3.0, 31)])
    w, s = known_spectrum(14, (40, 32), sig)
    out, u = C.spectral_weight_decay(w, 0.1, key=jax.random.key(3), num_iters=100,
                                     return_vector=True)
    assert u.shape == (40,)
    got = svals(out)
    expected = np.sort(np.concatenate([[0.9 * s[0]], s[1:]]))[::-1]
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(np.asarray(out),
                               np.asarray(C.spectral_weight_decay_svd(w, 0.1)), atol=1e-4)


def test_power_iteration_converges_and_warm_starts():
    w = jax.random.normal(jax.random.key(4), (3, 50, 30))
    exact = svals(w)[..., 0]
    for key in (jax.random.key(5), None):  # Gaussian and deterministic starts
        sigma, v = _linalg.power_iteration(w, key=key, num_iters=300)
        np.testing.assert_allclose(np.asarray(sigma), exact, rtol=1e-4)
        assert np.all(np.asarray(sigma) <= exact * (1 + 1e-5))  # approaches from below
    assert v.shape == (3, 30)
    _, _, vt = np.linalg.svd(np.asarray(w, np.float64))
    np.testing.assert_allclose(np.abs(np.einsum("bi,bi->b", v, vt[:, 0])), 1.0, atol=1e-3)
    # warm start from the converged vector: one iteration is already exact
    sigma1, _ = _linalg.power_iteration(w, num_iters=1, v0=v)
    np.testing.assert_allclose(np.asarray(sigma1), exact, rtol=1e-5)
    assert float(_linalg.power_iteration(jnp.zeros((3, 4)), num_iters=2)[0]) == 0.0


def test_spectral_norm_upper_and_rms_operator_norm():
    w = jax.random.normal(jax.random.key(8), (2, 30, 12))
    exact = svals(w)[..., 0]
    upper = _linalg.spectral_norm_upper(w)
    assert upper.dtype == np.float64
    assert np.all(upper >= exact) and np.all(upper <= exact * (1 + 2e-10))
    with jax.enable_x64(True):  # traced float64 gives the same bound
        traced = jax.jit(_linalg.spectral_norm_upper)(jnp.asarray(w, jnp.float64))
        np.testing.assert_allclose(np.asarray(traced), upper, rtol=1e-14)
    with pytest.raises(ValueError, match="float64"):
        jax.jit(_linalg.spectral_norm_upper)(w)
    # [in=30, out=12] in the Flax layout; the same array read as torch [out=30, in=12]
    np.testing.assert_allclose(_linalg.rms_operator_norm(w), np.sqrt(30 / 12) * exact,
                               rtol=1e-9)
    np.testing.assert_allclose(_linalg.rms_operator_norm(w, layout="torch"),
                               np.sqrt(12 / 30) * exact, rtol=1e-9)
    np.testing.assert_allclose(_linalg.rms_operator_norm(jnp.swapaxes(w, -1, -2),
                                                         layout="torch"),
                               _linalg.rms_operator_norm(w), rtol=1e-12)
    with pytest.raises(ValueError, match="layout"):
        _linalg.rms_operator_norm(w, layout="out_in")


@pytest.mark.parametrize("norm", ["spectral", "rms"])
def test_soft_cap_matches_svd(norm):
    w = jax.random.normal(jax.random.key(6), (2, 40, 24)) * 0.3  # torch: fan_out 40, fan_in 24
    for alpha in (0.0, 0.05, 0.2):
        np.testing.assert_allclose(
            np.asarray(C.spectral_soft_cap(w, alpha, norm=norm, layout="torch")),
            np.asarray(C.spectral_soft_cap_svd(w, alpha, norm=norm, layout="torch")),
            atol=1e-4)
    # numpy reference in the Flax layout [in, out]: t = α·(fan_in/fan_out)·σ²
    wf = np.asarray(jnp.swapaxes(w, -1, -2), np.float64)  # [2, 24, 40], fan_in 24
    u, s, vt = np.linalg.svd(wf, full_matrices=False)
    t = 0.2 * (1.0 if norm == "spectral" else 24 / 40) * s**2
    ref = (u * (s * (1 - 3 * t**2 + 3 * t**3 - t**4))[..., None, :]) @ vt
    np.testing.assert_allclose(np.asarray(C.spectral_soft_cap(wf.astype(np.float32), 0.2,
                                                              norm=norm)), ref, atol=1e-4)


def test_soft_cap_alpha_root():
    with jax.enable_x64(True):
        for w_max, wd, lr, mun in [(1.0, 0.0, 0.1, 1.2), (6.0, 0.001, 0.1, 1.0),
                                   (2.0, 0.1, 0.2, 1.21)]:
            k = w_max * (1 - wd) + lr * mun
            alpha = float(C.soft_cap_alpha(w_max, wd, lr, mun))
            t = alpha * k * k
            assert abs(k * (1 - 3 * t**2 + 3 * t**3 - t**4) - w_max) < 1e-9 * w_max
            # the reference's quartic, smallest non-negative real root
            roots = np.roots([-(k**9), 3 * k**7, -3 * k**5, 0.0, k - w_max])
            real = roots[(np.abs(roots.imag) < 1e-9) & (roots.real >= 0)].real
            np.testing.assert_allclose(alpha, real.min(), rtol=1e-8)
    assert float(C.soft_cap_alpha(1.0, 0.5, 0.1, 1.0)) == 0.0  # k < w_max: nothing to cap
    jitted = jax.jit(lambda lr: C.soft_cap_alpha(1.0, 0.0, lr, 1.2))
    np.testing.assert_allclose(float(jitted(0.1)), float(C.soft_cap_alpha(1.0, 0.0, 0.1, 1.2)))


def test_soft_cap_keeps_singular_values_below_w_max():
    w_max, lr, mun = 1.0, 0.1, 1.2
    k = w_max + lr * mun
    w, _ = known_spectrum(15, (48, 48), np.linspace(0.05, k, 48))
    alpha = C.soft_cap_alpha(w_max, 0.0, lr, mun)
    got = svals(C.spectral_soft_cap(w, alpha))
    assert got.max() <= w_max * (1 + 1e-5)


def test_batched_equals_per_matrix_and_vmap():
    w, _ = known_spectrum(16, (3, 32, 24), np.linspace(0.05, 4.0, 24))
    batched = C.spectral_hard_cap(w, 1.0)
    single = jnp.stack([C.spectral_hard_cap(w[i], 1.0) for i in range(3)])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(single), atol=1e-5)
    vm = jax.vmap(lambda x: C.spectral_hard_cap(x, 1.0))(w)
    np.testing.assert_allclose(np.asarray(vm), np.asarray(single), atol=1e-5)


def test_float64_and_bfloat16_dtypes():
    with jax.enable_x64(True):
        w, s = known_spectrum(17, (32, 32), np.linspace(0.05, 4.0, 32))
        w64 = w.astype(jnp.float64)
        out = C.spectral_hard_cap(w64, 1.0)
        assert out.dtype == jnp.float64
        assert svals(out).max() <= 1 + 1e-6
    out16 = C.spectral_hard_cap(w.astype(jnp.bfloat16), 1.0)
    assert out16.dtype == jnp.bfloat16


FAST = {
    "spectral_normalize": lambda w, b: C.spectral_normalize(w, b, key=jax.random.key(0)),
    "spectral_hammer": lambda w, b: C.spectral_hammer(w, b, key=jax.random.key(0)),
    "spectral_hard_cap": C.spectral_hard_cap,
    "svd_clip": C.svd_clip,
    "spectral_normalize_svd": C.spectral_normalize_svd,
    "spectral_hammer_svd": C.spectral_hammer_svd,
}


@pytest.mark.parametrize("name", sorted(FAST))
@pytest.mark.parametrize("bad", [0.0, -1.0])
def test_bad_w_max(name, bad):
    w = jax.random.normal(jax.random.key(0), (8, 8))
    with pytest.raises(ValueError, match="w_max"):
        FAST[name](w, bad)


def test_traced_bad_w_max_gives_nan():
    w = jax.random.normal(jax.random.key(0), (8, 8))
    out = jax.jit(lambda b: C.spectral_hard_cap(w, b))(-1.0)
    assert np.all(np.isnan(np.asarray(out)))
    out = jax.jit(lambda b: C.svd_clip(w, b))(0.0)
    assert np.all(np.isnan(np.asarray(out)))


@pytest.mark.parametrize("name", sorted(C.CONSTRAINTS))
def test_one_d_weight_rejected(name):
    with pytest.raises(ValueError, match="ndim"):
        C.get_constraint(name)(jnp.ones(5), 0.1, key=jax.random.key(0))


def test_other_bad_inputs():
    w = jax.random.normal(jax.random.key(0), (8, 8))
    with pytest.raises(ValueError, match="unknown constraint name 'spectral_cap'"):
        C.get_constraint("spectral_cap")
    with pytest.raises(TypeError, match="floating"):
        C.svd_clip(jnp.ones((4, 4), jnp.int32), 1.0)
    with pytest.raises(ValueError, match="norm"):
        C.svd_clip(w, 1.0, norm="frobenius")
    with pytest.raises(ValueError, match="strength"):
        C.spectral_weight_decay(w, 1.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="alpha"):
        C.spectral_soft_cap(w, -0.1)
    with pytest.raises(ValueError, match="num_iters"):
        _linalg.power_iteration(w, key=jax.random.key(0), num_iters=0)
    with pytest.raises(ValueError, match="num_iters"):
        C.spectral_normalize(w, 1.0, num_iters=0)
    with pytest.raises(ValueError, match="layout"):
        C.svd_clip(w, 1.0, layout="out_in")
    with pytest.raises(TypeError, match="paper_coefficients"):
        C.spectral_hard_cap(w, 1.0, paper_coefficients=1)
    with pytest.raises(ValueError, match="w_max"):
        C.soft_cap_alpha(0.0, 0.0, 0.1, 1.0)
    assert C.get_constraint("hard_cap") is C.spectral_hard_cap


def test_msign_and_hard_cap_on_tiny_zero_and_at_cap_matrices():
    """No NaN where the fourth powers of X would underflow: X = 1e-8·Q, X = 0, and the hard
    cap of a matrix whose singular values all equal w_max (M = W − w_max·Q is roundoff)."""
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(7), (24, 16)))
    tiny = C.msign(1e-8 * q)
    np.testing.assert_allclose(tiny, q, atol=1e-4)
    assert np.all(np.asarray(C.msign(jnp.zeros((5, 3)))) == 0)
    capped = C.spectral_hard_cap(q, 1.0)
    assert np.all(np.isfinite(np.asarray(capped)))
    np.testing.assert_allclose(jnp.linalg.svd(capped, compute_uv=False), 1.0, atol=1e-3)


ALL = {
    "spectral_normalize": 1.3, "spectral_hammer": 1.3, "spectral_weight_decay": 0.2,
    "spectral_soft_cap": 0.05, "spectral_hard_cap": 1.3, "svd_clip": 1.3,
    "spectral_normalize_svd": 1.3, "spectral_hammer_svd": 1.3,
    "spectral_weight_decay_svd": 0.2, "spectral_soft_cap_svd": 0.05,
}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("shape", [(24, 40), (32, 32), (2, 40, 24)])
@pytest.mark.parametrize("norm", ["spectral", "rms"])
def test_flax_and_torch_layouts_give_transposed_results(name, shape, norm):
    """One signature for every constraint; W in the Flax layout and Wᵀ in the torch layout
    are the same map, so the results are transposes of each other."""
    fn = C.get_constraint(name)
    w = 2.0 * jax.random.normal(jax.random.key(9), shape) / np.sqrt(shape[-1])
    key = jax.random.key(10)
    flax_out = fn(w, ALL[name], key=key, norm=norm)
    torch_out = fn(jnp.swapaxes(w, -1, -2), ALL[name], key=key, layout="torch", norm=norm)
    assert flax_out.shape == w.shape
    np.testing.assert_allclose(np.asarray(flax_out),
                               np.asarray(jnp.swapaxes(torch_out, -1, -2)), atol=1e-5)


def test_layout_decides_the_rms_bound_of_a_non_square_kernel():
    """svd_clip with norm="rms" against a NumPy SVD: fan_in/fan_out read from the layout."""
    w = 3.0 * jax.random.normal(jax.random.key(11), (24, 40)) / np.sqrt(24)
    s = svals(w)
    flax_out = svals(C.svd_clip(w, 1.0, norm="rms"))  # [in=24, out=40]
    torch_out = svals(C.svd_clip(w, 1.0, norm="rms", layout="torch"))  # [out=24, in=40]
    np.testing.assert_allclose(flax_out, np.minimum(s, np.sqrt(40 / 24)), rtol=1e-5)
    np.testing.assert_allclose(torch_out, np.minimum(s, np.sqrt(24 / 40)), rtol=1e-5)
    for fn in (C.spectral_hammer, C.spectral_hammer_svd):  # top σ set to the RMS bound
        top = svals(fn(w, 1.0, norm="rms", num_iters=300) if fn is C.spectral_hammer
                    else fn(w, 1.0, norm="rms"))[0]
        np.testing.assert_allclose(top, max(np.sqrt(40 / 24), s[1]), rtol=1e-4)
    normalized = svals(C.spectral_normalize(w, 1.0, norm="rms", num_iters=300))
    np.testing.assert_allclose(normalized, s * np.sqrt(40 / 24) / s[0], rtol=1e-4)
    np.testing.assert_allclose(C.rms_to_spectral((24, 40), 1.0), np.sqrt(40 / 24))
    np.testing.assert_allclose(C.rms_to_spectral((24, 40), 1.0, layout="torch"),
                               np.sqrt(24 / 40))


def test_warm_start_vector_is_a_right_vector_of_the_map():
    """return_vector gives v [..., fan_in] of the map x -> x @ W (Flax: W's first axis)."""
    w = jax.random.normal(jax.random.key(12), (3, 20, 36))  # [.., in=20, out=36]
    out, v = C.spectral_normalize(w, 0.5, num_iters=200, return_vector=True)
    assert v.shape == (3, 20)
    u, _, _ = np.linalg.svd(np.asarray(w, np.float64))  # W = U S Vt: x @ W's top input dir
    np.testing.assert_allclose(np.abs(np.einsum("bi,bi->b", v, u[..., 0])), 1.0, atol=1e-3)
    out1 = C.spectral_normalize(w, 0.5, num_iters=1, v0=v)
    np.testing.assert_allclose(np.asarray(out1), np.asarray(out), atol=1e-5)
