"""LipSDP / LipSDP-NSR (jaxbounds.verify.lipsdp): soundness against sampled gradients,
below the product bound, exact cases, the MaxMin example of Pauli et al., certification."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from worst_case import lipschitz_ascent, report_coverage

from jaxbounds.verify import lipsdp as L

# activation -> extra keyword arguments (Householder with random reflection vectors)
CASES = {
    "relu": {},
    "tanh": {},
    "groupsort": {"group_size": 4},
    "maxmin": {},
    "householder": {"householder_v": np.random.default_rng(7).normal(size=(8, 2))},
}


def random_net(seed, sizes=(6, 16, 16, 3), scale=1.5):
    """Flax kernels [in, out] (the default layout) and biases."""
    rng = np.random.default_rng(seed)
    ws = [
        scale * rng.normal(size=(sizes[i + 1], sizes[i])).T / np.sqrt(sizes[i])
        for i in range(len(sizes) - 1)
    ]
    bs = [0.5 * rng.normal(size=sizes[i + 1]) for i in range(len(sizes) - 1)]
    return ws, bs


def sampled_lipschitz(ws, bs, activation, seed, num=2000, **kwargs):
    """Largest ‖J(x)‖₂ and ‖f(x) − f(y)‖/‖x − y‖ found by the worst-case search (gradient
    ascent on both, :func:`worst_case.lipschitz_ascent`) and over random points and random
    close pairs, in float64: all are lower bounds on the true ℓ2 Lipschitz constant."""
    with jax.enable_x64(True):
        ws64 = [jnp.asarray(w) for w in ws]
        bs64 = [jnp.asarray(b) for b in bs]

        def f(x):
            return L.network_forward(ws64, x, activation, biases=bs64, **kwargs)

        key1, key2 = jax.random.split(jax.random.key(seed))
        xs = 2.0 * jax.random.normal(key1, (num, ws[0].shape[0]), dtype=jnp.float64)
        jac = np.asarray(jax.vmap(jax.jacfwd(f))(xs))
        grad_max = np.linalg.norm(jac, ord=2, axis=(1, 2)).max()
        ys = xs + 1e-3 * jax.random.normal(key2, xs.shape, dtype=jnp.float64)
        quot = np.linalg.norm(np.asarray(f(xs) - f(ys)), axis=1) / np.linalg.norm(
            np.asarray(xs - ys), axis=1
        )
        searched = lipschitz_ascent(f, dim=ws[0].shape[0], norm="2", seed=seed, pool=128,
                                    starts=4, steps=40)
    return float(max(grad_max, quot.max(), searched))


@pytest.mark.parametrize("activation", sorted(CASES))
def test_sound_and_below_product_bound(activation):
    kwargs = CASES[activation]
    for seed in (0, 1):
        ws, bs = random_net(seed)
        bound, report = L.lipsdp_bound(ws, activation, **kwargs)
        sampled = sampled_lipschitz(ws, bs, activation, seed, **kwargs)
        product = np.prod([np.linalg.norm(w, 2) for w in ws])
        assert report.solver_status == "optimal"
        assert sampled <= bound, (activation, seed, sampled, bound)  # 0 violations
        report_coverage(f"LipSDP {activation} seed {seed}", sampled, bound)
        assert bound <= product * (1 + 1e-9)
        assert product <= report.product_bound <= product * (1 + 1e-9)  # certified
        # the certified value agrees with the solver's raw value (margin 1e-7 + tolerance)
        assert report.rho_certified == pytest.approx(report.rho_solver, rel=1e-4)
        assert report.rest_block_max_eig < 0


def test_single_maxmin_layer_is_one_and_the_residual_relu_rewrite_is_not():
    eye = np.eye(6)
    bound, _ = L.lipsdp_bound([eye, eye], "maxmin")
    assert bound == pytest.approx(1.0, abs=1e-6)
    # with orthogonal weights around it the network is still exactly 1-Lipschitz
    rng = np.random.default_rng(3)
    q0, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    q1, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert L.lipsdp_bound([q0, q1], "maxmin")[0] == pytest.approx(1.0, abs=1e-6)
    assert L.lipsdp_bound([q0, q1], "groupsort", group_size=2)[0] == pytest.approx(1.0, abs=1e-6)
    # a single MaxMin layer is exactly 1-Lipschitz: the worst-case search reaches the bound
    with jax.enable_x64(True):
        best = lipschitz_ascent(
            lambda x: L.network_forward([jnp.asarray(q0), jnp.asarray(q1)], x, "maxmin"),
            dim=6, norm="2", pool=64, starts=4, steps=20)
    bound_q = L.lipsdp_bound([q0, q1], "maxmin")[0]
    assert report_coverage("single MaxMin layer", best, bound_q) >= 1 - 1e-6
    # the naive LipSDP on MaxMin rewritten as a residual ReLU network: √2, not 1
    naive, _ = L.lipsdp_bound([eye, eye], "maxmin_residual_relu")
    assert naive == pytest.approx(np.sqrt(2.0), rel=1e-5)
    # and it is looser than LipSDP-NSR on a random MaxMin network, yet still sound
    ws, bs = random_net(4)
    nsr = L.lipsdp_bound(ws, "maxmin")[0]
    rewrite = L.lipsdp_bound(ws, "maxmin_residual_relu")[0]
    assert nsr < rewrite
    assert sampled_lipschitz(ws, bs, "maxmin_residual_relu", 4) <= nsr


@pytest.mark.parametrize("activation", sorted(CASES))
def test_one_layer_network_gives_the_spectral_norm(activation):
    w = np.random.default_rng(5).normal(size=(7, 5))
    sigma_max = np.linalg.svd(w, compute_uv=False)[0]
    for layout in ("flax", "torch"):
        bound, report = L.lipsdp_bound([w], activation, layout=layout, **CASES[activation])
        assert bound == pytest.approx(sigma_max, rel=1e-12)
        assert bound >= sigma_max
        assert report.solver_status == "linear (no SDP)"
    # exact: the worst-case search reaches the bound
    with jax.enable_x64(True):
        best = lipschitz_ascent(lambda x: jnp.asarray(w).T @ x, dim=7, norm="2", pool=16,
                                starts=2, steps=5)
    assert report_coverage(f"one layer {activation}", best, bound) >= 1 - 1e-6


def test_householder_with_the_maxmin_vector_is_maxmin():
    ws, _ = random_net(6)
    u = np.array([1.0, -1.0])
    assert L.lipsdp_bound(ws, "householder", householder_v=u)[0] == pytest.approx(
        L.lipsdp_bound(ws, "maxmin")[0], rel=1e-5
    )
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(0), (10, 6), dtype=jnp.float64)
        a = L.network_forward(ws, x, "householder", householder_v=u)
        b = L.network_forward(ws, x, "maxmin")
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)


def test_layer_mode_is_never_tighter():
    ws, _ = random_net(8)
    neuron = L.lipsdp_bound(ws, "relu")[0]
    layer = L.lipsdp_bound(ws, "relu", mode="layer")[0]
    assert layer >= neuron * (1 - 1e-5)


@pytest.mark.parametrize("activation", ["relu", "maxmin"])
def test_flax_layout_equals_the_transposed_weights_in_torch_layout(activation):
    ws, bs = random_net(8, sizes=(8, 8, 8, 8))  # square: a misread layout would not raise
    flax, _ = L.lipsdp_bound(ws, activation)
    torch, _ = L.lipsdp_bound([w.T for w in ws], activation, layout="torch")
    assert torch == pytest.approx(flax, rel=1e-9)
    # the same matrices read in the other orientation are another network, another bound
    misread, _ = L.lipsdp_bound(ws, activation, layout="torch")
    assert abs(misread - flax) > 1e-3 * flax
    assert sampled_lipschitz(ws, bs, activation, 8) <= flax
    with jax.enable_x64(True):
        x = jax.random.normal(jax.random.key(1), (5, 8), dtype=jnp.float64)
        a = L.network_forward(ws, x, activation, biases=bs)
        b = L.network_forward([w.T for w in ws], x, activation, biases=bs, layout="torch")
        # Flax layout: each layer is h @ kernel + b
        h = x
        for k, (w, b0) in enumerate(zip(ws, bs)):
            h = h @ w + b0
            if k < len(ws) - 1:
                h = jax.nn.relu(h) if activation == "relu" else jnp.stack(
                    [jnp.maximum(h[:, ::2], h[:, 1::2]), jnp.minimum(h[:, ::2], h[:, 1::2])],
                    axis=-1).reshape(h.shape)
    np.testing.assert_allclose(np.asarray(a), np.asarray(h), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(b), np.asarray(h), rtol=1e-12, atol=1e-12)


def jacobian_ascent_lower_bound(kernels, seed, pool=4096, starts=64, steps=300):
    """max ‖J(x)‖₂ of the true f(x) = relu(relu(x @ W1) @ W2) @ W3 over evaluated points (an
    attained value, hence a lower bound on the ℓ2 Lipschitz constant), in float64.

    The points: ``pool`` random directions, then Adam ascent from the ``starts`` best of them.
    ‖J(x)‖ of a ReLU net is piecewise constant in x (zero gradient), so the ascent climbs a
    softplus(β·)/β surrogate with β rising from 5 to 500, and the true ‖J‖ (``jax.jacobian``
    of the ReLU function) is evaluated at every iterate."""
    with jax.enable_x64(True):
        ks = [jnp.asarray(k) for k in kernels]

        def f(x, beta):
            h = x
            for k in ks[:-1]:
                z = h @ k
                h = jax.nn.relu(z) if beta is None else jax.nn.softplus(beta * z) / beta
            return h @ ks[-1]

        def norm(x, beta=None):
            return jnp.linalg.norm(jax.jacobian(f)(x, beta), 2)

        optimiser = optax.adam(0.01)
        x = jax.random.normal(jax.random.key(seed), (pool, ks[0].shape[0]), jnp.float64)
        values = jax.vmap(norm)(x)
        x = x[jnp.argsort(-values)[:starts]]
        x = x / jnp.linalg.norm(x, axis=1, keepdims=True)

        def step(carry, beta):
            x, state, best = carry
            best = jnp.maximum(best, jnp.max(jax.vmap(norm)(x)))
            grad = jax.vmap(jax.grad(lambda y: -norm(y, beta)))(x)
            update, state = optimiser.update(grad, state)
            x = optax.apply_updates(x, update)
            return (x / jnp.linalg.norm(x, axis=1, keepdims=True), state, best), None

        betas = jnp.geomspace(5.0, 500.0, steps)
        init = (x, optimiser.init(x), jnp.max(values))
        (x, _, best), _ = jax.jit(lambda c: jax.lax.scan(step, c, betas))(init)
        return float(jnp.maximum(best, jnp.max(jax.vmap(norm)(x))))


@pytest.mark.parametrize("seed", [5, 7])
def test_square_flax_kernels_are_bounded_soundly(seed):
    """Three square 12×12 ReLU layers in the Flax layout: the certified bound is above a lower
    bound found by gradient ascent on ‖J(x)‖₂, while the same kernels read as [out, in] (the
    transposed network) give a value below it, which a bound of this network cannot be."""
    rng = np.random.default_rng(seed)
    kernels = [1.5 * rng.normal(size=(12, 12)) / np.sqrt(12) for _ in range(3)]
    bound, report = L.lipsdp_bound(kernels, "relu")
    lower = jacobian_ascent_lower_bound(kernels, seed)
    assert report.solver_status == "optimal"
    assert lower <= bound, (lower, bound)
    transposed_network, _ = L.lipsdp_bound(kernels, "relu", layout="torch")
    assert transposed_network < lower


def test_certify_multipliers_roundtrip_hand_picked_and_jax():
    ws, bs = random_net(9)
    bound, report = L.lipsdp_bound(ws, "relu")
    again, _ = L.certify_multipliers(ws, report.multipliers, "relu")
    assert again == pytest.approx(bound, rel=1e-12)
    # hand-picked admissible multipliers: no solver, a valid bound between SDP and 2·product
    hand = L.product_multipliers(ws, "relu")
    hand_bound, hand_report = L.certify_multipliers(ws, hand, "relu")
    assert bound * (1 - 1e-9) <= hand_bound <= 2.0 * hand_report.product_bound
    assert sampled_lipschitz(ws, bs, "relu", 9) <= hand_bound
    # the JAX-native certificate equals the float64 one and is differentiable
    with jax.enable_x64(True):
        ws64 = [jnp.asarray(w) for w in ws]
        jax_bound = jax.jit(lambda w: L.certified_bound_jax(w, report.multipliers, "relu"))(ws64)
        grads = jax.grad(lambda w: L.certified_bound_jax(w, report.multipliers, "relu"))(ws64)
    assert float(jax_bound) == pytest.approx(bound, rel=1e-7)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)
    # reuse: slightly perturbed weights, same multipliers, still a sound certificate
    perturbed = [w * 1.01 for w in ws]
    reuse, _ = L.certify_multipliers(perturbed, report.multipliers, "relu")
    assert sampled_lipschitz(perturbed, bs, "relu", 10) <= reuse


@pytest.mark.parametrize("activation", [pytest.param("relu", marks=pytest.mark.slow), "maxmin"])
def test_first_order_jax_backend_is_sound_and_close(activation):
    ws, bs = random_net(11)
    sdp, _ = L.lipsdp_bound(ws, activation)
    first_order, report = L.lipsdp_bound(ws, activation, solver="jax")
    assert report.solver_status.startswith("first-order")
    assert sdp * (1 - 1e-4) <= first_order <= sdp * 1.01
    assert sampled_lipschitz(ws, bs, activation, 11) <= first_order


def test_scs_answer_is_certified():
    """A first-order conic solver's raw ρ may sit below the SDP optimum; the certified value
    never does (it is the exact ρ*(y) of a feasible y)."""
    ws, _ = random_net(12)
    _, exact = L.lipsdp_bound(ws, "relu")
    bound, report = L.lipsdp_bound(ws, "relu", solver="SCS", margin=1e-5)
    assert report.rho_certified >= exact.rho_solver * (1 - 1e-6)
    assert bound >= exact.bound * (1 - 1e-6)


def test_bad_inputs():
    ws, _ = random_net(13)
    with pytest.raises(ValueError, match="activation must be one of"):
        L.lipsdp_bound(ws, "gelu")
    with pytest.raises(ValueError, match="negative definite"):
        L.certify_multipliers(ws, L.Multipliers((np.zeros(16), np.zeros(16))), "relu")
    with pytest.raises(ValueError, match=r"lam\[1\] must be >= 0"):
        L.certify_multipliers(ws, L.Multipliers((np.ones(16), -np.ones(16))), "relu")
    with pytest.raises(ValueError, match="one entry per activation layer"):
        L.certify_multipliers(ws, L.Multipliers((np.ones(16),)), "relu")
    with pytest.raises(ValueError, match=r"weights\[1\] has fan_in 6 but weights\[0\]"):
        L.lipsdp_bound([ws[0], ws[0]], "relu")
    with pytest.raises(ValueError, match=r"weights\[1\] has fan_in 16 but weights\[0\]"):
        L.lipsdp_bound([ws[0], ws[0]], "relu", layout="torch")
    with pytest.raises(TypeError, match="weights must be a list or tuple"):
        L.lipsdp_bound(ws[0], "relu")
    with pytest.raises(ValueError, match="weights must be a non-empty list"):
        L.lipsdp_bound([], "relu")
    with pytest.raises(ValueError, match="not a multiple of the group size"):
        L.lipsdp_bound([np.ones((3, 5)), np.ones((5, 2))], "maxmin")
    with pytest.raises(ValueError, match="householder_v is required"):
        L.lipsdp_bound(ws, "householder")
    with pytest.raises(ValueError, match="needs slope"):
        L.lipsdp_bound(ws, "slope")
    with pytest.raises(ValueError, match="solver must be"):
        L.lipsdp_bound(ws, "relu", solver="NOPE")
    with pytest.raises(ValueError, match="mode must be"):
        L.lipsdp_bound(ws, "relu", mode="network")
    with pytest.raises(ValueError, match="layout must be one of"):
        L.lipsdp_bound(ws, "relu", layout="oi")
    with pytest.raises(TypeError, match="layout"):
        L.lipsdp_bound(ws, "relu", kernel_layout="in_out")
    # traced values cannot raise: the JAX certificate is NaN when R is not negative definite
    with jax.enable_x64(True):
        bad = L.certified_bound_jax(ws, L.Multipliers((np.zeros(16), np.zeros(16))), "relu")
    assert np.isnan(float(bad))
