"""IBP propagation tightness (Mao, Müller, Fischer, Vechev, ICLR 2024).

For a deep linear network ``f(x) = W_L ⋯ W_1 x`` and an input box of radius ``ε``, the optimal
box of the output has radius ``|W_L ⋯ W_1| ε`` while IBP gives ``|W_L| ⋯ |W_1| ε``. The
*propagation tightness* is their ratio, per output,

    τ = (|W_L ⋯ W_1| · ε) / (|W_L| ⋯ |W_1| · ε)   ∈ (0, 1].

Following the paper's code (eth-sri/ibp-propagation-tightness, ``compute_tightness`` with
``relu_adjust="local"``):

- a ReLU network is replaced by its linearisation at the clean input: neurons inactive at
  ``x`` are zeroed (``D_k``), so the numerator is ``|C W_L D_{L-1} W_{L-1} ⋯ D_1 W_1| ε`` and
  the denominator ``|C W_L| D_{L-1} |W_{L-1}| ⋯ D_1 |W_1| ε``; biases play no role;
- the margin specification ``C`` (rows ``e_y - e_j``, ``j ≠ y``) is folded into the last
  layer (elision) before taking absolute values;
- the input radius is clipped to the data domain:
  ``ε_i = (min(x_i + ε, hi) - max(x_i - ε, lo)) / 2``;
- numerator and denominator are clamped below at ``1e-8`` before the ratio.

Implementation for any JAX network, with no layer bookkeeping: the numerator is
``|C·J(x)| ε`` with ``J`` the Jacobian of the features at ``x`` (for a ReLU net this *is*
``W_{L-1} D ⋯ D W_1``), and the denominator is the IBP radius of the tangent map
``δ ↦ jvp(features, x, δ)`` over ``|δ| ≤ ε`` (IBP of a linear map with centre 0 multiplies the
radius by ``|W_k|``, and the JVP of a ReLU at ``x`` is the mask ``D_k``). Exact for ReLU
networks; for smooth activations it is the tightness of the local linearisation.

API:

- ``ibp_tightness(features, head_weight, x, y, eps, *, domain=(0, 1))``: network-level τ,
  one value per example and margin (``[batch, classes-1]``); ``features`` maps one example
  to the penultimate activations, ``head_weight`` is the last Dense kernel ``[d, classes]``
  (Flax layout). ``y=None`` uses the identity specification (``[batch, classes]``).
- ``layer_tightness(stages, x, eps, *, domain=(0, 1))``: per-layer τ: ``stages[k]`` maps the
  output of stage ``k-1`` to the **pre-activation** of layer ``k`` (ReLU of the previous
  layer included); returns the mean τ over the neurons of each layer whose IBP radius is
  nonzero, per example (``[batch, len(stages)]``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from jaxbounds._checks import check_array, check_callable, check_number, check_sequence
from jaxbounds.verify.ibp import interval_bounds

__all__ = ["clipped_radius", "ibp_tightness", "layer_tightness", "margin_spec"]

_CLAMP = 1e-8


def clipped_radius(x, eps, domain=(0.0, 1.0)):
    """``(min(x+ε, hi) - max(x-ε, lo)) / 2``: the input radius clipped to the data domain."""
    lo, hi = domain
    return (jnp.minimum(x + eps, hi) - jnp.maximum(x - eps, lo)) / 2


def margin_spec(y, num_classes: int):
    """Rows ``e_y - e_j`` for ``j ≠ y``: shape ``[classes - 1, classes]`` (one label)."""
    eye = jnp.eye(num_classes)
    rows = eye[y][None, :] - eye  # [classes, classes]; row y is zero
    keep = jnp.arange(num_classes - 1)
    keep = keep + (keep >= y)
    return rows[keep]


def _input_radius(x, eps, domain):
    """:func:`clipped_radius` of a batch ``x``, after checking the arguments."""
    check_number("eps", eps, low=0, low_open=True)
    if len(domain) != 2 or not domain[0] < domain[1]:
        raise ValueError(f"domain must be (lo, hi) with lo < hi, got {domain!r}.")
    x = check_array("x", jnp.asarray(x), min_ndim=1)
    return clipped_radius(x, eps, domain)


def _tangent_radius(fn, x0, radius):
    """IBP radius of ``δ ↦ jvp(fn, x0, δ)`` over ``|δ| ≤ radius`` (the denominator)."""

    def tangent(delta):
        return jax.jvp(fn, (x0,), (delta,))[1]

    lo, hi = interval_bounds(tangent, -radius, radius, outward=False)
    return (hi - lo) / 2


def _one_example(features, head_weight, x0, spec, radius):
    # numerator: |C W J| ε with J the Jacobian of the features at x0
    elided = spec @ head_weight.T  # [m, d]
    jac = jax.jacrev(lambda x: elided @ features(x).reshape(-1))(x0)  # [m, *x.shape]
    num = jnp.abs(jac.reshape(jac.shape[0], -1)) @ radius.reshape(-1)
    den = jnp.abs(elided) @ _tangent_radius(lambda x: features(x).reshape(-1), x0, radius)
    return jnp.maximum(num, _CLAMP) / jnp.maximum(den, _CLAMP)


def ibp_tightness(features: Callable, head_weight, x, y, eps: float, *,
                  domain=(0.0, 1.0)):
    """Network-level propagation tightness ``τ`` per example and margin.

    Args:
      features: one example ``x[i]`` -> penultimate activations (any shape, flattened).
      head_weight: the last linear layer's kernel, ``[d, classes]``.
      x: a batch ``[batch, ...]`` of clean inputs; y: integer labels ``[batch]`` or None.
      eps: the ℓ∞ radius; domain: the data range the radius is clipped to.

    Returns:
      ``[batch, classes - 1]`` (margin specification) or ``[batch, classes]`` (``y=None``).
    """
    radius = _input_radius(x, eps, domain)
    head_weight = check_array("head_weight", jnp.asarray(head_weight), ndim=2)
    classes = head_weight.shape[1]

    def per_example(x0, r0, y0):
        spec = jnp.eye(classes) if y is None else margin_spec(y0, classes)
        return _one_example(features, head_weight, x0, spec, r0)

    labels = jnp.zeros(x.shape[0], jnp.int32) if y is None else jnp.asarray(y)
    return jax.jit(jax.vmap(per_example))(x, radius, labels)


def layer_tightness(stages: Sequence[Callable], x, eps: float, *, domain=(0.0, 1.0)):
    """Per-layer propagation tightness: mean ``τ`` over each layer's neurons, per example.

    ``stages[k]`` maps the previous stage's output to the pre-activation of layer ``k``
    (apply the previous ReLU inside it). Returns ``[batch, len(stages)]``.
    """
    radius = _input_radius(x, eps, domain)
    stages = check_sequence("stages", stages, nonempty=True)
    for k, stage in enumerate(stages):
        check_callable(f"stages[{k}]", stage)

    def composite(k):
        def fn(v):
            for stage in stages[: k + 1]:
                v = stage(v)
            return v.reshape(-1)

        return fn

    def per_example(x0, r0):
        out = []
        for k in range(len(stages)):
            fn = composite(k)
            jac = jax.jacrev(fn)(x0)
            num = jnp.abs(jac.reshape(jac.shape[0], -1)) @ r0.reshape(-1)
            den = _tangent_radius(fn, x0, r0)
            alive = den > _CLAMP
            ratio = jnp.where(alive, num / jnp.where(alive, den, 1.0), 0.0)
            out.append(ratio.sum() / jnp.maximum(alive.sum(), 1))
        return jnp.stack(out)

    return jax.jit(jax.vmap(per_example))(x, radius)
