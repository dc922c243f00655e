"""Device queries and the Pallas version shims, in one place.

A kernel file never touches a jax-version-specific name: the dot of two loaded blocks, the
compiler params that select the Triton lowering and the shape structs that carry
``shard_map`` types all come from here, so that a Mosaic GPU implementation can be added per
kernel later without touching callers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl


def cuda_available() -> bool:
    """True when jax's default device is an NVIDIA (CUDA) GPU."""
    device = jax.devices()[0]
    if device.platform != "gpu":
        return False
    version = str(getattr(device.client, "platform_version", "")).lower()
    return "rocm" not in version


def device_kind() -> str:
    """``jax.devices()[0].device_kind``, e.g. ``"NVIDIA H200"`` (the key of the records)."""
    return str(jax.devices()[0].device_kind)


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


def struct(shape, dtype, like) -> jax.ShapeDtypeStruct:
    """``jax.ShapeDtypeStruct`` that, under ``shard_map`` (check_vma), varies over the mesh
    axes ``like`` varies over (the attribute is ``manual_axis_type`` in jax 0.10 and ``vma``
    in other versions)."""
    aval = jax.typeof(like)
    for attr in ("manual_axis_type", "vma"):
        value = getattr(aval, attr, None)
        if value is not None:
            try:
                return jax.ShapeDtypeStruct(shape, dtype, **{attr: value})
            except TypeError:
                continue
    return jax.ShapeDtypeStruct(shape, dtype)


def pad_axis(x: jax.Array, axis: int, multiple: int) -> jax.Array:
    """Zero-pad ``x`` along ``axis`` up to a multiple of ``multiple``.

    Kernels pad instead of reading out of bounds: the interpreter clamps out-of-bounds
    reads, the Triton lowering does not.
    """
    size = x.shape[axis]
    target = pl.cdiv(size, multiple) * multiple
    if target == size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, target - size)
    return jnp.pad(x, widths)


def abstract_gpu(device_kind: str = "NVIDIA H200"):
    """A context in which kernels lower for CUDA without a GPU (``.lower(lowering_platforms=
    ("cuda",))``): jax ≥ 0.12 needs an abstract mesh over an abstract CUDA device for the
    Triton lowering to pick its target; older jax lowers without one (a null context)."""
    import contextlib

    abstract_device = getattr(jax.sharding, "AbstractDevice", None)
    if abstract_device is None or not hasattr(jax.sharding, "use_abstract_mesh"):
        return contextlib.nullcontext()
    mesh = jax.sharding.AbstractMesh(
        (1,), ("x",),
        abstract_device=abstract_device(device_kind=device_kind, num_cores=None, platform="cuda"))
    return jax.sharding.use_abstract_mesh(mesh)
