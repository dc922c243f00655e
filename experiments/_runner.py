"""Shared plumbing of the experiments: run config, results.json, plots, progress bars."""

from __future__ import annotations

import dataclasses
import json
import pathlib
import platform
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every experiment receives from the command line."""

    name: str
    full: bool = False
    out_dir: pathlib.Path = pathlib.Path("runs")
    seed: int = 0

    @property
    def run_dir(self) -> pathlib.Path:
        path = self.out_dir / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, pathlib.Path):
        return str(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        return _to_jsonable(np.asarray(value).tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "jax": jax.__version__,
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "python": platform.python_version(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def write_results(path: pathlib.Path, payload: dict[str, Any]) -> pathlib.Path:
    """Write ``payload`` (+ the environment) as JSON; returns the file path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "environment": environment()}
    path.write_text(json.dumps(_to_jsonable(payload), indent=2) + "\n")
    return path


def progress(iterable, **kwargs):
    """tqdm progress bar (from the ``experiments`` extra)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width table for the terminal."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    text = [[cell(v) for v in row] for row in rows]
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
