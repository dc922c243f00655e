"""Interval bound propagation (IBP) through any JAX function.

``interval_bounds(fn, lower, upper, *args)`` traces ``x -> fn(x, *args)`` to a jaxpr
(``jax.make_jaxpr``) and interprets it on boxes: every equation is mapped by the interval
rule registered for its primitive (:mod:`jaxbounds.verify.interval_rules`). The result
``[out_lower, out_upper]`` contains ``fn(x, *args)`` for every ``x`` with
``lower <= x <= upper`` (elementwise):

    for a linear map   y = W x + b :   y ∈ W c + b ± |W| r,  c = (l+u)/2,  r = (u-l)/2
    for a monotone map y = σ(x)    :   y ∈ [σ(l), σ(u)]

(Gowal et al., "On the Effectiveness of Interval Bound Propagation for Training Verifiably
Robust Models", 2018; Mao et al., "Understanding Certified Training with Interval Bound
Propagation", ICLR 2024.)

- Values that do not depend on the box (weights, ``iota``, masks of constants) propagate as
  exact points, evaluated by the primitive itself.
- ``jit``/``pjit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call`` and ``remat``
  are interpreted by recursion into their jaxprs (the primal computation); ``cond`` takes the
  hull of the branches that can be taken and ``scan`` is unrolled.
- A primitive without a rule raises :class:`UnsupportedPrimitiveError` naming it: nothing
  falls back silently.
- Flax works as it is: ``interval_bounds(lambda x: model.apply(params, x), lo, hi)``.
- Propagation is pure JAX: wrap it in ``jax.jit`` for speed,
  ``jax.jit(lambda lo, hi: interval_bounds(fn, lo, hi))``.

Soundness and rounding: with ``outward=True`` (default) each rule widens its result by a
bound on its own rounding error (see :mod:`~jaxbounds.verify.interval_rules`), so the box
encloses the real-arithmetic image under the stated assumption that transcendental
functions are accurate to 4 ulp. In float32 the floating-point forward pass itself deviates
from the real one by ~``n·eps`` relative; certify in float64 when that matters.

Bad input: ``lower``/``upper`` with different tree structures, shapes or dtypes, a
non-floating dtype, NaN, or ``lower > upper`` raise ``ValueError``/``TypeError`` when the
values are concrete. Under ``jit`` (traced values) the outputs are NaN when any
``lower > upper`` or any bound is NaN; :func:`checked_interval_bounds` raises instead.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxbounds._checks import check_array, check_callable, is_traced
from jaxbounds.verify._jax_compat import bind_equation, is_dropvar, is_literal
from jaxbounds.verify.interval_rules import (
    INTERVAL_RULES,
    Box,
    Context,
    UnsupportedPrimitiveError,
    is_box,
)

__all__ = [
    "Box",
    "UnsupportedPrimitiveError",
    "checked_interval_bounds",
    "eval_jaxpr_intervals",
    "interval_bounds",
    "supported_primitives",
]


def supported_primitives() -> list[str]:
    """Names of the primitives with an interval rule."""
    return sorted(INTERVAL_RULES)


def _read(env, var):
    if is_literal(var):
        return var.val
    return env[var]


def _cast(value, aval):
    """Keep the jaxpr's dtypes (rules may promote weak types)."""
    dtype = aval.dtype
    if is_box(value):
        if value.lo.dtype != dtype:
            return Box(value.lo.astype(dtype), value.hi.astype(dtype))
        return value
    return value


def eval_jaxpr_intervals(ctx: Context, jaxpr, consts, args) -> list:
    """Interpret an open ``jaxpr`` on a list of boxes and points; returns the outputs."""
    env: dict = {}
    for var, value in zip(jaxpr.constvars, consts, strict=True):
        env[var] = value
    for var, value in zip(jaxpr.invars, args, strict=True):
        env[var] = value
    for eqn in jaxpr.eqns:
        values = [_read(env, v) for v in eqn.invars]
        if not any(is_box(v) for v in values):
            outs = bind_equation(eqn, values)
        else:
            rule = INTERVAL_RULES.get(eqn.primitive.name)
            if rule is None:
                raise UnsupportedPrimitiveError(
                    f"interval_bounds: no interval rule for the primitive "
                    f"'{eqn.primitive.name}' (it receives an operand that depends on the "
                    f"input box). Supported: {', '.join(supported_primitives())}."
                )
            outs = rule(ctx, eqn, *values)
        for var, value in zip(eqn.outvars, outs, strict=True):
            if not is_dropvar(var):
                env[var] = _cast(value, var.aval)
    return [_read(env, v) for v in jaxpr.outvars]


def _validate(lower, upper):
    """Eager checks; returns the flat leaves and a traced validity flag (or None)."""
    lo_leaves, lo_tree = jax.tree.flatten(lower)
    hi_leaves, hi_tree = jax.tree.flatten(upper)
    if lo_tree != hi_tree:
        raise ValueError(
            f"lower and upper must have the same tree structure, got {lo_tree} and {hi_tree}."
        )
    if not lo_leaves:
        raise ValueError("lower must contain at least one array, got an empty pytree.")
    lo_out, hi_out, traced_checks = [], [], []
    for i, (lo, hi) in enumerate(zip(lo_leaves, hi_leaves, strict=True)):
        where = "" if len(lo_leaves) == 1 else f" (leaf {i})"
        lo = lo if isinstance(lo, jax.Array) else jnp.asarray(lo)
        hi = hi if isinstance(hi, jax.Array) else jnp.asarray(hi)
        for name, arr in (("lower", lo), ("upper", hi)):
            check_array(f"{name}{where}", arr)
        if lo.shape != hi.shape:
            raise ValueError(
                f"lower and upper must have the same shape{where}, got {lo.shape} and "
                f"{hi.shape}."
            )
        if lo.dtype != hi.dtype:
            raise TypeError(
                f"lower and upper must have the same dtype{where}, got {lo.dtype} and "
                f"{hi.dtype}."
            )
        if is_traced(lo) or is_traced(hi):
            traced_checks.append(jnp.all(lo <= hi))  # False for NaN as well
        else:
            lo_np, hi_np = np.asarray(lo), np.asarray(hi)
            if np.isnan(lo_np).any() or np.isnan(hi_np).any():
                raise ValueError(f"lower and upper{where} must not contain NaN.")
            bad = lo_np > hi_np
            if bad.any():
                idx = np.argwhere(bad)[0]
                raise ValueError(
                    f"lower must be <= upper elementwise{where}, got lower={lo_np[tuple(idx)]}"
                    f" > upper={hi_np[tuple(idx)]} at index {tuple(int(i) for i in idx)}."
                )
        lo_out.append(lo)
        hi_out.append(hi)
    valid = None
    if traced_checks:
        valid = jnp.all(jnp.stack(traced_checks))
    return lo_out, hi_out, lo_tree, valid


def interval_bounds(fn: Callable, lower, upper, *args, outward: bool = True,
                    exact_dot_elements: int = 1 << 22):
    """Elementwise bounds ``(out_lower, out_upper)`` of ``fn(x, *args)`` over the box.

    Args:
      fn: any JAX-traceable function; the box is its first positional argument (an array
        or a pytree of arrays), ``*args`` are held fixed. Outputs may be any pytree.
      lower, upper: the box corners, same structure, shapes and floating dtypes.
      outward: widen every rounding step outward (default True; see the module docstring).
      exact_dot_elements: a ``dot_general`` of two interval operands is computed from exact
        elementwise products when ``output size × contraction size`` is at most this,
        otherwise in midpoint-radius form.

    Returns:
      ``(out_lower, out_upper)``, pytrees shaped like ``fn``'s output. Outputs that do not
      depend on the box are returned twice, exactly.
    """
    check_callable("fn", fn)
    lo_leaves, hi_leaves, in_tree, valid = _validate(lower, upper)
    x_struct = jax.tree.unflatten(in_tree, lo_leaves)
    closed, out_shape = jax.make_jaxpr(lambda x: fn(x, *args), return_shape=True)(x_struct)
    ctx = Context(outward=outward, exact_dot_elements=exact_dot_elements)
    ctx.eval_jaxpr = lambda jaxpr, consts, vals: eval_jaxpr_intervals(ctx, jaxpr, consts, vals)
    boxes = [Box(lo, hi) for lo, hi in zip(lo_leaves, hi_leaves, strict=True)]
    outs = eval_jaxpr_intervals(ctx, closed.jaxpr, closed.consts, boxes)
    los, his = [], []
    for value, var in zip(outs, closed.jaxpr.outvars, strict=True):
        lo, hi = (value.lo, value.hi) if is_box(value) else (value, value)
        lo = jnp.asarray(lo, var.aval.dtype)
        hi = jnp.asarray(hi, var.aval.dtype)
        if valid is not None and jnp.issubdtype(lo.dtype, jnp.floating):
            lo = jnp.where(valid, lo, jnp.nan)
            hi = jnp.where(valid, hi, jnp.nan)
        los.append(lo)
        his.append(hi)
    out_tree = jax.tree.structure(out_shape)
    return jax.tree.unflatten(out_tree, los), jax.tree.unflatten(out_tree, his)


def checked_interval_bounds(fn: Callable, lower, upper, *args, outward: bool = True):
    """:func:`interval_bounds` under ``jit`` that raises (``checkify``) on ``lower > upper``
    or NaN instead of returning NaN."""

    def body(lo, hi):
        for a, b in zip(jax.tree.leaves(lo), jax.tree.leaves(hi), strict=True):
            checkify.check(jnp.all(a <= b), "lower must be <= upper elementwise (and not NaN)")
        return interval_bounds(fn, lo, hi, *args, outward=outward)

    err, out = jax.jit(checkify.checkify(body))(lower, upper)
    err.throw()
    return out
