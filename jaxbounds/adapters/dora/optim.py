"""Train only the adapter: label the params and freeze the rest with ``optax.partition``.

``optax.masked`` alone does not freeze anything: it passes the *unmasked* updates through
untouched (raw gradients, and AdamW's decoupled weight decay never reaches them either way).
Freezing needs ``optax.set_to_zero()`` on the base leaves, which ``freeze_base`` does::

    tx = freeze_base(optax.contrib.muon(1e-3))          # labels computed from the params
    tx = freeze_base(optax.contrib.muon(1e-3), params)  # also checks params has an adapter

Labels are read from each leaf's name (:mod:`jaxbounds._labels`), in linen params dicts and
in ``nnx.State`` trees alike.
"""

from __future__ import annotations

import jax
import optax

from jaxbounds._labels import label_tree
from jaxbounds.adapters.dora.dense import ADAPTER_PARAM_NAMES

ADAPTER = "adapter"
FROZEN = "frozen"


def adapter_labels(params):
    """A pytree of ``"adapter"`` (``lora_a``, ``lora_b``, ``magnitude``) / ``"frozen"``
    (everything else) labels with the structure of ``params`` (linen dict or ``nnx.State``)."""
    return label_tree(params, lambda name, _: ADAPTER if name in ADAPTER_PARAM_NAMES else FROZEN)


def freeze_base(tx: optax.GradientTransformation, params=None) -> optax.GradientTransformation:
    """``tx`` on the adapter leaves, ``optax.set_to_zero()`` on every other leaf.

    Args:
      tx: any optax transformation (``optax.adamw``, ``optax.contrib.muon``, a chain...).
      params: optional params tree (only its structure and leaf names are used). Without it
        the labels are computed by :func:`adapter_labels` from the params the transform
        receives, so it can be built before the params exist.

    Raises:
      ValueError: when ``params`` is given and holds no adapter leaf (forgot
        ``to_dora_params``?).
    """
    if not isinstance(tx, optax.GradientTransformation):
        raise TypeError(f"tx must be an optax.GradientTransformation, got {type(tx).__name__}.")
    if params is not None and ADAPTER not in jax.tree_util.tree_leaves(adapter_labels(params)):
        raise ValueError(
            "params holds no adapter leaf (lora_a, lora_b, magnitude); convert them with "
            "to_dora_params or build the model with DoRADense first."
        )
    return optax.partition({ADAPTER: tx, FROZEN: optax.set_to_zero()}, adapter_labels)
