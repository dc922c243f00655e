"""Benchmark: IBP and CROWN time per batch against a plain forward pass.

    python -m experiments bench ibp [--reps N] [--batch B] [--only NAME ...] [--out DIR]

Models (random weights, float32, inputs in [0, 1], ε = 0.1):

* ``mlp``: 64-256-256-10 ReLU MLP (digits-sized);
* ``mlp_large``: 784-1024-1024-10 ReLU MLP (MNIST-sized; IBP only);
* ``cnn``: the digits CNN of the ``certified_training`` experiment (conv3x3(8), conv3x3/2(16),
  dense(64), 10).

Paths, each jitted and timed in one process with interleaved repetitions
(:func:`experiments._output.time_jitted`):

* ``forward``: the network on the batch;
* ``ibp``: :func:`jaxbounds.verify.interval_bounds` with outward rounding (default);
* ``ibp_no_rounding``: the same with ``outward=False`` (what the training loss uses);
* ``crown_ibp``: :func:`jaxbounds.verify.crown_bounds` with IBP intermediate bounds and one
  backward pass from the logits, per example (``vmap``);
* ``crown``: full CROWN (a backward pass per ReLU layer), per example (``vmap``).

Reports the time ratio to ``forward``. Target: ``ibp`` ≤ 4× a forward pass.
Writes ``<out>/bench_ibp/results.json``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments._output import format_table, time_jitted
from experiments._runner import bench, bench_parser, save_bench
from jaxbounds.verify import crown_bounds, interval_bounds

EPS = 0.1


def _mlp(key, sizes):
    keys = jax.random.split(key, len(sizes) - 1)
    params = [(jax.random.normal(k, (i, o)) * (2.0 / i) ** 0.5, jnp.zeros(o))
              for k, i, o in zip(keys, sizes[:-1], sizes[1:], strict=True)]

    def fn(x):
        for j, (w, b) in enumerate(params):
            x = x @ w + b
            if j < len(params) - 1:
                x = jax.nn.relu(x)
        return x

    return fn


def _cnn(key):
    from experiments.certified_training import CNN, _logits_batch

    model = CNN((8, 16), 64)
    params = model.init(key)
    logits = _logits_batch(model)
    return lambda x: logits(params, x)


def models(key):
    k1, k2, k3 = jax.random.split(key, 3)
    return {
        "mlp": (_mlp(k1, [64, 256, 256, 10]), (64,), True),
        "mlp_large": (_mlp(k2, [784, 1024, 1024, 10]), (784,), False),
        "cnn": (_cnn(k3), (8, 8, 1), True),
    }


def paths(fn, with_crown: bool):
    def box(x):
        return jnp.clip(x - EPS, 0, 1), jnp.clip(x + EPS, 0, 1)

    out = {
        "forward": lambda x: fn(x),
        "ibp": lambda x: interval_bounds(fn, *box(x)),
        "ibp_no_rounding": lambda x: interval_bounds(fn, *box(x), outward=False),
    }
    if with_crown:
        single = lambda v: fn(v[None])[0]  # noqa: E731
        out["crown_ibp"] = jax.vmap(
            lambda v: crown_bounds(single, *box(v), intermediate="ibp"))
        out["crown"] = jax.vmap(lambda v: crown_bounds(single, *box(v)))
    return out


@bench("ibp", "IBP and CROWN time per batch against a plain forward pass.")
def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--only", nargs="*", default=None, help="model names to run")
    args = parser.parse_args(argv)
    key = jax.random.key(args.seed)
    rows, table = [], {}
    for name, (fn, shape, with_crown) in models(key).items():
        if args.only and name not in args.only:
            continue
        key, kx = jax.random.split(key)
        x = jax.random.uniform(kx, (args.batch, *shape))
        times = time_jitted(paths(fn, with_crown), (x,), args.reps or 20)
        base = times["forward"]
        table[name] = {"batch": args.batch, "seconds": times,
                       "ratio_to_forward": {k: v / base for k, v in times.items()}}
        for path, seconds in times.items():
            rows.append([name, path, seconds * 1e3, seconds / base])
    print(format_table(["model", "path", "ms / batch", "× forward"], rows))
    save_bench(args.out, "bench_ibp", {"eps": EPS, "target": "ibp <= 4x forward",
                                       "results": table},
               {f"ibp_le_4x_forward_{k}": v["ratio_to_forward"]["ibp"] <= 4.0
                for k, v in table.items()})
    return 0
