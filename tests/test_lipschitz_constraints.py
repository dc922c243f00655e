"""Spectral constraints (jaxbounds.lipschitz.constraints) against SVD references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
    shape = (96, 40)  # fan_out 96, fan_in 40: σ bound = w_max·√(96/40)
    w, s = known_spectrum(3, shape, spectrum(40, 2.0, "linear"))
    out = jax.jit(lambda w: C.spectral_hard_cap(w, w_max, norm="rms"))(w)
    rms = np.sqrt(40 / 96) * svals(out).max()
    assert w_max * (1 - 1e-3) <= rms <= w_max * (1 + 1e-3)
    np.testing.assert_allclose(np.asarray(out), np.asarray(C.svd_clip(w, w_max, norm="rms")),
                               atol=1e-3)


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
    sigma, u, v = C.power_iteration(w, key=jax.random.key(5), num_iters=300)
    exact = np.asarray(jnp.linalg.norm(w, 2, axis=(-2, -1)))
    np.testing.assert_allclose(np.asarray(sigma), exact, rtol=1e-4)
    assert np.all(np.asarray(sigma) <= exact * (1 + 1e-5))  # approaches from below
    assert u.shape == (3, 50) and v.shape == (3, 30)
    # warm start from the converged vector: one iteration is already exact
    sigma1, _, _ = C.power_iteration(w, num_iters=1, u0=u)
    np.testing.assert_allclose(np.asarray(sigma1), exact, rtol=1e-5)


@pytest.mark.parametrize("norm", ["spectral", "rms"])
def test_soft_cap_matches_svd(norm):
    w = jax.random.normal(jax.random.key(6), (2, 40, 24)) * 0.3
    for alpha in (0.0, 0.05, 0.2):
        np.testing.assert_allclose(
            np.asarray(C.spectral_soft_cap(w, alpha, norm=norm)),
            np.asarray(C.spectral_soft_cap_svd(w, alpha, norm=norm)), atol=1e-4)


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
    fn = C.get_constraint(name)
    with pytest.raises(ValueError, match="ndim"):
        if "weight_decay" in name:
            fn(jnp.ones(5), 0.1, **({"key": jax.random.key(0)} if "svd" not in name else {}))
        elif "soft_cap" in name:
            fn(jnp.ones(5), 0.1)
        elif "svd" in name or "cap" in name:
            fn(jnp.ones(5), 1.0)
        else:
            fn(jnp.ones(5), 1.0, key=jax.random.key(0))


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
    with pytest.raises(ValueError, match="key"):
        C.power_iteration(w)
    with pytest.raises(ValueError, match="num_iters"):
        C.power_iteration(w, key=jax.random.key(0), num_iters=0)
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
