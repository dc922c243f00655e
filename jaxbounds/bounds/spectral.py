"""Largest singular value by batched power iteration.

For a matrix W ∈ ℝ^{p×q} (or a batch ``[..., p, q]``) the iteration alternates

    u ← W v / ‖W v‖,   v ← Wᵀ u / ‖Wᵀ u‖,                      (``num_iters`` times)

and returns σ̂ = ‖W v‖ ≤ σ_max(W). The error of σ̂ shrinks like (σ₂/σ₁)^{2k} after k steps,
so a matrix with a small spectral gap needs more steps; σ̂ never exceeds σ_max (it is a
Rayleigh-quotient estimate), so it is **not** a sound upper bound: use an SVD in float64 where
soundness matters (DESIGN.md, "Numerics"). The generalization measures use it as Jiang et al.
(2020) use an SVD: as a correlate, not a bound.

The start vector is deterministic unless a ``key`` is given: v₀ = Wᵀ W e_j for the column j of
largest norm, whose component along the top right singular vector v₁ is σ₁²·(v₁)_j — zero only
when v₁ ⟂ e_j, a measure-zero event for trained weights. With a ``key`` the start is Gaussian.

All functions are pure, jit/vmap-able, and keep the input dtype (float64 under x64).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxbounds._checks import require

_HIGHEST = jax.lax.Precision.HIGHEST


def _matvec(w, v):
    return jnp.einsum("...pq,...q->...p", w, v, precision=_HIGHEST)


def _rmatvec(w, u):
    return jnp.einsum("...pq,...p->...q", w, u, precision=_HIGHEST)


def _normalize(v):
    norm = jnp.linalg.norm(v, axis=-1, keepdims=True)
    tiny = jnp.finfo(v.dtype).tiny
    return v / jnp.maximum(norm, tiny)


def _check(w, num_iters):
    if w.ndim < 2:
        raise ValueError(f"w must have at least 2 dimensions [..., p, q], got shape {w.shape}.")
    if not jnp.issubdtype(w.dtype, jnp.floating):
        raise TypeError(f"w must be a floating-point array, got dtype {w.dtype}.")
    if not isinstance(num_iters, int) or isinstance(num_iters, bool):
        raise TypeError(f"num_iters must be an int, got {type(num_iters).__name__}.")
    require("num_iters", num_iters, lambda n: n >= 1, ">= 1")


@functools.partial(jax.jit, static_argnames=("num_iters",))
def _power_iteration(w, key, num_iters):
    if key is None:
        column = jnp.argmax(jnp.sum(w * w, axis=-2), axis=-1)  # [...]
        e_j = jax.nn.one_hot(column, w.shape[-1], dtype=w.dtype)
        v0 = _rmatvec(w, _matvec(w, e_j))
    else:
        v0 = jax.random.normal(key, w.shape[:-2] + w.shape[-1:], dtype=w.dtype)
    v0 = _normalize(v0)

    def step(_, v):
        u = _normalize(_matvec(w, v))
        return _normalize(_rmatvec(w, u))

    v = jax.lax.fori_loop(0, num_iters, step, v0)
    wv = _matvec(w, v)
    sigma = jnp.linalg.norm(wv, axis=-1)
    return sigma, _normalize(wv), v


def power_iteration(w: jax.Array, *, num_iters: int = 100, key: jax.Array | None = None):
    """Top singular triple of ``w`` (shape ``[..., p, q]``) by ``num_iters`` power steps.

    Returns ``(sigma [...], u [..., p], v [..., q])`` with ``W v ≈ σ u``. A zero matrix gives
    σ = 0. Batched over the leading axes; jitted; differentiable (fixed trip count).
    """
    w = jnp.asarray(w)
    _check(w, num_iters)
    return _power_iteration(w, key, num_iters)


def spectral_norm(w: jax.Array, *, num_iters: int = 100, key: jax.Array | None = None):
    """σ_max of ``w`` (``[..., p, q]``, batched) estimated by :func:`power_iteration`."""
    return power_iteration(w, num_iters=num_iters, key=key)[0]


def spectral_norms(matrices, *, num_iters: int = 100, pad: bool | None = None) -> jax.Array:
    """σ_max of each matrix of a list of differently shaped 2-D arrays, as one vector.

    With ``pad`` every matrix is zero-padded to the largest (rows, columns) and all run as
    one batched loop (zero padding leaves the singular values unchanged); without it, the
    matrices of each distinct shape form one batch (one loop per shape). ``None`` pads when
    that at most quadruples the elements (or stays under 2²⁰), which keeps compile time low
    for MLPs and small CNNs without blowing up memory for very uneven layers.
    """
    matrices = list(matrices)
    if not matrices:
        raise ValueError("matrices must hold at least one 2-D array, got an empty list.")
    for index, matrix in enumerate(matrices):
        if jnp.ndim(matrix) != 2:
            raise ValueError(
                f"matrices[{index}] must be 2-D, got shape {jnp.shape(matrix)}.")
    rows = max(jnp.shape(a)[0] for a in matrices)
    cols = max(jnp.shape(a)[1] for a in matrices)
    if pad is None:
        actual = sum(int(jnp.size(a)) for a in matrices)
        padded = len(matrices) * rows * cols
        pad = padded <= max(4 * actual, 1 << 20)
    if pad:
        batch = jnp.stack([
            jnp.pad(a, ((0, rows - a.shape[0]), (0, cols - a.shape[1]))) for a in matrices])
        return spectral_norm(batch, num_iters=num_iters)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, matrix in enumerate(matrices):
        groups.setdefault(tuple(jnp.shape(matrix)), []).append(index)
    out = [None] * len(matrices)
    for indices in groups.values():
        batch = jnp.stack([matrices[i] for i in indices])
        sigmas = spectral_norm(batch, num_iters=num_iters)
        for position, i in enumerate(indices):
            out[i] = sigmas[position]
    return jnp.stack(out)
