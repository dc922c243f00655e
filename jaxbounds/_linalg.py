"""The package's spectral linear algebra: power iteration, a certified σ_max, RMS→RMS norms.

* :func:`power_iteration`: an *estimate* σ̂ ≤ σ_max and the top right singular vector, by
  matrix products only (jit/vmap-able, warm-startable). It approaches σ_max from below, so it
  is never a bound.
* :func:`spectral_norm_upper`: a *certified upper bound* on σ_max: an SVD in float64,
  inflated by an outward margin that covers LAPACK's backward error.
* :func:`rms_operator_norm`: ‖W‖_RMS→RMS = √(fan_in/fan_out)·σ_max with rms(x) = ‖x‖₂/√d,
  certified like :func:`spectral_norm_upper`.

``power_iteration`` and ``spectral_norm_upper`` read a matrix ``[..., p, q]`` batched over
the leading axes and are orientation-agnostic (σ_max(W) = σ_max(Wᵀ)); only
``rms_operator_norm`` needs to know which axis is the input, through ``layout``.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import check_array, check_int, is_traced
from jaxbounds._dtypes import compute_dtype
from jaxbounds._layout import check_layout

__all__ = [
    "SIGMA_OUTWARD_RTOL",
    "check_matrix",
    "power_iteration",
    "rms_operator_norm",
    "spectral_norm_upper",
]

HIGHEST = jax.lax.Precision.HIGHEST

# Relative outward margin on a float64 SVD's σ_max. The computed value σ̂ satisfies
# |σ̂ − σ_max| ≤ c·n·ε₆₄·σ_max (backward stability of the SVD), ≈ 1e-12 for n ≤ 10⁴; larger
# matrices get the margin 10·n·ε₆₄ instead (see :func:`_outward_rtol`).
SIGMA_OUTWARD_RTOL = 1e-10


def check_matrix(w, name: str = "w"):
    """``w`` as an array of rank >= 2 ``[..., p, q]`` with a floating dtype, else an error."""
    w = check_array(name, w)
    if w.ndim < 2:
        raise ValueError(
            f"{name} must be a matrix [..., p, q] with at least 2 dimensions (ndim >= 2), got "
            f"shape {tuple(w.shape)}. Vectors (biases, gains) have no spectral norm.")
    return w


def _normalize(z, tiny):
    return z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), tiny)


@functools.partial(jax.jit, static_argnames=("num_iters", "precision"))
def _power_iteration(w, key, v0, num_iters, precision):
    dtype = w.dtype
    tiny = jnp.finfo(dtype).tiny
    matvec = functools.partial(jnp.einsum, "...pq,...q->...p", precision=precision)
    rmatvec = functools.partial(jnp.einsum, "...pq,...p->...q", precision=precision)
    vec_shape = w.shape[:-2] + w.shape[-1:]
    if v0 is not None:
        v = jnp.broadcast_to(v0.astype(dtype), vec_shape)
    elif key is not None:
        v = jax.random.normal(key, vec_shape, dtype)
    else:
        # Deterministic start WᵀW e_j, j the column of largest norm: its component along the
        # top right singular vector v₁ is σ₁²·(v₁)_j, zero only when v₁ ⟂ e_j.
        column = jnp.argmax(jnp.sum(w * w, axis=-2), axis=-1)
        v = rmatvec(w, matvec(w, jax.nn.one_hot(column, w.shape[-1], dtype=dtype)))
    v = _normalize(v, tiny)

    def step(_, v):
        return _normalize(rmatvec(w, _normalize(matvec(w, v), tiny)), tiny)

    v = jax.lax.fori_loop(0, num_iters, step, v)
    return jnp.linalg.norm(matvec(w, v), axis=-1), v


def power_iteration(w, *, num_iters: int, key=None, v0=None, precision=HIGHEST):
    """Estimate σ_max of ``w [..., p, q]`` and its right singular vector by power iteration.

    Runs v ← Wᵀ(Wv/‖Wv‖)/‖·‖ ``num_iters`` times and returns ``(sigma, v)``: σ̂ = ‖Wv‖
    (shape ``[...]``) and the unit vector v (``[..., q]``); the left vector is Wv/σ̂. σ̂ ≤ σ_max
    up to roundoff: it approaches from below, the error shrinking like (σ₂/σ₁)^(2k). It is
    an estimate, never a bound: use :func:`spectral_norm_upper` where soundness matters.

    Args:
      w: a float matrix or a batch of them; computed in ``promote(dtype, float32)``.
      num_iters: the number of steps (>= 1).
      key: a PRNG key for a Gaussian start vector.
      v0: a start vector ``[..., q]`` (a warm start, e.g. the ``v`` of the previous training
        step); takes precedence over ``key``. With neither, the start is the deterministic
        WᵀW e_j for the column j of largest norm.
      precision: the matrix-vector product precision (``HIGHEST`` by default).

    A zero matrix gives σ̂ = 0. Pure and jitted; differentiable (fixed trip count).
    """
    w = check_matrix(w)
    num_iters = check_int("num_iters", num_iters, minimum=1)
    w = jnp.asarray(w, compute_dtype(w))
    if v0 is not None:
        v0 = jnp.asarray(v0)
        if v0.shape[-1:] != w.shape[-1:]:
            raise ValueError(f"v0 must have shape [..., {w.shape[-1]}] (a right vector of w "
                             f"{tuple(w.shape)}), got {tuple(v0.shape)}.")
    return _power_iteration(w, key, v0, num_iters, precision)


def _outward_rtol(shape) -> float:
    return max(SIGMA_OUTWARD_RTOL, 10.0 * max(shape[-2:]) * float(np.finfo(np.float64).eps))


def spectral_norm_upper(w):
    """A certified upper bound on σ_max of ``w [..., p, q]``: float64 SVD, outward margin.

    A concrete ``w`` (any float dtype) is converted to float64 on the host and its singular
    values computed there by LAPACK; the result is a NumPy float64 array ``[...]`` (so it
    stays float64 without ``jax_enable_x64``). Inside ``jit`` the input must already be
    float64 (enable x64), and ``jnp.linalg.svd`` is used. Either way σ_max is multiplied by
    1 + max(:data:`SIGMA_OUTWARD_RTOL`, 10·n·ε₆₄), which covers the SVD's backward error.
    """
    w = check_matrix(w)
    factor = 1.0 + _outward_rtol(w.shape)
    if not is_traced(w):
        s = np.linalg.svd(np.asarray(w).astype(np.float64), compute_uv=False)
        return s[..., 0] * factor
    if w.dtype != jnp.float64:
        raise ValueError(
            f"spectral_norm_upper needs float64 under jit, got a traced w of dtype {w.dtype}: "
            "call it outside jit, or enable x64 (jax.enable_x64) and pass float64.")
    return jnp.linalg.svd(w, compute_uv=False)[..., 0] * factor


def rms_operator_norm(w, *, layout: str = "flax"):
    """‖W‖_RMS→RMS = √(fan_in/fan_out)·σ_max(W), certified (:func:`spectral_norm_upper`).

    ``w`` is a kernel ``[..., in, out]`` (``layout="flax"``, ``y = x @ W``) or
    ``[..., out, in]`` (``layout="torch"``), batched over the leading axes; rms(x) = ‖x‖₂/√d.
    The orientation matters for a non-square kernel: it decides fan_in and fan_out.
    """
    check_layout(layout)
    w = check_matrix(w)
    fan_in, fan_out = w.shape[-2:] if layout == "flax" else w.shape[-2:][::-1]
    return math.sqrt(fan_in / fan_out) * spectral_norm_upper(w)
