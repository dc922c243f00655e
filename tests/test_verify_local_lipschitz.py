"""Local Lipschitz bounds (jaxbounds.verify.local_lipschitz): soundness against a worst-case
search in float64 (gradient ascent on ‖J(x)‖ and on difference quotients, plus 10⁴ sampled
Jacobians on top), lower ≤ upper, exactness on linear maps, convergence as ε → 0, and the
comparison with the naive global bound."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from worst_case import lipschitz_ascent, report_coverage, softplus_surrogate

from jaxbounds.verify import local_lipschitz as LL


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def random_mlp(seed, sizes=(6, 16, 16, 3)):
    rng = np.random.default_rng(seed)
    # Flax kernels [in, out] (the default layout)
    ws = [rng.normal(size=(sizes[i + 1], sizes[i])).T / np.sqrt(sizes[i]) for i in range(3)]
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


def searched_norm(fn, x0, eps, norm="inf", seed=0):
    """Largest ‖J(x)‖ / difference quotient found by gradient ascent over the box (on the
    softplus surrogate for a ReluMLP); an attained value."""
    shape = x0.shape
    surrogate = None
    if isinstance(fn, LL.ReluMLP):
        surrogate = softplus_surrogate(list(zip(fn.matrices, fn.biases)))
    x = np.ravel(np.asarray(x0))
    return lipschitz_ascent(lambda v: jnp.ravel(fn(v.reshape(shape))), lo=x - eps, hi=x + eps,
                            norm=norm, surrogate=surrogate, seed=seed, pool=256, starts=8,
                            steps=60)


def sampled_norms(fn, x0, eps, key, norm="inf", num=10_000):
    """The worst-case search's best value, then the norms of ``num`` sampled Jacobians."""
    best = searched_norm(fn, x0, eps, norm)
    return np.append(best, norms_of(sampled_jacobians(fn, x0, eps, key, num), norm))


@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_relu_mlp_sound_lower_below_upper_and_below_naive(eps):
    mlp, x0 = random_mlp(0)
    linear = float(LL.local_lipschitz_upper(mlp, x0, eps))
    interval = float(LL.local_lipschitz_upper(mlp, x0, eps, method="interval"))
    lower = float(LL.local_lipschitz_lower(mlp, x0, eps, key=jax.random.key(1)))
    naive = float(LL.naive_lipschitz_bound(mlp.weights))
    samples = sampled_norms(mlp, x0, eps, jax.random.key(2))
    assert int(np.sum(samples > linear)) == 0  # 0 violations over 10⁴ samples
    assert int(np.sum(samples > interval)) == 0
    assert samples.max() <= linear <= interval <= naive
    assert lower <= linear
    report_coverage(f"local_lipschitz_upper eps={eps}", samples.max(), linear)


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
            samples = np.append(searched_norm(fn, x0, 0.2, norm), norms_of(jac, norm))
            assert int(np.sum(samples > upper)) == 0, (fn.__name__, norm)
            report_coverage(f"{fn.__name__} norm {norm}", samples.max(), upper)
        lower = float(LL.local_lipschitz_lower(fn, x0, 0.2, key=jax.random.key(4)))
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
            LL.local_lipschitz_lower(
                affine, x0, 0.5, key=jax.random.key(0), norm=norm, num_steps=0
            )
        )
        assert lower == pytest.approx(exact, rel=1e-12)
        for fn in (affine, LL.ReluMLP([w.T], [b]), LL.ReluMLP([w], [b], layout="torch")):
            upper = float(LL.local_lipschitz_upper(fn, x0, 0.5, norm=norm))
            assert upper == pytest.approx(exact, rel=1e-9)
            assert lower <= upper
        # the bound is exact here: the worst-case search reaches it
        best = lipschitz_ascent(affine, lo=x0 - 0.5, hi=x0 + 0.5, norm=norm, pool=16, starts=2,
                                steps=5)
        assert report_coverage(f"affine norm {norm}", best, upper) >= 1 - 1e-6


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
        lower = float(LL.local_lipschitz_lower(mlp, x0, 0.2, key=jax.random.key(i)))
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
    assert naive == pytest.approx(np.prod([np.abs(k).sum(0).max() for k in mlp.weights]))
    # the naive bound of [out, in] matrices (layout="torch") is the same product
    matrices = [k.T for k in mlp.weights]
    assert float(LL.naive_lipschitz_bound(matrices, layout="torch")) == pytest.approx(naive)
    # ℓ2: a certified product of σ_max (above the SVD values, within the outward margin)
    svd = np.prod([np.linalg.svd(k, compute_uv=False)[0] for k in mlp.weights])
    naive_2 = float(LL.naive_lipschitz_bound(mlp.weights, norm="2"))
    assert svd <= naive_2 <= svd * (1 + 1e-9)


def test_square_kernels_follow_the_layout():
    """A square ReLU MLP in the Flax layout is relu(x @ K_0 + b_0) @ K_1 + b_1; the same
    kernels transposed with layout="torch" are the same network, and the bounds agree."""
    rng = np.random.default_rng(13)
    kernels = [rng.normal(size=(5, 5)) for _ in range(2)]
    biases = [rng.normal(size=5) for _ in range(2)]
    x0 = jnp.asarray(rng.normal(size=5))
    flax = LL.ReluMLP(kernels, biases)
    torch = LL.ReluMLP([k.T for k in kernels], biases, layout="torch")
    misread = LL.ReluMLP(kernels, biases, layout="torch")
    expected = np.maximum(np.asarray(x0) @ kernels[0] + biases[0], 0) @ kernels[1] + biases[1]
    np.testing.assert_allclose(np.asarray(flax(x0)), expected, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(torch(x0)), expected, rtol=1e-12)
    assert not np.allclose(np.asarray(misread(x0)), expected)
    for norm in ("inf", "1"):
        a = float(LL.local_lipschitz_upper(flax, x0, 0.1, norm=norm))
        b = float(LL.local_lipschitz_upper(torch, x0, 0.1, norm=norm))
        assert a == pytest.approx(b, rel=1e-12)
        samples = sampled_norms(lambda x: expected_fn(kernels, biases, x), x0, 0.1,
                                jax.random.key(14), norm=norm, num=2000)
        assert samples.max() <= a


def expected_fn(kernels, biases, x):
    return jax.nn.relu(x @ kernels[0] + biases[0]) @ kernels[1] + biases[1]


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
        LL.local_lipschitz_lower(mlp, x0, 0.1, key=0)
    with pytest.raises(TypeError, match="positional"):
        LL.local_lipschitz_lower(mlp, x0, 0.1, jax.random.key(0))  # key is keyword-only
    with pytest.raises(ValueError, match="num_steps must be"):
        LL.local_lipschitz_lower(mlp, x0, 0.1, key=jax.random.key(0), num_steps=-1)
    with pytest.raises(ValueError, match=r"weights\[1\] has fan_in 4 but weights\[0\]"):
        LL.ReluMLP([np.ones((2, 3)), np.ones((4, 2))])
    with pytest.raises(ValueError, match=r"weights\[1\] has fan_in 4 but weights\[0\]"):
        LL.ReluMLP([np.ones((3, 2)), np.ones((2, 4))], layout="torch")
    with pytest.raises(ValueError, match="layout must be one of"):
        LL.ReluMLP(mlp.weights, layout="in_out")
    with pytest.raises(ValueError, match="weights must be a non-empty list"):
        LL.naive_lipschitz_bound([])
    with pytest.raises(ValueError, match="layout must be one of"):
        LL.naive_lipschitz_bound(mlp.weights, layout="out_in")
    # np.inf, 1 and 2 are accepted as norm aliases
    assert float(LL.local_lipschitz_upper(mlp, x0, 0.0, norm=np.inf)) == pytest.approx(
        float(LL.local_lipschitz_upper(mlp, x0, 0.0, norm="inf"))
    )
