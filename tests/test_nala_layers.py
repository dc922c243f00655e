"""The NaLaFormer Flax modules: parameter tree, the wrapper recomputed by hand from the
params, causality (attention and LePE), 2-D image tokens, the kernel path, bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.nala_layers import NaLaAttention, NaLaAttention2D
from jaxbounds.attention.nalaformer import nala_attention
from jaxbounds.attention.rope import rope_1d, rope_2d

C, HEADS = 32, 4


def manual_block(params, x, spatial, rope, causal):
    """q, k, v, g = Linear(C→4C); o = NaLa(q,k,v) + LePE(v); LayerNorm(o)·SiLU(g); out."""
    p = params["params"]
    b, n, c = x.shape
    qkvg = x @ p["qkvg"]["kernel"] + p["qkvg"]["bias"]
    q, k, v, g = (qkvg[..., i * c:(i + 1) * c] for i in range(4))
    heads = lambda t: t.reshape(b, n, HEADS, c // HEADS)
    o = jax.jit(lambda q, k, v: nala_attention(q, k, v, causal=causal, rope=rope,
                                               implementation="xla"))(heads(q), heads(k), heads(v))
    o = o.reshape(b, n, c)
    kernel = np.asarray(p["lepe"]["kernel"])  # [*window, 1, C]: one filter per channel
    vv = np.asarray(v).reshape(b, *spatial, c)
    lepe = np.zeros_like(vv)
    if len(spatial) == 1:
        width = kernel.shape[0]
        shift = width - 1 if causal else width // 2
        for t in range(spatial[0]):
            for w in range(width):
                src = t + w - shift
                if 0 <= src < spatial[0]:
                    lepe[:, t] += vv[:, src] * kernel[w, 0]
    else:
        kh, kw = kernel.shape[:2]
        for i in range(spatial[0]):
            for j in range(spatial[1]):
                for a in range(kh):
                    for bb in range(kw):
                        si, sj = i + a - kh // 2, j + bb - kw // 2
                        if 0 <= si < spatial[0] and 0 <= sj < spatial[1]:
                            lepe[:, i, j] += vv[:, si, sj] * kernel[a, bb, 0]
    o = o + (lepe + np.asarray(p["lepe"]["bias"])).reshape(b, n, c)
    mean = o.mean(-1, keepdims=True)
    var = ((o - mean) ** 2).mean(-1, keepdims=True)
    o = (o - mean) / jnp.sqrt(var + 1e-6) * p["norm"]["scale"] + p["norm"]["bias"]
    o = o * jax.nn.sigmoid(g) * g
    return o @ p["out"]["kernel"] + p["out"]["bias"]


@pytest.mark.parametrize("causal", [True, False])
def test_sequence_module_equals_the_wrapper_by_hand(causal):
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 24, C))
    module = NaLaAttention(HEADS, causal=causal)
    params = module.init(jax.random.PRNGKey(1), x)
    assert set(params["params"]) == {"qkvg", "lepe", "norm", "out"}
    assert params["params"]["qkvg"]["kernel"].shape == (C, 4 * C)
    assert params["params"]["lepe"]["kernel"].shape == (5, 1, C)
    # perturb the biases so every term matters
    params = jax.tree.map(lambda p: p + 0.1, params)
    y = jax.jit(module.apply)(params, x)
    ref = manual_block(params, x, (24,), rope_1d(24, C // HEADS), causal)
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_causal_module_never_looks_ahead():
    x = jax.random.normal(jax.random.PRNGKey(2), (1, 30, C))
    module = NaLaAttention(HEADS, causal=True)
    params = module.init(jax.random.PRNGKey(3), x)
    apply = jax.jit(module.apply)
    y = apply(params, x)
    y2 = apply(params, x.at[:, 17:].add(1.0))
    np.testing.assert_array_equal(np.asarray(y[:, :17]), np.asarray(y2[:, :17]))
    assert float(jnp.max(jnp.abs(y[:, 17:] - y2[:, 17:]))) > 1e-3
    # the kernel path (interpret) gives the same layer
    yk = jax.jit(NaLaAttention(HEADS, causal=True, implementation="interpret").apply)(params, x)
    np.testing.assert_allclose(np.asarray(yk), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_image_module_equals_the_wrapper_by_hand():
    x = jax.random.normal(jax.random.PRNGKey(4), (2, 6, 5, C))
    module = NaLaAttention2D(HEADS)
    params = module.init(jax.random.PRNGKey(5), x)
    assert params["params"]["lepe"]["kernel"].shape == (5, 5, 1, C)
    params = jax.tree.map(lambda p: p + 0.1, params)
    y = jax.jit(module.apply)(params, x)
    assert y.shape == x.shape
    ref = manual_block(params, x.reshape(2, 30, C), (6, 5), rope_2d(6, 5, C // HEADS), False)
    np.testing.assert_allclose(np.asarray(y).reshape(2, 30, C), np.asarray(ref), rtol=1e-4,
                               atol=1e-4)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(module.apply(p, x) ** 2)))(params)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))


def test_bad_input_raises():
    with pytest.raises(ValueError, match="num_heads=3"):
        NaLaAttention(3).init(jax.random.PRNGKey(0), jnp.ones((1, 8, C)))
    with pytest.raises(ValueError, match="multiple of 4"):
        NaLaAttention2D(HEADS).init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 24)))
    with pytest.raises(ValueError, match=r"x must be \[batch, seq, features\]"):
        NaLaAttention(HEADS).init(jax.random.PRNGKey(0), jnp.ones((8, C)))
    with pytest.raises(ValueError, match=r"x must be \[batch, height, width, features\]"):
        NaLaAttention2D(HEADS).init(jax.random.PRNGKey(0), jnp.ones((1, 8, C)))
