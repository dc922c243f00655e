"""Lipschitz-constrained char transformer on Shakespeare, with a certified Lipschitz bound.

``python -m experiments lipschitz_transformer [--full] [--seed N] [--out DIR]``

Newhouse et al., "Training Transformers with Enforced Lipschitz Constants" (arXiv
2507.13338). The paper's results: Muon beats AdamW for every weight-constraint method on the
Lipschitz-bound vs accuracy trade-off, and a 2-Lipschitz transformer on (65-char)
Shakespeare reaches 60% validation accuracy.

1. **Main run.** Train :class:`LipschitzTransformer` (no layer norm, convex residuals,
   RoPE, 1/d logits, ⅓ attention output, GeLU/1.128994) on the bundled corpus (77 chars)
   with ``optax.contrib.muon`` (momentum 0.9, learning rate decaying linearly to 0),
   followed by the spectral constraint :func:`jaxbounds.lipschitz.optim.lipschitz_projection`
   (default: the hard cap, RMS→RMS ``w_max``). The embedding rows are kept at RMS ≤ 1
   (:func:`project_embedding`), which fixes the certificate's domain. Reports validation
   accuracy, loss, the certified bound of
   :func:`jaxbounds.lipschitz.certificate.lipschitz_bound` with its per-layer factors, and a
   generated sample.
2. **Sweep.** Constraint methods (none, weight decay, spectral normalise, hammer, soft cap,
   hard cap) × optimizers (AdamW, Muon) × ``sweep_w_max`` on a smaller model; plots
   validation accuracy against the certified bound (``accuracy_vs_bound.png``): the paper's
   main figure at small scale.

``--full`` is the paper's Shakespeare configuration as its reference code has it:
d_embed 256, context 256, 3 blocks, 4 heads, Muon lr 0.1 → 0, 2,000 steps at batch 512, the
soft cap with w_max 6; the sweep uses w_max 2…8 at batch 64. It is meant for a GPU.

Writes ``results.json``, ``accuracy_vs_bound.png`` and ``training.png`` under
``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import char_model
from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.lipschitz import optim
from jaxbounds.lipschitz.certificate import lipschitz_bound
from jaxbounds.lipschitz.transformer import (
    LipschitzTransformer,
    LipschitzTransformerConfig,
    project_embedding,
)

METHODS = ("none", "weight_decay", "spectral_normalize", "spectral_hammer",
           "spectral_soft_cap", "spectral_hard_cap")
OPTIMIZERS = ("adamw", "muon")
# Weights start strictly inside the constraint set, at this fraction of min(1, w_max) (RMS->RMS).
INIT_FRACTION = 0.9
PAPER = {
    "shakespeare_val_accuracy_at_lipschitz_2": 0.60,
    "shakespeare_vocab": 65,
    "fineweb_145M_val_accuracy_at_lipschitz_10": 0.21,
    "nanogpt_baseline_val_accuracy": 0.394,
    "lipschitz_bound_to_match_baseline": "about 1e264",
}


@dataclasses.dataclass(frozen=True)
class TrainSpec(Settings):
    """One training run: model sizes, optimizer, constraint and schedule."""

    d_model: int = 64
    num_blocks: int = 2
    num_heads: int = 2
    context: int = 64
    batch_size: int = 32
    steps: int = 300
    optimizer: str = "muon"  # "muon" or "adamw"
    constraint: str = "spectral_hard_cap"  # one of METHODS
    w_max: float = 1.0  # RMS→RMS bound of every constrained weight
    muon_lr: float = 0.1  # peak, linear decay to 0 (the paper's Muon)
    adamw_lr: float = 3e-3  # peak, linear decay to 0
    beta: float = 0.9  # Muon momentum (paper); optax's default is 0.95
    embed_lr: float = 3e-3  # Adam on the embedding table (kept at row RMS <= 1)
    weight_decay: float = 0.01  # the "weight_decay" method: w ← (1 − wd·s(t))·w
    final_scale: float = 1.0
    eval_batches: int = 8
    eval_every: int = 100

    def __post_init__(self):
        self.check(positive=("steps", "batch_size", "context", "eval_batches"),
                   among={"optimizer": OPTIMIZERS, "constraint": METHODS})
        if not self.w_max > 0:
            raise ValueError(f"w_max must be > 0, got {self.w_max!r}.")

    @property
    def peak_lr(self) -> float:
        return self.muon_lr if self.optimizer == "muon" else self.adamw_lr

    def model_config(self, vocab_size: int) -> LipschitzTransformerConfig:
        return LipschitzTransformerConfig(
            vocab_size=vocab_size, d_model=self.d_model, num_blocks=self.num_blocks,
            num_heads=self.num_heads, context=self.context, final_scale=self.final_scale,
            init_norm=INIT_FRACTION * min(1.0, self.w_max))


@dataclasses.dataclass(frozen=True)
class LipschitzSettings(Settings):
    """The experiment: a main run and a sweep. Defaults run in minutes on a CPU."""

    main: TrainSpec = TrainSpec()
    sweep: bool = True
    sweep_spec: TrainSpec = TrainSpec(d_model=32, num_blocks=1, num_heads=2, context=32,
                                      batch_size=32, steps=150, eval_batches=4,
                                      eval_every=1_000_000)
    sweep_methods: tuple[str, ...] = METHODS
    sweep_optimizers: tuple[str, ...] = OPTIMIZERS
    sweep_w_max: tuple[float, ...] = (1.0,)
    sample_chars: int = 300
    # A low-Lipschitz model has small logits (RMS <= final_scale * ||W_u|| * R), so sampling
    # at temperature 1 is close to uniform: sample cooler.
    temperature: float = 0.3
    val_fraction: float = 0.1

    @classmethod
    def full(cls) -> LipschitzSettings:
        """The paper's Shakespeare configuration (reference code): for a GPU."""
        main = TrainSpec(d_model=256, num_blocks=3, num_heads=4, context=256, batch_size=512,
                         steps=2000, optimizer="muon", constraint="spectral_soft_cap",
                         w_max=6.0, muon_lr=0.1, eval_batches=16, eval_every=250)
        sweep = dataclasses.replace(main, batch_size=64, eval_every=1_000_000)
        return cls(main=main, sweep_spec=sweep, sweep_w_max=(2.0, 4.0, 6.0, 8.0))


# --- optimizer ----------------------------------------------------------------------------


def _is_kernel(path) -> bool:
    return str(getattr(path[-1], "key", path[-1])) == "kernel"


def _muon_dims(params):
    """Muon for every kernel ``[in, out]``; the embedding goes to Muon's internal Adam."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: optax.contrib.MuonDimensionNumbers() if _is_kernel(path) else None,
        params)


def make_optimizer(spec: TrainSpec, key) -> optax.GradientTransformation:
    """The optimizer chain of ``spec``: Muon or AdamW with a linear decay to 0, then (for the
    spectral methods) :func:`optim.lipschitz_projection` with RMS→RMS ``w_max`` on every
    kernel. ``none`` and ``weight_decay`` add no projection (weight decay is applied by the
    training step, as the reference's decoupled ``(1 − wd·schedule)·w``)."""
    schedule = optax.linear_schedule(spec.peak_lr, 0.0, spec.steps)
    if spec.optimizer == "muon":
        embed_schedule = optax.linear_schedule(spec.embed_lr, 0.0, spec.steps)
        base = optax.contrib.muon(schedule, beta=spec.beta, adam_learning_rate=embed_schedule,
                                  muon_weight_dimension_numbers=_muon_dims)
    else:
        base = optax.adamw(schedule, weight_decay=0.0)
    if spec.constraint in ("none", "weight_decay"):
        return base
    kwargs: dict[str, Any] = {"norm": "rms"}
    if spec.constraint in ("spectral_normalize", "spectral_hammer"):
        kwargs["key"] = key
    if spec.constraint == "spectral_soft_cap":
        # The coupling bounds the update by Muon's; for AdamW there is no such bound and the
        # soft cap is only a soft pull towards w_max.
        kwargs.update(learning_rate=schedule, max_update_norm="muon")
    return optim.with_projection(base, spec.constraint, spec.w_max, **kwargs)


# --- training -----------------------------------------------------------------------------


def _loss_and_accuracy(model, params, inputs, targets):
    logits = model.apply(params, inputs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()
    accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == targets)
    return loss, accuracy


def train_model(spec: TrainSpec, data, seed: int = 0, *, desc: str = "train",
                show_progress: bool = True) -> dict[str, Any]:
    """Train one model on ``data`` = (vocab, train tokens, validation tokens); returns params,
    config, losses, validation loss/accuracy and the certified bound with its factors."""
    started = time.perf_counter()
    vocab, train_tokens, val_tokens = data
    cfg = spec.model_config(vocab.size)
    model = LipschitzTransformer(cfg)
    init_key, opt_key = jax.random.split(jax.random.PRNGKey(seed))
    params = jax.jit(model.init)(init_key, jnp.zeros((1, cfg.context), jnp.int32))
    decay = spec.weight_decay if spec.constraint == "weight_decay" else 0.0

    def post_update(params, step):
        """The decoupled weight decay (1 − wd·s(t))·w, then embedding rows at RMS <= 1."""
        if decay:
            factor = 1.0 - decay * (1.0 - step / spec.steps)
            params = jax.tree_util.tree_map_with_path(
                lambda path, w: w * factor if _is_kernel(path) else w, params)
        return project_embedding(params, 1.0)

    params, losses, evals = char_model.train(
        params, make_optimizer(spec, opt_key),
        lambda p, x, y: _loss_and_accuracy(model, p, x, y)[0],
        char_model.batch_sampler(np.random.default_rng(seed), train_tokens, spec.batch_size,
                                 cfg.context), spec.steps, desc=desc,
        evaluate=char_model.make_evaluator(
            lambda p, x, y: _loss_and_accuracy(model, p, x, y), char_model.eval_batches(
                val_tokens, min(spec.batch_size, 64), cfg.context, spec.eval_batches)),
        eval_every=spec.eval_every, eval_at_start=False, post_update=post_update,
        show_progress=show_progress)
    evals = [(step, *values) for step, values in evals]
    total, per_layer = lipschitz_bound(params, cfg)
    return {"spec": spec, "config": cfg, "model": model, "params": params,
            "losses": losses, "evals": evals, "val_loss": evals[-1][1],
            "val_accuracy": evals[-1][2], "lipschitz_bound": float(total),
            "per_layer": {k: float(v) for k, v in per_layer.items()},
            "train_seconds": time.perf_counter() - started}


def generate(model, params, vocab: char_model.CharVocab, prompt: str, num_chars: int, key,
             temperature: float = 0.3) -> str:
    """Sample ``num_chars`` characters after ``prompt`` (a sliding window of ``context``)."""
    context = model.config.context
    ids = list(vocab.encode(prompt))

    @jax.jit
    def next_logits(window, position):
        return model.apply(params, window[None])[0, position]

    for _ in range(num_chars):
        window = ids[-context:]
        position = len(window) - 1
        padded = np.zeros(context, np.int32)
        padded[:len(window)] = window
        logits = next_logits(jnp.asarray(padded), position)
        key, sub = jax.random.split(key)
        ids.append(int(jax.random.categorical(sub, logits / temperature)))
    return vocab.decode(np.array(ids))


# --- plots --------------------------------------------------------------------------------


_COLORS = dict(zip(METHODS, ("tab:gray", "tab:brown", "tab:blue", "tab:purple", "tab:orange",
                              "tab:red"), strict=True))


def plot_accuracy_vs_bound(path, rows: list[dict[str, Any]]) -> None:
    with figure(path, figsize=(7, 4.5)) as (_, ax):
        for row in rows:
            muon = row["optimizer"] == "muon"
            color = _COLORS[row["constraint"]]
            ax.scatter(row["lipschitz_bound"], row["val_accuracy"], marker="o" if muon else "s",
                       s=60, facecolors=color if muon else "none", edgecolors=color,
                       linewidths=1.5)
        for method in METHODS:
            ax.scatter([], [], color=_COLORS[method], label=method)
        ax.scatter([], [], marker="o", color="k", label="Muon (filled)")
        ax.scatter([], [], marker="s", facecolors="none", edgecolors="k", label="AdamW (open)")
        ax.set(xscale="log", xlabel="certified Lipschitz bound (max-RMS norms, log)",
               ylabel="validation accuracy",
               title="Shakespeare chars: accuracy vs certified bound")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")


def plot_training(path, result: dict[str, Any]) -> None:
    with figure(path, 1, 2, figsize=(11, 4)) as (_, (left, right)):
        left.plot(result["losses"], lw=0.8, label="train loss")
        steps, val_loss, _ = zip(*result["evals"])
        left.plot(steps, val_loss, "o-", label="validation loss")
        left.set(xlabel="step", ylabel="nats/char", title="main run")
        left.legend()
        names = list(result["per_layer"])
        right.bar(range(len(names)), [result["per_layer"][n] for n in names])
        right.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        right.set(ylabel="factor", yscale="log",
                  title=f"certificate factors, total {result['lipschitz_bound']:.3g}")


# --- the experiment -----------------------------------------------------------------------


def _row(result: dict[str, Any]) -> dict[str, Any]:
    spec = result["spec"]
    return {"optimizer": spec.optimizer, "constraint": spec.constraint, "w_max": spec.w_max,
            "val_accuracy": result["val_accuracy"], "val_loss": result["val_loss"],
            "lipschitz_bound": result["lipschitz_bound"], "seconds": result["train_seconds"]}


def run_sweep(settings: LipschitzSettings, data, seed: int) -> list[dict[str, Any]]:
    rows = []
    specs = [dataclasses.replace(settings.sweep_spec, optimizer=opt, constraint=method,
                                 w_max=w_max)
             for w_max in settings.sweep_w_max
             for opt in settings.sweep_optimizers
             for method in settings.sweep_methods
             if not (method in ("none", "weight_decay") and w_max != settings.sweep_w_max[0])]
    for spec in progress(specs, desc="sweep"):
        rows.append(_row(train_model(spec, data, seed, show_progress=False)))
    return rows


@experiment("lipschitz_transformer", "Lipschitz-constrained char transformer on Shakespeare "
            "(Muon + spectral caps): accuracy vs certified Lipschitz bound per constraint method.")
def run(config: RunConfig, settings: LipschitzSettings) -> dict[str, Any]:
    """The main run, its sample and certificate, and the sweep; the metrics."""
    data = vocab, train_tokens, val_tokens = char_model.corpus_split(settings.val_fraction)
    spec = settings.main
    print(f"Lipschitz transformer: {vocab.size} chars, {len(train_tokens):,} train / "
          f"{len(val_tokens):,} validation; d_model {spec.d_model}, {spec.num_blocks} blocks, "
          f"{spec.num_heads} heads, context {spec.context}; {spec.optimizer} + "
          f"{spec.constraint} (w_max {spec.w_max}, RMS->RMS), {spec.steps} steps.")
    main = train_model(spec, data, config.seed, desc="main run")
    sample = generate(main["model"], main["params"], vocab, "ROMEO:\n",
                      settings.sample_chars, jax.random.PRNGKey(config.seed),
                      settings.temperature)
    print(f"\nvalidation accuracy {main['val_accuracy']:.4f}, loss {main['val_loss']:.4f} "
          f"nats/char; certified Lipschitz bound {main['lipschitz_bound']:.4g}")
    print(format_table(["layer", "factor"], [[k, v] for k, v in main["per_layer"].items()]))
    print(f"\nsample:\n{sample}\n")

    rows = run_sweep(settings, data, config.seed) if settings.sweep else []
    if rows:
        print(format_table(
            ["optimizer", "constraint", "w_max", "val acc", "val loss", "bound", "s"],
            [[r["optimizer"], r["constraint"], r["w_max"], r["val_accuracy"], r["val_loss"],
              r["lipschitz_bound"], r["seconds"]] for r in rows]))
        plot_accuracy_vs_bound(config.run_dir / "accuracy_vs_bound.png", rows)
    plot_training(config.run_dir / "training.png", main)
    return {
        "data": {"vocab_size": vocab.size, "train_chars": len(train_tokens),
                 "val_chars": len(val_tokens)},
        "main": {"val_accuracy": main["val_accuracy"], "val_loss": main["val_loss"],
                 "lipschitz_bound": main["lipschitz_bound"], "per_layer": main["per_layer"],
                 "evals": [list(e) for e in main["evals"]], "losses": main["losses"],
                 "train_seconds": main["train_seconds"], "sample": sample},
        "sweep": rows,
        "certificate_domain": "embeddings -> logits, sequences with every token RMS <= the "
                              "largest embedding-row RMS (1 here); norms: max over positions "
                              "of the per-token RMS norm",
        "paper_vs_ours": [
            paper_row("Shakespeare validation accuracy of a Lipschitz-2 transformer",
                      PAPER["shakespeare_val_accuracy_at_lipschitz_2"],
                      {"val_accuracy": main["val_accuracy"],
                       "lipschitz_bound": main["lipschitz_bound"]}),
            paper_row("vocabulary", PAPER["shakespeare_vocab"], vocab.size),
            *(paper_row(k, v, None) for k, v in PAPER.items()
              if k not in ("shakespeare_val_accuracy_at_lipschitz_2", "shakespeare_vocab"))],
    }
