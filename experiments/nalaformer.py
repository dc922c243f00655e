"""NaLaFormer on Shakespeare: two char-level LMs, causal NaLa attention vs softmax attention.

``python -m experiments nalaformer [--full] [--seed N] [--out DIR]``

Two pre-LayerNorm causal transformers, identical (embedding, blocks, MLPs, LayerNorms, LM
head, optimiser, data order, seed) except for the attention layer of each block:

* ``nala``: :class:`jaxbounds.attention.nala_layers.NaLaAttention` (causal): the NaLaFormer
  wrapper (q, k, v, g = Linear(C → 4C); norm-aware linear attention with 1-D RoPE; causal
  width-5 LePE; LayerNorm · SiLU(g); output projection);
* ``softmax``: standard multi-head softmax attention with the same 1-D RoPE
  (Dense q, k, v, out; ``jax.nn.dot_product_attention(is_causal=True)``).

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

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import char_model
from experiments._runner import RunConfig, format_table, progress, write_results
from jaxbounds.attention.nala_layers import NaLaAttention
from jaxbounds.attention.rope import apply_rope, rope_1d

# Meng et al., arXiv 2506.21137, ImageNet-1K top-1 (%).
PAPER_IMAGENET_TOP1 = {"NaLaFormer-XT": 79.1, "NaLaFormer-T": 82.6, "NaLaFormer-S": 84.3,
                       "NaLaFormer-B": 85.2, "NaLaFormer-L": 85.7}
ATTENTIONS = ("nala", "softmax")


@dataclasses.dataclass(frozen=True)
class NaLaSettings:
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
        """The GPU-sized run of ``--full``."""
        return cls(d_model=256, num_layers=4, num_heads=4, context=512, batch_size=32,
                   steps=5000, lr=1e-3, warmup=200, eval_every=250, eval_batches=32)

    @classmethod
    def for_run(cls, config: RunConfig) -> NaLaSettings:
        return cls.full() if config.full else cls()


# --- models -------------------------------------------------------------------------------


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention with 1-D RoPE on q and k."""

    num_heads: int

    @nn.compact
    def __call__(self, x):
        batch, seq, c = x.shape
        head_dim = c // self.num_heads
        split = lambda t: t.reshape(batch, seq, self.num_heads, head_dim)
        q, k, v = (split(nn.Dense(c, name=n)(x)) for n in ("query", "key", "value"))
        rope = rope_1d(seq, head_dim)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return nn.Dense(c, name="out")(y.reshape(batch, seq, c))


class Block(nn.Module):
    attention: str
    num_heads: int

    @nn.compact
    def __call__(self, x):
        h = nn.LayerNorm(name="ln_attn")(x)
        if self.attention == "nala":
            h = NaLaAttention(self.num_heads, causal=True, name="attn")(h)
        else:
            h = SoftmaxAttention(self.num_heads, name="attn")(h)
        x = x + h
        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.Dense(4 * x.shape[-1], name="fc_in")(h)
        return x + nn.Dense(x.shape[-1], name="fc_out")(nn.gelu(h))


class CharLM(nn.Module):
    """ids [batch, seq] -> logits [batch, seq, vocab]; positions come from RoPE (and LePE)."""

    vocab_size: int
    attention: str
    d_model: int
    num_layers: int
    num_heads: int

    @nn.compact
    def __call__(self, ids):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}.")
        x = nn.Embed(self.vocab_size, self.d_model,
                     embedding_init=nn.initializers.normal(0.02), name="embed")(ids)
        for i in range(self.num_layers):
            x = Block(self.attention, self.num_heads, name=f"block_{i}")(x)
        return nn.Dense(self.vocab_size, name="lm_head")(nn.LayerNorm(name="ln_final")(x))


# --- training -----------------------------------------------------------------------------


def train_one(attention: str, settings: NaLaSettings, vocab_size: int, train_tokens,
              val_batches, seed: int) -> dict:
    model = CharLM(vocab_size, attention, settings.d_model, settings.num_layers,
                   settings.num_heads)
    dummy = jnp.zeros((1, settings.context), jnp.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), dummy)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    schedule = optax.warmup_cosine_decay_schedule(0.0, settings.lr, settings.warmup,
                                                  settings.steps, settings.lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     optax.adamw(schedule, weight_decay=settings.weight_decay))
    opt_state = tx.init(params)

    def loss_fn(p, inputs, targets):
        return char_model.cross_entropy(model.apply(p, inputs), targets)

    @jax.jit
    def step(p, state, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(p, inputs, targets)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), state, loss

    eval_loss = jax.jit(loss_fn)

    def evaluate(p):
        return float(np.mean([float(eval_loss(p, x, y)) for x, y in val_batches]))

    rng = np.random.default_rng(seed)  # the same windows for both models
    train_curve, val_curve = [], []
    start = time.perf_counter()
    for i in progress(range(settings.steps), desc=f"train {attention}", leave=False):
        inputs, targets = char_model.sample_batch(rng, train_tokens, settings.batch_size,
                                                  settings.context)
        params, opt_state, loss = step(params, opt_state, inputs, targets)
        train_curve.append(float(loss))
        if (i + 1) % settings.eval_every == 0 or i + 1 == settings.steps:
            val_curve.append((i + 1, evaluate(params)))
    seconds = time.perf_counter() - start
    val_loss = val_curve[-1][1]
    return {"attention": attention, "params": n_params, "val_loss": val_loss,
            "val_bpc": val_loss / math.log(2), "train_curve": train_curve,
            "val_curve": val_curve, "train_seconds": seconds,
            "final_train_loss": float(np.mean(train_curve[-20:]))}


def plot_curves(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = {"nala": "tab:blue", "softmax": "tab:orange"}
    for name, res in results.items():
        curve = np.asarray(res["train_curve"])
        window = max(1, len(curve) // 30)
        smooth = np.convolve(curve, np.ones(window) / window, mode="valid")
        ax.plot(np.arange(window, len(curve) + 1), smooth, color=colors[name], alpha=0.5,
                label=f"{name} train")
        steps, vals = zip(*res["val_curve"], strict=True)
        ax.plot(steps, vals, "o-", color=colors[name],
                label=f"{name} val ({res['val_bpc']:.3f} bpc)")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats / char)")
    ax.set_title("Char-level Shakespeare: causal NaLa vs softmax attention")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(config: RunConfig, settings: NaLaSettings | None = None) -> dict:
    settings = settings or NaLaSettings.for_run(config)
    text = char_model.load_corpus()
    vocab = char_model.CharVocab.from_text(text)
    train_tokens, val_tokens = char_model.split_tokens(vocab.encode(text), settings.val_fraction)
    val_batches = char_model.eval_batches(val_tokens, settings.batch_size, settings.context,
                                          settings.eval_batches)
    results = {name: train_one(name, settings, vocab.size, train_tokens, val_batches,
                               config.seed) for name in ATTENTIONS}
    rows = [[name, r["params"], r["final_train_loss"], r["val_loss"], r["val_bpc"],
             r["train_seconds"]] for name, r in results.items()]
    print(format_table(["attention", "params", "train loss", "val loss", "val bpc",
                        "train s"], rows))
    out_dir = config.run_dir
    plot_curves(results, out_dir / "curves.png")
    payload = {
        "settings": dataclasses.asdict(settings),
        "seed": config.seed,
        "results": results,
        "bpc_gap_nala_minus_softmax": results["nala"]["val_bpc"] - results["softmax"]["val_bpc"],
        "paper": {"imagenet_top1": PAPER_IMAGENET_TOP1,
                  "note": "ImageNet-1K classification; not reproduced here (CPU scale)."},
    }
    path = write_results(out_dir / "results.json", payload)
    print(f"wrote {path} and {out_dir / 'curves.png'}")
    return payload
