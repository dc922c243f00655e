"""DoRADense, to_dora_params and dora_interceptor: the linen layer of DoRA.

Every input is random and non-zero. References are built by hand in float64 numpy from the
formula y = x·W′·diag(g) + bias, W′ = W₀ + s·A·B, g = m / ‖W′‖_col.
"""

from __future__ import annotations

import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxbounds.adapters.dora import (
    ADAPTER_PARAM_NAMES,
    BASE_PARAM_NAMES,
    DoRADense,
    dora_interceptor,
    to_dora_params,
)

D_IN, D_HID, D_OUT = 12, 16, 10
RANK, ALPHA = 4, 8.0
SCALE = ALPHA / RANK


def _rel_err(out, ref) -> float:
    out = np.asarray(out, np.float64)
    ref = np.asarray(ref, np.float64)
    assert np.all(np.isfinite(out)), "output has NaN/Inf"
    return float(np.linalg.norm(out - ref) / np.linalg.norm(ref))


def _dora_ref(x, p, scale):
    """Float64 DoRA layer from a DoRA param dict: forms W′ = W₀ + s·A·B explicitly."""
    x = np.asarray(x, np.float64)
    w = np.asarray(p["kernel"], np.float64) + scale * (
        np.asarray(p["lora_a"], np.float64) @ np.asarray(p["lora_b"], np.float64)
    )
    g = np.asarray(p["magnitude"], np.float64) / np.linalg.norm(w, axis=0)
    y = (x @ w) * g
    if "bias" in p:
        y = y + np.asarray(p["bias"], np.float64)
    return y


def _dense_ref(x, p):
    y = np.asarray(x, np.float64) @ np.asarray(p["kernel"], np.float64)
    return y + np.asarray(p["bias"], np.float64) if "bias" in p else y


# --- models --------------------------------------------------------------------------------


class MLP(nn.Module):
    """Auto-named Dense_0, Dense_1, Dense_2 (the last one without bias)."""

    @nn.compact
    def __call__(self, x):
        x = nn.gelu(nn.Dense(D_HID)(x))
        x = nn.tanh(nn.Dense(D_HID)(x))
        return nn.Dense(D_OUT, use_bias=False)(x)


class DoRAMLP(nn.Module):
    """MLP with DoRADense in place of the chosen nn.Dense layers (same names, same params)."""

    adapt: tuple[bool, bool, bool] = (True, True, True)

    @nn.compact
    def __call__(self, x):
        def layer(i, features, **kw):
            if self.adapt[i]:
                return DoRADense(features, rank=RANK, alpha=ALPHA, name=f"Dense_{i}", **kw)
            return nn.Dense(features, name=f"Dense_{i}", **kw)

        x = nn.gelu(layer(0, D_HID)(x))
        x = nn.tanh(layer(1, D_HID)(x))
        return layer(2, D_OUT, use_bias=False)(x)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(D_HID, name="up")(x))
        return x + nn.Dense(x.shape[-1], name="down")(h)


class Net(nn.Module):
    """Named submodules: embed / block_0 / block_1 (each with up, down) / head."""

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(D_HID, name="embed")(x)
        x = Block(name="block_0")(x)
        x = Block(name="block_1")(x)
        return nn.Dense(D_OUT, name="head")(x)


def _perturb_adapter(params, seed, b_std=0.3, m_std=0.1):
    """Random non-zero lora_b and a jittered magnitude in every adapted layer (numpy: no
    compilation per leaf shape)."""
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(flax.core.unfreeze(params))
    out = {}
    for path, leaf in sorted(flat.items()):
        if path[-1] == "lora_b":
            leaf = (b_std * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
        elif path[-1] == "magnitude":
            jitter = 1.0 + m_std * rng.standard_normal(leaf.shape)
            leaf = (np.asarray(leaf, np.float64) * jitter).astype(leaf.dtype)
        out[path] = leaf
    return traverse_util.unflatten_dict(out)


def _x(seed, *shape):
    """Random non-zero float32 inputs from numpy (jax.random would compile per shape)."""
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _key(seed):
    """An RBG key: it compiles several times faster than threefry on CPU, and every function
    under test only passes keys on (a threefry key is used in test_to_dora_params_keys)."""
    return jax.random.key(seed, impl="rbg")


def _random_like(shapes, seed, std=0.3):
    """Random non-zero arrays for an ``eval_shape`` tree (no init compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda s: (std * rng.standard_normal(s.shape)).astype(s.dtype), flax.core.unfreeze(shapes)
    )


def _init(module, key, x):
    """Jitted init: one compilation instead of dozens of eager ops (keeps the file fast)."""
    return flax.core.unfreeze(jax.jit(module.init)(key, x))


def _apply(module, params, x):
    """Jitted apply through a fresh function, so that no trace is shared between calls made
    inside and outside ``dora_interceptor`` (a reused jitted function keeps its trace)."""
    return jax.jit(lambda p, v: module.apply(p, v))(params, x)


@pytest.fixture(scope="module")
def layer_params():
    """One DoRADense(D_OUT, rank=RANK) init, shared (alpha etc. do not change the params)."""
    return _init(DoRADense(D_OUT, rank=RANK), _key(1), _x(0, 3, D_IN))


@pytest.fixture(scope="module")
def mlp_params():
    x = _x(0, 5, D_IN)
    # random non-zero kernels and biases, so that the bias path is exercised too
    return _random_like(jax.eval_shape(MLP().init, _key(1), x), seed=1)


# --- DoRADense ------------------------------------------------------------------------------


def test_dora_dense_param_names_and_shapes(layer_params):
    x = _x(0, 3, D_IN)
    params = layer_params["params"]
    shapes = {k: tuple(v.shape) for k, v in params.items()}
    assert shapes == {
        "kernel": (D_IN, D_OUT),
        "bias": (D_OUT,),
        "kernel_sq_norm": (D_OUT,),
        "lora_a": (D_IN, RANK),
        "lora_b": (RANK, D_OUT),
        "magnitude": (D_OUT,),
    }
    assert set(BASE_PARAM_NAMES) | set(ADAPTER_PARAM_NAMES) == set(shapes)
    assert not np.any(np.asarray(params["lora_b"]))  # B = 0 at init
    assert np.all(np.asarray(params["lora_a"]) != 0)
    k = np.asarray(params["kernel"], np.float64)
    np.testing.assert_allclose(params["kernel_sq_norm"], (k * k).sum(0), rtol=1e-6)
    np.testing.assert_allclose(params["magnitude"], np.linalg.norm(k, axis=0), rtol=1e-6)
    no_bias = jax.eval_shape(DoRADense(D_OUT, rank=RANK, use_bias=False).init, _key(1), x)
    assert "bias" not in no_bias["params"]


def test_dora_dense_kernel_init_matches_nn_dense():
    """Same init key -> same kernel as nn.Dense: a true drop-in, not just the same shapes."""
    x = _x(0, 3, D_IN)
    ref = _init(nn.Dense(D_OUT), _key(7), x)["params"]
    got = _init(DoRADense(D_OUT, rank=RANK), _key(7), x)["params"]
    np.testing.assert_array_equal(got["kernel"], ref["kernel"])
    np.testing.assert_array_equal(got["bias"], ref["bias"])


@pytest.mark.parametrize("lead", [(7,), (2, 3), (2, 1, 3)])
def test_dora_dense_equals_dense_at_init(layer_params, lead):
    x = _x(len(lead), *lead, D_IN)
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA)
    params = flax.core.unfreeze(layer_params)
    params["params"]["bias"] = _x(9, D_OUT)  # non-zero bias
    dense_params = {"params": {k: params["params"][k] for k in ("kernel", "bias")}}
    y = _apply(layer, params, x)
    y_dense = _apply(nn.Dense(D_OUT), dense_params, x)
    assert y.shape == (*lead, D_OUT) and y.dtype == jnp.float32
    np.testing.assert_allclose(y, y_dense, rtol=1e-6, atol=1e-6)


def test_dora_dense_bf16_init_close_to_dense():
    """bfloat16 params: the magnitude stays float32, so g = m / n is exactly 1 at init and
    the output matches nn.Dense to bf16 tolerance (1e-2 relative, DESIGN.md)."""
    x = jnp.asarray(_x(16, 8, D_IN), jnp.bfloat16)
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA, param_dtype=jnp.bfloat16)
    params = _init(layer, _key(17), x)
    assert params["params"]["magnitude"].dtype == jnp.float32
    assert params["params"]["kernel"].dtype == jnp.bfloat16
    dense = {"params": {k: params["params"][k] for k in ("kernel", "bias")}}
    y = _apply(layer, params, x)
    y_dense = _apply(nn.Dense(D_OUT, param_dtype=jnp.bfloat16), dense, x)
    assert y.dtype == jnp.bfloat16
    assert _rel_err(y, y_dense) < 1e-2


def test_dora_dense_matches_float64_reference_after_perturbation(layer_params):
    x = _x(3, 2, 5, D_IN)
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA)
    params = _perturb_adapter(layer_params, 4)
    y = _apply(layer, params, x)
    ref = _dora_ref(x, params["params"], SCALE)
    assert _rel_err(y, ref) < 1e-5
    # and it really differs from the base layer now
    assert _rel_err(_dense_ref(x, params["params"]), ref) > 1e-2


def test_dora_dense_rslora_scale(layer_params):
    x = _x(5, 4, D_IN)
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA, use_rslora=True)
    params = _perturb_adapter(layer_params, 7)
    ref = _dora_ref(x, params["params"], ALPHA / RANK**0.5)
    assert _rel_err(_apply(layer, params, x), ref) < 1e-5


def test_dora_dense_base_gets_exactly_zero_gradient(layer_params):
    x = _x(8, 6, D_IN)
    target = _x(80, 6, D_OUT)
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA)
    params = _perturb_adapter(layer_params, 9)

    def loss(p):
        return jnp.mean((layer.apply(p, x) - target) ** 2)

    grads = jax.jit(jax.grad(loss))(params)["params"]
    for name in BASE_PARAM_NAMES:
        np.testing.assert_array_equal(grads[name], np.zeros_like(grads[name]), err_msg=name)
    for name in ADAPTER_PARAM_NAMES:
        g = np.asarray(grads[name])
        assert np.all(np.isfinite(g)) and np.any(g != 0), name
    # also with the exact (non-detached) norm gradient
    exact = DoRADense(D_OUT, rank=RANK, alpha=ALPHA, detach_norm=False)
    loss_exact = lambda p: jnp.mean((exact.apply(p, x) - target) ** 2)
    grads = jax.jit(jax.grad(loss_exact))(params)["params"]
    for name in BASE_PARAM_NAMES:
        np.testing.assert_array_equal(grads[name], np.zeros_like(grads[name]), err_msg=name)


def test_dora_dense_under_jit_and_vmap(layer_params):
    xs = _x(10, 4, 3, D_IN)  # vmap over the leading axis
    layer = DoRADense(D_OUT, rank=RANK, alpha=ALPHA)
    params = _perturb_adapter(layer_params, 11)
    eager = layer.apply(params, xs)
    jitted = jax.jit(layer.apply)(params, xs)
    vmapped = jax.vmap(layer.apply, in_axes=(None, 0))(params, xs)
    jit_vmap = jax.jit(jax.vmap(layer.apply, in_axes=(None, 0)))(params, xs)
    ref = _dora_ref(xs, params["params"], SCALE)
    for y in (eager, jitted, vmapped, jit_vmap):
        assert y.shape == (4, 3, D_OUT)
        assert _rel_err(y, ref) < 1e-5
    # vmap over params too: a stack of adapters applied to one batch
    other = _perturb_adapter(params, 12)
    stacked = jax.tree.map(lambda *p: jnp.stack(p), params, other)
    ys = jax.vmap(layer.apply, in_axes=(0, None))(stacked, xs[0])
    for i in range(2):
        p_i = jax.tree.map(lambda p, i=i: p[i], stacked)
        assert _rel_err(ys[i], _dora_ref(xs[0], p_i["params"], SCALE)) < 1e-5


@pytest.mark.parametrize("rank", [0, -1, min(D_IN, D_OUT) + 1, 2.0])
def test_dora_dense_bad_rank(rank):
    x = _x(13, 2, D_IN)
    with pytest.raises(ValueError, match="rank"):
        _init(DoRADense(D_OUT, rank=rank), _key(0), x)


def test_dora_dense_full_rank_ok():
    x = _x(14, 2, D_IN)
    r = min(D_IN, D_OUT)
    params = jax.eval_shape(DoRADense(D_OUT, rank=r).init, _key(0), x)
    assert params["params"]["lora_a"].shape == (D_IN, r)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_dora_dense_bad_alpha(alpha):
    x = _x(15, 2, D_IN)
    with pytest.raises(ValueError, match="alpha"):
        _init(DoRADense(D_OUT, rank=RANK, alpha=alpha), _key(0), x)


# --- to_dora_params + dora_interceptor ------------------------------------------------------


def _dense_layers(params):
    return {
        "/".join(path[:-1])
        for path in traverse_util.flatten_dict(flax.core.unfreeze(params))
        if path[-1] == "kernel"
    }


def _check_converted(orig, conv, adapted: set[str]):
    """Adapted layers gained the four leaves with the right shapes; base leaves untouched."""
    fo = traverse_util.flatten_dict(flax.core.unfreeze(orig))
    fc = traverse_util.flatten_dict(flax.core.unfreeze(conv))
    for path, leaf in fo.items():  # every original leaf survives, unchanged
        np.testing.assert_array_equal(fc[path], leaf)
    new = {p: v for p, v in fc.items() if p not in fo}
    layers = {"/".join(p[:-1]) for p in new}
    assert layers == adapted
    for layer in adapted:
        path = tuple(layer.split("/"))
        kernel = np.asarray(fo[(*path, "kernel")], np.float64)
        d_in, d_out = kernel.shape
        assert {p[-1] for p in new if p[:-1] == path} == {
            "kernel_sq_norm", "lora_a", "lora_b", "magnitude",
        }
        assert fc[(*path, "lora_a")].shape == (d_in, RANK)
        assert fc[(*path, "lora_b")].shape == (RANK, d_out)
        assert not np.any(np.asarray(fc[(*path, "lora_b")]))
        np.testing.assert_allclose(fc[(*path, "magnitude")], np.linalg.norm(kernel, axis=0),
                                   rtol=1e-6)
        np.testing.assert_allclose(fc[(*path, "kernel_sq_norm")], (kernel**2).sum(0), rtol=1e-6)


@pytest.mark.parametrize(
    "include, adapted",
    [
        (None, {"params/Dense_0", "params/Dense_1", "params/Dense_2"}),
        ("Dense_[02]", {"params/Dense_0", "params/Dense_2"}),
        (["Dense_1$"], {"params/Dense_1"}),
        (lambda path: path.endswith("Dense_2"), {"params/Dense_2"}),
        (re.compile("Dense_0|Dense_1").search, {"params/Dense_0", "params/Dense_1"}),
    ],
)
def test_to_dora_params_selects_layers(mlp_params, include, adapted):
    conv = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(2),
                          include=include)
    _check_converted(mlp_params, conv, adapted)


def test_to_dora_params_named_submodules():
    x = _x(20, 4, D_IN)
    params = _random_like(jax.eval_shape(Net().init, _key(21), x), seed=21)
    assert _dense_layers(params) == {
        "params/embed", "params/head", "params/block_0/up", "params/block_0/down",
        "params/block_1/up", "params/block_1/down",
    }
    conv = to_dora_params(params, rank=RANK, alpha=ALPHA, key=_key(22),
                          include=r"block_\d+/(up|down)")
    _check_converted(params, conv, {"params/block_0/up", "params/block_0/down",
                                    "params/block_1/up", "params/block_1/down"})
    conv = to_dora_params(params, rank=RANK, alpha=ALPHA, key=_key(22),
                          include=lambda p: "block_1" in p)
    _check_converted(params, conv, {"params/block_1/up", "params/block_1/down"})
    # distinct layers get distinct lora_a
    a0, a1 = conv["params"]["block_1"]["up"]["lora_a"], conv["params"]["block_1"]["down"]["lora_a"]
    assert a0.shape == a1.shape and not np.array_equal(a0, a1)


def test_to_dora_params_inner_tree_and_frozendict(mlp_params):
    inner = to_dora_params(mlp_params["params"], rank=RANK, alpha=ALPHA, key=_key(2),
                           include="Dense_1")
    assert set(inner["Dense_1"]) == {"kernel", "bias", "kernel_sq_norm", "lora_a", "lora_b",
                                     "magnitude"}
    assert set(inner["Dense_0"]) == {"kernel", "bias"}
    frozen = to_dora_params(flax.core.freeze(mlp_params), rank=RANK, alpha=ALPHA,
                            key=_key(2))
    assert isinstance(frozen, flax.core.FrozenDict)
    # the input is not modified in place
    assert set(mlp_params["params"]["Dense_1"]) == {"kernel", "bias"}


def test_interceptor_at_init_equals_original(mlp_params):
    x = _x(30, 2, 7, D_IN)
    model = MLP()
    y0 = _apply(model, mlp_params, x)
    conv = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(31))
    with dora_interceptor(alpha=ALPHA):
        y = model.apply(conv, x)
        y_jit = _apply(model, conv, x)
    np.testing.assert_allclose(y, y0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y_jit, y0, rtol=1e-6, atol=1e-6)
    # without the interceptor the extra params are ignored: the plain model
    np.testing.assert_allclose(_apply(model, conv, x), y0, rtol=1e-6, atol=1e-6)


def _mlp_ref(x, p, adapted, scale):
    """Float64 MLP: DoRA layers where ``adapted``, plain Dense elsewhere."""
    p = p["params"]
    h = np.asarray(x, np.float64)
    for i in range(3):
        layer = p[f"Dense_{i}"]
        h = _dora_ref(h, layer, scale) if adapted[i] else _dense_ref(h, layer)
        if i == 0:  # tanh-approximate gelu, nn.gelu's default
            h = 0.5 * h * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (h + 0.044715 * h**3)))
        elif i == 1:
            h = np.tanh(h)
    return h


@pytest.mark.parametrize("adapted", [(True, True, True), (True, False, True)])
def test_interceptor_and_doradense_match_float64_reference(mlp_params, adapted):
    include = [f"Dense_{i}$" for i in range(3) if adapted[i]]
    conv = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(40),
                          include=include)
    conv = _perturb_adapter(conv, 41)
    x = _x(42, 3, 5, D_IN)
    ref = _mlp_ref(x, conv, adapted, SCALE)
    base = _mlp_ref(x, mlp_params, (False,) * 3, SCALE)
    assert _rel_err(base, ref) > 1e-2  # the perturbation matters

    with dora_interceptor(alpha=ALPHA):
        y_int = _apply(MLP(), conv, x)
    y_dora = _apply(DoRAMLP(adapt=adapted), conv, x)
    assert _rel_err(y_int, ref) < 1e-5
    assert _rel_err(y_dora, ref) < 1e-5
    np.testing.assert_allclose(y_dora, y_int, rtol=1e-6, atol=1e-6)


def test_doradense_model_params_same_tree_as_converted(mlp_params):
    """A model built with DoRADense has exactly the tree that to_dora_params produces."""
    x = _x(43, 2, D_IN)
    conv = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(44))
    fresh = jax.eval_shape(DoRAMLP().init, _key(45), x)
    assert jax.tree.structure(conv) == jax.tree.structure(flax.core.unfreeze(fresh))
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, jnp.dtype(a.dtype)), t)
    assert shapes(conv) == shapes(flax.core.unfreeze(fresh))


def test_interceptor_gradients_freeze_base(mlp_params):
    conv = _perturb_adapter(
        to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(50)), 51
    )
    x = _x(52, 8, D_IN)
    t = _x(53, 8, D_OUT)

    def loss_int(p):
        with dora_interceptor(alpha=ALPHA):
            return jnp.mean((MLP().apply(p, x) - t) ** 2)

    def loss_dora(p):
        return jnp.mean((DoRAMLP().apply(p, x) - t) ** 2)

    g_int = traverse_util.flatten_dict(jax.jit(jax.grad(loss_int))(conv))
    g_dora = traverse_util.flatten_dict(jax.jit(jax.grad(loss_dora))(conv))
    for path, g in g_int.items():
        if path[-1] in BASE_PARAM_NAMES:
            np.testing.assert_array_equal(g, np.zeros_like(g), err_msg=str(path))
        else:
            assert np.any(np.asarray(g) != 0), path
        np.testing.assert_allclose(g, g_dora[path], rtol=1e-5, atol=1e-7, err_msg=str(path))


def test_interceptor_rslora(mlp_params):
    conv = _perturb_adapter(
        to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(60),
                       use_rslora=True),
        61,
    )
    x = _x(62, 4, D_IN)
    with dora_interceptor(alpha=ALPHA, use_rslora=True):
        y = _apply(MLP(), conv, x)
    ref = _mlp_ref(x, conv, (True,) * 3, ALPHA / RANK**0.5)
    assert _rel_err(y, ref) < 1e-5


class KeywordCall(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(D_OUT)(inputs=x)


def test_interceptor_keyword_call():
    x = _x(70, 3, D_IN)
    params = _random_like(jax.eval_shape(KeywordCall().init, _key(71), x), seed=71)
    conv = _perturb_adapter(to_dora_params(params, rank=RANK, alpha=ALPHA, key=_key(72)), 73)
    with dora_interceptor(alpha=ALPHA):
        y = KeywordCall().apply(conv, x)
    assert _rel_err(y, _dora_ref(x, conv["params"]["Dense_0"], SCALE)) < 1e-5


class GeneralProj(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.DenseGeneral(D_OUT, name="proj")(x)


def test_interceptor_never_silently_ignores_a_converted_layer():
    x = _x(74, 3, D_IN)
    params = _random_like(jax.eval_shape(GeneralProj().init, _key(75), x), seed=75)
    conv = _perturb_adapter(to_dora_params(params, rank=RANK, alpha=ALPHA, key=_key(76)), 77)
    with pytest.raises(TypeError, match="DenseGeneral"), dora_interceptor(alpha=ALPHA):
        GeneralProj().apply(conv, x)


# --- to_dora_params: bad input --------------------------------------------------------------


def test_to_dora_params_rank_too_large_for_a_chosen_layer(mlp_params):
    # Dense_2 is [D_HID, D_OUT] = [16, 10]: rank 11 is fine for Dense_1 [16, 16] only.
    ok = to_dora_params(mlp_params, rank=11, alpha=ALPHA, key=_key(0),
                        include="Dense_1")
    assert ok["params"]["Dense_1"]["lora_a"].shape == (D_HID, 11)
    with pytest.raises(ValueError, match=r"rank.*Dense_2"):
        to_dora_params(mlp_params, rank=11, alpha=ALPHA, key=_key(0),
                       include="Dense_[12]")


@pytest.mark.parametrize("rank", [0, -2])
def test_to_dora_params_bad_rank(mlp_params, rank):
    with pytest.raises(ValueError, match="rank"):
        to_dora_params(mlp_params, rank=rank, alpha=ALPHA, key=_key(0))


@pytest.mark.parametrize("alpha", [0.0, -4.0])
def test_to_dora_params_bad_alpha(mlp_params, alpha):
    with pytest.raises(ValueError, match="alpha"):
        to_dora_params(mlp_params, rank=RANK, alpha=alpha, key=_key(0))


@pytest.mark.parametrize("include", ["attention", ["nope", "Dense_9"], lambda p: False])
def test_to_dora_params_include_matches_nothing(mlp_params, include):
    with pytest.raises(ValueError, match="include"):
        to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(0),
                       include=include)


@pytest.mark.parametrize("include", [5, [3], ["Dense_0", None]])
def test_to_dora_params_bad_include_type(mlp_params, include):
    with pytest.raises(TypeError, match="include"):
        to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(0),
                       include=include)


def test_to_dora_params_bad_regex(mlp_params):
    with pytest.raises((TypeError, ValueError), match="include"):
        to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=_key(0),
                       include="Dense_(")


@pytest.mark.parametrize("make_key", [lambda: jax.random.key(3), lambda: jax.random.PRNGKey(3)])
def test_to_dora_params_keys(mlp_params, make_key):
    """Typed threefry keys and legacy uint32 keys both work; the result is deterministic."""
    conv = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=make_key(), include="Dense_0")
    again = to_dora_params(mlp_params, rank=RANK, alpha=ALPHA, key=make_key(), include="Dense_0")
    a = np.asarray(conv["params"]["Dense_0"]["lora_a"])
    np.testing.assert_array_equal(a, again["params"]["Dense_0"]["lora_a"])
    assert np.all(a != 0) and np.all(np.abs(a) <= 1.0 / np.sqrt(D_IN))  # U(+-1/sqrt(d_in))


def test_to_dora_params_no_dense_layers():
    with pytest.raises(ValueError, match="include"):
        to_dora_params({"params": {"scale": jnp.ones(3)}}, rank=1, alpha=1.0,
                       key=_key(0))
