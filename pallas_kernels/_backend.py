"""The one place that picks an implementation, and the Pallas version shims.

``implementation`` is one of:

* ``"xla"``: the plain-JAX reference, on any backend;
* ``"triton"``: the Pallas kernel compiled with the Triton lowering (CUDA GPUs);
* ``"interpret"``: the same Pallas kernel run by the Pallas interpreter (CPU, for tests);
* ``None``: ``"triton"`` on a CUDA GPU, ``"xla"`` everywhere else.

The environment variable ``JAXBOUNDS_IMPLEMENTATION`` overrides the ``None`` default (an
explicit argument always wins). This mirrors ``jax.nn.dot_product_attention(implementation=)``.

Version shims (``dot``, ``compiler_params``) live here too, so that a kernel file never
touches a jax-version-specific name and a Mosaic GPU implementation can be added per kernel
later without touching callers.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp

IMPLEMENTATIONS: tuple[str, ...] = ("xla", "triton", "interpret")
ENV_VAR = "JAXBOUNDS_IMPLEMENTATION"


def _check_name(value: object, source: str) -> str:
    if not isinstance(value, str) or value not in IMPLEMENTATIONS:
        raise ValueError(
            f"{source} must be one of {IMPLEMENTATIONS} or None, got {value!r}."
        )
    return value


def default_backend_is_cuda() -> bool:
    """True when jax's default device is an NVIDIA (CUDA) GPU."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return False
    version = str(getattr(device.client, "platform_version", "")).lower()
    return "rocm" not in version


def resolve_implementation(implementation: str | None, *, kernel_preferred: bool = True) -> str:
    """Return ``"xla"``, ``"triton"`` or ``"interpret"``.

    Args:
      implementation: an explicit choice, or ``None`` for the default.
      kernel_preferred: the caller's measured hint for the ``None`` default on a CUDA GPU:
        False when the kernel is known to be slower than XLA for this call (e.g. the DoRA
        GEMM on float32 inputs, see docs/dora.md), which then resolves to ``"xla"``. An
        explicit value or the environment variable always wins.

    Raises:
      ValueError: for an unknown value (listing the valid ones), or for ``"triton"`` on a
        machine without a CUDA GPU.
    """
    if implementation is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            implementation = _check_name(env, f"environment variable {ENV_VAR}")
        else:
            return "triton" if kernel_preferred and default_backend_is_cuda() else "xla"
    implementation = _check_name(implementation, "implementation")
    if implementation == "triton" and not default_backend_is_cuda():
        raise ValueError(
            "implementation='triton' needs a CUDA GPU, but jax's default backend is "
            f"{jax.default_backend()!r}; use 'interpret' to run the kernel on CPU or 'xla'."
        )
    return implementation


def is_pallas(implementation: str) -> bool:
    """Whether a resolved implementation goes through ``pl.pallas_call``."""
    return implementation in ("triton", "interpret")


def compiler_params(*, num_warps: int = 4, num_stages: int = 2):
    """Compiler params that select the Pallas *Triton* lowering on GPU.

    Without them, jax >= 0.9 sends a GPU ``pallas_call`` to Mosaic GPU.
    """
    from jax.experimental.pallas import triton as pl_triton

    cls = getattr(pl_triton, "CompilerParams", None) or pl_triton.TritonCompilerParams
    return cls(num_warps=num_warps, num_stages=num_stages)


def dot(a: jax.Array, b: jax.Array, *, trans_a: bool = False, trans_b: bool = False,
        tf32: bool = False):
    """Matrix product of two loaded blocks, accumulated in float32.

    Works in the Triton lowering and in the interpreter. Both operands are cast to a common
    dtype first (Triton's dot needs it). ``tf32=True`` asks the Triton lowering for TF32
    tensor-core products on float32 operands (``DotAlgorithmPreset.TF32_TF32_F32``), the
    precision XLA uses by default for float32 GEMMs on GPU; only set it for "triton".
    """
    if trans_a:
        a = a.T
    if trans_b:
        b = b.T
    common = jnp.promote_types(a.dtype, b.dtype)
    precision = None
    if tf32 and common == jnp.float32:
        precision = jax.lax.DotAlgorithmPreset.TF32_TF32_F32
    return jnp.dot(
        a.astype(common), b.astype(common), precision=precision,
        preferred_element_type=jnp.float32,
    )


def pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    """Zero-pad ``x`` along ``axis`` up to a multiple of ``multiple``.

    Kernels pad instead of reading out of bounds: the interpreter clamps out-of-bounds
    reads, the Triton lowering does not.
    """
    size = x.shape[axis]
    target = -(-size // multiple) * multiple
    if target == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, target - size)
    return jnp.pad(x, widths)


def next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()
