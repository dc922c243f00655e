"""Worst-case search for soundness tests (shared by every family's tests).

A soundness test has power only if its search gets close to the true worst case: uniform
samples of a high-dimensional box never come near the vertices where a linear form peaks.
This module searches instead:

- :func:`box_extremes`: the smallest and largest value found of every output coordinate over
  a box: every vertex when ``d <= 14``, projected (sign-)gradient ascent **and** descent on
  each output coordinate from many starts, and uniform samples on top;
- :func:`check_box`: compares those with a claimed box ``[out_lo, out_hi]`` and reports the
  violations and the coverage ``found range / bound range`` (1 means the bound is attained);
- :func:`lipschitz_ascent`: the largest ``‖J(x)‖`` and difference quotient
  ``‖f(x) - f(y)‖ / ‖x - y‖`` found by gradient ascent (on a smooth surrogate when ``‖J‖`` is
  piecewise constant, e.g. softplus(β·)/β with β rising for ReLU), with the **true**
  function's Jacobian evaluated at every iterate. Every value returned is attained, hence a
  lower bound on the true Lipschitz constant.

Run these under ``jax.enable_x64(True)``: the search computes in float64. Seeds are fixed.
"""

from __future__ import annotations

import itertools
import weakref
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

MAX_VERTEX_DIM = 14


_FLAT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def flat_fn(fn):
    """``x -> one float64 vector`` of every output leaf of ``fn`` (one wrapper per ``fn``, so
    the compiled searches are reused across calls on the same function)."""
    if fn in _FLAT:
        return _FLAT[fn]

    def g(x):
        leaves = jax.tree.leaves(fn(x))
        return jnp.concatenate([jnp.ravel(v).astype(jnp.float64) for v in leaves])

    _FLAT[fn] = g
    return g


@partial(jax.jit, static_argnums=0)
def _evaluate(g, xs):
    return jax.vmap(g)(xs)


def vertices(lo, hi):
    """All ``2^d`` vertices of the box, shaped ``[2^d, *lo.shape]`` (``d <= 14``)."""
    lo, hi = np.asarray(lo), np.asarray(hi)
    d = lo.size
    if d > MAX_VERTEX_DIM:
        raise ValueError(f"vertices needs d <= {MAX_VERTEX_DIM}, got d = {d}")
    bits = np.array(list(itertools.product((0, 1), repeat=d)), dtype=bool).reshape(-1, d)
    pts = np.where(bits, hi.reshape(-1), lo.reshape(-1))
    return jnp.asarray(pts.reshape(-1, *lo.shape), lo.dtype)


@partial(jax.jit, static_argnums=(0, 4, 5, 6, 7))
def _pgd(g, lo, hi, key, starts, steps, m, polish):
    """Projected gradient ascent and descent of each of the ``m`` outputs of ``g`` over the box,
    from ``starts`` points each; returns the min and max of every output over all iterates."""
    width = hi - lo
    shape = lo.shape
    k1, k2 = jax.random.split(key)
    # starts: random points, random vertices and the centre
    u = jax.random.uniform(k1, (starts, *shape), jnp.float64)
    corner = jax.random.bernoulli(k2, 0.5, (starts, *shape)).astype(jnp.float64)
    u = jnp.where(jnp.arange(starts).reshape((-1,) + (1,) * len(shape)) % 2 == 0, u, corner)
    u = u.at[0].set(0.5)
    x0 = jnp.broadcast_to(jnp.clip(lo + u * width, lo, hi), (2 * m, starts, *shape))
    objective = jnp.concatenate([jnp.arange(m), jnp.arange(m)])
    sign = jnp.concatenate([jnp.ones(m), -jnp.ones(m)])
    rates = jnp.geomspace(0.1, 1e-9, steps)
    adam = optax.scale_by_adam(b1=0.8)

    def value(x, j, s):
        return s * g(x)[j]

    grad = jax.vmap(jax.vmap(jax.grad(value), (0, None, None)), (0, 0, 0))
    evaluate = jax.vmap(jax.vmap(g))

    def step(carry, rate):
        x, state, lo_found, hi_found = carry
        y = evaluate(x)  # [2m, starts, m]
        lo_found = jnp.minimum(lo_found, jnp.nanmin(y, axis=(0, 1)))
        hi_found = jnp.maximum(hi_found, jnp.nanmax(y, axis=(0, 1)))
        d = jnp.nan_to_num(grad(x, objective, sign))
        # Adam's momentum averages the gradients of the pieces on either side of a kink, so
        # the iterate moves along ridges of piecewise-linear functions instead of zigzagging
        d, state = adam.update(d, state)
        x = jnp.clip(x + rate * width * d, lo, hi)
        return (x, state, lo_found, hi_found), None

    init = (x0, adam.init(x0), jnp.full(m, jnp.inf), jnp.full(m, -jnp.inf))
    (x, _, lo_found, hi_found), _ = jax.lax.scan(step, init, rates)
    if polish == 0:
        y = evaluate(x)
        return (jnp.minimum(lo_found, jnp.nanmin(y, axis=(0, 1))),
                jnp.maximum(hi_found, jnp.nanmax(y, axis=(0, 1))))

    # polish: local random search at shrinking radii (it climbs the wedge at a kink, where
    # gradients of piecewise-linear functions point past the optimum)
    sel = jax.nn.one_hot(objective, m) * sign[:, None]  # [2m, m]
    many = jax.vmap(evaluate)
    trials = 16

    def score(y):  # y [..., 2m, starts, m] -> objective of each trajectory
        return jnp.nan_to_num(jnp.einsum("...ksm,km->...ks", y, sel), nan=-jnp.inf)

    def polish_step(carry, inputs):
        x, lo_found, hi_found = carry
        radius, k = inputs
        noise = jax.random.uniform(k, (trials, *x.shape), jnp.float64, -1.0, 1.0)
        cand = jnp.clip(x[None] + radius * width * noise, lo, hi)
        y = many(cand)  # [trials, 2m, starts, m]
        lo_found = jnp.minimum(lo_found, jnp.nanmin(y, axis=(0, 1, 2)))
        hi_found = jnp.maximum(hi_found, jnp.nanmax(y, axis=(0, 1, 2)))
        all_x = jnp.concatenate([x[None], cand])
        all_score = jnp.concatenate([score(evaluate(x))[None], score(y)])
        best = jnp.argmax(all_score, axis=0)  # [2m, starts]
        x = jnp.take_along_axis(all_x, best[None, ..., *([None] * len(shape))], axis=0)[0]
        return (x, lo_found, hi_found), None

    # polish only the best trajectory of each objective
    best_start = jnp.argmax(score(evaluate(x)), axis=1)  # [2m]
    x = jnp.take_along_axis(x, best_start[:, None, *([None] * len(shape))], axis=1)
    radii = jnp.geomspace(1e-2, 1e-10, polish)
    keys = jax.random.split(jax.random.fold_in(key, 1), polish)
    (x, lo_found, hi_found), _ = jax.lax.scan(polish_step, (x, lo_found, hi_found),
                                              (radii, keys))
    return lo_found, hi_found


class Extremes(NamedTuple):
    lo: np.ndarray  # smallest value found of each (flattened) output coordinate
    hi: np.ndarray  # largest value found
    nan: int  # evaluated points with a NaN output


def box_extremes(fn, lo, hi, *, seed=0, starts=16, steps=60, samples=2000, points=None,
                 polish=0):
    """Smallest and largest value found of every output coordinate of ``fn`` over the box.

    Evaluates every vertex (``d <= 14``), ``samples`` uniform points, the optional extra
    ``points``, and runs projected gradient ascent and descent on each output coordinate
    from ``starts`` starts for ``steps`` projected Adam steps (0.1 → 1e-9 of the box width),
    then ``polish`` rounds of local random search around the best trajectory of each
    objective at radii 1e-2 → 1e-10 of the width (for piecewise-linear functions, whose
    optimum sits at a kink; e.g. 40 rounds reach MILP ranges to ~1e-10).
    """
    lo = jnp.asarray(lo, jnp.float64)
    hi = jnp.asarray(hi, jnp.float64)
    g = flat_fn(fn)
    key = jax.random.key(seed)
    k_uniform, k_pgd = jax.random.split(key)
    u = jax.random.uniform(k_uniform, (samples, *lo.shape), jnp.float64)
    pts = [jnp.clip(lo + u * (hi - lo), lo, hi), lo[None], hi[None]]
    if lo.size <= MAX_VERTEX_DIM:
        pts.append(vertices(lo, hi))
    if points is not None:
        pts.append(jnp.asarray(points, jnp.float64).reshape(-1, *lo.shape))
    ys = _evaluate(g, jnp.concatenate(pts))
    nan = int(jnp.sum(jnp.any(jnp.isnan(ys), axis=1)))
    found_lo, found_hi = jnp.nanmin(ys, axis=0), jnp.nanmax(ys, axis=0)
    if steps > 0 and starts > 0:
        m = ys.shape[1]
        p_lo, p_hi = _pgd(g, lo, hi, k_pgd, starts, steps, m, polish)
        found_lo, found_hi = jnp.minimum(found_lo, p_lo), jnp.maximum(found_hi, p_hi)
    return Extremes(np.asarray(found_lo), np.asarray(found_hi), nan)


class BoxReport(NamedTuple):
    violations: int  # output coordinates (per side) outside the bound, plus NaN points
    coverage: float  # min over coordinates of found range / bound range
    found: Extremes


def _flat_bound(b):
    return np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in jax.tree.leaves(b)])


def coverage_of(found_lo, found_hi, out_lo, out_hi):
    """``min_j (found_hi - found_lo) / (out_hi - out_lo)`` (1 for zero-width coordinates)."""
    width = out_hi - out_lo
    found = found_hi - found_lo
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(width > 0, found / np.where(width > 0, width, 1.0), 1.0)
    ratio = np.where(np.isfinite(width) | (width == 0), ratio, 0.0)
    return float(np.min(ratio)) if ratio.size else 1.0


def check_box(fn, lo, hi, out_lo, out_hi, *, label="", **search):
    """Worst-case search of ``fn`` over the box against the claimed ``[out_lo, out_hi]``.

    Prints and returns the violations and the coverage; ``search`` goes to
    :func:`box_extremes`."""
    found = box_extremes(fn, lo, hi, **search)
    b_lo, b_hi = _flat_bound(out_lo), _flat_bound(out_hi)
    violations = int(np.sum(found.lo < b_lo) + np.sum(found.hi > b_hi)) + found.nan
    cov = coverage_of(found.lo, found.hi, b_lo, b_hi)
    print(f"[worst-case] {label} violations={violations} coverage={cov:.6f}")
    return BoxReport(violations, cov, found)


def shrink(lo, hi, fraction=0.01):
    """The box ``[lo, hi]`` shrunk by ``fraction`` of its width on each side."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    w = hi - lo
    return lo + fraction * w, hi - fraction * w


# --------------------------------------------------------------------------- Lipschitz


def operator_norm(jac, norm):
    """Induced ``norm`` of a Jacobian ``[m, n]`` (``"inf"``: max row sum, ``"1"``: max column
    sum, ``"2"``: spectral), differentiable almost everywhere."""
    if norm in ("inf", np.inf):
        return jnp.max(jnp.sum(jnp.abs(jac), axis=1))
    if norm in ("1", 1):
        return jnp.max(jnp.sum(jnp.abs(jac), axis=0))
    return jnp.linalg.norm(jac, 2)


def _vector_norm(v, norm):
    if norm in ("inf", np.inf):
        return jnp.max(jnp.abs(v))
    if norm in ("1", 1):
        return jnp.sum(jnp.abs(v))
    return jnp.sqrt(jnp.sum(v * v))


def lipschitz_ascent(fn, *, lo=None, hi=None, dim=None, norm="2", surrogate=None, seed=0,
                     pool=1024, starts=32, steps=200, scale=2.0, lr=0.02):
    """Largest ``‖J(x)‖`` and ``‖f(x) - f(y)‖/‖x - y‖`` found, in the induced ``norm``.

    ``fn`` maps a vector to a vector. The search is over the box ``[lo, hi]`` when given
    (projection by clipping), otherwise over ``R^dim`` from ``N(0, scale²)`` starts. The
    points: ``pool`` random ones, then Adam ascent from the ``starts`` best on ``‖J‖`` of
    ``surrogate(x, beta)`` (β rising geometrically from 5 to 500; default ``fn`` itself),
    and a second ascent on the difference quotient of the true ``fn`` over pairs. The true
    ``‖J(x)‖`` is evaluated at every iterate: the result is attained, a lower bound on the
    Lipschitz constant."""
    key = jax.random.key(seed)
    k_pool, k_dir = jax.random.split(key)
    if lo is not None:
        lo = jnp.asarray(lo, jnp.float64).reshape(-1)
        hi = jnp.asarray(hi, jnp.float64).reshape(-1)
        dim = lo.size
        x = jnp.clip(lo + jax.random.uniform(k_pool, (pool, dim), jnp.float64) * (hi - lo),
                     lo, hi)
        x = jnp.concatenate([x, vertices(lo, hi)]) if dim <= 10 else x

        def project(z):
            return jnp.clip(z, lo, hi)
    else:
        x = scale * jax.random.normal(k_pool, (pool, dim), jnp.float64)

        def project(z):
            return z

    def f(z):
        return jnp.ravel(fn(z)).astype(jnp.float64)

    smooth = surrogate if surrogate is not None else (lambda z, beta: f(z))

    def true_norm(z):
        return operator_norm(jax.jacobian(f)(z), norm)

    def smooth_norm(z, beta):
        return operator_norm(jax.jacobian(lambda y: jnp.ravel(smooth(y, beta)))(z), norm)

    values = jax.jit(jax.vmap(true_norm))(x)
    best = jnp.max(values)
    x = x[jnp.argsort(-values)[:starts]]
    optimiser = optax.adam(lr * (scale if lo is None else float(jnp.max(hi - lo))))
    betas = jnp.geomspace(5.0, 500.0, steps)

    def jac_step(carry, beta):
        z, state, top = carry
        top = jnp.maximum(top, jnp.max(jax.vmap(true_norm)(z)))
        grad = jax.vmap(jax.grad(lambda y: -smooth_norm(y, beta)))(z)
        update, state = optimiser.update(jnp.nan_to_num(grad), state)
        return (project(optax.apply_updates(z, update)), state, top), None

    (z, _, top), _ = jax.jit(lambda c: jax.lax.scan(jac_step, c, betas))(
        (x, optimiser.init(x), best))
    best = jnp.maximum(top, jnp.max(jax.vmap(true_norm)(z)))

    # difference quotients of the true function over pairs (x, x + d)
    d0 = 1e-2 * (scale if lo is None else jnp.max(hi - lo)) * jax.random.normal(
        k_dir, x.shape, jnp.float64)

    def quotient(p):
        a, d = p
        b = project(a + d)
        return _vector_norm(f(b) - f(a), norm) / (_vector_norm(b - a, norm) + 1e-300)

    def q_step(carry, _):
        p, state, top = carry
        top = jnp.maximum(top, jnp.max(jax.vmap(quotient)(p)))
        grad = jax.vmap(jax.grad(lambda q: -quotient(q)))(p)
        grad = jax.tree.map(jnp.nan_to_num, grad)
        update, state = optimiser.update(grad, state)
        a, d = optax.apply_updates(p, update)
        return ((project(a), d), state, top), None

    pairs = (z, d0)
    (pairs, _, top_q), _ = jax.jit(lambda c: jax.lax.scan(q_step, c, None, length=steps))(
        (pairs, optimiser.init(pairs), jnp.array(0.0)))
    return float(jnp.maximum(best, top_q))


def report_coverage(label, best, bound):
    """Print ``coverage = best / bound`` and return it."""
    cov = float(best) / float(bound)
    print(f"[worst-case] {label} best={float(best):.6g} bound={float(bound):.6g} "
          f"coverage={cov:.6f}")
    return cov


# --------------------------------------------------------------------------- exact ranges


def mlp_forward(layers, x):
    """``W_L relu(... relu(W_1 x + b_1) ...) + b_L`` for ``layers = [(W [out, in], b), ...]``;
    works on NumPy and JAX arrays."""
    for k, (w, b) in enumerate(layers):
        x = w @ x + b
        if k < len(layers) - 1:
            x = jax.nn.relu(x) if isinstance(x, jax.Array) else np.maximum(x, 0)
    return x


def _ibp_pre_bounds(layers, lo, hi):
    """Float64 IBP pre-activation bounds of every hidden layer, widened by 1e-9 (big-M)."""
    out = []
    l, u = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    for w, b in layers[:-1]:
        c, r = (l + u) / 2, (u - l) / 2
        zl, zu = w @ c + b - np.abs(w) @ r - 1e-9, w @ c + b + np.abs(w) @ r + 1e-9
        out.append((zl, zu))
        l, u = np.maximum(zl, 0), np.maximum(zu, 0)
    return out


def milp_range(layers, lo, hi, j):
    """Exact ``(min, max)`` of output ``j`` of the ReLU MLP ``layers`` over the box, by a
    big-M mixed-integer program (scipy ``milp``), each checked by evaluating the network at
    the optimiser (so both are attained values)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    n_in = lo.size
    sizes = [w.shape[0] for w, _ in layers[:-1]]
    n_var = n_in + sum(3 * s for s in sizes)
    rows, lbs, ubs = [], [], []
    integrality = np.zeros(n_var)
    var_lo, var_hi = np.full(n_var, -np.inf), np.full(n_var, np.inf)
    var_lo[:n_in], var_hi[:n_in] = lo, hi

    def add(coefs, lb, ub):
        r = np.zeros(n_var)
        for k, v in coefs:
            r[k] += v
        rows.append(r), lbs.append(lb), ubs.append(ub)

    prev = np.arange(n_in)
    offset = n_in
    for (w, b), s, (l, u) in zip(layers[:-1], sizes, _ibp_pre_bounds(layers, lo, hi),
                                 strict=True):
        z, a, d = (offset + np.arange(s), offset + s + np.arange(s),
                   offset + 2 * s + np.arange(s))
        offset += 3 * s
        integrality[d] = 1
        var_lo[d], var_hi[d] = 0, 1
        var_lo[a] = 0
        for i in range(s):
            add([(z[i], 1)] + [(p, -w[i, k]) for k, p in enumerate(prev)], b[i], b[i])
            add([(a[i], 1), (z[i], -1)], 0, np.inf)  # a >= z
            add([(a[i], 1), (z[i], -1), (d[i], -l[i])], -np.inf, -l[i])  # a <= z - l(1-d)
            add([(a[i], 1), (d[i], -u[i])], -np.inf, 0)  # a <= u d
        prev = a
    w, b = layers[-1]
    values = []
    for sense in (1.0, -1.0):
        c = np.zeros(n_var)
        c[prev] = sense * w[j]
        res = milp(c, constraints=LinearConstraint(np.array(rows), lbs, ubs),
                   integrality=integrality, bounds=Bounds(var_lo, var_hi))
        assert res.status == 0, res.message
        value = sense * res.fun + b[j]
        attained = float(mlp_forward(layers, res.x[:n_in])[j])
        assert abs(attained - value) <= 1e-6 * (1 + abs(value)), (attained, value)
        values.append(attained)
    return values[0], values[1]


def random_mlp(rng, sizes):
    """``[(W [out, in] / sqrt(in), b), ...]`` with N(0, 1) weights and N(0, 0.09) biases."""
    return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
            for i, o in zip(sizes[:-1], sizes[1:], strict=True)]


def softplus_surrogate(layers):
    """``(x, beta) ->`` the MLP ``layers = [(W [out, in], b), ...]`` with each ReLU replaced
    by softplus(β·)/β: a smooth surrogate to climb ``‖J‖`` of a ReLU network."""

    def f(x, beta):
        for k, (w, b) in enumerate(layers):
            x = w @ x + b
            if k < len(layers) - 1:
                x = jax.nn.softplus(beta * x) / beta
        return x

    return f
