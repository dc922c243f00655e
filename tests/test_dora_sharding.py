"""Scale-out: a DoRA train step on a 2x4 ('data', 'model') mesh of 8 fake CPU devices equals
the same step on one device, and its outputs stay sharded.

The mesh needs ``--xla_force_host_platform_device_count=8`` before jax starts, so the check
runs in a fresh subprocess; it prints one JSON line that the test reads.
"""

from __future__ import annotations

import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r"""
    import json

    import flax
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import traverse_util
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxbounds.adapters.dora import (
        DoRADense, dora_interceptor, dora_linear, freeze_base, to_dora_params,
    )

    assert jax.device_count() == 8, jax.devices()
    D, H, B, R, ALPHA = 64, 128, 16, 8, 16.0
    rng = np.random.default_rng(0)
    normal = lambda *s, std=1.0: (std * rng.standard_normal(s)).astype(np.float32)


    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.gelu(DoRADense(H, rank=R, alpha=ALPHA, name="up")(x))
            h = nn.gelu(nn.Dense(H, name="mid")(h))  # a plain layer: frozen by freeze_base
            return DoRADense(D, rank=R, alpha=ALPHA, name="down")(h)


    class PlainModel(nn.Module):  # the same tree with nn.Dense, for the interceptor path
        @nn.compact
        def __call__(self, x):
            h = nn.gelu(nn.Dense(H, name="up")(x))
            h = nn.gelu(nn.Dense(H, name="mid")(h))
            return nn.Dense(D, name="down")(h)


    model = Model()
    shapes = jax.eval_shape(PlainModel().init, jax.random.key(0, impl="rbg"), jnp.zeros((1, D)))
    base = jax.tree.map(lambda s: normal(*s.shape, std=0.15), flax.core.unfreeze(shapes))
    params = to_dora_params(base, rank=R, alpha=ALPHA, key=jax.random.key(1, impl="rbg"),
                            include="up|down")
    flat = traverse_util.flatten_dict(params)
    for path in flat:  # a non-zero adapter, so that every adapter leaf gets a gradient
        if path[-1] == "lora_b":
            flat[path] = normal(*flat[path].shape, std=0.1)
    params = traverse_util.unflatten_dict(flat)
    x, y = normal(B, D), normal(B, D)

    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))

    def spec(path, leaf):
        name = path[-1].key
        if name in ("kernel", "lora_b"):  # [*, d_out]: shard d_out
            return P(None, "model")
        if name in ("bias", "kernel_sq_norm", "magnitude"):  # [d_out]
            return P("model")
        if name == "lora_a":  # [d_in, r]: replicated
            return P()
        raise AssertionError(path)

    specs = jax.tree_util.tree_map_with_path(spec, params)
    shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
    batch = NamedSharding(mesh, P("data", None))

    tx = freeze_base(optax.adamw(1e-2, weight_decay=0.1), params)

    def loss_fn(p, x, y):
        return jnp.mean((model.apply(p, x) - y) ** 2)

    @jax.jit
    def train_step(p, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    # one device
    dev0 = jax.devices()[0]
    p1 = jax.device_put(params, dev0)
    x1, y1 = jax.device_put((x, y), dev0)
    new1, state1, loss1 = train_step(p1, jax.jit(tx.init)(p1), x1, y1)
    new1, state1, loss1b = train_step(new1, state1, x1, y1)  # two steps: Adam moments matter

    # 2 x 4 mesh
    ps = jax.device_put(params, shardings)
    xs, ys = jax.device_put(x, batch), jax.device_put(y, batch)
    assert len(xs.sharding.device_set) == 8 and xs.addressable_shards[0].data.shape == (B // 2, D)
    state = jax.jit(tx.init)(ps)
    news, state, losss = train_step(ps, state, xs, ys)
    news, state, losssb = train_step(news, state, xs, ys)

    out = {"loss": [float(loss1), float(losss)], "loss2": [float(loss1b), float(losssb)],
           "max_abs_diff": 0.0, "not_sharded": [], "mismatch": [], "base_moved": [],
           "adapter_fixed": []}
    f1, fs, f0 = (traverse_util.flatten_dict(t) for t in (new1, news, params))
    fspec = traverse_util.flatten_dict(specs)
    for path in f0:
        a, b = np.asarray(f1[path]), np.asarray(fs[path])
        out["max_abs_diff"] = max(out["max_abs_diff"], float(np.max(np.abs(a - b))))
        if not np.allclose(b, a, rtol=1e-5, atol=1e-6):
            out["mismatch"].append("/".join(path))
        # Sharding comes from XLA's propagation (no out_shardings): every leaf sharded over
        # 'model' on the way in must come out sharded the same way. A replicated leaf
        # (lora_a) may come out replicated or sharded (XLA shards down/lora_a on d_in).
        leaf = fs[path]
        want = NamedSharding(mesh, fspec[path])
        lost = fspec[path] != P() and not leaf.sharding.is_equivalent_to(want, leaf.ndim)
        if len(leaf.sharding.device_set) != 8 or lost:
            out["not_sharded"].append(f"{'/'.join(path)}: {leaf.sharding}")
        adapter = path[-1] in ("lora_a", "lora_b", "magnitude")
        if not adapter and not np.array_equal(b, np.asarray(f0[path])):
            out["base_moved"].append("/".join(path))
        if adapter and np.array_equal(b, np.asarray(f0[path])):
            out["adapter_fixed"].append("/".join(path))

    # the unmodified nn.Dense model under dora_interceptor, sharded, equals DoRADense
    def fwd_interceptor(p, x):
        with dora_interceptor(alpha=ALPHA):
            return PlainModel().apply(p, x)

    y_int = jax.jit(fwd_interceptor)(news, xs)
    y_ref = jax.jit(model.apply)(new1, jax.device_put(x, dev0))
    out["interceptor_diff"] = float(np.max(np.abs(np.asarray(y_int) - np.asarray(y_ref))))
    out["interceptor_devices"] = len(y_int.sharding.device_set)

    # dora_linear per shard under shard_map: tokens over 'data', columns (d_out) over 'model';
    # the column norm is per column, so each shard needs only its own columns of W0, B, m.
    layer = traverse_util.flatten_dict(news)
    w0, a, b_, m = (layer[("params", "down", k)] for k in ("kernel", "lora_a", "lora_b",
                                                           "magnitude"))
    h = jax.device_put(normal(B, H), batch)
    smap = jax.jit(jax.shard_map(
        lambda h, w0, a, b, m: dora_linear(h, w0, a, b, m, ALPHA / R),
        mesh=mesh,
        in_specs=(P("data", None), P(None, "model"), P(), P(None, "model"), P("model")),
        out_specs=P("data", "model"),
    ))
    y_sm = smap(h, w0, a, b_, m)
    y_1 = dora_linear(*jax.device_put((np.asarray(h), np.asarray(w0), np.asarray(a),
                                       np.asarray(b_), np.asarray(m)), dev0), ALPHA / R)
    out["shard_map_diff"] = float(np.max(np.abs(np.asarray(y_sm) - np.asarray(y_1))))
    out["shard_map_scale"] = float(np.max(np.abs(np.asarray(y_1))))
    out["shard_map_devices"] = len(y_sm.sharding.device_set)
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_sharded_train_step_matches_single_device(eight_devices):
    out = eight_devices(SCRIPT)

    (loss1, losss), (loss1b, losssb) = out["loss"], out["loss2"]
    assert all(map(lambda v: v == v and abs(v) < 1e6, (loss1, losss, loss1b, losssb)))
    assert losss == pytest.approx(loss1, rel=1e-5, abs=1e-6)
    assert losssb == pytest.approx(loss1b, rel=1e-5, abs=1e-6)
    assert out["mismatch"] == [], out
    assert out["not_sharded"] == [], out
    assert out["base_moved"] == [], out
    assert out["adapter_fixed"] == [], out
    assert out["interceptor_diff"] < 1e-5, out
    assert out["interceptor_devices"] == 8
    assert out["shard_map_diff"] <= 1e-5 * max(1.0, out["shard_map_scale"]), out
    assert out["shard_map_devices"] == 8
