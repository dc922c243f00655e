"""Largest singular value by batched power iteration, for the generalization measures.

A thin layer over :func:`jaxbounds._linalg.power_iteration`: σ̂ never exceeds σ_max (it
approaches from below), so it is **not** a sound upper bound; use
:func:`jaxbounds._linalg.spectral_norm_upper` (a float64 SVD with an outward margin) where
soundness matters. The generalization measures use σ̂ as Jiang et al. (2020) use an SVD: as
a correlate, not a bound. The start vector is deterministic unless a ``key`` is given.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxbounds import _linalg


def spectral_norm(w: jax.Array, *, num_iters: int = 100, key: jax.Array | None = None):
    """σ_max of ``w`` (``[..., p, q]``, batched) estimated by power iteration."""
    return _linalg.power_iteration(w, num_iters=num_iters, key=key)[0]


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
