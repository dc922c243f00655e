"""Benchmark: HyperAttention against exact attention, time and error, one process.

    python -m experiments bench hyperattention [--n 4096 --n 8192 ...] [--reps N]
        [--implementation xla|triton|interpret] [--out DIR] [--heads H] [--batch B]

CPU (default, ``implementation="xla"``): at n = 4k, 8k, 16k, 32k (``--n 65536`` adds 64k),
head dim 64, causal and not, forward and forward + backward, it times
:func:`jaxbounds.attention.hyper.hyper_attention` (b = m = 256, r = 7, min_seq_len = 4096)
against **exact** attention and reports the time ratio exact/hyper, the relative Frobenius
error of the output ‖o − o*‖/‖o*‖ and the relative lse error ‖lse − lse*‖/‖lse*‖.

The exact baseline is memory-frugal: exact softmax attention computed over chunks of 1,024
queries (``jax.lax.map``, each chunk under ``jax.checkpoint`` so the backward recomputes
the chunk's probabilities instead of storing n² of them). The dense
:func:`~jaxbounds.attention.softmax.softmax_attention` would need n² floats (4 GiB per head
at 32k); at n ≤ 8k it is timed too, to show the chunked baseline is not a straw man.

GPU (``--implementation triton``): causal, bf16, at 32k and 131k, HyperAttention with the
Pallas kernels against ``jax.nn.dot_product_attention`` (implementation="cudnn" where it
runs, else "xla"); the paper reports 5× over FlashAttention at 131k.

Targets on CPU: non-causal at 32k at least 5× faster than exact (forward), and
time(32k)/time(8k) ≤ 6 for HyperAttention (16 for a quadratic method).
Writes ``<out>/bench_hyperattention/results.json``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from experiments._output import format_table, time_jitted, with_backward
from experiments._runner import bench, bench_parser, default_implementation, device, save_bench
from jaxbounds.attention.hyper import hyper_attention
from jaxbounds.attention.softmax import softmax_attention

HYPER = dict(block_size=256, sample_size=256, num_projections=7, min_seq_len=4096)
CHUNK = 1024


def chunked_exact_attention(q, k, v, *, causal: bool, chunk: int = CHUNK):
    """Exact softmax attention (out, lse) over query chunks: O(chunk·n) live memory."""
    batch, n, heads, d = q.shape
    chunk = min(chunk, n)
    if n % chunk:
        raise ValueError(f"n={n} must be a multiple of chunk={chunk}.")
    qc = q.reshape(batch, n // chunk, chunk, heads, d).swapaxes(0, 1)
    offsets = jnp.arange(n // chunk) * chunk

    @jax.checkpoint
    def one(args):
        q_chunk, offset = args
        mask = None
        if causal:
            rows = offset + jnp.arange(chunk)
            mask = (jnp.arange(n)[None, :] <= rows[:, None])[None, None]
        return softmax_attention(q_chunk, k, v, return_lse=True, mask=mask)

    out, lse = jax.lax.map(one, (qc, offsets))
    return (out.swapaxes(0, 1).reshape(batch, n, heads, -1),
            lse.swapaxes(0, 1).reshape(batch, n, heads))


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def error_at(key, n, causal, batch, heads, implementation, logit_std):
    """Output and lse errors of HyperAttention against exact attention on Gaussian q, k
    scaled so that the logits c·q·k have standard deviation ``logit_std`` (1 = nearly
    uniform attention, larger = more peaked), v standard normal."""
    kq, kk, kv, kh = jax.random.split(jax.random.fold_in(key, 7 * n + int(10 * logit_std)), 4)
    shape = (batch, n, heads, 64)
    q, k, v = (jax.random.normal(x, shape, jnp.float32) for x in (kq, kk, kv))
    q, k = q * logit_std ** 0.5, k * logit_std ** 0.5
    out_h, lse_h = jax.jit(lambda q, k, v: hyper_attention(
        q, k, v, key=kh, causal=causal, return_lse=True, implementation=implementation,
        **HYPER))(q, k, v)
    out_e, lse_e = jax.jit(lambda q, k, v: chunked_exact_attention(q, k, v, causal=causal))(
        q, k, v)
    return {"logit_std": logit_std, "out_rel_error": relative(out_h, out_e),
            "lse_rel_error": relative(lse_h, lse_e),
            "lse_max_abs_error": float(jnp.max(jnp.abs(lse_h - lse_e)))}


def bench_cpu(key, n, causal, reps, batch, heads, implementation, dense_up_to=8192,
              logit_stds=(1.0, 4.0)):
    kq, kk, kv, kc, kh = jax.random.split(jax.random.fold_in(key, n), 5)
    shape = (batch, n, heads, 64)
    q, k, v, ct = (jax.random.normal(x, shape, jnp.float32) for x in (kq, kk, kv, kc))
    hyper = lambda q, k, v: hyper_attention(q, k, v, key=kh, causal=causal,
                                            implementation=implementation, **HYPER)
    exact = lambda q, k, v: chunked_exact_attention(q, k, v, causal=causal)[0]
    fns = {"hyper": hyper, "exact": exact}
    if n <= dense_up_to:
        fns["dense"] = lambda q, k, v: softmax_attention(q, k, v, causal=causal)
    errors = [error_at(key, n, causal, batch, heads, implementation, s) for s in logit_stds]
    rows = []
    for what, table, args in (("forward", fns, (q, k, v)),
                              ("fwd+bwd", {n: with_backward(f, (0, 1, 2)) for n, f in fns.items()},
                               (q, k, v, ct))):
        times = time_jitted(table, args, reps)
        rows.append(dict(n=n, causal=causal, what=what, time_hyper_s=times["hyper"],
                         time_exact_s=times["exact"], time_dense_s=times.get("dense"),
                         speedup=times["exact"] / times["hyper"],
                         out_rel_error=errors[0]["out_rel_error"],
                         lse_rel_error=errors[0]["lse_rel_error"], errors=errors))
    return rows


def bench_gpu(key, n, reps, batch, heads, implementation):
    """Causal bf16: hyper (Pallas kernels) vs jax.nn.dot_product_attention."""
    kq, kk, kv, kh = jax.random.split(jax.random.fold_in(key, n), 4)
    shape = (batch, n, heads, 64)
    q, k, v = (jax.random.normal(x, shape, jnp.float32).astype(jnp.bfloat16)
               for x in (kq, kk, kv))
    fns = {"hyper": lambda q, k, v: hyper_attention(q, k, v, key=kh, causal=True,
                                                    implementation=implementation, **HYPER)}
    baseline = None
    for impl in ("cudnn", "xla"):
        try:
            fn = lambda q, k, v, impl=impl: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation=impl)
            jax.block_until_ready(jax.jit(fn)(q, k, v))
            fns[f"sdpa_{impl}"] = fn
            baseline = baseline or f"sdpa_{impl}"
            break
        except Exception as err:  # noqa: BLE001 - report and fall back
            print(f"dot_product_attention(implementation={impl!r}) failed: {err!r:.200}")
    times = time_jitted(fns, (q, k, v), reps)
    out_h = jax.jit(fns["hyper"])(q, k, v).astype(jnp.float32)
    out_e = jax.jit(fns[baseline])(q, k, v).astype(jnp.float32)
    return [dict(n=n, causal=True, what="forward", dtype="bfloat16", baseline=baseline,
                 time_hyper_s=times["hyper"], time_exact_s=times[baseline],
                 speedup=times[baseline] / times["hyper"],
                 out_rel_error=relative(out_h, out_e))]


@bench("hyperattention", "HyperAttention vs exact attention: time and error by n (CPU: "
       "chunked exact baseline; GPU: Pallas kernels vs cuDNN, bf16).")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, implementation=None)
    parser.add_argument("--n", type=int, action="append", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=None,
                        help="default 1 on CPU, 16 on GPU")
    parser.add_argument("--causal", choices=("both", "yes", "no"), default="both")
    args = parser.parse_args(argv)
    implementation = default_implementation(args.implementation)
    gpu_mode = implementation == "triton"
    key = jax.random.PRNGKey(args.seed)
    results = []
    if gpu_mode:
        ns = args.n or [32768, 131072]
        heads = args.heads or 16
        reps = args.reps or 10
        for n in ns:
            print(f"n={n} causal (GPU) ...", flush=True)
            results += bench_gpu(key, n, reps, args.batch, heads, implementation)
    else:
        ns = args.n or [4096, 8192, 16384, 32768]
        heads = args.heads or 1
        reps = args.reps or 3
        causals = {"both": (False, True), "yes": (True,), "no": (False,)}[args.causal]
        for n in ns:
            for causal in causals:
                print(f"n={n} causal={causal} ...", flush=True)
                results += bench_cpu(key, n, causal, reps, args.batch, heads, implementation)

    headers = ["n", "causal", "what", "hyper ms", "exact ms", "exact/hyper", "out rel err",
               "lse rel err"]
    rows = [[r["n"], r["causal"], r["what"], 1e3 * r["time_hyper_s"], 1e3 * r["time_exact_s"],
             r["speedup"], r["out_rel_error"], r.get("lse_rel_error", float("nan"))]
            for r in results]
    error_rows = [[r["n"], r["causal"], e["logit_std"], e["out_rel_error"], e["lse_rel_error"],
                   e["lse_max_abs_error"]]
                  for r in results if r["what"] == "forward" for e in r.get("errors", [])]
    print(f"\nHyperAttention benchmark on {device()}, implementation={implementation!r}, "
          f"batch={args.batch}, heads={heads}, head_dim=64, {HYPER}, median of {reps}")
    print(format_table(headers, rows))
    if error_rows:
        print("\nerror against exact by logit standard deviation (q, k scaled):")
        print(format_table(["n", "causal", "logit std", "out rel err", "lse rel err",
                            "lse max abs err"], error_rows))

    targets = {}
    by = {(r["n"], r["causal"], r["what"]): r for r in results}
    if not gpu_mode:
        if (32768, False, "forward") in by:
            targets["noncausal_32k_5x_faster"] = by[(32768, False, "forward")]["speedup"] >= 5
        for causal in (False, True):
            a, b = by.get((32768, causal, "forward")), by.get((8192, causal, "forward"))
            if a and b:
                scaling = a["time_hyper_s"] / b["time_hyper_s"]
                targets[f"time32k_over_8k_le_6_causal={causal}"] = scaling <= 6
                targets[f"time32k_over_8k_causal={causal}"] = scaling
    else:
        if (131072, True, "forward") in by:
            targets["gpu_speedup_131k"] = by[(131072, True, "forward")]["speedup"]
    save_bench(args.out, "bench_hyperattention",
               {"implementation": implementation, "reps": reps, "batch": args.batch,
                "heads": heads, "head_dim": 64, "hyper": HYPER,
                "exact_baseline": f"chunked exact softmax, {CHUNK} queries per chunk, "
                                  "jax.checkpoint per chunk" if not gpu_mode else
                                  "jax.nn.dot_product_attention",
                "results": results}, targets)
    return 0

