"""Argument checks for every public function of ``pallas_kernels`` (package-private).

The one checks layer of this package (which never imports ``jaxbounds``). Concrete values
raise ``ValueError``/``TypeError`` naming the argument, what came and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp


def is_power_of_two(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1 and not (
        value & (value - 1))


def check_choice(name: str, value, choices: Sequence) -> str:
    if not isinstance(value, str) or value not in tuple(choices):
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_array(name: str, x, ndim: int, *, kind: str = "floating", layout: str = ""):
    """An array of rank ``ndim`` (``layout`` describes its axes) and the dtype ``kind``
    (``"floating"`` or ``"integer"``)."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
    if x.ndim != ndim:
        want = f"be {layout}" if layout else f"have rank {ndim}"
        raise ValueError(f"{name} must {want}, got shape {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, getattr(jnp, kind)):
        raise TypeError(f"{name} must have a{'n' if kind[0] == 'i' else ''} {kind} dtype, "
                        f"got {x.dtype}.")
    return x


def check_shape(name: str, x, want: tuple, context: str = "") -> None:
    if tuple(x.shape) != tuple(want):
        raise ValueError(f"{name} must have shape {tuple(want)}{context}, got "
                         f"{tuple(x.shape)}.")


def check_tile(name: str, value) -> int:
    """A block size of a kernel: a power of two >= 16 (Triton's dot)."""
    if not is_power_of_two(value) or value < 16:
        raise ValueError(f"{name} must be a power of two >= 16 (Triton's dot), got {value!r}.")
    return value


def check_divides(name: str, value: int, what: str, total: int) -> None:
    if total % value:
        raise ValueError(f"{name}={value} must divide {what}={total}.")


def check_positive_int(name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


# --- per-family input checks ---------------------------------------------------------------


def check_dora_inputs(x, w0, xa, b, g) -> None:
    for name, arr, ndim in (("x", x, 2), ("w0", w0, 2), ("xa", xa, 2), ("b", b, 2), ("g", g, 1)):
        check_array(name, arr, ndim)
    tokens, d_in = x.shape
    d_out, rank = w0.shape[1], b.shape[0]
    context = (f" (from x {tuple(x.shape)}, w0 {tuple(w0.shape)}, b {tuple(b.shape)})")
    for name, arr, want in (("w0", w0, (d_in, d_out)), ("xa", xa, (tokens, rank)),
                            ("b", b, (rank, d_out)), ("g", g, (d_out,))):
        check_shape(name, arr, want, context)


def check_linear_attention_inputs(qn, kn, qd, kd, v, s0, z0) -> None:
    for name, x in (("qn", qn), ("kn", kn), ("qd", qd), ("kd", kd), ("v", v)):
        check_array(name, x, 4, layout="[batch, seq, heads, features]")
    for name, x in (("kn", kn), ("qd", qd), ("kd", kd)):
        if x.shape != qn.shape:
            raise ValueError(f"{name} must have the shape of qn {tuple(qn.shape)}, got "
                             f"{tuple(x.shape)}.")
    if v.shape[:3] != qn.shape[:3]:
        raise ValueError(f"v must agree with qn {tuple(qn.shape)} in batch, seq and heads, "
                         f"got {tuple(v.shape)}.")
    if (s0 is None) != (z0 is None):
        raise ValueError("the initial state needs both S0 and z0, or neither.")
    if s0 is not None:
        b, _, h, f = qn.shape
        check_shape("s0", s0, (b, h, f, v.shape[-1]), " [batch, heads, ...]")
        check_shape("z0", z0, (b, h, f), " [batch, heads, ...]")


def check_block_size(block_size, n: int) -> None:
    if not is_power_of_two(block_size):
        raise ValueError(f"block_size must be a power of two (a positive int), got "
                         f"{block_size!r}.")
    if n % block_size:
        raise ValueError(f"sequence length n={n} must be a multiple of "
                         f"block_size={block_size}.")


def check_block_inputs(q, k, v, block_size) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        check_array(name, x, 4)
    if q.shape != k.shape:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must have the same "
                         "shape [batch, heads, n, d] (sorted blocks are aligned).")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in batch, "
                         "heads and n.")
    check_block_size(block_size, q.shape[2])


def check_sampled_inputs(q, ks, vs, sample_block, block_size) -> None:
    for name, x in (("q", q), ("ks", ks), ("vs", vs)):
        check_array(name, x, 4)
    check_array("sample_block", sample_block, 3, kind="integer")
    if ks.shape[:2] != q.shape[:2] or ks.shape[3] != q.shape[3]:
        raise ValueError(f"ks {tuple(ks.shape)} must match q {tuple(q.shape)} in batch, "
                         "heads and head_dim.")
    if vs.shape[:3] != ks.shape[:3] or tuple(sample_block.shape) != tuple(ks.shape[:3]):
        raise ValueError(f"vs {tuple(vs.shape)} and sample_block {tuple(sample_block.shape)} "
                         f"must match ks {tuple(ks.shape)} in batch, heads and m.")
    check_block_size(block_size, q.shape[2])


def check_matrix(name: str, x):
    """A floating array of rank >= 2 ([..., m, n])."""
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
    if x.ndim < 2:
        raise ValueError(f"{name} must have rank >= 2 ([..., m, n]), got shape "
                         f"{tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
    return x


def check_coefficients(coefficients) -> tuple[tuple[float, float, float], ...]:
    """A non-empty sequence of (a, b, c) Python numbers (the polynomial of each step)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if (not isinstance(coefficients, Sequence) or not coefficients or not all(
            isinstance(t, Sequence) and len(t) == 3 and all(map(number, t))
            for t in coefficients)):
        raise ValueError("coefficients must be a non-empty sequence of (a, b, c) triples of "
                         f"Python numbers, got {coefficients!r}.")
    return tuple(tuple(float(v) for v in t) for t in coefficients)
