"""Scale-out: HyperAttention under ``shard_map`` over batch and heads on a 2x4 mesh of 8
fake CPU devices equals the unsharded call with the same key (causal and not, with samples).

Each shard passes its global offsets (``jax.lax.axis_index`` × local size) as
``batch_offset``/``head_offset``: the hyperplanes are shared and the samples come from
``fold_in`` of the global batch and head index, so no draw depends on the local shape.
The mesh needs ``--xla_force_host_platform_device_count=8`` before jax starts, so the check
runs in a fresh subprocess that prints one JSON line.
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

    from jaxbounds.attention.hyper import hyper_attention

    assert jax.device_count() == 8, jax.devices()
    B, N, H, D = 4, 128, 8, 16
    kw = dict(block_size=32, sample_size=16, min_seq_len=32, return_lse=True,
              implementation="xla")
    q, k, v = (jax.random.normal(x, (B, N, H, D)) for x in jax.random.split(
        jax.random.PRNGKey(0), 3))
    key = jax.random.PRNGKey(7)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("data", "model"))
    spec = P("data", None, "model", None)
    lse_spec = P("data", None, "model")

    out = {}
    for causal in (False, True):
        def local(q, k, v, key):
            b0 = jax.lax.axis_index("data") * q.shape[0]
            h0 = jax.lax.axis_index("model") * q.shape[2]
            return hyper_attention(q, k, v, key=key, causal=causal, batch_offset=b0,
                                   head_offset=h0, **kw)

        sharded = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(spec, spec, spec, P()),
                                        out_specs=(spec, lse_spec)))
        args = [jax.device_put(x, NamedSharding(mesh, spec)) for x in (q, k, v)]
        o_s, l_s = sharded(*args, key)
        assert o_s.addressable_shards[0].data.shape == (B // 2, N, H // 4, D)
        dev0 = jax.devices()[0]
        o_1, l_1 = jax.jit(lambda q, k, v, key: hyper_attention(q, k, v, key=key, causal=causal,
                                                                **kw))(
            *jax.device_put((q, k, v, key), dev0))
        exact = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
        out[str(causal)] = {
            "out_diff": float(jnp.max(jnp.abs(np.asarray(o_s) - np.asarray(o_1)))),
            "lse_diff": float(jnp.max(jnp.abs(np.asarray(l_s) - np.asarray(l_1)))),
            "devices": len(o_s.sharding.device_set),
            "approx_error": float(jnp.linalg.norm(o_1 - exact) / jnp.linalg.norm(exact)),
        }
    print("RESULT " + json.dumps(out))
    """
)


@pytest.mark.slow
def test_shard_map_over_batch_and_heads_matches_unsharded(eight_devices):
    out = eight_devices(SCRIPT)
    for causal in ("False", "True"):
        row = out[causal]
        assert row["devices"] == 8, row
        assert row["out_diff"] <= 1e-5 and row["lse_diff"] <= 1e-5, row
        assert row["approx_error"] > 1e-3  # the sampled path really ran (not exact)
