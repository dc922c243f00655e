"""Benchmark: Matrix Nuclear-Norm against the SVD-based matrix entropy it replaces.

    python -m experiments bench nuclear [--n 2048] [--d 1024 --d 4096] [--reps N] [--out runs]

Paths, jitted and timed in one process on the same random float32 hidden states [N, D]
(repetitions interleaved across paths, median reported):

* ``mnn``: :func:`jaxbounds.bounds.nuclear.matrix_nuclear_norm`, O(N·D), no SVD.
* ``entropy_svd``: :func:`jaxbounds.bounds.nuclear.matrix_entropy` (default
  ``method="svd"``: singular values of the normalised [N, D] matrix).
* ``entropy_covariance``: ``method="covariance"``, the official code's path (SVD of the D×D
  covariance).
* ``entropy_gram``: ``method="gram"`` (``eigvalsh`` of the smaller Gram matrix), the fastest
  exact spectrum.

For each entropy path it reports time(MNN)/time(entropy) and the speedup time(entropy)/
time(MNN), and the largest intermediate array of each jaxpr in bytes (LAPACK workspaces are
not visible there). The paper (arXiv 2410.10672, Fig. "time") reports MNN 8–24× faster than
matrix entropy for Cerebras-GPT 111M–6.7B on a GPU (torch). Writes
``runs/bench_nuclear/results.json``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments._jaxpr_memory import largest_intermediate_bytes
from experiments._output import format_table, time_jitted
from experiments._runner import bench, bench_parser, device, on_gpu, positive_int, save_bench
from jaxbounds.bounds.nuclear import matrix_entropy, matrix_nuclear_norm

DEFAULT_N = 2048
DEFAULT_DS = (1024, 4096)
PAPER_SPEEDUP = (8.0, 24.0)  # MNN vs matrix entropy, Cerebras-GPT 111M .. 6.7B


def paths() -> dict:
    return {
        "mnn": matrix_nuclear_norm,
        "entropy_svd": lambda h: matrix_entropy(h, method="svd"),
        "entropy_covariance": lambda h: matrix_entropy(h, method="covariance"),
        "entropy_gram": lambda h: matrix_entropy(h, method="gram"),
    }


def make_hidden(key, n: int, d: int, dtype=jnp.float32):
    """LLM-like hidden states: a shared offset, anisotropic (decaying) feature scales."""
    k_x, k_mu = jax.random.split(key)
    scales = 1.0 / jnp.sqrt(1.0 + jnp.arange(d, dtype=jnp.float32))
    x = jax.random.normal(k_x, (n, d), jnp.float32) * scales
    return (x + jax.random.normal(k_mu, (d,), jnp.float32)).astype(dtype)


def bench_shape(key, n: int, d: int, reps: int, dtype=jnp.float32) -> list[dict]:
    hidden = make_hidden(key, n, d, dtype)
    fns = paths()
    values = {name: float(jax.jit(fn)(hidden)) for name, fn in fns.items()}
    times = time_jitted(fns, (hidden,), reps)
    spec = jax.ShapeDtypeStruct(hidden.shape, hidden.dtype)
    memory = {name: largest_intermediate_bytes(fn, spec) for name, fn in fns.items()}
    results = []
    for name in fns:
        if name == "mnn":
            continue
        results.append(dict(
            n=n, d=d, dtype=jnp.dtype(dtype).name, path=name,
            time_mnn_s=times["mnn"], time_entropy_s=times[name],
            time_ratio_mnn_over_entropy=times["mnn"] / times[name],
            speedup=times[name] / times["mnn"],
            mnn=values["mnn"], entropy=values[name],
            largest_intermediate_mnn=memory["mnn"], largest_intermediate_entropy=memory[name],
        ))
    return results


@bench("nuclear", "Matrix Nuclear-Norm vs the SVD-based matrix entropy it replaces.")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--n", type=positive_int, default=DEFAULT_N,
                        help=f"tokens N (default {DEFAULT_N}; at least 2)")
    parser.add_argument("--d", type=positive_int, action="append", default=None,
                        help="feature dimension D, repeatable (default: 1024 and 4096)")
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error(f"--n must be at least 2, got {args.n}")
    reps = args.reps or (20 if on_gpu() else 5)
    ds = args.d or list(DEFAULT_DS)

    key = jax.random.PRNGKey(args.seed)
    results = []
    for i, d in enumerate(ds):
        print(f"N = {args.n}, D = {d}, float32 ...", flush=True)
        results += bench_shape(jax.random.fold_in(key, i), args.n, d, reps)

    headers = ["N", "D", "entropy path", "MNN ms", "entropy ms", "time MNN/entropy",
               "speedup entropy/MNN", "max interm. MNN B", "max interm. entropy B"]
    rows = [[r["n"], r["d"], r["path"], 1e3 * r["time_mnn_s"], 1e3 * r["time_entropy_s"],
             r["time_ratio_mnn_over_entropy"], r["speedup"], r["largest_intermediate_mnn"],
             r["largest_intermediate_entropy"]] for r in results]
    print(f"\nMatrix Nuclear-Norm vs matrix entropy on {device()}, "
          f"{jax.local_device_count()} device(s), float32, jitted, median of {reps}; "
          f"paper: {PAPER_SPEEDUP[0]:g}-{PAPER_SPEEDUP[1]:g}x faster")
    print(format_table(headers, rows))
    save_bench(args.out, "bench_nuclear",
               {"n": args.n, "d": ds, "dtype": "float32", "reps": reps,
                "paper_speedup_range": list(PAPER_SPEEDUP), "results": results})
    return 0
