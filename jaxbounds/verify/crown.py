"""CROWN: backward linear relaxation bounds for ReLU networks, from the jaxpr.

``crown_bounds(fn, lower, upper, *args)`` bounds ``fn(x, *args)`` over the box
``lower <= x <= upper``. ``fn`` is traced to a jaxpr (so Flax ``apply`` functions work as they
are) and flattened into a graph of **affine** operations (``dot_general``/``conv`` with a
constant operand, ``add``, ``sub``, ``mul``/``div`` by a constant, reshapes, slicing,
``reduce_sum``, average pooling, ...) and **ReLUs** (``max(x, 0)``, as ``jax.nn.relu`` and
``flax.linen.relu`` emit it). Residual connections are fine: the backward pass accumulates
coefficients over every use, like reverse-mode differentiation. Anything else (max pooling,
tanh, ...) raises ``ValueError`` naming the primitive: use :func:`interval_bounds` there.

Backward pass (Zhang et al., "Efficient Neural Network Robustness Certification with General
Activation Functions", NeurIPS 2018; Singh et al., DeepPoly, POPL 2019). To lower-bound
``Λ·z`` for a node ``z``, walk the graph backwards keeping ``Λ_k·z_k + b``:

- affine ``y = A x + a``: ``Λ ← Aᵀ Λ`` (a VJP of the operation), ``b += Λ·a``;
- ReLU ``y = max(x, 0)`` with pre-activation bounds ``[l, u]``:
  active (``l ≥ 0``): ``y = x``; inactive (``u ≤ 0``): ``y = 0``; unstable:
  ``α x ≤ y ≤ s (x - l)`` with ``s = u/(u-l)`` and ``α = 1[u > -l]`` (the adaptive lower
  slope); positive coefficients take the lower line, negative ones the upper line;
- input box ``x = c ± r``: ``Λ·x ≥ Λ·c - |Λ|·r``.

Upper bounds are ``-lower(-Λ)``. Pre-activation bounds of every ReLU are computed the same
way, layer by layer, and **intersected with the IBP bounds at every node**, so the result is
never looser than :func:`interval_bounds` (plain CROWN can be looser than IBP on some
neurons). ``spec=C`` bounds ``C·fn(x)`` directly (e.g. the margins ``z_j - z_y``), folding
``C`` into the backward pass, which is much tighter than bounding ``fn`` then applying ``C``.

Memory. Each backward pass from a node ``t`` carries one coefficient array per pending node,
with one row per bound it computes: ``R_t = 2·|t|`` rows (lower and upper bound of every
entry; ``2m`` for ``spec`` with ``m`` rows). Before running, the peak is estimated by walking
the graph backwards exactly as the pass does:

    bytes ≈ itemsize · min(R_t, chunk_size)
            · max_k ( Σ_{j pending at k} |j| + Σ_{j new operand of k} |j| + 3·|k| )

maximised over the passes (every ReLU input with ``intermediate="crown"``, and the output),
where ``|j|`` is the number of entries of node ``j`` and the ``3·|k|`` covers the
temporaries of the step at node ``k``. If it exceeds ``max_bytes`` (default: half the
machine's physical memory) a ``ValueError`` names the estimate and suggests a
``chunk_size`` that fits, or ``intermediate="ibp"``. Under ``jax.vmap`` the estimate is per
example: a batch of ``B`` needs ``B`` times as much. With ``chunk_size`` the rows are
processed ``chunk_size`` at a time (a ``lax.map`` over chunks), so memory scales with the
chunk, not with the layer width. The Flax MNIST-example CNN (Conv32 → Conv64 → Dense256 →
Dense10 on 28×28, float32): estimate 23.4 GiB unchunked (50176 rows × 125440 coefficients ×
4 bytes at the first ReLU; the unchunked run is killed by the out-of-memory killer at
15.5 GB); with ``chunk_size=2048`` (estimate 0.96 GiB) it runs at 1.5 GB peak RSS.

Numerics: the relaxation is sound in real arithmetic; the floating-point backward pass is
not outward-rounded (only the final concretisation gets an a-priori rounding slack). Run
certification in float64 when the margin is within ~1e-6 relative of zero.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import (
    check_callable,
    check_choice,
    check_int,
    check_number,
    is_traced,
)
from jaxbounds.verify._jax_compat import bind_equation, call_body, is_dropvar, is_literal
from jaxbounds.verify.ibp import _validate
from jaxbounds.verify.interval_rules import (
    INTERVAL_RULES,
    Box,
    Context,
    add_slack,
    as_box,
    centre_radius,
)

__all__ = ["crown_bounds", "AFFINE_PRIMITIVES"]

# primitives that are affine in their box-dependent operands (given the rules below)
AFFINE_PRIMITIVES = frozenset({
    "add", "add_any", "sub", "neg", "dot_general", "conv_general_dilated", "mul", "div",
    "reshape", "squeeze", "expand_dims", "broadcast_in_dim", "transpose", "slice", "rev",
    "copy", "copy_p", "concatenate", "pad", "reduce_sum", "reduce_window_sum", "cumsum",
    "convert_element_type", "dynamic_slice", "gather", "select_n", "stop_gradient",
})
_CALLS = {"jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint",
          "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"}


@dataclass
class _Node:
    index: int
    kind: str  # "input", "relu", "affine"
    eqn: object | None
    inputs: list  # per eqn operand: ("node", index) or ("point", value)
    shape: tuple
    dtype: object
    ibp: Box | None = None
    users: list = field(default_factory=list)


class _Ref:
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index


def _is_zero_point(value) -> bool:
    if is_traced(value):
        return False
    return bool(np.all(np.asarray(value) == 0))


class _Graph:
    def __init__(self, ctx):
        self.ctx = ctx
        self.nodes: list[_Node] = []

    def add(self, kind, eqn, inputs, aval, ibp):
        node = _Node(len(self.nodes), kind, eqn, inputs, tuple(aval.shape), aval.dtype, ibp)
        self.nodes.append(node)
        return _Ref(node.index)

    def value(self, v):
        return self.nodes[v.index].ibp if isinstance(v, _Ref) else v

    def build(self, jaxpr, consts, args):
        env = {}
        for var, val in zip(jaxpr.constvars, consts, strict=True):
            env[var] = val
        for var, val in zip(jaxpr.invars, args, strict=True):
            env[var] = val

        def read(v):
            return v.val if is_literal(v) else env[v]

        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            name = eqn.primitive.name
            if not any(isinstance(v, _Ref) for v in vals):
                outs = bind_equation(eqn, vals)
            elif name in _CALLS and call_body(eqn.params) is not None:
                outs = self.build(*call_body(eqn.params), vals)
            else:
                outs = [self._node(eqn, vals)]
            for var, val in zip(eqn.outvars, outs, strict=True):
                if not is_dropvar(var):
                    env[var] = val
        return [read(v) for v in jaxpr.outvars]

    def _node(self, eqn, vals):
        name = eqn.primitive.name
        refs = [i for i, v in enumerate(vals) if isinstance(v, _Ref)]
        if eqn.primitive.multiple_results:
            raise ValueError(f"crown_bounds does not support the primitive '{name}' "
                             "(multiple results); use interval_bounds.")
        inputs = [("node", v.index) if isinstance(v, _Ref) else ("point", v) for v in vals]
        ibp = INTERVAL_RULES[name](self.ctx, eqn, *[self.value(v) for v in vals])[0] \
            if name in INTERVAL_RULES else None
        aval = eqn.outvars[0].aval
        if name == "max" and len(refs) == 1 and _is_zero_point(vals[1 - refs[0]]):
            return self.add("relu", eqn, inputs, aval, ibp)
        linear_ok = name in AFFINE_PRIMITIVES and jnp.issubdtype(aval.dtype, jnp.floating)
        if name in ("dot_general", "conv_general_dilated", "mul") and len(refs) != 1:
            linear_ok = False  # product of two box-dependent operands is not affine
        if name == "div" and refs != [0]:
            linear_ok = False
        if name in ("select_n", "dynamic_slice", "gather") and 0 in refs:
            linear_ok = False  # box-dependent predicate or indices
        if not linear_ok:
            raise ValueError(
                f"crown_bounds supports networks of affine operations and ReLU; the primitive "
                f"'{name}' is applied to a box-dependent value. Use interval_bounds instead."
            )
        return self.add("affine", eqn, inputs, aval, ibp)


def _affine_fn(node: _Node):
    """``g(*node_operands)``: the node's operation with its constant operands fixed."""
    eqn = node.eqn

    def g(*xs):
        it = iter(xs)
        args = [next(it) if kind == "node" else val for kind, val in node.inputs]
        return eqn.primitive.bind(*args, **eqn.params)

    return g


def _relu_relaxation(lo, hi):
    """Per-neuron (alpha, slope, intercept) of the CROWN relaxation of max(x, 0)."""
    active = lo >= 0
    inactive = hi <= 0
    denom = jnp.where(active | inactive, 1.0, hi - lo)
    slope = jnp.where(active, 1.0, jnp.where(inactive, 0.0, hi / denom))
    intercept = jnp.where(active | inactive, 0.0, -lo * slope)
    alpha = jnp.where(active, 1.0, jnp.where(inactive, 0.0, (hi > -lo).astype(lo.dtype)))
    return alpha, slope, intercept


def _backward(graph: _Graph, bounds: dict, target: int, lam, ctx: Context):
    """Lower bounds of ``lam[s] · node_target`` for each row ``s``; ``lam: (S, *shape)``."""
    coeffs = {target: lam}
    num_rows = lam.shape[0]
    bias = jnp.zeros((num_rows,), lam.dtype)
    for index in range(target, -1, -1):
        if index not in coeffs:
            continue
        node = graph.nodes[index]
        L = coeffs.pop(index)
        if node.kind == "input":
            box = bounds[index]
            c = 0.5 * box.lo + 0.5 * box.hi
            r = box.hi - c
            Lf = L.reshape(num_rows, -1)
            value = Lf @ c.reshape(-1) - jnp.abs(Lf) @ r.reshape(-1)
            if ctx.outward:
                n = Lf.shape[1]
                mag = jnp.abs(Lf) @ (jnp.abs(c) + r).reshape(-1)
                eps = float(jnp.finfo(Lf.dtype).eps)
                value = value - (n + 4) * eps * mag - (n + 4) * float(jnp.finfo(Lf.dtype).tiny)
            bias = bias + value
            continue
        if node.kind == "relu":
            (_, src), = [x for x in node.inputs if x[0] == "node"]
            pre = bounds[src]
            alpha, slope, intercept = _relu_relaxation(pre.lo, pre.hi)
            new_L = jnp.where(L >= 0, L * alpha, L * slope)
            extra = jnp.where(L < 0, L * intercept, 0.0)
            bias = bias + extra.reshape(num_rows, -1).sum(1)
            coeffs[src] = coeffs[src] + new_L if src in coeffs else new_L
            continue
        g = _affine_fn(node)
        operand_ids = [v for k, v in node.inputs if k == "node"]
        zeros = [jnp.zeros(graph.nodes[i].shape, graph.nodes[i].dtype) for i in operand_ids]
        y0, pullback = jax.vjp(g, *zeros)
        bias = bias + (L.reshape(num_rows, -1) @ y0.reshape(-1).astype(L.dtype))
        grads = jax.vmap(pullback)(L.astype(y0.dtype))
        for i, grad in zip(operand_ids, grads, strict=True):
            coeffs[i] = coeffs[i] + grad if i in coeffs else grad
    return bias


def _identity_rows(shape, dtype):
    """``rows(idx)``: rows ``idx`` of ``[I; -I]`` over the entries of ``shape``; rows past
    ``2n`` (padding of the last chunk) are zero."""
    n = int(np.prod(shape, dtype=np.int64))

    def rows(idx):
        sign = jnp.where(idx < n, 1.0, jnp.where(idx < 2 * n, -1.0, 0.0)).astype(dtype)
        return (sign[:, None] * jax.nn.one_hot(idx % n, n, dtype=dtype)).reshape(
            (idx.shape[0], *shape))

    return rows, 2 * n


def _matrix_rows(lam):
    """``rows(idx)`` of the matrix ``lam`` (zero past its end)."""
    total = lam.shape[0]

    def rows(idx):
        picked = jnp.take(lam, jnp.minimum(idx, total - 1), axis=0)
        keep = (idx < total).astype(lam.dtype).reshape((-1,) + (1,) * (lam.ndim - 1))
        return picked * keep

    return rows, total


def _backward_rows(graph, bounds, target, rows, total, chunk, ctx):
    """``_backward`` for ``total`` rows given by ``rows(idx)``, ``chunk`` rows at a time."""
    if chunk is None or chunk >= total:
        return _backward(graph, bounds, target, rows(jnp.arange(total)), ctx)
    num = -(-total // chunk)

    def one(start):
        return _backward(graph, bounds, target, rows(start + jnp.arange(chunk)), ctx)

    low = jax.lax.map(one, jnp.arange(num) * chunk)
    return low.reshape(-1)[:total]


def _size(node) -> int:
    return int(np.prod(node.shape, dtype=np.int64))


def _pass_entries(graph: _Graph, target: int) -> int:
    """Peak coefficient entries per row during one backward pass from ``target``: the walk of
    :func:`_backward` over pending nodes, plus the step's operands and temporaries."""
    pending = {target: _size(graph.nodes[target])}
    peak = 0
    for index in range(target, -1, -1):
        if index not in pending:
            continue
        node = graph.nodes[index]
        sources = [v for k, v in node.inputs if k == "node"]
        new = sum(_size(graph.nodes[i]) for i in sources if i not in pending)
        peak = max(peak, sum(pending.values()) + new + 3 * pending[index])
        pending.pop(index)
        for i in sources:
            pending[i] = _size(graph.nodes[i])
    return peak


def _default_max_bytes() -> int:
    """Half the machine's physical memory (8 GiB when the system does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _memory_estimate(graph: _Graph, passes, itemsize: int, chunk):
    """``(bytes, worst_rows, worst_entries)`` of the largest backward pass; ``passes`` is a
    list of ``(target, rows)``."""
    worst = (0, 0, 0)
    for target, total in passes:
        rows = total if chunk is None else min(chunk, total)
        entries = _pass_entries(graph, target)
        worst = max(worst, (itemsize * rows * entries, rows, entries))
    return worst


def _enforce_memory_budget(graph, passes, itemsize, chunk, max_bytes, ibp_passes):
    need, rows, entries = _memory_estimate(graph, passes, itemsize, chunk)
    if need <= max_bytes:
        return
    per_row = _memory_estimate(graph, passes, itemsize, 1)[0]
    fit = max_bytes // per_row
    ibp_need = _memory_estimate(graph, ibp_passes, itemsize, chunk)[0]
    hint = (f"pass chunk_size={fit} (about {fit * per_row / 2**30:.3g} GiB)"
            if fit >= 1 else "no chunk size fits")
    raise ValueError(
        f"crown_bounds: the backward passes need about {need / 2**30:.3g} GiB "
        f"({rows} rows x {entries} coefficients x {itemsize} bytes at the largest pass), "
        f"more than max_bytes={max_bytes} ({max_bytes / 2**30:.3g} GiB). Either {hint}, "
        f"or use intermediate='ibp' (one backward pass from the output, about "
        f"{ibp_need / 2**30:.3g} GiB), or raise max_bytes."
    )


def _intersect(a: Box, b: Box | None) -> Box:
    if b is None:
        return a
    return Box(jnp.maximum(a.lo, b.lo), jnp.minimum(a.hi, b.hi))


def crown_bounds(fn: Callable, lower, upper, *args, spec=None, outward: bool = True,
                 intermediate: str = "crown", chunk_size: int | None = None,
                 max_bytes: int | None = None):
    """Elementwise bounds of ``fn(x, *args)`` (or of ``spec @ fn(x, *args)``) over the box.

    Args:
      fn: a ReLU network as a JAX function of one array (e.g. ``lambda x: m.apply(p, x)``);
        affine operations and ReLU only; it returns one array.
      lower, upper: arrays of the input's shape, ``lower <= upper``.
      spec: optional ``[m, *out_shape]`` matrix ``C``; then bounds of ``C·fn(x)`` (shape
        ``[m]``) are returned, with ``C`` folded into the backward pass.
      outward: outward-rounded IBP and concretisation (see the module docstring).
      intermediate: ``"crown"`` (default) bounds every ReLU's pre-activation by its own
        backward pass (∩ IBP); ``"ibp"`` uses the IBP bounds there and runs the backward
        pass only from the output: CROWN-IBP (Zhang et al., ICLR 2020), one backward pass.
      chunk_size: run each backward pass on at most this many bound rows at a time
        (default: all rows at once). Memory scales with it (see the module docstring).
      max_bytes: memory budget of the backward passes (default: half the physical memory).
        The estimate of the module docstring is checked before anything runs; above the
        budget a ``ValueError`` names the estimate and suggests a ``chunk_size`` or
        ``intermediate="ibp"``.

    Returns:
      ``(out_lower, out_upper)``, never looser than IBP at any node.
    """
    check_callable("fn", fn)
    check_choice("intermediate", intermediate, ("crown", "ibp"))
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    max_bytes = (_default_max_bytes() if max_bytes is None
                 else int(check_number("max_bytes", max_bytes, low=1, static=True)))
    lo_leaves, hi_leaves, _, valid = _validate(lower, upper)
    if len(lo_leaves) != 1:
        raise ValueError(f"crown_bounds needs lower to be one array, got {len(lo_leaves)} leaves.")
    lo, hi = lo_leaves[0], hi_leaves[0]
    closed = jax.make_jaxpr(lambda x: fn(x, *args))(lo)
    if len(closed.jaxpr.outvars) != 1:
        raise ValueError("crown_bounds needs fn to return one array, got "
                         f"{len(closed.jaxpr.outvars)} outputs.")
    ctx = Context(outward=outward)
    graph = _Graph(ctx)
    in_aval = closed.jaxpr.invars[0].aval
    root = graph.add("input", None, [], in_aval, Box(lo, hi))
    (out,) = graph.build(closed.jaxpr, list(closed.consts), [root])
    out_aval = closed.jaxpr.outvars[0].aval
    if spec is not None:
        spec = jnp.asarray(spec, lo.dtype)
        if spec.ndim < 1 or tuple(spec.shape[1:]) != tuple(out_aval.shape):
            raise ValueError(
                f"spec must have shape [m, *{tuple(out_aval.shape)}], got {spec.shape}."
            )
    if not isinstance(out, _Ref):  # output does not depend on the box
        value = jnp.asarray(out)
        if spec is not None:
            value = spec.reshape(spec.shape[0], -1) @ value.reshape(-1)
        return value, value

    relu_inputs = {src for node in graph.nodes if node.kind == "relu"
                   for k, src in node.inputs if k == "node"}
    itemsize = jnp.dtype(lo.dtype).itemsize
    out_rows = 2 * (spec.shape[0] if spec is not None else _size(graph.nodes[out.index]))
    ibp_passes = [(out.index, out_rows)]
    passes = ibp_passes + ([(i, 2 * _size(graph.nodes[i])) for i in sorted(relu_inputs)]
                           if intermediate == "crown" else [])
    _enforce_memory_budget(graph, passes, itemsize, chunk_size, max_bytes, ibp_passes)
    bounds: dict[int, Box] = {0: Box(lo, hi)}
    for node in graph.nodes[1:]:
        vals = [bounds[v] if k == "node" else v for k, v in node.inputs]
        tightened = INTERVAL_RULES[node.eqn.primitive.name](ctx, node.eqn, *vals)[0]
        box = _intersect(as_box(tightened), node.ibp)
        if node.index in relu_inputs and intermediate == "crown":
            rows, total = _identity_rows(node.shape, lo.dtype)
            low = _backward_rows(graph, bounds, node.index, rows, total, chunk_size, ctx)
            n = total // 2
            crown = Box(low[:n].reshape(node.shape), -low[n:].reshape(node.shape))
            box = _intersect(box, crown)
        bounds[node.index] = box

    target = out.index
    out_box = bounds[target]
    if spec is None:
        rows, total = _identity_rows(out_aval.shape, lo.dtype)
        low = _backward_rows(graph, bounds, target, rows, total, chunk_size, ctx)
        n = total // 2
        result = _intersect(Box(low[:n].reshape(out_aval.shape),
                                -low[n:].reshape(out_aval.shape)), out_box)
    else:
        rows, total = _matrix_rows(jnp.concatenate([spec, -spec], axis=0))
        low = _backward_rows(graph, bounds, target, rows, total, chunk_size, ctx)
        m = spec.shape[0]
        sf = spec.reshape(m, -1)
        c, r = centre_radius(ctx, out_box)
        c, r = c.reshape(-1), r.reshape(-1)
        ibp_spec = Box(sf @ c - jnp.abs(sf) @ r, sf @ c + jnp.abs(sf) @ r)
        ibp_spec = add_slack(ctx, ibp_spec, jnp.abs(sf) @ (jnp.abs(c) + r), sf.shape[1])
        result = _intersect(Box(low[:m], -low[m:]), ibp_spec)
    if valid is not None:
        result = Box(jnp.where(valid, result.lo, jnp.nan), jnp.where(valid, result.hi, jnp.nan))
    return result.lo, result.hi

