"""pallas_kernels.linear_attention: the chunked causal kernel (interpret mode) and the chunked
XLA path against the quadratic reference, outputs and gradients, with an initial state, and
shapes that need padding (sequence, features and value dim)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import linear_attention as la
from pallas_kernels.checking import relative_error
from pallas_kernels.registry import KERNELS

B, N, H, F, DV = 2, 70, 2, 24, 12  # none of them a power of two or a multiple of the chunk
BLOCKS = la.LinearAttentionBlockSizes(chunk=32)


def inputs(seed, dtype=jnp.float32, n=N):
    ks = jax.random.split(jax.random.PRNGKey(seed), 7)
    normal = lambda k, s: jax.random.normal(k, s, jnp.float32) / F**0.5
    positive = lambda k, s: jax.random.uniform(k, s, jnp.float32, 0.05, 1.0) / F**0.5
    qn, kn = normal(ks[0], (B, n, H, F)), normal(ks[1], (B, n, H, F))
    qd, kd = positive(ks[2], (B, n, H, F)), positive(ks[3], (B, n, H, F))
    v = jax.random.normal(ks[4], (B, n, H, DV), jnp.float32)
    s0 = 5 * normal(ks[5], (B, H, F, DV))
    z0 = 5 * positive(ks[6], (B, H, F))
    return (*(x.astype(dtype) for x in (qn, kn, qd, kd, v)), s0, z0)


def vjp_all(fn, args, cts):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cts)


@pytest.mark.parametrize("implementation", ["interpret", "xla"])
def test_sums_and_gradients_match_the_quadratic_reference(implementation):
    args = inputs(0)
    fast = lambda *a: la.causal_linear_attention_sums(*a, block_sizes=BLOCKS,
                                                      implementation=implementation)
    ref_fn = la.causal_linear_attention_sums_reference
    ref_out = jax.eval_shape(ref_fn, *args)
    cts = tuple(jax.random.normal(jax.random.PRNGKey(10 + i), o.shape, jnp.float32)
                for i, o in enumerate(ref_out))
    out, grads = jax.jit(lambda *a: vjp_all(fast, a, cts))(*args)
    ref, ref_grads = jax.jit(lambda *a: vjp_all(ref_fn, a, cts))(*args)
    for name, o, r in zip(("num", "den", "S", "z"), out, ref, strict=True):
        assert o.dtype == jnp.float32 and o.shape == r.shape, name
        assert relative_error(o, r) < 1e-5, name
    for name, g, r in zip(("qn", "kn", "qd", "kd", "v", "s0", "z0"), grads, ref_grads,
                          strict=True):
        assert g.shape == r.shape, name
        assert relative_error(g, r) < 1e-5, name


def test_normalised_output_and_chunk_independence():
    args = inputs(1)
    ref, s_ref, z_ref = la.causal_linear_attention_reference(*args, eps=1e-3, count=5)
    for chunk in (16, 64):
        blocks = la.LinearAttentionBlockSizes(chunk=chunk)
        out, s, z = jax.jit(lambda *a, b=blocks: la.causal_linear_attention(
            *a, eps=1e-3, count=5, block_sizes=b, implementation="xla"))(*args)
        assert relative_error(out, ref) < 1e-5
        assert relative_error((s, z), (s_ref, z_ref)) < 1e-5
    # o_i = num_i / (den_i + eps·(count + i + 1)), from the sums
    num, den, _, _ = la.causal_linear_attention_sums_reference(*args)
    counts = 5 + np.arange(1, N + 1)
    manual = np.asarray(num) / (np.asarray(den) + 1e-3 * counts[None, :, None])[..., None]
    assert relative_error(ref, manual) < 1e-6


def test_bf16_inputs_accumulate_in_float32_in_the_kernel():
    args = inputs(2, jnp.bfloat16, n=128)
    out, s, z = jax.jit(lambda *a: la.causal_linear_attention(
        *a, block_sizes=BLOCKS, implementation="interpret"))(*args)
    assert out.dtype == jnp.bfloat16 and s.dtype == z.dtype == jnp.float32
    up = [x.astype(jnp.float32) for x in args]
    ref, s_ref, z_ref = la.causal_linear_attention_reference(*up)
    assert relative_error(out, ref) < 1e-2
    assert relative_error((s, z), (s_ref, z_ref)) < 1e-5  # float32 sums of bf16 products


def test_default_blocks_and_registry():
    assert la.LinearAttentionBlockSizes.default(4096, 128, 64).chunk == 64
    assert la.LinearAttentionBlockSizes.default(20, 32, 16).chunk == 32
    assert la.LinearAttentionBlockSizes.default(4096, 256, 256).chunk == 32
    specs = [s for s in KERNELS.values() if s.family == "linear_attention"]
    assert {s.name for s in specs} == {"causal_linear_attention_float32",
                                       "causal_linear_attention_bfloat16"}
    for spec in specs:
        assert spec.differentiable and spec.diff_argnums == tuple(range(7))
        qn, kn, qd, kd, v, s0, z0 = spec.make_inputs(jax.random.PRNGKey(0), "small")
        assert qn.shape[1] % 64 != 0  # the small size exercises the padding


def test_bad_input_raises_clear_errors():
    qn, kn, qd, kd, v, s0, z0 = inputs(3, n=40)
    with pytest.raises(ValueError, match=r"chunk must be a power of two >= 16 .*got 48"):
        la.causal_linear_attention(qn, kn, qd, kd, v, block_sizes=la.LinearAttentionBlockSizes(
            chunk=48), implementation="interpret")
    with pytest.raises(ValueError, match="kd must have the shape of qn"):
        la.causal_linear_attention(qn, kn, qd, kd[:, :, :1], v)
    with pytest.raises(ValueError, match="v must agree with qn"):
        la.causal_linear_attention(qn, kn, qd, kd, v[:, :20])
    with pytest.raises(ValueError, match="both S0 and z0"):
        la.causal_linear_attention(qn, kn, qd, kd, v, s0)
    with pytest.raises(ValueError, match=r"s0 must have shape \(2, 2, 24, 12\)"):
        la.causal_linear_attention(qn, kn, qd, kd, v, s0[:1], z0)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        la.causal_linear_attention(qn, kn, qd, kd, v, eps=-1.0)
    with pytest.raises(ValueError, match=r"qn must be \[batch, seq, heads, features\]"):
        la.causal_linear_attention(qn[0], kn[0], qd[0], kd[0], v[0])
    with pytest.raises(TypeError, match="floating dtype"):
        la.causal_linear_attention(qn.astype(jnp.int32), kn, qd, kd, v)
