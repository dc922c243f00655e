"""DoRA on Shakespeare: pretrain a char model, adapt it to a held-out play, measure the norm.

``python -m experiments dora [--full] [--seed N] [--out DIR]``

1. Pretrain a small causal char transformer (:mod:`experiments.char_model`) with AdamW on
   every bundled play but the held-out one (the last, by default).
2. Convert its block projections to DoRA (:func:`to_dora_params`, r = 8, α = 16) and train
   only the adapter (:func:`freeze_base`) on the first part of the held-out play, applying
   the *unmodified* model under :func:`dora_interceptor`.
3. Report the held-out validation loss before and after, check that every frozen leaf
   (kernels, biases, cached ``kernel_sq_norm``, embeddings, layer norms, LM head) is
   bit-identical after training and that every adapter leaf moved.
4. Print the norm-memory table: the largest intermediate of the factored column norm
   (``dora_column_norm`` with the cached ``colsum(W₀⊙W₀)``) against the dense reference
   (``dora_column_norm_dense``, which forms W₀ + sAB), for the model's layer shapes and the
   "Scaling DoRA" benchmark shapes, beside the bound 4·(d_out·r + r² + d_out) bytes.

Writes ``results.json`` and ``losses.png`` under ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import char_model
from experiments._jaxpr_memory import largest_intermediate_bytes
from experiments._output import figure, format_table
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.adapters.dora import (
    adapter_labels,
    dora_column_norm,
    dora_column_norm_dense,
    dora_interceptor,
    freeze_base,
    lora_scale,
    to_dora_params,
)
from jaxbounds.adapters.dora.optim import ADAPTER

# "Scaling DoRA" (arXiv 2603.22276) benchmark shapes: (d_in, d_out, r).
BENCHMARK_SHAPES = ((4096, 4096, 64), (8192, 8192, 384))


@dataclasses.dataclass(frozen=True)
class DoRASettings(Settings):
    """Everything the DoRA experiment can vary. The defaults run in minutes on a laptop CPU."""

    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    context: int = 64
    batch_size: int = 32
    pretrain_steps: int = 400
    pretrain_lr: float = 3e-3
    adapt_steps: int = 200
    adapt_lr: float = 3e-3
    rank: int = 8
    alpha: float = 16.0
    held_out_play: int = -1  # index into the corpus's plays
    val_fraction: float = 0.1  # of the held-out play, for its validation loss
    eval_batches: int = 8
    eval_every: int = 25  # adaptation steps between held-out evaluations
    include: str = char_model.BLOCK_DENSE_PATTERN

    @classmethod
    def full(cls) -> DoRASettings:
        """The bigger configuration of ``--full`` (meant for a GPU)."""
        return cls(d_model=256, num_layers=4, num_heads=8, context=128, batch_size=64,
                   pretrain_steps=5000, pretrain_lr=1e-3, adapt_steps=1000, adapt_lr=2e-3,
                   eval_batches=32, eval_every=100)


# --- data ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DoRAData:
    """Token streams: pretraining (all plays but one), held-out train and validation."""

    vocab: char_model.CharVocab
    held_out_title: str
    pretrain_titles: tuple[str, ...]
    pretrain_tokens: np.ndarray
    held_out_train: np.ndarray
    held_out_val: np.ndarray


def prepare_data(settings: DoRASettings) -> DoRAData:
    """Split the bundled corpus into pretraining plays and the held-out play."""
    text = char_model.load_corpus()
    plays = char_model.split_plays(text)
    vocab = char_model.CharVocab.from_text(text)
    held_out = plays[settings.held_out_play]
    pretrain = [p for p in plays if p is not held_out]
    held_train, held_val = char_model.split_tokens(vocab.encode(held_out.text),
                                                   settings.val_fraction)
    return DoRAData(
        vocab=vocab,
        held_out_title=held_out.title,
        pretrain_titles=tuple(p.title for p in pretrain),
        pretrain_tokens=vocab.encode("".join(p.text for p in pretrain)),
        held_out_train=held_train,
        held_out_val=held_val,
    )


# --- training -----------------------------------------------------------------------------


def make_loss_fn(model: char_model.CharTransformer, dora_alpha: float | None = None):
    """loss(params, inputs, targets); with ``dora_alpha`` the model runs under
    :func:`dora_interceptor` (its Dense layers that hold ``lora_a`` become DoRA layers)."""
    if dora_alpha is None:
        return char_model.lm_loss(model)

    def loss_fn(params, inputs, targets):
        with dora_interceptor(alpha=dora_alpha):
            return char_model.cross_entropy(model.apply(params, inputs), targets)

    return loss_fn


# --- the frozen-base and adapter checks ---------------------------------------------------


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", k)) for k in path)


def _bit_identical(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return bool(jnp.array_equal(a, b)) and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def compare_leaves(before, after) -> dict[str, list[str]]:
    """Paths of the frozen leaves that changed and of the adapter leaves that did not."""
    labels = adapter_labels(before)
    frozen_changed, adapters_unchanged = [], []
    flat = jax.tree_util.tree_flatten_with_path(before)[0]
    after_leaves = jax.tree_util.tree_leaves(after)
    label_leaves = jax.tree_util.tree_leaves(labels)
    for (path, old), new, label in zip(flat, after_leaves, label_leaves, strict=True):
        same = _bit_identical(old, new)
        if label == ADAPTER and same:
            adapters_unchanged.append(_path_str(path))
        elif label != ADAPTER and not same:
            frozen_changed.append(_path_str(path))
    return {"frozen_changed": frozen_changed, "adapters_unchanged": adapters_unchanged}


def count_leaves(params) -> dict[str, int]:
    """Numbers of frozen/adapter leaves and parameters."""
    labels = jax.tree_util.tree_leaves(adapter_labels(params))
    leaves = jax.tree_util.tree_leaves(params)
    adapter = [x for x, lab in zip(leaves, labels) if lab == ADAPTER]
    frozen = [x for x, lab in zip(leaves, labels) if lab != ADAPTER]
    return {
        "frozen_leaves": len(frozen),
        "adapter_leaves": len(adapter),
        "frozen_parameters": int(sum(x.size for x in frozen)),
        "adapter_parameters": int(sum(x.size for x in adapter)),
    }


# --- the norm-memory table ----------------------------------------------------------------


def adapted_layer_shapes(dora_params) -> list[tuple[int, int, int]]:
    """Distinct (d_in, d_out, r) of the layers that hold ``lora_a``, in first-seen order."""
    shapes: list[tuple[int, int, int]] = []

    def visit(node):
        if isinstance(node, Mapping):
            if "lora_a" in node:
                d_in, d_out = node["kernel"].shape
                shape = (int(d_in), int(d_out), int(node["lora_a"].shape[1]))
                if shape not in shapes:
                    shapes.append(shape)
                return
            for value in node.values():
                visit(value)

    visit(dora_params)
    return shapes


def factored_norm_bound_bytes(d_out: int, rank: int) -> int:
    """4·(d_out·r + r² + d_out): float32 [r, d_out], [r, r] and [d_out] intermediates."""
    return 4 * (d_out * rank + rank * rank + d_out)


def norm_memory_row(d_in: int, d_out: int, rank: int, scale: float) -> dict[str, Any]:
    """Largest jaxpr intermediates of the factored and dense column norms (abstract: the
    inputs are ``jax.ShapeDtypeStruct`` s, so nothing of that size is allocated)."""
    f32 = jnp.float32
    w0 = jax.ShapeDtypeStruct((d_in, d_out), f32)
    a = jax.ShapeDtypeStruct((d_in, rank), f32)
    b = jax.ShapeDtypeStruct((rank, d_out), f32)
    sq = jax.ShapeDtypeStruct((d_out,), f32)
    factored = largest_intermediate_bytes(
        lambda w0, a, b, sq: dora_column_norm(w0, a, b, scale, w0_sq_norm=sq), w0, a, b, sq)
    dense = largest_intermediate_bytes(
        lambda w0, a, b: dora_column_norm_dense(w0, a, b, scale), w0, a, b)
    bound = factored_norm_bound_bytes(d_out, rank)
    return {"d_in": d_in, "d_out": d_out, "rank": rank, "factored_bytes": factored,
            "dense_bytes": dense, "dense_over_factored": dense / factored,
            "bound_bytes": bound, "within_bound": factored <= bound}


def norm_memory_table(shapes, alpha: float) -> list[dict[str, Any]]:
    """One :func:`norm_memory_row` per (d_in, d_out, r), with the scale α/r."""
    return [norm_memory_row(d_in, d_out, r, lora_scale(alpha, r)) for d_in, d_out, r in shapes]


def format_memory_table(rows: list[dict[str, Any]]) -> str:
    headers = ["source", "d_in", "d_out", "r", "factored B", "dense B", "dense/factored",
               "bound B", "<= bound"]
    return format_table(headers, [
        [row["source"], row["d_in"], row["d_out"], row["rank"], row["factored_bytes"],
         row["dense_bytes"], float(row["dense_over_factored"]), row["bound_bytes"],
         row["within_bound"]]
        for row in rows
    ])


# --- plot ---------------------------------------------------------------------------------


def plot_losses(path, pretrain: list[float], adapt: list[float], adapt_val, title: str):
    """Two panels: the pretraining loss, and the adaptation loss with the held-out loss."""
    with figure(path, 1, 2, figsize=(11, 4)) as (_, (left, right)):
        left.plot(pretrain, lw=0.8)
        left.set(title="pretraining (all plays but one)", xlabel="step",
                 ylabel="loss (nats/char)")
        right.plot(adapt, lw=0.8, label="adapter training loss")
        right.plot(*zip(*adapt_val), "o-", label="held-out validation loss")
        right.set(title=f"DoRA adaptation to {title}", xlabel="step")
        right.legend()


# --- the experiment -----------------------------------------------------------------------


@experiment("dora", "DoRA: pretrain a char-level model on Shakespeare, adapt it to a "
            "held-out play; the frozen base stays bit-identical; factored-norm memory table.")
def run(config: RunConfig, settings: DoRASettings) -> dict[str, Any]:
    """Pretrain, adapt, check the frozen leaves, tabulate the norm memory; the metrics."""
    s = settings
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    init_key, lora_key = jax.random.split(jax.random.PRNGKey(config.seed))
    sampler = lambda tokens: char_model.batch_sampler(rng, tokens, s.batch_size, s.context)

    data = prepare_data(s)
    print(f"DoRA: pretraining on {len(data.pretrain_titles)} plays "
          f"({len(data.pretrain_tokens):,} chars); held out: {data.held_out_title} "
          f"({len(data.held_out_train):,} train / {len(data.held_out_val):,} val chars).")
    model = char_model.CharTransformer(char_model.CharModelConfig(
        vocab_size=data.vocab.size, d_model=s.d_model, num_layers=s.num_layers,
        num_heads=s.num_heads, context=s.context))
    val_batches = char_model.eval_batches(data.held_out_val, s.batch_size, s.context,
                                          s.eval_batches)

    # 1. Pretraining.
    base_loss = make_loss_fn(model)
    params, pretrain_losses, _ = char_model.train(
        char_model.init_params(model, init_key),
        char_model.make_optimizer(s.pretrain_lr, s.pretrain_steps), base_loss,
        sampler(data.pretrain_tokens), s.pretrain_steps, desc="pretrain")
    pretrain_seconds = time.perf_counter() - started
    held_out_base = char_model.make_evaluator(base_loss, val_batches)(params)

    # 2. DoRA adaptation on the held-out play.
    dora_params = to_dora_params(params, rank=s.rank, alpha=s.alpha, key=lora_key,
                                 include=s.include)
    dora_loss = make_loss_fn(model, dora_alpha=s.alpha)
    adapt_started = time.perf_counter()
    adapted, adapt_losses, adapt_val = char_model.train(
        dora_params, freeze_base(char_model.make_optimizer(s.adapt_lr, s.adapt_steps),
                                 dora_params),
        dora_loss, sampler(data.held_out_train), s.adapt_steps, desc="DoRA adapt",
        evaluate=char_model.make_evaluator(dora_loss, val_batches), eval_every=s.eval_every)
    adapt_seconds = time.perf_counter() - adapt_started
    held_out_before, held_out_after = adapt_val[0][1], adapt_val[-1][1]

    # 3. Frozen weights bit-identical, adapters moved.
    changes = compare_leaves(dora_params, adapted)
    frozen_bit_identical = not changes["frozen_changed"]
    adapters_changed = not changes["adapters_unchanged"]

    # 4. Norm-memory table.
    memory_rows = [{"source": "model", **row} for row in
                   norm_memory_table(adapted_layer_shapes(dora_params), s.alpha)]
    memory_rows += [{"source": "benchmark", **row}
                    for row in norm_memory_table(BENCHMARK_SHAPES, s.alpha)]

    print(f"\nheld-out ({data.held_out_title}) validation loss, nats/char:")
    print(f"  pretrained base          {held_out_base:.4f}")
    print(f"  DoRA at init (= base)    {held_out_before:.4f}")
    print(f"  after {s.adapt_steps} DoRA steps     {held_out_after:.4f}"
          f"  ({held_out_after - held_out_before:+.4f})")
    counts = count_leaves(dora_params)
    print(f"frozen leaves bit-identical: {frozen_bit_identical} "
          f"({counts['frozen_leaves']} leaves, {counts['frozen_parameters']:,} params); "
          f"adapter leaves all changed: {adapters_changed} "
          f"({counts['adapter_leaves']} leaves, {counts['adapter_parameters']:,} params)")
    for kind, paths in changes.items():
        if paths:
            print(f"  {kind}: {', '.join(paths)}")
    print("\ncolumn-norm memory: largest jaxpr intermediate, bytes (float32)")
    print(format_memory_table(memory_rows))
    print(f"\ntime: pretrain {pretrain_seconds:.1f} s, adapt {adapt_seconds:.1f} s")
    plot_losses(config.run_dir / "losses.png", pretrain_losses, adapt_losses, adapt_val,
                data.held_out_title)
    big = next(r for r in memory_rows if (r["d_in"], r["d_out"], r["rank"]) == (8192, 8192, 384))
    return {
        "data": {"held_out_play": data.held_out_title,
                 "pretrain_plays": list(data.pretrain_titles),
                 "pretrain_chars": len(data.pretrain_tokens),
                 "held_out_train_chars": len(data.held_out_train),
                 "held_out_val_chars": len(data.held_out_val),
                 "vocab_size": data.vocab.size},
        "losses": {"pretrain": pretrain_losses, "adapt": adapt_losses,
                   "adapt_held_out": [list(p) for p in adapt_val],
                   "held_out_base": held_out_base,
                   "held_out_before": held_out_before,
                   "held_out_after": held_out_after},
        "frozen_bit_identical": frozen_bit_identical,
        "adapters_changed": adapters_changed,
        "leaf_changes": changes,
        "parameter_counts": counts,
        "norm_memory": memory_rows,
        "seconds": {"pretrain": pretrain_seconds, "adapt": adapt_seconds},
        "paper_vs_ours": [paper_row("norm memory dense/factored at (8192, 8192, 384)",
                                    ">= 16 (factored norm, Scaling DoRA)",
                                    big["dense_over_factored"])],
    }
