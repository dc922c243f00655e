"""NaLa attention inside ``shard_map``, sharded over batch and heads on a 2x4 mesh of 8 fake
CPU devices, equals the unsharded result (non-causal, causal XLA, causal kernel in interpret
mode, and the carried state).

The mesh needs ``--xla_force_host_platform_device_count=8`` before jax starts, so the check
runs in a fresh subprocess; it prints one JSON line that the test reads.
"""

from __future__ import annotations

import textwrap

import pytest

SCRIPT = textwrap.dedent(
    r"""
    import json

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from jaxbounds.attention.nalaformer import NaLaState, nala_attention
    from jaxbounds.attention.rope import rope_1d

    assert jax.device_count() == 8, jax.devices()
    B, N, H, D = 4, 96, 8, 16
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, N, H, D)).astype(np.float32) for _ in range(3))
    rope = rope_1d(N, D)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    act = P("data", None, "model", None)
    state_specs = NaLaState(P("data", "model", None, None), P("data", "model", None), P())

    out = {}
    dev0 = jax.devices()[0]
    q1, k1, v1 = jax.device_put((q, k, v), dev0)
    for name, causal, impl in (("noncausal", False, "xla"), ("causal_xla", True, "xla"),
                               ("causal_interpret", True, "interpret")):
        fn = lambda q, k, v, rope: nala_attention(q, k, v, causal=causal, rope=rope,
                                                  implementation=impl, chunk_size=32)
        # The Pallas *interpreter* under shard_map trips jax's varying-axes check on its own
        # internal grid loop (jax 0.10: "Scan carry input and output got mismatched varying
        # manual axes"), so that case runs with check_vma=False; XLA paths keep the check.
        sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(act, act, act, P()),
                                        out_specs=act, check_vma=impl != "interpret"))
        qs, ks, vs = (jax.device_put(x, NamedSharding(mesh, act)) for x in (q, k, v))
        y = sharded(qs, ks, vs, rope)
        ref = jax.jit(fn)(q1, k1, v1, rope)
        out[name] = {"diff": float(np.max(np.abs(np.asarray(y) - np.asarray(ref)))),
                     "scale": float(np.max(np.abs(np.asarray(ref)))),
                     "devices": len(y.sharding.device_set),
                     "shard": list(y.addressable_shards[0].data.shape)}

    # the carried state, sharded the same way
    fn = lambda q, k, v, rope: nala_attention(q, k, v, causal=True, rope=rope,
                                              return_state=True, implementation="xla")
    sharded = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(act, act, act, P()),
                                    out_specs=(act, state_specs)))
    y, state = sharded(*(jax.device_put(x, NamedSharding(mesh, act)) for x in (q, k, v)), rope)
    y1, state1 = jax.jit(fn)(q1, k1, v1, rope)
    out["state"] = {"diff": max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                                / max(1.0, float(np.max(np.abs(np.asarray(b)))))
                                for a, b in zip(state[:2], state1[:2])),
                    "count": int(state.count)}
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_nala_attention_under_shard_map_matches_unsharded(eight_devices):
    out = eight_devices(SCRIPT)
    for name in ("noncausal", "causal_xla", "causal_interpret"):
        res = out[name]
        assert res["devices"] == 8, res
        assert res["shard"] == [2, 96, 2, 16], res  # batch / 2 and heads / 4 per device
        assert res["diff"] <= 1e-5 * max(1.0, res["scale"]), (name, res)
    assert out["state"]["diff"] <= 1e-5, out["state"]
    assert out["state"]["count"] == 96
