"""PAC-Bayes / Occam / test-set bounds: scipy references, the reference table, soundness
by simulation, monotonicity, jit/vmap/dtypes, gradients and the bad-input policy."""

import math
import re
import zlib
from decimal import Decimal, localcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy import optimize, special, stats

from jaxbounds.bounds import pac_bayes as pb

# brentq's own error (xtol + rtol·|x| with rtol = 1e-15): the outward tolerance that the
# soundness comparisons against brentq allow.
BRENTQ_TOL = 4e-15


@pytest.fixture
def rng(request):
    """A fixed seed per test (derived from its name), so every run draws the same inputs."""
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))


def kl_np(q, p):
    return special.rel_entr(q, p) + special.rel_entr(1 - q, 1 - p)


def kl_inv_brentq(q, c, upper=True):
    f = lambda p: kl_np(q, p) - c
    if c == np.inf:
        return 1.0 if upper else 0.0
    if upper:
        if q == 1 or f(1.0) <= 0:
            return 1.0
        return optimize.brentq(f, q, 1.0, xtol=1e-16, rtol=1e-15)
    if q == 0 or f(0.0) <= 0:
        return 0.0
    return optimize.brentq(f, 0.0, q, xtol=1e-16, rtol=1e-15)


def binom_inv_brentq(k, n, delta):
    if k == n:
        return 1.0
    return optimize.brentq(lambda p: stats.binom.cdf(k, n, p) - delta, 0.0, 1.0,
                           xtol=1e-16, rtol=1e-15)


# --------------------------------------------------------------- references


@pytest.mark.parametrize(
    "kl, risk, occam, occam_kl",
    [(832.2, 0.00, 0.0914, 0.0166), (832.2, 0.05, 0.1414, 0.1000), (50.0, 0.30, 0.3230, 0.3214)],
)
def test_reference_table(kl, risk, occam, occam_kl):
    """Occam and Occam-kl bounds for n = 50,000, δ = 0.05, to the printed 4 decimals."""
    with jax.enable_x64(True):
        n, delta = 50_000, 0.05
        got_occam = float(pb.occam_bound(risk, n, delta, kl))
        got_kl = float(pb.occam_kl_bound(risk, n, delta, kl))
        assert round(got_occam, 4) == occam
        assert round(got_kl, 4) == occam_kl
        assert float(pb.pac_bayes_kl_bound(risk, n, delta, kl, occam=True)) == got_kl
        # closed forms
        assert got_occam == pytest.approx(risk + math.sqrt((kl + math.log(20)) / 1e5), 1e-14)
        assert got_kl == pytest.approx(kl_inv_brentq(risk, (kl + math.log(20)) / n), abs=1e-12)


def kl_decimal(q, p):
    """kl(q‖p) of two floats in 50-digit decimal arithmetic."""
    with localcontext() as ctx:
        ctx.prec = 50
        q, p, one = Decimal(float(q)), Decimal(float(p)), Decimal(1)
        first = q * (q / p).ln() if q > 0 else Decimal(0)
        second = (one - q) * ((one - q) / (one - p)).ln() if q < 1 else Decimal(0)
        return float(first + second)


def test_kl_bernoulli_against_scipy(rng):
    with jax.enable_x64(True):
        q = np.concatenate([[0.0, 1.0, 0.0, 1.0, 0.3], rng.uniform(size=200)])
        p = np.concatenate([[0.4, 0.4, 0.0, 1.0, 0.3], rng.uniform(size=200)])
        got = np.asarray(pb.kl_bernoulli(q, p))
        # scipy's rel_entr form cancels when p ≈ q (its absolute error reaches ~4e-15)
        np.testing.assert_allclose(got, kl_np(q, p), rtol=1e-12, atol=1e-14)
        assert pb.kl_divergence_bernoulli is pb.kl_bernoulli
        assert float(pb.kl_bernoulli(0.5, 0.0)) == np.inf
        assert float(pb.kl_bernoulli(0.5, 1.0)) == np.inf
        # against 50-digit arithmetic, including p very close to q and p near 0 or 1
        q2 = rng.uniform(size=100)
        p2 = np.clip(q2 + rng.standard_normal(100) * 10.0 ** rng.uniform(-8, 0, 100), 1e-9,
                     1 - 1e-9)
        ref = np.array([kl_decimal(a, b) for a, b in zip(q2, p2)])
        err = np.abs(np.asarray(pb.kl_bernoulli(q2, p2)) - ref)
        # relative 1e-11, plus absolute 4e-16·|p − q| where kl ~ (p − q)² is tiny. (Relative
        # 1e-12 sat at the edge: at |p − q| ~ 3e-5, kl ~ 3e-9, the cancellation in the
        # stable form leaves ~1e-20 absolute, ratio to that tolerance 0.9–1.07 over 31 seeds.)
        assert np.all(err <= 1e-11 * ref + 4e-16 * np.abs(p2 - q2)), np.max(err / ref)


def test_kl_inverse_against_brentq(rng):
    with jax.enable_x64(True):
        q = np.concatenate([[0.0, 0.0, 1.0, 0.5, 0.3, 0.999], rng.uniform(size=40)])
        c = np.concatenate([[0.01, 5.0, 0.2, 0.0, np.inf, 1e-6], rng.exponential(0.1, size=40)])
        up = np.asarray(pb.kl_inverse_upper(q, c))
        lo = np.asarray(pb.kl_inverse_lower(q, c))
        ref_up = np.array([kl_inv_brentq(a, b, True) for a, b in zip(q, c)])
        ref_lo = np.array([kl_inv_brentq(a, b, False) for a, b in zip(q, c)])
        # the docs: exact up to the rounding of kl (a few 1e-16; measured 2.8e-16), plus
        # brentq's own error (BRENTQ_TOL)
        np.testing.assert_allclose(up, ref_up, rtol=0, atol=1e-15 + BRENTQ_TOL)
        np.testing.assert_allclose(lo, ref_lo, rtol=0, atol=1e-15 + BRENTQ_TOL)
        # Sound: never on the wrong side of the true value (beyond brentq's own error) ...
        assert np.sum(up < ref_up - BRENTQ_TOL) == 0
        assert np.sum(lo > ref_lo + BRENTQ_TOL) == 0
        # ... and, exactly, the returned end of the bracket is outside the feasible set.
        kl_up = np.asarray(pb.kl_bernoulli(q, up))
        kl_lo = np.asarray(pb.kl_bernoulli(q, lo))
        assert np.sum(~((up == 1) | (kl_up > c))) == 0
        assert np.sum(~((lo == 0) | (kl_lo > c))) == 0


def test_binomial_tail_against_scipy():
    delta = 0.05
    ns = np.repeat([1, 10, 200, 5000], 12)
    ks = np.concatenate([np.linspace(0, n, 12).round() for n in (1, 10, 200, 5000)]).astype(int)
    ks, ns = np.append(ks, 0), np.append(ns, 50_000)  # k = 0: closed form 1 − δ^{1/n}
    ref = np.array([binom_inv_brentq(int(k), int(n), delta) for k, n in zip(ks, ns)])
    with jax.enable_x64(True):
        got = np.asarray(pb.binomial_tail_bound(ks, ns, delta))
        got32 = pb.binomial_tail_bound(ks, ns, np.float32(delta))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13)
    assert np.all(got[ks == ns] == 1.0)
    assert got[-1] == pytest.approx(1 - delta ** (1 / 50_000), rel=1e-10)
    # the tail at the bound is δ (≤ δ, up to betainc's rounding)
    inner = ks < ns
    np.testing.assert_allclose(stats.binom.cdf(ks[inner], ns[inner], got[inner]), delta,
                               rtol=1e-9)
    # float32: jax's betainc is coarser (about 1e-3 relative at n = 5000 and 1e-2 at
    # n = 50,000; see the docs)
    assert got32.dtype == jnp.float32
    got32 = np.asarray(got32)
    np.testing.assert_allclose(got32[ns <= 200], got[ns <= 200], rtol=2e-4)
    np.testing.assert_allclose(got32[ns <= 5000], got[ns <= 5000], rtol=5e-3)


def test_other_bounds_closed_forms(rng):
    with jax.enable_x64(True):
        m = 16
        risk, n = rng.uniform(size=m), rng.integers(10, 10_000, size=m)
        delta, kl = rng.uniform(0.001, 0.5, size=m), rng.exponential(20, size=m)
        c = rng.uniform(0.1, 5, size=m)
        l2 = np.log(2 * np.sqrt(n) / delta)
        np.testing.assert_allclose(
            pb.mcallester_bound(risk, n, delta, kl), risk + np.sqrt((kl + l2) / (2 * n)),
            rtol=1e-13,
        )
        np.testing.assert_allclose(
            pb.catoni_bound(risk, n, delta, kl, c),
            (1 - np.exp(-c * risk - (kl + np.log(1 / delta)) / n)) / (1 - np.exp(-c)),
            rtol=1e-12,
        )
        pbkl = np.asarray(pb.pac_bayes_kl_bound(risk, n, delta, kl))
        ref = [kl_inv_brentq(r, (k + a) / nn) for r, k, a, nn in zip(risk, kl, l2, n)]
        np.testing.assert_allclose(pbkl, ref, rtol=0, atol=1e-15 + BRENTQ_TOL)
        grid = np.geomspace(0.05, 20, 7)
        per_c = np.stack([pb.catoni_bound(risk, n, delta / 7, kl, g) for g in grid])
        np.testing.assert_allclose(
            pb.catoni_bound_grid(risk, n, delta, kl, grid), per_c.min(0), rtol=1e-14
        )


def test_catoni_never_beats_kl_inverse(rng):
    """kl(q‖p) = sup_C [−Cq − ln(1 − p(1 − e^{−C}))], so Catoni's bound ≥ kl⁻¹ for every C,
    with near-equality at the best C."""
    with jax.enable_x64(True):
        risk, kl = rng.uniform(0, 0.5, size=8), rng.exponential(30, size=8)
        n, delta = 2000, 0.05
        occam_kl = np.asarray(pb.occam_kl_bound(risk, n, delta, kl))
        cs = np.geomspace(1e-3, 50, 4000)
        cat = np.asarray(pb.catoni_bound(risk[:, None], n, delta, kl[:, None], cs))
        assert np.sum(cat < occam_kl[:, None] - 1e-14) == 0
        np.testing.assert_allclose(cat.min(1), occam_kl, rtol=1e-4)


def test_kl_from_token_logprobs():
    with jax.enable_x64(True):
        lp = np.log(np.array([[0.5, 0.25, 0.1], [0.9, 1.0, 0.2]]))
        np.testing.assert_allclose(pb.kl_from_token_logprobs(lp), -lp.sum(-1), rtol=1e-15)
        assert float(pb.kl_from_token_logprobs(lp, axis=None)) == pytest.approx(-lp.sum())
        mask = np.array([[True, True, False], [True, False, False]])
        padded = np.where(mask, lp, 7.0)  # padding holds garbage (> 0), ignored under mask
        np.testing.assert_allclose(
            pb.kl_from_token_logprobs(padded, mask=mask), [-lp[0, :2].sum(), -lp[1, 0]]
        )
        assert float(pb.kl_from_token_logprobs(np.array([-1.0, -np.inf]))) == np.inf
        # feeding a prompt's KL into a bound, all inside one jit
        f = jax.jit(lambda lp: pb.occam_bound(0.1, 1000, 0.05, pb.kl_from_token_logprobs(lp)))
        assert float(f(lp[0])) == pytest.approx(0.1 + np.sqrt((-lp[0].sum() + np.log(20)) / 2000))


# ---------------------------------------------------------------- soundness


def test_soundness_simulation():
    """KL = 0 (one fixed hypothesis): the bounds fail at most δ of the time.

    A statistical assertion (δ + 3σ), so its sample is seeded: a fresh seed would make CI
    fail on about one run in a thousand. The exact failure probabilities are checked too.
    """
    num, n, risk, delta = 100_000, 200, 0.1, 0.05
    errors = np.random.default_rng(20261127).binomial(n, risk, size=num)
    # Every bound depends on the sample only through its error count: compute it for every
    # possible count 0..n (one jitted, vmapped batch) and index it by the sampled counts.
    counts = np.arange(n + 1)
    with jax.enable_x64(True):
        r_hat = counts / n

        @jax.jit
        def all_bounds(k, r):
            one = lambda k, r: dict(
                occam=pb.occam_bound(r, n, delta, 0.0),
                mcallester=pb.mcallester_bound(r, n, delta, 0.0),
                occam_kl=pb.occam_kl_bound(r, n, delta, 0.0),
                pac_bayes_kl=pb.pac_bayes_kl_bound(r, n, delta, 0.0),
                catoni_grid=pb.catoni_bound_grid(r, n, delta, 0.0, jnp.geomspace(0.1, 10, 16)),
                binomial=pb.binomial_tail_bound(k, n, delta),
            )
            return jax.vmap(one)(k, r)

        bounds = jax.tree.map(np.asarray, all_bounds(counts, r_hat))
    sigma = math.sqrt(delta * (1 - delta) / num)
    rates = {name: float(np.mean(b[errors] < risk)) for name, b in bounds.items()}
    # The bounds increase with the error count, so each fails exactly for counts <= k*:
    # its exact failure probability is P[Bin(n, risk) <= k*].
    exact = {}
    for name, b in bounds.items():
        fails = b < risk
        k_star = counts[fails].max() if fails.any() else -1
        assert np.all(counts[~fails] > k_star), name  # monotone in the count
        exact[name] = float(stats.binom.cdf(k_star, n, risk))
    print("measured failure rates:", rates)
    print("exact failure probabilities:", exact)
    for name, rate in rates.items():
        assert 0 <= rate <= delta + 3 * sigma, (name, rate)
        assert exact[name] <= delta, name
        assert rate == pytest.approx(exact[name], abs=5 * math.sqrt(0.05 / num)), name
    assert rates["binomial"] > rates["occam_kl"] > rates["occam"]
    assert rates["binomial"] > 0.5 * delta


def test_worst_case_failure_probability_over_the_true_risk():
    """The worst case of the simulation above, exactly: for every true risk R, not only 0.1.

    Each bound B increases with the error count k, so at true risk R it fails exactly when
    K ≤ k*(R) = max{k : B(k) < R}, with probability P[Bin(n, R) ≤ k*]. For a fixed k* this
    decreases in R, so the supremum over R is the maximum over k of P[Bin(n, R) ≤ k] at R
    just above B(k): an exhaustive search, no sampling. A point mass with prior mass e^{−KL}
    must fail with probability ≤ δ·e^{−KL} (the union bound that every bound here pays for).
    The binomial bound is exact: its worst case is δ itself (coverage 1).
    """
    n, delta = 200, 0.05
    counts = np.arange(n + 1)
    with jax.enable_x64(True):

        @jax.jit
        def all_bounds(k, kl):
            r = k / n
            one = lambda k, r: dict(
                occam=pb.occam_bound(r, n, delta, kl),
                mcallester=pb.mcallester_bound(r, n, delta, kl),
                occam_kl=pb.occam_kl_bound(r, n, delta, kl),
                pac_bayes_kl=pb.pac_bayes_kl_bound(r, n, delta, kl),
                catoni_grid=pb.catoni_bound_grid(r, n, delta, kl, jnp.geomspace(0.1, 10, 16)),
                binomial=pb.binomial_tail_bound(k, n, delta),
            )
            return jax.vmap(one)(k, r)

        for kl in (0.0, 5.0):
            bounds = jax.tree.map(np.asarray, all_bounds(counts.astype(float), kl))
            allowed = delta * np.exp(-kl)
            for name, b in bounds.items():
                if name == "binomial" and kl > 0:
                    continue  # a test-set bound: KL does not enter it
                assert np.all(np.diff(b) >= 0), name
                inner = b < 1
                just_above = np.nextafter(b[inner], 2.0)
                worst = float(np.max(stats.binom.cdf(counts[inner], n, just_above)))
                print(f"KL = {kl:g}, {name}: worst failure probability {worst:.6g} "
                      f"(coverage {worst / allowed:.6f} of δ·e^(−KL))")
                # scipy's cdf rounding only: 1e-9 relative
                assert worst <= allowed * (1 + 1e-9), (name, kl, worst)
                if name == "binomial" or name == "occam_kl":  # Chernoff is exact at k = 0
                    assert worst >= allowed * (1 - 1e-6)


# ------------------------------------------------------------ properties


def test_kl_inverse_monotone_grid():
    with jax.enable_x64(True):
        q = np.linspace(0, 1, 41)[:, None]
        c = np.concatenate([[0.0], np.geomspace(1e-6, 10, 40)])[None, :]
        up, lo = np.asarray(pb.kl_inverse_upper(q, c)), np.asarray(pb.kl_inverse_lower(q, c))
    for arr, sign_c in ((up, 1), (lo, -1)):
        assert np.all(np.diff(arr, axis=0) >= 0)  # nondecreasing in q
        assert np.all(sign_c * np.diff(arr, axis=1) >= 0)  # up: increasing, lo: decreasing in c
    assert np.all(lo <= q) and np.all(q <= up)


# --------------------------------------------------- jit, vmap, dtypes, grad

# Every bound as a function of (risk, n, delta, kl, c); c is ignored where unused.
def _bound_table(prefix):
    """The bounds (``prefix=""``) or their checked variants (``prefix="checked_"``)."""
    fn = lambda name: getattr(pb, prefix + name)
    four = lambda name: lambda r, n, d, k, c: fn(name)(r, n, d, k)
    table = {name: four(name) for name in ("occam_bound", "mcallester_bound",
                                           "pac_bayes_kl_bound", "occam_kl_bound")}
    table["catoni_bound"] = lambda r, n, d, k, c: fn("catoni_bound")(r, n, d, k, c)
    table["catoni_bound_grid"] = lambda r, n, d, k, c: fn("catoni_bound_grid")(
        r, n, d, k, jnp.stack([jnp.asarray(c), jnp.asarray(2.0)]))
    return table


BOUNDS = _bound_table("")
CHECKED = _bound_table("checked_")


def test_vmap_equals_loop_and_jit(rng):
    with jax.enable_x64(True):
        m = 5
        n = rng.integers(50, 5000, size=m)
        errors = np.floor(rng.uniform(size=m) * n).astype(int)
        risk, delta = errors / n, rng.uniform(0.01, 0.2, size=m)
        kl, c = rng.exponential(10, size=m), rng.uniform(0.5, 3, size=m)
        q, cc = risk, kl / n

        @jax.jit
        def batched(risk, n, delta, kl, c, errors, q, cc):
            out = {name: jax.vmap(fn)(risk, n, delta, kl, c) for name, fn in BOUNDS.items()}
            out["binomial_tail_bound"] = jax.vmap(pb.binomial_tail_bound)(errors, n, delta)
            for fn in (pb.kl_inverse_upper, pb.kl_inverse_lower, pb.kl_bernoulli):
                out[fn.__name__] = jax.vmap(fn)(q, cc)
            return out

        got = batched(risk, n, delta, kl, c, errors, q, cc)
        for i in range(m):  # the loop, with Python scalars
            r_i, n_i, d_i, k_i, c_i = float(risk[i]), int(n[i]), float(delta[i]), float(kl[i]), \
                float(c[i])
            for name, fn in BOUNDS.items():
                assert float(got[name][i]) == pytest.approx(
                    float(fn(r_i, n_i, d_i, k_i, c_i)), rel=1e-14
                ), name
            assert float(got["binomial_tail_bound"][i]) == pytest.approx(
                float(pb.binomial_tail_bound(int(errors[i]), n_i, d_i)), rel=1e-14
            )
            for fn in (pb.kl_inverse_upper, pb.kl_inverse_lower, pb.kl_bernoulli):
                assert float(got[fn.__name__][i]) == pytest.approx(
                    float(fn(float(q[i]), float(cc[i]))), rel=1e-14, abs=1e-300
                )


def test_dtypes():
    args = (0.1, 1000, 0.05, 5.0, 2.0)
    for name, fn in BOUNDS.items():
        v32 = fn(*args)
        assert v32.dtype == jnp.float32, name  # x64 off: float32
        with jax.enable_x64(True):
            v64 = fn(*args)
            assert v64.dtype == jnp.float64, name
        np.testing.assert_allclose(float(v32), float(v64), rtol=1e-5, err_msg=name)
    with jax.enable_x64(True):
        # float32 inputs stay float32 under x64
        q32, c32 = np.float32([0.1, 0.5]), np.float32([0.01, 0.2])
        v = pb.kl_inverse_upper(q32, c32)
        assert v.dtype == jnp.float32
        np.testing.assert_allclose(v, pb.kl_inverse_upper(q32.astype(float), c32.astype(float)),
                                   rtol=1e-6)
        assert pb.kl_from_token_logprobs(np.float32([-1.0, -2.0])).dtype == jnp.float32
        assert pb.kl_from_token_logprobs([-1.0, -2.0]).dtype == jnp.float64


def test_gradients_implicit_function():
    with jax.enable_x64(True):
        h = 1e-6
        # the last point is clamped (at 1 for the upper inverse, at 0 for the lower): slope 0
        q, c = np.array([0.3, 0.05, 0.8, 0.5]), np.array([0.01, 0.2, 0.5, 50.0])
        for fn in (pb.kl_inverse_upper, pb.kl_inverse_lower):
            gq, gc = jax.vmap(jax.grad(fn, argnums=(0, 1)))(q, c)
            shifted = np.asarray(fn(np.concatenate([q + h, q - h, q, q]),
                                    np.concatenate([c, c, c + h, c - h]))).reshape(4, -1)
            np.testing.assert_allclose(gq, (shifted[0] - shifted[1]) / (2 * h), rtol=1e-5)
            np.testing.assert_allclose(gc, (shifted[2] - shifted[3]) / (2 * h), rtol=1e-5)
            assert gq[-1] == 0 and gc[-1] == 0
        # the kl bound as a training objective: finite, positive gradient in the KL
        g = jax.grad(pb.pac_bayes_kl_bound, argnums=3)(0.1, 1000.0, 0.05, 20.0)
        assert np.isfinite(float(g)) and float(g) > 0


# ---------------------------------------------------------------- bad input

GOOD = (0.1, 100, 0.05, 3.0, 1.0)  # risk, n, delta, kl, c
ARGS = ("risk", "n", "delta", "kl", "c")
BAD = [("risk", 1.2), ("risk", -0.1), ("n", 0), ("n", -5), ("delta", 0.0), ("delta", 1.0),
       ("delta", 1.5), ("kl", -1.0), ("c", 0.0), ("c", -1.0)]
# NaN anywhere: a ValueError eagerly, NaN under jit, never a finite bound
BAD += [(name, math.nan) for name in ARGS]


def _bad_args(arg, value):
    args = list(GOOD)
    args[ARGS.index(arg)] = value
    return tuple(args)


def _raises_eagerly(fn, args, name, value):
    shown = re.escape(f"{value:g}")
    with pytest.raises(ValueError, match=rf"{name} must be .*{shown}"):
        fn(*args)


@pytest.mark.parametrize("fn_name", list(BOUNDS))
def test_bad_input_bounds(fn_name):
    eager, checked = BOUNDS[fn_name], CHECKED[fn_name]
    cases = [(a, v) for a, v in BAD if a != "c" or fn_name.startswith("catoni")]
    for arg, value in cases:
        name = "c_grid" if arg == "c" and fn_name == "catoni_bound_grid" else arg
        args = _bad_args(arg, value)
        _raises_eagerly(eager, args, name, value)
        with pytest.raises(checkify.JaxRuntimeError, match=f"{name} must be"):
            checked(*args)
    # under jit: NaN for every bad problem, finite for the good one (one compilation)
    jitted = jax.jit(eager)
    assert np.isfinite(float(jitted(*GOOD)))
    for arg, value in cases:
        assert np.isnan(float(jitted(*_bad_args(arg, value)))), (arg, value)
    # a concrete jax array with one bad element also raises eagerly, naming the element
    with pytest.raises(ValueError, match=r"delta must be in \(0, 1\), got array\(\[2"):
        eager(0.1, 100, jnp.array([0.05, 2.0]), 3.0, 1.0)
    # good input passes the checked variant unchanged
    assert float(checked(*GOOD)) == pytest.approx(float(eager(*GOOD)), rel=1e-6)


def test_checked_pac_bayes_kl_occam_form():
    got = pb.checked_pac_bayes_kl_bound(0.1, 100, 0.05, 3.0, occam=True)
    assert float(got) == pytest.approx(float(pb.occam_kl_bound(0.1, 100, 0.05, 3.0)), rel=1e-6)
    with pytest.raises(checkify.JaxRuntimeError, match="kl must be"):
        pb.checked_pac_bayes_kl_bound(0.1, 100, 0.05, -3.0, occam=True)
    with pytest.raises(TypeError, match="occam must be a bool"):
        pb.pac_bayes_kl_bound(0.1, 100, 0.05, 3.0, occam=jnp.array(True))


def test_bad_input_catoni_grid_shape():
    for grid in (jnp.zeros((0,)), jnp.ones((2, 2)), 1.0):
        with pytest.raises(ValueError, match="c_grid must be a non-empty 1-D array"):
            pb.catoni_bound_grid(0.1, 100, 0.05, 1.0, grid)


def test_bad_input_binomial():
    good = (3, 200, 0.05)
    cases = [((201, 200, 0.05), "errors", 201), ((-1, 200, 0.05), "errors", 1),
             ((2.5, 200, 0.05), "errors", 2.5), ((0, 0, 0.05), "n", 0),
             ((3, 200, 1.0), "delta", 1.0), ((3, 200, 0.0), "delta", 0.0),
             ((math.nan, 200, 0.05), "errors", math.nan), ((3, math.nan, 0.05), "n", math.nan),
             ((3, 200, math.nan), "delta", math.nan)]
    for args, name, value in cases:
        _raises_eagerly(pb.binomial_tail_bound, args, name, value)
        with pytest.raises(checkify.JaxRuntimeError, match=f"{name} must be"):
            pb.checked_binomial_tail_bound(*(float(a) for a in args))
    jitted = jax.jit(pb.binomial_tail_bound)
    assert np.isfinite(float(jitted(*(float(a) for a in good))))
    for args, _, _ in cases:
        assert np.isnan(float(jitted(*(float(a) for a in args)))), args
    assert float(pb.checked_binomial_tail_bound(3.0, 200.0, 0.05)) == pytest.approx(
        float(pb.binomial_tail_bound(3, 200, 0.05)), rel=1e-6
    )


KL_CASES = [
    (pb.kl_bernoulli, pb.checked_kl_bernoulli, [((1.5, 0.5), "q", 1.5), ((0.5, -0.2), "p", 0.2),
                                                ((math.nan, 0.5), "q", math.nan),
                                                ((0.5, math.nan), "p", math.nan)]),
    (pb.kl_inverse_upper, pb.checked_kl_inverse_upper,
     [((-0.1, 0.1), "q", 0.1), ((0.1, -1.0), "c", 1.0), ((math.nan, 0.1), "q", math.nan),
      ((0.1, math.nan), "c", math.nan)]),
    (pb.kl_inverse_lower, pb.checked_kl_inverse_lower,
     [((1.1, 0.1), "q", 1.1), ((0.1, -1.0), "c", 1.0), ((math.nan, 0.1), "q", math.nan),
      ((0.1, math.nan), "c", math.nan)]),
]


@pytest.mark.parametrize("fn, checked, cases", KL_CASES)
def test_bad_input_kl(fn, checked, cases):
    for args, name, value in cases:
        _raises_eagerly(fn, args, name, value)
        with pytest.raises(checkify.JaxRuntimeError, match=f"{name} must be"):
            checked(*args)
    jitted = jax.jit(fn)
    assert np.isfinite(float(jitted(0.3, 0.3)))
    for args, _, _ in cases:
        assert np.isnan(float(jitted(*args))), args


def test_bad_input_logprobs():
    lp = np.array([[-1.0, 0.5], [-1.0, -2.0]])
    with pytest.raises(ValueError, match=r"logprobs must be <= 0.*0\.5"):
        pb.kl_from_token_logprobs(lp)
    out = np.asarray(jax.jit(pb.kl_from_token_logprobs)(lp))
    assert np.isnan(out[0]) and out[1] == 3.0  # only the bad row is NaN
    with pytest.raises(checkify.JaxRuntimeError, match="logprobs must be <= 0"):
        pb.checked_kl_from_token_logprobs(lp)
    with pytest.raises(ValueError, match="logprobs must be <= 0"):
        pb.kl_from_token_logprobs([-1.0, np.nan])
    # the bad entry masked out: fine on every path
    mask = np.array([[True, False], [True, True]])
    np.testing.assert_allclose(pb.checked_kl_from_token_logprobs(lp, mask=mask), [1.0, 3.0])
    np.testing.assert_allclose(pb.kl_from_token_logprobs(lp, mask=mask), [1.0, 3.0])
