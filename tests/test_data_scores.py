"""EL2N and GraNd data-pruning scores (jaxbounds.data.scores)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments._jaxpr_memory import largest_intermediate_bytes
from jaxbounds.data.scores import (
    checked_el2n_scores,
    checked_grand_scores,
    el2n_scores,
    grand_scores,
)

D, C = 6, 5


def linear_apply(params, x):
    """A linear softmax layer's logits f(x) = Wᵀx + b, W [d, c], b [c]."""
    return x @ params["W"] + params["b"]


def linear_params(rng, num_models, dtype=np.float64, scale=1.0):
    return [{"W": (scale * rng.normal(size=(D, C))).astype(dtype),
             "b": rng.normal(size=C).astype(dtype)} for _ in range(num_models)]


def linear_data(rng, n, dtype=np.float64):
    return rng.normal(size=(n, D)).astype(dtype), rng.integers(0, C, size=n).astype(np.int32)


def el2n_numpy(params, x, y):
    """NumPy reference of one model's EL2N."""
    logits = x @ params["W"] + params["b"]
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return np.linalg.norm(probs - np.eye(C)[y], axis=1)


class MLP(nn.Module):
    hidden: int = 16
    classes: int = 3

    @nn.compact
    def __call__(self, x):
        x = nn.tanh(nn.Dense(self.hidden)(x))
        return nn.Dense(self.classes)(x)


def mlp_params(model, seed, x):
    """Random params of flax's shapes (drawn by NumPy: jax's initialisers take seconds to
    compile on CPU)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x[:1])
    return jax.tree_util.tree_map(
        lambda s: (rng.normal(size=s.shape) / np.sqrt(s.shape[0])).astype(s.dtype), shapes)


# --- the linear-softmax identity GraNd = EL2N · √(‖x‖² + 1) ------------------------------


def test_grand_is_el2n_times_sqrt_norm_for_linear_softmax_float64():
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        x, y = linear_data(rng, 41)
        factor = np.sqrt(np.sum(x * x, axis=1) + 1.0)
        for params in linear_params(rng, 3):  # per single model
            grand = grand_scores(linear_apply, [params], x, y, batch_size=16)
            el2n = el2n_scores(linear_apply, [params], x, y)
            assert grand.dtype == el2n.dtype == jnp.float64
            np.testing.assert_allclose(grand, np.asarray(el2n) * factor, rtol=1e-6, atol=0)
            np.testing.assert_allclose(el2n, el2n_numpy(params, x, y), rtol=1e-12)


def test_grand_is_el2n_times_sqrt_norm_for_linear_softmax_float32():
    rng = np.random.default_rng(1)
    x, y = linear_data(rng, 50, np.float32)
    factor = np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=1) + 1.0)
    for params in linear_params(rng, 2, np.float32, scale=0.5):
        grand = grand_scores(linear_apply, [params], x, y, batch_size=8)
        el2n = el2n_scores(linear_apply, [params], x, y)
        assert grand.dtype == el2n.dtype == jnp.float32
        np.testing.assert_allclose(grand, np.asarray(el2n, np.float64) * factor, rtol=1e-5,
                                   atol=0)
        params64 = jax.tree_util.tree_map(lambda a: a.astype(np.float64), params)
        ref = el2n_numpy(params64, x.astype(np.float64), y)
        assert np.linalg.norm(el2n - ref) / np.linalg.norm(ref) < 1e-5


# --- EL2N against NumPy, averaging, stacking, batch sizes -------------------------------


def test_el2n_matches_numpy_and_averages_over_models():
    rng = np.random.default_rng(2)
    with jax.enable_x64(True):
        x, y = linear_data(rng, 30)
        models = linear_params(rng, 4)
        expected = np.mean([el2n_numpy(p, x, y) for p in models], axis=0)
        np.testing.assert_allclose(el2n_scores(linear_apply, models, x, y), expected,
                                   rtol=1e-12)
        assert np.all(expected >= 0) and np.all(expected <= np.sqrt(2))


@pytest.mark.parametrize("score_fn", [el2n_scores, grand_scores])
def test_scores_of_several_models_are_the_mean_of_per_model_scores(score_fn):
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        x, y = linear_data(rng, 23)
        models = linear_params(rng, 3)
        per_model = [np.asarray(score_fn(linear_apply, [p], x, y)) for p in models]
        np.testing.assert_allclose(score_fn(linear_apply, models, x, y),
                                   np.mean(per_model, axis=0), rtol=1e-12)
        stacked = jax.tree_util.tree_map(lambda *a: np.stack(a), *models)
        np.testing.assert_allclose(score_fn(linear_apply, stacked, x, y),
                                   np.mean(per_model, axis=0), rtol=1e-12)


@pytest.mark.parametrize("score_fn", [el2n_scores, grand_scores])
def test_batch_size_does_not_change_the_scores(score_fn):
    rng = np.random.default_rng(4)
    x, y = linear_data(rng, 29, np.float32)
    models = linear_params(rng, 2, np.float32)
    reference = np.asarray(score_fn(linear_apply, models, x, y, batch_size=29))
    assert reference.shape == (29,)
    for batch_size in (1, 4, 7, 10, 64):  # 4, 7 and 10 do not divide 29; 64 > n
        np.testing.assert_allclose(score_fn(linear_apply, models, x, y, batch_size=batch_size),
                                   reference, rtol=1e-6, atol=1e-7)


def test_bfloat16_models_give_float32_scores():
    rng = np.random.default_rng(7)
    x, y = linear_data(rng, 12, np.float32)
    models = linear_params(rng, 2, np.float32, scale=0.5)
    low = [jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.bfloat16), p) for p in models]
    for score_fn in (el2n_scores, grand_scores):
        scores = score_fn(linear_apply, low, x.astype(jnp.bfloat16), y)
        reference = score_fn(linear_apply, models, x, y)
        assert scores.dtype == jnp.float32
        assert np.linalg.norm(scores - reference) / np.linalg.norm(reference) < 3e-2


# --- a small Flax MLP -------------------------------------------------------------------


def test_scores_on_a_small_flax_mlp_match_per_example_references():
    model = MLP()
    rng = np.random.default_rng(6)
    x = rng.normal(size=(13, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=13).astype(np.int32)
    models = [mlp_params(model, seed, x) for seed in (1, 2)]

    def example_loss(params, xi, yi):
        return -jax.nn.log_softmax(model.apply(params, xi[None])[0])[yi]

    @jax.jit
    def grad_norm(params, xi, yi):  # one example at a time, no vmap
        return jnp.linalg.norm(ravel_pytree(jax.grad(example_loss)(params, xi, yi))[0])

    grand_ref = np.mean([[grad_norm(p, xi, yi) for xi, yi in zip(x, y)] for p in models], 0)
    el2n_ref = np.mean([np.linalg.norm(jax.nn.softmax(model.apply(p, x)) - np.eye(3)[y], axis=1)
                        for p in models], axis=0)
    grand = grand_scores(model.apply, models, x, y, batch_size=8)
    el2n = el2n_scores(model.apply, models, x, y, batch_size=8)
    np.testing.assert_allclose(grand, grand_ref, rtol=1e-5)
    np.testing.assert_allclose(el2n, el2n_ref, rtol=1e-5)
    assert np.all(np.asarray(grand) > 0)


def test_grand_never_materialises_all_per_example_gradients():
    model = MLP(hidden=32, classes=4)
    params = mlp_params(model, 0, jnp.zeros((1, 8)))
    num_params = ravel_pytree(params)[0].size
    n, batch_size = 512, 8
    x = jnp.ones((n, 8))
    y = np.zeros(n, np.int32)
    largest = largest_intermediate_bytes(
        lambda x: grand_scores(model.apply, [params], x, y, batch_size=batch_size), x)
    # One batch of per-example gradients (the first layer's kernel is most of them) ...
    assert largest >= 4 * batch_size * 8 * 32
    # ... but nothing bigger than that batch or the (reshaped) inputs, far below the
    # n per-example gradients.
    assert largest <= max(4 * batch_size * num_params, x.nbytes)
    assert largest < 4 * n * num_params / 16


# --- bad input --------------------------------------------------------------------------


@pytest.fixture
def small():
    rng = np.random.default_rng(5)
    x, y = linear_data(rng, 10, np.float32)
    return linear_params(rng, 2, np.float32), x, y


@pytest.mark.parametrize("score_fn", [el2n_scores, grand_scores])
@pytest.mark.parametrize("change, error, match", [
    (lambda m, x, y: (m, x, y[:-1]), ValueError, "same number of examples"),
    (lambda m, x, y: (m, x, y.astype(np.float32)), TypeError, "integer class labels"),
    (lambda m, x, y: (m, x, np.where(y == 0, C, y)), ValueError, r"\[0, 5\)"),
    (lambda m, x, y: (m, x, np.where(y == 0, -1, y)), ValueError, "got array"),
    (lambda m, x, y: (m, x, y[:, None]), ValueError, "1-D array"),
    (lambda m, x, y: ([], x, y), ValueError, "at least one params pytree"),
    (lambda m, x, y: ({}, x, y), ValueError, "no array leaves"),
    (lambda m, x, y: (m[0], x, y), ValueError, "leading model axis"),
    (lambda m, x, y: (jax.tree_util.tree_map(lambda a: a[:0], m[0]), x, y), ValueError,
     "leading"),
    (lambda m, x, y: (m, x[:0], y[:0]), ValueError, "at least one example"),
])
def test_bad_input_raises_a_clear_error(small, score_fn, change, error, match):
    models, x, y = change(*small)
    with pytest.raises(error, match=match):
        score_fn(linear_apply, models, x, y)


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-3, ValueError),
                                               (2.5, TypeError), (True, TypeError)])
def test_bad_batch_size(small, batch_size, error):
    models, x, y = small
    with pytest.raises(error, match="batch_size"):
        el2n_scores(linear_apply, models, x, y, batch_size=batch_size)


def test_bad_apply_fn(small):
    models, x, y = small
    with pytest.raises(TypeError, match="apply_fn"):
        el2n_scores("not a function", models, x, y)
    with pytest.raises(ValueError, match=r"\[batch, classes\]"):
        grand_scores(lambda p, x: linear_apply(p, x).sum(-1), models, x, y)


def test_traced_out_of_range_labels_give_nan_and_the_checked_variants_raise(small):
    models, x, y = small
    bad = jnp.asarray(y).at[3].set(C)
    for score_fn, checked in ((el2n_scores, checked_el2n_scores),
                              (grand_scores, checked_grand_scores)):
        scores = jax.jit(lambda y, f=score_fn: f(linear_apply, models, x, y))(bad)
        assert np.isnan(scores[3]) and np.all(np.isfinite(np.delete(np.asarray(scores), 3)))
        np.testing.assert_allclose(checked(linear_apply, models, x, y),
                                   score_fn(linear_apply, models, x, y), rtol=1e-6)
        with pytest.raises(Exception, match=r"class labels in \[0, 5\)"):
            checked(linear_apply, models, x, bad)
