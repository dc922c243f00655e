"""Registry of every Pallas kernel, for the tests and ``experiments/gpu_check.py``.

Each kernel module calls :func:`register` at import time with a :class:`KernelSpec`:
how to make random inputs at a size, how to run it with an implementation, its reference,
its tolerance per dtype, and whether its VJP is checked too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

SIZES = ("small", "medium", "large")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What gpu_check and the tests need to know about one kernel.

    Attributes:
      name: unique key, e.g. ``"dora_matmul_bf16"``.
      family: the kernel family, for ``gpu_check --only FAMILY`` (e.g. ``"dora"``).
      make_inputs: ``(key, size) -> tuple`` of random inputs, ``size`` in :data:`SIZES`.
      run: ``(*inputs, implementation) -> out``.
      reference: ``(*inputs) -> out``, plain JAX.
      rtol: relative-error tolerance per dtype name of the output, e.g. ``{"float32": 1e-3}``.
      differentiable: when True, the VJPs for a random cotangent are compared as well.
      diff_argnums: which inputs the VJP comparison differentiates.
    """

    name: str
    family: str
    make_inputs: Callable[[Any, str], tuple]
    run: Callable[..., Any]
    reference: Callable[..., Any]
    rtol: Mapping[str, float]
    differentiable: bool = True
    diff_argnums: tuple[int, ...] = ()


KERNELS: dict[str, KernelSpec] = {}


def register(spec: KernelSpec) -> KernelSpec:
    if spec.name in KERNELS:
        raise ValueError(f"kernel {spec.name!r} is already registered")
    KERNELS[spec.name] = spec
    return spec


def families() -> list[str]:
    return sorted({spec.family for spec in KERNELS.values()})
