"""The optax parameter projection (jaxbounds.lipschitz.optim) with Muon and AdamW."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxbounds.lipschitz.optim import (
    default_labels,
    lipschitz_projection,
    muon_update_bound,
    project_params,
    with_projection,
)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Embed(11, 24)(x).reshape(x.shape[0], -1)
        x = nn.gelu(nn.Dense(48)(x))
        x = nn.gelu(nn.Dense(32)(x))
        return nn.Dense(10)(x)


def setup():
    key = jax.random.key(0)
    model = MLP()
    x = jax.random.randint(key, (64, 3), 0, 11)
    y = jax.random.randint(jax.random.key(1), (64,), 0, 10)
    params = model.init(key, x)

    def loss(p):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss


def rms_norms(params):
    """RMS→RMS norm √(fan_in/fan_out)·σ_max of every Dense kernel ([in, out]), in float64."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        if path[-1].key == "kernel":
            fan_in, fan_out = leaf.shape
            sigma = np.linalg.svd(np.asarray(leaf, np.float64), compute_uv=False)[0]
            out[jax.tree_util.keystr(path)] = np.sqrt(fan_in / fan_out) * sigma
    return out


def train(tx, params, loss, steps=50):
    state = tx.init(params)

    @jax.jit
    def step(p, s):
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    for _ in range(steps):
        params, state = step(params, state)
    return params, state


LR = 0.05
CASES = {
    "muon+hard_cap": (lambda: optax.contrib.muon(LR, beta=0.9), "spectral_hard_cap", {}),
    "adamw+hard_cap": (lambda: optax.adamw(1e-2), "spectral_hard_cap", {}),
    "muon+normalize": (lambda: optax.contrib.muon(LR, beta=0.9), "spectral_normalize",
                       {"key": jax.random.key(3)}),
    "muon+soft_cap": (lambda: optax.contrib.muon(LR, beta=0.9), "spectral_soft_cap",
                      {"learning_rate": LR, "max_update_norm": "muon"}),
}


@pytest.mark.parametrize("case", [
    c if c == "muon+hard_cap" else pytest.param(c, marks=pytest.mark.slow)
    for c in sorted(CASES)])
def test_fifty_steps_stay_within_bound(case):
    make_opt, constraint, kwargs = CASES[case]
    params, loss = setup()
    w_max = 1.0
    params = project_params(params, "svd_clip", w_max, norm="rms")  # start inside the set
    assert max(rms_norms(params).values()) <= w_max * (1 + 1e-5)
    loss0 = float(loss(params))
    tx = with_projection(make_opt(), constraint, w_max, norm="rms", **kwargs)
    params, state = train(tx, params, loss)
    norms = rms_norms(params)
    assert len(norms) == 3
    for name, value in norms.items():
        assert value <= w_max * (1 + 1e-3), (name, value)
    assert float(loss(params)) < loss0  # it still trains
    # the embedding table and the biases are not constrained by the default labels
    emb = params["params"]["Embed_0"]["embedding"]
    assert np.linalg.norm(np.asarray(emb), 2) > 0


def test_emitted_update_is_projection_minus_params():
    params, loss = setup()
    grads = jax.grad(loss)(params)
    opt = optax.adamw(0.5)
    tx = optax.chain(opt, lipschitz_projection("svd_clip", 0.5))
    upd, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    raw, _ = jax.jit(opt.update)(grads, opt.init(params), params)
    expected = project_params(optax.apply_updates(params, raw), "svd_clip", 0.5)
    got = optax.apply_updates(params, upd)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def test_update_requires_params():
    params, loss = setup()
    tx = lipschitz_projection("spectral_hard_cap", 1.0)
    with pytest.raises(ValueError, match="params"):
        tx.update(jax.grad(loss)(params), tx.init(params))


def test_nan_update_keeps_state_usable():
    params, loss = setup()
    params = project_params(params, "svd_clip", 1.0)
    tx = lipschitz_projection("spectral_hammer", 1.0, key=jax.random.key(0))
    state = tx.init(params)
    grads = jax.grad(loss)(params)
    bad = jax.tree.map(lambda g: jnp.full_like(g, jnp.nan), grads)
    update = jax.jit(tx.update)
    _, state_after_nan = update(bad, state, params)
    for u in state_after_nan.vectors:
        if u is not None:
            assert np.all(np.isfinite(np.asarray(u)))
    small = jax.tree.map(lambda g: -1e-3 * g, grads)
    upd, state2 = update(small, state_after_nan, params)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(upd))
    assert int(state2.count) == 2


def test_custom_labels_and_per_leaf_bounds():
    params, _ = setup()
    big = jax.tree.map(lambda x: 5.0 * x, params)

    def labels(p):
        lab = jax.tree.map(lambda _: False, p)
        lab["params"]["Dense_0"]["kernel"] = 0.5
        lab["params"]["Dense_1"]["kernel"] = True
        return lab

    out = project_params(big, "svd_clip", 2.0, labels=labels)
    s0 = np.linalg.svd(np.asarray(out["params"]["Dense_0"]["kernel"]), compute_uv=False)[0]
    s1 = np.linalg.svd(np.asarray(out["params"]["Dense_1"]["kernel"]), compute_uv=False)[0]
    np.testing.assert_allclose([s0, s1], [0.5, 2.0], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out["params"]["Dense_2"]["kernel"]),
                                  np.asarray(big["params"]["Dense_2"]["kernel"]))
    lab = default_labels(params)
    assert lab["params"]["Embed_0"]["embedding"] is False
    assert lab["params"]["Dense_0"]["bias"] is False
    assert lab["params"]["Dense_0"]["kernel"] is True


def test_grouped_projection_equals_per_leaf():
    keys = jax.random.split(jax.random.key(5), 5)
    params = {f"l{i}": {"kernel": 3.0 * jax.random.normal(k, (24, 40) if i < 3 else (40, 24))}
              for i, k in enumerate(keys)}
    params["l4"]["kernel"] = params["l4"]["kernel"][:, :16]  # a shape of its own
    for constraint in ("spectral_hard_cap", "svd_clip"):
        grouped = project_params(params, constraint, 1.0, norm="rms")
        single = project_params(params, constraint, 1.0, norm="rms", group_same_shape=False)
        for a, b in zip(jax.tree.leaves(grouped), jax.tree.leaves(single), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def test_torch_layout():
    w = {"w": jax.random.normal(jax.random.key(0), (40, 24))}  # [fan_out, fan_in]
    out = project_params(w, "svd_clip", 1.0, layout="torch", norm="rms")
    sigma = np.linalg.svd(np.asarray(out["w"]), compute_uv=False)[0]
    np.testing.assert_allclose(np.sqrt(24 / 40) * sigma, 1.0, rtol=1e-5)


def test_muon_update_bound_holds():
    for shape in [(32, 32), (24, 64), (64, 24)]:
        params = {"w": jnp.zeros(shape)}
        tx = optax.contrib.muon(1.0, beta=0.9)
        state = tx.init(params)
        bound = muon_update_bound(shape)
        update = jax.jit(tx.update)
        for i in range(3):
            g = {"w": jax.random.normal(jax.random.key(i), shape)}
            upd, state = update(g, state, params)
            sigma = np.linalg.svd(np.asarray(upd["w"], np.float64), compute_uv=False)[0]
            assert sigma <= bound, (shape, sigma, bound)
            assert sigma >= 0.6 * bound / 1.21  # and it is not far below
    with pytest.raises(ValueError):  # optax 0.2.8 has no 'muon' preset, despite its docstring
        optax.contrib.muon(0.1, ns_coeffs="muon")
    with pytest.raises(ValueError, match="preset"):
        muon_update_bound((4, 4), preset="muon")


def test_bad_inputs():
    params, _ = setup()
    with pytest.raises(ValueError, match="w_max"):
        lipschitz_projection("spectral_hard_cap", 0.0)
    with pytest.raises(ValueError, match="w_max"):
        lipschitz_projection("spectral_hard_cap", -2.0)
    with pytest.raises(ValueError, match="unknown constraint name"):
        lipschitz_projection("spectral_clamp", 1.0)
    with pytest.raises(TypeError, match="learning_rate"):
        lipschitz_projection("spectral_soft_cap", 1.0)
    with pytest.raises(TypeError, match="num_step"):
        lipschitz_projection("spectral_hard_cap", 1.0, num_step=3)  # a misspelt option
    with pytest.raises(ValueError, match="norm"):
        lipschitz_projection("svd_clip", 1.0, norm="frobenius")
    with pytest.raises(ValueError, match="layout"):
        lipschitz_projection("svd_clip", 1.0, layout="fan_out_fan_in")
    bias_label = jax.tree.map(lambda x: x.ndim == 1, params)
    tx = lipschitz_projection("svd_clip", 1.0, labels=bias_label)
    with pytest.raises(ValueError, match="ndim"):
        tx.init(params)
    tx = lipschitz_projection("svd_clip", 1.0, labels=lambda p: {"params": -1.0})
    with pytest.raises(ValueError, match="labels"):
        tx.init(params)


def test_default_labels_and_projection_on_nnx_state():
    """Leaf names are read through the ``.value`` of NNX state paths: the kernels (and not
    the embedding or the biases) are projected, checked against a NumPy SVD."""
    from flax import nnx

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(7, 12, rngs=rngs)
            self.fc = nnx.Linear(12, 20, rngs=rngs)
            self.out = nnx.Linear(20, 5, rngs=rngs)

    state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
    state = jax.tree.map(lambda x: 4.0 * x + 0.1, state)
    labels = {jax.tree_util.keystr(p): v
              for p, v in jax.tree_util.tree_leaves_with_path(default_labels(state))}
    assert labels == {"['embed']['embedding'].value": False, "['fc']['bias'].value": False,
                      "['fc']['kernel'].value": True, "['out']['bias'].value": False,
                      "['out']['kernel'].value": True}
    projected = project_params(state, "svd_clip", 1.0, norm="rms")
    for name in ("fc", "out"):
        kernel = np.asarray(state[name]["kernel"][...], np.float64)  # [in, out]
        got = np.asarray(projected[name]["kernel"][...], np.float64)
        u, s, vt = np.linalg.svd(kernel, full_matrices=False)
        cap = np.sqrt(kernel.shape[1] / kernel.shape[0])  # σ bound of RMS→RMS norm 1
        np.testing.assert_allclose(got, (u * np.minimum(s, cap)) @ vt, atol=1e-5)
    for name, leaf in (("embed", "embedding"), ("fc", "bias")):
        np.testing.assert_array_equal(np.asarray(projected[name][leaf][...]),
                                      np.asarray(state[name][leaf][...]))


def test_weight_decay_projection_uses_w_max_as_strength():
    """For spectral_weight_decay the per-leaf value is the strength λ: σ_max ← (1 − λ)σ_max."""
    w = jax.random.normal(jax.random.key(3), (30, 20))
    s = np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)
    out = project_params({"w": w}, "spectral_weight_decay", 0.25, num_iters=300)
    got = np.linalg.svd(np.asarray(out["w"], np.float64), compute_uv=False)
    np.testing.assert_allclose(got, np.sort(np.r_[0.75 * s[0], s[1:]])[::-1], rtol=1e-3)
    with pytest.raises(ValueError, match="strength"):
        lipschitz_projection("spectral_weight_decay", 1.5)
