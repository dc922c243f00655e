"""Benchmark: time per projection of the spectral constraints, and their share of a Muon step.

    python -m experiments bench constraints [--size N ...] [--reps R] [--skip-jnp-svd]
        [--layers L] [--tokens T] [--out DIR]

Methods (jaxbounds.lipschitz.constraints), each on one float32 N×N matrix whose singular
values are spread linearly over 0.05·w_max … 4·w_max (random singular vectors):

* ``svd_jnp``: exact clip U·min(Σ, w_max)·Vᵀ through ``jnp.linalg.svd`` (``svd_clip``);
* ``svd_gesdd``: the same through scipy's LAPACK ``gesdd`` on the host (NumPy, not jitted;
  the transfer to and from the device is included);
* ``hard_cap``: :func:`spectral_hard_cap`, two Newton–Schulz matrix signs, 8 steps,
  ``precision=HIGHEST``; on a GPU also ``hard_cap_default_prec`` (TF32 matrix products);
* ``hard_cap_paper``: the paper's four fixed quintic steps (``paper_coefficients=True``);
* ``soft_cap``: :func:`spectral_soft_cap` with α from :func:`soft_cap_alpha`
  (lr 0.1, Muon bound 1.21);
* ``normalize`` / ``hammer``: power iteration, 16 steps (cold start from a key).

For the caps it reports accuracy against the known spectrum (float64 SVD of the output):
max σ/w_max − 1 (target ≤ 1e-3) and max |σ − min(σ₀, w_max)|/w_max (target ≤ 1e-2).

Then the share of a Muon training step spent in the projection: a stack of ``--layers``
transformer-sized blocks (d = 768: four d×d attention matrices, d×4d and 4d×d MLP matrices, used
as a residual MLP on ``--tokens`` tokens); one step = loss gradient + ``optax.contrib.muon``
update + apply, with and without ``lipschitz_projection`` (hard cap / soft cap / normalize;
``hard_cap_ungrouped`` projects each matrix separately instead of stacking same-shape ones).

Writes ``<out>/bench_constraints/results.json``. Targets: on a GPU,
the hard cap at 4096² ≥ 5× faster than ``jnp.linalg.svd`` at the accuracy above. The CPU
figures are reported, not targets.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import scipy.linalg

from experiments._output import format_table, time_jitted
from experiments._runner import bench, bench_parser, device, on_gpu, save_bench
from jaxbounds.lipschitz import constraints as C
from jaxbounds.lipschitz.optim import lipschitz_projection

W_MAX = 1.0
LR = 0.1
MUON_BOUND = 1.21


def known_matrix(key, n: int):
    """float32 n×n matrix with singular values linspace(0.05, 4)·W_MAX, and those values."""
    k1, k2 = jax.random.split(key)
    u, _ = jnp.linalg.qr(jax.random.normal(k1, (n, n), jnp.float32))
    v, _ = jnp.linalg.qr(jax.random.normal(k2, (n, n), jnp.float32))
    s = jnp.linspace(0.05, 4.0, n, dtype=jnp.float32) * W_MAX
    w = jax.jit(lambda u, s, v: (u * s) @ v.T)(u, s, v)
    return jax.block_until_ready(w), np.sort(np.asarray(s, np.float64))[::-1]


def gesdd_clip(w: np.ndarray, w_max: float) -> np.ndarray:
    u, s, vt = scipy.linalg.svd(w, full_matrices=False, lapack_driver="gesdd",
                                check_finite=False)
    return (u * np.minimum(s, w_max)) @ vt


def fast_methods(gpu: bool):
    key = jax.random.key(1)
    alpha = float(C.soft_cap_alpha(W_MAX, 0.0, LR, MUON_BOUND))
    methods = {
        "hard_cap": lambda w: C.spectral_hard_cap(w, W_MAX),
        "hard_cap_paper": lambda w: C.spectral_hard_cap(w, W_MAX, paper_coefficients=True),
        "soft_cap": lambda w: C.spectral_soft_cap(w, alpha),
        "normalize": lambda w: C.spectral_normalize(w, W_MAX, key=key, num_iters=16),
        "hammer": lambda w: C.spectral_hammer(w, W_MAX, key=key, num_iters=16),
    }
    if gpu:
        methods["hard_cap_default_prec"] = lambda w: C.spectral_hard_cap(
            w, W_MAX, precision=jax.lax.Precision.DEFAULT)
    return methods


def accuracy(out, s0) -> dict[str, float]:
    """Against the known spectrum. The output's singular values come from a float64 gesdd on
    a CPU, and from a float32 ``jnp.linalg.svd`` on a GPU (error ~1e-6, far below the
    tolerances, and it keeps the 4096² runs short)."""
    if on_gpu():
        s = np.asarray(jnp.linalg.svd(jnp.asarray(out, jnp.float32), compute_uv=False),
                       np.float64)
    else:
        s = scipy.linalg.svd(np.asarray(out, np.float64), compute_uv=False,
                             lapack_driver="gesdd")
    return {"overshoot": float(s.max() / W_MAX - 1),
            "max_sv_error": float(np.abs(s - np.minimum(s0, W_MAX)).max() / W_MAX)}


def bench_size(n: int, reps: int, skip_jnp_svd: bool, gpu: bool, seed: int):
    w, s0 = known_matrix(jax.random.key(seed + n), n)
    rows = []
    methods = fast_methods(gpu)
    times = time_jitted(methods, (w,), reps)
    for name, fn in methods.items():
        row = {"size": n, "method": name, "time_s": times[name]}
        if name.startswith("hard_cap"):  # the soft cap is no cap on σ > k: not scored
            row.update(accuracy(jax.jit(fn)(w), s0))
        rows.append(row)
    svd_reps = reps if (gpu or n <= 1024) else 1
    if not skip_jnp_svd:
        t = time_jitted({"svd_jnp": lambda w: C.svd_clip(w, W_MAX)}, (w,), svd_reps)
        out = jax.jit(lambda w: C.svd_clip(w, W_MAX))(w)
        rows.append({"size": n, "method": "svd_jnp", "time_s": t["svd_jnp"],
                     **accuracy(out, s0)})
    samples = []
    for _ in range(min(svd_reps, 3) + 1):
        start = time.perf_counter()
        out = jax.block_until_ready(jnp.asarray(gesdd_clip(np.asarray(w), W_MAX)))
        samples.append(time.perf_counter() - start)
    timed = sorted(samples[1:])
    rows.append({"size": n, "method": "svd_gesdd", "time_s": timed[len(timed) // 2],
                 **accuracy(out, s0)})
    return rows


# ----------------------------------------------------------------------------- Muon step share

def transformer_params(key, layers: int, d: int = 768):
    """Flax-layout kernels [in, out] of ``layers`` GPT-2-small-sized blocks."""
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "o": (d, d),
              "up": (d, 4 * d), "down": (4 * d, d)}
    params = {}
    for layer in range(layers):
        for name, shape in shapes.items():
            key, sub = jax.random.split(key)
            params[f"block{layer}"] = params.get(f"block{layer}", {})
            params[f"block{layer}"][name] = {
                "kernel": jax.random.normal(sub, shape, jnp.float32) / np.sqrt(shape[0])}
    return params


def loss_fn(params, x):
    h = x
    for block in params.values():
        for a, b in (("q", "k"), ("v", "o"), ("up", "down")):
            h = h + 0.5 * jax.nn.gelu(h @ block[a]["kernel"]) @ block[b]["kernel"]
    return jnp.mean(h**2)


def muon_step_share(layers: int, tokens: int, reps: int, seed: int):
    key = jax.random.key(seed)
    params = C_project_init(transformer_params(key, layers))
    x = jax.random.normal(jax.random.fold_in(key, 1), (tokens, 768), jnp.float32)
    variants = {
        "none": None,
        "hard_cap": lipschitz_projection("spectral_hard_cap", W_MAX, norm="rms"),
        "hard_cap_ungrouped": lipschitz_projection("spectral_hard_cap", W_MAX, norm="rms",
                                                   group_same_shape=False),
        "soft_cap": lipschitz_projection("spectral_soft_cap", W_MAX, norm="rms",
                                         learning_rate=0.02),
        "normalize": lipschitz_projection("spectral_normalize", W_MAX, norm="rms",
                                          key=jax.random.key(2)),
    }
    steps, states = {}, {}
    for name, proj in variants.items():
        tx = optax.contrib.muon(0.02, beta=0.9)
        if proj is not None:
            tx = optax.chain(tx, proj)
        states[name] = tx.init(params)

        def step(p, s, x, tx=tx):
            g = jax.grad(loss_fn)(p, x)
            u, s = tx.update(g, s, p)
            return optax.apply_updates(p, u), s

        steps[name] = step
    timings = {}
    for name, step in steps.items():
        timings[name] = time_jitted({name: step}, (params, states[name], x), reps)[name]
    rows = []
    for name, t in timings.items():
        rows.append({"projection": name, "step_s": t,
                     "projection_share": 0.0 if name == "none" else (t - timings["none"]) / t})
    return rows


def C_project_init(params):
    from jaxbounds.lipschitz.optim import project_params

    return project_params(params, "spectral_hard_cap", W_MAX, norm="rms")


@bench("constraints", "Spectral constraints: time and accuracy per projection against SVD "
       "clipping, and their share of a Muon step.")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--size", type=int, action="append", default=None,
                        help="matrix size N (repeatable); default 768 and 2048")
    parser.add_argument("--skip-jnp-svd", action="store_true",
                        help="skip jnp.linalg.svd (about 34 s per call at 2048² on 2 CPU cores)")
    parser.add_argument("--layers", type=int, default=None,
                        help="blocks in the Muon-step model (default: 1 on CPU, 4 on GPU)")
    parser.add_argument("--tokens", type=int, default=None,
                        help="tokens per Muon step (default: 256 on CPU, 8192 on GPU)")
    args = parser.parse_args(argv)
    gpu = on_gpu()
    reps = args.reps or (10 if gpu else 3)
    sizes = args.size or [768, 2048]
    if min(sizes) < 2:
        parser.error(f"--size must be >= 2, got {min(sizes)}")

    rows = []
    for n in sizes:
        print(f"size {n} ...", flush=True)
        new = bench_size(n, reps, args.skip_jnp_svd, gpu, args.seed)
        for r in new:
            print("  ", {k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()},
                  flush=True)
        rows += new
    layers = args.layers or (4 if gpu else 1)
    tokens = args.tokens or (8192 if gpu else 256)
    print(f"Muon step share ({layers} blocks, {tokens} tokens) ...", flush=True)
    share = muon_step_share(layers, tokens, reps, args.seed)

    baseline = {(r["size"]): r["time_s"] for r in rows if r["method"] == "svd_jnp"}
    for r in rows:
        r["speedup_vs_svd_jnp"] = (baseline[r["size"]] / r["time_s"]
                                   if r["size"] in baseline else None)
    headers = ["N", "method", "ms", "× vs jnp svd", "σmax/w_max − 1", "max σ err / w_max"]
    table = [[r["size"], r["method"], 1e3 * r["time_s"],
              "-" if r["speedup_vs_svd_jnp"] is None else r["speedup_vs_svd_jnp"],
              r.get("overshoot", "-"), r.get("max_sv_error", "-")] for r in rows]
    print(f"\nprojection time on {device()}, median of {reps}")
    print(format_table(headers, table))
    print(f"\nMuon step with projection ({layers} blocks of d=768, {tokens} tokens)")
    print(format_table(["projection", "step ms", "share of step"],
                       [[r["projection"], 1e3 * r["step_s"], r["projection_share"]]
                        for r in share]))

    targets = {}
    for r in rows:
        if r["method"] == "hard_cap":
            targets[f"hard_cap_accuracy_{r['size']}"] = (
                r["overshoot"] <= 1e-3 and r["max_sv_error"] <= 1e-2)
            if gpu and r["size"] == 4096 and r["speedup_vs_svd_jnp"] is not None:
                targets["gpu_hard_cap_5x_vs_jnp_svd_4096"] = r["speedup_vs_svd_jnp"] >= 5
    save_bench(args.out, "bench_constraints",
               {"w_max": W_MAX, "reps": reps, "device": jax.devices()[0].device_kind,
                "projection": rows, "muon_step": {"layers": layers, "tokens": tokens,
                                                  "rows": share}}, targets)
    return 0
