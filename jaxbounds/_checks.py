"""Argument checks for every public function of ``jaxbounds`` (package-private).

This is the one checks layer of the package: no other module defines ``_check_*`` or
``_require_*`` helpers. Values known at trace time (Python numbers, NumPy arrays, concrete
jax arrays) are checked eagerly and raise ``ValueError``/``TypeError`` naming the argument,
the value and what was expected. A traced value cannot be checked under ``jit``: there the
calculators return NaN for an out-of-range value (:func:`nan_unless`), and each offers a
``checkify``-based checked variant built by :func:`make_checked` that raises instead::

    def occam_bound(risk, n, delta, kl):
        require("delta", delta, lambda d: (d > 0) & (d < 1), "in (0, 1)")
        valid = (delta > 0) & (delta < 1)
        return nan_unless(valid, risk + ...)

    checked_occam_bound = make_checked(occam_bound, lambda risk, n, delta, kl: [
        ((delta > 0) & (delta < 1), "delta must be in (0, 1)")])
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify


def is_traced(value) -> bool:
    """True for a jax tracer (a value unknown at trace time)."""
    return isinstance(value, jax.core.Tracer)


def require(name: str, value, condition: Callable, expected: str) -> None:
    """Raise ValueError if ``value`` is concrete and ``condition(value)`` fails anywhere.

    ``condition`` maps a NumPy array to a boolean array. Traced values are skipped (they are
    handled by :func:`nan_unless` and the checked variants).
    """
    if is_traced(value):
        return
    try:
        array = np.asarray(value)
    except Exception as err:  # noqa: BLE001 - not an array at all
        raise TypeError(
            f"{name} must be a number or an array, got {type(value).__name__}."
        ) from err
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == bool
    ):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}.")
    ok = np.asarray(condition(array))
    if not np.all(ok):
        bad = array if array.ndim == 0 else array[~np.broadcast_to(ok, array.shape)]
        shown = bad if np.ndim(bad) == 0 else np.ravel(bad)[:5]
        raise ValueError(f"{name} must be {expected}, got {shown!r}.")


def nan_unless(valid, value):
    """``value`` where ``valid``, NaN elsewhere (for traced, out-of-range inputs)."""
    value = jnp.asarray(value)
    if not jnp.issubdtype(value.dtype, jnp.floating):
        value = value.astype(jnp.result_type(float))
    return jnp.where(valid, value, jnp.nan)


def make_checked(
    fn: Callable, conditions: Callable[..., Sequence[tuple[jax.Array, str]]]
) -> Callable:
    """A variant of ``fn`` that raises under ``jit`` through ``jax.experimental.checkify``.

    ``conditions(*args, **kwargs)`` returns ``[(valid_bool_array, message), ...]``. The
    returned function is jitted, runs the checks, and raises ``checkify.JaxRuntimeError``
    (a ValueError-like error carrying the message) on failure.
    """

    def checked_body(*args, **kwargs):
        for valid, message in conditions(*args, **kwargs):
            checkify.check(jnp.all(valid), message)
        return fn(*args, **kwargs)

    checked = checkify.checkify(checked_body, errors=checkify.user_checks)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        err, out = jax.jit(checked)(*args, **kwargs)
        err.throw()
        return out

    wrapper.__doc__ = (
        f"Checked variant of ``{fn.__name__}``: raises on out-of-range traced values "
        f"(via ``jax.experimental.checkify``) instead of returning NaN.\n\n{fn.__doc__ or ''}"
    )
    return wrapper


# ---------------------------------------------------------------------------------------
# Static arguments (Python values): ints, numbers, choices.
# ---------------------------------------------------------------------------------------


def check_int(name: str, value, *, minimum: int | None = None,
              maximum: int | None = None) -> int:
    """``value`` as a Python int in ``[minimum, maximum]``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}.")
    return value


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False,
                 finite: bool = True) -> float:
    """``value`` as a Python float in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the end point. NaN is always refused; infinity unless
    ``finite=False``. Traced values are returned unchanged (check them with ``checkify``).
    """
    if is_traced(value):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) and not (
            hasattr(value, "shape") and np.ndim(value) == 0):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}.")
    number = float(value)
    if np.isnan(number) or (finite and not np.isfinite(number)):
        raise ValueError(f"{name} must be a finite number, got {number}.")
    if low is not None and (number <= low if low_open else number < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {number}.")
    if high is not None and (number >= high if high_open else number > high):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {number}.")
    return number


def check_choice(name: str, value, choices: Sequence):
    """``value`` if it is one of ``choices``, else a ValueError listing them."""
    if value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


# ---------------------------------------------------------------------------------------
# Arrays: rank, dtype, shapes, finiteness.
# ---------------------------------------------------------------------------------------


def check_array(name: str, x, *, ndim: int | Sequence[int] | None = None,
                min_ndim: int | None = None, kind: str | None = "floating",
                finite: bool = False):
    """Check an array argument and return it as an array (NumPy/jax arrays pass through).

    Args:
      name: the argument's name, for the message.
      ndim: the required rank, or a tuple of allowed ranks.
      min_ndim: the least rank allowed.
      kind: ``"floating"`` (default), ``"integer"``, ``"numeric"`` or ``None`` (any dtype).
      finite: when True, a concrete array with NaN or infinity raises a ValueError.
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        if isinstance(x, (list, tuple, int, float, np.number)) and not isinstance(x, bool):
            x = np.asarray(x)
        else:
            raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.ndim not in allowed:
            want = allowed[0] if len(allowed) == 1 else " or ".join(map(str, allowed))
            raise ValueError(f"{name} must have rank {want}, got shape {tuple(x.shape)}.")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have rank >= {min_ndim}, got shape {tuple(x.shape)}.")
    dtype = np.dtype(x.dtype) if not hasattr(x.dtype, "name") else x.dtype
    if kind == "floating" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}.")
    if kind == "integer" and not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {dtype}.")
    if kind == "numeric" and not (jnp.issubdtype(dtype, jnp.number) or dtype == bool):
        raise TypeError(f"{name} must have a numeric dtype, got {dtype}.")
    if finite:
        check_finite(name, x)
    return x


def check_finite(name: str, x) -> None:
    """Raise ValueError if a concrete array holds NaN or infinity (traced: skipped)."""
    if is_traced(x):
        return
    for leaf in jax.tree_util.tree_leaves(x):
        if is_traced(leaf):
            continue
        array = np.asarray(leaf)
        if np.issubdtype(array.dtype, np.inexact) and not np.all(np.isfinite(array)):
            raise ValueError(f"{name} must be finite, got NaN or infinity "
                             f"({int(np.sum(~np.isfinite(array)))} of {array.size} entries).")


def check_same(what: str, **sizes) -> int:
    """All keyword values equal (e.g. batch sizes); returns the common value.

    ``check_same("batch size", x=x.shape[0], y=y.shape[0])`` raises
    ``ValueError: x and y must have the same batch size, got x: 4, y: 5.``
    """
    values = list(sizes.values())
    if any(v != values[0] for v in values[1:]):
        names = " and ".join(sizes)
        got = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"{names} must have the same {what}, got {got}.")
    return values[0]


def check_callable(name: str, fn) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}.")
    return fn
