"""Benchmark: factored-norm DoRA and the fused DoRA layer against a DoRA that forms AB.

    python -m experiments bench dora [--shape D_IN,D_OUT,R ...] [--tokens 2048]
        [--implementation xla|triton|interpret] [--reps N] [--dtype bfloat16] [--out DIR]

Paths, measured in one process on the same random inputs:

* ``dense``: PEFT-style DoRA; forms W′ = W₀ + s·AB ∈ [d_in, d_out], its column norms, x·W′.
* ``ours``: :func:`jaxbounds.adapters.dora.dora_linear`: factored norm (cached colsum(W₀²)),
  y = g ⊙ (x·W₀ + s·(xA)·B) through ``pallas_kernels.dora_matmul`` with ``--implementation``
  (default: "triton" on a CUDA GPU, "xla" elsewhere). On a GPU, ``ours_xla`` (the same math
  in plain XLA) is timed too.

For the norm alone, the forward pass, and forward + backward (gradients for x, A, B, m with
the norm detached, as in the paper), it reports the time ratio ours/dense and the largest
intermediate array of each jaxpr in bytes: a hardware-independent memory figure
(XLA:CPU's memory_analysis() hides temporaries). Writes ``runs/bench_dora/results.json``.

Targets: norm intermediate ≤ 4·(d_out·r + r² + d_out) bytes and ≥ 16× below the
dense 4·d_in·d_out at (8192, 8192, 384); forward + backward time ratio ≤ 1.0 on CPU; ≥ 1.5×
faster than dense on a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp

from experiments._jaxpr_memory import largest_intermediate_bytes
from experiments._output import format_table, time_jitted, with_backward
from experiments._runner import (
    bench,
    bench_parser,
    default_implementation,
    device,
    on_gpu,
    save_bench,
)
from jaxbounds.adapters.dora import (
    column_sq_norm,
    dora_column_norm,
    dora_column_norm_dense,
    dora_linear,
    dora_linear_dense,
)
from pallas_kernels import DoRABlockSizes

DEFAULT_SHAPES = ((4096, 4096, 64), (8192, 8192, 384))
SCALE = 2.0


def make_inputs(key, tokens: int, d_in: int, d_out: int, rank: int, dtype=jnp.float32):
    """Random, non-zero DoRA inputs (B ≠ 0, so the adapter is not at its init)."""
    kx, kw, ka, kb, km = jax.random.split(key, 5)
    x = jax.random.normal(kx, (tokens, d_in), jnp.float32).astype(dtype)
    w0 = (jax.random.normal(kw, (d_in, d_out), jnp.float32) / d_in**0.5).astype(dtype)
    a = jax.random.normal(ka, (d_in, rank), jnp.float32) / d_in**0.5
    b = 0.01 * jax.random.normal(kb, (rank, d_out), jnp.float32)
    m = 1.0 + 0.1 * jax.random.uniform(km, (d_out,), jnp.float32)
    return x, w0, a, b, m


def norm_paths():
    return {
        "dense": lambda x, w0, a, b, m, sq: dora_column_norm_dense(w0, a, b, SCALE),
        "ours": lambda x, w0, a, b, m, sq: dora_column_norm(w0, a, b, SCALE, w0_sq_norm=sq),
    }


def layer_paths(implementation: str, blocks=None):
    paths = {
        "dense": lambda x, w0, a, b, m, sq: dora_linear_dense(x, w0, a, b, m, SCALE),
        "ours": lambda x, w0, a, b, m, sq: dora_linear(
            x, w0, a, b, m, SCALE, w0_sq_norm=sq, implementation=implementation,
            block_sizes=blocks),
    }
    if implementation != "xla":
        paths["ours_xla"] = lambda x, w0, a, b, m, sq: dora_linear(
            x, w0, a, b, m, SCALE, w0_sq_norm=sq, implementation="xla")
    return paths


def bench_shape(key, tokens, d_in, d_out, rank, implementation, reps, dtype=jnp.float32,
                blocks=None):
    x, w0, a, b, m = make_inputs(key, tokens, d_in, d_out, rank, dtype)
    sq = jax.jit(column_sq_norm)(w0)
    ct = jax.random.normal(jax.random.fold_in(key, 1), (tokens, d_out), jnp.float32)
    args = (x, w0, a, b, m, sq)
    abstract = [jax.ShapeDtypeStruct(v.shape, v.dtype) for v in (*args, ct)]
    results = []
    cases = (
        ("norm", norm_paths(), args, abstract[:-1]),
        ("forward", layer_paths(implementation, blocks), args, abstract[:-1]),
        ("fwd+bwd", {k: with_backward(f, (0, 2, 3, 4))
                     for k, f in layer_paths(implementation, blocks).items()},
         (*args, ct), abstract),
    )
    for what, fns, call_args, shapes in cases:
        times = time_jitted(fns, call_args, reps)
        memory = {name: largest_intermediate_bytes(fn, *shapes) for name, fn in fns.items()}
        for name in fns:
            if name == "dense":
                continue
            results.append(dict(
                shape=[d_in, d_out, rank], tokens=tokens, dtype=jnp.dtype(dtype).name,
                what=what, path=name,
                time_ours_s=times[name], time_dense_s=times["dense"],
                time_ratio=times[name] / times["dense"],
                largest_intermediate_ours=memory[name],
                largest_intermediate_dense=memory["dense"],
                memory_ratio_dense_over_ours=memory["dense"] / max(memory[name], 1),
                norm_bound_bytes=4 * (d_out * rank + rank * rank + d_out),
            ))
    return results


def parse_shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"--shape must be D_IN,D_OUT,R (positive), got {text!r}")
    return parts


@bench("dora", "DoRA: factored norm and fused layer vs a DoRA that forms W0 + sAB (time, memory).")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, implementation=None)
    parser.add_argument("--shape", type=parse_shape, action="append", default=None)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                        help="dtype of x and W0 (A, B, m stay float32)")
    parser.add_argument("--blocks", default=None,
                        help="JSON file {dtype: DoRABlockSizes fields} (from bench tune_dora)")
    args = parser.parse_args(argv)
    blocks = None
    if args.blocks:
        fields = json.loads(pathlib.Path(args.blocks).read_text()).get(args.dtype)
        blocks = DoRABlockSizes(**fields) if fields else None
    implementation = default_implementation(args.implementation)
    reps = args.reps or (20 if on_gpu() else 3)
    key = jax.random.PRNGKey(args.seed)
    results = []
    for i, (d_in, d_out, rank) in enumerate(args.shape or DEFAULT_SHAPES):
        print(f"shape (d_in, d_out, r) = ({d_in}, {d_out}, {rank}), {args.tokens} tokens ...",
              flush=True)
        results += bench_shape(jax.random.fold_in(key, i), args.tokens, d_in, d_out, rank,
                               implementation, reps, jnp.dtype(args.dtype), blocks)

    headers = ["d_in,d_out,r", "what", "path", "ours ms", "dense ms", "time ours/dense",
               "max interm. ours B", "max interm. dense B", "dense/ours mem"]
    rows = [[",".join(map(str, r["shape"])), r["what"], r["path"], 1e3 * r["time_ours_s"],
             1e3 * r["time_dense_s"], r["time_ratio"], r["largest_intermediate_ours"],
             r["largest_intermediate_dense"], r["memory_ratio_dense_over_ours"]]
            for r in results]
    print(f"\nDoRA benchmark on {device()}, implementation={implementation!r}, "
          f"dtype={args.dtype}, median of {reps}" + (f", blocks={blocks}" if blocks else ""))
    print(format_table(headers, rows))

    targets = {}
    for r in results:
        tag = ",".join(map(str, r["shape"]))
        if r["what"] == "norm":
            targets[f"norm_bound_{tag}"] = r["largest_intermediate_ours"] <= r["norm_bound_bytes"]
            if tuple(r["shape"]) == (8192, 8192, 384):
                targets["norm_16x_at_8192_8192_384"] = r["memory_ratio_dense_over_ours"] >= 16
        if r["what"] == "fwd+bwd" and r["path"] == "ours":
            if on_gpu():
                targets[f"gpu_speedup_1.5x_{tag}"] = r["time_ratio"] <= 1 / 1.5
            else:
                targets[f"cpu_fwd_bwd_ratio_le_1_{tag}"] = r["time_ratio"] <= 1.0
    save_bench(args.out, "bench_dora",
               {"implementation": implementation, "reps": reps, "dtype": args.dtype,
                "blocks": None if blocks is None else dataclasses.asdict(blocks),
                "tokens": args.tokens, "results": results}, targets,
               "results.json" if args.dtype == "float32" else f"results_{args.dtype}.json")
    return 0
