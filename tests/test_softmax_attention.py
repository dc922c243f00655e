"""Exact softmax attention against a float64 numpy computation and jax.nn.dot_product_attention."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.softmax import softmax_attention


def _inputs(key, b=2, n=12, m=12, h=3, d=8, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(key, 3)
    return (jax.random.normal(kq, (b, n, h, d), dtype), jax.random.normal(kk, (b, m, h, d), dtype),
            jax.random.normal(kv, (b, m, h, d), dtype))


def _numpy_attention(q, k, v, causal, scale):
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if causal:
        logits = np.where(np.tril(np.ones(logits.shape[-2:], bool)), logits, -np.inf)
    top = logits.max(-1, keepdims=True)
    weights = np.exp(logits - top)
    lse = np.log(weights.sum(-1)) + top[..., 0]
    out = np.einsum("bhqk,bkhd->bqhd", weights / weights.sum(-1, keepdims=True), v)
    return out, np.transpose(lse, (0, 2, 1))


@pytest.mark.parametrize("causal", [False, True])
def test_matches_float64_and_jax_nn(causal):
    q, k, v = _inputs(jax.random.PRNGKey(0))
    out, lse = softmax_attention(q, k, v, causal=causal, return_lse=True)
    ref_out, ref_lse = _numpy_attention(q, k, v, causal, 8 ** -0.5)
    np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out, jax.nn.dot_product_attention(q, k, v, is_causal=causal), rtol=1e-5, atol=1e-5
    )


def test_custom_scale_and_mask():
    q, k, v = _inputs(jax.random.PRNGKey(1), n=6, m=10)
    mask = jax.random.bernoulli(jax.random.PRNGKey(2), 0.6, (1, 1, 6, 10)).at[..., 0].set(True)
    out = softmax_attention(q, k, v, scale=0.1, mask=mask)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.1
    probs = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), axis=-1)
    np.testing.assert_allclose(out, jnp.einsum("bhqk,bkhd->bqhd", probs, v), rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_give_zero_and_minus_inf():
    q, k, v = _inputs(jax.random.PRNGKey(3), n=4, m=4)
    mask = jnp.ones((1, 1, 4, 4), bool).at[..., 2, :].set(False)
    out, lse = softmax_attention(q, k, v, mask=mask, return_lse=True)
    assert np.all(np.asarray(out[:, 2]) == 0) and np.all(np.isneginf(np.asarray(lse[:, 2])))
    assert np.all(np.isfinite(np.asarray(out)))
    grads = jax.grad(lambda q: softmax_attention(q, k, v, mask=mask).sum())(q)
    assert np.all(np.isfinite(np.asarray(grads)))


def test_lse_gradient_is_the_softmax():
    q, k, v = _inputs(jax.random.PRNGKey(4), b=1, n=3, m=5, h=1, d=4)
    grad = jax.grad(lambda q: softmax_attention(q, k, v, return_lse=True)[1].sum())(q)
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) * 0.5, axis=-1)
    expected = jnp.einsum("bhqk,bkhd->bqhd", probs, k) * 0.5
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


def test_bf16_accumulates_in_float32():
    q, k, v = _inputs(jax.random.PRNGKey(5), n=64, m=64)
    out = softmax_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    ref, _ = _numpy_attention(q, k, v, False, 8 ** -0.5)
    assert np.linalg.norm(np.asarray(out, np.float64) - ref) / np.linalg.norm(ref) < 1e-2


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((1, 4, 2, 8), (1, 4, 3, 8), (1, 4, 3, 8)), "heads"),
        (((1, 4, 2, 8), (1, 4, 2, 4), (1, 4, 2, 4)), "head_dim"),
        (((4, 2, 8), (4, 2, 8), (4, 2, 8)), r"\[batch, seq, heads, head_dim\]"),
        (((1, 4, 2, 8), (1, 4, 2, 8), (1, 5, 2, 8)), "seq"),
    ],
)
def test_bad_shapes_raise(shapes, match):
    q, k, v = (jnp.ones(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        softmax_attention(q, k, v)
