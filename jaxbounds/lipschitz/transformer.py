"""Lipschitz MLP and transformer: the architecture of Newhouse et al. (arXiv 2507.13338).

"Training Transformers with Enforced Lipschitz Constants" (Newhouse, Hess, Cesista,
Zahorodnii, Bernstein, Isola), as its reference code (Arongil/lipschitz-transformers, on the
``modula`` library) builds it:

* **no layer norm**, no biases, no QK norm, no logit soft-capping;
* every sub-block (attention, MLP) is a convex-combination residual
  ``x ← (1 − α)·x + α·block(x)`` with ``α = residual_scale / (2N)`` for ``N`` transformer
  blocks (``num_blocks``), so each of the ``2N`` sub-blocks takes the same share (the
  reference's ``GPT`` uses ``residual_scale / (2 * num_blocks)`` for both sub-blocks);
* causal multi-head softmax attention with RoPE on queries and keys, logits scaled by
  ``1/d`` (``d`` = head dim, not ``1/√d``), and the attention output multiplied by ``1/3``
  before the output projection: ``out = W_o · (⅓·softmax(q kᵀ/d) v)``;
* MLP ``W_out · gelu(W_in x)/c`` with hidden width ``mlp_ratio·d_model``, where ``c`` is the
  maximum slope of GeLU **rounded up** (:data:`GELU_DIVISOR`), so the activation is
  1-Lipschitz: max GeLU′ = Φ(√2) + √2·φ(√2) = 1.1289041452 for the exact erf form
  (divisor 1.128905) and 1.1289930687 at x ≈ 1.4185 for the tanh form that
  ``jax.nn.gelu`` uses by default (divisor 1.128994). The paper's 1.1289 is too small for
  both, so its GeLU is 1.0000037- resp. 1.0000825-Lipschitz;
* a token embedding whose rows have RMS norm 1 at init (the reference normalises the
  embedding columns to RMS 1 and projects them back to RMS ≤ 1 during training:
  :func:`project_embedding`), and a linear unembedding constrained like the other weights.

**Norms.** Activations are measured per token in the RMS norm ``rms(x) = ‖x‖₂/√d`` and a
sequence by the maximum over positions. A linear map ``W`` (Flax kernel ``[fan_in, fan_out]``,
``y = x @ W``) then has the operator norm ``‖W‖_RMS→RMS = √(fan_in/fan_out)·σ_max(W)``;
``w_max`` and every weight norm in this package use it (:func:`rms_operator_norm`).
Weights are initialised *inside* the constraint set: semi-orthogonal matrices scaled so that
every singular value gives the RMS→RMS norm ``init_norm`` (set ``init_norm ≤ w_max``), or
zero for the output projections when ``zero_init`` (the reference's ``zero_init``).

**Certificate.** :func:`jaxbounds.lipschitz.certificate.lipschitz_bound` bounds the map
from embeddings to logits (:meth:`LipschitzTransformer.from_embeddings`) on the domain of
sequences whose tokens all have RMS norm ≤ the embedding's largest row RMS.

Layout: attention ``[batch, seq, heads, head_dim]``. Parameter names are stable:
``embedding``, ``blocks_{i}/attn/{query,key,value,out}/kernel``,
``blocks_{i}/mlp/{fc_in,fc_out}/kernel``, ``unembed/kernel``; every constrained matrix is a
leaf called ``kernel`` (:func:`constraint_labels`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbounds._checks import check_bool, check_choice, check_int, check_number
from jaxbounds._labels import label_tree
from jaxbounds._linalg import rms_operator_norm
from jaxbounds.attention.rope import apply_rope, rope_1d
from jaxbounds.attention.softmax import softmax_attention

__all__ = [
    "ATTENTION_TYPES",
    "GELU_DIVISOR",
    "GELU_MAX_SLOPE",
    "LipschitzDense",
    "LipschitzMLP",
    "LipschitzMLPConfig",
    "LipschitzTransformer",
    "LipschitzTransformerConfig",
    "constraint_labels",
    "lipschitz_gelu",
    "project_embedding",
    "rms_operator_norm",
    "semi_orthogonal_init",
]

# max_x d/dx gelu(x), keyed by ``approximate``. Exact form: gelu″ = φ(x)(2 − x²) vanishes at
# √2, so the maximum is Φ(√2) + √2·φ(√2) (closed form, float64). Tanh form: the root of
# gelu″ at x ≈ 1.418504 found by Brent's method in float64 (tests recheck both on a grid).
GELU_MAX_SLOPE: dict[bool, float] = {False: 1.1289041451851547, True: 1.128993068658772}
# The divisors: the maxima rounded *up* at the 6th decimal, so gelu/c is 1-Lipschitz.
GELU_DIVISOR: dict[bool, float] = {
    k: math.ceil(v * 1e6) / 1e6 for k, v in GELU_MAX_SLOPE.items()
}

ATTENTION_TYPES = ("softmax",)
_PLANNED_ATTENTION = ("nala", "hyper")
MLP_ACTIVATIONS = ("relu", "gelu", "gelu_tanh")


def lipschitz_gelu(x, *, approximate: bool = True):
    """``gelu(x) / GELU_DIVISOR[approximate]``: GeLU rescaled to be 1-Lipschitz.

    Also ``|out| ≤ |x|/c``, since gelu(x) = x·Φ(x) (or x·½(1 + tanh(…))) with a factor in
    [0, 1]; the certificate uses this to carry activation norms.
    """
    return jax.nn.gelu(x, approximate=approximate) / GELU_DIVISOR[bool(approximate)]


def semi_orthogonal_init(norm: float):
    """Initializer for a kernel ``[fan_in, fan_out]`` with every singular value equal to
    ``norm·√(fan_out/fan_in)``, i.e. RMS→RMS operator norm exactly ``norm`` (the reference
    orthogonalises a Gaussian and scales by √(fan_out/fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in, fan_out = shape
        q = jax.nn.initializers.orthogonal()(key, shape, jnp.float32)
        return (q * (norm * math.sqrt(fan_out / fan_in))).astype(dtype)

    return init


def _positive(name: str, value) -> None:
    check_number(name, value, low=0, low_open=True)


@dataclasses.dataclass(frozen=True)
class LipschitzTransformerConfig:
    """Sizes and options of :class:`LipschitzTransformer` (hashable: a static jit argument).

    The paper's Shakespeare model: ``d_model=256, num_blocks=3, num_heads=4, context=256``.
    """

    vocab_size: int
    d_model: int = 256
    num_blocks: int = 3
    num_heads: int = 4
    context: int = 256
    mlp_ratio: int = 4
    attention: str = "softmax"
    gelu_approximate: bool = True  # jax.nn.gelu's default, as in the reference
    residual_scale: float = 1.0  # α = residual_scale / (2·num_blocks)
    final_scale: float = 1.0  # logits = final_scale · unembed(x)
    init_norm: float = 1.0  # RMS→RMS norm of every weight at init (keep ≤ w_max)
    zero_init: bool = True  # attention and MLP output projections start at 0
    rope_base: float = 10000.0
    embed_rms: float = 1.0  # RMS norm of each embedding row at init

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "num_blocks", "num_heads", "context",
                     "mlp_ratio"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("residual_scale", "final_scale", "init_norm", "rope_base", "embed_rms"):
            _positive(name, getattr(self, name))
        if self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ValueError(
                f"d_model={self.d_model} must split into num_heads={self.num_heads} heads of "
                "an even head_dim (RoPE rotates feature pairs).")
        if self.residual_scale > 2 * self.num_blocks:
            raise ValueError(
                f"residual_scale must be <= 2*num_blocks={2 * self.num_blocks} so that "
                f"alpha = residual_scale/(2N) <= 1 (a convex combination), got "
                f"{self.residual_scale!r}.")
        if self.attention in _PLANNED_ATTENTION:
            raise NotImplementedError(
                f"attention={self.attention!r} is not available in LipschitzTransformer yet: "
                "its Lipschitz factor has not been derived for the certificate. Only "
                f"{ATTENTION_TYPES} is implemented.")
        check_choice("attention", self.attention, ATTENTION_TYPES)
        check_bool("gelu_approximate", self.gelu_approximate)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def alpha(self) -> float:
        """The residual share of each sub-block, residual_scale / (2·num_blocks)."""
        return self.residual_scale / (2 * self.num_blocks)


@dataclasses.dataclass(frozen=True)
class LipschitzMLPConfig:
    """A bias-free MLP ``in_features → features[0] → … → features[-1]`` with 1-Lipschitz
    activations between the layers (the reference's CIFAR MLP uses ReLU)."""

    in_features: int
    features: tuple[int, ...]
    activation: str = "relu"  # "relu", "gelu" (erf form) or "gelu_tanh", each 1-Lipschitz
    final_scale: float = 1.0
    init_norm: float = 1.0

    def __post_init__(self):
        check_int("in_features", self.in_features, minimum=1)
        if not isinstance(self.features, tuple) or not self.features:
            raise ValueError(
                f"features must be a non-empty tuple of layer widths, got {self.features!r}.")
        for width in self.features:
            check_int("features[i]", width, minimum=1)
        check_choice("activation", self.activation, MLP_ACTIVATIONS)
        _positive("final_scale", self.final_scale)
        _positive("init_norm", self.init_norm)


# --- layers -------------------------------------------------------------------------------


class LipschitzDense(nn.Module):
    """Bias-free linear map ``y = x @ kernel``, kernel ``[fan_in, fan_out]`` initialised with
    RMS→RMS norm ``init_norm`` (or 0 with ``zero_init``)."""

    features: int
    init_norm: float = 1.0
    zero_init: bool = False

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.zeros if self.zero_init else semi_orthogonal_init(self.init_norm)
        kernel = self.param("kernel", init, (x.shape[-1], self.features), jnp.float32)
        kernel = kernel.astype(jnp.promote_types(kernel.dtype, x.dtype))
        return jnp.einsum("...i,io->...o", x.astype(kernel.dtype), kernel)


def _activation(name: str):
    if name == "relu":
        return jax.nn.relu
    return lambda x: lipschitz_gelu(x, approximate=name == "gelu_tanh")


class LipschitzMLP(nn.Module):
    """``final_scale · W_L σ(… σ(W_1 x))`` on ``x [..., in_features]``; σ 1-Lipschitz."""

    config: LipschitzMLPConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        if x.shape[-1] != cfg.in_features:
            raise ValueError(
                f"x must end in in_features={cfg.in_features}, got shape {x.shape}.")
        act = _activation(cfg.activation)
        for i, width in enumerate(cfg.features):
            if i:
                x = act(x)
            x = LipschitzDense(width, init_norm=cfg.init_norm, name=f"dense_{i}")(x)
        return cfg.final_scale * x


def _rope_tables(seq: int, head_dim: int, base: float, dtype):
    """The ``(sin, cos)`` tables of ``rope_1d``; for float64 activations the angles are
    taken in float64 (``rope_1d`` builds float32 tables), so that a float64 forward pass is
    float64 throughout (the soundness tests compare it with NumPy to 1e-10)."""
    if dtype != jnp.float64:
        return rope_1d(seq, head_dim, base=base)
    freqs = base ** (-2.0 * jnp.arange(head_dim // 2, dtype=dtype) / head_dim)
    angles = jnp.arange(seq, dtype=dtype)[:, None] * freqs[None, :]
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.sin(angles), jnp.cos(angles)


class LipschitzAttention(nn.Module):
    """``W_o · (⅓ · softmax_causal(rope(q) rope(k)ᵀ / d) v)`` over ``num_heads`` heads."""

    config: LipschitzTransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        batch, seq, d_model = x.shape
        heads, head_dim = cfg.num_heads, cfg.head_dim

        def project(name):
            y = LipschitzDense(d_model, init_norm=cfg.init_norm, name=name)(x)
            return y.reshape(batch, seq, heads, head_dim)

        q, k, v = project("query"), project("key"), project("value")
        rope = _rope_tables(seq, head_dim, cfg.rope_base, q.dtype)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        y = softmax_attention(q, k, v, causal=True, scale=1.0 / head_dim) / 3.0
        y = y.reshape(batch, seq, d_model)
        return LipschitzDense(d_model, init_norm=cfg.init_norm, zero_init=cfg.zero_init,
                              name="out")(y)


class LipschitzFeedForward(nn.Module):
    """``W_out · gelu(W_in x)/c`` with hidden width ``mlp_ratio · d_model``."""

    config: LipschitzTransformerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.config
        h = LipschitzDense(cfg.mlp_ratio * cfg.d_model, init_norm=cfg.init_norm,
                           name="fc_in")(x)
        h = lipschitz_gelu(h, approximate=cfg.gelu_approximate)
        return LipschitzDense(cfg.d_model, init_norm=cfg.init_norm, zero_init=cfg.zero_init,
                              name="fc_out")(h)


class LipschitzBlock(nn.Module):
    """Two convex-combination residuals: attention, then MLP, each with share α."""

    config: LipschitzTransformerConfig

    @nn.compact
    def __call__(self, x):
        alpha = self.config.alpha
        x = (1 - alpha) * x + alpha * LipschitzAttention(self.config, name="attn")(x)
        return (1 - alpha) * x + alpha * LipschitzFeedForward(self.config, name="mlp")(x)


def _embedding_init(rms: float):
    def init(key, shape, dtype=jnp.float32):
        w = jax.random.normal(key, shape, jnp.float32)
        w = w / jnp.sqrt(jnp.mean(w * w, axis=-1, keepdims=True)) * rms
        return w.astype(dtype)

    return init


class LipschitzTransformer(nn.Module):
    """Causal char/token LM: ids ``[batch, seq]`` → logits ``[batch, seq, vocab]``.

    :meth:`from_embeddings` is the continuous part that the certificate bounds:
    ``x [batch, seq, d_model]`` → logits.
    """

    config: LipschitzTransformerConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param("embedding", _embedding_init(cfg.embed_rms),
                                    (cfg.vocab_size, cfg.d_model), jnp.float32)
        self.blocks = [LipschitzBlock(cfg) for _ in range(cfg.num_blocks)]
        self.unembed = LipschitzDense(cfg.vocab_size, init_norm=cfg.init_norm)

    def embed(self, ids):
        if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"ids must be integer [batch, seq], got {ids.dtype} {ids.shape}.")
        return jnp.take(self.embedding, ids, axis=0)

    def from_embeddings(self, x):
        cfg = self.config
        if x.ndim != 3 or x.shape[-1] != cfg.d_model:
            raise ValueError(
                f"x must be [batch, seq, d_model={cfg.d_model}], got shape {x.shape}.")
        if x.shape[1] > cfg.context:
            raise ValueError(f"sequence length {x.shape[1]} exceeds context={cfg.context}.")
        for block in self.blocks:
            x = block(x)
        return cfg.final_scale * self.unembed(x)

    def __call__(self, ids):
        return self.from_embeddings(self.embed(ids))


# --- helpers for training -----------------------------------------------------------------


def constraint_labels(params, *, constrained: str = "spectral", embedding: str = "embedding",
                      other: str = "none"):
    """A pytree of labels over ``params``: ``constrained`` for every matrix leaf called
    ``kernel`` (the spectrally constrained weights), ``embedding`` for the embedding table
    (row-RMS constrained by :func:`project_embedding`), ``other`` for anything else."""
    names = {"kernel": constrained, "embedding": embedding}
    return label_tree(params, lambda name, _: names.get(name, other))


def project_embedding(params, max_rms: float = 1.0):
    """Scale every embedding row with RMS norm > ``max_rms`` back to ``max_rms`` (the
    reference's ``embed_project`` with ``max_inflation_factor=1``); other leaves unchanged.
    Keeps the certificate's domain (tokens of RMS ≤ ``max_rms``) fixed during training."""
    _positive("max_rms", max_rms)

    def project(name, leaf):
        if name != "embedding":
            return leaf
        rms = jnp.sqrt(jnp.mean(leaf * leaf, axis=-1, keepdims=True))
        return leaf / jnp.maximum(1.0, rms / max_rms)

    return label_tree(params, project)


def head_slices(config: LipschitzTransformerConfig) -> Sequence[slice]:
    """The column slices of a query/key/value kernel ``[d_model, d_model]`` per head."""
    d = config.head_dim
    return [slice(h * d, (h + 1) * d) for h in range(config.num_heads)]
