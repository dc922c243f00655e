"""HyperAttention patching: train with exact attention, swap in HyperAttention layer by layer.

``python -m experiments hyperattention [--full] [--seed N] [--out DIR]``

The paper's (Han et al., arXiv 2310.05869, §4.1) experiment at small scale: a causal
char-level transformer (:class:`experiments.char_model.CharTransformer`, built from
:class:`~jaxbounds.attention.modules.SelfAttention`)
is trained with exact softmax attention on the bundled Shakespeare plays at a long context.
Then the *same params* are applied with the last ℓ attention layers switched to
HyperAttention (``attention="hyper"``; the switch never changes the param tree), for
ℓ = 0..L, and the validation perplexity is reported against ℓ (averaged over a few
HyperAttention keys). The paper patches ChatGLM2 at 32k context (perplexity 5.6 → 6.3 with
all layers patched, 50% faster); here the CPU default uses context 1024 with
min_seq_len = 256 (the ratio n / min_seq_len = 4 of a 16k-token run at the paper's 4096),
b = m = 64. ``--full`` trains at context 8192 (b = m = 256, min_seq_len = 2048).

Writes ``results.json`` and ``perplexity.png`` under ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import jax
import numpy as np

from experiments import char_model
from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row

PAPER = {"model": "chatglm2-6b-32k", "context": 32768, "perplexity_exact": 5.6,
         "perplexity_all_patched": 6.3, "speedup": 1.5}


@dataclasses.dataclass(frozen=True)
class HyperSettings(Settings):
    """The CPU default finishes in a few minutes on a laptop."""

    d_model: int = 64
    num_layers: int = 4
    num_heads: int = 4
    context: int = 1024
    batch_size: int = 4
    steps: int = 250
    lr: float = 3e-3
    block_size: int = 64
    sample_size: int = 64
    num_projections: int = 7
    min_seq_len: int = 256
    eval_batches: int = 4
    eval_keys: int = 3  # HyperAttention keys averaged per ℓ
    val_fraction: float = 0.05

    @classmethod
    def full(cls) -> HyperSettings:
        return cls(d_model=256, num_layers=6, num_heads=4, context=8192, batch_size=8,
                   steps=3000, lr=1e-3, block_size=256, sample_size=256, min_seq_len=2048,
                   eval_batches=16, eval_keys=5)

    def model(self, vocab_size: int, hyper_layers: int = 0) -> char_model.CharTransformer:
        """The char LM whose last ``hyper_layers`` blocks use HyperAttention (rng "hyper")."""
        return char_model.CharTransformer(char_model.CharModelConfig(
            vocab_size, self.d_model, self.num_layers, self.num_heads, self.context,
            hyper_layers=hyper_layers, block_size=self.block_size,
            sample_size=self.sample_size, num_projections=self.num_projections,
            min_seq_len=self.min_seq_len))


def evaluate_patched(s: HyperSettings, vocab_size, params, batches, key) -> list[dict[str, Any]]:
    """Validation loss and perplexity with the last ℓ layers patched, ℓ = 0..L."""
    rows = []
    for ell in progress(range(s.num_layers + 1), desc="patch last l layers"):
        model = s.model(vocab_size, hyper_layers=ell)
        loss_fn = jax.jit(lambda p, x, y, k, model=model: char_model.cross_entropy(
            model.apply(p, x, rngs={"hyper": k}), y))
        draws = s.eval_keys if ell else 1  # ℓ = 0 is deterministic
        per_key = [float(np.mean([float(loss_fn(params, x, y, jax.random.fold_in(key, r)))
                                  for x, y in batches])) for r in range(draws)]
        loss = float(np.mean(per_key))
        rows.append({"patched_layers": ell, "val_loss": loss, "perplexity": math.exp(loss),
                     "val_loss_per_key": per_key,
                     "perplexity_std_over_keys": float(np.std([math.exp(v) for v in per_key]))})
    return rows


def plot(path, rows, s: HyperSettings):
    ell = [r["patched_layers"] for r in rows]
    with figure(path, figsize=(6, 4)) as (_, ax):
        ax.errorbar(ell, [r["perplexity"] for r in rows],
                    yerr=[r["perplexity_std_over_keys"] for r in rows], fmt="o-", capsize=3)
        ax.set(xlabel="last ℓ attention layers patched with HyperAttention",
               ylabel="validation perplexity (chars)",
               title=f"context {s.context}, b=m={s.block_size}, min_seq_len={s.min_seq_len}")
        ax.set_xticks(ell)
        ax.grid(alpha=0.3)


@experiment("hyperattention", "HyperAttention: train with exact attention, patch the last l "
            "layers with HyperAttention; validation perplexity vs l.")
def run(config: RunConfig, settings: HyperSettings) -> dict[str, Any]:
    s = settings
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed))
    vocab, train_tokens, val_tokens = char_model.corpus_split(s.val_fraction)
    batches = char_model.eval_batches(val_tokens, s.batch_size, s.context, s.eval_batches)
    print(f"HyperAttention patching: {s.num_layers} layers, context {s.context}, "
          f"{len(train_tokens):,} train / {len(val_tokens):,} val chars")
    model = s.model(vocab.size)
    params, losses, _ = char_model.train(
        char_model.init_params(model, init_key), char_model.make_optimizer(s.lr, s.steps),
        char_model.lm_loss(model), char_model.batch_sampler(rng, train_tokens, s.batch_size,
                                                            s.context),
        s.steps, desc="train (exact attention)")
    train_seconds = time.perf_counter() - started
    rows = evaluate_patched(s, vocab.size, params, batches, eval_key)

    print(format_table(["patched l", "val loss", "perplexity", "ppl std (keys)"],
                       [[r["patched_layers"], r["val_loss"], r["perplexity"],
                         r["perplexity_std_over_keys"]] for r in rows]))
    plot(config.run_dir / "perplexity.png", rows, s)
    return {
        "train_losses": losses,
        "patched": rows,
        "perplexity_exact": rows[0]["perplexity"],
        "perplexity_all_patched": rows[-1]["perplexity"],
        "train_seconds": train_seconds,
        "paper_vs_ours": [
            paper_row("perplexity, exact attention (ChatGLM2-32k | char LM)",
                      PAPER["perplexity_exact"], rows[0]["perplexity"]),
            paper_row("perplexity, all layers patched", PAPER["perplexity_all_patched"],
                      rows[-1]["perplexity"])],
    }
