"""The interval interpreter across the supported jax range: ``scan`` (whose params changed in
jax 0.12) and the JVP of tanh (which jax 0.12 writes with the ``one_minus_square`` primitive).

Each bound is checked against a dense grid of the exact function in float64, and the grid
reaches the true extremes (they lie at the box ends or at 0), so coverage is asserted ≥ 1 − 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds.verify import interval_bounds, local_lipschitz_upper


def _scan_net(x):
    def body(c, _):
        return jnp.tanh(c) * 0.5 + x, None

    c, _ = jax.lax.scan(body, x, None, length=3)
    return c


def _scan_net_np(x):
    c = x
    for _ in range(3):
        c = np.tanh(c) * 0.5 + x
    return c


def test_scan_bounds_contain_the_exact_range_and_reach_it():
    with jax.enable_x64(True):
        x0 = jnp.array([-1.0, 0.0, 1.0])
        lo, hi = interval_bounds(_scan_net, x0 - 0.1, x0 + 0.1)
    # each coordinate depends on its own input only, and monotonically: the ends are exact
    exact_lo, exact_hi = _scan_net_np(np.asarray(x0) - 0.1), _scan_net_np(np.asarray(x0) + 0.1)
    assert np.all(np.asarray(lo) <= exact_lo) and np.all(np.asarray(hi) >= exact_hi)
    np.testing.assert_allclose(lo, exact_lo, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(hi, exact_hi, rtol=1e-6, atol=1e-9)


def test_tanh_derivative_box_is_sound_near_cancellation():
    """1 − tanh(x)² on boxes around 0 and far out (where the subtraction cancels)."""
    with jax.enable_x64(True):
        centres = jnp.array([0.0, 0.7, -3.0, 9.0])
        radius = 0.05
        fn = lambda x: jax.jacfwd(jnp.tanh)(x).diagonal()
        lo, hi = interval_bounds(fn, centres - radius, centres + radius)
        fused = "one_minus_square" in str(jax.make_jaxpr(fn)(centres))
    grid = np.linspace(np.asarray(centres) - radius, np.asarray(centres) + radius, 20001)
    d = 1.0 - np.tanh(grid) ** 2
    assert np.all(np.asarray(lo) <= d.min(0)) and np.all(np.asarray(hi) >= d.max(0))
    width = np.asarray(hi) - np.asarray(lo)
    assert np.all(np.isfinite(width))
    if fused:  # jax >= 0.12 writes 1 − tanh² as one primitive,
        # so no dependency problem: the box is the exact range up to rounding
        assert np.all(width <= (d.max(0) - d.min(0)) * (1 + 1e-3) + 1e-12)


def test_local_lipschitz_of_a_tanh_net_is_finite_and_above_the_gradient():
    with jax.enable_x64(True):
        w = jnp.array([[0.5, -1.0], [2.0, 0.3], [-0.7, 0.9]])
        g = lambda x: jnp.tanh(x @ w)
        x0 = jnp.array([0.1, -0.2, 0.3])
        upper = float(local_lipschitz_upper(g, x0, 0.1))
        jac = np.asarray(jax.jacobian(g)(x0))
    assert np.isfinite(upper) and upper >= np.abs(jac).sum(axis=1).max()
