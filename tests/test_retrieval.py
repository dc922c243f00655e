"""jaxbounds.bounds.retrieval: the LIMIT fit, sign-rank bounds, free embeddings (fast)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify
from scipy.linalg import hadamard

from jaxbounds.bounds import retrieval

KEY = jax.random.PRNGKey(0)


@pytest.fixture(autouse=True)
def _float64():
    """Every test here runs in float64, without leaking x64 into other test modules."""
    with jax.enable_x64(True):
        yield


def _poly(d: float) -> float:
    return -10.5322 + 4.0309 * d + 0.0520 * d**2 + 0.0037 * d**3


def _rank_one_pattern():
    # 8 × 8 like the Hadamard case below, so that both share one compiled factorisation fit.
    u = np.array([1, -1, 1, 1, -1, -1, 1, -1])
    v = np.array([1, 1, -1, 1, -1, 1, 1, -1])
    return (np.outer(u, v) > 0).astype(np.int32)


# --- the fit ------------------------------------------------------------------------------


def test_critical_n_fit_matches_the_paper_polynomial_and_its_extrapolations():
    for d in (4, 32, 512, 768, 1024, 3072, 4096):
        assert float(retrieval.critical_n_fit(d)) == pytest.approx(_poly(d), rel=1e-12)
    at_512 = float(retrieval.critical_n_fit(512))
    at_1024 = float(retrieval.critical_n_fit(1024.0))
    assert at_512 == pytest.approx(512_290, rel=1e-4)
    assert abs(at_512 - 512_000) / 512_000 < 0.02  # "about 512k" (the paper rounds to 500k)
    assert abs(at_1024 - 4.0e6) / 4.0e6 < 0.02  # "about 4.0M"
    at_32 = float(retrieval.critical_n_fit(32))
    assert round(at_32) == 293 and abs(math.comb(293, 2) - 43_000) / 43_000 < 0.02


def test_critical_n_fit_jits_and_vmaps_over_d():
    ds = jnp.arange(1.0, 65.0)
    expected = np.array([_poly(d) for d in np.arange(1.0, 65.0)])
    np.testing.assert_allclose(jax.jit(retrieval.critical_n_fit)(ds), expected, rtol=1e-12)
    np.testing.assert_allclose(jax.vmap(retrieval.critical_n_fit)(ds), expected, rtol=1e-12)
    slope = jax.grad(retrieval.critical_n_fit)(10.0)
    assert float(slope) == pytest.approx(4.0309 + 2 * 0.0520 * 10 + 3 * 0.0037 * 100)


def test_critical_n_fit_rejects_non_positive_d():
    with pytest.raises(ValueError, match=r"d must be positive.*-3"):
        retrieval.critical_n_fit(-3)
    with pytest.raises(ValueError, match="d must be positive"):
        retrieval.critical_n_fit(np.array([4.0, 0.0]))
    assert np.isnan(jax.jit(retrieval.critical_n_fit)(0.0))  # traced: NaN
    with pytest.raises(checkify.JaxRuntimeError, match="d must be positive"):
        retrieval.checked_critical_n_fit(jnp.asarray(-1.0))
    assert float(retrieval.checked_critical_n_fit(jnp.asarray(32.0))) == pytest.approx(
        _poly(32))


# --- sign rank ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [4, 8, 16, 32])
def test_forster_on_hadamard_is_sqrt_n_and_sound(size):
    # ‖H‖₂ = √n for an n×n Hadamard matrix, so Forster gives √(n·n)/√n = √n exactly.
    bound = float(jax.jit(retrieval.forster_lower_bound)(jnp.asarray(hadamard(size), float)))
    assert bound <= math.sqrt(size)  # rounded outward: never above the exact value
    assert bound == pytest.approx(math.sqrt(size), rel=1e-9)


def test_forster_on_a_rank_one_sign_pattern_is_one():
    sign = 2.0 * _rank_one_pattern() - 1.0  # ‖uvᵀ‖₂ = ‖u‖‖v‖ = √(mn)
    bound = float(retrieval.forster_lower_bound(sign))
    assert bound <= 1.0 and bound == pytest.approx(1.0, rel=1e-9)


def test_sign_rank_bounds_are_tight_on_a_rank_one_pattern():
    bounds = retrieval.sign_rank_bounds(_rank_one_pattern(), key=KEY)
    assert bounds.sign_rank_lower == bounds.factorization_rank == 1 and bounds.tight
    assert bounds.d_needed_lower == bounds.d_needed_upper == 1
    u, v = bounds.factorization
    assert u.shape == (8, 1) and v.shape == (8, 1)
    np.testing.assert_array_equal(np.sign(u @ v.T), 2 * _rank_one_pattern() - 1)


def test_sign_rank_bounds_on_hadamard_sandwich_and_exact_signs():
    qrels = (hadamard(8) > 0).astype(np.int32)
    bounds = retrieval.sign_rank_bounds(qrels, key=KEY)
    assert bounds.forster_lower == pytest.approx(math.sqrt(8), rel=1e-9)
    assert bounds.sign_rank_lower == 3 and bounds.d_needed_lower == 2
    assert bounds.sign_rank_lower <= bounds.factorization_rank <= bounds.trivial_upper == 8
    assert bounds.d_needed_lower <= bounds.d_needed_upper <= bounds.factorization_rank
    u, v = bounds.factorization
    assert u.shape[1] == v.shape[1] == bounds.factorization_rank
    np.testing.assert_array_equal(np.sign(u.astype(np.float64) @ v.T.astype(np.float64)),
                                  hadamard(8))
    assert retrieval.verify_sign_factorization(hadamard(8), u, v)


def test_verify_sign_factorization_rejects_wrong_or_degenerate_signs():
    sign = 2 * _rank_one_pattern() - 1
    u = sign[:, :1].astype(float)
    v = sign[:1, :].T.astype(float)
    assert retrieval.verify_sign_factorization(sign, u, v)
    flipped = sign.copy()
    flipped[2, 3] *= -1
    assert not retrieval.verify_sign_factorization(flipped, u, v)
    assert not retrieval.verify_sign_factorization(sign, 0 * u, v)  # zero scores: no sign
    with pytest.raises(ValueError, match="u and v"):
        retrieval.verify_sign_factorization(sign, u, v[:, :0].T)


@pytest.mark.parametrize("n, k, d", [(11, 2, 5), (7, 3, 6)])
def test_neighborly_embedding_realises_every_top_k_set(n, k, d):
    queries, docs, qrels = map(np.asarray, retrieval.neighborly_embedding(n, k, d))
    assert queries.dtype == np.float64
    assert queries.shape == (math.comb(n, k), d) and docs.shape == (n, d)
    np.testing.assert_allclose(np.linalg.norm(queries, axis=1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(docs, axis=1), 1.0, rtol=1e-12)
    scores = queries @ docs.T
    margins = np.min(np.where(qrels, scores, np.inf), 1) - np.max(
        np.where(qrels, -np.inf, scores), 1)
    assert margins.min() > 1e-6
    top = np.sort(np.argsort(-scores, axis=1)[:, :k], axis=1)
    np.testing.assert_array_equal(top, retrieval.all_k_subsets(n, k))
    # As a certificate: sign(Q Dᵀ − τ 1ᵀ) = 2A − 1, so rank±(2A − 1) ≤ 2k + 1.
    tau = np.max(np.where(qrels, -np.inf, scores), axis=1) + margins / 2
    assert retrieval.verify_sign_factorization(2 * qrels - 1, queries, docs, threshold=tau)


# --- free embeddings ----------------------------------------------------------------------


def test_all_k_subsets_and_qrels():
    subsets = retrieval.all_k_subsets(5, 2)
    assert subsets.shape == (10, 2) and subsets.dtype == np.int32
    assert [tuple(s) for s in subsets][:3] == [(0, 1), (0, 2), (0, 3)]
    qrels = np.asarray(retrieval.qrels_from_subsets(subsets, 5))
    assert qrels.shape == (10, 5) and qrels.sum(axis=1).tolist() == [2] * 10
    assert qrels[4].tolist() == [False, True, True, False, False]  # (1, 2)


def test_infonce_reductions_match_the_code_and_the_paper_formula():
    rng = np.random.default_rng(1)
    q, d = rng.normal(size=(6, 3)), rng.normal(size=(4, 3))
    qrels = retrieval.qrels_from_subsets(retrieval.all_k_subsets(4, 2), 4)
    logits = q @ d.T / 0.1
    logp = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    mask = np.asarray(qrels)
    code = -logp[mask].mean()  # LIMIT code: average of −log softmax over positive pairs
    paper = -np.mean(np.log(np.sum(np.exp(logp) * mask, axis=1)))  # the footnote's formula
    loss = jax.jit(retrieval.infonce_loss, static_argnums=(3, 4))
    assert float(loss(q, d, qrels, 0.1, "mean")) == pytest.approx(code, rel=1e-10)
    assert float(loss(q, d, qrels, 0.1, "logsumexp")) == pytest.approx(paper, rel=1e-10)
    one = retrieval.qrels_from_subsets(retrieval.all_k_subsets(4, 1), 4)
    assert float(loss(q[:4], d, one, 0.1, "mean")) == pytest.approx(
        float(loss(q[:4], d, one, 0.1, "logsumexp")), rel=1e-10)


def test_free_embedding_solves_a_tiny_easy_case():
    result = retrieval.free_embedding_experiment(4, 4, 2, key=KEY)
    assert bool(result.success) and int(result.stop_reason) == retrieval.STOP_SUCCESS
    assert float(result.margin) > 0 and float(result.accuracy) == 1.0
    assert 0 < int(result.steps) < 100_000
    assert result.queries.shape == (6, 4) and result.docs.shape == (4, 4)
    assert result.queries.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(result.queries, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(result.docs, axis=1), 1.0, rtol=1e-5)
    top = np.sort(np.argsort(-np.asarray(result.queries @ result.docs.T), axis=1)[:, :2], 1)
    np.testing.assert_array_equal(top, retrieval.all_k_subsets(4, 2))


def test_free_embedding_fails_a_provably_impossible_case():
    # d = 1 with unit norm: every embedding is ±1, so each query's scores take two values
    # and its top set is "all docs on its side". For n = 3, k = 2, query {0, 1} needs
    # v0 = v1 ≠ v2 and query {0, 2} needs v0 = v2 ≠ v1: a contradiction. No embedding
    # exists, so the optimiser must fail (and stops on patience, not by luck).
    result = retrieval.free_embedding_experiment(3, 1, 2, key=KEY, patience=200,
                                                 max_steps=5000)
    assert not bool(result.success)
    assert float(result.margin) <= 0 and float(result.accuracy) < 1.0
    assert int(result.stop_reason) in (retrieval.STOP_PATIENCE, retrieval.STOP_MAX_STEPS)


def test_the_optimisation_is_one_while_loop():
    jaxpr = jax.make_jaxpr(lambda key: retrieval.free_embedding_experiment(
        5, 3, 2, key=key, max_steps=50))(KEY)
    assert str(jaxpr).count("while[") == 1
    assert "scan[" not in str(jaxpr)


def test_critical_n_search_recovers_the_exact_limit_at_d_1():
    # d = 1: n = 2 (one query, both docs relevant) is trivially solved and n = 3 is
    # impossible (see above), so the critical n is exactly 2.
    seen = []
    result = retrieval.critical_n_search(1, 2, key=KEY, patience=200, max_steps=5000,
                                         restarts=2, callback=seen.append)
    assert result.critical_n == 2 and result.first_failure == 3 and not result.capped
    assert sorted(result.evaluations) == [2, 3] and len(seen) == 2
    assert result.evaluations[3]["attempts"] == 2 and result.evaluations[2]["attempts"] == 1
    assert result.evaluations[2]["success"] and not result.evaluations[3]["success"]
    assert retrieval.free_embedding_search is retrieval.critical_n_search


def test_free_embedding_fit_takes_any_qrels():
    # Rows with 0 to 4 relevant docs (same shape and settings as the easy case above, so
    # the compiled loop is reused).
    qrels = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1],
                      [0, 0, 1, 1]])
    result = retrieval.free_embedding_fit(qrels, 4, key=KEY)
    assert bool(result.success) and result.queries.shape == (6, 4)
    scores = np.asarray(result.queries @ result.docs.T)
    for row, relevant in zip(scores, qrels.astype(bool)):
        if relevant.any() and (~relevant).any():
            assert row[relevant].min() > row[~relevant].max()


def test_bad_inputs_raise_and_name_the_argument():
    with pytest.raises(ValueError, match=r"k must be ≤ n.*k=3 > n=2"):
        retrieval.free_embedding_experiment(2, 4, 3, key=KEY)
    with pytest.raises(ValueError, match="d must be >= 1"):
        retrieval.free_embedding_experiment(4, 0, 2, key=KEY)
    with pytest.raises(ValueError, match="n must be >= 1"):
        retrieval.free_embedding_experiment(0, 4, 2, key=KEY)
    with pytest.raises(TypeError, match="n must be an int"):
        retrieval.free_embedding_experiment(4.0, 4, 2, key=KEY)
    with pytest.raises(ValueError, match="temperature must be positive"):
        retrieval.free_embedding_experiment(4, 4, 2, key=KEY, temperature=0.0)
    with pytest.raises(ValueError, match="positive_reduction"):
        retrieval.free_embedding_experiment(4, 4, 2, key=KEY, positive_reduction="sum")
    with pytest.raises(ValueError, match="max_queries"):
        retrieval.free_embedding_experiment(1000, 4, 3, key=KEY)
    with pytest.raises(ValueError, match=r"qrels must be binary.*2"):
        retrieval.sign_rank_bounds(np.array([[0, 1], [2, 1]]))
    with pytest.raises(ValueError, match="qrels must be binary"):
        retrieval.free_embedding_fit(np.array([[0.5, 1.0]]), 2, key=KEY)
    with pytest.raises(ValueError, match="qrels must have rank 2"):
        retrieval.sign_rank_bounds(np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="sign_matrix must be a ±1 matrix"):
        retrieval.forster_lower_bound(np.array([[1.0, 0.0]]))
    with pytest.raises(ValueError, match="d must be >= 4"):
        retrieval.neighborly_embedding(10, 2, 3)
