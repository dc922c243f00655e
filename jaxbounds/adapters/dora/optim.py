"""Train only the adapter: label the params and freeze the rest with ``optax.partition``.

``optax.masked`` alone does not freeze anything: it passes the *unmasked* updates through
untouched (raw gradients, and AdamW's decoupled weight decay never reaches them either way).
Freezing needs ``optax.set_to_zero()`` on the base leaves, which ``freeze_base`` does::

    tx = freeze_base(optax.contrib.muon(1e-3), params)
"""

from __future__ import annotations

import jax
import optax

from jaxbounds.adapters.dora.dense import ADAPTER_PARAM_NAMES

ADAPTER = "adapter"
FROZEN = "frozen"


def _leaf_name(path) -> str:
    last = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return str(last)


def adapter_labels(params):
    """A pytree of ``"adapter"`` (``lora_a``, ``lora_b``, ``magnitude``) / ``"frozen"``
    (everything else) labels with the structure of ``params``."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: ADAPTER if path and _leaf_name(path) in ADAPTER_PARAM_NAMES else FROZEN,
        params,
    )


def freeze_base(tx: optax.GradientTransformation, params) -> optax.GradientTransformation:
    """``tx`` on the adapter leaves, ``optax.set_to_zero()`` on every other leaf.

    Args:
      tx: any optax transformation (``optax.adamw``, ``optax.contrib.muon``, a chain...).
      params: the params tree (only its structure and leaf names are used).

    Raises:
      ValueError: when ``params`` holds no adapter leaf (forgot ``to_dora_params``?).
    """
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}.")
    labels = adapter_labels(params)
    if ADAPTER not in jax.tree_util.tree_leaves(labels):
        raise ValueError(
            "params holds no adapter leaf (lora_a, lora_b, magnitude); convert them with "
            "to_dora_params or build the model with DoRADense first."
        )
    return optax.partition({ADAPTER: tx, FROZEN: optax.set_to_zero()}, labels)
