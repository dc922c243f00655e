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


def float_dtype(*xs) -> jnp.dtype:
    """The dtype to compute in for calculators whose inputs may all be numbers or counts.

    :func:`compute_dtype` of the floating arrays among ``xs``; when none of ``xs`` is a
    floating array (only Python numbers, integers, bools), jax's default float dtype
    (float64 when ``jax_enable_x64`` is on), so that ``f(0.1, 1000, 0.05)`` computes in
    float64 under x64 while float32 arrays stay float32.
    """
    floats = [x for x in xs if x is not None and not isinstance(x, (bool, int, float, complex))
              and jnp.issubdtype(jnp.dtype(getattr(x, "dtype", x)), jnp.inexact)]
    return compute_dtype(*floats) if floats else jnp.dtype(jnp.result_type(float))


def as_float(*xs):
    """Each of ``xs`` cast to :func:`float_dtype` of all of them (a tuple)."""
    dtype = float_dtype(*xs)
    return tuple(jnp.asarray(x, dtype) for x in xs)
