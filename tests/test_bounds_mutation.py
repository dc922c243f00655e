"""Mutation tests of the bounds family: every soundness check proves it can fail.

Each family has ONE soundness check, a function of this module, used both by the normal
soundness tests (which must pass on the real bounds; the family test files call them too)
and by the mutation tests, which monkeypatch a bound into an unsound one and must see the
same check report a violation:

- :func:`svd_soundness`: every SVD compression figure against the exact truncation error of
  the concatenation (a float64 NumPy SVD), on random, orthogonal (Weyl/residual exact) and
  shared-subspace blocks, with a random and the exact (top singular vectors) basis;
- :func:`pac_bayes_soundness`: every PAC-Bayes/Occam/Catoni/binomial bound and the kl
  inverses against their defining inequality (the certificate that makes them bounds:
  kl(q‖u) ≥ c, Hoeffding's 2n(B − R̂)² ≥ …, Catoni's −ln(1 − B(1 − e^{−C})) ≥ …, the
  binomial tail P[Bin(n, B) ≤ k] ≤ δ), evaluated with SciPy on an exhaustive grid;
- :func:`sensitivity_soundness`: the ℓp sensitivity upper bounds against the largest ratio
  |⟨a_i, x⟩|^p / ‖Ax‖_p^p found by a worst-case search (every vertex at p = 1, BFGS on the
  convex dual problem otherwise, random directions on top), and the lower bounds against the
  dual certificates of the optimum found.

Mutations: the bound replaced by 0.99 × its true value (upper bounds) or 1.01 × (lower
bounds), the true value computed independently (NumPy SVD, SciPy brentq and closed forms,
vertex enumeration / SLSQP), plus a few realistic bugs. The table (target, mutation, caught
by) is printed and written to ``runs/mutation_table_bounds.md``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np
import pytest
from scipy import optimize, special, stats

from jaxbounds.bounds import pac_bayes as pb
from jaxbounds.bounds import sensitivity as sens
from jaxbounds.bounds import svd

ROWS: list[tuple[str, str, str]] = []
TABLE = Path(__file__).resolve().parents[1] / "runs" / "mutation_table_bounds.md"
SOUND_RTOL = 1e-9  # outward tolerance of the sensitivity and certificate comparisons


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    if not ROWS:
        return
    TABLE.parent.mkdir(exist_ok=True)
    lines = ["| target | mutation | caught by |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {c} |" for t, m, c in ROWS]
    caught = sum(not c.startswith("MISSED") for _, _, c in ROWS)
    lines.append(f"\n{caught}/{len(ROWS)} unsound mutations caught.\n")
    TABLE.write_text("\n".join(lines))
    print("\n" + "\n".join(lines))


class Finding(NamedTuple):
    """One bound's result under a soundness check."""

    violations: int
    instances: int
    coverage: float
    """Best value found / bound for an upper bound (bound / best for a lower bound): 1 means
    the bound is attained, > 1 is a violation."""


def _record(target, mutation, findings, name, check):
    caught = findings[name].violations > 0
    ROWS.append((target, mutation, f"{check} ({findings[name].violations}/"
                 f"{findings[name].instances} instances)" if caught else f"MISSED ({check})"))
    assert caught, (target, mutation, findings[name])


def _print(findings, title):
    print(f"\n{title}: bound, violations/instances, coverage (found / bound)")
    for name, f in findings.items():
        print(f"  {name:28s} {f.violations}/{f.instances}  {f.coverage:.9f}")


# =========================================================================== SVD

SVD_UPPER = ("weyl_bound", "residual_bound", "certified_bound", "projection_bound")
SVD_R = 2


def svd_true_error(blocks, r):
    """e_r(M) by a float64 NumPy SVD of the concatenation."""
    s = np.linalg.svd(np.concatenate(blocks, axis=1), compute_uv=False)
    total = np.sum(s**2)
    return float(np.sqrt(np.sum(s[r:] ** 2) / total)) if total > 0 else 0.0


def svd_instances(seed=0):
    """(blocks, basis) pairs: random blocks with random bases, orthogonal single-column
    blocks (the Weyl and residual bounds are exact there), shared-subspace blocks, and the
    exact top-r singular basis (the projection bound is exact)."""
    rng = np.random.default_rng(seed)
    n = 6
    out = []
    for _ in range(6):
        blocks = [rng.standard_normal((n, c)) * np.exp(rng.standard_normal())
                  for c in (1, 2, 1, 2)]
        out.append((blocks, rng.standard_normal((n, SVD_R))))
    for _ in range(3):  # orthogonal columns: M = diag(s) up to a rotation
        q = np.linalg.qr(rng.standard_normal((n, n)))[0]
        s = np.sort(rng.uniform(0.5, 2.0, 4))[::-1]
        blocks = [q[:, [k]] * s[k] for k in rng.permutation(4)]
        out.append((blocks, q[:, :SVD_R]))
    for _ in range(3):  # a shared 2-D subspace plus noise; the top singular basis
        u = np.linalg.qr(rng.standard_normal((n, 2)))[0]
        blocks = [u @ rng.standard_normal((2, c)) + 0.1 * rng.standard_normal((n, c))
                  for c in (2, 1, 2)]
        top = np.linalg.svd(np.concatenate(blocks, 1))[0][:, :SVD_R]
        out.append((blocks, top))
    return out


def _svd_figure(name, blocks, basis):
    fn = getattr(svd, name)  # looked up at call time: monkeypatching replaces it
    return float(fn(blocks, basis) if name == "projection_bound" else fn(blocks, SVD_R))


def svd_soundness(instances) -> dict[str, Finding]:
    """The SVD family's check: each upper bound ≥ the exact error (no tolerance) and
    ``concat_svd_error`` equal to it (1e-10 relative), on every instance."""
    findings = {}
    truths = [svd_true_error(b, SVD_R) for b, _ in instances]
    for name in ("concat_svd_error", *SVD_UPPER):
        values = np.array([_svd_figure(name, b, q) for b, q in instances])
        if name == "concat_svd_error":
            bad = np.abs(values - truths) > 1e-10 * np.asarray(truths) + 1e-14
            coverage = float(np.min(values / truths))
        else:
            bad = values < truths
            coverage = float(np.max(np.asarray(truths) / values))
        findings[name] = Finding(int(np.sum(bad)), len(instances), coverage)
    return findings


def test_svd_check_passes_on_the_real_bounds():
    findings = svd_soundness(svd_instances())
    _print(findings, "SVD compression bounds")
    assert all(f.violations == 0 for f in findings.values()), findings
    # exact instances are in the set: the best coverage is 1 up to √τ-level rounding
    for name in SVD_UPPER:
        assert findings[name].coverage >= 1 - 1e-6, name


def _scaled_truth(factor):
    def mutant(blocks, r_or_basis, **_):
        r = r_or_basis.shape[1] if np.ndim(r_or_basis) == 2 else r_or_basis
        return np.float64(factor * svd_true_error([np.asarray(b) for b in blocks], r))

    return mutant


def _weyl_head_off_by_one(blocks, r, **_):
    """Weyl's head allowed r + 1 columns (an off-by-one bug)."""
    blocks = [np.asarray(b) for b in blocks]
    sq = np.array([np.sum(b**2) for b in blocks])
    order = np.argsort(-sq, kind="stable")
    widths = np.cumsum([blocks[i].shape[1] for i in order])
    head = np.sum(sq[order][widths <= r + 1])
    return np.float64(np.sqrt(max(0.0, 1 - head / sq.sum())))


def _projection_without_qr(blocks, basis, **_):
    """The projection bound on the given basis, not re-orthonormalised (unit columns)."""
    m = np.concatenate([np.asarray(b) for b in blocks], 1)
    q = np.asarray(basis) / np.linalg.norm(basis, axis=0)
    total = np.sum(m**2)
    return np.float64(np.sqrt(max(0.0, 1 - np.sum((q.T @ m) ** 2) / total)))


SVD_MUTATIONS = [(name, "0.99 × true error", _scaled_truth(0.99)) for name in SVD_UPPER] + [
    ("concat_svd_error", "0.99 × true error", _scaled_truth(0.99)),
    ("concat_svd_error", "1.01 × true error", _scaled_truth(1.01)),
    ("weyl_bound", "head of r + 1 columns (off by one)", _weyl_head_off_by_one),
    ("projection_bound", "basis not re-orthonormalised", _projection_without_qr),
]


@pytest.mark.parametrize("name, mutation, mutant", SVD_MUTATIONS,
                         ids=[f"{n}-{m}" for n, m, _ in SVD_MUTATIONS])
def test_svd_mutation_is_caught(monkeypatch, name, mutation, mutant):
    monkeypatch.setattr(svd, name, mutant)
    findings = svd_soundness(svd_instances())
    _record(f"svd.{name}", mutation, findings, name, "svd_soundness (exact NumPy SVD)")


# ===================================================================== PAC-Bayes

PB_DELTA = 0.05
PB_GRID = np.geomspace(0.1, 10, 8)


def _kl(q, p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return special.rel_entr(q, p) + special.rel_entr(1 - q, 1 - p)


def pb_inputs():
    """An exhaustive grid: risk ∈ {0, …, 0.9}, n ∈ {10, 200, 50,000}, KL ∈ {0, 5, 832.2},
    δ ∈ {0.01, 0.05, 0.5}; (q, c) for the inverses; (k, n) for the binomial tail."""
    r, n, k, d = (a.ravel() for a in np.meshgrid([0.0, 0.01, 0.1, 0.3, 0.5, 0.9],
                                                  [10.0, 200.0, 50_000.0], [0.0, 5.0, 832.2],
                                                  [0.01, 0.05, 0.5], indexing="ij"))
    q, c = (a.ravel() for a in np.meshgrid([0.0, 1e-6, 0.01, 0.1, 0.3, 0.5, 0.9, 0.999, 1.0],
                                           [1e-6, 1e-3, 0.05, 0.5, 3.0], indexing="ij"))
    kn = [(k_, n_) for n_ in (1, 10, 200, 5000)
          for k_ in sorted({0, n_ // 10, n_ // 2, n_ - 1, n_})]
    ks, ns = (np.array(v, float) for v in zip(*kn))
    ks, ns = np.concatenate([ks, ks]), np.concatenate([ns, ns])
    deltas = np.repeat([0.05, 0.5], len(kn))
    return dict(risk=r, n=n, kl=k, delta=d, q=q, c=c, errors=ks, trials=ns, tail_delta=deltas)


def _calls(x):
    """Each bound: (its arguments, its defining inequality as a function of the bound's value
    → True where sound, and whether it is a lower bound)."""
    r, n, k, d = x["risk"], x["n"], x["kl"], x["delta"]
    log_1 = np.log(1 / d)
    log_2 = np.log(2 * np.sqrt(n) / d)
    tol = lambda v: v * (1 - SOUND_RTOL) - 1e-300  # outward: rounding of SciPy's kl etc.
    hoeffding = lambda L: (lambda b: (b >= r) & (2 * n * (b - r) ** 2 >= tol(k + L)))
    kl_cert = lambda L: (lambda b: (b >= r) & ((b >= 1) | (_kl(r, b) >= tol((k + L) / n))))

    def catoni_cert(b, c, log_term):
        with np.errstate(divide="ignore", invalid="ignore"):
            lhs = -np.log1p(-b * -np.expm1(-c))
        return (b >= 1) | (lhs >= tol(c * r + (k + log_term) / n))

    def catoni_grid_cert(b):
        log_g = np.log(len(PB_GRID) / d)
        return np.any([catoni_cert(b, c, log_g) for c in PB_GRID], axis=0)

    def binomial_cert(b):
        return (b >= 1) | (stats.binom.cdf(x["errors"], x["trials"], b)
                           <= x["tail_delta"] * (1 + SOUND_RTOL))

    q, c = x["q"], x["c"]
    common = (r, n, d, k)
    return {
        "occam_bound": (common, hoeffding(log_1), False),
        "mcallester_bound": (common, hoeffding(log_2), False),
        "occam_kl_bound": (common, kl_cert(log_1), False),
        "pac_bayes_kl_bound": (common, kl_cert(log_2), False),
        "catoni_bound": ((*common, 2.0), lambda b: catoni_cert(b, 2.0, log_1), False),
        "catoni_bound_grid": ((*common, PB_GRID), catoni_grid_cert, False),
        "binomial_tail_bound": ((x["errors"], x["trials"], x["tail_delta"]), binomial_cert,
                                False),
        "kl_inverse_upper": ((q, c), lambda u: (u >= q) & ((u >= 1) | (_kl(q, u) >= tol(c))),
                             False),
        "kl_inverse_lower": ((q, c),
                             lambda lo: (lo <= q) & ((lo <= 0) | (_kl(q, lo) >= tol(c))), True),
    }


def _brentq_inverse(q, c, upper):
    f = lambda p: _kl(q, p) - c
    if upper:
        return 1.0 if q == 1 or f(1.0) <= 0 else optimize.brentq(f, q, 1.0, xtol=1e-16,
                                                                 rtol=1e-15)
    return 0.0 if q == 0 or f(0.0) <= 0 else optimize.brentq(f, 0.0, q, xtol=1e-16,
                                                             rtol=1e-15)


def _brentq_binomial(k, n, delta):
    if k == n:
        return 1.0
    return optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - delta, 0.0, 1.0,
                           xtol=1e-16, rtol=1e-15)


def _catoni(r, n, d, k, c):
    return -np.expm1(-c * r - (k + np.log(1 / d)) / n) / -np.expm1(-c)


_inverse = np.vectorize(_brentq_inverse)

PB_TRUTH = {  # the exact value of each bound, independently: closed forms, brentq in SciPy
    "occam_bound": lambda r, n, d, k: r + np.sqrt((k + np.log(1 / d)) / (2 * n)),
    "mcallester_bound": lambda r, n, d, k: r + np.sqrt((k + np.log(2 * np.sqrt(n) / d))
                                                       / (2 * n)),
    "occam_kl_bound": lambda r, n, d, k: _inverse(r, (k + np.log(1 / d)) / n, True),
    "pac_bayes_kl_bound": lambda r, n, d, k: _inverse(r, (k + np.log(2 * np.sqrt(n) / d)) / n,
                                                      True),
    "catoni_bound": _catoni,
    "catoni_bound_grid": lambda r, n, d, k, grid: np.min(
        [_catoni(r, n, d / len(grid), k, c) for c in np.asarray(grid)], axis=0),
    "binomial_tail_bound": np.vectorize(_brentq_binomial),
    "kl_inverse_upper": lambda q, c: _inverse(q, c, True),
    "kl_inverse_lower": lambda q, c: _inverse(q, c, False),
}
_PB_INPUTS = pb_inputs()
_PB_CACHE: dict = {}


def _pb_truth(name, args):
    key = (name, *(np.asarray(a).tobytes() for a in args))
    if key not in _PB_CACHE:
        _PB_CACHE[key] = np.asarray(PB_TRUTH[name](*args), np.float64)
    return _PB_CACHE[key]


def pac_bayes_soundness(x=None) -> dict[str, Finding]:
    """The PAC-Bayes family's check: each bound satisfies its defining inequality on every
    grid point (no truth needed); coverage = the exact value (brentq, closed form) / bound
    for upper bounds, bound / exact for the lower one."""
    x = _PB_INPUTS if x is None else x
    findings = {}
    for name, (args, certificate, lower) in _calls(x).items():
        value = np.asarray(getattr(pb, name)(*args), np.float64)  # monkeypatchable
        bad = ~certificate(value) | ~np.isfinite(value)
        truth = _pb_truth(name, args)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(truth == value, 1.0, (value / truth) if lower else (truth / value))
        findings[name] = Finding(int(np.sum(bad)), value.size, float(np.nanmax(ratio)))
    return findings


def test_pac_bayes_check_passes_on_the_real_bounds():
    findings = pac_bayes_soundness()
    _print(findings, "PAC-Bayes bounds")
    assert all(f.violations == 0 for f in findings.values()), findings
    # Each is computed exactly: attained up to rounding. (Above 1 only by the error of the
    # SciPy reference, whose rel_entr form of kl cancels when p ≈ q: 1.2e-12 seen.)
    for name, f in findings.items():
        assert 1 - 1e-6 <= f.coverage <= 1 + 1e-9, (name, f)


def _pb_mutant(name, factor):
    def mutant(*args):
        truth = _pb_truth(name, args)
        if name == "kl_inverse_lower":
            return np.minimum(factor * truth, args[0])  # too high, but still ≤ q
        return factor * truth

    return mutant


def _catoni_grid_without_union_bound(risk, n, delta, kl, c_grid):
    """Catoni's grid bound paying nothing for the grid (δ, not δ/G)."""
    return np.min([_catoni(risk, n, delta, kl, c) for c in np.asarray(c_grid)], axis=0)


PB_NAMES = ("occam_bound", "mcallester_bound", "occam_kl_bound", "pac_bayes_kl_bound",
            "catoni_bound", "catoni_bound_grid", "binomial_tail_bound", "kl_inverse_upper")
PB_MUTATIONS = [(name, "0.99 × true value", _pb_mutant(name, 0.99)) for name in PB_NAMES] + [
    ("kl_inverse_lower", "1.01 × true value (lower bound)", _pb_mutant("kl_inverse_lower", 1.01)),
    ("catoni_bound_grid", "no union bound over the grid", _catoni_grid_without_union_bound),
]


@pytest.mark.parametrize("name, mutation, mutant", PB_MUTATIONS,
                         ids=[f"{n}-{m}" for n, m, _ in PB_MUTATIONS])
def test_pac_bayes_mutation_is_caught(monkeypatch, name, mutation, mutant):
    monkeypatch.setattr(pb, name, mutant)
    findings = pac_bayes_soundness()
    _record(f"pac_bayes.{name}", mutation, findings, name,
            "pac_bayes_soundness (defining inequality)")


# =================================================================== sensitivity


def sensitivity_matrix(seed=0, n=9, d=3):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((n, d))
    A[:2] *= 8.0  # heavy rows
    return A


def _dual_certificate(A, i, x, p):
    """An upper bound on s_i from the point x: u ∝ |Ax|^{p−1} sign(Ax), corrected exactly
    onto {Aᵀu = a_i} (least-norm), gives s_i ≤ ‖u‖_q^p (q = p/(p − 1))."""
    y = A @ x
    w = np.abs(y) ** (p - 1) * np.sign(y)
    u = w * np.linalg.lstsq((A.T @ w)[:, None], A[i], rcond=None)[0][0]  # Aᵀu ≈ a_i
    u = u + A @ np.linalg.solve(A.T @ A, A[i] - A.T @ u)
    q = p / (p - 1)
    return float(np.sum(np.abs(u) ** q) ** (p / q))


def _vertex_search(A, i):
    """p = 1: min ‖Ax‖₁ s.t. ⟨a_i, x⟩ = 1 is attained at a vertex (d − 1 other rows zero)."""
    n, d = A.shape
    best = np.inf
    for rows in itertools.combinations([j for j in range(n) if j != i], d - 1):
        M = A[[i, *rows]]
        if abs(np.linalg.det(M)) < 1e-12:
            continue
        x = np.linalg.solve(M, np.eye(d)[0])
        best = min(best, np.abs(A @ x).sum())
    return 1.0 / best


def _convex_search(A, i, p, starts):
    """p > 1: min ‖Ax‖_p^p s.t. ⟨a_i, x⟩ = 1 by BFGS over x = x0 + Nz (N ⊥ a_i), from several
    starts; returns (best ratio found, its dual certificate)."""
    a = A[i]
    x0 = a / (a @ a)
    N = np.linalg.svd(a[None, :])[2][1:].T
    f = lambda z: np.sum(np.abs(A @ (x0 + N @ z)) ** p)
    g = lambda z: N.T @ (A.T @ (p * np.abs(A @ (x0 + N @ z)) ** (p - 1)
                                * np.sign(A @ (x0 + N @ z))))
    best_val, best_x = np.inf, x0
    for z0 in starts:
        res = optimize.minimize(f, z0, jac=g, method="BFGS", options={"gtol": 1e-12,
                                                                      "maxiter": 500})
        if res.fun < best_val:
            best_val, best_x = res.fun, x0 + N @ res.x
    return 1.0 / best_val, _dual_certificate(A, i, best_x, p)


_SEARCH: dict = {}


def sensitivity_search(A, p, seed=0):
    """Per row: (best ratio found = a lower estimate of s_i, a dual certificate ≥ s_i).

    Worst-case search: every vertex at p = 1 (exact); BFGS on the convex problem from the
    point a_i/‖a_i‖² (and one random start when n ≤ 20) for p > 1; 2,000 random directions
    on top (p = 2: the closed form a_iᵀ(AᵀA)⁻¹a_i, exact). Cached per (A, p)."""
    key = (A.tobytes(), A.shape, p, seed)
    if key in _SEARCH:
        return _SEARCH[key]
    n, d = A.shape
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, 2000))
    Y = np.abs(A @ X) ** p
    sampled = np.max(Y / Y.sum(0), axis=1)
    found, dual = np.empty(n), np.empty(n)
    for i in range(n):
        if p == 1:
            found[i] = dual[i] = _vertex_search(A, i)
        elif p == 2:
            found[i] = dual[i] = A[i] @ np.linalg.solve(A.T @ A, A[i])
        else:
            # convex: one start suffices; a random second one guards against a stall
            starts = [np.zeros(d - 1), rng.standard_normal(d - 1)][:1 + (n <= 20)]
            found[i], dual[i] = _convex_search(A, i, p, starts)
        found[i] = max(found[i], sampled[i])
    _SEARCH[key] = (found, dual)
    return found, dual


def _sensitivity_calls(A, p):
    calls = {"lp_sensitivities.upper": (lambda: sens.lp_sensitivities(A, p).upper, False),
             "lp_sensitivities.lower": (lambda: sens.lp_sensitivities(A, p).lower, True),
             "lewis_sensitivity_bound": (lambda: sens.lewis_sensitivity_bound(A, p), False)}
    if p <= 2:
        calls["root_leverage_bound"] = (lambda: sens.root_leverage_bound(A, p), False)
    if p == 2:
        calls["leverage_scores"] = (lambda: sens.leverage_scores(A), False)
    return calls


def sensitivity_soundness(A, p) -> dict[str, Finding]:
    """The sensitivity family's check: no ratio found by :func:`sensitivity_search` exceeds
    an upper bound, and no lower bound exceeds the dual certificate of the optimum found
    (both with the outward tolerance 1e-9)."""
    found, dual = sensitivity_search(A, p)
    findings = {}
    for name, (call, lower) in _sensitivity_calls(A, p).items():
        value = np.asarray(call(), np.float64)
        if lower:
            bad = value > dual * (1 + SOUND_RTOL)
            coverage = float(np.max(value / dual))
        else:
            bad = found > value * (1 + SOUND_RTOL)
            coverage = float(np.max(found / value))
        findings[name] = Finding(int(np.sum(bad | ~np.isfinite(value))), len(value), coverage)
    return findings


SENS_PS = (1.0, 1.5, 2.0, 3.0)


@pytest.mark.parametrize("p", SENS_PS)
def test_sensitivity_check_passes_on_the_real_bounds(p):
    A = sensitivity_matrix()
    found, dual = sensitivity_search(A, p)
    # the search is exact: its primal value and dual certificate agree (weak duality: the
    # certificate is ≥ s ≥ the value found, up to rounding)
    gap = dual / found - 1
    print(f"p = {p}: search duality gap in [{gap.min():.1e}, {gap.max():.1e}]")
    assert np.all(np.abs(gap) < 1e-8)
    findings = sensitivity_soundness(A, p)
    _print(findings, f"ℓp sensitivities, p = {p}")
    assert all(f.violations == 0 for f in findings.values()), findings
    # the bracket of lp_sensitivities is exact (p ∈ {1, 2}) or closes to 1e-6
    assert findings["lp_sensitivities.upper"].coverage >= 1 - 1e-6
    assert findings["lp_sensitivities.lower"].coverage >= 1 - 1e-6


def sensitivity_truth(A, p):
    """Exact s (independent of the search): vertices at p = 1, the closed form at p = 2,
    SLSQP on the constrained problem otherwise."""
    A = np.asarray(A)
    n, _ = A.shape
    if p == 2:
        return np.einsum("ij,jk,ik->i", A, np.linalg.inv(A.T @ A), A)
    if p == 1:
        return np.array([_vertex_search(A, i) for i in range(n)])
    out = []
    for i in range(n):
        cons = {"type": "eq", "fun": lambda x, i=i: A[i] @ x - 1.0}
        res = optimize.minimize(lambda x: np.sum(np.abs(A @ x) ** p), A[i] / (A[i] @ A[i]),
                                constraints=[cons], method="SLSQP",
                                options={"ftol": 1e-15, "maxiter": 500})
        out.append(1.0 / res.fun)
    return np.array(out)


def _sens_mutant(target, factor):
    def mutant(A, p, **kwargs):
        truth = sensitivity_truth(A, p)
        if target == "lp_sensitivities":
            real = _REAL_LP(A, p, **kwargs)
            if factor < 1:
                return sens.SensitivityBounds(real.lower, factor * truth)
            return sens.SensitivityBounds(factor * truth, real.upper)
        return factor * truth

    return mutant


def _upper_is_the_first_lower(A, p, **kwargs):
    """The upper bound replaced by the Lewis-direction ratio (no IRLS, no dual certificate)."""
    lower = _REAL_LP(A, p, method="bounds", num_iters=0).lower
    return sens.SensitivityBounds(lower, lower)


_REAL_LP = sens.lp_sensitivities
SENS_MUTATIONS = [
    (p, "lp_sensitivities", "0.99 × true (upper)", _sens_mutant("lp_sensitivities", 0.99))
    for p in SENS_PS] + [
    (p, "lp_sensitivities", "1.01 × true (lower)", _sens_mutant("lp_sensitivities", 1.01))
    for p in (1.5, 3.0)] + [
    (1.5, "lewis_sensitivity_bound", "0.99 × true", _sens_mutant("lewis", 0.99)),
    (3.0, "lewis_sensitivity_bound", "0.99 × true", _sens_mutant("lewis", 0.99)),
    (1.5, "root_leverage_bound", "0.99 × true", _sens_mutant("root", 0.99)),
    (2.0, "leverage_scores", "0.99 × true", lambda A: 0.99 * sensitivity_truth(A, 2.0)),
    (3.0, "lp_sensitivities", "upper = Lewis-direction ratio (no certificate)",
     _upper_is_the_first_lower),
]


@pytest.mark.parametrize("p, name, mutation, mutant", SENS_MUTATIONS,
                         ids=[f"p{p}-{n}-{m}" for p, n, m, _ in SENS_MUTATIONS])
def test_sensitivity_mutation_is_caught(monkeypatch, p, name, mutation, mutant):
    monkeypatch.setattr(sens, name, mutant)
    findings = sensitivity_soundness(sensitivity_matrix(), p)
    key = {"lp_sensitivities": "lp_sensitivities.upper"}.get(name, name)
    if "lower" in mutation:
        key = "lp_sensitivities.lower"
    _record(f"sensitivity.{name} (p = {p:g})", mutation, findings, key,
            "sensitivity_soundness (vertex / BFGS search, dual certificates)")
