"""NaLaFormer on Shakespeare: two char-level LMs, causal NaLa attention vs softmax attention.

``python -m experiments nalaformer [--full] [--seed N] [--out DIR]``

Two pre-LayerNorm causal transformers, identical (embedding, blocks, MLPs, LayerNorms, LM
head, optimiser, data order, seed) except for the attention layer of each block:

* ``nala``: :class:`jaxbounds.attention.nala_layers.NaLaAttention` (causal): the NaLaFormer
  wrapper (q, k, v, g = Linear(C → 4C); norm-aware linear attention with 1-D RoPE; causal
  width-5 LePE; LayerNorm · SiLU(g); output projection);
* ``softmax``: the library's causal softmax
  :class:`~jaxbounds.attention.modules.SelfAttention` (Dense q, k, v, out), with 1-D
  RoPE on q and k (``rope=True``), so that both models see positions the same way.

Both are :class:`experiments.char_model.CharTransformer`.

Both train with AdamW on random windows of the bundled plays (the last 10% held out) and
report the validation loss (nats per character) and bits per character, with the curves in
``curves.png``. Writes ``runs/<name>/results.json``. The paper's ImageNet-1K top-1 table
(NaLaFormer-XT/T/S/B/L) is stored beside our numbers for reference; the char-LM comparison
is what we reproduce at small scale.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from experiments import char_model
from experiments._output import figure, format_table
from experiments._runner import RunConfig, Settings, experiment, paper_row

# Meng et al., arXiv 2506.21137, ImageNet-1K top-1 (%).
PAPER_IMAGENET_TOP1 = {"NaLaFormer-XT": 79.1, "NaLaFormer-T": 82.6, "NaLaFormer-S": 84.3,
                       "NaLaFormer-B": 85.2, "NaLaFormer-L": 85.7}
ATTENTIONS = ("nala", "softmax")


@dataclasses.dataclass(frozen=True)
class NaLaSettings(Settings):
    """Sizes and schedule. The defaults run in a few minutes on a laptop CPU."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    context: int = 128
    batch_size: int = 32
    steps: int = 300
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup: int = 30
    eval_every: int = 50
    eval_batches: int = 4
    val_fraction: float = 0.1

    @classmethod
    def full(cls) -> NaLaSettings:
        return cls(d_model=256, num_layers=4, num_heads=4, context=512, batch_size=32,
                   steps=5000, lr=1e-3, warmup=200, eval_every=250, eval_batches=32)


def train_one(attention: str, s: NaLaSettings, vocab_size: int, train_tokens, val_batches,
              seed: int) -> dict:
    model = char_model.CharTransformer(char_model.CharModelConfig(
        vocab_size, s.d_model, s.num_layers, s.num_heads, s.context, attention=attention,
        positions=False, rope=attention != "nala"))
    params = jax.jit(char_model.init_params, static_argnums=0)(model, jax.random.PRNGKey(seed))
    loss_fn = char_model.lm_loss(model)
    rng = np.random.default_rng(seed)  # the same windows for both models
    start = time.perf_counter()
    _, train_curve, val_curve = char_model.train(
        params, char_model.make_optimizer(s.lr, s.steps, warmup=s.warmup,
                                          weight_decay=s.weight_decay),
        loss_fn, char_model.batch_sampler(rng, train_tokens, s.batch_size, s.context), s.steps,
        desc=f"train {attention}", evaluate=char_model.make_evaluator(loss_fn, val_batches),
        eval_every=s.eval_every)
    val_loss = val_curve[-1][1]
    return {"attention": attention, "params": sum(p.size for p in jax.tree.leaves(params)),
            "val_loss": val_loss, "val_bpc": val_loss / math.log(2),
            "train_curve": train_curve, "val_curve": val_curve,
            "train_seconds": time.perf_counter() - start,
            "final_train_loss": float(np.mean(train_curve[-20:]))}


def plot_curves(results: dict, path) -> None:
    colors = {"nala": "tab:blue", "softmax": "tab:orange"}
    with figure(path, figsize=(6.5, 4)) as (_, ax):
        for name, res in results.items():
            curve = np.asarray(res["train_curve"])
            window = max(1, len(curve) // 30)
            smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
            ax.plot(np.arange(window, len(curve) + 1), smooth, color=colors[name], alpha=0.5,
                    label=f"{name} train")
            ax.plot(*zip(*res["val_curve"], strict=True), "o-", color=colors[name],
                    label=f"{name} val ({res['val_bpc']:.3f} bpc)")
        ax.set(xlabel="step", ylabel="cross-entropy (nats / char)",
               title="Char-level Shakespeare: causal NaLa vs softmax attention")
        ax.legend()


@experiment("nalaformer", "NaLaFormer: char-level LMs on Shakespeare with causal norm-aware "
            "linear attention vs softmax; validation loss and bits per character.")
def run(config: RunConfig, settings: NaLaSettings) -> dict:
    s = settings
    vocab, train_tokens, val_tokens = char_model.corpus_split(s.val_fraction)
    val_batches = char_model.eval_batches(val_tokens, s.batch_size, s.context, s.eval_batches)
    results = {name: train_one(name, s, vocab.size, train_tokens, val_batches, config.seed)
               for name in ATTENTIONS}
    rows = [[name, r["params"], r["final_train_loss"], r["val_loss"], r["val_bpc"],
             r["train_seconds"]] for name, r in results.items()]
    print(format_table(["attention", "params", "train loss", "val loss", "val bpc",
                        "train s"], rows))
    plot_curves(results, config.run_dir / "curves.png")
    return {
        "results": results,
        "bpc_gap_nala_minus_softmax": results["nala"]["val_bpc"] - results["softmax"]["val_bpc"],
        "paper_vs_ours": [paper_row(f"ImageNet-1K top-1 (%), {name}", top1,
                                    "not reproduced (CPU scale)")
                          for name, top1 in PAPER_IMAGENET_TOP1.items()],
    }
