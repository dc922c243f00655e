"""SelfAttention: the attention switch never changes the param tree; "softmax" is exact
attention over the Dense projections; "hyper" is exact below min_seq_len, takes its key from
the "hyper" rng or ``hyper_key``; "nala" runs when its module exists; bad settings raise."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.self_attention import SelfAttention
from jaxbounds.attention.softmax import softmax_attention

B, N, D, HEADS, F = 2, 64, 24, 2, 32


@pytest.fixture(scope="module")
def setup():
    x = jax.random.normal(jax.random.PRNGKey(0), (B, N, D))
    params = SelfAttention(HEADS, F, causal=True).init(jax.random.PRNGKey(1), x)
    return x, params


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: a.shape, flax.core.unfreeze(tree))


def test_param_tree_is_the_same_for_every_attention(setup):
    x, params = setup
    rngs = {"params": jax.random.PRNGKey(1), "hyper": jax.random.PRNGKey(2)}
    for attention in ("softmax", "hyper"):
        other = jax.eval_shape(SelfAttention(HEADS, F, attention=attention, causal=True,
                                             block_size=16, sample_size=8, min_seq_len=16).init,
                               rngs, x)
        assert _shapes(other) == _shapes(params)
    assert set(params["params"]) == {"query", "key", "value", "out"}


def test_softmax_path_is_exact_attention_over_the_projections(setup):
    x, params = setup
    y = SelfAttention(HEADS, F, causal=True).apply(params, x)
    p = params["params"]
    proj = lambda name: (x @ p[name]["kernel"] + p[name]["bias"]).reshape(B, N, HEADS, F // HEADS)
    att = softmax_attention(proj("query"), proj("key"), proj("value"), causal=True)
    ref = att.reshape(B, N, F) @ p["out"]["kernel"] + p["out"]["bias"]
    np.testing.assert_allclose(np.asarray(y), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert y.shape == (B, N, D)


def test_hyper_patch_uses_the_trained_params(setup):
    x, params = setup
    exact = SelfAttention(HEADS, F, causal=True).apply(params, x)
    # below min_seq_len the hyper module is exact attention
    short = SelfAttention(HEADS, F, attention="hyper", causal=True)
    y = short.apply(params, x, rngs={"hyper": jax.random.PRNGKey(3)})
    np.testing.assert_allclose(np.asarray(y), np.asarray(exact), rtol=1e-5, atol=1e-5)
    # the approximate regime: deterministic given the key, rng or explicit, and close-ish
    hyper = SelfAttention(HEADS, F, attention="hyper", causal=True, block_size=16,
                          sample_size=8, min_seq_len=16, implementation="xla")
    apply = jax.jit(lambda p, x, key: hyper.apply(p, x, rngs={"hyper": key}))
    a = apply(params, x, jax.random.PRNGKey(4))
    b = jax.jit(lambda p, x, key: hyper.apply(p, x, hyper_key=key))(params, x,
                                                                    jax.random.PRNGKey(4))
    c = apply(params, x, jax.random.PRNGKey(5))
    assert np.all(np.isfinite(np.asarray(a)))
    assert float(jnp.max(jnp.abs(a - c))) > 0  # the key matters
    rel = float(jnp.linalg.norm(a - exact) / jnp.linalg.norm(exact))
    assert 0 < rel < 1.0
    np.testing.assert_array_equal(np.asarray(a).shape, np.asarray(b).shape)
    with pytest.raises(Exception, match="hyper"):
        hyper.apply(params, x)  # no rng, no key


def test_nala_switch_keeps_the_params(setup):
    x, params = setup
    y = jax.jit(SelfAttention(HEADS, F, attention="nala", causal=True,
                              implementation="xla").apply)(params, x)
    assert y.shape == (B, N, D) and np.all(np.isfinite(np.asarray(y)))


def test_bad_settings_raise(setup):
    x, params = setup
    with pytest.raises(ValueError, match="attention must be one of"):
        SelfAttention(HEADS, F, attention="flash").apply(params, x)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        SelfAttention(3, F).init(jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError, match=r"\[batch, seq, features\]"):
        SelfAttention(HEADS, F).apply(params, x[0])


def test_rope_option_rotates_q_and_k_like_an_explicit_formula():
    """rope=True equals softmax attention on RoPE-rotated q, k computed by hand in NumPy."""

    x = jax.random.normal(jax.random.key(3), (2, 12, 16))
    model = SelfAttention(num_heads=2, qkv_features=16, causal=True, rope=True)
    params = model.init(jax.random.key(0), x)
    out = model.apply(params, x)
    p = params["params"]
    proj = lambda name: (np.asarray(x) @ np.asarray(p[name]["kernel"])
                         + np.asarray(p[name]["bias"])).reshape(2, 12, 2, 8)
    q, k, v = proj("query"), proj("key"), proj("value")
    pos = np.arange(12)[:, None]
    freq = 10000.0 ** (-np.arange(4) / 4)  # half-split pairs (j, j + d/2), d = 8
    ang = pos * freq[None, :]
    cos, sin = np.cos(ang)[None, :, None, :], np.sin(ang)[None, :, None, :]

    def rotate(t):
        a, b = t[..., :4], t[..., 4:]
        return np.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

    q, k = rotate(q), rotate(k)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
    logits = np.where(np.tril(np.ones((12, 12), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    y = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(2, 12, 16)
    ref = y @ np.asarray(p["out"]["kernel"]) + np.asarray(p["out"]["bias"])
    np.testing.assert_allclose(np.asarray(out), ref, rtol=2e-5, atol=2e-5)
