"""Registry of every Pallas kernel, and the records of which kernels are verified on a GPU.

Each kernel module calls :func:`register` at import time with a :class:`KernelSpec`: how to
make random inputs at a size, how to run it with an implementation, its reference, its
tolerance per dtype, and whether its VJP is checked too. ``experiments/gpu_check.py``
iterates :data:`KERNELS`.

The GPU records are data, in ``gpu_verified.json`` beside this module: one record per
(kernel, dtype, device kind), written by :func:`record_verified` from a GPU check. A record
says whether every check of that kernel and dtype passed (``verified``) and whether the
kernel was faster than XLA at the largest size checked (``preferred``). The default
implementation sequence runs a Triton kernel only where both hold.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax.numpy as jnp

SIZES = ("small", "medium", "large")
RECORDS_PATH = pathlib.Path(__file__).with_name("gpu_verified.json")
_DTYPES = ("bfloat16", "float16", "float32", "float64")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """What gpu_check and the tests need to know about one kernel.

    Attributes:
      name: unique key, ``"<op>_<dtype>"``, e.g. ``"dora_matmul_bfloat16"``.
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
    """Add ``spec`` under its name. Idempotent: registering a name again (a module
    re-imported or reloaded) replaces the entry instead of raising."""
    KERNELS[spec.name] = spec
    return spec


def families() -> list[str]:
    return sorted({spec.family for spec in KERNELS.values()})


def split_name(name: str) -> tuple[str, str]:
    """``"dora_matmul_bfloat16"`` -> ``("dora_matmul", "bfloat16")``."""
    op, _, dtype = name.rpartition("_")
    if not op or dtype not in _DTYPES:
        raise ValueError(f"kernel name must be '<op>_<dtype>' with dtype one of {_DTYPES}, "
                         f"got {name!r}.")
    return op, dtype


# --- GPU records ---------------------------------------------------------------------------

_CACHE: dict[pathlib.Path, list[dict]] = {}


def verified_records(path=None) -> list[dict]:
    """The records of ``path`` (default: the ``gpu_verified.json`` shipped in the package)."""
    path = pathlib.Path(path or RECORDS_PATH)
    if path not in _CACHE:
        _CACHE[path] = json.loads(path.read_text())["records"] if path.exists() else []
    return _CACHE[path]


def lookup(kernel: str, dtype, device_kind: str, path=None) -> dict | None:
    """The record of ``kernel`` (an op name, e.g. ``"dora_matmul"``) in ``dtype`` on
    ``device_kind``, or None."""
    dtype = jnp.dtype(dtype).name
    for record in verified_records(path):
        if (record["kernel"], record["dtype"], record["device_kind"]) == (
                kernel, dtype, device_kind):
            return record
    return None


def is_preferred(kernel: str, dtype, device_kind: str, path=None) -> bool:
    """True when the kernel is recorded as verified *and* preferred for this dtype and
    device kind: the condition for the default sequence to run it."""
    record = lookup(kernel, dtype, device_kind, path)
    return bool(record and record["verified"] and record["preferred"])


def _summarise(rows: list[dict]) -> dict:
    """verified: every row OK; preferred: verified and kernel_ms < xla_ms at the largest
    size checked."""
    verified = bool(rows) and all(row.get("status") == "OK" for row in rows)
    largest = max(rows, key=lambda row: SIZES.index(row["size"]) if row.get("size") in SIZES
                  else -1)
    kernel_ms, xla_ms = largest.get("kernel_ms"), largest.get("xla_ms")
    preferred = (verified and kernel_ms is not None and xla_ms is not None
                 and float(kernel_ms) < float(xla_ms))
    return dict(verified=verified, preferred=preferred, sizes=[row.get("size") for row in rows],
                largest_size=largest.get("size"), kernel_ms=kernel_ms, xla_ms=xla_ms)


def record_verified(checks: Iterable[Mapping], device_kind: str, jax_version: str,
                    path=None) -> list[dict]:
    """Write the records of a GPU check into ``path`` (default: the package's
    ``gpu_verified.json``) and return the new ones.

    Args:
      checks: gpu_check's rows, each with ``name`` (``"<op>_<dtype>"``), ``size``,
        ``status`` (``"OK"`` or anything else) and, when timed, ``kernel_ms`` and ``xla_ms``.
      device_kind: ``jax.devices()[0].device_kind`` of the card that ran them.
      jax_version: ``jax.__version__`` of that run.
      path: the JSON file to update. Records of other (kernel, dtype, device kind) triples
        in it are kept; those of the triples in ``checks`` are replaced.
    """
    if not isinstance(device_kind, str) or not device_kind:
        raise ValueError(f"device_kind must be a non-empty string, got {device_kind!r}.")
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in checks:
        groups.setdefault(split_name(row["name"]), []).append(dict(row))
    new = [dict(kernel=kernel, dtype=dtype, device_kind=device_kind,
                jax_version=str(jax_version), **_summarise(rows))
           for (kernel, dtype), rows in sorted(groups.items())]
    path = pathlib.Path(path or RECORDS_PATH)
    replaced = {(r["kernel"], r["dtype"], r["device_kind"]) for r in new}
    kept = [r for r in verified_records(path)
            if (r["kernel"], r["dtype"], r["device_kind"]) not in replaced]
    records = sorted(kept + new, key=lambda r: (r["device_kind"], r["kernel"], r["dtype"]))
    path.write_text(json.dumps({"records": records}, indent=1) + "\n")
    _CACHE[path] = records
    return new
