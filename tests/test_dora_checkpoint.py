"""Checkpoints of DoRA params with orbax-checkpoint's CheckpointManager (never pickle).

Round trips must be bit-exact: the same tree, dtypes, shapes and bytes for every leaf. The
adapter alone (lora_a, lora_b, magnitude: what a fine-tune produces) is saved as its own
small checkpoint and merged back into the frozen base after restore.
"""

from __future__ import annotations

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from jaxbounds.adapters.dora import (
    ADAPTER_PARAM_NAMES,
    adapter_labels,
    dora_interceptor,
    freeze_base,
    to_dora_params,
)

D_IN, D_HID, D_OUT, BATCH = 8, 16, 6, 12
RANK, ALPHA = 4, 8.0


class MLP(nn.Module):
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(D_HID, dtype=self.dtype, name="up")(x))
        x = nn.gelu(nn.Dense(D_HID, dtype=self.dtype, name="mid")(x))
        return nn.Dense(D_OUT, dtype=self.dtype, name="head")(x)


def _dora_params(dtype, seed=0, include="up|mid"):
    """Random base MLP params in ``dtype``, converted, with a random non-zero adapter."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(MLP().init, jax.random.key(0, impl="rbg"), jnp.zeros((1, D_IN)))
    base = jax.tree.map(
        lambda s: jnp.asarray(0.4 * rng.standard_normal(s.shape), dtype),
        flax.core.unfreeze(shapes),
    )
    params = to_dora_params(base, rank=RANK, alpha=ALPHA, key=jax.random.key(seed, impl="rbg"),
                            include=include)
    flat = traverse_util.flatten_dict(params)
    for path, leaf in flat.items():
        if path[-1] == "lora_b":
            flat[path] = jnp.asarray(0.2 * rng.standard_normal(leaf.shape), leaf.dtype)
        elif path[-1] == "magnitude":
            flat[path] = leaf * jnp.asarray(1 + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
    return base, traverse_util.unflatten_dict(flat)


def _split(params):
    """(adapter-only tree, frozen-only tree), filtered by adapter_labels."""
    flat = traverse_util.flatten_dict(params)
    labels = traverse_util.flatten_dict(adapter_labels(params))
    adapter = {p: v for p, v in flat.items() if labels[p] == "adapter"}
    frozen = {p: v for p, v in flat.items() if labels[p] == "frozen"}
    return traverse_util.unflatten_dict(adapter), traverse_util.unflatten_dict(frozen)


def _merge(*trees):
    flat = {}
    for tree in trees:
        flat.update(traverse_util.flatten_dict(tree))
    return traverse_util.unflatten_dict(flat)


def _abstract(tree):
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _assert_bit_exact(restored, original):
    assert jax.tree.structure(restored) == jax.tree.structure(original)
    for (path, r), o in zip(jax.tree_util.tree_leaves_with_path(restored),
                            jax.tree.leaves(original)):
        r, o = np.asarray(r), np.asarray(o)
        where = jax.tree_util.keystr(path)
        assert r.dtype == o.dtype, (where, r.dtype, o.dtype)
        assert r.shape == o.shape, (where, r.shape, o.shape)
        assert r.tobytes() == o.tobytes(), where


def _manager(directory, **kw):
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=3),
                                 **kw)


def _apply(params, x, dtype=None):
    with dora_interceptor(alpha=ALPHA):
        return MLP(dtype=dtype).apply(params, x)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_adapter_only_checkpoint_roundtrip(tmp_path, dtype):
    base, params = _dora_params(dtype)
    adapter, frozen = _split(params)
    assert {p[-1] for p in traverse_util.flatten_dict(adapter)} == set(ADAPTER_PARAM_NAMES)
    # mixed dtypes in one tree: kernel_sq_norm is float32 whatever the kernel dtype
    assert frozen["params"]["up"]["kernel_sq_norm"].dtype == jnp.float32
    assert adapter["params"]["up"]["lora_a"].dtype == dtype

    mngr = _manager(tmp_path / "adapter")
    try:
        assert mngr.save(3, args=ocp.args.StandardSave(adapter))
        mngr.wait_until_finished()
        assert mngr.all_steps() == [3] and mngr.latest_step() == 3
        restored = mngr.restore(3, args=ocp.args.StandardRestore(_abstract(adapter)))
        _assert_bit_exact(restored, adapter)
        # the checkpoint holds the adapter and nothing else (restored without a target)
        as_saved = mngr.restore(3, args=ocp.args.StandardRestore())
        assert set(traverse_util.flatten_dict(as_saved)) == set(
            traverse_util.flatten_dict(adapter)
        )
    finally:
        mngr.wait_until_finished()
        mngr.close()

    # merged back into the frozen base, the model is the same function, bit for bit
    x = np.random.default_rng(1).standard_normal((BATCH, D_IN)).astype(np.float32)
    merged = _merge(frozen, restored)
    _assert_bit_exact(merged, params)
    fwd = jax.jit(lambda p, x: _apply(p, x, dtype))
    y = fwd(params, x)
    np.testing.assert_array_equal(fwd(merged, x), y)
    assert np.all(np.isfinite(np.asarray(y, np.float32)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_full_params_checkpoint_roundtrip(tmp_path, dtype):
    _, params = _dora_params(dtype, seed=5, include=None)
    mngr = _manager(tmp_path / "full")
    try:
        mngr.save(0, args=ocp.args.StandardSave(params))
        # a second, different checkpoint: restore must pick the step asked for
        _, other = _dora_params(dtype, seed=6, include=None)
        mngr.save(1, args=ocp.args.StandardSave(other))
        mngr.wait_until_finished()
        assert mngr.all_steps() == [0, 1]
        _assert_bit_exact(mngr.restore(0, args=ocp.args.StandardRestore(_abstract(params))),
                          params)
        _assert_bit_exact(mngr.restore(1, args=ocp.args.StandardRestore(_abstract(other))),
                          other)
    finally:
        mngr.wait_until_finished()
        mngr.close()
    # a new manager on the same directory (a fresh process would do this) sees both
    mngr = _manager(tmp_path / "full")
    try:
        assert mngr.latest_step() == 1
        _assert_bit_exact(mngr.restore(1, args=ocp.args.StandardRestore(_abstract(other))),
                          other)
    finally:
        mngr.close()


def test_resume_training_from_checkpoint(tmp_path):
    """3 steps, save adapter + optimizer state, restore, 2 more steps == 5 steps straight."""
    _, params = _dora_params(jnp.float32, seed=7)
    adapter, frozen = _split(params)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((BATCH, D_IN)).astype(np.float32)
    y = rng.standard_normal((BATCH, D_OUT)).astype(np.float32)
    tx = freeze_base(optax.adamw(1e-2, weight_decay=0.1), adapter)  # state for the adapter only

    @jax.jit
    def step(adapter, state):
        loss_fn = lambda a: jnp.mean((_apply(_merge(frozen, a), x) - y) ** 2)
        loss, grads = jax.value_and_grad(loss_fn)(adapter)
        updates, state = tx.update(grads, state, adapter)
        return optax.apply_updates(adapter, updates), state, loss

    a_ref, s_ref = adapter, tx.init(adapter)
    for _ in range(5):
        a_ref, s_ref, loss = step(a_ref, s_ref)
        assert np.isfinite(float(loss))

    a, s = adapter, tx.init(adapter)
    for _ in range(3):
        a, s, _ = step(a, s)
    mngr = _manager(tmp_path / "run", item_names=("adapter", "opt_state"))
    try:
        mngr.save(3, args=ocp.args.Composite(adapter=ocp.args.StandardSave(a),
                                             opt_state=ocp.args.StandardSave(s)))
        mngr.wait_until_finished()
        got = mngr.restore(3, args=ocp.args.Composite(
            adapter=ocp.args.StandardRestore(_abstract(a)),
            opt_state=ocp.args.StandardRestore(_abstract(s)),
        ))
    finally:
        mngr.wait_until_finished()
        mngr.close()
    _assert_bit_exact(got.adapter, a)
    _assert_bit_exact(got.opt_state, s)

    a, s = got.adapter, got.opt_state
    for _ in range(2):
        a, s, _ = step(a, s)
    _assert_bit_exact(a, a_ref)
    _assert_bit_exact(s, s_ref)
    assert not np.array_equal(a["params"]["up"]["lora_b"], adapter["params"]["up"]["lora_b"])
