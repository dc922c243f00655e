"""DoRA as pure functions: factored column norms, the fused linear map, the stable delta.

DoRA (Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", arXiv 2402.09353) writes the
adapted kernel, in the Flax layout W₀ ∈ [d_in, d_out], A ∈ [d_in, r], B ∈ [r, d_out],
magnitude m ∈ [d_out], as

    W′ = (W₀ + s·AB)·diag(g),   g = m / n,   n_j = ‖W₀[:, j] + s·(AB)[:, j]‖₂,

with s = α/r (or α/√r with rsLoRA). Hence y = x·W′ = g ⊙ (x·W₀ + s·(xA)·B). The torch papers
and PEFT use the transposed layout [d_out, d_in] and norms over rows.

Factored norm ("Scaling DoRA", arXiv 2603.22276): never form AB ∈ [d_in, d_out],

    n² = colsum(W₀ ⊙ W₀) + 2s·colsum(B ⊙ (AᵀW₀)) + s²·colsum(B ⊙ ((AᵀA)·B)),

whose intermediates are O(d_out·r + r²), accumulated in float32; colsum(W₀ ⊙ W₀) can be cached
because W₀ is frozen. n² is clamped at 0 before the square root.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

import pallas_kernels
from jaxbounds._checks import check_array, check_int, check_number, require

_F32 = jnp.float32


def lora_scale(alpha: float, rank: int, *, use_rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA (Kalajdzievski, arXiv 2312.03732)."""
    rank = check_int("rank", rank, minimum=1)
    alpha = check_number("alpha", alpha, low=0, low_open=True)
    return alpha / (rank**0.5 if use_rslora else rank)


def check_dora_shapes(w0, a, b, magnitude=None) -> tuple[int, int, int]:
    """Validate W₀ [d_in, d_out], A [d_in, r], B [r, d_out], m [d_out]; return (d_in, d_out, r).

    Raises ValueError / TypeError naming the argument, what it got and what was expected:
    non-float dtypes, wrong ranks, mismatched shapes, and r ∉ [1, min(d_in, d_out)].
    """
    w0 = check_array("w0", w0, ndim=2)
    a = check_array("a", a, ndim=2)
    b = check_array("b", b, ndim=2)
    d_in, d_out = w0.shape
    rank = a.shape[1]
    if rank < 1 or rank > min(d_in, d_out):
        raise ValueError(
            f"rank r = a.shape[1] must satisfy 1 <= r <= min(d_in, d_out) = {min(d_in, d_out)}, "
            f"got r = {rank} (a.shape = {tuple(a.shape)}, w0.shape = {tuple(w0.shape)})."
        )
    if a.shape[0] != d_in:
        raise ValueError(
            f"a must have shape [d_in={d_in}, r], got {tuple(a.shape)} (w0.shape = "
            f"{tuple(w0.shape)})."
        )
    if tuple(b.shape) != (rank, d_out):
        raise ValueError(f"b must have shape [r={rank}, d_out={d_out}], got {tuple(b.shape)}.")
    if magnitude is not None:
        magnitude = check_array("magnitude", magnitude, ndim=1)
        if magnitude.shape[0] != d_out:
            raise ValueError(
                f"magnitude must have shape [d_out={d_out}], got {tuple(magnitude.shape)}."
            )
    return d_in, d_out, rank


def _colsum_product(p, q):
    """colsum(P ⊙ Q) for P, Q [k, n] as one dot_general batched over columns: no [k, n]
    elementwise product is formed, and the sum is accumulated in float32."""
    return lax.dot_general(p, q, (((0,), (0,)), ((1,), (1,))), preferred_element_type=_F32)


def column_sq_norm(w0):
    """colsum(W₀ ⊙ W₀) ∈ [d_out] in float32: cache it, since W₀ is frozen."""
    check_array("w0", w0, ndim=2)
    return _colsum_product(w0, w0)


def _is_16bit(dtype) -> bool:
    return jnp.dtype(dtype).itemsize == 2


def _matmul_f32(p, q, dims):
    """A product accumulated in float32. Mixed operand dtypes go straight to dot_general
    (no promoted copy of W₀ in the jaxpr; XLA converts inside the fused product)."""
    return lax.dot_general(p, q, (dims, ((), ())), preferred_element_type=_F32)


def dora_column_norm(w0, a, b, scale, *, w0_sq_norm=None):
    """n_j = ‖W₀[:, j] + s·(AB)[:, j]‖₂ without forming AB.

    n² = colsum(W₀⊙W₀) + 2s·colsum(B ⊙ (AᵀW₀)) + s²·colsum(B ⊙ ((AᵀA)B)), clamped at 0.

    Args:
      w0: [d_in, d_out] frozen base kernel.
      a: [d_in, r]; b: [r, d_out].
      scale: the LoRA scale s.
      w0_sq_norm: optional cached ``column_sq_norm(w0)``.

    Returns:
      n ∈ [d_out], float32. The largest intermediate is [r, d_out], whatever the dtypes.
    """
    d_in, d_out, rank = check_dora_shapes(w0, a, b)
    if w0_sq_norm is None:
        w0_sq_norm = column_sq_norm(w0)
    else:
        check_array("w0_sq_norm", w0_sq_norm, ndim=1)
        if w0_sq_norm.shape[0] != d_out:
            raise ValueError(
                f"w0_sq_norm must have shape [d_out={d_out}], got {tuple(w0_sq_norm.shape)}."
            )
    s = jnp.asarray(scale, _F32)
    # AᵀW₀ runs in W₀'s dtype when W₀ is 16-bit (A is cast, never W₀: tensor-core speed, no
    # float32 copy of W₀), accumulated in float32 either way.
    a_for_w0 = a.astype(w0.dtype) if _is_16bit(w0.dtype) else a
    at_w0 = _matmul_f32(a_for_w0, w0, ((0,), (0,)))  # [r, d_out]
    at_a = _matmul_f32(a, a, ((0,), (0,)))  # [r, r]
    at_a_b = _matmul_f32(at_a, b.astype(_F32), ((1,), (0,)))  # [r, d_out]
    b32 = b.astype(_F32)
    cross = jnp.sum(b32 * at_w0, axis=0)  # [r, d_out] products, the size of AᵀW₀
    quad = jnp.sum(b32 * at_a_b, axis=0)
    sq = w0_sq_norm.astype(_F32) + 2.0 * s * cross + s * s * quad
    return jnp.sqrt(jnp.maximum(sq, 0.0))


def dora_column_norm_dense(w0, a, b, scale):
    """Reference: forms W₀ + s·AB ∈ [d_in, d_out] and takes its column norms (PEFT's way)."""
    check_dora_shapes(w0, a, b)
    w = w0.astype(_F32) + jnp.asarray(scale, _F32) * jnp.dot(
        a.astype(_F32), b.astype(_F32), preferred_element_type=_F32
    )
    return jnp.sqrt(jnp.sum(w * w, axis=0))


def dora_scale(magnitude, norm, *, detach_norm: bool = True):
    """g = m / n in float32; with ``detach_norm`` n is a constant for the backward pass
    (DoRA §4.3, and PEFT)."""
    if detach_norm:
        norm = lax.stop_gradient(norm)
    return magnitude.astype(_F32) / norm


def dora_linear(
    x,
    w0,
    a,
    b,
    magnitude,
    scale,
    *,
    detach_norm: bool = True,
    w0_sq_norm=None,
    implementation: str | None = None,
    block_sizes=None,
):
    """y = g ⊙ (x·W₀ + s·(xA)·B), g = m / ‖W₀ + s·AB‖_col, never forming AB.

    Args:
      x: [..., d_in] activations.
      w0: [d_in, d_out] frozen base kernel. a: [d_in, r]. b: [r, d_out].
      magnitude: m ∈ [d_out].
      scale: the LoRA scale s (see :func:`lora_scale`).
      detach_norm: treat n as a constant in the backward pass (default, as in the paper's
        §4.3 and PEFT); False gives the exact gradient.
      w0_sq_norm: optional cached ``column_sq_norm(w0)``.
      implementation: "xla" | "triton" | "interpret" | None, for the fused GEMM
        (:func:`pallas_kernels.dora_matmul`).
      block_sizes: optional ``pallas_kernels.DoRABlockSizes`` for the kernel.

    Returns:
      [..., d_out] in the promoted dtype of x and w0.

    Raises:
      ValueError: on mismatched shapes, or a concrete ``magnitude`` with a negative entry
        (m is a column norm; a traced one is not checked).
      TypeError: on non-float arrays.
    """
    x = check_array("x", x)
    d_in, d_out, _ = check_dora_shapes(w0, a, b, magnitude)
    require("magnitude", magnitude, lambda m: m >= 0, "non-negative (a column norm)")
    if x.ndim < 1 or x.shape[-1] != d_in:
        raise ValueError(f"x must have shape [..., d_in={d_in}], got {tuple(x.shape)}.")
    norm = dora_column_norm(w0, a, b, scale, w0_sq_norm=w0_sq_norm)
    g = dora_scale(magnitude, norm, detach_norm=detach_norm)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, d_in)
    base_dtype = jnp.result_type(x.dtype, w0.dtype)
    # With 16-bit activations and base, the thin low-rank branch runs in that dtype too
    # (float32 accumulation), as under mixed-precision autocast.
    lora_dtype = base_dtype if _is_16bit(base_dtype) else jnp.result_type(x.dtype, a.dtype)
    xa = _matmul_f32(x2, a, ((1,), (0,))).astype(lora_dtype)
    y = pallas_kernels.dora_matmul(
        x2, w0, xa, b.astype(lora_dtype), g, scale=scale, implementation=implementation,
        block_sizes=block_sizes,
    )
    return y.reshape(*lead, d_out)


def dora_linear_dense(x, w0, a, b, magnitude, scale, *, detach_norm: bool = True):
    """Reference DoRA that forms W′ = W₀ + s·AB ∈ [d_in, d_out] (as PEFT does).

    The norm is taken in float32; the product x·W′ runs in the promoted dtype of x and W₀
    (bf16 stays bf16) with float32 accumulation.
    """
    check_dora_shapes(w0, a, b, magnitude)
    out_dtype = jnp.result_type(x.dtype, w0.dtype)
    w = w0.astype(_F32) + jnp.asarray(scale, _F32) * jnp.dot(
        a.astype(_F32), b.astype(_F32), preferred_element_type=_F32
    )
    norm = jnp.sqrt(jnp.sum(w * w, axis=0))
    g = dora_scale(magnitude, norm, detach_norm=detach_norm)
    y = jnp.dot(x.astype(out_dtype), w.astype(out_dtype), preferred_element_type=_F32) * g
    return y.astype(out_dtype)


def dora_delta(base, lora, g, scale):
    """y − base = (g − 1)⊙base + g⊙(s·lora), in the stable form.

    Where the base output base = x·W₀ is already computed (lora = (xA)·B), this is what the
    adapter adds. g and (g − 1) are taken in float32; the naive g⊙(base + s·lora) − base
    cancels catastrophically in low precision when g ≈ 1, which is where g lives (mean ≈ 1,
    std ≈ 1.5e-3 in "Scaling DoRA"'s measurements).

    Returns the delta in the promoted dtype of (base, lora, g).
    """
    check_array("base", base)
    check_array("lora", lora)
    check_array("g", g)
    if base.shape != lora.shape:
        raise ValueError(
            f"lora must have the shape of base {tuple(base.shape)}, got {tuple(lora.shape)}."
        )
    if g.ndim != 1 or g.shape[0] != base.shape[-1]:
        raise ValueError(f"g must have shape [{base.shape[-1]}], got {tuple(g.shape)}.")
    g32 = g.astype(_F32)
    delta = (g32 - 1.0) * base.astype(_F32) + g32 * (
        jnp.asarray(scale, _F32) * lora.astype(_F32)
    )
    return delta.astype(jnp.result_type(base.dtype, lora.dtype, g.dtype))
