"""Char-level language modelling on the bundled Shakespeare plays: data and a tiny model.

The corpus (``experiments/data/shakespeare.txt``) is nine Project Gutenberg plays, each
opening with a title line and then a line ``by William Shakespeare``. This module

* splits the corpus into :class:`Play` s (the title is the last non-empty line before each
  ``by William Shakespeare``; a play runs from its title to the next play's title);
* builds a :class:`CharVocab` and encodes text to int32 token ids;
* draws random training windows and fixed validation windows;
* defines :class:`CharTransformer`, a small pre-LayerNorm causal transformer in
  ``flax.linen`` whose projections are ``nn.Dense`` layers with stable names
  (``block_{i}/attn/{query,key,value,out}``, ``block_{i}/mlp/{fc_in,fc_out}``, ``lm_head``),
  so that a regex can choose the layers to adapt.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

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


@dataclasses.dataclass(frozen=True)
class CharModelConfig:
    """Sizes of :class:`CharTransformer`."""

    vocab_size: int
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    context: int = 64
    mlp_ratio: int = 4


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with Dense ``query``/``key``/``value``/``out``."""

    num_heads: int

    @nn.compact
    def __call__(self, x):
        batch, seq, d_model = x.shape
        head_dim = d_model // self.num_heads
        split = lambda t: t.reshape(batch, seq, self.num_heads, head_dim)
        q = split(nn.Dense(d_model, name="query")(x))
        k = split(nn.Dense(d_model, name="key")(x))
        v = split(nn.Dense(d_model, name="value")(x))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return nn.Dense(d_model, name="out")(y.reshape(batch, seq, d_model))


class MLP(nn.Module):
    """Two Dense layers, ``fc_in`` (GELU) and ``fc_out``."""

    hidden: int

    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(self.hidden, name="fc_in")(x))
        return nn.Dense(x.shape[-1], name="fc_out")(h)


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    num_heads: int
    mlp_ratio: int

    @nn.compact
    def __call__(self, x):
        x = x + CausalSelfAttention(self.num_heads, name="attn")(nn.LayerNorm(name="ln_attn")(x))
        hidden = self.mlp_ratio * x.shape[-1]
        return x + MLP(hidden, name="mlp")(nn.LayerNorm(name="ln_mlp")(x))


class CharTransformer(nn.Module):
    """Causal char-level transformer LM: ids [batch, seq] -> logits [batch, seq, vocab]."""

    config: CharModelConfig

    @nn.compact
    def __call__(self, ids):
        cfg = self.config
        if cfg.d_model % cfg.num_heads:
            raise ValueError(
                f"d_model={cfg.d_model} must be divisible by num_heads={cfg.num_heads}."
            )
        if ids.shape[-1] > cfg.context:
            raise ValueError(f"sequence length {ids.shape[-1]} exceeds context={cfg.context}.")
        embed_init = nn.initializers.normal(0.02)
        x = nn.Embed(cfg.vocab_size, cfg.d_model, embedding_init=embed_init, name="embed")(ids)
        positions = self.param("pos_embed", embed_init, (cfg.context, cfg.d_model))
        x = x + positions[: ids.shape[-1]]
        for i in range(cfg.num_layers):
            x = Block(cfg.num_heads, cfg.mlp_ratio, name=f"block_{i}")(x)
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
