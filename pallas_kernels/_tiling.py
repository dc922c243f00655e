"""Kernel scaffolding shared by every Pallas kernel: block sizes and the ``pallas_call``.

* :class:`BlockSizes`: the base of each kernel's frozen dataclass of tiles, with
  :meth:`~BlockSizes.validate` and the tuned caps of :meth:`~BlockSizes.tuned`, read from
  ``tuned_blocks.json`` (data per kernel, device kind and dtype).
* :func:`pallas_call`: the one argument builder of ``pl.pallas_call`` for ``"triton"`` and
  ``"interpret"``, named and wrapped in ``jax.named_scope`` for profiles.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import ClassVar

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import _backend, _checks

TUNED_PATH = pathlib.Path(__file__).with_name("tuned_blocks.json")


@functools.cache
def _tuned_table() -> dict:
    return json.loads(TUNED_PATH.read_text())


def fit(n: int, cap: int) -> int:
    """The tile for a dimension of size ``n``: ``cap``, but never above ``n`` rounded up to
    a power of two, and at least 16 (Triton's dot)."""
    return max(16, min(cap, pl.next_power_of_2(n)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockSizes:
    """Launch parameters common to every kernel; subclasses add their tiles and name them in
    ``TILES`` (each a power of two >= 16)."""

    TILES: ClassVar[tuple[str, ...]] = ()
    num_warps: int = 4
    num_stages: int = 2

    def validate(self) -> None:
        """Raise ValueError for a tile that is not a power of two >= 16, or bad launch
        parameters."""
        for field in self.TILES:
            _checks.check_tile(f"block_sizes.{field}", getattr(self, field))
        _checks.check_positive_int("block_sizes.num_warps", self.num_warps)
        _checks.check_positive_int("block_sizes.num_stages", self.num_stages)

    @staticmethod
    def tuned(kernel: str, dtype, device_kind: str | None) -> dict:
        """The tuned caps of ``kernel`` for ``dtype`` on ``device_kind`` (the ``"default"``
        entry when the card or dtype is not listed)."""
        table = _tuned_table()[kernel]
        entry = table.get(device_kind or "default", table["default"])
        name = jnp.dtype(dtype).name
        return dict(entry.get(name) or entry.get("any") or table["default"]["any"])


def width(n: int) -> int:
    """An array dimension padded for Triton: ``n`` rounded up to a power of two, >= 16."""
    return max(16, pl.next_power_of_2(n))


def pallas_call(kernel, *, name: str, blocks: BlockSizes, implementation: str, grid,
                in_specs, out_specs, out_shape, **static):
    """``pl.pallas_call(functools.partial(kernel, **static), ...)`` for ``"triton"``
    (Triton compiler params from ``blocks``) or ``"interpret"``, run under
    ``jax.named_scope(name)``."""
    extra = {}
    if implementation == "triton":
        extra["compiler_params"] = _backend.compiler_params(
            num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    call = pl.pallas_call(
        functools.partial(kernel, **static), grid=grid, in_specs=in_specs,
        out_specs=out_specs, out_shape=out_shape, interpret=implementation == "interpret",
        name=name, **extra)

    def run(*args):
        with jax.named_scope(name):
            return call(*args)

    return run
