"""Benchmark: causal NaLa attention (linear) against exact softmax attention (quadratic).

    python -m experiments bench linear_attention [--seq 1024 4096 16384 65536] [--heads 1]
        [--batch 1] [--head-dim 64] [--dtype float32|bfloat16] [--reps 3]
        [--implementation xla|triton] [--out DIR]

Paths, measured in one process on the same random inputs (layout [batch, seq, heads, 64]):

* ``nala_xla``: :func:`jaxbounds.attention.nalaformer.nala_attention` (causal, 1-D RoPE) with
  ``implementation="xla"``: the chunked scan (chunk 64), linear in time and memory;
* ``softmax``: ``jax.nn.dot_product_attention(is_causal=True)`` (XLA's exact attention);
* with ``--implementation triton`` (CUDA GPU): ``nala_kernel``, the Pallas kernel of
  ``pallas_kernels.linear_attention``, and ``kernel`` (the kernel alone on precomputed
  features), whose achieved FLOP/s and bytes/s are set against the card's ceilings.

For the forward and forward + backward (gradients of q, k, v for a random cotangent) it
reports the time, the ratio NaLa/softmax, NaLa's growth time(16k)/time(4k), tokens/s, and the
largest intermediate array of each jaxpr in bytes (hardware-independent memory). A softmax
whose largest intermediate exceeds ``--max-bytes`` is not run (its bytes are still reported).

CPU targets: time_NaLa(16k)/time_NaLa(4k) ≤ 5; NaLa faster than softmax from 4k.
Writes ``<out>/bench_linear_attention/results.json``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments._jaxpr_memory import largest_intermediate_bytes
from experiments._output import format_table, time_jitted, with_backward
from experiments._runner import bench, bench_parser, device, on_gpu, save_bench
from jaxbounds.attention.nalaformer import nala_attention, nala_features
from jaxbounds.attention.rope import rope_1d
from pallas_kernels import cuda_available
from pallas_kernels.linear_attention import LinearAttentionBlockSizes, causal_linear_attention_sums

DEFAULT_SEQ = (1024, 4096, 16384, 65536)
# Dense peak throughput (FLOP/s) by operand type and HBM bandwidth (bytes/s), from the
# vendors' datasheets (SXM parts): bf16 tensor core, TF32 tensor core, FP32 non-tensor.
CEILINGS = {
    "H200": {"bfloat16": 989e12, "tf32": 495e12, "float32": 67e12, "hbm": 4.8e12},
    "H100": {"bfloat16": 989e12, "tf32": 495e12, "float32": 67e12, "hbm": 3.35e12},
}


def make_inputs(key, batch, seq, heads, head_dim, dtype):
    kq, kk, kv, kc = jax.random.split(key, 4)
    shape = (batch, seq, heads, head_dim)
    make = lambda k: jax.random.normal(k, shape, jnp.float32).astype(dtype)
    return make(kq), make(kk), make(kv), make(kc)


def attention_paths(seq, head_dim, implementation):
    rope = rope_1d(seq, head_dim)
    paths = {
        "nala_xla": lambda q, k, v: nala_attention(q, k, v, causal=True, rope=rope,
                                                   implementation="xla"),
        "softmax": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True),
    }
    if on_gpu():
        paths["softmax_cudnn"] = lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation="cudnn")
    if implementation != "xla":
        paths["nala_kernel"] = lambda q, k, v: nala_attention(q, k, v, causal=True, rope=rope,
                                                              implementation=implementation)
    return paths


def forward_only(fn):
    return lambda q, k, v, ct: fn(q, k, v)


def kernel_costs(batch, seq, heads, features, value_dim, chunk, itemsize):
    """(FLOPs, bytes) the chunked kernels execute and must move: forward, backward."""
    c, f, dv = chunk, features, value_dim
    tokens = batch * heads * seq
    # per token: intra-chunk qn·knᵀ, qd·kdᵀ (2·C·F each), a·v (2·C·dv); qn·S and knᵀ·v (2·F·dv)
    fwd_flops = tokens * (2 * c * (2 * f + dv) + 4 * f * dv)
    # dq kernel: dnum·vᵀ, p·kn, wd·kd, dnum·Sᵀ, knᵀ·v; dkv kernel: qn·knᵀ, dnum·vᵀ, aᵀ·dnum,
    # pᵀ·qn, wdᵀ·qd, kn·R, v·Rᵀ, qnᵀ·dnum
    bwd_flops = tokens * (2 * c * (2 * f + dv) + 4 * f * dv
                          + 2 * c * (3 * f + 2 * dv) + 6 * f * dv)
    feat, val = tokens * f * itemsize, tokens * dv * itemsize
    state = batch * heads * (f * dv + f) * 4
    fwd_bytes = 4 * feat + val + tokens * (dv + 1) * 4 + 2 * state
    bwd_bytes = (2 * feat + val + tokens * (dv + 1) * 4 + 2 * feat  # dq kernel
                 + 3 * feat + val + tokens * (dv + 1) * 4 + 2 * feat + val + 2 * state)
    return (fwd_flops, fwd_bytes), (bwd_flops, bwd_bytes)


def bench_seq(key, seq, args):
    dtype = jnp.dtype(args.dtype)
    q, k, v, ct = make_inputs(key, args.batch, seq, args.heads, args.head_dim, dtype)
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (q, k, v, ct)]
    rows = []
    for what, wrap in (("forward", forward_only),
                       ("fwd+bwd", lambda fn: with_backward(fn, (0, 1, 2)))):
        fns = {name: wrap(fn) for name, fn in
               attention_paths(seq, args.head_dim, args.implementation).items()}
        memory = {name: largest_intermediate_bytes(fn, *shapes) for name, fn in fns.items()}
        runnable = {n: f for n, f in fns.items() if memory[n] <= args.max_bytes}
        # The linear paths are timed apart from the (much slower) softmax, so that a multi-
        # second softmax call between their repetitions does not perturb them; more reps.
        times = {}
        for group in ({n: f for n, f in runnable.items() if n != "softmax"},
                      {n: f for n, f in runnable.items() if n == "softmax"}):
            if group:
                reps = args.reps if "softmax" in group else max(args.reps, 5)
                times.update(time_jitted(group, (q, k, v, ct), reps))
        for name in fns:
            t = times.get(name)
            rows.append(dict(seq=seq, what=what, path=name, time_s=t,
                             tokens_per_s=None if t is None else args.batch * seq / t,
                             largest_intermediate_bytes=memory[name],
                             skipped=None if t is not None else "largest intermediate > "
                             f"--max-bytes={args.max_bytes}"))
    if args.implementation != "xla":
        rows += bench_kernel(q, k, v, seq, args)
    return rows


def bench_kernel(q, k, v, seq, args):
    """The Pallas kernel alone on precomputed features: FLOP/s and bytes/s vs the ceilings."""
    phi_q, phi_k = nala_features(q, k)
    feats = [x.astype(q.dtype) for x in (phi_q, phi_k, phi_q, phi_k)]
    f, dv = feats[0].shape[-1], v.shape[-1]
    blocks = LinearAttentionBlockSizes.default(seq, f, dv)
    run = lambda qn, kn, qd, kd, v: causal_linear_attention_sums(
        qn, kn, qd, kd, v, implementation=args.implementation)[:2]

    def fwd_bwd(qn, kn, qd, kd, v):
        out, pullback = jax.vjp(run, qn, kn, qd, kd, v)
        return pullback(jax.tree.map(jnp.ones_like, out))

    times = time_jitted({"forward": run, "fwd+bwd": fwd_bwd}, (*feats, v), args.reps)
    (ff, fb), (bf, bb) = kernel_costs(args.batch, seq, args.heads, f, dv, blocks.chunk,
                                      jnp.dtype(q.dtype).itemsize)
    ceil = device_ceilings()
    peak_key = "bfloat16" if jnp.dtype(q.dtype).itemsize == 2 else "tf32"
    rows = []
    for what, flops, nbytes in (("forward", ff, fb), ("fwd+bwd", ff + bf, fb + bb)):
        t = times[what]
        row = dict(seq=seq, what=what, path="kernel", time_s=t,
                   tokens_per_s=args.batch * seq / t, flops=flops, bytes=nbytes,
                   flop_per_s=flops / t, bytes_per_s=nbytes / t)
        if ceil:
            row["flop_fraction"] = flops / t / ceil[peak_key]
            row["bandwidth_fraction"] = nbytes / t / ceil["hbm"]
            row["ceiling"] = f"{peak_key} {ceil[peak_key]:.3g} FLOP/s, HBM {ceil['hbm']:.3g} B/s"
        rows.append(row)
    return rows


def device_ceilings():
    kind = getattr(jax.devices()[0], "device_kind", "")
    for name, ceil in CEILINGS.items():
        if name in kind:
            return ceil
    return None


def summarize(rows, seqs):
    """Ratios NaLa/softmax per length, and NaLa's time growth 16k/4k."""
    get = lambda s, w, p: next((r["time_s"] for r in rows
                                if (r["seq"], r["what"], r["path"]) == (s, w, p)), None)
    summary = {}
    for what in ("forward", "fwd+bwd"):
        for path in ("nala_xla", "nala_kernel", "kernel"):
            t4, t16 = get(4096, what, path), get(16384, what, path)
            if t4 and t16:
                summary[f"{path}_{what}_time16k_over_4k"] = t16 / t4
        for seq in seqs:
            nala, soft = get(seq, what, "nala_xla"), get(seq, what, "softmax")
            if nala and soft:
                summary[f"nala_over_softmax_{what}_{seq}"] = nala / soft
    return summary


@bench("linear_attention", "Causal NaLa attention (linear) vs exact softmax attention: time "
       "and memory by sequence length; the kernel's FLOP/s and bytes/s on a GPU.")
def main(argv=None) -> int:
    parser = bench_parser(__doc__, implementation="xla")
    parser.add_argument("--seq", type=int, nargs="+", default=list(DEFAULT_SEQ))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--max-bytes", type=float, default=2.0 * 2**30,
                        help="skip a path whose largest intermediate exceeds this (bytes)")
    args = parser.parse_args(argv)
    args.reps = args.reps or 3
    if args.implementation == "triton" and not cuda_available():
        print(f"--implementation triton needs a CUDA GPU; this is {device()}.")
        return 2

    rows = []
    key = jax.random.PRNGKey(args.seed)
    for seq in args.seq:
        key, sub = jax.random.split(key)
        rows += bench_seq(sub, seq, args)
        print(f"seq {seq} done", flush=True)
    summary = summarize(rows, args.seq)
    soft = {(r["seq"], r["what"]): r["time_s"] for r in rows if r["path"] == "softmax"}
    table = []
    for r in rows:
        t = r["time_s"]
        s = soft.get((r["seq"], r["what"]))
        table.append([r["seq"], r["what"], r["path"],
                      "-" if t is None else f"{1e3 * t:.2f}",
                      "-" if t is None or not s or r["path"] == "softmax" else f"{t / s:.3f}",
                      "-" if t is None else f"{r['tokens_per_s']:.3g}",
                      r.get("largest_intermediate_bytes", "-"),
                      f"{r['flop_per_s']:.3g}" if "flop_per_s" in r else "-",
                      f"{r['bytes_per_s']:.3g}" if "bytes_per_s" in r else "-",
                      f"{r['flop_fraction']:.1%}/{r['bandwidth_fraction']:.1%}"
                      if "flop_fraction" in r else "-"])
    print(format_table(["seq", "what", "path", "ms", "/softmax", "tokens/s", "largest bytes",
                        "FLOP/s", "B/s", "of peak FLOP/BW"], table))
    for name, value in summary.items():
        print(f"{name}: {value:.3f}")
    checks = {}
    for what in ("forward", "fwd+bwd"):
        growth = summary.get(f"nala_xla_{what}_time16k_over_4k")
        if growth is not None:
            checks[f"linear_growth_{what}"] = growth <= 5.0
        for seq in args.seq:
            ratio = summary.get(f"nala_over_softmax_{what}_{seq}")
            if seq >= 4096 and ratio is not None:
                checks[f"faster_than_softmax_{what}_{seq}"] = ratio < 1.0
    save_bench(args.out, "bench_linear_attention",
               {"config": vars(args), "rows": rows, "summary": summary,
                "ceilings": device_ceilings()}, checks)
    return 0

