"""Mutation tests: every verify soundness check proves it can fail.

Bounds are made unsound on purpose, by monkeypatching (never a flag in the library), and the
worst-case search of :mod:`worst_case` must report a violation:

- each interval rule, shrunk by 1% of its output width on each side, on the primitive's own
  small instance (exact range by vertex enumeration and projected gradient search); the same
  mutation through a deeper Flax network is reported as "caught" or "still sound";
- IBP, CROWN, ``local_lipschitz_upper`` and LipSDP replaced by a value 1% too tight relative
  to the true value, on instances whose true value is known exactly;
- mutations that leave the easy cases exact (only wide boxes, only the two-interval
  ``dot_general``, only CROWN's unstable-ReLU relaxation).

The module writes the table (target, mutation, caught by) to
``runs/mutation_table_verify.md``.
"""

from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from worst_case import (
    box_extremes,
    check_box,
    lipschitz_ascent,
    milp_range,
    mlp_forward,
    random_mlp,
    report_coverage,
    shrink,
    vertices,
)

from jaxbounds.verify import crown as crown_module
from jaxbounds.verify import ibp as ibp_module
from jaxbounds.verify import lipsdp as lipsdp_module
from jaxbounds.verify import local_lipschitz as ll_module
from jaxbounds.verify.interval_rules import INTERVAL_RULES, Box, is_box

ROWS: list[tuple[str, str, str]] = []
TABLE = Path(__file__).resolve().parents[1] / "runs" / "mutation_table_verify.md"


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    TABLE.parent.mkdir(exist_ok=True)
    lines = ["| target | mutation | caught by |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {c} |" for t, m, c in ROWS]
    caught = sum(not c.startswith("MISSED") for _, _, c in ROWS)
    lines.append(f"\n{caught}/{len(ROWS)} unsound mutations caught.\n")
    TABLE.write_text("\n".join(lines))
    print("\n" + "\n".join(lines))


def _shrunk(box, fraction, where=None):
    """``box`` shrunk by ``fraction`` of its width on each side (only where ``where``)."""
    if not is_box(box) or not jnp.issubdtype(box.lo.dtype, jnp.floating):
        return box
    w = box.hi - box.lo
    d = jnp.where(jnp.isfinite(w), fraction * w, 0.0)
    if where is not None:
        d = jnp.where(where(box), d, 0.0)
    return Box(box.lo + d, box.hi - d)


def shrink_rule(rule, fraction=0.01, where=None, when=None):
    """The interval rule ``rule`` with every output box shrunk (an unsound rule)."""

    def mutated(ctx, eqn, *values):
        outs = rule(ctx, eqn, *values)
        if when is not None and not when(values):
            return outs
        return [_shrunk(o, fraction, where) for o in outs]

    return mutated


def _primitives(jaxpr):
    """Names of every primitive in a (closed) jaxpr, sub-jaxprs included."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else [value]:
                if hasattr(sub, "eqns") or hasattr(getattr(sub, "jaxpr", None), "eqns"):
                    names |= _primitives(sub)
    return names


# --------------------------------------------------------------------------- rule instances

W = np.random.default_rng(0).normal(size=(6, 3))
K = np.random.default_rng(1).normal(size=(2, 1, 2, 2))  # OIHW


@jax.custom_vjp
def _clip_grad(x):
    return jnp.tanh(x)


_clip_grad.defvjp(lambda x: (jnp.tanh(x), None), lambda _, g: (jnp.clip(g, -1, 1),))


def _pool(x, kind):
    img = x[:9].reshape(1, 3, 3, 1)
    if kind == "max":
        return nn.max_pool(img, (2, 2), (1, 1)).reshape(-1)
    return nn.avg_pool(img, (2, 2), (1, 1)).reshape(-1)


# rule label -> (primitive names to mutate, fn of a [d]-vector, d, offset of the box centre)
RULE_CASES = {
    "dot_general (constant)": (("dot_general",), lambda x: x @ W, 6, 0.0),
    "dot_general (two intervals)": (("dot_general",), lambda x: x[:3] @ x[3:], 6, 0.0),
    "conv_general_dilated": (("conv_general_dilated",),
                             lambda x: lax.conv_general_dilated(
                                 x.reshape(1, 1, 3, 3), K, (1, 1), "VALID").reshape(-1), 9, 0.0),
    "mul": (("mul",), lambda x: x[:3] * x[3:], 6, 0.0),
    "div": (("div",), lambda x: x[:3] / (2.5 + x[3:]), 6, 0.0),
    "integer_pow": (("integer_pow",), lambda x: jnp.concatenate(
        [lax.integer_pow(x[:3], 2), lax.integer_pow(x[3:], 3)]), 6, 0.0),
    "square": (("square",), lambda x: lax.square(x), 6, 0.0),
    "abs": (("abs",), lambda x: lax.abs(x), 6, 0.0),
    "reduce_sum": (("reduce_sum",), lambda x: x.reshape(2, 3).sum(1), 6, 0.0),
    "reduce_max": (("reduce_max",), lambda x: x.reshape(2, 3).max(1), 6, 0.0),
    "reduce_min": (("reduce_min",), lambda x: x.reshape(2, 3).min(1), 6, 0.0),
    "cumsum": (("cumsum",), lambda x: jnp.cumsum(x), 6, 0.0),
    "pooling: max_pool (reduce_window_max)": (("reduce_window_max", "reduce_window"),
                                              lambda x: _pool(x, "max"), 9, 0.0),
    "pooling: avg_pool (reduce_window_sum)": (("reduce_window_sum", "reduce_window"),
                                              lambda x: _pool(x, "avg"), 9, 0.0),
    "select_n": (("select_n",), lambda x: jnp.where(x[:2] > 0, x[2:4], x[4:6]), 6, 0.0),
    "max": (("max",), lambda x: jnp.maximum(x[:3], x[3:]), 6, 0.0),
    "min": (("min",), lambda x: jnp.minimum(x[:3], x[3:]), 6, 0.0),
    "pjit (recursion)": (("pjit", "jit"), lambda x: jax.jit(lambda y: y @ W)(x), 6, 0.0),
    "custom_jvp_call (recursion)": (("custom_jvp_call",), lambda x: jax.nn.relu(x), 6, 0.0),
    "custom_vjp_call (recursion)": (("custom_vjp_call", "custom_vjp_call_jaxpr"),
                                    lambda x: _clip_grad(x), 6, 0.0),
}
for _name, _offset in [("tanh", 0.0), ("logistic", 0.0), ("exp", 0.0), ("log", 3.0),
                       ("log1p", 1.0), ("expm1", 0.0), ("sqrt", 3.0), ("rsqrt", 3.0),
                       ("erf", 0.0), ("erfc", 0.0), ("atan", 0.0), ("asinh", 0.0),
                       ("sinh", 0.0), ("cbrt", 3.0)]:
    RULE_CASES[f"monotone: {_name}"] = ((_name,), getattr(lax, _name), 6, _offset)


class _MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16)(x))
        x = jnp.tanh(nn.Dense(16)(x))
        return nn.Dense(4)(nn.sigmoid(nn.Dense(8)(x)))


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(4, (2, 2))(x)), (2, 2), (1, 1))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


_DEEP: dict = {}


def _deep_nets():
    """(fn, lo, hi, found extremes, primitives) for a Flax MLP and CNN; searched once."""
    if not _DEEP:
        for label, model, shape in (("MLP", _MLP(), (12,)), ("CNN", _CNN(), (1, 6, 6, 1))):
            x0 = jax.random.uniform(jax.random.key(11), shape, jnp.float64)
            params = model.init(jax.random.key(2), x0)

            def fn(x, model=model, params=params):
                return model.apply(params, x)

            lo, hi = x0 - 0.1, x0 + 0.1
            found = box_extremes(fn, lo, hi, starts=4, steps=30, samples=500)
            _DEEP[label] = (fn, lo, hi, found, _primitives(jax.make_jaxpr(fn)(x0)))
    return _DEEP


def _patch_rules(monkeypatch, names, **kwargs):
    for name in names:
        if name in INTERVAL_RULES:
            monkeypatch.setitem(INTERVAL_RULES, name, shrink_rule(INTERVAL_RULES[name], **kwargs))


@pytest.mark.parametrize("label", list(RULE_CASES))
def test_shrunk_interval_rule_is_caught_on_its_own_instance(label, monkeypatch):
    names, fn, d, offset = RULE_CASES[label]
    centre = jnp.asarray(np.random.default_rng(3).normal(size=d) * 0.3 + offset)
    lo, hi = centre - 0.5, centre + 0.5
    used = _primitives(jax.make_jaxpr(fn)(centre)) & set(names)
    assert used, (label, "the instance does not use the mutated primitive")
    found = box_extremes(fn, lo, hi, starts=8, steps=40, samples=500)
    honest = check_box(fn, lo, hi, *ibp_module.interval_bounds(fn, lo, hi), label=label)
    assert honest.violations == 0  # the check passes the real rule
    _patch_rules(monkeypatch, used)
    b_lo, b_hi = ibp_module.interval_bounds(fn, lo, hi)
    caught = int(np.sum(found.lo < np.ravel(b_lo)) + np.sum(found.hi > np.ravel(b_hi)))
    deep = []
    for net, (dfn, dlo, dhi, dfound, prims) in _deep_nets().items():
        if prims & set(names):
            o_lo, o_hi = ibp_module.interval_bounds(dfn, dlo, dhi)
            bad = np.sum(dfound.lo < np.ravel(o_lo)) + np.sum(dfound.hi > np.ravel(o_hi))
            deep.append(f"Flax {net}: {'caught' if bad else 'still sound'}")
    verdict = "own instance: worst-case search" if caught else "MISSED"
    ROWS.append((f"interval rule {label}", "output box shrunk by 1% of width per side",
                 "; ".join([verdict] + deep)))
    assert caught > 0, label


# --------------------------------------------------------------------------- families


def _box_caught(fn, lo, hi, bound):
    return check_box(fn, lo, hi, *bound, label="mutated").violations > 0


def _tiny_relu(seed):
    rng = np.random.default_rng(100 + seed)
    layers = random_mlp(rng, [3, 6, 5, 2])
    x0 = rng.uniform(size=3)
    return layers, x0 - 0.3, x0 + 0.3


def _true_range(kind, seed=0):
    """(fn, lo, hi, true_lo, true_hi) of an instance with a known exact range."""
    if kind == "one layer (vertices)":
        rng = np.random.default_rng(seed)
        w, b = rng.normal(size=(4, 10)), rng.normal(size=4)
        lo, hi = rng.normal(size=10) - 0.5, rng.normal(size=10) + 1.0
        lo, hi = np.minimum(lo, hi), np.maximum(lo, hi)
        ys = np.asarray(vertices(lo, hi)) @ w.T + b
        return (lambda x: jnp.asarray(w) @ x + jnp.asarray(b)), lo, hi, ys.min(0), ys.max(0)
    if kind == "linear 3-layer net (vertices)":
        rng = np.random.default_rng(seed)
        ws = [rng.normal(size=(5, 8)), rng.normal(size=(6, 5)), rng.normal(size=(3, 6))]
        a = ws[2] @ ws[1] @ ws[0]
        lo, hi = -np.ones(8), np.ones(8) * 0.5
        ys = np.asarray(vertices(lo, hi)) @ a.T
        return (lambda x: ws[2] @ (ws[1] @ (ws[0] @ x))), lo, hi, ys.min(0), ys.max(0)
    layers, lo, hi = _tiny_relu(seed)  # "tiny ReLU net (MILP range)"
    exact = np.array([milp_range(layers, lo, hi, j) for j in range(2)])
    return (lambda x: mlp_forward(layers, x)), lo, hi, exact[:, 0], exact[:, 1]


FAMILY_BOX = [("IBP", ibp_module, "interval_bounds", "one layer (vertices)"),
              ("IBP", ibp_module, "interval_bounds", "tiny ReLU net (MILP range)"),
              ("CROWN", crown_module, "crown_bounds", "linear 3-layer net (vertices)"),
              ("CROWN", crown_module, "crown_bounds", "tiny ReLU net (MILP range)")]


@pytest.mark.parametrize("family,module,attr,kind", FAMILY_BOX,
                         ids=[f"{f}-{k}" for f, _, _, k in FAMILY_BOX])
def test_box_bound_one_percent_too_tight_is_caught(family, module, attr, kind, monkeypatch):
    fn, lo, hi, t_lo, t_hi = _true_range(kind)
    lo, hi = jnp.asarray(lo), jnp.asarray(hi)
    honest = check_box(fn, lo, hi, *getattr(module, attr)(fn, lo, hi), label=family)
    assert honest.violations == 0
    tight = shrink(t_lo, t_hi)
    monkeypatch.setattr(module, attr, lambda *a, **k: tight)
    caught = _box_caught(fn, lo, hi, getattr(module, attr)(fn, lo, hi))
    ROWS.append((f"{family} ({kind})", "true range shrunk by 1% of width per side",
                 "worst-case search (check_box)" if caught else "MISSED"))
    assert caught


def _lipschitz_cases():
    rng = np.random.default_rng(8)
    w, b = rng.normal(size=(4, 7)), rng.normal(size=4)
    x0 = rng.normal(size=7)
    cases = []
    for norm in ("inf", "1", "2"):
        cases.append(("local_lipschitz_upper", f"affine map, norm {norm}", norm, w, b, x0))
    return cases


@pytest.mark.parametrize("case", _lipschitz_cases(), ids=lambda c: c[1])
def test_local_lipschitz_one_percent_too_tight_is_caught(case, monkeypatch):
    _, kind, norm, w, b, x0 = case
    true = float(ll_module.jacobian_norm(jnp.asarray(w), norm))
    mlp = ll_module.ReluMLP([w.T], [b])
    eps = 0.5
    honest = float(ll_module.local_lipschitz_upper(mlp, jnp.asarray(x0), eps, norm=norm))
    monkeypatch.setattr(ll_module, "local_lipschitz_upper", lambda *a, **k: 0.99 * true)
    bound = ll_module.local_lipschitz_upper(mlp, jnp.asarray(x0), eps, norm=norm)
    best = lipschitz_ascent(lambda x: mlp(x), lo=x0 - eps, hi=x0 + eps, norm=norm, pool=64,
                            starts=4, steps=20)
    assert _scalar_caught(f"local_lipschitz_upper ({kind})", best, honest, bound)


def _scalar_caught(target, best, honest, bound):
    """The search's best value is below the honest bound (its coverage is printed) and above
    the mutated one; records the row."""
    report_coverage(target, best, honest)
    assert best <= honest * (1 + 1e-9)
    caught = best > bound
    ROWS.append((target, "0.99 x true value",
                 "Lipschitz ascent (‖J‖ and quotients)" if caught else "MISSED"))
    return caught


def _orthogonal(seed, n):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q


LIPSDP_CASES = [
    ("one layer", [np.random.default_rng(5).normal(size=(7, 5))], "relu"),
    ("single MaxMin layer (orthogonal)", [_orthogonal(3, 6), _orthogonal(4, 6)], "maxmin"),
]


@pytest.mark.parametrize("kind,ws,activation", LIPSDP_CASES, ids=[c[0] for c in LIPSDP_CASES])
def test_lipsdp_one_percent_too_tight_is_caught(kind, ws, activation, monkeypatch):
    true = (np.linalg.svd(ws[0], compute_uv=False)[0] if len(ws) == 1 else 1.0)
    honest, _ = lipsdp_module.lipsdp_bound(ws, activation)
    monkeypatch.setattr(lipsdp_module, "lipsdp_bound", lambda *a, **k: (0.99 * true, None))
    bound, _ = lipsdp_module.lipsdp_bound(ws, activation)

    def f(x):
        return lipsdp_module.network_forward([jnp.asarray(w) for w in ws], x, activation)

    best = lipschitz_ascent(f, dim=ws[0].shape[0], norm="2", pool=64, starts=4, steps=20)
    assert _scalar_caught(f"LipSDP ({kind})", best, honest, bound)


# --------------------------------------------------------------------------- exact-preserving


def test_shrink_only_wide_boxes_is_caught_by_search(monkeypatch):
    """dot_general shrunk only where the output box is wider than 1: narrow boxes (and point
    boxes) stay exact, a wide one is caught by the search."""
    fn, lo, hi, _, _ = _true_range("one layer (vertices)")
    lo, hi = jnp.asarray(lo), jnp.asarray(hi)
    mid = (lo + hi) / 2
    _patch_rules(monkeypatch, ["dot_general"], where=lambda box: box.hi - box.lo > 1.0)
    narrow = check_box(fn, mid - 1e-3, mid + 1e-3,
                       *ibp_module.interval_bounds(fn, mid - 1e-3, mid + 1e-3), label="narrow")
    assert narrow.violations == 0 and narrow.coverage > 1 - 1e-6  # still exact there
    caught = _box_caught(fn, lo, hi, ibp_module.interval_bounds(fn, lo, hi))
    ROWS.append(("interval rule dot_general", "shrunk 1% only where width > 1 (narrow exact)",
                 "worst-case search on a wide box" if caught else "MISSED"))
    assert caught


def test_shrink_only_two_interval_dot_general_is_caught_by_search(monkeypatch):
    fn = RULE_CASES["dot_general (two intervals)"][1]
    centre = jnp.asarray(np.random.default_rng(4).normal(size=6) * 0.3)
    lo, hi = centre - 0.5, centre + 0.5
    _patch_rules(monkeypatch, ["dot_general"], when=lambda values: all(map(is_box, values)))
    # the constant-operand case stays exact
    w_fn, w_lo, w_hi, t_lo, t_hi = _true_range("one layer (vertices)")
    b_lo, b_hi = ibp_module.interval_bounds(w_fn, jnp.asarray(w_lo), jnp.asarray(w_hi))
    np.testing.assert_allclose([b_lo, b_hi], [t_lo, t_hi], rtol=1e-12)
    caught = _box_caught(fn, lo, hi, ibp_module.interval_bounds(fn, lo, hi))
    ROWS.append(("interval rule dot_general", "shrunk 1% only with two interval operands",
                 "worst-case search (check_box)" if caught else "MISSED"))
    assert caught


def _unstable_relu_upper_lowered(original):
    """CROWN's relaxation with the upper line of unstable ReLUs lowered by 1% of ``u``."""

    def mutated(lo, hi):
        alpha, slope, intercept = original(lo, hi)
        unstable = (lo < 0) & (hi > 0)
        return alpha, slope, jnp.where(unstable, intercept - 0.01 * hi, intercept)

    return mutated


def test_shrink_only_crowns_unstable_relu_relaxation_is_caught_by_search(monkeypatch):
    rng = np.random.default_rng(21)
    # one unstable neuron feeding the output: y = relu(w·x + b), plus a second output
    layers = [(rng.normal(size=(2, 4)), np.array([0.1, -0.2])), (np.eye(2), np.zeros(2))]
    lo, hi = jnp.asarray(-np.ones(4)), jnp.asarray(np.ones(4))

    def fn(x):
        return mlp_forward(layers, x)

    monkeypatch.setattr(crown_module, "_relu_relaxation",
                        _unstable_relu_upper_lowered(crown_module._relu_relaxation))
    # linear networks (no ReLU) stay exact
    lin = _true_range("linear 3-layer net (vertices)")
    c_lo, c_hi = crown_module.crown_bounds(lin[0], jnp.asarray(lin[1]), jnp.asarray(lin[2]))
    np.testing.assert_allclose([c_lo, c_hi], [lin[3], lin[4]], rtol=1e-10)
    caught = _box_caught(fn, lo, hi, crown_module.crown_bounds(fn, lo, hi))
    milp = []
    for seed in range(3):
        t_layers, t_lo, t_hi = _tiny_relu(seed)
        t_fn = (lambda x, t_layers=t_layers: mlp_forward(t_layers, x))
        bad = _box_caught(t_fn, jnp.asarray(t_lo), jnp.asarray(t_hi),
                          crown_module.crown_bounds(t_fn, jnp.asarray(t_lo), jnp.asarray(t_hi)))
        milp.append("caught" if bad else "still sound")
    ROWS.append(("CROWN", "unstable-ReLU upper line lowered by 1% of u (stable/linear exact)",
                 ("worst-case search on a one-hidden-layer net" if caught else "MISSED")
                 + f"; MILP nets: {', '.join(milp)}"))
    assert caught
