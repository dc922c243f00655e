"""Muon whose orthogonalisation runs on the Newton–Schulz op (kernel or XLA).

The update rule of ``optax.contrib.muon`` (optax 0.2.8, default 2-D rule, Frobenius
preconditioning): for each matrix parameter W ∈ [fan_in, fan_out] (Flax layout),

    μ ← β·μ + (1 − β)·g
    μ̂ = β·μ/(1 − β^{t+1}) + (1 − β)·g/(1 − β^t)   (Nesterov; else μ̂ = μ/(1 − β^t))
    O = NS(μ̂ / (‖μ̂‖_F + ε)),   Δ = −lr·(√max(1, fan_out/fan_in)·O + λ·W)

with NS the quintic Newton–Schulz steps of ``ns_coeffs`` through
:func:`pallas_kernels.newton_schulz_steps` (``implementation`` passed through: the fused
Pallas kernel on a GPU where it is recorded as verified). With ``consistent_rms=r`` the
shape factor is √max(fan_in, fan_out)·r instead. Parameters that are not 2-D go to AdamW, as
in optax. Jordan et al., "Muon" (2024); Liu et al., arXiv 2502.16982 (consistent RMS).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbounds._checks import check_bool, check_int, check_matrix
from pallas_kernels import newton_schulz_steps

__all__ = ["MuonState", "muon", "orthogonalize", "scale_by_muon"]

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


class MuonState(NamedTuple):
    """The step count and the momentum μ (a tree like the params)."""

    count: jax.Array
    mu: optax.Updates


def _schedule(ns_coeffs, ns_steps: int) -> tuple[tuple[float, float, float], ...]:
    """One triple repeated ``ns_steps`` times, or a sequence of triples (one per step, as
    given: ``ns_steps`` is then ignored, as in optax). The op validates the triples."""
    check_int("ns_steps", ns_steps, minimum=1)
    if len(ns_coeffs) == 3 and all(isinstance(v, (int, float)) for v in ns_coeffs):
        return (tuple(ns_coeffs),) * ns_steps
    return tuple(ns_coeffs)


def orthogonalize(x, ns_coeffs=MUON_COEFFICIENTS, *, ns_steps: int = 5, eps: float = 1e-8,
                  consistent_rms=None, precision=None, implementation=None):
    """Muon's update direction for one [fan_in, fan_out] matrix:
    shape_scale · NS(X / (‖X‖_F + ε)).

    ``shape_scale`` is √max(1, fan_out/fan_in), or √max(fan_in, fan_out)·consistent_rms.
    ``precision`` is that of the "xla" path's matrix products (None: jax's default, as
    optax). Computes in x's dtype.
    """
    check_matrix("x", x)
    fan_in, fan_out = x.shape
    y = newton_schulz_steps(x / (jnp.linalg.norm(x) + eps), _schedule(ns_coeffs, ns_steps),
                            precision=precision, implementation=implementation)
    if consistent_rms is None:
        return jnp.sqrt(jnp.maximum(1, fan_out / fan_in)) * y
    return jnp.sqrt(jnp.maximum(fan_in, fan_out)) * consistent_rms * y


def scale_by_muon(ns_coeffs=MUON_COEFFICIENTS, *, ns_steps: int = 5, beta: float = 0.95,
                  eps: float = 1e-8, mu_dtype=None, nesterov: bool = True,
                  consistent_rms=None, precision=None,
                  implementation=None) -> optax.GradientTransformation:
    """Momentum (Nesterov by default), then :func:`orthogonalize` on every leaf (each a
    2-D matrix): ``optax.contrib.scale_by_muon`` followed by ``scale_by_shape``."""
    check_bool("nesterov", nesterov)
    _schedule(ns_coeffs, ns_steps)
    mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

    def init_fn(params):
        return MuonState(count=jnp.zeros([], jnp.int32),
                         mu=optax.tree.zeros_like(params, dtype=mu_dtype))

    def update_fn(updates, state, params=None):
        del params
        mu = optax.tree.update_moment(updates, state.mu, beta, 1)
        count = optax.safe_increment(state.count)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: beta * m + (1 - beta) * g,
                optax.tree.bias_correction(mu, beta, optax.safe_increment(count)),
                optax.tree.bias_correction(updates, beta, count))
        else:
            mu_hat = optax.tree.bias_correction(mu, beta, count)
        out = jax.tree.map(lambda x: orthogonalize(
            x, ns_coeffs, ns_steps=ns_steps, eps=eps, consistent_rms=consistent_rms,
            precision=precision, implementation=implementation), mu_hat)
        return out, MuonState(count=count, mu=optax.tree.cast(mu, mu_dtype))

    return optax.GradientTransformation(init_fn, update_fn)


def muon(learning_rate, *, ns_coeffs=MUON_COEFFICIENTS, ns_steps: int = 5, beta: float = 0.95,
         eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mask=None, mu_dtype=None,
         nesterov: bool = True, adam_b1: float = 0.9, adam_b2: float = 0.999,
         adam_eps_root: float = 0.0, adam_weight_decay: float = 0.0,
         adam_learning_rate=None, consistent_rms=None, precision=None,
         implementation=None) -> optax.GradientTransformation:
    """``optax.contrib.muon`` (same arguments and update rule, default 2-D rule) with the
    Newton–Schulz steps on :func:`pallas_kernels.newton_schulz_steps`.

    2-D parameters get :func:`scale_by_muon`, decoupled weight decay and the learning rate;
    the others AdamW. ``ns_coeffs`` is one (a, b, c) triple or a sequence of them (the
    string presets of optax are not accepted). ``implementation`` picks the op's
    implementation (None: the default dispatch).
    """
    adam_learning_rate = learning_rate if adam_learning_rate is None else adam_learning_rate

    def labels(params):
        return jax.tree.map(lambda x: "muon" if x.ndim == 2 else "adam", params)

    return optax.partition({
        "muon": optax.chain(
            scale_by_muon(ns_coeffs, ns_steps=ns_steps, beta=beta, eps=eps,
                          mu_dtype=mu_dtype, nesterov=nesterov,
                          consistent_rms=consistent_rms, precision=precision,
                          implementation=implementation),
            optax.add_decayed_weights(weight_decay, weight_decay_mask),
            optax.scale_by_learning_rate(learning_rate),
        ),
        "adam": optax.adamw(learning_rate=adam_learning_rate, b1=adam_b1, b2=adam_b2, eps=eps,
                            eps_root=adam_eps_root, weight_decay=adam_weight_decay,
                            mu_dtype=mu_dtype, nesterov=nesterov),
    }, labels)
