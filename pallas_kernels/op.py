"""One op, several implementations: the dispatch every kernel-backed op goes through.

An op has a table of implementations:

* ``"xla"``: plain JAX, on any backend;
* ``"triton"``: the Pallas kernel compiled with the Triton lowering (CUDA GPUs);
* ``"interpret"``: the same Pallas kernel run by the Pallas interpreter (CPU, for tests).

``implementation`` is a name, a sequence of names tried in order (the first that does not
raise ``NotImplementedError`` runs), or ``None`` for the default: the environment variable
``JAXBOUNDS_IMPLEMENTATION`` if set (a name, or names separated by commas), else
``("triton", "xla")`` on a CUDA GPU and ``"xla"`` elsewhere.

Inside a sequence of several names, ``"triton"`` raises ``NotImplementedError`` (so the next
name runs) unless there is a CUDA GPU and the kernel is recorded in
:mod:`pallas_kernels.registry` as verified and preferred for its dtype and this device kind.
A single ``"triton"`` always runs the kernel, and raises ``ValueError`` without a CUDA GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pallas_kernels import _backend, _checks, registry

IMPLEMENTATIONS: tuple[str, ...] = ("triton", "xla", "interpret")
ENV_VAR = "JAXBOUNDS_IMPLEMENTATION"


def default_implementation() -> tuple[str, ...]:
    """``("triton", "xla")`` on a CUDA GPU, ``("xla",)`` elsewhere (env var aside)."""
    return ("triton", "xla") if _backend.cuda_available() else ("xla",)


def implementation_sequence(implementation: str | Sequence[str] | None) -> tuple[str, ...]:
    """The names to try, in order, for an ``implementation`` argument (validated).

    Raises:
      ValueError: for an unknown name (listing the valid ones) or an empty sequence.
    """
    source = "implementation"
    if implementation is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if not env:
            return default_implementation()
        source = f"environment variable {ENV_VAR}"
        implementation = tuple(part.strip() for part in env.split(","))
    names = (implementation,) if isinstance(implementation, str) else implementation
    if not isinstance(names, Sequence) or not names:
        raise ValueError(f"{source} must be one of {IMPLEMENTATIONS}, a non-empty sequence "
                         f"of them, or None, got {implementation!r}.")
    return tuple(_checks.check_choice(source, name, IMPLEMENTATIONS) for name in names)


def _gate_triton(op: str, dtype, gated: bool) -> None:
    """Raise unless the Triton kernel of ``op`` may run: ``NotImplementedError`` inside a
    sequence (the next name runs), ``ValueError`` for an explicit ``"triton"`` on a machine
    without a CUDA GPU."""
    if not _backend.cuda_available():
        message = (f"implementation='triton' needs a CUDA GPU, but jax's default device is "
                   f"{_backend.device_kind()!r}; use 'interpret' to run the kernel on CPU, "
                   "or 'xla'.")
        raise NotImplementedError(message) if gated else ValueError(message)
    if gated and not registry.is_preferred(op, dtype, _backend.device_kind()):
        raise NotImplementedError(
            f"the {op} kernel in {getattr(dtype, 'name', dtype)} is not recorded as verified "
            f"and faster than XLA on {_backend.device_kind()!r}; pass implementation='triton' "
            "to run it anyway.")


@dataclasses.dataclass(frozen=True)
class Op:
    """A kernel-backed op: its name in the GPU records and its table of implementations.

    Attributes:
      name: the op's name in :mod:`pallas_kernels.registry` records, e.g. ``"dora_matmul"``.
      implementations: name -> function of the op's arguments.
      dtype_of: the dtype that selects the record, from the op's arguments.
    """

    name: str
    implementations: Mapping[str, Callable[..., Any]]
    dtype_of: Callable[..., Any]

    @classmethod
    def pallas(cls, name: str, *, xla: Callable, kernel: Callable,
               dtype_of: Callable) -> Op:
        """An op whose ``"triton"`` and ``"interpret"`` entries are one Pallas path,
        ``kernel(*args, implementation=..., **kwargs)``."""
        return cls(name, {"xla": xla,
                          "triton": functools.partial(kernel, implementation="triton"),
                          "interpret": functools.partial(kernel, implementation="interpret")},
                   dtype_of)

    def __call__(self, *args, implementation: str | Sequence[str] | None = None, **kwargs):
        names = implementation_sequence(implementation)
        gated = len(names) > 1
        skipped = []
        for name in names:
            try:
                if name not in self.implementations:
                    raise NotImplementedError(f"{self.name} has no {name!r} implementation.")
                if name == "triton":
                    _gate_triton(self.name, self.dtype_of(*args, **kwargs), gated)
                return self.implementations[name](*args, **kwargs)
            except NotImplementedError as err:
                if not gated:
                    raise
                skipped.append(f"{name}: {err}")
        raise NotImplementedError(f"no implementation of {self.name} in {names} ran: "
                                  + " | ".join(skipped))
