"""The fused DoRA Pallas GEMM in interpret mode: tiling, padding, dtypes, VJPs, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import DoRABlockSizes, dora_matmul, dora_matmul_reference
from pallas_kernels.checking import relative_error

SMALL_BLOCKS = DoRABlockSizes(block_m=16, block_n=16, block_k=16, block_r=16)


def inputs(seed, tokens, d_in, d_out, rank, dtype=jnp.float32):
    ks = jax.random.split(jax.random.PRNGKey(seed), 5)
    x = jax.random.normal(ks[0], (tokens, d_in)).astype(dtype)
    w0 = (jax.random.normal(ks[1], (d_in, d_out)) / np.sqrt(d_in)).astype(dtype)
    xa = jax.random.normal(ks[2], (tokens, rank)).astype(dtype)
    b = (jax.random.normal(ks[3], (rank, d_out)) / np.sqrt(rank)).astype(dtype)
    g = 1.0 + 0.1 * jax.random.normal(ks[4], (d_out,))
    return x, w0, xa, b, g


def upcast(args):
    return tuple(a.astype(jnp.float32) for a in args)


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("shape", [(33, 47, 29, 5), (64, 48, 32, 20), (16, 16, 16, 1)])
def test_forward_matches_reference_with_padding(shape, dtype, rtol):
    args = inputs(0, *shape, dtype=dtype)
    y = dora_matmul(*args, scale=0.6, block_sizes=SMALL_BLOCKS, implementation="interpret")
    assert y.shape == (shape[0], shape[2]) and y.dtype == dtype
    ref = dora_matmul_reference(*upcast(args), scale=0.6)
    assert relative_error(y, ref) < rtol


@pytest.mark.parametrize("dtype, rtol", [(jnp.float32, 1e-5), (jnp.bfloat16, 1e-2)])
def test_vjp_matches_reference_for_every_argument(dtype, rtol):
    args = inputs(1, 40, 36, 50, 7, dtype=dtype)
    ct = jax.random.normal(jax.random.PRNGKey(9), (40, 50)).astype(dtype)
    kernel = lambda *a: dora_matmul(*a, scale=1.3, block_sizes=SMALL_BLOCKS,
                                    implementation="interpret")
    ref = lambda *a: dora_matmul_reference(*a, scale=1.3)
    _, pull = jax.vjp(kernel, *args)
    _, pull_ref = jax.vjp(ref, *upcast(args))
    grads, ref_grads = pull(ct), pull_ref(ct.astype(jnp.float32))
    for name, g, r in zip(["x", "w0", "xa", "b", "g"], grads, ref_grads):
        assert g.dtype == dict(zip("x w0 xa b g".split(), args))[name].dtype
        assert relative_error(g, r) < rtol, name


def test_traced_scale_gets_a_gradient():
    args = inputs(2, 20, 24, 18, 4)
    f = lambda s, impl: jnp.sum(jnp.cos(dora_matmul(*args, scale=s, implementation=impl)))
    g_kernel = jax.grad(f)(0.7, "interpret")
    g_ref = jax.grad(f)(0.7, "xla")
    assert abs(g_kernel - g_ref) <= 1e-5 * abs(g_ref)


def test_jit_and_default_block_sizes():
    args = inputs(3, 70, 90, 40, 12)
    y = jax.jit(lambda *a: dora_matmul(*a, scale=0.5, implementation="interpret"))(*args)
    assert relative_error(y, dora_matmul_reference(*args, scale=0.5)) < 1e-5


def test_the_kernel_is_one_pallas_call_and_does_not_concatenate_w0():
    args = inputs(4, 32, 64, 48, 8)
    jaxpr = jax.make_jaxpr(lambda *a: dora_matmul(*a, implementation="interpret"))(*args)
    text = str(jaxpr)
    assert text.count("pallas_call") == 1
    assert "concatenate" not in text


def test_default_block_sizes_are_powers_of_two_and_fit_small_problems():
    small = DoRABlockSizes.default(10, 20, 30, 3)
    assert (small.block_m, small.block_n, small.block_k, small.block_r) == (16, 32, 32, 16)
    h200 = lambda dtype: DoRABlockSizes.default(4096, 4096, 4096, 64, dtype,
                                                device_kind="NVIDIA H200")
    # the tuned H200 caps, from the per-device table
    assert (h200(jnp.bfloat16).block_k, h200(jnp.bfloat16).num_warps) == (64, 8)
    assert (h200(jnp.float32).block_k, h200(jnp.float32).num_warps) == (32, 4)
    assert h200(jnp.float32).block_m == 128
    # a card without tuned values gets the generic caps
    other = DoRABlockSizes.default(4096, 4096, 4096, 64, jnp.bfloat16, device_kind="other")
    assert (other.block_m, other.block_n, other.block_k, other.block_r) == (64, 64, 32, 16)
    for blocks in (small, h200(jnp.float32), h200(jnp.bfloat16), other):
        blocks.validate()


@pytest.mark.parametrize("field, value", [("block_m", 24), ("block_k", 8), ("block_r", 0)])
def test_bad_block_sizes_are_rejected(field, value):
    blocks = DoRABlockSizes(**{field: value})
    with pytest.raises(ValueError, match=f"block_sizes.{field} must be a power of two"):
        dora_matmul(*inputs(5, 16, 16, 16, 2), block_sizes=blocks, implementation="interpret")


@pytest.mark.parametrize(
    "index, bad, match",
    [
        (1, np.ones((17, 16), np.float32), "w0 must have shape"),
        (2, np.ones((16, 3), np.float32), "xa must have shape"),
        (3, np.ones((2, 15), np.float32), "b must have shape"),
        (4, np.ones((15,), np.float32), "g must have shape"),
        (0, np.ones((16,), np.float32), "x must have rank 2"),
    ],
)
def test_bad_shapes_are_rejected(index, bad, match):
    args = list(inputs(6, 16, 16, 16, 2))
    args[index] = bad
    with pytest.raises(ValueError, match=match):
        dora_matmul(*args, implementation="interpret")


def test_integer_input_is_rejected():
    args = list(inputs(7, 16, 16, 16, 2))
    args[0] = np.ones((16, 16), np.int32)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        dora_matmul(*args)
