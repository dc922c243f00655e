"""Local Lipschitz bounds (jaxbounds.verify.local_lipschitz): soundness against 10⁴ sampled
Jacobians in float64, lower ≤ upper, exactness on linear maps, convergence as ε → 0, and the
comparison with the naive global bound."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.verify import local_lipschitz as LL


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def random_mlp(seed, sizes=(6, 16, 16, 3)):
    rng = np.random.default_rng(seed)
    ws = [rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]) for i in range(3)]
    bs = [0.3 * rng.normal(size=sizes[i + 1]) for i in range(3)]
    x0 = rng.normal(size=sizes[0])
    return LL.ReluMLP(ws, bs), jnp.asarray(x0)


def sampled_jacobians(fn, x0, eps, key, num=10_000):
    """J(x) [num, m, n] at 10⁴ points of the box: uniform, vertices, and points near x0."""
    n = x0.size
    k1, k2, k3 = jax.random.split(key, 3)
    uniform = jax.random.uniform(k1, (num // 2, n), jnp.float64, -1.0, 1.0)
    vertex = jnp.where(jax.random.bernoulli(k2, 0.5, (num // 4, n)), 1.0, -1.0)
    near = jax.random.uniform(k3, (num - num // 2 - num // 4, n), jnp.float64, -0.05, 0.05)
    points = x0.ravel() + eps * jnp.concatenate([uniform, vertex, near])
    jac = jax.vmap(jax.jacrev(lambda y: jnp.ravel(fn(y.reshape(x0.shape)))))(points)
    return np.asarray(jac)


def norms_of(jac, norm):
    if norm == "inf":
        return np.abs(jac).sum(axis=2).max(axis=1)
    if norm == "1":
        return np.abs(jac).sum(axis=1).max(axis=1)
    return np.linalg.norm(jac, ord=2, axis=(1, 2))


def sampled_norms(fn, x0, eps, key, norm="inf", num=10_000):
    return norms_of(sampled_jacobians(fn, x0, eps, key, num), norm)


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_relu_mlp_sound_lower_below_upper_and_below_naive(eps):
    mlp, x0 = random_mlp(0)
    linear = float(LL.local_lipschitz_upper(mlp, x0, eps))
    interval = float(LL.local_lipschitz_upper(mlp, x0, eps, method="interval"))
    lower = float(LL.local_lipschitz_lower(mlp, x0, eps, jax.random.key(1)))
    naive = float(LL.naive_lipschitz_bound(mlp.weights))
    samples = sampled_norms(mlp, x0, eps, jax.random.key(2))
    assert int(np.sum(samples > linear)) == 0  # 0 violations over 10⁴ samples
    assert int(np.sum(samples > interval)) == 0
    assert samples.max() <= linear <= interval <= naive
    assert lower <= linear


def test_generic_functions_sound_every_norm():
    """The interval method on a tanh network (a plain function) and on a Flax ReLU model."""
    rng = np.random.default_rng(3)
    w0, w1 = rng.normal(size=(12, 5)) / 2, rng.normal(size=(4, 12)) / 3
    b0 = rng.normal(size=12)

    def tanh_net(x):
        return w1 @ jnp.tanh(w0 @ x + b0)

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(4)(nn.relu(nn.Dense(12)(x)))

    model = Model()
    x0 = jnp.asarray(rng.normal(size=5))
    params = model.init(jax.random.key(0), x0)

    def flax_net(x):
        return model.apply(params, x)

    for fn in (tanh_net, flax_net):
        jac = sampled_jacobians(fn, x0, 0.2, jax.random.key(5))
        for norm in ("inf", "1", "2"):
            upper = float(LL.local_lipschitz_upper(fn, x0, 0.2, norm=norm))
            samples = norms_of(jac, norm)
            assert int(np.sum(samples > upper)) == 0, (fn.__name__, norm)
        lower = float(LL.local_lipschitz_lower(fn, x0, 0.2, jax.random.key(4)))
        assert samples.max() <= upper
        assert lower <= float(LL.local_lipschitz_upper(fn, x0, 0.2))


def test_matrix_shaped_inputs_and_outputs():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(3, 4))

    def fn(x):  # [2, 4] -> [2, 3]
        return jax.nn.relu(x) @ w.T

    x0 = jnp.asarray(rng.normal(size=(2, 4)))
    upper = float(LL.local_lipschitz_upper(fn, x0, 0.1))
    samples = sampled_norms(fn, x0, 0.1, jax.random.key(7), num=2000)
    assert samples.max() <= upper


def test_linear_networks_lower_equals_upper():
    rng = np.random.default_rng(8)
    w, b = rng.normal(size=(4, 7)), rng.normal(size=4)
    x0 = jnp.asarray(rng.normal(size=7))

    def affine(x):
        return w @ x + b

    for norm in ("inf", "1", "2"):
        exact = float(LL.jacobian_norm(jnp.asarray(w), norm))
        lower = float(
            LL.local_lipschitz_lower(affine, x0, 0.5, jax.random.key(0), norm=norm, num_steps=0)
        )
        assert lower == pytest.approx(exact, rel=1e-12)
        for fn in (affine, LL.ReluMLP([w], [b])):
            upper = float(LL.local_lipschitz_upper(fn, x0, 0.5, norm=norm))
            assert upper == pytest.approx(exact, rel=1e-9)
            assert lower <= upper


def test_upper_tightens_to_the_jacobian_norm_as_eps_goes_to_zero():
    mlp, x0 = random_mlp(9)
    at_x0 = float(LL.jacobian_norm(jax.jacrev(mlp)(x0)))
    for method in ("linear", "interval"):
        values = [
            float(LL.local_lipschitz_upper(mlp, x0, eps, method=method))
            for eps in (0.3, 0.1, 0.03, 0.01, 1e-4, 1e-8)
        ]
        assert all(a >= b * (1 - 1e-12) for a, b in zip(values, values[1:])), values
        assert values[-1] == pytest.approx(at_x0, rel=1e-9)
        assert values[0] > at_x0 * 1.01  # the large box is genuinely wider


def test_comparison_table_against_the_naive_global_bound():
    """lower ≤ linear ≤ interval ≤ naive at several points; linear is strictly tighter than
    interval somewhere, and both are far below the naive product of layer norms."""
    mlp, _ = random_mlp(10)
    naive = float(LL.naive_lipschitz_bound(mlp.weights))
    rng = np.random.default_rng(11)
    rows = []
    for i in range(4):
        x0 = jnp.asarray(rng.normal(size=6))
        lower = float(LL.local_lipschitz_lower(mlp, x0, 0.2, jax.random.key(i)))
        linear = float(LL.local_lipschitz_upper(mlp, x0, 0.2))
        interval = float(LL.local_lipschitz_upper(mlp, x0, 0.2, method="interval"))
        rows.append((lower, linear, interval, naive))
        assert lower <= linear <= interval * (1 + 1e-12) <= naive
    print("\n lower   linear  interval  naive")
    for row in rows:
        print("  ".join(f"{v:7.3f}" for v in row))
    assert any(r[1] < r[2] * 0.99 for r in rows)
    assert max(r[2] for r in rows) < naive / 2
    # the naive bound of Flax kernels [in, out] is the same product
    kernels = [w.T for w in mlp.weights]
    assert float(LL.naive_lipschitz_bound(kernels, kernel_layout="in_out")) == pytest.approx(naive)


def test_bad_inputs():
    mlp, x0 = random_mlp(12)
    with pytest.raises(ValueError, match="eps must be finite and >= 0"):
        LL.local_lipschitz_upper(mlp, x0, -0.1)
    with pytest.raises(ValueError, match="eps must broadcast"):
        LL.local_lipschitz_upper(mlp, x0, jnp.ones(3))
    with pytest.raises(ValueError, match="norm must be one of"):
        LL.local_lipschitz_upper(mlp, x0, 0.1, norm="fro")
    with pytest.raises(TypeError, match="x0 must have a floating dtype"):
        LL.local_lipschitz_upper(mlp, jnp.arange(6), 0.1)
    with pytest.raises(ValueError, match="method must be"):
        LL.local_lipschitz_upper(mlp, x0, 0.1, method="exact")
    with pytest.raises(ValueError, match="needs fn to be a ReluMLP"):
        LL.local_lipschitz_upper(lambda x: x, x0, 0.1, method="linear")
    with pytest.raises(TypeError, match="key must be a jax.random key"):
        LL.local_lipschitz_lower(mlp, x0, 0.1, 0)
    with pytest.raises(ValueError, match="num_steps must be"):
        LL.local_lipschitz_lower(mlp, x0, 0.1, jax.random.key(0), num_steps=-1)
    with pytest.raises(ValueError, match=r"weights\[1\] has fan_in"):
        LL.ReluMLP([np.ones((3, 2)), np.ones((2, 4))], None)
    with pytest.raises(TypeError, match="weights must be a non-empty list"):
        LL.naive_lipschitz_bound([])
    # np.inf, 1 and 2 are accepted as norm aliases
    assert float(LL.local_lipschitz_upper(mlp, x0, 0.0, norm=np.inf)) == pytest.approx(
        float(LL.local_lipschitz_upper(mlp, x0, 0.0, norm="inf"))
    )
