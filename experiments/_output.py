"""Output helpers of the experiments: the one plot helper, tables, progress bars, timing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def figure(path, nrows: int = 1, ncols: int = 1, *, figsize=(6.5, 4.5), dpi: int = 120,
           **subplots_kwargs):
    """``with figure(path, ...) as (fig, axes):`` draw; then tight layout, save and close."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots_kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=dpi)
    finally:
        plt.close(fig)


def progress(iterable, **kwargs):
    """tqdm progress bar (from the ``experiments`` extra)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table for the terminal."""
    text = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in text)) if text else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))
    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, text)])


def time_jitted(fns: dict[str, Callable], args: tuple, reps: int) -> dict[str, float]:
    """Median seconds per call of each jitted function, after a compile + warm-up call;
    repetitions are interleaved across the functions so drift hits them alike."""
    jitted = {name: jax.jit(fn) for name, fn in fns.items()}
    for fn in jitted.values():
        jax.block_until_ready(fn(*args))
    samples: dict[str, list[float]] = {name: [] for name in jitted}
    for _ in range(reps):
        for name, fn in jitted.items():
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - start)
    return {name: sorted(s)[len(s) // 2] for name, s in samples.items()}


def with_backward(fn: Callable, argnums: tuple[int, ...]) -> Callable:
    """Forward + backward of ``fn``: ``(*args, ct) ->`` the gradients (``argnums``) of
    ⟨fn(*args), ct⟩ in float32, for a cotangent ``ct`` passed last."""

    def fwd_bwd(*args):
        *args, ct = args
        loss = lambda *a: jnp.vdot(fn(*a).astype(jnp.float32), ct.astype(jnp.float32))
        return jax.grad(loss, argnums=argnums)(*args)

    return fwd_bwd
