"""Argument checks for every public function of ``jaxbounds`` (package-private).

This is the one checks layer of the package: no other module defines ``_check_*`` or
``_require_*`` helpers. Values known at trace time (Python numbers, NumPy arrays, concrete
jax arrays) are checked eagerly and raise ``ValueError``/``TypeError`` naming the argument,
the value and what was expected. A traced value cannot be checked under ``jit``: there the
calculators return NaN for an out-of-range value (:func:`nan_unless`), and each offers a
``checkify``-based checked variant that raises instead. :func:`with_checked` builds both
from one definition::

    @with_checked(ranges={"delta": (lambda d: (d > 0) & (d < 1), "in (0, 1)")})
    def occam_bound(risk, n, delta, kl):
        valid = (delta > 0) & (delta < 1)
        return nan_unless(valid, risk + ...)

    checked_occam_bound = occam_bound.checked
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence

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
    with jax.ensure_compile_time_eval():  # a jnp condition on a constant inside a trace
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
    (a ValueError-like error carrying the message) on failure. For a checked call built at
    call time (closing over static values such as ``apply_fn``); to define a public function
    together with its checked variant, use :func:`with_checked`.
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


def _sequences_as_arrays(value):
    """A list or tuple of numbers as an array (NumPy, or jax when it holds tracers)."""
    if not isinstance(value, (list, tuple)):
        return value
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - holds tracers
        return jnp.asarray(value)


def with_checked(conditions: Callable[..., Sequence[tuple[jax.Array, str]]] | None = None, *,
                 ranges: Mapping[str, tuple[Callable, str]] | None = None,
                 checks: Callable[..., None] | None = None,
                 static_argnames: Sequence[str] = ()) -> Callable[[Callable], Callable]:
    """Decorator: the public function and its ``checked_`` variant, from one definition.

    The decorated ``core(...)`` is the computation. It is jit-compiled (``static_argnames``
    static) and returns NaN where a traced argument is out of range (:func:`nan_unless`);
    its parameters are named (no ``*args``/``**kwargs``). The decorator returns ``f``:

    * ``f(...)`` checks concrete arguments eagerly, then runs the jitted core. Each
      ``ranges[name] = (condition, expected)`` goes through :func:`require` (a ValueError
      ``"name must be expected, got ..."``; ``None`` values are skipped), then
      ``checks(**arguments)`` does the rest (shapes, static arguments, relations between
      arguments; it must skip traced values, as :func:`require` does).
    * ``f.checked(...)``: the checked variant. The same, but under ``jit`` each range and
      each ``(valid, message)`` of ``conditions(**arguments)`` is checked through
      ``jax.experimental.checkify``: a failure raises ``checkify.JaxRuntimeError`` (a
      ValueError) with the message instead of returning NaN. It is jitted once per value
      of the static arguments.

    ``conditions`` and ``checks`` receive every argument by name, defaults included.
    ``condition`` functions must work on NumPy and on traced jax arrays (use operators and
    ``jnp``). Lists and tuples of numbers passed for non-static arguments are taken as
    arrays.
    """
    ranges = dict(ranges or {})
    static_argnames = tuple(static_argnames)

    def decorate(core: Callable) -> Callable:
        signature = inspect.signature(core)
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in signature.parameters.values()):
            raise TypeError(f"with_checked: {core.__name__} must not take *args or **kwargs.")
        jitted = jax.jit(core, static_argnames=static_argnames)

        def arguments(args, kwargs) -> dict:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return {name: value if name in static_argnames else _sequences_as_arrays(value)
                    for name, value in bound.arguments.items()}

        def check_eagerly(values):
            for name, (condition, expected) in ranges.items():
                if values.get(name) is not None:
                    require(name, values[name], condition, expected)
            if checks is not None:
                checks(**values)

        @functools.wraps(core)
        def public(*args, **kwargs):
            values = arguments(args, kwargs)
            check_eagerly(values)
            return jitted(**values)

        @functools.cache
        def checked_for(static: tuple):
            def body(dynamic):
                values = {**dynamic, **dict(static)}
                check_eagerly(values)  # static checks; traced values are skipped
                found = [(condition(jnp.asarray(values[name])), f"{name} must be {expected}")
                         for name, (condition, expected) in ranges.items()
                         if values.get(name) is not None]
                found += list(conditions(**values)) if conditions is not None else []
                for valid, message in found:
                    checkify.check(jnp.all(valid), message)
                return core(**values)

            return jax.jit(checkify.checkify(body, errors=checkify.user_checks))

        @functools.wraps(core)
        def checked(*args, **kwargs):
            values = arguments(args, kwargs)
            static = tuple((name, values.pop(name)) for name in static_argnames)
            err, out = checked_for(static)(values)
            err.throw()
            return out

        checked.__name__ = checked.__qualname__ = f"checked_{core.__name__}"
        checked.__doc__ = (
            f"Checked variant of ``{core.__name__}``: raises on out-of-range traced values "
            f"(via ``jax.experimental.checkify``) instead of returning NaN.\n\n"
            f"{core.__doc__ or ''}")
        public.checked = checked
        return public

    return decorate


def in_ranges(ranges: Mapping[str, tuple[Callable, str]], **values):
    """Elementwise AND of ``ranges[name][0](value)`` over ``values`` (the validity mask that
    :func:`nan_unless` needs, from the same ``ranges`` as :func:`with_checked`)."""
    valid = True
    for name, value in values.items():
        valid = valid & ranges[name][0](value)
    return valid


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
                 finite: bool = True, static: bool = False) -> float:
    """``value`` as a Python float in the interval given by ``low``/``high``.

    ``low_open``/``high_open`` exclude the end point. NaN is always refused; infinity unless
    ``finite=False``. Traced values are returned unchanged (check them with ``checkify``),
    unless ``static=True`` (the value fixes the computation): then they raise a TypeError.
    """
    if is_traced(value):
        if static:
            raise TypeError(f"{name} must be a static Python number (not traced under jit), "
                            f"got {value!r}.")
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
                finite: bool = False, nonempty: bool = False):
    """Check an array argument and return it as an array (NumPy/jax arrays pass through).

    Args:
      name: the argument's name, for the message.
      ndim: the required rank, or a tuple of allowed ranks.
      min_ndim: the least rank allowed.
      kind: ``"floating"`` (default), ``"integer"``, ``"numeric"`` or ``None`` (any dtype).
      finite: when True, a concrete array with NaN or infinity raises a ValueError.
      nonempty: when True, an array with a zero-length axis raises a ValueError.
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
    if nonempty and 0 in tuple(x.shape):
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}.")
    dtype = np.dtype(x.dtype) if not hasattr(x.dtype, "name") else x.dtype
    if kind == "floating" and not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {dtype}.")
    if kind == "integer" and not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name} must have an integer dtype, got {dtype}.")
    if kind == "numeric" and not (jnp.issubdtype(dtype, jnp.number)
                                  or jnp.issubdtype(dtype, jnp.bool_)):
        raise TypeError(f"{name} must have a numeric dtype, got {dtype}.")
    if finite:
        check_finite(name, x)
    return x


def check_matrix(name: str, x, *, kind: str | None = "floating", finite: bool = False):
    """A non-empty 2-D array: :func:`check_array` with ``ndim=2, nonempty=True``."""
    return check_array(name, x, ndim=2, kind=kind, finite=finite, nonempty=True)


def check_shape(name: str, x, shape: Sequence[int | None], note: str = ""):
    """``x`` if its shape is ``shape`` (``None`` entries match any size), else a ValueError
    ``"name must have shape (…)<note>, got (…)."``; ``note`` says why (e.g. ``" like x"``)."""
    actual = tuple(np.shape(x))
    if len(actual) != len(shape) or any(
            want is not None and got != want for got, want in zip(actual, shape)):
        shown = "(" + ", ".join("…" if d is None else str(d) for d in shape) + \
            ("," if len(shape) == 1 else "") + ")"
        raise ValueError(f"{name} must have shape {shown}{note}, got {actual}.")
    return x


def check_at_most(name: str, value, bound_name: str, bound) -> None:
    """ValueError unless ``value <= bound`` elementwise (e.g. ``errors <= n``, ``k <= d``);
    skipped when either is traced (use a ``checkify`` condition there)."""
    if is_traced(value) or is_traced(bound):
        return
    v, b = np.broadcast_arrays(np.asarray(value), np.asarray(bound))
    bad = v > b
    if np.any(bad):
        raise ValueError(f"{name} must be <= {bound_name}, got {name} = {v[bad][:5]!r} with "
                         f"{bound_name} = {b[bad][:5]!r}.")


def check_mechanism(mechanism, epsilon, delta) -> None:
    """A privacy mechanism and its budget: ``"laplace"`` (pure ε-DP: ε > 0, ``delta`` None)
    or ``"gaussian"`` ((ε, δ)-DP only: ε and δ in (0, 1), Dwork and Roth 2014, Thm A.1)."""
    check_choice("mechanism", mechanism, ("laplace", "gaussian"))
    if mechanism == "gaussian":
        if delta is None:
            raise ValueError("delta must be given (in (0, 1)) for the Gaussian mechanism, got "
                             "None.")
        require("delta", delta, lambda v: (v > 0) & (v < 1), "in (0, 1)")
        require("epsilon", epsilon, lambda v: (v > 0) & (v < 1),
                "in (0, 1) for the Gaussian mechanism (Dwork and Roth, Thm A.1)")
    else:
        if delta is not None:
            raise ValueError(f"delta must be None for the pure ε-LDP Laplace mechanism, got "
                             f"{delta!r}; use mechanism='gaussian' for (ε, δ)-LDP.")
        require("epsilon", epsilon, lambda v: v > 0, "> 0")


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


# ---------------------------------------------------------------------------------------
# Random keys and lists of arguments (appended by the verify helper).
# ---------------------------------------------------------------------------------------


def check_key(name: str, key):
    """``key`` if it is a jax.random key: a typed key (``jax.random.key``) or a raw
    ``uint32[2]`` key (``jax.random.PRNGKey``); else a TypeError."""
    if isinstance(key, jax.Array) and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    shown = f"dtype {key.dtype} and shape {tuple(key.shape)}" if hasattr(key, "dtype") else (
        f"{type(key).__name__} {key!r}")
    raise TypeError(f"{name} must be a jax.random key (jax.random.key(seed)), got {shown}.")


def check_sequence(name: str, value, *, length: int | None = None, per: str = "",
                   nonempty: bool = False) -> list:
    """``value`` as a list, if it is a list or tuple (not an array or a string).

    ``length``: the required number of entries (``per`` names what each entry is for, e.g.
    ``"layer"``); ``nonempty``: refuse an empty list.
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name} must be a list or tuple, got {type(value).__name__}.")
    if nonempty and not value:
        raise ValueError(f"{name} must be a non-empty list, got an empty one.")
    if length is not None and len(value) != length:
        each = f" one entry per {per}" if per else ""
        raise ValueError(f"{name} must have{each} ({length} entries), got {len(value)}.")
    return list(value)


# ---------------------------------------------------------------------------------------
# Flags (appended by the lipschitz helper).
# ---------------------------------------------------------------------------------------


def check_bool(name: str, value) -> bool:
    """``value`` if it is a Python or NumPy bool, else a TypeError."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}.")
    return bool(value)


# ---------------------------------------------------------------------------------------
# Shapes, powers of two and attention inputs (appended by the attention helper).
# ---------------------------------------------------------------------------------------


def check_exact_shape(name: str, x, want: Sequence[int], axes: str = "") -> None:
    """Raise ValueError unless ``x.shape == want`` (``axes`` names them, e.g. "[seq, d]")."""
    if tuple(x.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {axes + ' = ' if axes else ''}"
                         f"{tuple(want)}, got {tuple(x.shape)}.")


def check_power_of_two(name: str, value) -> int:
    """``value`` if it is a positive int power of two, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value & (value - 1):
        raise ValueError(f"{name} must be a power of two, got {value!r}.")
    return value


def check_multiple(name: str, value, multiple: int, why: str = "") -> int:
    """``value`` if it is a positive int multiple of ``multiple`` (``why``: the reason)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value % multiple:
        raise ValueError(f"{name} must be a positive multiple of {multiple}"
                         f"{' ' + why if why else ''}, got {value!r}.")
    return value


def check_heads(features: int, num_heads, multiple: int) -> int:
    """The head dim ``features // num_heads``: it must split evenly into a multiple of
    ``multiple`` (for RoPE)."""
    check_int("num_heads", num_heads, minimum=1)
    if features % num_heads or (features // num_heads) % multiple:
        raise ValueError(
            f"the feature size {features} must split into num_heads={num_heads} heads whose "
            f"dim is a multiple of {multiple} (for RoPE), got head dim "
            f"{features / num_heads:g}.")
    return features // num_heads


def check_qkv(q, k, v, *, same_seq: str = "") -> None:
    """Attention inputs q ``[batch, n, heads, d]``, k ``[batch, m, heads, d]``, v ``[batch,
    m, heads, d_v]``, floating. ``same_seq``, when given, is the reason n must equal m."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{name} must be [batch, seq, heads, head_dim], got shape "
                             f"{getattr(x, 'shape', type(x).__name__)}.")
        check_array(name, x)
    for axis, what in ((2, "number of heads"), (3, "head_dim"), (0, "batch size")):
        if q.shape[axis] != k.shape[axis]:
            raise ValueError(f"q and k must have the same {what}, got q {tuple(q.shape)} and "
                             f"k {tuple(k.shape)}.")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in batch, "
                         "seq and heads.")
    if same_seq and q.shape[1] != k.shape[1]:
        raise ValueError(f"q and k must have the same sequence length {same_seq}, got "
                         f"{q.shape[1]} and {k.shape[1]}.")


def check_hyper_lengths(n: int, block_size: int, min_seq_len: int, *, causal: bool) -> None:
    """Every part of HyperAttention longer than ``min_seq_len`` (the sequence, and when
    causal each half of the recursion) must split into blocks: its effective block
    ``min(block_size, part)`` is a power of two dividing it."""
    parts = [(n, "sequence length n")]
    while causal and n > min_seq_len:
        if n % 2:
            raise ValueError(
                f"causal HyperAttention halves the sequence until it is <= min_seq_len="
                f"{min_seq_len}, but a part of odd length {n} appeared; use a sequence "
                f"length n = 2^k * (multiple of block_size={block_size}) or raise "
                "min_seq_len.")
        n //= 2
        parts.append((n, "causal recursion part (n halved)"))
    for part, what in parts[1:] if causal else parts:
        block = min(block_size, part)
        if part > min_seq_len and (part % block or block & (block - 1)):
            raise ValueError(
                f"{what} of length {part} must be a multiple of block_size={block_size} (or "
                f"a power of two below it), since it is longer than min_seq_len="
                f"{min_seq_len} and runs HyperAttention; pad the sequence or change "
                "block_size/min_seq_len.")
