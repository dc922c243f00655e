"""Char-level language modelling on the bundled Shakespeare plays: data and a tiny model.

The corpus (``experiments/data/shakespeare.txt``) is nine Project Gutenberg plays, each
opening with a title line and then a line ``by William Shakespeare``. This module

* splits the corpus into :class:`Play` s (the title is the last non-empty line before each
  ``by William Shakespeare``; a play runs from its title to the next play's title);
* builds a :class:`CharVocab` and encodes text to int32 token ids;
* draws random training windows and fixed validation windows;
* defines :class:`CharTransformer`, the one char-level LM of the experiments: a small
  pre-LayerNorm causal transformer in ``flax.linen`` built on the library's
  ``SelfAttention`` (softmax or HyperAttention, switchable per layer on the same params) or
  ``NaLaAttention``, whose projections are ``nn.Dense`` layers with stable names
  (``block_{i}/attn/{query,key,value,out}``, ``block_{i}/mlp/{fc_in,fc_out}``, ``lm_head``),
  so that a regex can choose the layers to adapt;
* trains it: :func:`make_optimizer`, :func:`train`, :func:`make_evaluator`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments._output import progress
from jaxbounds.attention.modules import NaLaAttention, SelfAttention

CORPUS_PATH = pathlib.Path(__file__).parent / "data" / "shakespeare.txt"
AUTHOR_LINE = re.compile(r"^\s*by William Shakespeare\s*$", re.MULTILINE)


# --- corpus -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Play:
    """One play of the corpus: its title line and its full text (title included)."""

    title: str
    text: str


def load_corpus(path: pathlib.Path = CORPUS_PATH) -> str:
    """The bundled corpus as one string (UTF-8, newlines normalised to ``\\n``)."""
    return path.read_text(encoding="utf-8").replace("\r\n", "\n")


def _title_start(text: str, author_start: int) -> tuple[str, int]:
    """(title, offset of the title line) for the author line starting at ``author_start``:
    the last non-empty line before it."""
    end = author_start
    while True:
        line_end = text.rfind("\n", 0, end)
        if line_end < 0:
            raise ValueError(f"no title line before the author line at offset {author_start}.")
        line_start = text.rfind("\n", 0, line_end) + 1
        title = text[line_start:line_end].strip()
        if title:
            return title, line_start
        end = line_start


def split_plays(text: str) -> list[Play]:
    """The plays of ``text``, in order. Raises ValueError when no author line is found."""
    authors = [m.start() for m in AUTHOR_LINE.finditer(text)]
    if not authors:
        raise ValueError("no 'by William Shakespeare' line found: is this the bundled corpus?")
    titles = [_title_start(text, start) for start in authors]
    starts = [offset for _, offset in titles] + [len(text)]
    return [
        Play(title=title, text=text[starts[i]:starts[i + 1]].strip() + "\n")
        for i, (title, _) in enumerate(titles)
    ]


# --- vocabulary ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CharVocab:
    """A sorted character vocabulary; ids are positions in ``chars``."""

    chars: tuple[str, ...]

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        return cls(tuple(sorted(set(text))))

    @property
    def size(self) -> int:
        return len(self.chars)

    def _codepoints(self) -> np.ndarray:
        return np.array([ord(c) for c in self.chars], dtype=np.uint32)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of ``text``; raises ValueError on a character outside the vocabulary."""
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        table = self._codepoints()
        ids = np.searchsorted(table, points)
        ids = np.minimum(ids, len(table) - 1)
        unknown = table[ids] != points
        if unknown.any():
            bad = sorted({chr(p) for p in points[unknown]})
            raise ValueError(f"characters outside the vocabulary: {bad!r}.")
        return ids.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1))


# --- batches ------------------------------------------------------------------------------


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): the last ``val_fraction`` of ``tokens`` is the validation part."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}.")
    cut = int(round(len(tokens) * (1.0 - val_fraction)))
    return tokens[:cut], tokens[cut:]


def _windows(tokens: np.ndarray, starts: np.ndarray, context: int):
    index = starts[:, None] + np.arange(context + 1)[None, :]
    window = tokens[index]
    return window[:, :-1], window[:, 1:]


def sample_batch(rng: np.random.Generator, tokens: np.ndarray, batch_size: int, context: int):
    """(inputs, targets), each int32 [batch_size, context], from random windows; the targets
    are the inputs shifted by one character."""
    if len(tokens) <= context:
        raise ValueError(f"need more than context={context} tokens, got {len(tokens)}.")
    starts = rng.integers(0, len(tokens) - context, size=batch_size)
    return _windows(tokens, starts, context)


def eval_batches(tokens: np.ndarray, batch_size: int, context: int, max_batches: int):
    """Fixed, non-overlapping validation windows: a list of at most ``max_batches`` full
    (inputs, targets) batches, each int32 [batch_size, context]."""
    n_windows = (len(tokens) - 1) // context
    n_batches = min(max_batches, n_windows // batch_size)
    if n_batches < 1:
        raise ValueError(
            f"{len(tokens)} tokens make no full batch of {batch_size} windows of {context}."
        )
    starts = np.arange(n_batches * batch_size) * context
    inputs, targets = _windows(tokens, starts, context)
    return [
        (inputs[i * batch_size:(i + 1) * batch_size], targets[i * batch_size:(i + 1) * batch_size])
        for i in range(n_batches)
    ]


# --- model --------------------------------------------------------------------------------

ATTENTIONS = ("softmax", "nala", "hyper")


@dataclasses.dataclass(frozen=True)
class CharModelConfig:
    """Sizes of :class:`CharTransformer`, its attention and the HyperAttention settings."""

    vocab_size: int
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    context: int = 64
    mlp_ratio: int = 4
    attention: str = "softmax"  # every block's attention, one of ATTENTIONS
    hyper_layers: int = 0  # the last this many blocks use "hyper" (same params)
    positions: bool = True  # learned absolute positions ("nala" has RoPE and LePE inside)
    rope: bool = False  # 1-D RoPE on q, k in SelfAttention (instead of, or with, positions)
    block_size: int = 256
    sample_size: int = 256
    num_projections: int = 7
    min_seq_len: int = 4096


class MLP(nn.Module):
    """Two Dense layers, ``fc_in`` (GELU) and ``fc_out``."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, name="fc_in")(x))
        return nn.Dense(x.shape[-1], name="fc_out")(h)


class Block(nn.Module):
    """Pre-LayerNorm block: the library's causal ``SelfAttention`` (Dense ``query``, ``key``,
    ``value``, ``out``) or, for "nala", the NaLaFormer wrapper ``NaLaAttention``; an MLP."""

    config: CharModelConfig
    attention: str

    @nn.compact
    def __call__(self, x):
        c = self.config
        if self.attention == "nala":
            attn = NaLaAttention(c.num_heads, causal=True, name="attn")
        else:
            attn = SelfAttention(c.num_heads, c.d_model, attention=self.attention, causal=True,
                                 block_size=c.block_size, sample_size=c.sample_size,
                                 num_projections=c.num_projections, min_seq_len=c.min_seq_len,
                                 rope=c.rope, name="attn")
        x = x + attn(nn.LayerNorm(name="ln_attn")(x))
        return x + MLP(c.mlp_ratio * x.shape[-1], name="mlp")(nn.LayerNorm(name="ln_mlp")(x))


class CharTransformer(nn.Module):
    """Causal char-level transformer LM: ids [batch, seq] -> logits [batch, seq, vocab].

    With ``hyper_layers`` > 0 the last blocks run HyperAttention: apply with
    ``rngs={"hyper": key}``."""

    config: CharModelConfig

    @nn.compact
    def __call__(self, ids):
        cfg = self.config
        if cfg.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {cfg.attention!r}.")
        if cfg.d_model % cfg.num_heads:
            raise ValueError(
                f"d_model={cfg.d_model} must be divisible by num_heads={cfg.num_heads}."
            )
        if ids.shape[-1] > cfg.context:
            raise ValueError(f"sequence length {ids.shape[-1]} exceeds context={cfg.context}.")
        embed_init = nn.initializers.normal(0.02)
        x = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=embed_init, name="embed")(ids)
        if cfg.positions:
            x = x + self.param("pos_embed", embed_init, (cfg.context, cfg.d_model))[:ids.shape[-1]]
        for i in range(cfg.num_layers):
            patched = i >= cfg.num_layers - cfg.hyper_layers
            x = Block(cfg, "hyper" if patched else cfg.attention, name=f"block_{i}")(x)
        x = nn.LayerNorm(name="ln_final")(x)
        return nn.Dense(cfg.vocab_size, name="lm_head")(x)


# Every projection inside the blocks (not the embeddings, the norms or the LM head).
BLOCK_DENSE_PATTERN = r"block_\d+/(attn/(query|key|value|out)|mlp/(fc_in|fc_out))$"


def init_params(model: CharTransformer, key):
    """Linen params of ``model`` for a [1, context] input."""
    return model.init(key, jnp.zeros((1, model.config.context), jnp.int32))


def cross_entropy(logits, targets):
    """Mean next-character cross-entropy, in nats."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


# --- training -----------------------------------------------------------------------------


def corpus_split(val_fraction: float):
    """(vocab, train tokens, validation tokens) of the whole corpus; the tail is validation."""
    text = load_corpus()
    vocab = CharVocab.from_text(text)
    return (vocab, *split_tokens(vocab.encode(text), val_fraction))


def make_optimizer(peak_lr: float, steps: int, *, warmup: int | None = None,
                   weight_decay: float = 0.01) -> optax.GradientTransformation:
    """Clip at 1, AdamW; linear warm-up (default 10% of the steps), cosine decay to 10%."""
    warmup = max(1, steps // 10) if warmup is None else warmup
    schedule = optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup, max(steps, warmup + 1),
                                                  end_value=0.1 * peak_lr)
    return optax.chain(optax.clip_by_global_norm(1.0),
                       optax.adamw(schedule, weight_decay=weight_decay))


def lm_loss(model, **apply_kwargs) -> Callable:
    """loss(params, inputs, targets): the mean cross-entropy of ``model``."""
    return lambda params, x, y: cross_entropy(model.apply(params, x, **apply_kwargs), y)


def make_evaluator(loss_fn: Callable, batches) -> Callable[[Any], Any]:
    """params -> the mean over the fixed validation ``batches`` of ``loss_fn`` (a float, or
    a tuple of floats when ``loss_fn`` returns several values)."""
    batch_loss = jax.jit(loss_fn)

    def evaluate(params):
        values = np.array([np.atleast_1d(jax.device_get(batch_loss(params, x, y)))
                           for x, y in batches], np.float64).mean(0)
        return float(values[0]) if values.size == 1 else tuple(map(float, values))

    return evaluate


def train(params, tx, loss_fn, sample, steps: int, *, desc: str, evaluate=None,
          eval_every: int = 0, eval_at_start: bool = True, post_update=None,
          show_progress: bool = True):
    """Run ``steps`` of ``tx`` on batches from ``sample()``; ``post_update(params, step)``
    (jitted) follows each update.

    Returns (params, per-step training losses, [(step, held-out loss)] when ``evaluate``:
    every ``eval_every`` steps from step 0 (or from ``eval_every``), and after the last step).
    """

    @jax.jit
    def train_step(params, opt_state, step, inputs, targets):
        loss, grads = jax.value_and_grad(loss_fn)(params, inputs, targets)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return post_update(params, step) if post_update else params, opt_state, loss

    opt_state = tx.init(params)
    losses, evals = [], []
    bar = progress(range(steps), desc=desc, leave=False) if show_progress else range(steps)
    for step in bar:
        if evaluate and eval_every and step % eval_every == 0 and (step or eval_at_start):
            evals.append((step, evaluate(params)))
        params, opt_state, loss = train_step(params, opt_state, step, *sample())
        losses.append(loss)
        if show_progress and (step % 25 == 0 or step == steps - 1):
            bar.set_postfix(loss=f"{float(loss):.3f}")
    if evaluate is not None:
        evals.append((steps, evaluate(params)))
    return params, [float(v) for v in losses], evals


def batch_sampler(rng: np.random.Generator, tokens, batch_size: int, context: int):
    """() -> a random (inputs, targets) batch of ``tokens``."""
    return lambda: sample_batch(rng, tokens, batch_size, context)
