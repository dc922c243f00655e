"""Compile every registered Pallas kernel with the Triton lowering and check it on a GPU.

    python -m experiments gpu-check [--only FAMILY] [--size small|medium|large ...] [--record]

For each kernel in ``pallas_kernels.registry.KERNELS``: random inputs at each size, outputs
and (for differentiable kernels) VJPs compared with the reference, and the forward time of
the kernel and of the XLA path. Prints one row per kernel and size (max relative error,
time, OK/FAIL) and writes ``<out>/gpu_check/results.json``; with ``--record`` the rows go
into the kernel registry's verified records
(:func:`pallas_kernels.registry.record_verified`). On a machine without a CUDA GPU it says
so and exits 0 (``--implementation interpret`` runs the same checks in the Pallas
interpreter instead). Exits 1 if any check fails.
"""

from __future__ import annotations

import jax

import pallas_kernels
from experiments._output import format_table, time_jitted
from experiments._runner import bench, bench_parser, device, save_bench
from pallas_kernels.checking import check_kernel
from pallas_kernels.registry import KERNELS, SIZES

HEADERS = ["kernel", "size", "out err", "grad err", "rtol", "kernel ms", "xla ms", "status"]


def check_one(spec, key, size: str, implementation: str, reps: int) -> dict:
    """One row: the check against the reference and the forward times (ms)."""
    try:
        check = check_kernel(spec, key, size, implementation)
        times = time_jitted({impl: lambda *a, impl=impl: spec.run(*a, implementation=impl)
                             for impl in (implementation, "xla")},
                            spec.make_inputs(key, size), reps)
        return dict(name=spec.name, family=spec.family, size=size,
                    out_rel_err=check.out_error, grad_rel_err=check.grad_error,
                    rtol=check.rtol, kernel_ms=1e3 * times[implementation],
                    xla_ms=1e3 * times["xla"], status="OK" if check.ok else "FAIL")
    except Exception as err:  # a compile failure is a FAIL row, not a crash
        return dict(name=spec.name, family=spec.family, size=size, status="FAIL",
                    error=f"{type(err).__name__}: {err}"[:500])


@bench("gpu_check", "Compile and check every Pallas kernel with the Triton lowering on a GPU "
       "(python -m experiments gpu-check).")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--only", choices=pallas_kernels.registry.families(), default=None,
                        help="check one kernel family")
    parser.add_argument("--size", choices=SIZES, action="append", default=None,
                        help="input size (repeatable; default: small and medium)")
    parser.add_argument("--implementation", choices=("triton", "interpret"), default="triton")
    parser.add_argument("--record", action="store_true",
                        help="write the rows into the registry's verified records")
    args = parser.parse_args(argv)
    if args.implementation == "triton" and not pallas_kernels.cuda_available():
        print(f"gpu_check: no CUDA GPU here ({device()}); nothing to compile with the Triton "
              "lowering. Exiting 0.")
        return 0

    reps = args.reps or (10 if args.implementation == "triton" else 1)
    key = jax.random.PRNGKey(args.seed)
    records = []
    for spec in (s for s in KERNELS.values() if args.only in (None, s.family)):
        for size in args.size or ["small", "medium"]:
            key, sub = jax.random.split(key)
            records.append(check_one(spec, sub, size, args.implementation, reps))
            print(format_table(HEADERS, [row(records[-1])]).splitlines()[-1], flush=True)
    print(f"\n{format_table(HEADERS, [row(r) for r in records])}")
    for record in records:
        if "error" in record:
            print(f"\n{record['name']} [{record['size']}]: {record['error']}")
    save_bench(args.out, "gpu_check", {"implementation": args.implementation,
                                       "checks": records})
    if args.record:
        recorded = pallas_kernels.registry.record_verified(
            records, pallas_kernels.device_kind(), jax.__version__)
        print(f"recorded {len(recorded)} verified-kernel records for "
              f"{pallas_kernels.device_kind()}")
    return 0 if all(r["status"] == "OK" for r in records) else 1


def row(record: dict) -> list:
    return [record.get(h, "-") for h in ("name", "size", "out_rel_err", "grad_rel_err", "rtol",
                                         "kernel_ms", "xla_ms", "status")]
