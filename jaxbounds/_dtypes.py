"""The one dtype rule of the package: compute in ``promote(x, float32)``.

Low-precision inputs (bfloat16, float16) and integers compute in float32; float32 stays
float32; float64 stays float64 (when ``jax_enable_x64`` is on).
"""

from __future__ import annotations

import jax.numpy as jnp


def compute_dtype(*xs) -> jnp.dtype:
    """The dtype to compute in for inputs ``xs``: ``promote_types(float32, dtypes of xs)``.

    Accepts arrays, dtypes and Python numbers (which do not promote). Integer and bool
    inputs compute in float32.
    """
    dtype = jnp.dtype(jnp.float32)
    for x in xs:
        if x is None or isinstance(x, (bool, int, float, complex)):
            continue
        d = jnp.dtype(getattr(x, "dtype", x))
        if jnp.issubdtype(d, jnp.inexact):
            dtype = jnp.promote_types(dtype, d)
    return dtype


def as_compute(*xs):
    """Each of ``xs`` cast to :func:`compute_dtype` of all of them (a tuple)."""
    dtype = compute_dtype(*xs)
    return tuple(jnp.asarray(x, dtype) for x in xs)
