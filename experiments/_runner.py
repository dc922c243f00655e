"""The experiments framework: registration, settings, the runner and results.json.

* ``@experiment(name, description)`` registers ``fn(config, settings) -> metrics``; the
  settings class is the annotation of ``settings`` (a :class:`Settings` dataclass).
* ``@bench(name, description)`` registers a benchmark ``main(argv) -> exit code``.
* :func:`run_experiment` runs one and writes ``runs/<name>/results.json`` with one schema:
  ``experiment, config, metrics, paper_vs_ours, environment, seconds``. An experiment puts
  its "paper reports / we measured" rows (:func:`paper_row`) under ``metrics["paper_vs_ours"]``.
* :func:`bench_parser` holds the flags every benchmark shares.

The output helpers (the plot helper, tables, progress bars, timing) are in
:mod:`experiments._output`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time
import typing
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every experiment's settings: the defaults are the CPU configuration."""

    @classmethod
    def full(cls):
        """The paper-sized configuration of ``--full`` (meant for a GPU)."""
        return cls()

    def check(self, *, positive=(), unit=(), among: dict[str, tuple] | None = None) -> None:
        """Raise ValueError naming the field unless each field in ``positive`` is >= 1 (a
        tuple: non-empty, every item), in ``unit`` is in (0, 1) (likewise), and each tuple
        field in ``among`` is non-empty with every item among the given choices."""
        for name, ok, expected in (
                *((n, lambda v: v >= 1, ">= 1") for n in positive),
                *((n, lambda v: 0 < v < 1, "in (0, 1)") for n in unit),
                *((n, lambda v, c=c: v in c, f"among {tuple(c)}")
                  for n, c in (among or {}).items())):
            value = getattr(self, name)
            items = value if isinstance(value, tuple) else (value,)
            if not items or not all(ok(v) for v in items):
                raise ValueError(f"{name} must be {expected} (tuples: non-empty), got {value!r}.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """What every experiment receives from the command line."""

    name: str
    full: bool = False
    out_dir: pathlib.Path = pathlib.Path("runs")
    seed: int = 0

    @property
    def run_dir(self) -> pathlib.Path:
        path = pathlib.Path(self.out_dir) / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    description: str
    fn: Callable
    settings: type | None = None


EXPERIMENTS: dict[str, Entry] = {}
BENCHES: dict[str, Entry] = {}


def experiment(name: str, description: str):
    """Register ``fn(config: RunConfig, settings: SomeSettings) -> metrics dict``."""

    def register(fn):
        settings = typing.get_type_hints(fn).get("settings")
        EXPERIMENTS[name] = Entry(name, description, fn, settings)
        return fn

    return register


def bench(name: str, description: str):
    """Register a benchmark ``main(argv) -> int`` as ``python -m experiments bench <name>``."""

    def register(fn):
        BENCHES[name] = Entry(name, description, fn)
        return fn

    return register


def paper_row(quantity: str, paper: Any, ours: Any) -> dict[str, Any]:
    """One row of ``paper_vs_ours``: what the paper reports beside what we measured."""
    return {"quantity": quantity, "paper": paper, "ours": ours}


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, pathlib.Path):
        return str(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        return to_jsonable(np.asarray(value).tolist())
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    return value


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(device, "device_kind", str(device)),
            "python": platform.python_version(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def write_results(path: pathlib.Path, payload: dict[str, Any]) -> pathlib.Path:
    """Write ``payload`` (+ the environment) as JSON; returns the file path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "environment": environment()}
    path.write_text(json.dumps(to_jsonable(payload), indent=2) + "\n")
    return path


def run_experiment(name: str, *, settings: Settings | None = None, full: bool = False,
                   out_dir: str | pathlib.Path = "runs", seed: int = 0) -> dict[str, Any]:
    """Run a registered experiment and write its ``results.json``; returns that payload."""
    entry = EXPERIMENTS[name]
    if settings is None:
        settings = entry.settings.full() if full else entry.settings()
    config = RunConfig(name=name, full=full, out_dir=pathlib.Path(out_dir), seed=seed)
    started = time.perf_counter()
    metrics = dict(entry.fn(config, settings))
    payload = {"experiment": name,
               "config": {"seed": seed, "full": full, "settings": settings},
               "metrics": metrics,
               "paper_vs_ours": metrics.pop("paper_vs_ours", []),
               "seconds": time.perf_counter() - started}
    path = write_results(config.run_dir / "results.json", payload)
    print(f"wrote {path} ({payload['seconds']:.1f} s)")
    return json.loads(path.read_text())


# --- settings <-> command-line flags -------------------------------------------------------


def add_settings_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One ``--field-name`` flag per scalar or tuple field of the settings dataclass (typed
    from its annotation; nested settings are left to the code)."""
    hints, defaults = typing.get_type_hints(cls), cls()
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is not tuple and len(options) == 1:  # X | None
            kind = options[0]
        flag = "--" + field.name.replace("_", "-")
        default = str(getattr(defaults, field.name)).replace("%", "%%")
        if kind is bool:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction)
        elif typing.get_origin(kind) is tuple:
            parser.add_argument(flag, dest=field.name, nargs="+", type=typing.get_args(kind)[0],
                                help=f"default {default}")
        elif kind in (int, float, str):
            parser.add_argument(flag, dest=field.name, type=kind, help=f"default {default}")


def settings_from_args(cls: type, args: argparse.Namespace):
    """``cls.full()`` or ``cls()``, with the flags that were given."""
    base = cls.full() if args.full else cls()
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items()
             if k in names and v is not None}
    return dataclasses.replace(base, **given)


def on_gpu() -> bool:
    """Whether jax runs on a GPU (the benchmarks' defaults: repetitions, sizes)."""
    return jax.default_backend() == "gpu"


def default_implementation(requested: str | None) -> str:
    """A benchmark's implementation: ``requested``, else "triton" on a GPU, "xla" elsewhere."""
    return requested or ("triton" if on_gpu() else "xla")


def device() -> str:
    """The device kind and jax backend, for the benchmarks' headers."""
    return f"{jax.devices()[0].device_kind} ({jax.default_backend()})"


def positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def bench_parser(doc: str, **implementation) -> argparse.ArgumentParser:
    """The flags every benchmark shares: ``--seed``, ``--reps`` (default: the benchmark's own,
    by device) and ``--out``; ``implementation=DEFAULT`` adds ``--implementation``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reps", type=positive_int, default=None, help="timed repetitions")
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    if implementation:
        parser.add_argument("--implementation", default=implementation["implementation"],
                            choices=("xla", "triton", "interpret"))
    return parser


def save_bench(out, name: str, payload: dict[str, Any], targets: dict[str, Any] | None = None,
               filename: str = "results.json") -> pathlib.Path:
    """Print the targets (met / MISSED, or the figure) and write
    ``<out>/<name>/<filename>``; returns its path."""
    if targets:
        shown = {k: v if not isinstance(v, (bool, float)) else
                 ("met" if v else "MISSED") if isinstance(v, bool) else f"{v:.3g}"
                 for k, v in targets.items()}
        print("\ntargets:", ", ".join(f"{k}={v}" for k, v in shown.items()))
    path = write_results(pathlib.Path(out) / name / filename, {**payload, "targets": targets})
    print(f"wrote {path}")
    return path
