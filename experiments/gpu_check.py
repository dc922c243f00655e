"""Compile every registered Pallas kernel with the Triton lowering and check it on a GPU.

    python experiments/gpu_check.py [--only FAMILY] [--size small|medium|large ...]

For each kernel in ``pallas_kernels.registry.KERNELS``: random inputs at each size, outputs
and (for differentiable kernels) VJPs compared with the reference, and the forward time.
Prints one row per kernel and size (max relative error, time, OK/FAIL) and writes
``runs/gpu_check/results.json``. On a machine without a CUDA GPU it says so and exits 0
(``--implementation interpret`` runs the same checks in the Pallas interpreter instead).
Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax

import pallas_kernels
from experiments._runner import format_table, write_results
from pallas_kernels import _backend
from pallas_kernels.checking import check_kernel
from pallas_kernels.registry import KERNELS, SIZES


def time_forward(spec, inputs, implementation: str, reps: int = 10) -> float:
    """Median wall time of the jitted forward in milliseconds (after compilation)."""
    fn = jax.jit(lambda *a: spec.run(*a, implementation=implementation))
    jax.block_until_ready(fn(*inputs))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*inputs))
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=pallas_kernels.registry.families(), default=None,
                        help="check one kernel family")
    parser.add_argument("--size", choices=SIZES, action="append", default=None,
                        help="input size (repeatable; default: small and medium)")
    parser.add_argument("--implementation", choices=("triton", "interpret"), default="triton")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs", help="output folder (default: runs)")
    args = parser.parse_args(argv)

    if args.implementation == "triton" and not _backend.default_backend_is_cuda():
        print(f"gpu_check: no CUDA GPU here (jax backend: {jax.default_backend()}); "
              "nothing to compile with the Triton lowering. Exiting 0.")
        return 0

    sizes = args.size or ["small", "medium"]
    specs = [s for s in KERNELS.values() if args.only in (None, s.family)]
    key = jax.random.PRNGKey(args.seed)
    rows, records = [], []
    for spec in specs:
        for size in sizes:
            key, sub = jax.random.split(key)
            try:
                check = check_kernel(spec, sub, size, args.implementation)
                inputs = spec.make_inputs(sub, size)
                ms = time_forward(spec, inputs, args.implementation,
                                  reps=10 if args.implementation == "triton" else 1)
                ref_ms = time_forward(spec, inputs, "xla",
                                      reps=10 if args.implementation == "triton" else 1)
                status = "OK" if check.ok else "FAIL"
                record = dict(name=spec.name, family=spec.family, size=size,
                              out_rel_err=check.out_error, grad_rel_err=check.grad_error,
                              rtol=check.rtol, kernel_ms=ms, xla_ms=ref_ms, status=status)
            except Exception as err:  # a compile failure is a FAIL row, not a crash
                record = dict(name=spec.name, family=spec.family, size=size, status="FAIL",
                              error=f"{type(err).__name__}: {err}"[:500])
            records.append(record)
            rows.append([record["name"], size,
                         record.get("out_rel_err", "-"), record.get("grad_rel_err", "-"),
                         record.get("rtol", "-"), record.get("kernel_ms", "-"),
                         record.get("xla_ms", "-"), record["status"]])
            print(format_table(["kernel", "size", "out err", "grad err", "rtol", "kernel ms",
                                "xla ms", "status"], [rows[-1]]).splitlines()[-1], flush=True)
    headers = ["kernel", "size", "out err", "grad err", "rtol", "kernel ms", "xla ms", "status"]
    print()
    print(format_table(headers, rows))
    for record in records:
        if "error" in record:
            print(f"\n{record['name']} [{record['size']}]: {record['error']}")
    path = write_results(pathlib.Path(args.out) / "gpu_check" / "results.json",
                         {"implementation": args.implementation, "checks": records})
    print(f"\nwrote {path}")
    return 0 if all(r["status"] == "OK" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
