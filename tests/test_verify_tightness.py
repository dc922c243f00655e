"""IBP propagation tightness against the explicit matrix formula of Mao et al."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.verify import ibp_tightness
from jaxbounds.verify.tightness import clipped_radius, layer_tightness, margin_spec


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _net(rng, sizes):
    return [jnp.asarray(rng.normal(size=(i, o)) / np.sqrt(i)) for i, o in
            zip(sizes[:-1], sizes[1:], strict=True)], [jnp.asarray(rng.normal(size=o) * 0.1)
                                                       for o in sizes[1:]]


def test_matches_explicit_formula_with_inactive_neurons_zeroed():
    rng = np.random.default_rng(0)
    ws, bs = _net(rng, [7, 12, 9, 4])

    def features(x):
        h = jax.nn.relu(x @ ws[0] + bs[0])
        return jax.nn.relu(h @ ws[1] + bs[1])

    x = jnp.asarray(rng.uniform(size=(3, 7)))
    y = jnp.array([0, 2, 3])
    eps = 0.15
    tau = ibp_tightness(features, ws[2], x, y, eps)
    assert tau.shape == (3, 3)
    for i in range(3):
        d1 = (x[i] @ ws[0] + bs[0] > 0).astype(float)
        d2 = ((jax.nn.relu(x[i] @ ws[0] + bs[0]) @ ws[1] + bs[1]) > 0).astype(float)
        c = margin_spec(int(y[i]), 4)
        elided = c @ ws[2].T  # [3, 9]
        product = elided @ (d2[:, None] * ws[1].T) @ (d1[:, None] * ws[0].T)
        r = np.minimum(x[i] + eps, 1) - np.maximum(x[i] - eps, 0)
        r = r / 2
        num = np.abs(product) @ r
        den = np.abs(elided) @ (d2 * (np.abs(ws[1].T) @ (d1 * (np.abs(ws[0].T) @ r))))
        np.testing.assert_allclose(tau[i], np.maximum(num, 1e-8) / np.maximum(den, 1e-8),
                                   rtol=1e-10)
    assert bool(jnp.all((tau > 0) & (tau <= 1 + 1e-12)))


def test_one_layer_is_one_and_margin_spec():
    w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 3)))
    x = jnp.full((2, 5), 0.5)
    np.testing.assert_allclose(ibp_tightness(lambda v: v, w, x, None, 0.1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(margin_spec(1, 3), [[-1.0, 1.0, 0.0], [0.0, 1.0, -1.0]])
    np.testing.assert_allclose(clipped_radius(jnp.array([0.0, 0.5, 0.95]), 0.1),
                               [0.05, 0.1, 0.075])


def test_layer_tightness_first_layer_is_one_and_deep_is_smaller():
    rng = np.random.default_rng(2)
    ws, bs = _net(rng, [6, 32, 32, 32])
    stages = [lambda v: v @ ws[0] + bs[0],
              lambda v: jax.nn.relu(v) @ ws[1] + bs[1],
              lambda v: jax.nn.relu(v) @ ws[2] + bs[2]]
    x = jnp.asarray(rng.uniform(size=(4, 6)))
    tau = layer_tightness(stages, x, 0.05)
    assert tau.shape == (4, 3)
    np.testing.assert_allclose(tau[:, 0], 1.0, rtol=1e-12)
    assert bool(jnp.all(tau[:, 2] < tau[:, 0]))  # random deep layers lose tightness


def test_bad_input():
    w = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="eps must be > 0, got -0.1"):
        ibp_tightness(lambda v: v, w, jnp.ones((1, 2)), None, -0.1)
    with pytest.raises(ValueError, match="domain"):
        ibp_tightness(lambda v: v, w, jnp.ones((1, 2)), None, 0.1, domain=(1, 0))
    with pytest.raises(ValueError, match="head_weight"):
        ibp_tightness(lambda v: v, jnp.ones(3), jnp.ones((1, 2)), None, 0.1)
    with pytest.raises(ValueError, match="stages"):
        layer_tightness([], jnp.ones((1, 2)), 0.1)
