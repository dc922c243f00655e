"""The one param-label scheme: a leaf is labelled from its name, the last key of its path.

Used by DoRA freezing (:func:`jaxbounds.adapters.dora.adapter_labels`) and the Lipschitz
projection (:func:`jaxbounds.lipschitz.optim.default_labels`). The name is read the same way
from a linen params dict (``{"params": {"Dense_0": {"kernel": ...}}}`` → ``"kernel"``), a
``FrozenDict``, and an ``nnx.State`` (whose flattened paths end in the Variable's ``.value``
attribute: ``('lin', 'kernel', .value)`` → ``"kernel"``). Label functions take the params
tree and return a tree of labels with its structure, so they can be given to
``optax.partition`` before the params exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["label_tree", "leaf_name"]

# Trailing path entries that are not part of a parameter's name: the ``value`` attribute of
# an NNX Variable (``raw_value`` in older Flax versions).
_VARIABLE_ATTRIBUTES = ("value", "raw_value")


def _key_text(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def leaf_name(path) -> str | None:
    """The parameter name at the end of a jax key path, or None for an empty path.

    ``GetAttrKey('value')`` entries at the end (NNX Variables) are skipped.
    """
    entries = list(path)
    while entries and isinstance(entries[-1], jax.tree_util.GetAttrKey) and (
            entries[-1].name in _VARIABLE_ATTRIBUTES):
        entries.pop()
    return _key_text(entries[-1]) if entries else None


def label_tree(params, rule: Callable[[str | None, Any], Any]):
    """``rule(leaf_name, leaf)`` for every leaf of ``params``, as a tree of its structure."""
    return jax.tree_util.tree_map_with_path(lambda path, x: rule(leaf_name(path), x), params)
