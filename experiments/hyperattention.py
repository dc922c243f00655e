"""HyperAttention patching: train with exact attention, swap in HyperAttention layer by layer.

``python -m experiments hyperattention [--full] [--seed N] [--out DIR]``

The paper's (Han et al., arXiv 2310.05869, §4.1) experiment at small scale: a causal
char-level transformer built from :class:`~jaxbounds.attention.self_attention.SelfAttention`
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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import char_model
from experiments._runner import RunConfig, format_table, progress, write_results
from jaxbounds.attention.self_attention import SelfAttention

PAPER = {"model": "chatglm2-6b-32k", "context": 32768, "perplexity_exact": 5.6,
         "perplexity_all_patched": 6.3, "speedup": 1.5}


@dataclasses.dataclass(frozen=True)
class HyperSettings:
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

    @classmethod
    def for_run(cls, config: RunConfig) -> HyperSettings:
        return cls.full() if config.full else cls()


class Block(nn.Module):
    settings: HyperSettings
    attention: str

    @nn.compact
    def __call__(self, x):
        s = self.settings
        attn = SelfAttention(s.num_heads, s.d_model, attention=self.attention, causal=True,
                             block_size=s.block_size, sample_size=s.sample_size,
                             num_projections=s.num_projections, min_seq_len=s.min_seq_len,
                             name="attn")
        x = x + attn(nn.LayerNorm(name="ln_attn")(x))
        h = nn.gelu(nn.Dense(4 * s.d_model, name="fc_in")(nn.LayerNorm(name="ln_mlp")(x)))
        return x + nn.Dense(s.d_model, name="fc_out")(h)


class PatchedLM(nn.Module):
    """Causal char LM; the last ``hyper_layers`` blocks use HyperAttention (rng "hyper")."""

    settings: HyperSettings
    vocab_size: int
    hyper_layers: int = 0

    @nn.compact
    def __call__(self, ids):
        s = self.settings
        init = nn.initializers.normal(0.02)
        x = nn.Embed(self.vocab_size, s.d_model, embedding_init=init, name="embed")(ids)
        x = x + self.param("pos_embed", init, (s.context, s.d_model))[: ids.shape[-1]]
        for i in range(s.num_layers):
            patched = i >= s.num_layers - self.hyper_layers
            x = Block(s, "hyper" if patched else "softmax", name=f"block_{i}")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_final")(x))


def _loss(model, params, inputs, targets, key):
    logits = model.apply(params, inputs, rngs={"hyper": key})
    return char_model.cross_entropy(logits, targets)


def train(settings: HyperSettings, vocab_size: int, tokens: np.ndarray, rng, key):
    model = PatchedLM(settings, vocab_size)
    params = model.init(key, jnp.zeros((1, settings.context), jnp.int32))
    warmup = max(1, settings.steps // 10)
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, warmup,
                                                  max(settings.steps, warmup + 1),
                                                  end_value=0.1 * settings.lr)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.01))

    @jax.jit
    def step(params, state, inputs, targets):
        loss, grads = jax.value_and_grad(
            lambda p: _loss(model, p, inputs, targets, key))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = tx.init(params)
    losses = []
    bar = progress(range(settings.steps), desc="train (exact attention)")
    for i in bar:
        inputs, targets = char_model.sample_batch(rng, tokens, settings.batch_size,
                                                  settings.context)
        params, state, loss = step(params, state, inputs, targets)
        losses.append(loss)
        if i % 25 == 0 or i == settings.steps - 1:
            bar.set_postfix(loss=f"{float(loss):.3f}")
    return params, [float(v) for v in losses]


def evaluate_patched(settings, vocab_size, params, batches, key) -> list[dict[str, Any]]:
    """Validation loss and perplexity with the last ℓ layers patched, ℓ = 0..L."""
    rows = []
    for ell in progress(range(settings.num_layers + 1), desc="patch last l layers"):
        model = PatchedLM(settings, vocab_size, hyper_layers=ell)
        loss_fn = jax.jit(lambda p, x, y, k, model=model: _loss(model, p, x, y, k))
        draws = settings.eval_keys if ell else 1  # ℓ = 0 is deterministic
        per_key = []
        for r in range(draws):
            k = jax.random.fold_in(key, r)
            per_key.append(float(np.mean([float(loss_fn(params, x, y, k)) for x, y in batches])))
        loss = float(np.mean(per_key))
        rows.append({"patched_layers": ell, "val_loss": loss, "perplexity": math.exp(loss),
                     "val_loss_per_key": per_key,
                     "perplexity_std_over_keys": float(np.std([math.exp(v) for v in per_key]))})
    return rows


def plot(path, rows, settings):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ell = [r["patched_layers"] for r in rows]
    ppl = [r["perplexity"] for r in rows]
    err = [r["perplexity_std_over_keys"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.errorbar(ell, ppl, yerr=err, fmt="o-", capsize=3)
    ax.set(xlabel="last ℓ attention layers patched with HyperAttention",
           ylabel="validation perplexity (chars)",
           title=f"context {settings.context}, b=m={settings.block_size}, "
                 f"min_seq_len={settings.min_seq_len}")
    ax.set_xticks(ell)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: RunConfig, *, settings: HyperSettings | None = None) -> dict[str, Any]:
    settings = settings or HyperSettings.for_run(config)
    started = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    init_key, eval_key = jax.random.split(jax.random.PRNGKey(config.seed))
    text = char_model.load_corpus()
    vocab = char_model.CharVocab.from_text(text)
    train_tokens, val_tokens = char_model.split_tokens(vocab.encode(text), settings.val_fraction)
    batches = char_model.eval_batches(val_tokens, settings.batch_size, settings.context,
                                      settings.eval_batches)
    print(f"HyperAttention patching: {settings.num_layers} layers, context {settings.context}, "
          f"{len(train_tokens):,} train / {len(val_tokens):,} val chars")
    params, losses = train(settings, vocab.size, train_tokens, rng, init_key)
    train_seconds = time.perf_counter() - started
    rows = evaluate_patched(settings, vocab.size, params, batches, eval_key)
    total_seconds = time.perf_counter() - started

    print()
    print(format_table(["patched l", "val loss", "perplexity", "ppl std (keys)"],
                       [[r["patched_layers"], r["val_loss"], r["perplexity"],
                         r["perplexity_std_over_keys"]] for r in rows]))
    print(f"paper (ChatGLM2-32k): perplexity {PAPER['perplexity_exact']} exact -> "
          f"{PAPER['perplexity_all_patched']} all layers patched")
    print(f"time: train {train_seconds:.1f} s, total {total_seconds:.1f} s")
    plot(config.run_dir / "perplexity.png", rows, settings)
    results = {
        "config": {"run": dataclasses.asdict(config), "settings": dataclasses.asdict(settings)},
        "train_losses": losses,
        "patched": rows,
        "perplexity_exact": rows[0]["perplexity"],
        "perplexity_all_patched": rows[-1]["perplexity"],
        "paper": PAPER,
        "seconds": {"train": train_seconds, "total": total_seconds},
    }
    path = write_results(config.run_dir / "results.json", results)
    print(f"wrote {path}")
    return results
