"""Sweep the fused DoRA kernel's block sizes on a GPU and report the fastest per dtype.

    python -m experiments bench tune_dora [--shape T,D_IN,D_OUT,R] [--out runs]

Times the forward of ``pallas_kernels.dora_matmul`` (Triton lowering) for each block
configuration, next to the XLA reference in the same process, and writes
``runs/tune_dora/best.json`` ({dtype: DoRABlockSizes fields}), which
``python -m experiments bench dora --blocks`` reads. Configurations that fail to compile (e.g. too
much shared memory) are reported and skipped. Needs a CUDA GPU.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import jax
import jax.numpy as jnp

from experiments._output import format_table, time_jitted
from experiments._runner import bench, bench_parser, device, save_bench
from pallas_kernels import DoRABlockSizes, cuda_available, dora_matmul, dora_matmul_reference

GRID = dict(block_m=(64, 128), block_n=(128, 256), block_k=(32, 64),
            warps_stages=((4, 3), (8, 3), (8, 4)))


def configs(rank: int):
    block_r = max(16, min(64, 1 << (rank - 1).bit_length()))
    for bm, bn, bk, (warps, stages) in itertools.product(*GRID.values()):
        yield DoRABlockSizes(block_m=bm, block_n=bn, block_k=bk, block_r=min(block_r, 64),
                             num_warps=warps, num_stages=stages)


@bench("tune_dora", "Sweep the fused DoRA kernel's block sizes on a GPU; the fastest per dtype.")
def main(argv=None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--shape", default="2048,8192,8192,384")
    parser.add_argument("--dtype", action="append", choices=("float32", "bfloat16"))
    args = parser.parse_args(argv)
    args.reps = args.reps or 10
    if not cuda_available():
        print("tune_dora: no CUDA GPU here; nothing to tune. Exiting 0.")
        return 0
    tokens, d_in, d_out, rank = (int(v) for v in args.shape.split(","))
    best, rows = {}, []
    for dtype_name in args.dtype or ["float32", "bfloat16"]:
        dtype = jnp.dtype(dtype_name)
        ks = jax.random.split(jax.random.PRNGKey(0), 5)
        x = jax.random.normal(ks[0], (tokens, d_in)).astype(dtype)
        w0 = (jax.random.normal(ks[1], (d_in, d_out)) / d_in**0.5).astype(dtype)
        xa = jax.random.normal(ks[2], (tokens, rank)).astype(dtype)
        b = (0.01 * jax.random.normal(ks[3], (rank, d_out))).astype(dtype)
        g = 1.0 + 0.1 * jax.random.normal(ks[4], (d_out,))
        args_ = (x, w0, xa, b, g)
        xla_s = time_jitted({"xla": lambda *a: dora_matmul_reference(*a)}, args_, args.reps)["xla"]
        timed = []
        for blocks in [DoRABlockSizes.default(tokens, d_in, d_out, rank, dtype), *configs(rank)]:
            fn = lambda *a, blocks=blocks: dora_matmul(*a, block_sizes=blocks,
                                                       implementation="triton")
            try:
                seconds = time_jitted({"k": fn}, args_, args.reps)["k"]
            except Exception as err:  # noqa: BLE001 - report and skip a config that fails
                print(f"{dtype_name} {blocks}: {type(err).__name__}", flush=True)
                continue
            timed.append((seconds, blocks))
        timed.sort(key=lambda t: t[0])
        best[dtype_name] = dataclasses.asdict(timed[0][1])
        for seconds, blocks in timed[:5]:
            rows.append([dtype_name, blocks.block_m, blocks.block_n, blocks.block_k,
                         blocks.block_r, blocks.num_warps, blocks.num_stages, 1e3 * seconds,
                         1e3 * xla_s, seconds / xla_s])
    print(f"\nfused DoRA forward, shape T,d_in,d_out,r = {args.shape}, {device()}; "
          "top 5 per dtype")
    print(format_table(["dtype", "bm", "bn", "bk", "br", "warps", "stages", "kernel ms",
                        "xla ms", "kernel/xla"], rows))
    path = save_bench(args.out, "tune_dora", {"shape": args.shape, "top": rows, "best": best})
    (path.parent / "best.json").write_text(json.dumps(best, indent=2) + "\n")
    print(f"wrote {path.parent / 'best.json'}")
    return 0
