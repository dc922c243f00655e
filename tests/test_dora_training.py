"""adapter_labels / freeze_base: train only the DoRA adapter with any optax optimizer.

The base leaves (kernel, bias, kernel_sq_norm, and whole layers left unadapted) must come out
of training bit-identical, and every adapter leaf must move.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jaxbounds.adapters.dora import (
    ADAPTER_PARAM_NAMES,
    DoRADense,
    adapter_labels,
    dora_interceptor,
    freeze_base,
    to_dora_params,
)

D_IN, D_HID, D_OUT, BATCH = 8, 16, 4, 32
RANK, ALPHA = 4, 8.0
STEPS = 10


class MLP(nn.Module):
    """Plain linen MLP: Dense_0, Dense_1, Dense_2."""

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(D_HID)(x))
        x = nn.gelu(nn.Dense(D_HID)(x))
        return nn.Dense(D_OUT)(x)


class DoRAMLP(nn.Module):
    """The same MLP with DoRADense layers (same names, so the same params)."""

    @nn.compact
    def __call__(self, x):
        dense = lambda f, i: DoRADense(f, rank=RANK, alpha=ALPHA, name=f"Dense_{i}")
        x = nn.gelu(dense(D_HID, 0)(x))
        x = nn.gelu(dense(D_HID, 1)(x))
        return dense(D_OUT, 2)(x)


def _rng_array(rng, shape, std=1.0, dtype=np.float32):
    return (std * rng.standard_normal(shape)).astype(dtype)


@pytest.fixture(scope="module")
def base_params():
    """Random non-zero 'pretrained' MLP params (eval_shape: no init compilation)."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(MLP().init, jax.random.key(0, impl="rbg"), jnp.zeros((1, D_IN)))
    return jax.tree.map(lambda s: _rng_array(rng, s.shape, 0.4), flax.core.unfreeze(shapes))


@pytest.fixture(scope="module")
def data():
    """Random regression data from a random non-linear teacher."""
    rng = np.random.default_rng(1)
    x = _rng_array(rng, (BATCH, D_IN))
    w = _rng_array(rng, (D_IN, D_OUT), 0.5)
    y = np.tanh(x @ w) + 0.1 * _rng_array(rng, (BATCH, D_OUT))
    return x, y.astype(np.float32)


def _convert(base_params, include=None):
    return to_dora_params(base_params, rank=RANK, alpha=ALPHA, key=jax.random.key(2, impl="rbg"),
                          include=include)


def _apply_interceptor(params, x):
    with dora_interceptor(alpha=ALPHA):
        return MLP().apply(params, x)


def _apply_doradense(params, x):
    return DoRAMLP().apply(params, x)


def _train(apply_fn, tx, params, data, steps=STEPS):
    x, y = data

    def loss_fn(p):
        return jnp.mean((apply_fn(p, x) - y) ** 2)

    @jax.jit
    def step(p, state):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss, grads

    state = tx.init(params)
    losses, first_grads = [], None
    for _ in range(steps):
        params, state, loss, grads = step(params, state)
        losses.append(float(loss))
        first_grads = grads if first_grads is None else first_grads
    final = float(loss_fn(params))
    return params, state, losses + [final], first_grads


def _flat(tree):
    return traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _is_adapter(path) -> bool:
    return path[-1] in ADAPTER_PARAM_NAMES


# --- labels ---------------------------------------------------------------------------------


def test_adapter_labels(base_params):
    params = _convert(base_params, include="Dense_[01]")
    labels = adapter_labels(params)
    assert jax.tree.structure(labels) == jax.tree.structure(params)
    flat = _flat(labels)
    expected = {
        path: ("adapter" if path[-1] in ("lora_a", "lora_b", "magnitude") else "frozen")
        for path in _flat(params)
    }
    assert flat == expected
    assert sum(v == "adapter" for v in flat.values()) == 6  # 3 leaves x 2 adapted layers
    assert all(flat[("params", "Dense_2", k)] == "frozen" for k in ("kernel", "bias"))
    # FrozenDict and the inner tree give the same labels
    assert _flat(adapter_labels(flax.core.freeze(params))) == flat
    inner = adapter_labels(params["params"])
    assert _flat({"params": inner}) == flat


def test_adapter_labels_on_doradense_init(base_params, data):
    shapes = jax.eval_shape(DoRAMLP().init, jax.random.key(0, impl="rbg"), data[0])
    labels = _flat(adapter_labels(shapes))
    assert {p[-1] for p, v in labels.items() if v == "adapter"} == set(ADAPTER_PARAM_NAMES)
    assert {p[-1] for p, v in labels.items() if v == "frozen"} == {
        "kernel", "bias", "kernel_sq_norm",
    }


# --- freeze_base under real optimizers ------------------------------------------------------

OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1),
    "muon": lambda: optax.contrib.muon(2e-2, weight_decay=0.05, adam_weight_decay=0.05),
}
PATHS = {
    # every layer a DoRADense
    "doradense": (None, _apply_doradense),
    # the unmodified model under the interceptor, with Dense_2 left as a plain (frozen) layer
    "interceptor": ("Dense_[01]", _apply_interceptor),
}


@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_freeze_base_keeps_base_bit_identical(base_params, data, opt_name, path_name):
    include, apply_fn = PATHS[path_name]
    params = _convert(base_params, include=include)
    tx = freeze_base(OPTIMIZERS[opt_name](), params)
    new, _, losses, grads = _train(apply_fn, tx, params, data)

    assert np.all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses
    before, after, g = _flat(params), _flat(new), _flat(grads)
    assert before.keys() == after.keys()
    n_adapter = 0
    for path in before:
        b, a = np.asarray(before[path]), np.asarray(after[path])
        assert a.dtype == b.dtype and a.shape == b.shape, path
        if _is_adapter(path):
            n_adapter += 1
            assert np.all(np.isfinite(a)), path
            assert not np.array_equal(a, b), f"adapter leaf {path} did not change"
        else:
            assert np.array_equal(a, b), f"frozen leaf {path} changed"
    assert n_adapter == (9 if path_name == "doradense" else 6)
    if path_name == "interceptor":
        # the plain Dense_2 really receives a gradient: only freeze_base keeps it fixed
        assert np.any(np.asarray(g[("params", "Dense_2", "kernel")]) != 0)


def test_freeze_base_optimizer_state_only_for_adapter(base_params):
    params = _convert(base_params, include="Dense_[01]")
    state = freeze_base(optax.adam(1e-3), params).init(params)
    adapter_size = sum(
        np.size(v) for p, v in _flat(params).items() if _is_adapter(p)
    )
    state_size = sum(np.size(v) for v in jax.tree.leaves(state))
    # mu and nu for the adapter leaves, plus step counters: nothing for the base
    assert 2 * adapter_size <= state_size <= 2 * adapter_size + 8


# --- why optax.partition: masked / stop_gradient alone do not freeze ------------------------


def test_without_freeze_base_the_base_moves(base_params, data):
    """stop_gradient gives the base an exactly-zero gradient, but AdamW's decoupled weight
    decay still shrinks it: the base must be frozen in the optimizer, not only in the model."""
    params = _convert(base_params)
    new, _, _, grads = _train(_apply_doradense, optax.adamw(1e-2, weight_decay=0.1), params,
                              data, steps=2)
    kernel = ("params", "Dense_0", "kernel")
    assert not np.any(np.asarray(_flat(grads)[kernel]))  # zero gradient...
    assert not np.array_equal(_flat(new)[kernel], _flat(params)[kernel])  # ...yet it moved


def test_optax_masked_alone_does_not_freeze(base_params):
    """optax.masked passes the unmasked (base) updates through as raw gradients; freeze_base
    (optax.partition with set_to_zero) zeroes them. Non-zero base gradients arise for any
    layer that is not stop-gradiented, e.g. an unadapted nn.Dense."""
    params = _convert(base_params, include="Dense_[01]")
    rng = np.random.default_rng(3)
    grads = jax.tree.map(lambda p: _rng_array(rng, p.shape), params)
    is_adapter = jax.tree.map(lambda label: label == "adapter", adapter_labels(params))

    masked = optax.masked(optax.adamw(1e-2, weight_decay=0.1), is_adapter)
    frozen = freeze_base(optax.adamw(1e-2, weight_decay=0.1), params)
    upd_masked, _ = masked.update(grads, masked.init(params), params)
    upd_frozen, _ = frozen.update(grads, frozen.init(params), params)

    g, um, uf = _flat(grads), _flat(upd_masked), _flat(upd_frozen)
    for path in g:
        if _is_adapter(path):
            np.testing.assert_allclose(um[path], uf[path], rtol=1e-6, atol=1e-8)
        else:
            np.testing.assert_array_equal(um[path], g[path])  # raw gradient: base would move
            np.testing.assert_array_equal(uf[path], np.zeros_like(g[path]))


def test_nan_base_gradient_does_not_corrupt_base(base_params):
    """A NaN/Inf gradient on a frozen leaf becomes an exactly-zero update."""
    params = _convert(base_params, include="Dense_[01]")
    rng = np.random.default_rng(4)
    grads = jax.tree_util.tree_map_with_path(
        lambda path, p: _rng_array(rng, p.shape)
        if str(path[-1].key) in ADAPTER_PARAM_NAMES
        else np.full(p.shape, np.nan, np.float32),
        params,
    )
    tx = freeze_base(optax.adamw(1e-2, weight_decay=0.1), params)
    state = tx.init(params)
    updates, state = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    for path, leaf in _flat(new).items():
        assert np.all(np.isfinite(leaf)), path
        if not _is_adapter(path):
            np.testing.assert_array_equal(leaf, _flat(params)[path])
    # the state stays usable: a second, finite step works
    updates, state = tx.update(jax.tree.map(np.nan_to_num, grads), state, new)
    assert all(np.all(np.isfinite(u)) for u in jax.tree.leaves(updates))


# --- bad input ------------------------------------------------------------------------------


def test_freeze_base_without_adapter_leaves(base_params):
    with pytest.raises(ValueError, match="adapter"):
        freeze_base(optax.adamw(1e-3), base_params)


@pytest.mark.parametrize("tx", [optax.adamw, "adamw", (lambda p: p, lambda u, s, p: (u, s)), None])
def test_freeze_base_rejects_non_transformation(base_params, tx):
    params = _convert(base_params)
    with pytest.raises(TypeError, match="tx"):
        freeze_base(tx, params)


def test_freeze_base_accepts_chains(base_params):
    params = _convert(base_params)
    tx = freeze_base(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), params)
    assert isinstance(tx, optax.GradientTransformation)
    tx.init(params)


# --- label functions: built before the params exist, linen dicts and NNX state ------------


def test_freeze_base_without_params_uses_a_label_function(base_params, data):
    """freeze_base(tx) with no params gives the same updates as freeze_base(tx, params)."""
    params = _convert(base_params, include="Dense_[01]")
    eager = freeze_base(optax.adamw(1e-2, weight_decay=0.1), params)
    lazy = freeze_base(optax.adamw(1e-2, weight_decay=0.1))
    grads = jax.tree.map(lambda p: jnp.ones_like(p), params)
    u1, _ = eager.update(grads, eager.init(params), params)
    u2, _ = lazy.update(grads, lazy.init(params), params)
    for (path, a), b in zip(_flat(u1).items(), _flat(u2).values(), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert bool(np.any(np.asarray(a) != 0)) == _is_adapter(path), path


def test_adapter_labels_and_freeze_base_on_nnx_state():
    """NNX state paths end in the Variable's ``.value``: the name before it is the label."""
    from flax import nnx

    class Adapted(nnx.Module):
        def __init__(self, rngs):
            self.base = nnx.Linear(4, 3, rngs=rngs)
            self.lora_a = nnx.Param(jnp.ones((4, 2)))
            self.lora_b = nnx.Param(jnp.ones((2, 3)))
            self.magnitude = nnx.Param(jnp.ones(3))

    state = nnx.state(Adapted(nnx.Rngs(0)), nnx.Param)
    names = {jax.tree_util.keystr(p): v
             for p, v in jax.tree_util.tree_leaves_with_path(adapter_labels(state))}
    assert names == {"['base']['bias'].value": "frozen", "['base']['kernel'].value": "frozen",
                     "['lora_a'].value": "adapter", "['lora_b'].value": "adapter",
                     "['magnitude'].value": "adapter"}
    tx = freeze_base(optax.sgd(0.5))
    grads = jax.tree.map(jnp.ones_like, state)
    updates, _ = tx.update(grads, tx.init(state), state)
    moved = {jax.tree_util.keystr(p): bool(np.any(np.asarray(u) != 0))
             for p, u in jax.tree_util.tree_leaves_with_path(updates)}
    assert moved == {k: v == "adapter" for k, v in names.items()}
