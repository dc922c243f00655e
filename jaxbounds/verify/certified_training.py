"""Certified training losses: IBP (Gowal et al. 2018) and CROWN-IBP (Zhang et al. 2020).

For an ℓ∞ ball of radius ``ε`` around ``x`` (clipped to the data domain) and the margin
specification ``m_j(x') = z_y(x') - z_j(x')``, let ``m̲_j`` be a certified lower bound of the
margin over the ball. The *worst-case logits* are ``ẑ_j = -m̲_j`` (``ẑ_y = 0``): the
cross-entropy of ``ẑ`` upper-bounds the worst cross-entropy over the ball, and ``x`` is
verified when every ``m̲_j > 0``. The loss mixes natural and worst-case terms:

    L = κ · CE(z(x), y) + (1 - κ) · CE(ẑ(x, ε), y)

with the usual schedule: ``ε = 0`` for ``warmup_steps``, then a linear ramp to ``ε_train``
over ``ramp_steps`` while ``κ`` goes linearly from 1 to ``κ_final`` (Gowal et al. use 0.5).

Bounds on the margins:

- ``"ibp"``: :func:`interval_bounds` on the penultimate features, with the specification
  folded into the last linear layer (elision, ``C·W_L``), as in Gowal et al.; without a
  ``head`` the margin bound is ``z̲_y - z̄_j`` from the logit box;
- ``"crown-ibp"``: :func:`crown_bounds` with IBP intermediate bounds and one backward pass
  from the margins (ReLU networks only), mixed with IBP as ``β·CROWN + (1-β)·IBP`` with ``β``
  going from 1 to 0 over the ramp (Zhang et al., ICLR 2020).

Everything is pure JAX: the loss is differentiable in the parameters and ready for
``jax.value_and_grad`` + any optax optimiser.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from jaxbounds._checks import check_callable, check_choice, check_int, check_number
from jaxbounds.verify.crown import crown_bounds
from jaxbounds.verify.ibp import interval_bounds

__all__ = [
    "METHODS",
    "CertifiedSchedule",
    "margin_lower_bounds",
    "make_certified_loss",
    "verified_accuracy",
    "worst_case_logits",
]

METHODS = ("ibp", "crown-ibp")


@dataclasses.dataclass(frozen=True)
class CertifiedSchedule:
    """The ε ramp and the κ mix (and CROWN-IBP's β) as functions of the step."""

    eps: float
    warmup_steps: int = 0
    ramp_steps: int = 1
    kappa_final: float = 0.5

    def __post_init__(self):
        check_number("eps", self.eps, low=0)
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        check_int("ramp_steps", self.ramp_steps, minimum=1)
        check_number("kappa_final", self.kappa_final, low=0, high=1)

    def progress(self, step):
        """0 during warm-up, then linear to 1 at the end of the ramp."""
        t = (jnp.asarray(step, jnp.float32) - self.warmup_steps) / self.ramp_steps
        return jnp.clip(t, 0.0, 1.0)

    def eps_at(self, step):
        return self.eps * self.progress(step)

    def kappa_at(self, step):
        return 1.0 - (1.0 - self.kappa_final) * self.progress(step)

    def beta_at(self, step):
        return 1.0 - self.progress(step)


def _margin_spec(y, num_classes):
    eye = jnp.eye(num_classes)
    return eye[y][:, None, :] - eye[None, :, :]  # [batch, classes, classes]; row y = 0


def _box(x, eps, domain):
    lo, hi = domain
    return jnp.clip(x - eps, lo, hi), jnp.clip(x + eps, lo, hi)


def margin_lower_bounds(apply_fn: Callable, params, x, y, eps, *, num_classes: int,
                        domain=(0.0, 1.0), head: Callable | None = None,
                        method: str = "ibp", outward: bool = False):
    """Certified lower bounds of ``z_y - z_j`` over the ball: ``[batch, classes]`` (0 at y).

    ``apply_fn(params, x_batch)`` returns logits, or penultimate features when ``head``
    (``params -> (kernel [d, classes], bias [classes])``) is given: then the specification
    is folded into the last layer. ``method`` is ``"ibp"`` or ``"crown-ibp"``. Use
    ``outward=True`` (outward rounding, see :mod:`~jaxbounds.verify.ibp`) to certify; the
    training loss does not need it.
    """
    check_choice("method", method, METHODS)
    lo, hi = _box(x, eps, domain)
    spec = _margin_spec(y, num_classes)  # [b, k, k]
    if method == "ibp":
        f_lo, f_hi = interval_bounds(lambda v: apply_fn(params, v), lo, hi, outward=outward)
        if head is None:
            z_lo_y = jnp.take_along_axis(f_lo, y[:, None], axis=1)
            return jnp.where(jax.nn.one_hot(y, num_classes) > 0, 0.0, z_lo_y - f_hi)
        kernel, bias = head(params)
        w = jnp.einsum("bkc,dc->bkd", spec, kernel)  # C·W_L (elision)
        c = (f_lo + f_hi).reshape(x.shape[0], -1) / 2
        r = (f_hi - f_lo).reshape(x.shape[0], -1) / 2
        low = (jnp.einsum("bkd,bd->bk", w, c) - jnp.einsum("bkd,bd->bk", jnp.abs(w), r)
               + spec @ bias)
        if outward:  # a-priori rounding error of the elided layer (and of c, r)
            eps32 = jnp.finfo(low.dtype).eps
            mag = (jnp.einsum("bkd,bd->bk", jnp.abs(w), jnp.abs(c) + r)
                   + jnp.abs(spec) @ jnp.abs(bias))
            low = low - (c.shape[1] + 8) * eps32 * mag - jnp.finfo(low.dtype).tiny
        return jnp.where(jax.nn.one_hot(y, num_classes) > 0, 0.0, low)

    def one(xl, xh, s):
        if head is None:
            fn = lambda v: apply_fn(params, v[None])[0]  # noqa: E731
        else:
            kernel, bias = head(params)
            fn = lambda v: apply_fn(params, v[None])[0].reshape(-1) @ kernel + bias  # noqa: E731
        low, _ = crown_bounds(fn, xl, xh, spec=s, intermediate="ibp", outward=outward)
        return low

    low = jax.vmap(one)(lo, hi, spec)
    return jnp.where(jax.nn.one_hot(y, num_classes) > 0, 0.0, low)


def worst_case_logits(margins_lower):
    """``ẑ = -m̲`` (``ẑ_y = 0``): the logits whose CE bounds the worst case over the ball."""
    return -margins_lower


def verified_accuracy(margins_lower, y):
    """Fraction of examples whose every margin lower bound (j ≠ y) is > 0."""
    k = margins_lower.shape[1]
    others = jax.nn.one_hot(y, k) == 0
    return jnp.mean(jnp.all(jnp.where(others, margins_lower > 0, True), axis=1))


def make_certified_loss(apply_fn: Callable, schedule: CertifiedSchedule, *, num_classes: int,
                        domain=(0.0, 1.0), head: Callable | None = None,
                        method: str = "ibp"):
    """``loss(params, x, y, step) -> (loss, aux)``, the κ-mixed certified loss.

    ``apply_fn``/``head`` as in :func:`margin_lower_bounds`. ``aux`` holds the natural and
    robust cross-entropies, ε, κ and the verified accuracy of the batch at the current ε.
    Use with ``jax.value_and_grad(loss, has_aux=True)`` and any optax optimiser.
    """
    check_choice("method", method, METHODS)
    check_callable("apply_fn", apply_fn)

    def logits_fn(params, x):
        out = apply_fn(params, x)
        if head is None:
            return out
        kernel, bias = head(params)
        return out.reshape(x.shape[0], -1) @ kernel + bias

    def loss(params, x, y, step):
        eps, kappa = schedule.eps_at(step), schedule.kappa_at(step)
        natural = optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y)
        kw = dict(num_classes=num_classes, domain=domain, head=head)
        m_ibp = margin_lower_bounds(apply_fn, params, x, y, eps, method="ibp", **kw)
        if method == "crown-ibp":
            beta = schedule.beta_at(step)
            m_crown = margin_lower_bounds(apply_fn, params, x, y, eps, method="crown-ibp", **kw)
            margins = beta * m_crown + (1 - beta) * m_ibp
        else:
            margins = m_ibp
        robust = optax.softmax_cross_entropy_with_integer_labels(
            worst_case_logits(margins), y)
        total = kappa * natural.mean() + (1 - kappa) * robust.mean()
        aux = {"natural": natural.mean(), "robust": robust.mean(), "eps": eps,
               "kappa": kappa, "verified": verified_accuracy(margins, y)}
        return total, aux

    return loss
