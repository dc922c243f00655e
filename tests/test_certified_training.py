"""Certified training losses: schedule, sound margin bounds, the eps=0 identity, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from worst_case import check_box

from jaxbounds.verify.certified_training import (
    CertifiedSchedule,
    make_certified_loss,
    margin_lower_bounds,
    verified_accuracy,
)


def _problem(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    params = {
        "w1": jnp.asarray(rng.normal(size=(8, 24)) / 3, dtype), "b1": jnp.zeros(24, dtype),
        "w2": jnp.asarray(rng.normal(size=(24, 16)) / 4, dtype),
        "b2": jnp.asarray(rng.normal(size=16) * 0.1, dtype),
        "w3": jnp.asarray(rng.normal(size=(16, 3)) / 4, dtype), "b3": jnp.zeros(3, dtype),
    }
    x = jnp.asarray(rng.uniform(size=(6, 8)), dtype)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    return params, x, y


def _features(p, x):
    return jax.nn.relu(jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"])


def _head(p):
    return p["w3"], p["b3"]


def _logits(p, x):
    return _features(p, x) @ p["w3"] + p["b3"]


def test_schedule():
    s = CertifiedSchedule(eps=0.1, warmup_steps=10, ramp_steps=20, kappa_final=0.5)
    np.testing.assert_allclose([s.eps_at(0), s.eps_at(10), s.eps_at(20), s.eps_at(99)],
                               [0.0, 0.0, 0.05, 0.1], rtol=1e-6)
    np.testing.assert_allclose([s.kappa_at(0), s.kappa_at(20), s.kappa_at(30)],
                               [1.0, 0.75, 0.5], rtol=1e-6)
    np.testing.assert_allclose([s.beta_at(0), s.beta_at(30)], [1.0, 0.0])
    with pytest.raises(ValueError, match="eps must be >= 0, got -1"):
        CertifiedSchedule(eps=-1)
    with pytest.raises(ValueError, match="ramp_steps"):
        CertifiedSchedule(eps=0.1, ramp_steps=0)
    with pytest.raises(ValueError, match="kappa_final"):
        CertifiedSchedule(eps=0.1, kappa_final=2.0)


@pytest.mark.parametrize("method,elided", [("ibp", True), ("ibp", False),
                                           ("crown-ibp", True), ("crown-ibp", False)])
def test_margin_bounds_are_sound(method, elided):
    with jax.enable_x64(True):
        params, x, y = _problem(jnp.float64)
        fn, head = (_features, _head) if elided else (_logits, None)
        eps = 0.05
        low = margin_lower_bounds(fn, params, x, y, eps, num_classes=3, head=head,
                                  method=method)


        def margins(v):  # [b, k]: z_y - z_j of every example
            z = _logits(params, v)
            return jnp.take_along_axis(z, y[:, None], axis=1) - z

        # worst-case search: projected gradient descent on every margin, 5000 samples on top
        report = check_box(margins, jnp.clip(x - eps, 0, 1), jnp.clip(x + eps, 0, 1), low,
                           jnp.full(low.shape, jnp.inf), samples=5000, starts=8, steps=40,
                           label=f"margins {method} elided={elided}")
        assert report.violations == 0
        np.testing.assert_array_equal(low[jnp.arange(6), y], 0.0)


def test_elision_and_crown_ibp_are_tighter_than_plain_ibp():
    with jax.enable_x64(True):
        params, x, y = _problem(jnp.float64, seed=1)
        kw = dict(num_classes=3)
        plain = margin_lower_bounds(_logits, params, x, y, 0.05, **kw)
        elided = margin_lower_bounds(_features, params, x, y, 0.05, head=_head, **kw)
        crown = margin_lower_bounds(_logits, params, x, y, 0.05, method="crown-ibp", **kw)
        assert bool(jnp.all(elided >= plain - 1e-12)) and bool(jnp.all(crown >= plain - 1e-12))
        assert float(jnp.sum(elided - plain)) > 0


def test_eps_zero_robust_loss_equals_natural_loss():
    params, x, y = _problem()
    loss = make_certified_loss(_features, CertifiedSchedule(eps=0.1, warmup_steps=5),
                               num_classes=3, head=_head)
    total, aux = loss(params, x, y, 0)
    np.testing.assert_allclose(aux["robust"], aux["natural"], rtol=1e-5)
    np.testing.assert_allclose(total, aux["natural"], rtol=1e-6)
    assert float(aux["eps"]) == 0.0 and float(aux["kappa"]) == 1.0


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_optax_training_reduces_the_robust_loss(method):
    params, x, y = _problem()
    schedule = CertifiedSchedule(eps=0.05, warmup_steps=0, ramp_steps=1, kappa_final=0.0)
    loss = make_certified_loss(_features, schedule, num_classes=3, head=_head, method=method)
    tx = optax.adam(1e-2)
    state = tx.init(params)

    @jax.jit
    def step(params, state, i):
        (value, aux), grads = jax.value_and_grad(loss, has_aux=True)(params, x, y, i)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value, aux

    values = []
    for i in range(40):
        params, state, value, aux = step(params, state, i + 1)
        values.append(float(value))
    assert all(np.isfinite(values))
    assert values[-1] < 0.8 * values[0]
    assert float(aux["verified"]) >= 0.0


def test_verified_accuracy_and_bad_method():
    low = jnp.array([[0.0, 0.1, 0.2], [-0.1, 0.0, 0.3]])
    assert float(verified_accuracy(low, jnp.array([0, 1]))) == 0.5
    with pytest.raises(ValueError,
                       match=r"method must be one of \('ibp', 'crown-ibp'\), got 'x'"):
        make_certified_loss(_features, CertifiedSchedule(eps=0.1), num_classes=3, method="x")
