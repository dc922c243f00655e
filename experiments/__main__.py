"""Command line of the experiments.

    python -m experiments list
    python -m experiments <name> [--full] [--out DIR] [--seed N] [--<setting> VALUE ...]
    python -m experiments bench <name> [flags of that benchmark]
    python -m experiments gpu-check [--only FAMILY] [--size ...] [--record]
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import experiments
from experiments._runner import (
    BENCHES,
    EXPERIMENTS,
    add_settings_flags,
    run_experiment,
    settings_from_args,
)


def discover(*candidates: str) -> None:
    """Import the first of the candidate modules that exists (an experiment ``x`` lives in
    ``experiments/x.py``, a benchmark in ``bench_x.py`` or ``x.py``) or, with none, every
    module of the package: their decorators register them."""
    names = {m.name for m in pkgutil.iter_modules(experiments.__path__)
             if not m.name.startswith("_")}
    for name in [c for c in candidates if c in names][:1] or sorted(names):
        importlib.import_module(f"experiments.{name}")


def print_list(stream=None) -> None:
    discover()
    stream = stream or sys.stdout
    for title, table in (("experiments", EXPERIMENTS), ("benchmarks (bench <name>)", BENCHES)):
        print(f"{title}:", file=stream)
        width = max(map(len, table), default=0)
        for name, entry in sorted(table.items()):
            print(f"  {name.ljust(width)}  {entry.description}", file=stream)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["gpu-check"]:
        argv = ["bench", "gpu_check", *argv[1:]]
    if argv[:1] == ["bench"]:
        name = argv[1] if len(argv) > 1 else ""
        discover(f"bench_{name}", name)
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; the benchmarks are:", file=sys.stderr)
            print_list(sys.stderr)
            return 2
        return BENCHES[name].fn(argv[2:])
    if not argv or argv[0] in ("list", "-h", "--help"):
        print(__doc__ if argv[:1] != ["list"] else "", end="")
        print_list()
        return 0
    discover(argv[0])
    if argv[0] not in EXPERIMENTS:
        print(f"unknown experiment {argv[0]!r}; the experiments are:", file=sys.stderr)
        print_list(sys.stderr)
        return 2
    entry = EXPERIMENTS[argv[0]]
    parser = argparse.ArgumentParser(prog=f"python -m experiments {entry.name}",
                                     description=entry.description)
    parser.add_argument("--full", action="store_true", help="paper-sized run (meant for a GPU)")
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed (default: 0)")
    add_settings_flags(parser, entry.settings)
    args = parser.parse_args(argv[1:])
    run_experiment(entry.name, settings=settings_from_args(entry.settings, args),
                   full=args.full, out_dir=args.out, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
