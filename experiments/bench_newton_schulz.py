"""Benchmark: the fused Newton–Schulz kernel against XLA Newton–Schulz (float32, bfloat16).

    python -m experiments bench newton_schulz [--size 1024 --size 4096 --size 8192x2048 ...]
        [--steps 5] [--implementation xla|triton|interpret] [--reps N] [--json PATH]
    python experiments/bench_newton_schulz.py [same flags]

``--steps`` quintic steps X ← a·X + X·(b·G + c·G²), G = XᵀX, with Muon's coefficients
(3.4445, −4.7750, 2.0315), through :func:`pallas_kernels.newton_schulz_steps`, on a
σ_max ≤ 1 random matrix of each size (``N`` for N×N, ``MxN`` otherwise). Paths:

* ``xla_f32``: the XLA path in float32 at ``precision=HIGHEST`` (what ``msign`` runs today);
* ``xla_bf16``: the XLA path in bfloat16 at default precision (the usual Muon baseline);
* ``kernel_f32`` / ``kernel_bf16``: the Pallas kernel (default: "triton" on a CUDA GPU;
  without one the kernel paths are skipped unless ``--implementation interpret``, which is
  only for small sizes).

Reported: ms per call (median of ``--reps``), speed-ups kernel_bf16 over xla_bf16 and
kernel_f32 over xla_f32, the relative error of each path against xla_f32, and the FLOP
ceiling of computing only the upper triangle of the two symmetric products,
(4mn² + 2n³)/(3mn² + n³) per step (1.5 for a square matrix). Target (GPU): ≥ 1.25× over
xla_bf16 at 4096². Defaults: 1024² only on CPU; 1024², 4096² and 8192×2048 on a GPU.
Writes ``<out>/bench_newton_schulz/results.json`` and, with ``--json PATH``, the same there.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

if __package__ in (None, ""):  # run as a plain script: make the repository importable
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments._output import format_table  # noqa: E402
from experiments._runner import (  # noqa: E402
    bench,
    bench_parser,
    device,
    on_gpu,
    save_bench,
    write_results,
)
from pallas_kernels import newton_schulz_steps  # noqa: E402

MUON_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
GPU_SIZES = ((1024, 1024), (4096, 4096), (8192, 2048))
CPU_SIZES = ((1024, 1024),)


def parse_size(text: str) -> tuple[int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--size must be N or MxN (positive), got {text!r}")
    return parts


def flop_ceiling(m: int, n: int) -> float:
    """Full FLOPs over upper-triangle FLOPs of one step (Gram over the smaller side)."""
    m, n = max(m, n), min(m, n)
    return (4 * m * n * n + 2 * n**3) / (3 * m * n * n + n**3)


def paths(implementation: str | None, steps: int) -> dict:
    coefficients = (MUON_COEFFICIENTS,) * steps
    hi, lo = jax.lax.Precision.HIGHEST, jax.lax.Precision.DEFAULT
    run = {
        "xla_f32": lambda x: newton_schulz_steps(x, coefficients, precision=hi,
                                                 implementation="xla"),
        "xla_bf16": lambda x: newton_schulz_steps(x.astype(jnp.bfloat16), coefficients,
                                                  precision=lo, implementation="xla"),
    }
    if implementation and implementation != "xla":
        run["kernel_f32"] = lambda x: newton_schulz_steps(x, coefficients,
                                                          implementation=implementation)
        run["kernel_bf16"] = lambda x: newton_schulz_steps(
            x.astype(jnp.bfloat16), coefficients, implementation=implementation)
    return run


def timed(fn, x, reps: int):
    """fn(x) after a compile + warm-up call, and the median seconds of ``reps`` calls."""
    out = jax.block_until_ready(fn(x))
    samples = [time.perf_counter()]
    for _ in range(reps):
        jax.block_until_ready(fn(x))
        samples.append(time.perf_counter())
    return out, float(np.median(np.diff(samples)))


def bench_size(key, m: int, n: int, implementation, steps: int, reps: int) -> dict:
    x = jax.random.normal(key, (m, n), jnp.float32)
    x = x / jnp.linalg.norm(x)  # σ_max ≤ 1
    outs, times = {}, {}
    for name, fn in paths(implementation, steps).items():  # one compile per path
        outs[name], times[name] = timed(jax.jit(fn), x, reps)
    ref = np.asarray(outs["xla_f32"], np.float64)
    errors = {name: float(np.max(np.abs(np.asarray(out, np.float64) - ref)) / np.max(np.abs(ref)))
              for name, out in outs.items()}
    row = dict(size=[m, n], steps=steps, flop_ceiling=flop_ceiling(m, n),
               ms={k: 1e3 * v for k, v in times.items()}, rel_err_vs_xla_f32=errors)
    if "kernel_bf16" in times:
        row["speedup_bf16"] = times["xla_bf16"] / times["kernel_bf16"]
        row["speedup_f32"] = times["xla_f32"] / times["kernel_f32"]
    return row


@bench("newton_schulz", "Fused Newton–Schulz kernel vs XLA Newton–Schulz (f32 HIGHEST, bf16).")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, implementation=None)
    parser.add_argument("--size", type=parse_size, action="append", default=None,
                        help="N or MxN; repeat for several (default: 1024 on CPU, "
                             "1024, 4096, 8192x2048 on a GPU)")
    parser.add_argument("--steps", type=int, default=5, help="quintic steps per call")
    parser.add_argument("--json", default=None, help="also write the results to this path")
    args = parser.parse_args(argv)
    implementation = args.implementation or ("triton" if on_gpu() else "xla")
    sizes = args.size or (GPU_SIZES if on_gpu() else CPU_SIZES)
    reps = args.reps or (20 if on_gpu() else 3)
    key = jax.random.PRNGKey(args.seed)
    results = []
    for i, (m, n) in enumerate(sizes):
        print(f"size {m}x{n}, {args.steps} steps ...", flush=True)
        results.append(bench_size(jax.random.fold_in(key, i), m, n, implementation,
                                  args.steps, reps))

    names = list(results[0]["ms"])
    headers = (["size"] + [f"{k} ms" for k in names]
               + ["xla_bf16/kernel_bf16", "xla_f32/kernel_f32", "FLOP ceiling"]
               + [f"err {k}" for k in names if k != "xla_f32"])
    rows = [["x".join(map(str, r["size"]))] + [r["ms"][k] for k in names]
            + [r.get("speedup_bf16", "-"), r.get("speedup_f32", "-"), r["flop_ceiling"]]
            + [r["rel_err_vs_xla_f32"][k] for k in names if k != "xla_f32"] for r in results]
    print(f"\nNewton–Schulz benchmark on {device()}, kernel implementation="
          f"{implementation!r}, {args.steps} steps, median of {reps}")
    print(format_table(headers, rows))
    print("FLOP ceiling: only G = XᵀX and G² are symmetric (upper triangle computed, "
          "mirrored); X·P is not, so a step saves at most this factor (1.5 when square).")

    targets = {}
    for r in results:
        if "speedup_bf16" in r and tuple(r["size"]) == (4096, 4096) and on_gpu():
            targets["gpu_bf16_speedup_1.25x_4096"] = r["speedup_bf16"] >= 1.25
    payload = {"implementation": implementation, "reps": reps, "steps": args.steps,
               "device": device(), "results": results}
    save_bench(args.out, "bench_newton_schulz", payload, targets)
    if args.json:
        write_results(pathlib.Path(args.json), {**payload, "targets": targets})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
