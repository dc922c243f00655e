"""Largest intermediate array of a function's jaxpr: a hardware-independent memory figure.

XLA:CPU's ``compiled.memory_analysis()`` reports 0 temporary bytes here (its fusions hide
them), so the benchmarks measure memory as the largest array any equation of the jaxpr
produces, recursing into sub-jaxprs (pjit, custom_vjp/jvp calls, scan, while, cond, Pallas
calls count as one equation). Function inputs are not intermediates; outputs are.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.extend import core as jex_core


def _sub_jaxprs(params: dict[str, Any]):
    for value in params.values():
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if isinstance(v, jex_core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jex_core.Jaxpr):
                yield v


def _aval_bytes(var) -> int:
    aval = getattr(var, "aval", None)
    shape = getattr(aval, "shape", None)
    dtype = getattr(aval, "dtype", None)
    if shape is None or dtype is None:
        return 0
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def largest_intermediate(jaxpr) -> tuple[int, str]:
    """(bytes, description) of the largest equation output in ``jaxpr``, recursively."""
    best = (0, "")
    for eqn in jaxpr.eqns:
        if eqn.primitive.name != "pallas_call":
            for sub in _sub_jaxprs(eqn.params):
                best = max(best, largest_intermediate(sub))
        for var in eqn.outvars:
            size = _aval_bytes(var)
            if size > best[0]:
                best = (size, f"{eqn.primitive.name} -> {var.aval.str_short()}")
    return best


def largest_intermediate_bytes(fn, *args, **kwargs) -> int:
    """Bytes of the largest intermediate in ``jax.make_jaxpr(fn)(*args, **kwargs)``."""
    closed = jax.make_jaxpr(fn)(*args, **kwargs)
    return largest_intermediate(closed.jaxpr)[0]
