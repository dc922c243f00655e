"""The fused Newton–Schulz Pallas kernels in interpret mode: one step against float64 NumPy,
exact symmetry of the Gram and polynomial tiles, padding, fat/tall/batched inputs, a full
msign and hard cap through the kernel, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.lipschitz.constraints import msign, spectral_hard_cap
from pallas_kernels import newton_schulz_steps
from pallas_kernels.newton_schulz import NewtonSchulzBlockSizes, _gram, _pad_to_tiles, _poly

BLOCKS = NewtonSchulzBlockSizes(block_n=16, block_m=32, block_k=16)
STEP = ((3.4445, -4.7750, 2.0315),)  # one quintic step (Muon's coefficients)


def scaled(seed, shape, dtype=jnp.float32):
    x = jax.random.normal(jax.random.PRNGKey(seed), shape)
    return (x / jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)).astype(dtype)


def numpy_step(x, a, b, c):
    """a·X + (b·A + c·A²)·X with A = X·Xᵀ, float64 NumPy (the fat-side formula)."""
    x = np.asarray(x, np.float64)
    gram = x @ np.swapaxes(x, -1, -2)
    return a * x + (b * gram + c * gram @ gram) @ x


def rel(y, ref):
    y, ref = np.asarray(y, np.float64), np.asarray(ref, np.float64)
    return np.max(np.abs(y - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("shape", [(48, 80), (80, 48), (33, 20), (2, 24, 40)],
                         ids=["fat", "tall", "padded", "batched"])
def test_one_step_float32_matches_float64_numpy(shape):
    x = scaled(0, shape)
    y = newton_schulz_steps(x, STEP, block_sizes=BLOCKS, implementation="interpret")
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert rel(y, numpy_step(x, *STEP[0])) < 1e-5


@pytest.mark.parametrize("shape", [(48, 80), (80, 48)], ids=["fat", "tall"])
def test_one_step_bfloat16(shape):
    x = scaled(1, shape, jnp.bfloat16)
    y = newton_schulz_steps(x, STEP, block_sizes=BLOCKS, implementation="interpret")
    assert y.dtype == jnp.bfloat16
    assert rel(y, numpy_step(x.astype(jnp.float32), *STEP[0])) < 1e-2


def test_gram_and_polynomial_are_exactly_symmetric():
    x = _pad_to_tiles(scaled(2, (50, 40)), BLOCKS)  # 40 -> 48: three Gram tiles per axis
    gram = _gram(x, blocks=BLOCKS, implementation="interpret")
    poly = _poly(gram, -4.775, 2.0315, blocks=BLOCKS, implementation="interpret")
    for sym in (gram, poly):
        assert np.array_equal(np.asarray(sym), np.asarray(jnp.swapaxes(sym, -1, -2)))
    x64 = np.asarray(x[0], np.float64)
    g64 = x64.T @ x64
    assert rel(gram[0], g64) < 1e-6
    assert rel(poly[0], -4.775 * g64 + 2.0315 * g64 @ g64) < 1e-5
    assert not np.any(np.asarray(gram[0, 40:])), "padded rows of G must stay zero"


def test_full_msign_through_the_kernel_matches_xla():
    x = jax.random.normal(jax.random.PRNGKey(3), (48, 80))
    kernel = jax.jit(lambda x: msign(x, implementation="interpret"))(x)
    xla = msign(x, implementation="xla")
    assert rel(kernel, xla) < 1e-5
    # and it is the polar factor U·Vᵀ (independent check by SVD, float64)
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    assert rel(kernel, u @ vt) < 1e-3


def test_hard_cap_through_the_kernel_matches_xla():
    w = 2.0 * jax.random.normal(jax.random.PRNGKey(4), (40, 24)) / np.sqrt(24)
    cap = lambda w, impl: spectral_hard_cap(w, 1.0, implementation=impl)
    assert rel(jax.jit(cap, static_argnums=1)(w, "interpret"), cap(w, "xla")) < 1e-5


def test_float64_has_no_kernel_and_a_sequence_falls_back():
    x = scaled(5, (20, 12))
    with jax.enable_x64(True):
        x64 = x.astype(jnp.float64)
        with pytest.raises(NotImplementedError, match="float64"):
            newton_schulz_steps(x64, STEP, implementation="interpret")
        y = newton_schulz_steps(x64, STEP, implementation=("interpret", "xla"))
        assert y.dtype == jnp.float64 and rel(y, numpy_step(x64, *STEP[0])) < 1e-12


def test_bad_input_and_no_gradient_through_the_kernel():
    x = scaled(6, (20, 12))
    with pytest.raises(ValueError, match="coefficients"):
        newton_schulz_steps(x, ((1.0, 2.0),))
    with pytest.raises(ValueError, match="rank >= 2"):
        newton_schulz_steps(x[0], STEP)
    with pytest.raises(TypeError, match="floating"):
        newton_schulz_steps(jnp.ones((4, 4), jnp.int32), STEP)
    with pytest.raises(NotImplementedError, match="not differentiable"):
        jax.grad(lambda x: jnp.sum(newton_schulz_steps(
            x, STEP, block_sizes=BLOCKS, implementation="interpret")))(x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_kernel_lowers_to_triton_for_cuda_without_a_gpu(dtype):
    """The Triton lowering for an abstract H200 (no GPU here): a change that breaks it fails."""
    from pallas_kernels._backend import abstract_gpu
    from pallas_kernels.newton_schulz import _newton_schulz_kernel_path

    # the public op refuses implementation="triton" without a CUDA device, so lower the
    # kernel path directly
    f = jax.jit(lambda x: _newton_schulz_kernel_path(
        x, STEP, precision=None, block_sizes=None, implementation="triton"))
    with abstract_gpu():
        lowered = f.trace(jax.ShapeDtypeStruct((96, 64), dtype)).lower(
            lowering_platforms=("cuda",))
    assert lowered.as_text().count("triton") >= 3  # gram, poly, apply


def muon_updates(opt, params, steps=2):
    import optax

    @jax.jit
    def step(p, state, i):
        updates, state = opt.update(jax.tree.map(lambda x: jnp.sin(3 * x + i), p), state, p)
        return optax.apply_updates(p, updates), state, updates

    state, p = opt.init(params), params
    for i in range(steps):
        p, state, updates = step(p, state, i)
    return updates


@pytest.mark.parametrize("options, dtype, rtol", [
    ({}, jnp.float64, 1e-12),
    ({}, jnp.float32, 5e-6),
    ({"nesterov": False, "weight_decay": 0.1, "consistent_rms": 0.2, "beta": 0.9},
     jnp.float64, 1e-12),
    ({"ns_coeffs": ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377))},
     jnp.float32, 5e-6),
], ids=["default-f64", "default-f32", "options-f64", "schedule-f32"])
def test_muon_matches_optax_contrib_muon(options, dtype, rtol):
    """The same update rule as optax.contrib.muon (an independent implementation): to
    roundoff in float64; in float32 the Newton–Schulz steps amplify the different
    product order (G = XᵀX against A = XXᵀ) to about 2e-6."""
    import optax

    from jaxbounds.lipschitz.muon import muon

    ks = jax.random.split(jax.random.PRNGKey(7), 3)
    with jax.enable_x64(dtype == jnp.float64):
        params = {"w": jax.random.normal(ks[0], (24, 40), dtype),
                  "v": jax.random.normal(ks[1], (40, 16), dtype),
                  "bias": jax.random.normal(ks[2], (16,), dtype)}
        ours = muon_updates(muon(0.05, implementation="xla", **options), params)
        ref = muon_updates(optax.contrib.muon(0.05, **options), params)
        for name in params:
            assert ours[name].dtype == dtype
            assert rel(ours[name], ref[name]) <= rtol, name
