"""Interval bound propagation: every rule, hand-computed bounds, soundness under a worst-case
search (vertices, projected gradient ascent/descent per output, uniform samples on top)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from worst_case import check_box, vertices

from jaxbounds.verify import interval_bounds
from jaxbounds.verify.ibp import (
    UnsupportedPrimitiveError,
    checked_interval_bounds,
    supported_primitives,
)


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _violations(fn, lo, hi, n=2000, key=0, bounds=None, starts=8, steps=30, **kwargs):
    """Violations of the IBP box found by the worst-case search (NaN outputs count)."""
    bounds = bounds or jax.jit(lambda a, b: interval_bounds(fn, a, b, **kwargs))
    out_lo, out_hi = bounds(lo, hi)
    report = check_box(fn, lo, hi, out_lo, out_hi, seed=key, samples=n, starts=starts,
                       steps=steps)
    return report.violations, (out_lo, out_hi)


W = np.random.default_rng(0).normal(size=(6, 4))
K = np.random.default_rng(1).normal(size=(3, 3, 1, 2))


def _conv(x, k):
    return lax.conv_general_dilated(x.reshape(1, 1, 4, 4), k.transpose(3, 2, 0, 1), (1, 1),
                                    "SAME")


# each case: (name, fn on a [6]-vector or [16]-vector, box centre offset)
CASES = {
    "dot_general_const": lambda x: x @ W,
    "dot_general_two_intervals": lambda x: x[:3] @ x[3:].reshape(3, 1),
    "dot_general_batched": lambda x: jnp.einsum("bi,bj->bij", x.reshape(2, 3), x.reshape(2, 3)),
    "conv_const": lambda x: _conv(x[:16], K[..., :1, :] * 1.0),
    "conv_two_intervals": lambda x: _conv(x[:16], x[:18].reshape(3, 3, 1, 2)),
    "add_sub_neg": lambda x: -(x[:3] + x[3:]) - x[::2],
    "mul_const": lambda x: 2.5 * x - 0.5 * x[::-1],
    "mul_intervals": lambda x: x * x[::-1],
    "div_const": lambda x: x / 3.0,
    "div_interval": lambda x: x[:3] / (2.0 + x[3:]),
    "div_straddle": lambda x: 1.0 / x,
    "integer_pow": lambda x: jnp.stack([x**2, x**3, lax.integer_pow(x, 4)]),
    "integer_pow_neg": lambda x: lax.integer_pow(x + 3.0, -1) + lax.integer_pow(x + 3.0, -2),
    "square_abs_sign": lambda x: jnp.stack([jnp.square(x), jnp.abs(x), jnp.sign(x)]),
    "max_min_relu": lambda x: jnp.stack([jnp.maximum(x, x[::-1]), jnp.minimum(x, 0.1),
                                         jax.nn.relu(x)]),
    "select_compare": lambda x: jnp.where(x > 0.1, x, -2 * x) + jnp.where(x[::-1] <= x, 1.0, 0.),
    "eq_ne": lambda x: (x == 0.0).astype(x.dtype) + (x != x[::-1]).astype(x.dtype),
    "monotone": lambda x: jnp.stack([jnp.tanh(x), jax.nn.sigmoid(x), jnp.exp(x),
                                     jax.nn.softplus(x), lax.erf(x), lax.erfc(x)]),
    "log_sqrt": lambda x: jnp.stack([jnp.log(x + 3), jnp.sqrt(x + 3), lax.rsqrt(x + 3),
                                     jnp.log1p(x + 1), jnp.expm1(x)]),
    "structural": lambda x: jnp.concatenate([
        x.reshape(2, 3).T.reshape(-1), jnp.expand_dims(x, 0).squeeze(0),
        jnp.broadcast_to(x, (2, 6)).reshape(-1), x[1:4], lax.dynamic_slice(x, (2,), (3,)),
        jnp.pad(x, 2, constant_values=0.5), x[::-1], x[jnp.array([4, 0, 0])]]),
    "dynamic_update_slice": lambda x: lax.dynamic_update_slice(x, x[:2] * 3, (3,)),
    "convert_element_type": lambda x: x.astype(jnp.float32).astype(jnp.float64),
    "reductions": lambda x: jnp.stack([x.sum(), x.max(), x.min(), 6 * x.mean()]),
    "cumsum_sort_clamp": lambda x: jnp.concatenate([jnp.cumsum(x), jnp.sort(x),
                                                    jnp.clip(x, -0.2, 0.3)]),
    "pooling": lambda x: jnp.concatenate([
        nn.max_pool(x[:16].reshape(1, 4, 4, 1), (2, 2), (2, 2)).reshape(-1),
        nn.avg_pool(x[:16].reshape(1, 4, 4, 1), (2, 2), (1, 1)).reshape(-1),
        -nn.max_pool(-x[:16].reshape(1, 4, 4, 1), (2, 2), (2, 2)).reshape(-1)]),
    "pjit_custom_jvp": lambda x: jax.jit(lambda y: jax.nn.relu(y) * 2)(x) + jax.nn.gelu(x),
    "custom_vjp": lambda x: _clip_grad(x) + 1.0,
    "remat": lambda x: jax.checkpoint(lambda y: jnp.tanh(y) @ W)(x),
    "cond": lambda x: lax.cond(x[0] > 0, jnp.exp, jnp.tanh, x),
    "cond_const": lambda x: lax.cond(True, jnp.exp, jnp.tanh, x),
    "scan": lambda x: lax.scan(lambda c, a: (jnp.tanh(c + a), c * a), x[0], x[1:])[1],
    "softmax": lambda x: jnp.concatenate([jax.nn.softmax(x), jax.nn.log_softmax(x)]),
    "erf_gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),
    "pow": lambda x: (x + 3.0) ** (x[::-1] + 1.0),
    "logic": lambda x: ((x > 0) & (x[::-1] < 0.2) | ~(x > 0.3)).astype(x.dtype),
}


@jax.custom_vjp
def _clip_grad(x):
    return jnp.tanh(x)


_clip_grad.defvjp(lambda x: (jnp.tanh(x), None), lambda _, g: (jnp.clip(g, -1, 1),))


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_is_sound_on_samples(name):
    fn = CASES[name]
    size = 18 if "conv" in name or name == "pooling" else 6
    centre = jnp.asarray(np.random.default_rng(3).normal(size=size) * 0.5)
    bounds = jax.jit(lambda a, b: interval_bounds(fn, a, b))  # compiled once per case
    for radius in (0.0, 0.05, 0.4):
        n_bad, (lo, hi) = _violations(fn, centre - radius, centre + radius, bounds=bounds)
        assert n_bad == 0, (name, radius)
        for a, b in zip(jax.tree.leaves(lo), jax.tree.leaves(hi), strict=True):
            assert bool(jnp.all(a <= b)), name


def test_required_primitives_have_rules():
    needed = {
        "dot_general", "conv_general_dilated", "add", "sub", "neg", "mul", "div",
        "integer_pow", "max", "select_n", "gt", "lt", "ge", "le", "eq", "ne", "tanh",
        "logistic", "exp", "log", "erf", "reshape", "squeeze", "expand_dims",
        "broadcast_in_dim", "transpose", "slice", "dynamic_slice", "concatenate",
        "convert_element_type", "reduce_sum", "reduce_max", "reduce_window_sum",
        "reduce_window_max", "reduce_window", "jit", "custom_jvp_call", "custom_vjp_call",
    }
    assert needed <= set(supported_primitives())


def test_monotone_and_linear_rules_are_tight():
    lo, hi = jnp.array([-1.0, 0.5]), jnp.array([0.5, 2.0])
    out_lo, out_hi = interval_bounds(jnp.tanh, lo, hi)
    np.testing.assert_allclose(out_lo, jnp.tanh(lo), rtol=1e-14)
    np.testing.assert_allclose(out_hi, jnp.tanh(hi), rtol=1e-14)
    w = jnp.array([[1.0, -2.0], [3.0, 0.5]])
    out_lo, out_hi = interval_bounds(lambda x: w @ x, lo, hi)
    corners = jnp.array([[a, b] for a in (lo[0], hi[0]) for b in (lo[1], hi[1])]) @ w.T
    np.testing.assert_allclose(out_lo, corners.min(0), rtol=1e-13)  # linear map: exact
    np.testing.assert_allclose(out_hi, corners.max(0), rtol=1e-13)
    # interval x interval products are exact elementwise
    out_lo, out_hi = interval_bounds(lambda x: x[0] * x[1], lo, hi)
    np.testing.assert_allclose([out_lo, out_hi], [-2.0, 1.0], rtol=1e-14)


def test_hand_computed_two_layer_network():
    # y = w2 · relu(W1 x + b1) + b2 on x ∈ [-1, 1]^2
    w1 = jnp.array([[1.0, 1.0], [1.0, -1.0]])
    b1 = jnp.array([0.0, 1.0])
    w2 = jnp.array([[1.0, -1.0]])
    b2 = jnp.array([0.5])

    def net(x):
        return w2 @ jax.nn.relu(w1 @ x + b1) + b2

    lo, hi = interval_bounds(net, -jnp.ones(2), jnp.ones(2), outward=False)
    # layer 1: [-2, 2] and [-1, 3]; relu: [0, 2], [0, 3]; layer 2: [0 - 3, 2 - 0] + 0.5
    np.testing.assert_array_equal(lo, [-2.5])
    np.testing.assert_array_equal(hi, [2.5])
    lo_o, hi_o = interval_bounds(net, -jnp.ones(2), jnp.ones(2))
    assert lo_o[0] < -2.5 and hi_o[0] > 2.5  # outward rounding moves the bounds out
    np.testing.assert_allclose([lo_o[0], hi_o[0]], [-2.5, 2.5], rtol=1e-13)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        x = nn.gelu(nn.Dense(32)(x))
        x = nn.tanh(nn.Dense(16)(x))
        return nn.log_softmax(nn.Dense(5)(x))


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2))(x))
        x = nn.avg_pool(x, (2, 2), (1, 1), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(4)(nn.sigmoid(nn.Dense(8)(x)))


@pytest.mark.parametrize("model,shape", [(_MLP(), (12,)), (_CNN(), (1, 8, 8, 1))])
def test_flax_apply_worst_case_search_zero_violations(model, shape):
    """Every vertex (d = 12) or projected gradient ascent and descent on each output (d = 64),
    plus 2·10⁴ uniform samples: 0 violations. Coverage (found range / bound range) is printed;
    IBP through a deep net is loose, so it is well below 1."""
    key = jax.random.key(11)
    x0 = jax.random.uniform(key, shape, jnp.float64)
    params = model.init(jax.random.key(2), x0)

    def fn(x):
        return model.apply(params, x)

    eps = 0.05
    lo, hi = jnp.clip(x0 - eps, 0, 1), jnp.clip(x0 + eps, 0, 1)
    out_lo, out_hi = jax.jit(lambda a, b: interval_bounds(fn, a, b))(lo, hi)
    report = check_box(fn, lo, hi, out_lo, out_hi, seed=5, samples=20_000, starts=16, steps=60,
                       label=type(model).__name__)
    assert report.violations == 0
    assert bool(jnp.all(jnp.isfinite(out_lo) & jnp.isfinite(out_hi)))
    assert report.coverage > 0.0  # the box is not trivially wide


@pytest.mark.parametrize("activation", [None, jnp.tanh, jax.nn.sigmoid])
def test_one_layer_bounds_are_attained(activation):
    """One affine layer (then a monotone activation) is exact for a box: the search reaches
    the bound, coverage >= 1 - 1e-6, and the vertex range equals it."""
    rng = np.random.default_rng(17)
    w, b = jnp.asarray(rng.normal(size=(10, 5))), jnp.asarray(rng.normal(size=5))
    act = activation or (lambda z: z)

    def fn(x):
        return act(x @ w + b)

    x0 = jnp.asarray(rng.normal(size=10))
    lo, hi = x0 - 0.3, x0 + 0.7
    out_lo, out_hi = interval_bounds(fn, lo, hi)
    report = check_box(fn, lo, hi, out_lo, out_hi, label=f"one layer {activation}")
    assert report.violations == 0
    assert report.coverage >= 1 - 1e-6
    ys = jax.vmap(fn)(vertices(lo, hi))
    np.testing.assert_allclose([out_lo, out_hi], [ys.min(0), ys.max(0)], rtol=1e-12)


def test_jacobian_graph_bounds_are_sound():
    model = _MLP()
    x0 = jnp.linspace(0.1, 0.9, 12)
    params = model.init(jax.random.key(0), x0)
    for jac in (jax.jacrev, jax.jacfwd):
        fn = jac(lambda x: model.apply(params, x))
        n_bad, (lo, hi) = _violations(fn, x0 - 0.02, x0 + 0.02, n=500, starts=2, steps=20)
        assert n_bad == 0
        assert lo.shape == (5, 12)


def test_pytree_box_and_outputs_and_constants():
    def fn(tree, scale):
        return {"sum": tree["a"].sum() * scale + tree["b"][0], "const": jnp.arange(3.0)}

    lo = {"a": jnp.zeros(3), "b": jnp.array([1.0])}
    hi = {"a": jnp.ones(3), "b": jnp.array([2.0])}
    out_lo, out_hi = interval_bounds(fn, lo, hi, 2.0)
    np.testing.assert_allclose([out_lo["sum"], out_hi["sum"]], [1.0, 8.0], rtol=1e-13)
    np.testing.assert_array_equal(out_lo["const"], jnp.arange(3.0))
    np.testing.assert_array_equal(out_hi["const"], jnp.arange(3.0))


def test_float32_outward_rounding_encloses_the_float64_value():
    with jax.enable_x64(True):
        w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
        x = np.random.default_rng(1).normal(size=64).astype(np.float32)

        def fn(v):
            return jnp.tanh(w @ jnp.exp(v * 0.3)) @ w

        lo, hi = interval_bounds(fn, jnp.asarray(x), jnp.asarray(x))  # a point box
        exact = fn(jnp.asarray(x, jnp.float64))  # weights promoted to float64
        assert lo.dtype == jnp.float32
        assert bool(jnp.all((lo <= exact) & (exact <= hi)))
        lo_n, hi_n = interval_bounds(fn, jnp.asarray(x), jnp.asarray(x), outward=False)
        assert int(jnp.sum((lo_n > exact) | (exact > hi_n))) > 0  # the rounding is real


def test_unsupported_primitive_is_named():
    with pytest.raises(UnsupportedPrimitiveError, match="'sin'"):
        interval_bounds(jnp.sin, jnp.zeros(3), jnp.ones(3))
    with pytest.raises(UnsupportedPrimitiveError, match="dynamic_slice"):
        interval_bounds(lambda x: lax.dynamic_slice(x, (x[0].astype(int),), (1,)),
                        jnp.zeros(3), jnp.ones(3))
    # a constant sin is evaluated as a point, not rejected
    out_lo, out_hi = interval_bounds(lambda x: x + jnp.sin(1.0), jnp.zeros(1), jnp.ones(1))
    assert out_lo[0] <= jnp.sin(1.0) and out_hi[0] >= 1 + jnp.sin(1.0) - 1e-12


def test_bad_input():
    with pytest.raises(ValueError, match="lower must be <= upper.*index \\(1,\\)"):
        interval_bounds(jnp.tanh, jnp.array([0.0, 2.0]), jnp.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="same shape.*\\(2,\\) and \\(3,\\)"):
        interval_bounds(jnp.tanh, jnp.zeros(2), jnp.ones(3))
    with pytest.raises(TypeError, match="lower must have a floating dtype, got int"):
        interval_bounds(jnp.tanh, jnp.zeros(2, int), jnp.ones(2, int))
    with pytest.raises(ValueError, match="NaN"):
        interval_bounds(jnp.tanh, jnp.array([jnp.nan]), jnp.ones(1))
    with pytest.raises(ValueError, match="tree structure"):
        interval_bounds(jnp.tanh, {"a": jnp.zeros(1)}, jnp.ones(1))
    with pytest.raises(TypeError, match="fn must be callable"):
        interval_bounds(3.0, jnp.zeros(1), jnp.ones(1))
    # traced: NaN instead of an exception; the checked variant raises
    lo, hi = jax.jit(lambda a, b: interval_bounds(jnp.tanh, a, b))(jnp.ones(2), jnp.zeros(2))
    assert bool(jnp.all(jnp.isnan(lo)) & jnp.all(jnp.isnan(hi)))
    lo, hi = checked_interval_bounds(jnp.tanh, jnp.zeros(2), jnp.ones(2))
    np.testing.assert_allclose(hi, jnp.tanh(1.0), rtol=1e-13)
    with pytest.raises(Exception, match="lower must be <= upper"):
        checked_interval_bounds(jnp.tanh, jnp.ones(2), jnp.zeros(2))
