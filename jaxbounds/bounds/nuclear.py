"""Matrix Nuclear-Norm and matrix entropy of a model's hidden states.

Paper: Li et al., *Large Language Model Evaluation via Matrix Nuclear-Norm*
(arXiv 2410.10672); official code: github.com/MLGroupJLU/MatrixNuclearNorm
(``code/MNN.py``, ``code/compute_entropy_time.py``). The matrix-entropy baseline is from
Wei et al., *Diff-eRank* / *Large Language Model Evaluation via Matrix Entropy*
(arXiv 2401.17139).

Input: ``hidden`` ∈ ℝ^{N×D}, the hidden states of one sequence (N tokens, D features). Both
metrics first normalise it as the official ``normalize(R)`` does:

    X̄ = H − 1·μᵀ,   μ = (1/N) Σ_i H[i, :]          centre each feature over the tokens
    Z[i, :] = X̄[i, :] / ‖X̄[i, :]‖₂                   L2-normalise each token (row)

A row whose centred vector is exactly 0 (the token equals the mean) would be 0/0 in the
official code (NaN). Here it stays 0: **such a row contributes 0** to every sum below (it is
still counted in N). An input whose rows are all equal therefore gives MNN = 0 and entropy 0.

**Matrix Nuclear-Norm** (:func:`matrix_nuclear_norm`). With the column norms
c_j = ‖Z[:, j]‖₂, j = 1..D, sorted as c_(1) ≥ c_(2) ≥ …,

    MNN(H) = (1/N) Σ_{j=1}^{k} c_(j),   k = min(N, D)

i.e. the L_{1,2} norm of Z restricted to its k largest columns, an O(N·D) proxy for the
nuclear norm ‖Z‖_* = Σ σ_i(Z) (which needs an SVD). The official ``matrix_nuclear_norm``
returns the sum; its callers (``MNN.py``) divide by ``len(token_ids[0])`` = N, which is
included here. Since every nonzero row of Z has unit norm, Σ_j c_j² = #nonzero rows ≤ N, and
by Cauchy–Schwarz MNN ≤ √(k·N)/N = √(min(N, D)/N).

**Matrix entropy** (:func:`matrix_entropy`), the SVD-based metric that MNN replaces. With the
covariance Σ_Z = ZᵀZ/N (trace 1 when no row is zero) and its eigenvalues λ_i, equivalently
the singular values σ_i of Z,

    p_i = λ_i / tr(Σ_Z) = σ_i² / Σ_k σ_k²,   H(Z) = −Σ_i p_i log p_i   (nats; 0·log 0 = 0)

the von Neumann entropy of the trace-normalised covariance; exp(H) is the effective rank.
A rank-r input with r equal singular values gives log r; a rank-1 input gives 0. Because of
the centring, rank(Z) ≤ min(N − 1, D). The official ``cal_entropy`` reports
H / log D (D = the covariance's dimension, not its rank): ``normalized=True`` returns that.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import check_array, check_bool, check_choice, check_int, require
from jaxbounds._dtypes import compute_dtype

__all__ = ["matrix_entropy", "matrix_nuclear_norm", "normalize_hidden"]

ENTROPY_METHODS = ("svd", "covariance", "gram")


def _hidden(hidden):
    """``hidden`` checked as a float array [N ≥ 2, D ≥ 1] (jax arrays and tracers as is)."""
    hidden = check_array("hidden", hidden, ndim=2)
    n, d = hidden.shape
    require("hidden.shape[0] (N, the number of tokens)", n, lambda v: v >= 2,
            "≥ 2 (a single token is all zeros once centred)")
    require("hidden.shape[1] (D, the number of features)", d, lambda v: v >= 1, "≥ 1")
    return hidden


def _safe_sqrt(sq):
    """sqrt with a finite gradient at 0 (the value there is 0); NaN stays NaN."""
    zero = sq == 0
    return jnp.where(zero, 0, jnp.sqrt(jnp.where(zero, 1, sq)))


def _normalize(hidden):
    """Centre each column, then L2-normalise each row; zero rows stay zero (grad-safe)."""
    x = hidden.astype(compute_dtype(hidden))
    x = x - jnp.mean(x, axis=0, keepdims=True)
    sq = jnp.sum(x * x, axis=1, keepdims=True)
    zero = sq == 0  # not `sq > 0`: a NaN row must stay NaN, not become a zero row
    inv = jnp.where(zero, 0, jax.lax.rsqrt(jnp.where(zero, 1, sq)))
    return x * inv


def normalize_hidden(hidden):
    """Z: ``hidden`` centred over tokens (per feature) with each token row L2-normalised.

    The official ``normalize(R)`` of arXiv 2410.10672, except that a row that is 0 after
    centring stays 0 instead of becoming NaN. ``hidden`` is [N, D] float, N ≥ 2; the result
    has the same shape in float32 (16-bit inputs) or the input's dtype.
    """
    return _normalize_jit(_hidden(hidden))


_normalize_jit = jax.jit(_normalize)


@functools.partial(jax.jit, static_argnames=("k",))
def _mnn(hidden, k: int):
    z = _normalize(hidden)
    norms = _safe_sqrt(jnp.sum(z * z, axis=0))  # c_j, [D]
    if k < norms.shape[0]:
        norms = jax.lax.top_k(norms, k)[0]
    return jnp.sum(norms) / hidden.shape[0]


def matrix_nuclear_norm(hidden, *, num_columns: int | None = None):
    """Matrix Nuclear-Norm of hidden states (Li et al. 2024, arXiv 2410.10672).

    MNN = (1/N) Σ_{j ≤ k} c_(j): the k = ``num_columns`` (default min(N, D)) largest column
    L2 norms c_j = ‖Z[:, j]‖₂ of Z = :func:`normalize_hidden` (``hidden`` centred per
    feature, rows L2-normalised), divided by the number of tokens N, as in the official
    ``MNN.py``. O(N·D); no SVD. 0 ≤ MNN ≤ √(min(k, D)·N)/N.

    Args:
      hidden: [N, D] real float array (N ≥ 2 tokens, D ≥ 1 features). Computed in float32
        for 16-bit inputs, otherwise in the input's dtype (float64 with x64 enabled).
      num_columns: keyword-only int in [1, D]; the official ``D`` argument.

    Returns a scalar. jit-compiled; use ``jax.vmap`` over a leading batch of sequences; has
    finite gradients everywhere (also where a row or a column of Z is 0). A token whose
    centred row is 0 contributes 0 (it still counts in N); NaN/inf inputs give NaN.
    Raises TypeError/ValueError for a non-float ``hidden``, a shape that is not [N ≥ 2, D],
    or a ``num_columns`` out of range.
    """
    hidden = _hidden(hidden)
    n, d = hidden.shape
    if num_columns is None:
        k = min(n, d)
    else:
        k = check_int("num_columns", num_columns, minimum=1, maximum=d)
    return _mnn(hidden, k)


def _entropy_from_weights(w):
    """−Σ p log p with p = w / Σw for nonnegative weights w (0 where Σw = 0)."""
    total = jnp.sum(w)
    empty = total == 0  # all rows zero; comparisons with == keep NaN inputs NaN
    p = w / jnp.where(empty, 1, total)
    zero = p == 0
    plogp = jnp.where(zero, 0, p * jnp.log(jnp.where(zero, 1, p)))
    return jnp.where(empty, 0, -jnp.sum(plogp))


@functools.partial(jax.jit, static_argnames=("method", "normalized"))
def _entropy(hidden, method: str, normalized: bool):
    z = _normalize(hidden)
    n, d = z.shape
    if method == "svd":  # σ_i(Z)², min(N, D) of them
        weights = jnp.square(jnp.linalg.svd(z, compute_uv=False))
    elif method == "covariance":  # the official code: SVD of the D×D covariance ZᵀZ/N
        weights = jnp.linalg.svd(z.T @ z / n, compute_uv=False)
    else:  # "gram": eigenvalues of the smaller of ZZᵀ [N, N] and ZᵀZ [D, D]
        gram = z @ z.T if n <= d else z.T @ z
        weights = jnp.maximum(jnp.linalg.eigvalsh(gram), 0)
    entropy = _entropy_from_weights(weights)
    if normalized:
        entropy = entropy / float(np.log(d))
    return entropy


def matrix_entropy(hidden, *, normalized: bool = False, method: str = "svd"):
    """Matrix entropy of hidden states: the SVD-based baseline that MNN replaces.

    H = −Σ_i p_i log p_i (nats) with p_i = σ_i² / Σ_k σ_k², σ_i the singular values of
    Z = :func:`normalize_hidden` (centred per feature, rows L2-normalised); equivalently
    p_i are the eigenvalues of the trace-normalised covariance ZᵀZ/N. 0·log 0 = 0. A rank-1
    input gives 0; r equal singular values give log r. exp(H) is the effective rank.

    Args:
      hidden: [N, D] real float array (N ≥ 2, D ≥ 1); float32 for 16-bit inputs, otherwise
        the input's dtype.
      normalized: keyword-only bool. True divides by log D, as the official
        ``cal_entropy`` (D = the covariance's dimension, even where rank ≤ N − 1 < D);
        needs D ≥ 2.
      method: keyword-only, how the spectrum is computed (all exact, equal up to rounding):
        ``"svd"`` (default) singular values of Z [N, D], O(N·D·min(N, D));
        ``"covariance"`` SVD of the D×D covariance, as the official code, O(N·D² + D³);
        ``"gram"`` ``eigvalsh`` of the smaller Gram matrix (ZZᵀ or ZᵀZ), clipped at 0.

    Returns a scalar. jit-compiled; use ``jax.vmap`` over a leading batch. A token whose
    centred row is 0 contributes nothing; an input with all rows equal gives 0. NaN/inf
    inputs give NaN. Raises TypeError/ValueError for bad ``hidden``, ``normalized`` or
    ``method``.
    """
    hidden = _hidden(hidden)
    check_bool("normalized", normalized)
    check_choice("method", method, ENTROPY_METHODS)
    if normalized:
        require("hidden.shape[1] (D) with normalized=True", hidden.shape[1],
                lambda v: v >= 2, "≥ 2 (the entropy is divided by log D)")
    return _entropy(hidden, method, bool(normalized))
