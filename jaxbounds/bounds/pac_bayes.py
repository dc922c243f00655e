r"""PAC-Bayes, Occam and test-set bounds on the risk of a classifier (0-1 loss).

All functions are pure, jit-compiled, vmappable, and run in float64 when
``jax_enable_x64`` is on. The arguments are the empirical risk ``risk`` = R̂ ∈ [0, 1]
(error rate on ``n`` i.i.d. samples), the sample size ``n`` > 0, the confidence ``delta``
= δ ∈ (0, 1) and the divergence ``kl`` = KL(Q‖P) ≥ 0 (in nats) between posterior and
prior. Each bound holds with probability at least 1 − δ over the draw of the sample.

Point-mass posteriors on a discrete hypothesis
----------------------------------------------
For a discrete hypothesis θ, such as a prompt of tokens θ_1 … θ_T, with a prior given by a
language model, a point-mass posterior Q = δ_θ has

    KL(δ_θ ‖ P) = −ln P(θ) = Σ_t −ln p_LM(θ_t | θ_<t),

which :func:`kl_from_token_logprobs` computes from per-token log-probabilities. This is the
setting of Akinwande, Jiang, Sam and Kolter, "Understanding prompt engineering may not
require rethinking generalization" (ICLR 2024, arXiv 2310.03957); the same Occam-style
bounds with compressed-model priors appear in Lotfi et al., "PAC-Bayes compression bounds
so tight that they can explain generalization" (NeurIPS 2022).

Formulas
--------
* Binary KL (Seeger 2002; Maurer 2004), with the convention 0·ln 0 = 0:
  kl(q‖p) = q ln(q/p) + (1 − q) ln((1 − q)/(1 − p)).
* Its inverses: kl⁻¹_up(q, c) = sup{p ∈ [q, 1] : kl(q‖p) ≤ c} and
  kl⁻¹_low(q, c) = inf{p ∈ [0, q] : kl(q‖p) ≤ c}.
* Occam bound (point masses on a countable class, Hoeffding + union bound weighted by the
  prior; Langford 2005): R ≤ R̂ + √((KL + ln(1/δ)) / (2n)).
* McAllester bound (McAllester 1999, with Maurer's 2004 constant):
  R ≤ R̂ + √((KL + ln(2√n/δ)) / (2n)).
* PAC-Bayes-kl bound (Seeger 2002; Maurer 2004): R ≤ kl⁻¹_up(R̂, (KL + ln(2√n/δ)) / n).
* Occam-kl bound (Chernoff-kl + union bound; Langford 2005), valid for point-mass
  posteriors on a countable class: R ≤ kl⁻¹_up(R̂, (KL + ln(1/δ)) / n).
* Catoni bound (Catoni 2007, Thm 1.2.6), for a fixed C > 0:
  R ≤ (1 − exp(−C·R̂ − (KL + ln(1/δ))/n)) / (1 − e^{−C}).
  :func:`catoni_bound_grid` takes the minimum over a grid of G values of C and pays for
  it with a union bound, δ → δ/G.
* Exact test-set bound (binomial tail inversion; Langford 2005), for ``errors`` = k
  mistakes in n samples: R ≤ max{p : P[Bin(n, p) ≤ k] ≥ δ}, with
  P[Bin(n, p) ≤ k] = I_{1−p}(n − k, k + 1) (the regularized incomplete beta function);
  k = n gives 1. With KL = 0 the bounds above are all test-set bounds for one fixed
  hypothesis, and this one is the tightest.

The additive bounds (Occam, McAllester, Catoni) are returned as the formulas give them,
without clipping at 1; the kl-inverse and binomial bounds lie in [0, 1].

Numerics
--------
The inverses use a fixed number (:data:`NUM_BISECTION_STEPS` = 64) of bisection steps
inside ``lax.fori_loop`` on the fixed bracket [0, 1], so they jit and vmap, and the
midpoints are the same dyadic points for every input (the results are monotone in the
arguments). 64 halvings of [0, 1] exhaust float64, so the result is exact up to the
rounding of kl (a few 1e-16: kl uses ``log1p`` of (p − q)/q and (p − q)/(1 − p) where p is
near q, so it keeps its relative accuracy when kl is tiny). They are sound by construction:
bisection keeps a bracket [lo, hi] around the answer and returns its upper end for upper
bounds (kl⁻¹_up, binomial tail) and its lower end for kl⁻¹_low, so the bracket's width
never moves a bound to the unsafe side. ``kl_inverse_upper``/``kl_inverse_lower`` (and the
kl bounds) have exact derivatives by the implicit function theorem (a ``jax.custom_jvp``):
0 where the inverse is clamped at 0 or 1; at c = 0, where the slope in c is infinite, the
tangent in c is dropped; the slope in q is ±∞ at q ∈ {0, 1}. The binomial tail bound has no
meaningful derivative (its inputs are counts).

The computation runs in the floating dtype of the inputs: float64 for Python numbers when
``jax_enable_x64`` is on, float32 for float32 (and 16-bit) arrays. The
soundness guarantees above hold in float64. In float32 the rounding of kl itself moves the
kl inverses by up to about 2e-7, to either side, and jax's float32 ``betainc`` is off by
about 1e-3 relative at n = 5,000 and 1e-2 at n = 50,000, also to either side. Use float64
when the last digits of a bound matter, and always for the binomial bound with large n.

Bad input
---------
Concrete values (Python numbers, NumPy arrays, concrete jax arrays) are checked eagerly
and raise ``ValueError`` naming the argument, the value and the expected range: δ ∉ (0, 1),
R̂ ∉ [0, 1], n ≤ 0, KL < 0, C ≤ 0, errors ∉ {0, …, n}, log-probabilities > 0. Traced values
(under ``jax.jit``/``vmap``) cannot be checked; there an out-of-range element gives NaN in
the corresponding output element. Each public bound ``f`` has a ``checked_f`` variant
(through ``jax.experimental.checkify``) that raises under jit instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.scipy.special import betainc

from jaxbounds._checks import (
    check_at_most,
    check_bool,
    in_ranges,
    is_traced,
    nan_unless,
    require,
    with_checked,
)
from jaxbounds._dtypes import as_float

__all__ = [
    "NUM_BISECTION_STEPS",
    "binomial_tail_bound",
    "catoni_bound",
    "catoni_bound_grid",
    "checked_binomial_tail_bound",
    "checked_catoni_bound",
    "checked_catoni_bound_grid",
    "checked_kl_bernoulli",
    "checked_kl_from_token_logprobs",
    "checked_kl_inverse_lower",
    "checked_kl_inverse_upper",
    "checked_mcallester_bound",
    "checked_occam_bound",
    "checked_occam_kl_bound",
    "checked_pac_bayes_kl_bound",
    "kl_bernoulli",
    "kl_divergence_bernoulli",
    "kl_from_token_logprobs",
    "kl_inverse_lower",
    "kl_inverse_upper",
    "mcallester_bound",
    "occam_bound",
    "occam_kl_bound",
    "pac_bayes_kl_bound",
]

NUM_BISECTION_STEPS = 64
"""Bisection steps of the kl and binomial inverses: enough to exhaust float64 on [0, 1]."""


# ------------------------------------------------------------------- argument ranges

_IN01 = (lambda v: (v >= 0) & (v <= 1), "in [0, 1]")
_OPEN01 = (lambda v: (v > 0) & (v < 1), "in (0, 1)")
_POSITIVE = (lambda v: v > 0, "> 0")
_NONNEGATIVE = (lambda v: v >= 0, ">= 0")
_COMMON = {"risk": _IN01, "n": _POSITIVE, "delta": _OPEN01, "kl": _NONNEGATIVE}
_KL_INVERSE = {"q": _IN01, "c": _NONNEGATIVE}


# ------------------------------------------------------------------------ binary KL


_NEAR = 0.3  # ratio below which kl's terms are computed with log1p (see _kl_core)


def _kl_q_logs(q):
    """The loop-invariant logarithms of kl(q‖·): ln q and ln(1 − q) (at safe values)."""
    return jnp.log(jnp.where(q > 0, q, 1)), jnp.log(1 - jnp.where(q < 1, q, 0))


def _kl_core(q, p, q_logs=None):
    """kl(q‖p) for q, p already in [0, 1] (no checks); NaN-free gradients at the edges.

    Each term is q ln(q/p) = −q ln(1 + (p − q)/q) and (1 − q) ln((1 − q)/(1 − p)) =
    (1 − q) ln(1 + (p − q)/(1 − p)). Where the ratio (p − q)/q, resp. (p − q)/(1 − p), is
    below ``_NEAR`` in magnitude, ``log1p`` of it is used, which keeps the relative accuracy
    when kl ~ (p − q)² is tiny; elsewhere a difference of logarithms is accurate (the slope
    of kl in p is at least about 0.2 there, so absolute errors of 1e-16 move the inverses by
    no more). Keeping |ratio| < 0.3 also avoids XLA:CPU's float64 log1p, which is off by up
    to 128 ulp on [−0.42, −0.35]. ``q_logs`` = ``_kl_q_logs(q)``, hoisted out of loops.
    """
    log_q, log_1mq = _kl_q_logs(q) if q_logs is None else q_logs
    d = p - q
    # q ln(q/p); 0 at q = 0
    q_pos = q > 0
    q1 = jnp.where(q_pos, q, 1)
    p1 = jnp.where(q_pos, p, 1)
    d1 = jnp.where(q_pos, d, 0)
    near1 = jnp.abs(d1) < _NEAR * q1
    log_ratio1 = jnp.where(
        near1,
        -jnp.log1p(jnp.where(near1, d1 / q1, 0)),
        log_q - jnp.log(jnp.where(near1, 1, p1)),
    )
    first = jnp.where(q_pos, q1 * log_ratio1, 0)
    # (1 − q) ln((1 − q)/(1 − p)); 0 at q = 1
    q_lt1 = q < 1
    one_minus_q = 1 - jnp.where(q_lt1, q, 0)
    one_minus_p = 1 - jnp.where(q_lt1, p, 0)
    d2 = jnp.where(q_lt1, d, 0)
    near2 = jnp.abs(d2) < _NEAR * one_minus_p
    log_ratio2 = jnp.where(
        near2,
        jnp.log1p(jnp.where(near2, d2 / jnp.where(near2, one_minus_p, 1), 0)),
        log_1mq - jnp.log(jnp.where(near2, 1, one_minus_p)),
    )
    second = jnp.where(q_lt1, one_minus_q * log_ratio2, 0)
    return jnp.maximum(first + second, 0)


@with_checked(ranges={"q": _IN01, "p": _IN01})
def kl_bernoulli(q, p):
    """Binary KL divergence kl(q‖p) = q ln(q/p) + (1 − q) ln((1 − q)/(1 − p)), in nats.

    Uses 0·ln 0 = 0, so kl(0‖p) = −ln(1 − p) and kl(1‖p) = −ln p; kl(q‖0) = kl(q‖1) = ∞ for
    q strictly inside. ``q`` and ``p`` must lie in [0, 1] (ValueError eagerly, NaN under
    jit; see :func:`checked_kl_bernoulli`). Broadcasts.
    """
    q, p = as_float(q, p)
    valid = in_ranges({"q": _IN01, "p": _IN01}, q=q, p=p)
    q_s = jnp.where(valid, q, 0.5)
    p_s = jnp.where(valid, p, 0.5)
    return nan_unless(valid, _kl_core(q_s, p_s))


kl_divergence_bernoulli = kl_bernoulli
checked_kl_bernoulli = kl_bernoulli.checked


# --------------------------------------------------------------------- kl inverses


def _bisect(inside, q):
    """Bisection on the fixed bracket [0, 1] for the boundary of a monotone predicate.

    ``inside(p)`` is True below the boundary and False above it. The midpoints are the
    same dyadic points for every input, so the result is monotone in the arguments
    whenever the predicate is. Returns the final bracket (lo, hi): inside(lo) is True or
    lo == 0, inside(hi) is False or hi == 1, so the boundary lies in [lo, hi].
    """

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        ok = inside(mid)
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    return lax.fori_loop(0, NUM_BISECTION_STEPS, body, (jnp.zeros_like(q), jnp.ones_like(q)))


def _bisect_upper(q, c):
    # {p : p <= q or kl(q‖p) <= c} = [0, kl⁻¹_up(q, c)]: return the bracket's upper end.
    logs = _kl_q_logs(q)
    _, hi = _bisect(lambda p: (p <= q) | (_kl_core(q, p, logs) <= c), q)
    return hi


def _bisect_lower(q, c):
    # {p : p < q and kl(q‖p) > c} = [0, kl⁻¹_low(q, c)): return the bracket's lower end.
    logs = _kl_q_logs(q)
    lo, _ = _bisect(lambda p: (p < q) & (_kl_core(q, p, logs) > c), q)
    return lo


def _implicit_tangent(q, p, dq, dc):
    """dp from kl(q‖p) = c by the implicit function theorem.

    dp = (dc − ∂_q kl · dq) / ∂_p kl with ∂_p kl = (p − q)/(p(1 − p)) and
    ∂_q kl = logit(q) − logit(p). The coefficients depend on the primals only, so the rule
    stays linear in the tangents (reverse mode works). Where p is clamped at 0 or 1 the
    derivative is 0; at p == q (c == 0) the slope in c is infinite and is dropped (dp = dq).
    The slope in q is infinite at q ∈ {0, 1} (returned as ±inf).
    """
    interior = (p > 0) & (p < 1) & (p != q)
    clamped = (p <= 0) | (p >= 1)
    p_s = jnp.where(interior, p, 0.5)
    q_s = jnp.where(interior, q, 0.25)
    logit = lambda x: jnp.log(x) - jnp.log(1 - x)
    dkl_dp = (p_s - q_s) / (p_s * (1 - p_s))
    dkl_dq = logit(q_s) - logit(p_s)
    coef_c = jnp.where(interior, 1 / dkl_dp, 0)
    coef_q = jnp.where(interior, -dkl_dq / dkl_dp, jnp.where(clamped, 0, 1))
    return coef_q * dq + coef_c * dc


def _with_implicit_jvp(bisect):
    """``bisect`` (q, c) -> p with the exact implicit-function JVP of kl(q‖p) = c."""
    core = jax.custom_jvp(bisect)

    @core.defjvp
    def _jvp(primals, tangents):
        q, c = primals
        dq, dc = tangents
        p = core(q, c)
        return p, _implicit_tangent(q, p, dq, dc)

    return core


_kl_inv_upper_core = _with_implicit_jvp(_bisect_upper)
_kl_inv_lower_core = _with_implicit_jvp(_bisect_lower)


def _kl_inv(core, q, c):
    q, c = jnp.broadcast_arrays(*as_float(q, c))
    valid = in_ranges(_KL_INVERSE, q=q, c=c)
    q_s = jnp.where(valid, q, 0.5)
    c_s = jnp.where(valid, c, 1.0)
    return nan_unless(valid, core(q_s, c_s))


@with_checked(ranges=_KL_INVERSE)
def kl_inverse_upper(q, c):
    """kl⁻¹_up(q, c) = sup{p ∈ [q, 1] : kl(q‖p) ≤ c}, by 64 bisection steps.

    Returns the upper end of the final bisection bracket, so the result is never below the
    true value (up to the rounding of kl). ``q`` ∈ [0, 1], ``c`` ≥ 0 (ValueError eagerly,
    NaN under jit; see :func:`checked_kl_inverse_upper`); c = ∞ gives 1. Broadcasts.
    """
    return _kl_inv(_kl_inv_upper_core, q, c)


@with_checked(ranges=_KL_INVERSE)
def kl_inverse_lower(q, c):
    """kl⁻¹_low(q, c) = inf{p ∈ [0, q] : kl(q‖p) ≤ c}, by 64 bisection steps.

    Returns the lower end of the final bisection bracket, so the result is never above the
    true value. Same argument ranges and bad-input behaviour as :func:`kl_inverse_upper`.
    """
    return _kl_inv(_kl_inv_lower_core, q, c)


checked_kl_inverse_upper = kl_inverse_upper.checked
checked_kl_inverse_lower = kl_inverse_lower.checked


# ------------------------------------------------------------------------- bounds


def _prepare(risk, n, delta, kl):
    risk, n, delta, kl = jnp.broadcast_arrays(*as_float(risk, n, delta, kl))
    valid = in_ranges(_COMMON, risk=risk, n=n, delta=delta, kl=kl)
    safe = (
        jnp.where(valid, risk, 0.5),
        jnp.where(valid, n, 1.0),
        jnp.where(valid, delta, 0.5),
        jnp.where(valid, kl, 0.0),
    )
    return valid, safe


def _log_2sqrtn_over_delta(n, delta):
    return jnp.log(2.0) + 0.5 * jnp.log(n) - jnp.log(delta)


@with_checked(ranges=_COMMON)
def occam_bound(risk, n, delta, kl):
    """Occam bound R ≤ R̂ + √((KL + ln(1/δ)) / (2n)) (Hoeffding + prior-weighted union bound).

    Valid for a point-mass posterior on a countable hypothesis class with prior P, where
    KL = −ln P(θ). Not clipped at 1. Bad input: ValueError eagerly, NaN under jit; see
    :func:`checked_occam_bound`.
    """
    valid, (risk, n, delta, kl) = _prepare(risk, n, delta, kl)
    return nan_unless(valid, risk + jnp.sqrt((kl - jnp.log(delta)) / (2 * n)))


@with_checked(ranges=_COMMON)
def mcallester_bound(risk, n, delta, kl):
    """McAllester bound R ≤ R̂ + √((KL + ln(2√n/δ)) / (2n)) (McAllester 1999; Maurer 2004).

    Valid for any posterior Q (R, R̂ are Q-averaged risks). Not clipped at 1. Bad input:
    ValueError eagerly, NaN under jit; see :func:`checked_mcallester_bound`.
    """
    valid, (risk, n, delta, kl) = _prepare(risk, n, delta, kl)
    value = risk + jnp.sqrt((kl + _log_2sqrtn_over_delta(n, delta)) / (2 * n))
    return nan_unless(valid, value)


def _kl_bound(risk, n, delta, kl, occam):
    valid, (risk, n, delta, kl) = _prepare(risk, n, delta, kl)
    log_term = -jnp.log(delta) if occam else _log_2sqrtn_over_delta(n, delta)
    return nan_unless(valid, _kl_inv_upper_core(risk, (kl + log_term) / n))


@with_checked(ranges=_COMMON)
def occam_kl_bound(risk, n, delta, kl):
    """Occam-kl bound R ≤ kl⁻¹_up(R̂, (KL + ln(1/δ)) / n) (Langford 2005).

    Valid for a point-mass posterior on a countable class with KL = −ln P(θ); with KL = 0
    it is the Chernoff test-set bound. Bad input: ValueError eagerly, NaN under jit; see
    :func:`checked_occam_kl_bound`.
    """
    return _kl_bound(risk, n, delta, kl, occam=True)


@with_checked(ranges=_COMMON, checks=lambda occam, **_: check_bool("occam", occam),
              static_argnames=("occam",))
def pac_bayes_kl_bound(risk, n, delta, kl, *, occam=False):
    """PAC-Bayes-kl bound R ≤ kl⁻¹_up(R̂, (KL + ln(2√n/δ)) / n) (Seeger 2002; Maurer 2004).

    With ``occam=True`` (static: a Python or NumPy bool, not an array) returns the Occam-kl form
    :func:`occam_kl_bound`, kl⁻¹_up(R̂, (KL + ln(1/δ)) / n), valid for point masses on a
    countable class. Bad input: ValueError eagerly, NaN under jit; see
    :func:`checked_pac_bayes_kl_bound`.
    """
    return _kl_bound(risk, n, delta, kl, occam=bool(occam))


checked_occam_bound = occam_bound.checked
checked_mcallester_bound = mcallester_bound.checked
checked_occam_kl_bound = occam_kl_bound.checked
checked_pac_bayes_kl_bound = pac_bayes_kl_bound.checked


def _catoni_value(risk, n, delta, kl, c):
    return jnp.expm1(-c * risk - (kl - jnp.log(delta)) / n) / jnp.expm1(-c)


@with_checked(ranges={**_COMMON, "c": _POSITIVE})
def catoni_bound(risk, n, delta, kl, c):
    """Catoni bound R ≤ (1 − exp(−C·R̂ − (KL + ln(1/δ))/n)) / (1 − e^{−C}) for fixed C > 0.

    (Catoni 2007, Thm 1.2.6.) C must not depend on the sample; see
    :func:`catoni_bound_grid` to optimise it. Not clipped at 1. Bad input: ValueError
    eagerly, NaN under jit; see :func:`checked_catoni_bound`.
    """
    valid, (risk, n, delta, kl) = _prepare(risk, n, delta, kl)
    c = jnp.asarray(c, risk.dtype)
    valid = valid & (c > 0)
    c_s = jnp.where(c > 0, c, 1.0)
    return nan_unless(valid, _catoni_value(risk, n, delta, kl, c_s))


def _c_grid_shape(c_grid, **_):
    shape = jnp.shape(c_grid)
    if len(shape) != 1 or shape[0] == 0:
        raise ValueError(f"c_grid must be a non-empty 1-D array, got shape {shape}.")


@with_checked(ranges={**_COMMON, "c_grid": (_POSITIVE[0], "> 0 everywhere")},
              checks=_c_grid_shape)
def catoni_bound_grid(risk, n, delta, kl, c_grid):
    """Catoni bound minimised over a fixed grid of C, paying ln|grid| (δ → δ/|grid|).

    ``c_grid`` is a non-empty 1-D array of C > 0 (shape checked eagerly, also under jit);
    the other arguments broadcast together and the result has their shape. Bad input:
    ValueError eagerly, NaN under jit; see :func:`checked_catoni_bound_grid`.
    """
    valid, (risk, n, delta, kl) = _prepare(risk, n, delta, kl)
    c_grid = jnp.asarray(c_grid, risk.dtype)
    valid = valid & jnp.all(c_grid > 0)
    c_s = jnp.where(c_grid > 0, c_grid, 1.0)
    delta_g = delta / c_grid.shape[0]  # union bound over the grid
    values = _catoni_value(risk[..., None], n[..., None], delta_g[..., None], kl[..., None], c_s)
    return nan_unless(valid, jnp.min(values, axis=-1))


checked_catoni_bound = catoni_bound.checked
checked_catoni_bound_grid = catoni_bound_grid.checked

_BINOMIAL = {
    "n": (lambda v: (v > 0) & (v == jnp.floor(v)), "an integer > 0"),
    "errors": (lambda v: (v >= 0) & (v == jnp.floor(v)), "an integer >= 0"),
    "delta": _OPEN01,
}


@with_checked(lambda errors, n, **_: [(jnp.asarray(errors) <= jnp.asarray(n),
                                       "errors must be <= n")],
              ranges=_BINOMIAL,
              checks=lambda errors, n, **_: check_at_most("errors", errors, "n", n))
def binomial_tail_bound(errors, n, delta):
    """Exact test-set bound R ≤ max{p : P[Bin(n, p) ≤ errors] ≥ δ} (Langford 2005).

    P[Bin(n, p) ≤ k] = I_{1−p}(n − k, k + 1) is inverted by 64 bisection steps and the upper
    end of the bracket is returned (sound); ``errors == n`` gives 1. ``errors`` and ``n``
    are integer-valued counts with 0 ≤ errors ≤ n and n > 0; δ ∈ (0, 1). Bad input:
    ValueError eagerly, NaN under jit; see :func:`checked_binomial_tail_bound`.
    """
    k, n, delta = jnp.broadcast_arrays(*as_float(errors, n, delta))
    valid = in_ranges(_BINOMIAL, errors=k, n=n, delta=delta) & (k <= n)
    k = jnp.where(valid, k, 0.0)
    n = jnp.where(valid, n, 1.0)
    delta = jnp.where(valid, delta, 0.5)
    all_wrong = k >= n
    a = jnp.where(all_wrong, 1.0, n - k)  # keep betainc's first argument positive

    # P[Bin(n, p) <= k] = I_{1-p}(n - k, k + 1) decreases in p: inside below the bound.
    _, hi = _bisect(lambda p: betainc(a, k + 1, 1 - p) >= delta, k)
    return nan_unless(valid, jnp.where(all_wrong, 1.0, hi))


checked_binomial_tail_bound = binomial_tail_bound.checked


# ------------------------------------------------------------------ KL of a prompt


def _counted_logprobs_nonpositive(logprobs, mask, **_):
    if mask is None:
        require("logprobs", logprobs, lambda v: v <= 0, "<= 0 (natural-log probabilities)")
    elif not (is_traced(logprobs) or is_traced(mask)):
        lp, keep = np.broadcast_arrays(np.asarray(logprobs), np.asarray(mask, bool))
        require(
            "logprobs", lp[keep], lambda v: v <= 0, "<= 0 (natural-log probabilities)"
        )


def _bad_logprobs(logprobs, mask):
    keep = jnp.ones(jnp.shape(logprobs), bool) if mask is None else jnp.asarray(mask, bool)
    return jnp.broadcast_to(keep, jnp.shape(logprobs)) & ~(logprobs <= 0)


@with_checked(lambda logprobs, mask, **_: [(~_bad_logprobs(jnp.asarray(logprobs), mask),
                                            "logprobs must be <= 0 where counted")],
              checks=_counted_logprobs_nonpositive, static_argnames=("axis",))
def kl_from_token_logprobs(logprobs, *, mask=None, axis=-1):
    """KL of a point-mass posterior on a token sequence: −Σ_t logprobs[t] (nats).

    ``logprobs`` are natural-log probabilities ln p_LM(θ_t | θ_<t) ≤ 0 (−∞ allowed, giving
    KL = ∞). ``mask`` (bool, broadcastable to ``logprobs``) selects the tokens that count;
    masked-out entries are ignored entirely (padding may hold anything). The sum runs over
    ``axis`` (static; default the last axis, so ``[batch, seq]`` gives one KL per prompt;
    ``None`` sums everything). A counted entry > 0 or NaN: ValueError eagerly, NaN in that
    output under jit; see :func:`checked_kl_from_token_logprobs`.
    """
    (logprobs,) = as_float(logprobs)
    bad = _bad_logprobs(logprobs, mask)
    keep = jnp.broadcast_to(True if mask is None else jnp.asarray(mask, bool), logprobs.shape)
    terms = jnp.where(keep & ~bad, logprobs, 0)
    total = -jnp.sum(terms, axis=axis)
    return nan_unless(~jnp.any(bad, axis=axis), total)


checked_kl_from_token_logprobs = kl_from_token_logprobs.checked
