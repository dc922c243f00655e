"""CROWN: IBP ⊇ CROWN ⊇ samples, and exact (MILP) ⊆ CROWN ⊆ IBP on tiny ReLU nets."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp

from jaxbounds.verify import crown_bounds, interval_bounds


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _random_mlp(rng, sizes):
    return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
            for i, o in zip(sizes[:-1], sizes[1:], strict=True)]


def _mlp_fn(layers):
    def fn(x):
        for k, (w, b) in enumerate(layers):
            x = jnp.asarray(w) @ x + jnp.asarray(b)
            if k < len(layers) - 1:
                x = jax.nn.relu(x)
        return x

    return fn


def _samples(key, lo, hi, n):
    u = jax.random.uniform(key, (n, *lo.shape), dtype=lo.dtype)
    return jnp.concatenate([lo + u * (hi - lo), lo[None], hi[None]])


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(nn.relu(nn.Dense(10)(x)))


def _check_nested(fn, lo, hi, n=20_000, **kwargs):
    ibp_lo, ibp_hi = interval_bounds(fn, lo, hi)
    c_lo, c_hi = jax.jit(lambda a, b: crown_bounds(fn, a, b, **kwargs))(lo, hi)
    assert bool(jnp.all(ibp_lo <= c_lo)) and bool(jnp.all(c_hi <= ibp_hi))
    ys = jax.jit(jax.vmap(fn))(_samples(jax.random.key(1), lo, hi, n))
    assert int(jnp.sum((ys < c_lo) | (ys > c_hi))) == 0
    return (ibp_lo, ibp_hi), (c_lo, c_hi)


@pytest.mark.parametrize("seed", range(2))
def test_random_mlp_ibp_contains_crown_contains_samples(seed):
    rng = np.random.default_rng(seed)
    fn = _mlp_fn(_random_mlp(rng, [6, 32, 32, 16, 4]))
    x0 = jnp.asarray(rng.uniform(size=6))
    ibp, crown = _check_nested(fn, x0 - 0.1, x0 + 0.1)
    # on average CROWN is much tighter
    assert float(jnp.sum(crown[1] - crown[0])) < 0.9 * float(jnp.sum(ibp[1] - ibp[0]))


def test_cnn_flax_apply_nested():
    model = _CNN()
    x0 = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), jnp.float64)
    params = model.init(jax.random.key(1), x0)
    _check_nested(lambda x: model.apply(params, x), x0 - 0.03, x0 + 0.03, n=10_000)


def test_residual_and_spec():
    rng = np.random.default_rng(5)
    w1, w2, w3 = (rng.normal(size=(8, 8)) / 3 for _ in range(3))

    def fn(x):
        h = x + jax.nn.relu(w1 @ x)
        return w3 @ (h + jax.nn.relu(w2 @ h))

    x0 = jnp.asarray(rng.uniform(size=8))
    lo, hi = x0 - 0.1, x0 + 0.1
    _check_nested(fn, lo, hi)
    spec = jnp.asarray(np.eye(8)[:3] - np.eye(8)[3])  # margins z_j - z_3
    s_lo, s_hi = crown_bounds(fn, lo, hi, spec=spec)
    ys = jax.vmap(lambda x: spec @ fn(x))(_samples(jax.random.key(2), lo, hi, 20_000))
    assert int(jnp.sum((ys < s_lo) | (ys > s_hi))) == 0
    o_lo, o_hi = crown_bounds(fn, lo, hi)
    naive_lo = spec.clip(0) @ o_lo + spec.clip(None, 0) @ o_hi  # spec applied after the fact
    assert bool(jnp.all(s_lo >= naive_lo - 1e-12))
    assert float(jnp.sum(s_lo - naive_lo)) > 0


def test_linear_network_is_exact():
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(5, 4)), rng.normal(size=(3, 5))

    def fn(x):
        return w2 @ (w1 @ x + 1.0)

    lo, hi = -jnp.ones(4), jnp.ones(4)
    c_lo, c_hi = crown_bounds(fn, lo, hi)
    a = w2 @ w1
    np.testing.assert_allclose(c_hi, np.abs(a).sum(1) + w2.sum(1), rtol=1e-12)
    np.testing.assert_allclose(c_lo, -np.abs(a).sum(1) + w2.sum(1), rtol=1e-12)


def _milp_range(layers, lo, hi, pre_bounds, j, sense):
    """Exact min (sense=+1) or max (sense=-1) of output j by a big-M MIP; returns x*."""
    n_in = lo.size
    # variables: x, then per hidden layer (z, a, d)
    sizes = [w.shape[0] for w, _ in layers[:-1]]
    n_var = n_in + sum(3 * s for s in sizes)
    rows, lbs, ubs = [], [], []
    integrality = np.zeros(n_var)
    var_lo = np.full(n_var, -np.inf)
    var_hi = np.full(n_var, np.inf)
    var_lo[:n_in], var_hi[:n_in] = lo, hi
    prev = np.arange(n_in)
    offset = n_in
    for (w, b), s, (l, u) in zip(layers[:-1], sizes, pre_bounds, strict=True):
        z, a, d = (offset + np.arange(s), offset + s + np.arange(s), offset + 2 * s + np.arange(s))
        offset += 3 * s
        integrality[d] = 1
        var_lo[d], var_hi[d] = 0, 1
        var_lo[a] = 0
        for i in range(s):
            row = np.zeros(n_var)
            row[z[i]] = 1
            row[prev] = -w[i]
            rows.append(row), lbs.append(b[i]), ubs.append(b[i])  # z = W a_prev + b
            def add(coefs, lb, ub):
                r = np.zeros(n_var)
                for k, v in coefs:
                    r[k] += v
                rows.append(r), lbs.append(lb), ubs.append(ub)
            add([(a[i], 1), (z[i], -1)], 0, np.inf)  # a >= z
            add([(a[i], 1), (z[i], -1), (d[i], -l[i])], -np.inf, -l[i])  # a <= z - l(1-d)
            add([(a[i], 1), (d[i], -u[i])], -np.inf, 0)  # a <= u d
        prev = a
    w, b = layers[-1]
    c = np.zeros(n_var)
    c[prev] = sense * w[j]
    res = milp(c, constraints=LinearConstraint(np.array(rows), lbs, ubs),
               integrality=integrality, bounds=Bounds(var_lo, var_hi))
    assert res.status == 0, res.message
    return res.x[:n_in], sense * res.fun + b[j]


@pytest.mark.parametrize("seed", range(3))
def test_exact_milp_range_inside_crown_inside_ibp(seed):
    rng = np.random.default_rng(100 + seed)
    layers = _random_mlp(rng, [3, 6, 5, 2])
    fn = _mlp_fn(layers)
    x0 = rng.uniform(size=3)
    lo, hi = x0 - 0.3, x0 + 0.3
    # big-M constants: IBP pre-activation bounds (valid, so the MIP is exact)
    pre_bounds = []
    for k in range(len(layers) - 1):
        sub = _mlp_fn(layers[: k + 1])
        l, u = interval_bounds(sub, jnp.asarray(lo), jnp.asarray(hi))
        pre_bounds.append((np.asarray(l) - 1e-9, np.asarray(u) + 1e-9))
    ibp_lo, ibp_hi = interval_bounds(fn, jnp.asarray(lo), jnp.asarray(hi))
    c_lo, c_hi = crown_bounds(fn, jnp.asarray(lo), jnp.asarray(hi))
    for j in range(2):
        x_min, v_min = _milp_range(layers, lo, hi, pre_bounds, j, +1)
        x_max, v_max = _milp_range(layers, lo, hi, pre_bounds, j, -1)
        # the optimisers are real inputs: their outputs are attained values
        f_min, f_max = float(fn(jnp.asarray(x_min))[j]), float(fn(jnp.asarray(x_max))[j])
        np.testing.assert_allclose([f_min, f_max], [v_min, v_max], atol=1e-6)
        assert ibp_lo[j] <= c_lo[j] <= f_min
        assert f_max <= c_hi[j] <= ibp_hi[j]


def test_errors():
    with pytest.raises(ValueError, match="'tanh'"):
        crown_bounds(jnp.tanh, jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="'mul'"):
        crown_bounds(lambda x: x * x, jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="lower must be <= upper"):
        crown_bounds(jax.nn.relu, jnp.ones(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="spec must have shape"):
        crown_bounds(jax.nn.relu, jnp.zeros(2), jnp.ones(2), spec=jnp.ones((2, 3)))
