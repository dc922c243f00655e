"""Interval rules for JAX primitives: the registry behind :func:`jaxbounds.verify.interval_bounds`.

A value during propagation is either a **point** (a plain array that does not depend on the
input box: weights, literals, ``iota``, masks computed from constants) or a :class:`Box`
``[lo, hi]`` (elementwise, ``lo <= hi``). Booleans are boxes over ``False < True``: ``lo``
means "certainly true", ``hi`` means "possibly true". An equation whose inputs are all points
is evaluated exactly by the primitive itself; otherwise the rule registered under the
primitive's name maps boxes to a box that contains every value the primitive can take.

Rules (``x = [l, u]``, centre ``c = (l+u)/2``, radius ``r = (u-l)/2``):

- linear with a constant operand ``W`` (``dot_general``, ``conv_general_dilated``):
  ``W·c ± |W|·r`` (exact for the box);
- both operands intervals: elementwise exact products summed (when the broadcast product is
  small) or the midpoint-radius form ``c_a·c_b ± (|c_a|·r_b + r_a·|c_b| + r_a·r_b)``
  (Rump 1999, at most 1.5x wider than exact);
- ``mul``/``div``: the extreme of the four corner products/quotients (division by an
  interval containing 0 gives ``[-inf, inf]``); ``integer_pow``: the exact image;
- monotone maps (``add``, ``max``, ``exp``, ``tanh``, ``logistic``, ``erf``, reductions,
  pooling, reshapes, slicing, ...): image of the endpoints; decreasing maps swap them;
- comparisons give certain/possible booleans; ``select_n``/``cond`` with an uncertain
  predicate take the hull of every branch that can be selected;
- ``jit``/``pjit``, ``custom_jvp_call``, ``custom_vjp_call``, ``closed_call``, ``remat``:
  recursion into the inner jaxpr (the primal computation; derivative rules are not used).

**Outward rounding.** With ``outward=True`` every rule that rounds widens its result: by
``k`` units in the last place for elementwise operations (``k = 1`` for the correctly
rounded ``+ - * /``, ``k = 4`` for transcendental functions, which XLA does not guarantee to
be correctly rounded: this is an assumption, not a proof), and by the a-priori summation
error ``(n+4)·eps·Σ|a||b|`` for sums and products of length ``n`` (Higham, *Accuracy and
Stability of Numerical Algorithms*, §3.1). This encloses the exact real-arithmetic image of
the box. The floating-point forward pass differs from the real one by the same order of
rounding, so in float32 a sampled output can exceed a bound by about ``n·eps`` relative when
it sits at the very edge; run soundness checks in float64 (as the tests do) or with an
outward tolerance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import is_traced
from jaxbounds.verify._jax_compat import call_body, is_literal, open_jaxpr, scan_params

__all__ = [
    "Box",
    "INTERVAL_RULES",
    "UnsupportedPrimitiveError",
    "register_rule",
    "is_box",
]


class UnsupportedPrimitiveError(NotImplementedError):
    """A primitive with no interval rule received an interval operand."""


class Box(NamedTuple):
    """An elementwise interval ``[lo, hi]``."""

    lo: jax.Array
    hi: jax.Array


def is_box(value) -> bool:
    return isinstance(value, Box)


class Context:
    """Options shared by the rules during one propagation."""

    def __init__(self, outward: bool = True, exact_dot_elements: int = 1 << 22):
        self.outward = outward
        self.exact_dot_elements = exact_dot_elements
        # set by the interpreter: a function evaluating a (closed) jaxpr on boxes/points
        self.eval_jaxpr: Callable | None = None


# rule(ctx, eqn, *values) -> list of output values (Box or point), one per eqn.outvars
INTERVAL_RULES: dict[str, Callable] = {}


def register_rule(*names: str):
    def decorate(rule):
        for name in names:
            INTERVAL_RULES[name] = rule
        return rule

    return decorate


# --------------------------------------------------------------------------- helpers


def _is_float(dtype) -> bool:
    return jnp.issubdtype(dtype, jnp.floating)


def as_box(value) -> Box:
    if is_box(value):
        return value
    value = jnp.asarray(value)
    return Box(value, value)


def _bind(eqn, *args, **override):
    params = dict(eqn.params)
    params.update(override)
    return eqn.primitive.bind(*args, **params)


def widen(ctx: Context, lo, hi, ulps: float) -> Box:
    """Move ``lo`` down and ``hi`` up by ``ulps`` relative units (plus the smallest normal)."""
    if not ctx.outward or ulps == 0 or not _is_float(lo.dtype):
        return Box(lo, hi)
    info = jnp.finfo(lo.dtype)
    rel = ulps * float(info.eps)
    tiny = ulps * float(info.tiny)
    return Box(lo - rel * jnp.abs(lo) - tiny, hi + rel * jnp.abs(hi) + tiny)


def add_slack(ctx: Context, box: Box, magnitude_sum, n: int) -> Box:
    """Widen by the a-priori error ``(n+4)·eps·Σ|terms|`` of a length-``n`` sum."""
    if not ctx.outward or not _is_float(box.lo.dtype):
        return box
    info = jnp.finfo(box.lo.dtype)
    slack = (n + 4) * float(info.eps) * magnitude_sum + (n + 4) * float(info.tiny)
    lo, hi = box.lo - slack, box.hi + slack
    return widen(ctx, lo, hi, 1)


def _nan_to_inf(box: Box) -> Box:
    """``inf·0`` and ``inf-inf`` give NaN: replace by the sound ``[-inf, inf]``."""
    if not _is_float(box.lo.dtype):
        return box
    return Box(jnp.where(jnp.isnan(box.lo), -jnp.inf, box.lo),
               jnp.where(jnp.isnan(box.hi), jnp.inf, box.hi))


def centre_radius(ctx: Context, box: Box):
    """``(c, r)`` with ``[c - r, c + r] ⊇ [lo, hi]`` in floating point."""
    c = 0.5 * box.lo + 0.5 * box.hi
    c = jnp.where(jnp.isfinite(c), c, jnp.zeros_like(c))
    r = jnp.maximum(box.hi - c, c - box.lo)
    if ctx.outward and _is_float(r.dtype):
        info = jnp.finfo(r.dtype)
        r = r * (1 + 2 * float(info.eps)) + float(info.tiny)
    return c, r


def magnitude(value):
    """``max |x|`` over the box (or ``|x|`` for a point)."""
    if is_box(value):
        return jnp.maximum(jnp.abs(value.lo), jnp.abs(value.hi))
    return jnp.abs(value)


def _dtype_extremes(dtype):
    if _is_float(dtype):
        return jnp.array(-jnp.inf, dtype), jnp.array(jnp.inf, dtype)
    if dtype == jnp.bool_:
        return jnp.array(False), jnp.array(True)
    info = jnp.iinfo(dtype)
    return jnp.array(info.min, dtype), jnp.array(info.max, dtype)


def _monotone(ctx, eqn, values, ulps=0.0, multiple_results=False):
    """Apply a map that is nondecreasing in every operand to both endpoints."""
    los = [v.lo if is_box(v) else v for v in values]
    his = [v.hi if is_box(v) else v for v in values]
    lo, hi = _bind(eqn, *los), _bind(eqn, *his)
    if multiple_results or eqn.primitive.multiple_results:
        return [widen(ctx, a, b, ulps) for a, b in zip(lo, hi, strict=True)]
    return [widen(ctx, lo, hi, ulps)]


# --------------------------------------------------------------------------- structural

_STRUCTURAL = (
    "reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose", "slice", "rev",
    "copy", "copy_p", "concatenate", "pad", "split", "stop_gradient", "optimization_barrier",
    "sharding_constraint", "mesh_cast", "reduce_max", "reduce_min", "reduce_and", "reduce_or",
    "reduce_window_max", "reduce_window_min", "cummax", "cummin", "max", "min", "clamp",
    "real", "stack",
)


@register_rule(*_STRUCTURAL)
def _structural_rule(ctx, eqn, *values):
    return _monotone(ctx, eqn, values)


@register_rule("dynamic_slice", "gather")
def _indexed_read_rule(ctx, eqn, operand, *indices):
    if any(is_box(i) for i in indices):
        raise UnsupportedPrimitiveError(
            f"{eqn.primitive.name} with indices that depend on the input box is not supported "
            "(the indices must be constants)."
        )
    return [Box(_bind(eqn, operand.lo, *indices), _bind(eqn, operand.hi, *indices))]


@register_rule("dynamic_update_slice")
def _dynamic_update_slice_rule(ctx, eqn, operand, update, *indices):
    if any(is_box(i) for i in indices):
        raise UnsupportedPrimitiveError(
            "dynamic_update_slice with indices that depend on the input box is not supported."
        )
    return _monotone(ctx, eqn, (operand, update, *indices))


@register_rule("sort")
def _sort_rule(ctx, eqn, *operands):
    # each order statistic is nondecreasing in every input, so sorting the endpoints is exact
    if len(operands) != 1:
        raise UnsupportedPrimitiveError(
            "sort of several operands (a key-value sort or argsort) with an interval operand "
            "is not supported."
        )
    return _monotone(ctx, eqn, operands)


@register_rule("convert_element_type")
def _convert_rule(ctx, eqn, x):
    lo, hi = _bind(eqn, x.lo), _bind(eqn, x.hi)
    src, dst = x.lo.dtype, eqn.params["new_dtype"]
    if _is_float(dst) and not (
        _is_float(src) and jnp.finfo(dst).bits >= jnp.finfo(src).bits
    ) and src != jnp.bool_:
        return [widen(ctx, lo, hi, 1)]  # narrowing float or int->float may round
    return [Box(lo, hi)]


@register_rule("reduce_precision")
def _reduce_precision_rule(ctx, eqn, x):
    lo, hi = _bind(eqn, x.lo), _bind(eqn, x.hi)
    ulps = 2.0 ** (-eqn.params["mantissa_bits"]) / float(jnp.finfo(x.lo.dtype).eps)
    return [widen(ctx, lo, hi, ulps)]


# --------------------------------------------------------------------------- arithmetic


@register_rule("add", "add_any")
def _add_rule(ctx, eqn, a, b):
    return _monotone(ctx, eqn, (a, b), ulps=1)


@register_rule("sub")
def _sub_rule(ctx, eqn, a, b):
    a, b = as_box(a), as_box(b)
    return [widen(ctx, _bind(eqn, a.lo, b.hi), _bind(eqn, a.hi, b.lo), 1)]


@register_rule("neg")
def _neg_rule(ctx, eqn, x):
    return [Box(-x.hi, -x.lo)]


def _corners(op, a, b):
    a, b = as_box(a), as_box(b)
    cands = [op(a.lo, b.lo), op(a.lo, b.hi), op(a.hi, b.lo), op(a.hi, b.hi)]
    lo = cands[0]
    hi = cands[0]
    for c in cands[1:]:
        lo, hi = jnp.minimum(lo, c), jnp.maximum(hi, c)
    return lo, hi


def interval_mul(a, b):
    """Exact elementwise interval product (no rounding slack)."""
    if not is_box(a):
        lo, hi = a * b.lo, a * b.hi
        return jnp.minimum(lo, hi), jnp.maximum(lo, hi)
    if not is_box(b):
        lo, hi = a.lo * b, a.hi * b
        return jnp.minimum(lo, hi), jnp.maximum(lo, hi)
    return _corners(jnp.multiply, a, b)


@register_rule("mul")
def _mul_rule(ctx, eqn, a, b):
    if as_box(a).lo.dtype == jnp.bool_:
        return _monotone(ctx, eqn, (a, b))  # logical and
    lo, hi = interval_mul(a, b)
    return [_nan_to_inf(widen(ctx, lo, hi, 1))]


@register_rule("div")
def _div_rule(ctx, eqn, a, b):
    if not _is_float(as_box(a).lo.dtype):
        raise UnsupportedPrimitiveError("integer div with an interval operand is not supported.")
    if not is_box(b):
        lo, hi = a.lo / b, a.hi / b
        lo, hi = jnp.minimum(lo, hi), jnp.maximum(lo, hi)
    else:
        lo, hi = _corners(jnp.divide, a, b)
        straddles = (b.lo <= 0) & (b.hi >= 0)
        lo = jnp.where(straddles, -jnp.inf, lo)
        hi = jnp.where(straddles, jnp.inf, hi)
    return [_nan_to_inf(widen(ctx, lo, hi, 1))]


@register_rule("integer_pow")
def _integer_pow_rule(ctx, eqn, x):
    y = eqn.params["y"]
    plo, phi = _bind(eqn, x.lo), _bind(eqn, x.hi)
    if y == 0:
        return [Box(plo, phi)]
    if y % 2 == 1 and y > 0:  # odd positive: increasing
        lo, hi = plo, phi
    elif y > 0:  # even positive: decreasing then increasing
        contains_zero = (x.lo <= 0) & (x.hi >= 0)
        lo = jnp.where(contains_zero, jnp.zeros_like(plo), jnp.minimum(plo, phi))
        hi = jnp.maximum(plo, phi)
    else:  # negative power: 1 / x^|y|
        contains_zero = (x.lo <= 0) & (x.hi >= 0)
        if (-y) % 2 == 1:  # odd: decreasing on each side of 0
            lo = jnp.where(contains_zero, -jnp.inf, phi)
            hi = jnp.where(contains_zero, jnp.inf, plo)
        else:
            lo = jnp.where(contains_zero, jnp.minimum(plo, phi), jnp.minimum(plo, phi))
            hi = jnp.where(contains_zero, jnp.inf, jnp.maximum(plo, phi))
    return [widen(ctx, lo, hi, abs(y) + 1)]


@register_rule("square")
def _square_rule(ctx, eqn, x):
    plo, phi = x.lo * x.lo, x.hi * x.hi
    contains_zero = (x.lo <= 0) & (x.hi >= 0)
    lo = jnp.where(contains_zero, jnp.zeros_like(plo), jnp.minimum(plo, phi))
    return [widen(ctx, lo, jnp.maximum(plo, phi), 1)]


@register_rule("one_minus_square")
def _one_minus_square_rule(ctx, eqn, x):
    """``1 − x²`` (jax ≥ 0.12 emits it in the JVPs of tanh, asin, acos and atanh).

    From the sound box ``[s_lo, s_hi]`` of ``x²``: ``[1 − s_hi, 1 − s_lo]``. The subtraction
    cancels near ``|x| = 1``, so its rounding error is bounded absolutely, by
    ``eps·(1 + s) + tiny``, not relative to the (possibly tiny) result.
    """
    (square,) = _square_rule(ctx, eqn, x)
    lo, hi = 1 - square.hi, 1 - square.lo
    if ctx.outward and _is_float(lo.dtype):
        info = jnp.finfo(lo.dtype)
        eps, tiny = float(info.eps), float(info.tiny)
        lo = lo - eps * (1 + square.hi) - tiny
        hi = hi + eps * (1 + square.lo) + tiny
    return [Box(lo, hi)]


@register_rule("abs")
def _abs_rule(ctx, eqn, x):
    lo = jnp.where(x.lo >= 0, x.lo, jnp.where(x.hi <= 0, -x.hi, jnp.zeros_like(x.lo)))
    return [Box(lo, jnp.maximum(jnp.abs(x.lo), jnp.abs(x.hi)))]


@register_rule("pow")
def _pow_rule(ctx, eqn, a, b):
    # for a base >= 0, x**y is monotone in x for fixed y and in y for fixed x: corners
    a_box = as_box(a)
    lo, hi = _corners(lambda u, v: _bind(eqn, u, v), a, b)
    negative_base = a_box.lo < 0
    lo = jnp.where(negative_base, -jnp.inf, lo)
    hi = jnp.where(negative_base, jnp.inf, hi)
    return [_nan_to_inf(widen(ctx, lo, hi, 4))]


_INCREASING_EXACT = ("floor", "ceil", "round", "sign")
_INCREASING_TRANSCENDENTAL = (
    "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic", "erf", "sqrt", "cbrt",
    "atan", "asinh", "sinh", "erf_inv", "asin", "atanh", "acosh",
)
_DECREASING_TRANSCENDENTAL = ("erfc", "rsqrt", "acos")


@register_rule(*_INCREASING_EXACT)
def _increasing_exact_rule(ctx, eqn, x):
    return [Box(_bind(eqn, x.lo), _bind(eqn, x.hi))]


@register_rule(*_INCREASING_TRANSCENDENTAL)
def _increasing_rule(ctx, eqn, x):
    return [widen(ctx, _bind(eqn, x.lo), _bind(eqn, x.hi), 4)]


@register_rule(*_DECREASING_TRANSCENDENTAL)
def _decreasing_rule(ctx, eqn, x):
    return [widen(ctx, _bind(eqn, x.hi), _bind(eqn, x.lo), 4)]


@register_rule("cosh")
def _cosh_rule(ctx, eqn, x):
    clo, chi = _bind(eqn, x.lo), _bind(eqn, x.hi)
    contains_zero = (x.lo <= 0) & (x.hi >= 0)
    lo = jnp.where(contains_zero, jnp.ones_like(clo), jnp.minimum(clo, chi))
    return [widen(ctx, lo, jnp.maximum(clo, chi), 4)]


# --------------------------------------------------------------------------- reductions


def _summed_terms(eqn, shape) -> int:
    """How many operand entries each output entry of a sum-like primitive adds up."""
    name = eqn.primitive.name
    if name == "reduce_sum":
        return int(np.prod([shape[a] for a in eqn.params["axes"]], dtype=np.int64))
    if name == "reduce_window_sum":
        return int(np.prod(eqn.params["window_dimensions"]))
    return shape[eqn.params["axis"]]  # cumsum


@register_rule("reduce_sum", "reduce_window_sum", "cumsum")
def _sum_rule(ctx, eqn, x):
    """A sum is monotone: bind it to both ends, plus the a-priori summation error."""
    box = Box(_bind(eqn, x.lo), _bind(eqn, x.hi))
    if ctx.outward and _is_float(box.lo.dtype):
        n = _summed_terms(eqn, x.lo.shape)
        box = add_slack(ctx, box, _bind(eqn, magnitude(x)), n)
    return [box]


@register_rule("cumlogsumexp")
def _cumlogsumexp_rule(ctx, eqn, x):
    n = x.lo.shape[eqn.params["axis"]]
    return [widen(ctx, _bind(eqn, x.lo), _bind(eqn, x.hi), 4 * n + 4)]


@register_rule("reduce_window")
def _reduce_window_rule(ctx, eqn, *values):
    body = eqn.params["jaxpr"]
    body = getattr(body, "jaxpr", body)
    names = {e.primitive.name for e in body.eqns}
    if not names or not names <= {"max", "min", "add"} or len(values) != 2:
        raise UnsupportedPrimitiveError(
            f"reduce_window with body {sorted(names)} is not supported "
            "(only max, min and add reductions)."
        )
    if "add" in names:
        n = int(np.prod(eqn.params["window_dimensions"]))
        out = _monotone(ctx, eqn, values, ulps=n + 4)
    else:
        out = _monotone(ctx, eqn, values)
    return out


@register_rule("is_finite")
def _is_finite_rule(ctx, eqn, x):
    certain = jnp.isfinite(x.lo) & jnp.isfinite(x.hi)
    return [Box(certain, jnp.ones_like(certain))]


# --------------------------------------------------------------------------- logic


def _same_operand(eqn) -> bool:
    a, b = eqn.invars
    return not is_literal(a) and a is b


@register_rule("gt", "lt", "ge", "le")
def _order_rule(ctx, eqn, a, b):
    name = eqn.primitive.name
    a, b = as_box(a), as_box(b)
    if _same_operand(eqn):
        value = jnp.full(a.lo.shape, name in ("ge", "le"))
        return [Box(value, value)]
    if name in ("lt", "le"):
        a, b = b, a  # a < b  <=>  b > a
    if name in ("gt", "lt"):
        certain, possible = a.lo > b.hi, a.hi > b.lo
    else:
        certain, possible = a.lo >= b.hi, a.hi >= b.lo
    return [Box(certain, possible)]


@register_rule("eq", "ne")
def _equality_rule(ctx, eqn, a, b):
    a, b = as_box(a), as_box(b)
    if _same_operand(eqn):  # x == x holds for every non-NaN x of the box
        value = jnp.full(a.lo.shape, eqn.primitive.name == "eq")
        return [Box(value, value)]
    certain = (a.lo == a.hi) & (b.lo == b.hi) & (a.lo == b.lo)
    possible = (a.lo <= b.hi) & (b.lo <= a.hi)
    if eqn.primitive.name == "eq":
        return [Box(certain, possible)]
    return [Box(~possible, ~certain)]


@register_rule("and", "or")
def _and_or_rule(ctx, eqn, a, b):
    if as_box(a).lo.dtype != jnp.bool_:
        raise UnsupportedPrimitiveError(f"bitwise {eqn.primitive.name} on integer intervals.")
    return _monotone(ctx, eqn, (a, b))


@register_rule("not")
def _not_rule(ctx, eqn, x):
    if x.lo.dtype != jnp.bool_:
        raise UnsupportedPrimitiveError("bitwise not on integer intervals is not supported.")
    return [Box(~x.hi, ~x.lo)]


def hull_select(predicate, cases):
    """Bounds of ``select_n(predicate, *cases)`` when ``predicate`` is an interval."""
    pred = as_box(predicate)
    plo, phi = pred.lo.astype(jnp.int32), pred.hi.astype(jnp.int32)
    cases = [as_box(c) for c in cases]
    low_init, high_init = _dtype_extremes(cases[0].lo.dtype)
    lo = jnp.full(jnp.broadcast_shapes(plo.shape, cases[0].lo.shape), high_init)
    hi = jnp.full(lo.shape, low_init)
    for k, case in enumerate(cases):
        possible = (plo <= k) & (k <= phi)
        lo = jnp.where(possible, jnp.minimum(lo, case.lo), lo)
        hi = jnp.where(possible, jnp.maximum(hi, case.hi), hi)
    return Box(lo, hi)


@register_rule("select_n")
def _select_n_rule(ctx, eqn, predicate, *cases):
    if not is_box(predicate):
        return _monotone(ctx, eqn, (predicate, *cases))
    return [hull_select(predicate, cases)]


# --------------------------------------------------------------------------- linear algebra


def _dot_contraction_size(eqn, lhs_shape) -> int:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    return int(np.prod([lhs_shape[d] for d in lhs_contract], dtype=np.int64))


def _conv_contraction_size(eqn, rhs_shape) -> int:
    dn = eqn.params["dimension_numbers"]
    out_feature_dim = dn.rhs_spec[0]
    return int(np.prod(rhs_shape, dtype=np.int64)) // int(rhs_shape[out_feature_dim])


def _exact_dot_general(eqn, a: Box, b: Box):
    """Sum of exact elementwise interval products, materialising the broadcast product."""
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    nl, nr = a.lo.ndim, b.lo.ndim
    lf = [d for d in range(nl) if d not in lc and d not in lb]
    rf = [d for d in range(nr) if d not in rc and d not in rb]
    perm_l = list(lb) + lf + list(lc)
    perm_r = list(rb) + rf + list(rc)

    def arrange(x, perm, insert_at, count):
        x = jnp.transpose(x, perm)
        return jnp.expand_dims(x, tuple(range(insert_at, insert_at + count)))

    al = Box(arrange(a.lo, perm_l, len(lb) + len(lf), len(rf)),
             arrange(a.hi, perm_l, len(lb) + len(lf), len(rf)))
    bl = Box(arrange(b.lo, perm_r, len(rb), len(lf)), arrange(b.hi, perm_r, len(rb), len(lf)))
    lo, hi = _corners(jnp.multiply, al, bl)
    axes = tuple(range(lo.ndim - len(lc), lo.ndim))
    out_dtype = eqn.params.get("preferred_element_type") or jnp.result_type(a.lo, b.lo)
    return lo.sum(axes).astype(out_dtype), hi.sum(axes).astype(out_dtype)


def _bilinear(ctx, eqn, a, b, n: int, allow_exact: bool):
    """Bounds of a bilinear primitive ``op(a, b)`` (dot_general or conv)."""
    if is_box(a) and is_box(b):
        out_size = int(np.prod(eqn.outvars[0].aval.shape, dtype=np.int64))
        if allow_exact and out_size * n <= ctx.exact_dot_elements:
            lo, hi = _exact_dot_general(eqn, a, b)
        else:
            ca, ra = centre_radius(ctx, a)
            cb, rb = centre_radius(ctx, b)
            centre = _bind(eqn, ca, cb)
            radius = (_bind(eqn, jnp.abs(ca), rb) + _bind(eqn, ra, jnp.abs(cb))
                      + _bind(eqn, ra, rb))
            lo, hi = centre - radius, centre + radius
    elif is_box(a):
        c, r = centre_radius(ctx, a)
        centre, radius = _bind(eqn, c, b), _bind(eqn, r, jnp.abs(b))
        lo, hi = centre - radius, centre + radius
    else:
        c, r = centre_radius(ctx, b)
        centre, radius = _bind(eqn, a, c), _bind(eqn, jnp.abs(a), r)
        lo, hi = centre - radius, centre + radius
    box = Box(lo, hi)
    if ctx.outward and _is_float(lo.dtype):
        box = add_slack(ctx, box, _bind(eqn, magnitude(a), magnitude(b)), n)
    return [_nan_to_inf(box)]


@register_rule("dot_general")
def _dot_general_rule(ctx, eqn, a, b):
    n = _dot_contraction_size(eqn, as_box(a).lo.shape)
    return _bilinear(ctx, eqn, a, b, n, allow_exact=True)


@register_rule("conv_general_dilated")
def _conv_rule(ctx, eqn, a, b):
    n = _conv_contraction_size(eqn, as_box(b).lo.shape)
    return _bilinear(ctx, eqn, a, b, n, allow_exact=False)


# --------------------------------------------------------------------------- control flow


@register_rule("jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
               "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr")
def _call_rule(ctx, eqn, *values):
    body = call_body(eqn.params)
    if body is None:
        raise UnsupportedPrimitiveError(
            f"{eqn.primitive.name}: no inner jaxpr found (params {sorted(eqn.params)})."
        )
    jaxpr, consts = body
    return ctx.eval_jaxpr(jaxpr, consts, list(values))


@register_rule("cond")
def _cond_rule(ctx, eqn, index, *operands):
    branches = eqn.params["branches"]
    if not is_box(index) and not is_traced(index):
        jaxpr, consts = open_jaxpr(branches[int(np.asarray(index))])
        return ctx.eval_jaxpr(jaxpr, consts, list(operands))
    outs = []
    for branch in branches:
        jaxpr, consts = open_jaxpr(branch)
        outs.append(ctx.eval_jaxpr(jaxpr, consts, list(operands)))
    return [hull_select(index, [o[i] for o in outs]) for i in range(len(outs[0]))]


@register_rule("scan")
def _scan_rule(ctx, eqn, *values):
    """Unrolled in Python: each iteration propagates the boxes through the body."""
    jaxpr, body_consts, nc, ncarry, length, reverse = scan_params(eqn.params)
    consts, carry, xs = list(values[:nc]), list(values[nc:nc + ncarry]), values[nc + ncarry:]
    ys_steps = []
    steps = range(length - 1, -1, -1) if reverse else range(length)
    for i in steps:
        x_i = [Box(x.lo[i], x.hi[i]) if is_box(x) else x[i] for x in xs]
        out = ctx.eval_jaxpr(jaxpr, body_consts, consts + carry + x_i)
        carry, ys = list(out[:ncarry]), out[ncarry:]
        ys_steps.append(ys)
    if reverse:
        ys_steps = ys_steps[::-1]
    stacked = []
    for j, var in enumerate(jaxpr.outvars[ncarry:]):
        column = [step[j] for step in ys_steps]
        if length == 0:
            z = jnp.zeros((0, *var.aval.shape), var.aval.dtype)
            stacked.append(z)
        elif any(is_box(v) for v in column):
            column = [as_box(v) for v in column]
            stacked.append(Box(jnp.stack([v.lo for v in column]),
                               jnp.stack([v.hi for v in column])))
        else:
            stacked.append(jnp.stack(column))
    return carry + stacked


def check_registry_names() -> list[str]:
    """Names of the registered primitives (for documentation and tests)."""
    return sorted(INTERVAL_RULES)

