"""Matrix Nuclear-Norm and matrix entropy (arXiv 2410.10672): bounds, invariances, NumPy
float64 references, limiting cases, zero rows, vmap/jit/grad, bad input, the benchmark."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxbounds.bounds.nuclear import matrix_entropy, matrix_nuclear_norm, normalize_hidden

# Few shapes, shared by the tests, so that compiled functions are reused (fast suite).
WIDE, TALL, TINY = (8, 32), (32, 8), (2, 7)  # N < D, N > D, the smallest N
SHAPES = [WIDE, TALL, TINY]
METHODS = ("svd", "covariance", "gram")
_counter = iter(range(10**6))


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def fresh(shape, dtype=np.float64, offset=True):
    """Fresh random, non-zero hidden states with a feature offset and uneven scales."""
    rng = np.random.default_rng(1000 + next(_counter))
    h = rng.standard_normal(shape) * rng.uniform(0.1, 3.0, size=shape[-1])
    if offset:
        h = h + rng.standard_normal(shape[-1])
    return h.astype(dtype)


# --- independent NumPy float64 transcriptions of the official code ------------------------


def np_normalize(h):
    x = np.asarray(h, np.float64)
    x = x - x.mean(axis=0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def np_mnn(h, k=None):
    z = np_normalize(h)
    k = min(z.shape) if k is None else k
    col = np.sqrt((z**2).sum(axis=0))
    return np.sort(col)[::-1][:k].sum() / z.shape[0]


def np_entropy(h, normalized=False):
    z = np_normalize(h)
    lam = np.linalg.eigvalsh(z.T @ z / z.shape[0])  # official: spectrum of the covariance
    lam = np.clip(lam, 0, None)
    p = lam / lam.sum()
    p = p[p > 0]
    ent = -(p * np.log(p)).sum()
    return ent / np.log(z.shape[1]) if normalized else ent


def np_entropy_svd(h):
    s = np.linalg.svd(np_normalize(h), compute_uv=False)
    p = s**2 / (s**2).sum()
    p = p[p > 0]
    return -(p * np.log(p)).sum()


# --- MNN -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_rows_unit_and_cauchy_schwarz_bound(shape, x64):
    n, d = shape
    h = jnp.asarray(fresh(shape))
    z = normalize_hidden(h)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=1), 1.0, rtol=1e-12)
    col_sq = np.sum(np.asarray(z) ** 2, axis=0)
    np.testing.assert_allclose(col_sq.sum(), n, rtol=1e-12)  # Σ_j c_j² = N
    mnn = float(matrix_nuclear_norm(h))
    assert 0 < mnn <= np.sqrt(min(n, d) / n) * (1 + 1e-12)


@pytest.mark.parametrize("shape", [WIDE, TALL])
def test_cauchy_schwarz_bound_float32(shape):
    n, d = shape
    violations = 0
    for _ in range(5):
        mnn = float(matrix_nuclear_norm(jnp.asarray(fresh(shape, np.float32))))
        violations += mnn > np.sqrt(min(n, d) / n) * (1 + 1e-6)  # outward tolerance 1e-6 rel.
    assert violations == 0


@pytest.mark.parametrize("shape", SHAPES)
def test_mnn_matches_numpy_reference(shape, x64):
    h = fresh(shape)
    out = matrix_nuclear_norm(jnp.asarray(h))
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(float(out), np_mnn(h), rtol=1e-12)
    for k in (1, shape[1]) if shape == WIDE else ():
        np.testing.assert_allclose(float(matrix_nuclear_norm(jnp.asarray(h), num_columns=k)),
                                   np_mnn(h, k), rtol=1e-12)


def test_float32_and_bfloat16_against_float64_reference():
    h = fresh(WIDE, np.float32)
    ref = np_mnn(h)
    out = matrix_nuclear_norm(jnp.asarray(h))
    assert out.dtype == jnp.float32
    assert abs(float(out) - ref) / ref < 1e-5
    ent = matrix_entropy(jnp.asarray(h))
    assert ent.dtype == jnp.float32
    assert abs(float(ent) - np_entropy(h)) / np_entropy(h) < 1e-5
    hb = jnp.asarray(h, jnp.bfloat16)  # accumulates in float32
    outb = matrix_nuclear_norm(hb)
    assert outb.dtype == jnp.float32
    ref_b = np_mnn(np.asarray(hb.astype(jnp.float32), np.float64))
    assert abs(float(outb) - ref_b) / ref_b < 1e-5


def test_permuting_tokens_changes_nothing(x64):
    h = fresh(TALL)
    perm = np.random.default_rng(7).permutation(TALL[0])
    for fn in (matrix_nuclear_norm, matrix_entropy):
        np.testing.assert_allclose(float(fn(jnp.asarray(h[perm]))), float(fn(jnp.asarray(h))),
                                   rtol=1e-12)


def test_rank_one_input(x64):
    rng = np.random.default_rng(3)
    (n, d) = TALL
    a, b = rng.standard_normal(n), rng.standard_normal(d)
    h = np.outer(a, b) + rng.standard_normal(d)  # rank 1 once centred
    col = np.sqrt(n) * np.abs(b) / np.linalg.norm(b)  # Z = ±b/‖b‖ in every row
    np.testing.assert_allclose(float(matrix_nuclear_norm(jnp.asarray(h))),
                               np.sort(col)[::-1][:min(n, d)].sum() / n, rtol=1e-12)
    for method in METHODS:
        assert abs(float(matrix_entropy(jnp.asarray(h), method=method))) < 1e-8


@pytest.mark.parametrize("rank,d,copies", [(1, 7, 1), (4, 32, 1), (8, 8, 2)])
def test_orthonormal_input_has_entropy_log_rank(rank, d, copies, x64):
    q, _ = np.linalg.qr(np.random.default_rng(rank).standard_normal((d, rank)))
    # rows ±q_i (each `copies` times) + an offset: once centred, orthonormal unit rows
    h = np.concatenate([q.T, -q.T] * copies) + 2.5
    for method in METHODS:
        out = float(matrix_entropy(jnp.asarray(h), method=method))
        np.testing.assert_allclose(out, np.log(rank), atol=1e-10)
    if rank == d:
        np.testing.assert_allclose(float(matrix_entropy(jnp.asarray(h), normalized=True)), 1.0,
                                   rtol=1e-12)


def test_many_isotropic_tokens_approach_log_d(x64):
    h = np.random.default_rng(11).standard_normal((4096, 8))
    assert abs(float(matrix_entropy(jnp.asarray(h))) - np.log(8)) < 0.01


@pytest.mark.parametrize("shape", SHAPES)
def test_entropy_matches_numpy_reference(shape, x64):
    h = fresh(shape)
    ref = np_entropy(h)
    np.testing.assert_allclose(ref, np_entropy_svd(h), rtol=1e-10, atol=1e-12)
    for method in METHODS if shape != TINY else ("svd",):
        out = matrix_entropy(jnp.asarray(h), method=method)
        assert out.dtype == jnp.float64
        np.testing.assert_allclose(float(out), ref, rtol=1e-10, atol=1e-12)
    if shape == SHAPES[0]:
        np.testing.assert_allclose(float(matrix_entropy(jnp.asarray(h), normalized=True)),
                                   np_entropy(h, normalized=True), rtol=1e-10)


# --- zero rows, degenerate inputs, gradients -----------------------------------------------


def zero_row_input():
    """Integers, so the mean is exact: row 2 is the mean of the rows, i.e. 0 once centred."""
    n, d = WIDE
    rng = np.random.default_rng(5)
    h = rng.integers(-5, 6, size=(n, d)).astype(np.float64)
    h[-1] = (n - 1) * h[2] - h[:-1].sum(axis=0) + h[2]  # Σ rows = n·h[2]
    return h


def test_zero_row_contributes_zero(x64):
    h = zero_row_input()
    assert np.all(h.mean(axis=0) == h[2])
    z = np.asarray(normalize_hidden(jnp.asarray(h)))
    assert np.all(z[2] == 0) and np.all(np.isfinite(z))
    mnn = float(matrix_nuclear_norm(jnp.asarray(h)))
    np.testing.assert_allclose(mnn, np_mnn(h), rtol=1e-12)
    # the zero row adds nothing to the numerator; N = 8 still divides
    n, d = h.shape
    kept = np.delete(np_normalize(h), 2, axis=0)
    np.testing.assert_allclose(mnn, np.sort(np.sqrt((kept**2).sum(0)))[::-1][:n].sum() / n,
                               rtol=1e-12)
    for method in METHODS:
        np.testing.assert_allclose(float(matrix_entropy(jnp.asarray(h), method=method)),
                                   np_entropy(h), rtol=1e-10)


def test_all_rows_equal_gives_zero_and_finite_gradients(x64):
    row = np.round(4 * fresh((1, WIDE[1]))) / 4  # dyadic: the mean is exact
    h = jnp.tile(jnp.asarray(row), (WIDE[0], 1))
    assert float(matrix_nuclear_norm(h)) == 0.0
    for method in METHODS:
        assert float(matrix_entropy(h, method=method)) == 0.0
    g = jax.grad(matrix_nuclear_norm)(h)
    assert np.all(np.isfinite(np.asarray(g)))
    g = jax.grad(matrix_nuclear_norm)(jnp.asarray(zero_row_input()))
    assert np.all(np.isfinite(np.asarray(g)))


def test_mnn_gradient_matches_finite_differences(x64):
    h = jnp.asarray(fresh(WIDE))
    check_grads(matrix_nuclear_norm, (h,), order=1, modes=["rev"], atol=1e-6, rtol=1e-6)


# --- vmap / jit ------------------------------------------------------------------------------


def test_vmap_and_jit_match_loop(x64):
    batch = jnp.asarray(np.stack([fresh(WIDE) for _ in range(4)]))
    for fn in (matrix_nuclear_norm, matrix_entropy):
        looped = np.array([float(fn(b)) for b in batch])
        np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(fn))(batch)), looped,
                                   rtol=1e-12)


def test_nan_input_gives_nan():
    h = fresh(WIDE, np.float32)
    h[1, 2] = np.nan
    assert np.isnan(float(matrix_nuclear_norm(jnp.asarray(h))))
    for method in METHODS:
        assert np.isnan(float(matrix_entropy(jnp.asarray(h), method=method)))


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [matrix_nuclear_norm, matrix_entropy, normalize_hidden])
@pytest.mark.parametrize("bad,error,match", [
    (np.ones(5), ValueError, r"hidden must have rank 2.*\(5,\)"),
    (np.ones((2, 3, 4)), ValueError, r"hidden must have rank 2.*\(2, 3, 4\)"),
    (np.ones((1, 4)), ValueError, r"N, the number of tokens.*≥ 2"),
    (np.ones((4, 0)), ValueError, r"D, the number of features.*≥ 1"),
    (np.ones((4, 3), np.int32), TypeError, r"hidden.*floating.*int32"),
    (np.ones((4, 3), np.complex64), TypeError, r"hidden.*floating.*complex64"),
    ([["a", "b"], ["c", "d"]], TypeError, r"hidden.*floating"),
])
def test_bad_hidden(fn, bad, error, match):
    with pytest.raises(error, match=match):
        fn(bad)


def test_bad_keywords():
    h = fresh((6, 4), np.float32)
    for k, error in ((0, ValueError), (5, ValueError), (2.5, TypeError), (True, TypeError),
                     ("2", TypeError)):
        with pytest.raises(error, match="num_columns"):
            matrix_nuclear_norm(h, num_columns=k)
    with pytest.raises(ValueError, match=r"method must be one of .*'eig'"):
        matrix_entropy(h, method="eig")
    with pytest.raises(TypeError, match="normalized must be a bool"):
        matrix_entropy(h, normalized="yes")
    with pytest.raises(ValueError, match=r"normalized=True.*≥ 2"):
        matrix_entropy(fresh((6, 1), np.float32), normalized=True)
    assert float(matrix_entropy(fresh((6, 1), np.float32))) == 0.0  # D = 1: one direction


def test_lists_are_accepted():
    h = fresh(WIDE, np.float32)
    assert float(matrix_nuclear_norm(h.tolist())) == pytest.approx(np_mnn(h), rel=1e-5)


# --- the benchmark ---------------------------------------------------------------------------


def test_benchmark_runs_tiny(tmp_path, capsys):
    from experiments.bench_nuclear import main

    assert main(["--n", "16", "--d", "8", "--reps", "2", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "bench_nuclear" / "results.json").read_text())
    assert data["n"] == 16 and data["d"] == [8] and data["reps"] == 2
    assert data["paper_speedup_range"] == [8.0, 24.0]
    rows = data["results"]
    assert [r["path"] for r in rows] == ["entropy_svd", "entropy_covariance", "entropy_gram"]
    for r in rows:
        assert r["time_mnn_s"] > 0 and r["time_entropy_s"] > 0
        assert r["speedup"] == pytest.approx(r["time_entropy_s"] / r["time_mnn_s"])
        assert 0 < r["mnn"] <= np.sqrt(min(16, r["d"]) / 16) * (1 + 1e-6)
        assert 0 < r["entropy"] <= np.log(min(15, r["d"])) + 1e-5
    assert "speedup entropy/MNN" in capsys.readouterr().out
