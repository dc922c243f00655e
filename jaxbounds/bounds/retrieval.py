"""Embedding-dimension limits of single-vector retrieval (LIMIT).

Weller, Boratko, Naim, Lee, "On the theoretical limitations of embedding-based retrieval",
arXiv 2508.21038 (2025); code: github.com/google-deepmind/limit.

A retrieval task with ``m`` queries and ``n`` documents is a binary relevance ("qrels")
matrix ``A ∈ {0,1}^{m×n}``. A ``d``-dimensional embedding model scores ``B = U Vᵀ`` with
``U ∈ R^{m×d}``, ``V ∈ R^{n×d}``. The smallest ``d`` whose scores rank every query's
relevant documents above its irrelevant ones is the row-wise order-preserving rank
``rank_rop(A)``, and (the paper's Proposition 2)

    rank±(2A − 1) − 1  ≤  rank_rop(A) = rank_rt(A)  ≤  rank_gt(A)  ≤  rank±(2A − 1),

with ``rank±`` the sign rank. This module computes

* :func:`critical_n_fit`: the paper's cubic fit of the critical number of documents ``n``
  beyond which free ``d``-dimensional embeddings cannot represent every top-2 set.
* :func:`sign_rank_bounds`: both sides of the sandwich for a given ``A``: Forster's lower
  bound ``rank±(M) ≥ √(mn)/‖M‖₂`` (:func:`forster_lower_bound`) and upper bounds from
  explicit sign-matching factorisations found by optimisation and verified exactly
  (:func:`find_sign_factorization`, :func:`verify_sign_factorization`).
* :func:`free_embedding_experiment`: the paper's "free embedding" optimisation for all
  ``C(n, k)`` top-``k`` sets of ``n`` documents, jit-compiled end to end (one
  ``lax.while_loop``), and :func:`critical_n_search` (alias :func:`free_embedding_search`):
  the largest ``n`` that it solves, by galloping and binary search.
* :func:`neighborly_embedding`: an explicit ``2k``-dimensional unit-norm embedding that
  realises *every* top-``k`` set of *any* number ``n`` of documents (points on the
  trigonometric moment curve). For ``k = 2`` the measured "critical n" at ``d ≥ 4`` is
  therefore a limit of the optimiser, not of the dimension; see docs/retrieval_limits.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxbounds._checks import (
    check_choice,
    check_int,
    check_matrix,
    is_traced,
    nan_unless,
    require,
    with_checked,
)
from jaxbounds._dtypes import as_float

__all__ = [
    "FIT_COEFFICIENTS",
    "CriticalNResult",
    "FreeEmbeddingResult",
    "SignRankBounds",
    "all_k_subsets",
    "checked_critical_n_fit",
    "critical_n_fit",
    "critical_n_search",
    "find_sign_factorization",
    "forster_lower_bound",
    "free_embedding_experiment",
    "free_embedding_fit",
    "free_embedding_search",
    "infonce_loss",
    "neighborly_embedding",
    "qrels_from_subsets",
    "retrieval_margins",
    "sign_rank_bounds",
    "top_k_accuracy",
    "verify_sign_factorization",
]

# y = c0 + c1 d + c2 d² + c3 d³ (k = 2), the paper's Figure 2 (r² = 0.999).
FIT_COEFFICIENTS = (-10.5322, 4.0309, 0.0520, 0.0037)

POSITIVE_REDUCTIONS = ("mean", "logsumexp")


# --- the paper's fit ----------------------------------------------------------------------


@with_checked(ranges={"d": (lambda x: x > 0, "positive (an embedding dimension)")})
def critical_n_fit(d):
    """The paper's fit of the critical ``n`` for top-2 retrieval at embedding dimension ``d``:

        n*(d) = −10.5322 + 4.0309 d + 0.0520 d² + 0.0037 d³.

    About 512k at d = 512, 1.7M at 768, 4.0M at 1024, 108M at 3072 and 255M at 4096 (the
    paper rounds these to 500k, 1.7m, 4m, 107m and 250m). The fit was made to measurements
    at small ``d``; below d ≈ 4 it is not meaningful (it is negative at d = 2).

    ``d`` is a number or an array (elementwise; works under ``jit``, ``vmap`` and ``grad``).
    A concrete ``d ≤ 0`` raises ``ValueError``; a traced one gives NaN (see
    :func:`checked_critical_n_fit`).
    """
    (d,) = as_float(d)
    c0, c1, c2, c3 = FIT_COEFFICIENTS
    value = c0 + d * (c1 + d * (c2 + d * c3))
    return nan_unless(d > 0, value)


checked_critical_n_fit = critical_n_fit.checked


# --- sign rank ----------------------------------------------------------------------------

_BINARY = (lambda a: (a == 0) | (a == 1), "binary (entries 0 or 1)")
_SIGNS = (lambda a: (a == 1) | (a == -1), "a ±1 matrix")


def _qrels(qrels) -> np.ndarray:
    """A concrete binary [queries, docs] matrix (it fixes shapes), as a NumPy bool array."""
    if is_traced(qrels):
        raise TypeError("qrels must be a concrete array (it fixes shapes), got a tracer.")
    require("qrels", qrels, *_BINARY)
    return check_matrix("qrels", np.asarray(qrels), kind=None).astype(bool)


def forster_lower_bound(sign_matrix, *, rtol: float | None = None):
    """Forster (2002): a ±1 matrix ``M ∈ {−1, 1}^{m×n}`` has sign rank ``≥ √(mn) / ‖M‖₂``.

    ``‖M‖₂`` (the largest singular value) comes from an SVD in the input's floating dtype
    and is rounded *up* by the relative tolerance ``rtol`` (default ``8·ε·max(m, n)``), so
    the returned value never exceeds the exact bound: it is sound, and so is its ceiling.
    Pure and jittable (under ``jit`` the ±1 check is skipped).
    """
    check_matrix("sign_matrix", sign_matrix, kind=None)
    require("sign_matrix", sign_matrix, *_SIGNS)
    (m,) = as_float(sign_matrix)
    rows, cols = m.shape
    if rtol is None:
        rtol = 8.0 * float(jnp.finfo(m.dtype).eps) * max(rows, cols)
    norm = jnp.linalg.svd(m, compute_uv=False)[0] * (1.0 + rtol)
    return jnp.sqrt(jnp.asarray(rows * cols, m.dtype)) / norm


def verify_sign_factorization(sign_matrix, u, v, *, threshold=None) -> bool:
    """True iff ``sign(u vᵀ − threshold 1ᵀ) == sign_matrix`` exactly, certified in float64.

    ``u`` is ``[m, r]``, ``v`` is ``[n, r]`` and ``threshold`` (optional) ``[m]``. An entry
    counts only if its margin exceeds the worst-case float64 rounding error of its dot
    product, ``(r + 1)·ε·(‖u_i‖·‖v_j‖ + |threshold_i|)`` times 4, so a True is a proof that
    the real matrix ``u vᵀ − threshold 1ᵀ`` (of rank ≤ r, or ≤ r + 1 with the threshold)
    has the signs of ``sign_matrix``.
    """
    s = np.asarray(sign_matrix, np.float64)
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    if u.ndim != 2 or v.ndim != 2 or u.shape[1] != v.shape[1]:
        raise ValueError(f"u and v must be [m, r] and [n, r], got {u.shape} and {v.shape}.")
    if (u.shape[0], v.shape[0]) != s.shape:
        raise ValueError(f"u vᵀ has shape {(u.shape[0], v.shape[0])}, sign_matrix {s.shape}.")
    t = np.zeros(s.shape[0]) if threshold is None else np.asarray(threshold, np.float64)
    if not (np.all(np.isfinite(u)) and np.all(np.isfinite(v)) and np.all(np.isfinite(t))):
        return False
    scores = u @ v.T - t[:, None]
    scale = np.linalg.norm(u, axis=1)[:, None] * np.linalg.norm(v, axis=1)[None, :]
    slack = 4.0 * (u.shape[1] + 1) * np.finfo(np.float64).eps * (scale + np.abs(t)[:, None])
    return bool(np.all(s * scores > slack))


@jax.jit
def _factorization_fit(keys, sign_matrix, rank, width, row_threshold, steps, lr, margin):
    """Adam on the logistic loss of ``S ⊙ (u vᵀ − t)``, one run per key (vmapped), each a
    ``while_loop`` that stops once every normalised margin exceeds ``margin``.

    The factors are ``[m, R]``, ``[n, R]`` with ``R = width.shape[0]``; only the first
    ``rank`` (traced) columns are used, so one compilation serves every rank ≤ R.
    """
    rows, cols = sign_matrix.shape
    used = (jnp.arange(width.shape[0]) < rank).astype(sign_matrix.dtype)
    tx = optax.adam(lr)

    def scores(p):
        u, v, t = p
        return (u * used) @ v.T - jnp.where(row_threshold, t, 0.0)[:, None]

    def normalised_margin(p):
        u, v, t = p
        scale = (jnp.linalg.norm(u * used, axis=1)[:, None]
                 * jnp.linalg.norm(v * used, axis=1)[None, :]
                 + jnp.abs(jnp.where(row_threshold, t, 0.0))[:, None])
        return jnp.min(sign_matrix * scores(p) / jnp.maximum(scale, 1e-30))

    def loss(p):
        return jnp.mean(jax.nn.softplus(-4.0 * sign_matrix * scores(p)))

    def one(key):
        ku, kv = jax.random.split(key)
        params = (jax.random.normal(ku, (rows, width.shape[0])) / jnp.sqrt(rank),
                  jax.random.normal(kv, (cols, width.shape[0])), jnp.zeros((rows,)))
        state = tx.init(params)

        def cond(carry):
            params, _, step = carry
            return (step < steps) & (normalised_margin(params) <= margin)

        def body(carry):
            params, state, step = carry
            grads = jax.grad(loss)(params)
            updates, state = tx.update(grads, state, params)
            return optax.apply_updates(params, updates), state, step + 1

        params, _, step = jax.lax.while_loop(cond, body, (params, state, jnp.asarray(0)))
        u, v, t = params
        return (u * used, v * used, t), normalised_margin(params), step

    return jax.vmap(one)(keys)


def find_sign_factorization(sign_matrix, rank: int, *, key, row_threshold: bool = False,
                            steps: int = 2000, restarts: int = 4,
                            learning_rate: float = 0.05, margin: float = 1e-3,
                            width: int | None = None):
    """Look for ``u [m, rank]``, ``v [n, rank]`` (and a row ``threshold [m]`` when
    ``row_threshold``) with ``sign(u vᵀ − threshold) = sign_matrix``, by Adam on a logistic
    loss from ``restarts`` random starts (vmapped, each one ``while_loop`` of at most
    ``steps``). ``width`` (≥ rank) pads the factors so that one compilation serves every
    rank up to it (:func:`sign_rank_bounds` passes ``min(m, n)``). Returns
    ``(u, v, threshold)`` of a start that :func:`verify_sign_factorization`
    certifies, or ``None``. A result proves ``rank±(S) ≤ rank`` (``≤ rank + 1`` and
    ``rank_rt ≤ rank`` with the threshold); ``None`` proves nothing.
    """
    check_matrix("sign_matrix", sign_matrix, kind=None)
    require("sign_matrix", sign_matrix, *_SIGNS)
    for name, value in (("rank", rank), ("steps", steps), ("restarts", restarts)):
        check_int(name, value, minimum=1)
    require("learning_rate", learning_rate, lambda x: x > 0, "positive")
    s = jnp.asarray(np.asarray(sign_matrix), jnp.float32)
    keys = jax.random.split(key, restarts)
    width = rank if width is None else max(width, rank)
    (u, v, t), _, _ = _factorization_fit(keys, s, rank, jnp.zeros((width,)), row_threshold,
                                         steps, learning_rate, margin)
    for i in range(restarts):
        threshold = t[i] if row_threshold else None
        if verify_sign_factorization(sign_matrix, u[i, :, :rank], v[i, :, :rank],
                                     threshold=threshold):
            return np.asarray(u[i, :, :rank]), np.asarray(v[i, :, :rank]), (
                np.asarray(t[i]) if row_threshold else np.zeros(s.shape[0], np.float32))
    return None


@dataclasses.dataclass(frozen=True)
class SignRankBounds:
    """Both sides of ``rank±(2A−1) − 1 ≤ d_needed ≤ rank±(2A−1)`` for a qrels matrix ``A``.

    ``d_needed = rank_rop(A)`` is the smallest embedding dimension whose dot-product scores
    rank each query's relevant documents above its irrelevant ones.
    """

    forster_lower: float  # √(mn) / ‖2A − 1‖₂, rounded down (sound)
    sign_rank_lower: int  # max(1, ⌈forster_lower⌉)
    d_needed_lower: int  # max(sign_rank_lower − 1, 1 if some row mixes 0 and 1 else 0)
    factorization_rank: int  # rank of a verified sign-matching factorisation: ≥ rank±(2A−1)
    d_needed_upper: int  # verified row-threshold factorisation rank (≤ factorization_rank)
    trivial_upper: int  # min(m, n): the factorisation (2A − 1)·I always matches the signs
    factorization: tuple[np.ndarray, np.ndarray] | None = dataclasses.field(
        default=None, repr=False, compare=False)  # (u, v) of factorization_rank

    @property
    def tight(self) -> bool:
        """True when the sign rank is pinned down exactly."""
        return self.sign_rank_lower == self.factorization_rank


def _search_rank(fit: Callable[[int], Any], low: int, high: int) -> tuple[int, Any]:
    """Smallest rank in ``[low, high)`` where ``fit`` succeeds, by doubling from ``low``
    then bisecting; ``(high, None)`` if none. ``fit`` is assumed roughly monotone (only
    successes are ever returned, so the result is a valid upper bound regardless)."""
    best, best_found = high, None
    failed = low - 1
    r = low
    while r < best:
        found = fit(r)
        if found is not None:
            best, best_found = r, found
            break
        failed = r
        r = min(2 * r, best) if r > 0 else 1
    lo, hi = failed + 1, best - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        found = fit(mid)
        if found is not None:
            best, best_found, hi = mid, found, mid - 1
        else:
            lo = mid + 1
    return best, best_found


def sign_rank_bounds(qrels, *, key=None, max_rank: int | None = None, steps: int = 2000,
                     restarts: int = 4, learning_rate: float = 0.05) -> SignRankBounds:
    """Lower and upper bounds on the sign rank of ``2A − 1`` and on the embedding dimension
    ``d_needed = rank_rop(A)`` a binary qrels matrix ``A ∈ {0,1}^{m×n}`` needs.

    * Lower: Forster's bound (:func:`forster_lower_bound`), hence
      ``d_needed ≥ ⌈√(mn)/‖2A − 1‖₂⌉ − 1``.
    * Upper: the smallest rank (searched from the lower bound up to ``max_rank``, default
      ``min(m, n) − 1``, by doubling and bisection) at which :func:`find_sign_factorization`
      finds a factorisation that is verified exactly; ``min(m, n)`` (always achievable) if
      none. ``d_needed_upper`` searches likewise with a free row threshold (rank_rt).

    A driver, not jittable (the search is a Python loop over jitted fits); ``key`` seeds
    the fits (default ``PRNGKey(0)``).
    """
    a = _qrels(qrels)
    m, n = a.shape
    check_int("steps", steps, minimum=1)
    check_int("restarts", restarts, minimum=1)
    trivial = min(m, n)
    if max_rank is not None:
        check_int("max_rank", max_rank, minimum=1)
    cap = trivial if max_rank is None else min(max_rank + 1, trivial)
    key = jax.random.PRNGKey(0) if key is None else key
    sign = np.where(a, 1.0, -1.0)

    # Forster in float64 (NumPy), rounded outward as in forster_lower_bound.
    sigma = float(np.linalg.svd(sign, compute_uv=False)[0])
    sigma *= 1.0 + 8.0 * float(np.finfo(np.float64).eps) * max(m, n)
    forster = math.sqrt(m * n) / sigma
    sign_lower = max(1, math.ceil(forster))
    mixed_rows = bool(np.any(a.any(axis=1) & ~a.all(axis=1)))
    d_lower = max(sign_lower - 1, 1 if mixed_rows else 0)

    sign_key, rt_key = jax.random.split(key)

    def fit(row_threshold, base_key):
        def attempt(r):
            if r < 1:
                return None
            return find_sign_factorization(sign, r, key=jax.random.fold_in(base_key, r),
                                           row_threshold=row_threshold, steps=steps,
                                           restarts=restarts, learning_rate=learning_rate,
                                           width=trivial)
        return attempt

    rank, found = _search_rank(fit(False, sign_key), sign_lower, cap)
    if found is None:  # the exact trivial factorisation
        rank = trivial
        factorization = (sign, np.eye(n)) if n <= m else (np.eye(m), sign.T)
    else:
        factorization = (found[0], found[1])
    if not mixed_rows:
        d_upper = 0  # every row constant: no ordering constraint at all
    else:
        d_upper, _ = _search_rank(fit(True, rt_key), max(d_lower, 1), rank)
    return SignRankBounds(forster_lower=forster, sign_rank_lower=sign_lower,
                          d_needed_lower=d_lower, factorization_rank=rank,
                          d_needed_upper=min(d_upper, rank), trivial_upper=trivial,
                          factorization=factorization)


# --- free embeddings ----------------------------------------------------------------------


def all_k_subsets(n: int, k: int) -> np.ndarray:
    """Every ``k``-subset of ``range(n)``, lexicographic: an int32 array ``[C(n, k), k]``."""
    check_int("n", n, minimum=1)
    check_int("k", k, minimum=1)
    if k > n:
        raise ValueError(f"k must be ≤ n (a query's top-k set needs k documents), "
                         f"got k={k} > n={n}.")
    combos = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)),
                         dtype=np.int32, count=math.comb(n, k) * k)
    return combos.reshape(-1, k)


def qrels_from_subsets(subsets, n: int):
    """The binary qrels matrix ``[m, n]`` (bool) with ``A[i, j] = j ∈ subsets[i]``."""
    subsets = jnp.asarray(subsets)
    return jnp.any(subsets[:, :, None] == jnp.arange(n)[None, None, :], axis=1)


def infonce_loss(queries, docs, qrels, temperature: float = 0.1,
                 positive_reduction: str = "mean"):
    """Full-batch, multi-positive InfoNCE with every document as a candidate.

    Logits are ``queries @ docs.T / temperature``. ``"mean"`` (the LIMIT code's
    ``jax_loss_fn``, the default) averages ``−log softmax`` over all relevant (query, doc)
    pairs; ``"logsumexp"`` (the formula of the paper's footnote) is
    ``−mean_i log Σ_{r∈R_i} softmax_r``, over queries with at least one relevant doc.
    """
    logits = queries @ docs.T / temperature
    log_probs = jax.nn.log_softmax(logits, axis=1)
    mask = qrels.astype(log_probs.dtype)
    if positive_reduction == "mean":
        return -jnp.sum(log_probs * mask) / jnp.maximum(jnp.sum(mask), 1.0)
    if positive_reduction == "logsumexp":
        has = jnp.any(qrels, axis=1)
        per_query = jax.nn.logsumexp(jnp.where(qrels, log_probs, -jnp.inf), axis=1)
        per_query = jnp.where(has, per_query, 0.0)
        return -jnp.sum(per_query) / jnp.maximum(jnp.sum(has), 1)
    raise ValueError(f"positive_reduction must be one of {POSITIVE_REDUCTIONS}, "
                     f"got {positive_reduction!r}.")


def retrieval_margins(scores, qrels):
    """Per query: min score of a relevant doc − max score of an irrelevant doc.

    Positive exactly when the top-|R_i| documents are R_i with no tie at the boundary
    (a query with no relevant or no irrelevant document gets +inf).
    """
    top = jnp.min(jnp.where(qrels, scores, jnp.inf), axis=1)
    rest = jnp.max(jnp.where(qrels, -jnp.inf, scores), axis=1)
    return top - rest


def top_k_accuracy(scores, qrels):
    """The LIMIT code's accuracy: the fraction of relevant (query, doc) pairs whose doc is
    among the query's top-|R_i| by score (ties broken by the lower doc index)."""
    order = jnp.argsort(-scores, axis=1, stable=True)
    ranks = jnp.argsort(order, axis=1, stable=True)
    counts = jnp.sum(qrels, axis=1, keepdims=True)
    hits = qrels & (ranks < counts)
    return jnp.sum(hits) / jnp.maximum(jnp.sum(qrels), 1)


class FreeEmbeddingResult(NamedTuple):
    """Outcome of one free-embedding optimisation (a pytree of arrays)."""

    success: jax.Array  # bool: every query's top-k is exactly its relevant set
    steps: jax.Array  # Adam updates applied
    stop_reason: jax.Array  # 0 success, 1 no loss improvement (patience), 2 max_steps
    loss: jax.Array  # loss of the returned embeddings' last evaluation
    best_loss: jax.Array  # the best loss seen (what the patience counter tracks)
    margin: jax.Array  # min over queries of retrieval_margins (> 0 iff success)
    accuracy: jax.Array  # top_k_accuracy of the returned embeddings
    queries: jax.Array  # [m, d], unit rows
    docs: jax.Array  # [n, d], unit rows


STOP_SUCCESS, STOP_PATIENCE, STOP_MAX_STEPS = 0, 1, 2


def _normalize(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


@functools.partial(jax.jit, static_argnames=(
    "d", "temperature", "learning_rate", "max_steps", "patience", "min_delta",
    "positive_reduction", "dtype"))
def _free_embedding_fit(key, qrels, *, d, temperature, learning_rate, max_steps, patience,
                        min_delta, positive_reduction, dtype):
    m, n = qrels.shape
    kq, kd = jax.random.split(key)
    params = (_normalize(jax.random.normal(kq, (m, d), dtype)),
              _normalize(jax.random.normal(kd, (n, d), dtype)))
    tx = optax.adam(learning_rate)

    def loss_and_scores(p):
        scores = p[0] @ p[1].T
        return infonce_loss(p[0], p[1], qrels, temperature, positive_reduction), scores

    def solved(scores):
        return jnp.min(retrieval_margins(scores, qrels)) > 0

    def cond(carry):
        _, _, _, best, since, step, ok = carry
        del best
        return (~ok) & (step < max_steps) & (since < patience)

    def body(carry):
        params, state, _, best, since, step, _ = carry
        (loss, scores), grads = jax.value_and_grad(loss_and_scores, has_aux=True)(params)
        ok = solved(scores)  # of the params this loss was evaluated at
        updates, new_state = tx.update(grads, state, params)
        new_params = tuple(_normalize(x) for x in optax.apply_updates(params, updates))
        # On success stop with the params that were checked (no further update).
        keep = lambda old, new: jnp.where(ok, old, new)
        params = jax.tree_util.tree_map(keep, params, new_params)
        state = jax.tree_util.tree_map(keep, state, new_state)
        improved = loss < best - min_delta
        best = jnp.where(improved, loss, best)
        since = jnp.where(improved, 0, since + 1)
        return params, state, loss, best, since, step + jnp.where(ok, 0, 1), ok

    inf = jnp.asarray(jnp.inf, dtype)
    carry = (params, tx.init(params), inf, inf, jnp.asarray(0), jnp.asarray(0),
             jnp.asarray(False))
    params, _, loss, best, since, steps, ok = jax.lax.while_loop(cond, body, carry)
    final_loss, scores = loss_and_scores(params)  # the last update is not checked in-loop
    margin = jnp.min(retrieval_margins(scores, qrels))
    success = margin > 0
    reason = jnp.where(success, STOP_SUCCESS,
                       jnp.where(since >= patience, STOP_PATIENCE, STOP_MAX_STEPS))
    del loss, ok
    return FreeEmbeddingResult(success=success, steps=steps, stop_reason=reason,
                               loss=final_loss, best_loss=best, margin=margin,
                               accuracy=top_k_accuracy(scores, qrels),
                               queries=params[0], docs=params[1])


def _fit(key, qrels, *, d, temperature, learning_rate, max_steps, patience, min_delta,
         positive_reduction, dtype) -> FreeEmbeddingResult:
    """Check the optimisation settings, then run :func:`_free_embedding_fit`."""
    check_int("d", d, minimum=1)
    require("temperature", temperature, lambda x: x > 0, "positive")
    require("learning_rate", learning_rate, lambda x: x > 0, "positive")
    check_int("max_steps", max_steps, minimum=1)
    check_int("patience", patience, minimum=1)
    require("min_delta", min_delta, lambda x: x >= 0, ">= 0")
    check_choice("positive_reduction", positive_reduction, POSITIVE_REDUCTIONS)
    return _free_embedding_fit(key, qrels, d=d, temperature=float(temperature),
                               learning_rate=float(learning_rate), max_steps=max_steps,
                               patience=patience, min_delta=float(min_delta),
                               positive_reduction=positive_reduction, dtype=dtype)


def free_embedding_fit(qrels, d: int, *, key, temperature: float = 0.1,
                       learning_rate: float = 0.01, max_steps: int = 100_000,
                       patience: int = 1000, min_delta: float = 1e-5,
                       positive_reduction: str = "mean",
                       dtype=jnp.float32) -> FreeEmbeddingResult:
    """Free-embedding optimisation for an arbitrary binary qrels matrix ``[m, n]``.

    The paper's protocol (and the LIMIT code's defaults): one trainable unit vector per
    query and per document in ``R^d`` (Gaussian init, normalised), full-batch InfoNCE
    (:func:`infonce_loss`) at ``temperature``, Adam at ``learning_rate``, every row
    renormalised after each step; stop when the loss has not improved by ``min_delta``
    for ``patience`` consecutive steps, after ``max_steps``, or as soon as the embeddings
    solve the task (every query's relevant documents strictly above its irrelevant ones,
    :func:`retrieval_margins`). Success is checked at every step on the embeddings the loss
    was evaluated at (it reuses the loss's score matrix), and once more at the end.

    jit-compiled end to end: the optimisation is a single ``lax.while_loop`` whose carry
    is (params, opt_state, loss, best loss, steps since improvement, step, success).
    """
    return _fit(key, jnp.asarray(_qrels(qrels)), d=d, temperature=temperature,
                learning_rate=learning_rate, max_steps=max_steps, patience=patience,
                min_delta=min_delta, positive_reduction=positive_reduction, dtype=dtype)


def free_embedding_experiment(n: int, d: int, k: int = 2, *, key,
                              temperature: float = 0.1, learning_rate: float = 0.01,
                              max_steps: int = 100_000, patience: int = 1000,
                              min_delta: float = 1e-5, positive_reduction: str = "mean",
                              max_queries: int = 2_000_000,
                              dtype=jnp.float32) -> FreeEmbeddingResult:
    """The paper's free-embedding experiment for one ``(n, d)``: ``n`` documents and one
    query per ``k``-subset of them (``m = C(n, k)`` queries, each relevant to exactly its
    subset), optimised by :func:`free_embedding_fit`. ``success`` means every query's
    top-``k`` is exactly its relevant set.

    ``n``, ``d``, ``k`` are static (they fix shapes); ``key`` is a ``jax.random`` key. The
    whole run is one jitted ``while_loop``, also when this function is itself jitted with
    static ``n, d, k``. ``max_queries`` guards against ``C(n, k)`` blowing up memory.
    """
    check_int("n", n, minimum=1)
    check_int("d", d, minimum=1)
    check_int("k", k, minimum=1)
    if k > n:
        raise ValueError(f"k must be ≤ n (a query's top-k set needs k documents), "
                         f"got k={k} > n={n}.")
    check_int("max_queries", max_queries, minimum=1)
    m = math.comb(n, k)
    if m > max_queries:
        raise ValueError(f"n={n}, k={k} gives C(n, k)={m:,} queries, more than "
                         f"max_queries={max_queries:,}.")
    qrels = qrels_from_subsets(all_k_subsets(n, k), n)
    return _fit(key, qrels, d=d, temperature=temperature, learning_rate=learning_rate,
                max_steps=max_steps, patience=patience, min_delta=min_delta,
                positive_reduction=positive_reduction, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class CriticalNResult:
    """Outcome of :func:`critical_n_search` for one ``(d, k)``."""

    d: int
    k: int
    critical_n: int | None  # largest n solved (n = k is always solved)
    first_failure: int | None  # smallest n > critical_n that was tried and failed
    capped: bool  # True if the search hit max_n while still succeeding
    evaluations: dict[int, dict[str, Any]]  # n -> summary of that run, in search order
    seconds: float


def _summary(result: FreeEmbeddingResult, n: int, k: int, seconds: float) -> dict[str, Any]:
    return {"n": n, "queries": math.comb(n, k), "success": bool(result.success),
            "steps": int(result.steps), "stop_reason": int(result.stop_reason),
            "loss": float(result.loss), "best_loss": float(result.best_loss),
            "margin": float(result.margin), "accuracy": float(result.accuracy),
            "seconds": seconds}


def critical_n_search(d: int, k: int = 2, *, key, initial_n: int | None = None,
                      max_n: int = 100_000, restarts: int = 1,
                      callback: Callable[[dict[str, Any]], None] | None = None,
                      **fit_kwargs) -> CriticalNResult:
    """The critical ``n`` for dimension ``d``: the largest number of documents for which
    the free-embedding optimisation (:func:`free_embedding_experiment`, ``**fit_kwargs``)
    fits every top-``k`` combination.

    The LIMIT code's search: from ``initial_n`` (default: for k = 2 the paper's fit
    rounded, at least ``k + 1``), gallop up with steps 1, 2, 4, … while it succeeds (or
    down while it fails, to ``n = k``, which is always solved), then binary-search the
    bracket. Every ``n`` is run with ``jax.random.fold_in(key, n)``, so the outcome of an
    ``n`` does not depend on the search path. Success need not be monotone in ``n`` (the
    optimiser is randomised and can get stuck, e.g. with two documents collapsed onto
    one point); like the paper's code, the search assumes it is. ``restarts > 1``
    retries a failed ``n`` from new random starts (``fold_in(fold_in(key, n), r)``),
    success if any succeeds; the paper uses one. ``callback`` receives each run's summary.
    """
    check_int("d", d, minimum=1)
    check_int("k", k, minimum=1)
    check_int("max_n", max_n, minimum=k)
    check_int("restarts", restarts, minimum=1)
    if initial_n is None:
        initial_n = max(k + 1, round(float(critical_n_fit(d))) if d >= 4 and k == 2 else k + 1)
    check_int("initial_n", initial_n, minimum=k)
    initial_n = min(initial_n, max_n)
    started = time.perf_counter()
    evaluations: dict[int, dict[str, Any]] = {}

    def solved(n: int) -> bool:
        if n not in evaluations:
            t0 = time.perf_counter()
            for attempt in range(restarts):
                run_key = jax.random.fold_in(key, n)
                if attempt:
                    run_key = jax.random.fold_in(run_key, attempt)
                result = free_embedding_experiment(n, d, k, key=run_key, **fit_kwargs)
                if bool(result.success):
                    break
            summary = _summary(result, n, k, time.perf_counter() - t0)
            summary["attempts"] = attempt + 1
            evaluations[n] = summary
            if callback is not None:
                callback(summary)
        return evaluations[n]["success"]

    low: int | None = None
    high: int | None = None
    capped = False
    if solved(initial_n):
        low, step = initial_n, 1
        while True:
            if low >= max_n:
                capped = True
                break
            trial = min(low + step, max_n)
            if solved(trial):
                low, step = trial, 2 * step
            else:
                high = trial
                break
    else:
        high, step = initial_n, 1
        while high > k:
            trial = max(high - step, k)
            if solved(trial):
                low = trial
                break
            high, step = trial, 2 * step
    if low is not None and high is not None:
        lo, hi = low + 1, high - 1
        while lo <= hi:
            mid = (lo + hi) // 2
            if solved(mid):
                low, lo = mid, mid + 1
            else:
                high, hi = mid, mid - 1
    return CriticalNResult(d=d, k=k, critical_n=low, first_failure=high, capped=capped,
                           evaluations=evaluations, seconds=time.perf_counter() - started)


free_embedding_search = critical_n_search


# --- an explicit construction -------------------------------------------------------------


def neighborly_embedding(n: int, k: int = 2, d: int | None = None, *, dtype=None):
    """Unit-norm query and document embeddings in ``d ≥ 2k`` dimensions (default ``2k``)
    under which every one of the ``C(n, k)`` top-``k`` sets of ``n`` documents is returned
    exactly, for *any* ``n``.

    Document ``j`` is the point ``(cos t_j, sin t_j, …, cos k t_j, sin k t_j)/√k`` of the
    trigonometric moment curve, ``t_j = 2πj/n`` (zero-padded to ``d``). For a set ``S``,
    ``p_S(t) = −∏_{i∈S} (1 − cos(t − t_i))`` is a trigonometric polynomial of degree ``k``
    that is 0 at ``t_i, i ∈ S`` and negative at every other ``t_j``; its coefficients
    without the constant term are the query, whose score ``⟨q_S, v_j⟩ = (p_S(t_j) − c₀)/√k``
    (before normalising ``q_S``) ranks ``S`` first with margin ``min_{j∉S} −p_S(t_j)/√k``.
    Hence ``rank_rop ≤ 2k`` and ``rank± ≤ 2k + 1`` for the all-``k``-subsets qrels matrix
    (the convex hull of the docs is a ``k``-neighbourly cyclic polytope).

    Returns ``(queries [C(n,k), d], docs [n, d], qrels [C(n,k), n])``. Use float64
    (``jax_enable_x64``) for large ``n``: the margins shrink like ``n^{−2k}``.
    """
    check_int("n", n, minimum=1)
    check_int("k", k, minimum=1)
    if k > n:
        raise ValueError(f"k must be ≤ n, got k={k} > n={n}.")
    d = 2 * k if d is None else d
    check_int("d", d, minimum=2 * k)
    dtype = jnp.result_type(float) if dtype is None else jnp.dtype(dtype)
    subsets = all_k_subsets(n, k)
    queries, docs = _neighborly(jnp.asarray(subsets), n=n, k=k, d=d, dtype=dtype)
    return queries, docs, qrels_from_subsets(subsets, n)


@functools.partial(jax.jit, static_argnames=("n", "k", "d", "dtype"))
def _neighborly(subsets, *, n, k, d, dtype):
    t = 2 * jnp.pi * jnp.arange(n, dtype=dtype) / n
    harmonics = jnp.arange(1, k + 1, dtype=dtype)
    docs = jnp.stack([jnp.cos(harmonics[None] * t[:, None]),
                      jnp.sin(harmonics[None] * t[:, None])], axis=-1).reshape(n, 2 * k)
    docs = docs / jnp.sqrt(jnp.asarray(k, dtype))

    def query(subset):
        # Laurent coefficients (powers z^{-k} … z^{k}, z = e^{it}) of ∏ (1 − cos(t − a)),
        # with 1 − cos(t − a) = −e^{−ia}/2 · z + 1 − e^{ia}/2 · z^{−1}.
        coeffs = jnp.ones((1,), jnp.result_type(dtype, jnp.complex64))
        for a in t[subset]:
            factor = jnp.stack([-jnp.exp(1j * a) / 2, jnp.ones((), coeffs.dtype),
                                -jnp.exp(-1j * a) / 2])
            coeffs = jnp.convolve(coeffs, factor)
        c = coeffs[k + 1:]  # c_1 … c_k; p(t) = c_0 + Σ 2 Re(c_m) cos mt − 2 Im(c_m) sin mt
        q = -jnp.stack([2 * c.real, -2 * c.imag], axis=-1).reshape(2 * k)
        return q / jnp.linalg.norm(q)

    queries = jax.vmap(query)(subsets)
    pad = ((0, 0), (0, d - 2 * k))
    return jnp.pad(queries, pad).astype(dtype), jnp.pad(docs, pad).astype(dtype)
