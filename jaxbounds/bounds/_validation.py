"""Argument checks shared by the bound calculators (DESIGN.md, "Bad input").

Values known at trace time (Python numbers, NumPy arrays, concrete jax arrays) are checked
eagerly and raise ``ValueError`` naming the argument, the value and what was expected. A
traced value cannot be checked under ``jit``: there the calculators return NaN for an
out-of-range value, and each offers a ``checkify``-based checked variant that raises
instead. Use:

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
