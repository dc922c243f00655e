"""Attention: exact softmax (the reference), NaLaFormer norm-aware linear attention,
HyperAttention, RoPE, and the Flax modules over them.

- :mod:`~jaxbounds.attention.softmax`: exact attention, optionally with its log-sum-exp.
- :mod:`~jaxbounds.attention.rope`: 1-D and 2-D rotary position tables.
- :mod:`~jaxbounds.attention.nalaformer`: norm-aware linear attention (causal and not).
- :mod:`~jaxbounds.attention.hyper`: HyperAttention (sortLSH blocks + sampled residual).
- :mod:`~jaxbounds.attention.modules`: ``SelfAttention``, ``NaLaAttention``,
  ``NaLaAttention2D``.

Modules are imported on first use: ``from jaxbounds.attention import softmax``.
"""

import importlib

_MODULES = (
    "hyper", "lsh", "modules", "nala_layers", "nalaformer", "rope", "self_attention", "softmax",
)
__all__ = list(_MODULES)


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"jaxbounds.attention.{name}")
    raise AttributeError(f"module 'jaxbounds.attention' has no attribute {name!r}")
