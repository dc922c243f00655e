"""NaLaFormer: norm-aware linear attention, non-causal and causal, with a decode step.

Meng et al., "NaLaFormer: Norm-Aware Linear Attention for Transformer Models" (arXiv
2506.21137; later retitled "Norm×Direction: Restoring the Missing Query Norm in Vision Linear
Attention"). Per head, with head dim d, following the official code:

    k ← k³ (elementwise);   q± = relu(±q),  k± = relu(±k)
    p = λ·(0.5 + tanh‖q‖₂)  (λ = ``power_scale`` = 3, so p ∈ [1.5, 4.5))
    q± ← (q± / ‖q‖₂)^p                           (a larger ‖q‖ gives spikier attention)
    φ(x) = [x⁺, x⁻] ∈ ℝ^{2d}                      (only same-sign dimensions interact)

The numerator uses RoPE-rotated features φ_r (the rotation applied to each half of φ
separately), the denominator the unrotated φ; ε is added to the *mean*:

    o_i = [φ_r(q_i)·(1/n_i) Σ_j φ_r(k_j)ᵀ v_j] / [φ(q_i)·(1/n_i) Σ_j φ(k_j) + ε]

with the sums over all j (n_i = N) when non-causal and over j ≤ i (n_i = i + 1, plus the
tokens already in a carried state) when causal. ‖q‖ = 0 is guarded (the official code
divides by zero): a zero query gets zero features and output 0.

``feature_map="cosine"`` is our reading of the paper's "cosine inhibit" map, which the
released code does not use: directions x̂ ∈ [−1, 1]^d (the query's norm-aware power
sign(q̂)|q̂|^p, the key's k³/‖k³‖) mapped to φ(x̂) = [cos(πx̂/4), sin(πx̂/4)], so that
φ(q)·φ(k) = Σ_i cos(π(q̂_i − k̂_i)/4) ≥ 0 and opposite directions (q̂_i = −k̂_i = ±1) give 0.

Implementations: the non-causal form is two global sums (plain XLA). The causal form is
chunked (chunks of 64): ``"xla"`` is one checkpointed ``lax.scan`` over chunks that computes
each chunk's features, RoPE, intra-chunk and inter-chunk terms (:func:`_causal_fused_xla`);
``"triton"``/``"interpret"`` run the Pallas kernel
:func:`pallas_kernels.linear_attention.causal_linear_attention` on precomputed features.
Both are linear in the sequence length in time and memory. Layout
``[batch, seq, heads, head_dim]``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxbounds.attention.rope import apply_rope
from pallas_kernels import _backend
from pallas_kernels.linear_attention import GPU_VERIFIED as KERNEL_GPU_VERIFIED
from pallas_kernels.linear_attention import LinearAttentionBlockSizes, causal_linear_attention

__all__ = [
    "FEATURE_MAPS",
    "NaLaState",
    "checked_nala_attention",
    "init_state",
    "nala_attention",
    "nala_attention_quadratic",
    "nala_attention_weights",
    "nala_decode_step",
    "nala_features",
]

_F32 = jnp.float32
FEATURE_MAPS = ("relu", "cosine")


class NaLaState(NamedTuple):
    """The causal carry: ``kv = Σ φ_r(k_j)ᵀ v_j [B, H, 2d, dv]``, ``k_sum = Σ φ(k_j)
    [B, H, 2d]`` (float32 sums, not means) and ``count``, the tokens seen (int32 scalar)."""

    kv: jax.Array
    k_sum: jax.Array
    count: jax.Array


def init_state(batch: int, heads: int, head_dim: int, value_dim: int | None = None) -> NaLaState:
    """The empty state (no tokens seen)."""
    value_dim = head_dim if value_dim is None else value_dim
    f = 2 * head_dim
    return NaLaState(jnp.zeros((batch, heads, f, value_dim), _F32),
                     jnp.zeros((batch, heads, f), _F32), jnp.zeros((), jnp.int32))


# --- feature maps -------------------------------------------------------------------------------


def _safe_norm(x):
    """(‖x‖ with a zero-safe gradient, ‖x‖ clamped to 1 where it is 0)."""
    sq = jnp.sum(x * x, axis=-1, keepdims=True)
    nonzero = sq > 0
    norm = jnp.sqrt(jnp.where(nonzero, sq, 1.0))
    return jnp.where(nonzero, norm, 0.0), norm


def _power(x, p):
    """x**p for x ≥ 0 with a finite gradient at x = 0 (where the value is 0)."""
    positive = x > 0
    return jnp.where(positive, jnp.where(positive, x, 1.0) ** p, 0.0)


def nala_features(q, k, *, power_scale=3.0, feature_map: str = "relu"):
    """The NaLa feature maps ``(φ(q), φ(k))``, each ``[..., 2·head_dim]`` in float32 (float64
    for float64 inputs).

    ``φ(q) = [(q⁺/‖q‖)^p, (q⁻/‖q‖)^p]`` with ``p = power_scale·(0.5 + tanh‖q‖)`` and
    ``φ(k) = [(k³)⁺, (k³)⁻]`` (``feature_map="relu"``, the official code), or the cosine map
    of the module docstring (``feature_map="cosine"``). Unrotated (RoPE is applied by
    :func:`nala_attention` to the numerator features only).
    """
    if feature_map not in FEATURE_MAPS:
        raise ValueError(f"feature_map must be one of {FEATURE_MAPS}, got {feature_map!r}.")
    dtype = jnp.promote_types(jnp.result_type(q, k), _F32)  # float32, or float64 under x64
    qf, kf = q.astype(dtype), k.astype(dtype)
    q_norm, q_div = _safe_norm(qf)
    p = jnp.asarray(power_scale, dtype) * (0.5 + jnp.tanh(q_norm))
    unit = qf / q_div
    q_pos = _power(jax.nn.relu(unit), p)
    q_neg = _power(jax.nn.relu(-unit), p)
    k3 = kf * kf * kf
    if feature_map == "relu":
        phi_q = jnp.concatenate([q_pos, q_neg], axis=-1)
        phi_k = jnp.concatenate([jax.nn.relu(k3), jax.nn.relu(-k3)], axis=-1)
        return phi_q, phi_k
    _, k_div = _safe_norm(k3)
    q_dir = q_pos - q_neg  # sign(q̂)|q̂|^p ∈ [−1, 1]
    k_dir = k3 / k_div  # ∈ [−1, 1]
    angle = math.pi / 4
    cos_sin = lambda x: jnp.concatenate([jnp.cos(angle * x), jnp.sin(angle * x)], axis=-1)
    return cos_sin(q_dir), cos_sin(k_dir)


def _rotate(phi, rope):
    """RoPE on each half of φ ``[B, N, H, 2d]`` separately, with tables ``[N, d]``."""
    if rope is None:
        return phi
    d = phi.shape[-1] // 2
    return jnp.concatenate([apply_rope(phi[..., :d], rope), apply_rope(phi[..., d:], rope)],
                           axis=-1)


# --- checks -----------------------------------------------------------------------------------


def _is_concrete_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_scalars(eps, power_scale) -> None:
    if _is_concrete_number(eps) and not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}.")
    if _is_concrete_number(power_scale) and not power_scale > 0:
        raise ValueError(f"power_scale must be a number > 0, got {power_scale!r}.")


def _check_qkv(q, k, v, causal, rope) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise TypeError(f"{name} must be an array, got {type(x).__name__}.")
        if x.ndim != 4:
            raise ValueError(
                f"{name} must be [batch, seq, heads, head_dim], got shape {tuple(x.shape)}.")
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{name} must have a floating dtype, got {x.dtype}.")
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"q and k must have the same number of heads, got q {tuple(q.shape)} (heads "
            f"{q.shape[2]}) and k {tuple(k.shape)} (heads {k.shape[2]}).")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
        raise ValueError(
            f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and head_dim.")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree in batch, seq and heads.")
    if (causal or rope is not None) and q.shape[1] != k.shape[1]:
        raise ValueError(
            f"q and k must have the same sequence length when causal or with rope, got "
            f"{q.shape[1]} and {k.shape[1]}.")
    if rope is not None:
        if not isinstance(rope, (tuple, list)) or len(rope) != 2:
            raise ValueError(f"rope must be None or a (sin, cos) pair, got {type(rope)}.")
        want = (q.shape[1], q.shape[3])
        for name, t in zip(("sin", "cos"), rope, strict=True):
            if tuple(t.shape) != want:
                raise ValueError(
                    f"rope {name} table must have shape [seq, head_dim] = {want}, got "
                    f"{tuple(t.shape)}.")


def _check_state(state, q, v) -> None:
    if not isinstance(state, NaLaState):
        raise TypeError(f"initial_state must be a NaLaState, got {type(state).__name__}.")
    b, _, h, d = q.shape
    want = {"kv": (b, h, 2 * d, v.shape[-1]), "k_sum": (b, h, 2 * d), "count": ()}
    for name in want:
        got = tuple(getattr(state, name).shape)
        if got != want[name]:
            raise ValueError(f"initial_state.{name} must have shape {want[name]}, got {got}.")


# --- attention ------------------------------------------------------------------------------------


def nala_attention(q, k, v, *, causal, rope=None, power_scale=3.0, eps=1e-6,
                   initial_state: NaLaState | None = None, return_state: bool = False,
                   implementation: str | None = None, feature_map: str = "relu",
                   chunk_size: int | None = None):
    """Norm-aware linear attention (see the module docstring for the formula).

    Args:
      q, k: ``[batch, seq, heads, head_dim]``. v: ``[batch, seq, heads, dv]``.
      causal: prefix sums over j ≤ i (linear in seq in time and memory) or global sums.
      rope: None or a ``(sin, cos)`` pair of ``[seq, head_dim]`` tables
        (:func:`~jaxbounds.attention.rope.rope_1d` / ``rope_2d``), applied to the numerator
        features. For chunked generation pass the tables of this chunk's positions
        (``rope_1d(seq, d, offset=state.count)``).
      power_scale: λ of p = λ·(0.5 + tanh‖q‖) (3 in the official code), > 0.
      eps: added to the denominator mean, ≥ 0. A traced negative eps gives NaN (use
        :func:`checked_nala_attention` to raise instead).
      initial_state, return_state: causal only; carry a :class:`NaLaState` across calls.
      implementation: "xla" | "triton" | "interpret" | None for the causal core
        (``pallas_kernels.linear_attention``); the non-causal form is always XLA.
      feature_map: "relu" (the official code) or "cosine" (the paper's cosine map).
      chunk_size: the causal chunk (a power of two ≥ 16); default 64 (from the shapes).

    Returns:
      ``o [batch, seq, heads, dv]`` in q's dtype, and the final :class:`NaLaState` when
      ``return_state``. Any sequence length works (the causal core pads to the chunk).
    """
    _check_qkv(q, k, v, causal, rope)
    _check_scalars(eps, power_scale)
    if not causal and (initial_state is not None or return_state):
        raise ValueError(
            "initial_state and return_state are for causal=True (a carried prefix state); "
            f"got causal={causal!r}.")
    if initial_state is not None:
        _check_state(initial_state, q, v)
    implementation = _backend.resolve_implementation(
        implementation, kernel_preferred=KERNEL_GPU_VERIFIED)
    phi_q, phi_k = nala_features(q, k, power_scale=power_scale, feature_map=feature_map)
    qn, kn = _rotate(phi_q, rope), _rotate(phi_k, rope)
    # Features in the compute dtype of the inputs (bf16 stays bf16); sums in float32.
    low = jnp.dtype(q.dtype).itemsize < 4
    cast = (lambda x: x.astype(q.dtype)) if low else (lambda x: x)
    qn, kn, qd, kd = map(cast, (qn, kn, phi_q, phi_k))
    eps_f = jnp.asarray(eps, _F32)
    if not causal:
        n = k.shape[1]
        ein = functools.partial(jnp.einsum, preferred_element_type=_F32)
        s = ein("bnhf,bnhv->bhfv", kn, v) / n
        z = ein("bnhf->bhf", kd) / n
        num = ein("bnhf,bhfv->bnhv", qn, s)
        den = ein("bnhf,bhf->bnh", qd, z)
        out = num / (den + eps_f)[..., None]
        return jnp.where(eps_f >= 0, out, jnp.nan).astype(q.dtype)
    if initial_state is None:
        s0 = z0 = None
        count0 = jnp.zeros((), jnp.int32)
    else:
        s0, z0, count0 = initial_state
    blocks = None
    if chunk_size is not None:
        blocks = LinearAttentionBlockSizes.default(q.shape[1], 2 * q.shape[3], v.shape[-1])
        blocks = LinearAttentionBlockSizes(chunk=chunk_size, num_warps=blocks.num_warps)
        blocks.validate()
    if implementation == "xla":
        out, s, z = _causal_fused_xla(q, k, v, rope, s0, z0, count0, eps_f, power_scale,
                                      feature_map, chunk_size or 64)
    else:
        out, s, z = causal_linear_attention(qn, kn, qd, kd, v, s0, z0, eps=eps_f, count=count0,
                                            block_sizes=blocks, implementation=implementation)
    out = jnp.where(eps_f >= 0, out, jnp.nan).astype(q.dtype)
    if return_state:
        return out, NaLaState(s, z, jnp.asarray(count0, jnp.int32) + q.shape[1])
    return out


def _causal_fused_xla(q, k, v, rope, s0, z0, count0, eps, power_scale, feature_map, chunk):
    """The causal ``"xla"`` path: one ``lax.scan`` over chunks of ``chunk`` tokens that
    computes each chunk's features (and RoPE) inside the step, its intra-chunk terms (a
    masked C×C product), its inter-chunk terms against the carried (S, z), and folds the
    chunk into (S, z). No [N, 2d] feature array and no [N, 2d, d] cumulative state is
    materialised in the forward; the working set of a step is one chunk (cache friendly).
    Same result as the kernel path (``pallas_kernels.linear_attention``)."""
    b, n, h, d = q.shape
    dv = v.shape[-1]
    chunk = max(1, min(chunk, n))
    pad = lambda x: _backend.pad_axis(x, 1, chunk)
    qp, kp, vp = pad(q), pad(k), pad(v)
    n_p = qp.shape[1]
    nc = n_p // chunk
    valid = (jnp.arange(n_p) < n).astype(_F32).reshape(nc, chunk)  # padded keys add nothing
    to_chunks = lambda x: jnp.swapaxes(x.reshape(b, nc, chunk, *x.shape[2:]), 0, 1)
    xs = [to_chunks(qp), to_chunks(kp), to_chunks(vp), valid]
    if rope is not None:
        xs += [_backend.pad_axis(t.astype(_F32), 0, chunk).reshape(nc, chunk, d) for t in rope]
    ein = functools.partial(jnp.einsum, preferred_element_type=_F32)
    mask = jnp.tril(jnp.ones((chunk, chunk), bool))[None, None]
    low = jnp.dtype(q.dtype).itemsize < 4
    cast = (lambda x: x.astype(q.dtype)) if low else (lambda x: x)

    def step(carry, x):
        s, z = carry
        q_i, k_i, v_i, valid_i = x[:4]
        fq, fk = nala_features(q_i, k_i, power_scale=power_scale, feature_map=feature_map)
        fk = fk * valid_i[None, :, None, None]
        rope_i = None if rope is None else (x[4], x[5])
        qn, kn, qd, kd = map(cast, (_rotate(fq, rope_i), _rotate(fk, rope_i), fq, fk))
        a = jnp.where(mask, ein("bihf,bjhf->bhij", qn, kn), 0.0)
        num = ein("bhij,bjhv->bihv", a, v_i) + ein("bihf,bhfv->bihv", qn, s)
        bm = jnp.where(mask, ein("bihf,bjhf->bhij", qd, kd), 0.0)
        den = jnp.sum(bm, axis=-1).transpose(0, 2, 1) + ein("bihf,bhf->bih", qd, z)
        s = s + ein("bjhf,bjhv->bhfv", kn, v_i)
        z = z + jnp.sum(kd.astype(_F32), axis=1)
        return (s, z), (num, den)

    # zeros_like of the inputs: under shard_map the carry varies over the inputs' mesh axes
    like = jnp.zeros_like(q[:, 0, :, :1] * v[:, 0, :, :1], dtype=_F32)  # [b, h, 1]
    if s0 is None:
        s0 = jnp.zeros((b, h, 2 * d, dv), _F32)
        z0 = jnp.zeros((b, h, 2 * d), _F32)
    init = (s0.astype(_F32) + like[..., None], z0.astype(_F32) + like)
    # checkpointed step: the backward recomputes a chunk's features instead of storing them
    (s, z), (num, den) = jax.lax.scan(jax.checkpoint(step), init, tuple(xs))
    num = jnp.swapaxes(num, 0, 1).reshape(b, n_p, h, dv)[:, :n]
    den = jnp.swapaxes(den, 0, 1).reshape(b, n_p, h)[:, :n]
    counts = jnp.asarray(count0, _F32) + jnp.arange(1, n + 1, dtype=_F32)
    out = num / (den + eps * counts[None, :, None])[..., None]
    return out.astype(v.dtype), s, z


def checked_nala_attention(q, k, v, *, eps=1e-6, power_scale=3.0, **kwargs):
    """:func:`nala_attention` that raises (``checkify``) for a traced ``eps < 0`` or
    ``power_scale <= 0`` instead of returning NaN. Jitted; other kwargs are static."""

    def body(q, k, v, eps, power_scale):
        checkify.check(jnp.all(jnp.asarray(eps) >= 0), "eps must be >= 0")
        checkify.check(jnp.all(jnp.asarray(power_scale) > 0), "power_scale must be > 0")
        return nala_attention(q, k, v, eps=eps, power_scale=power_scale, **kwargs)

    err, out = jax.jit(checkify.checkify(body, errors=checkify.user_checks))(
        q, k, v, eps, power_scale)
    err.throw()
    return out


def _weights(q, k, *, causal, rope, power_scale, feature_map):
    """Explicit [B, H, Nq, Nk] numerator and denominator weights (masked when causal)."""
    phi_q, phi_k = nala_features(q, k, power_scale=power_scale, feature_map=feature_map)
    qn, kn = _rotate(phi_q, rope), _rotate(phi_k, rope)
    a_num = jnp.einsum("bihf,bjhf->bhij", qn, kn)
    a_den = jnp.einsum("bihf,bjhf->bhij", phi_q, phi_k)
    nq, nk = q.shape[1], k.shape[1]
    if causal:
        mask = jnp.tril(jnp.ones((nq, nk), bool))
        a_num, a_den = jnp.where(mask, a_num, 0.0), jnp.where(mask, a_den, 0.0)
        counts = jnp.arange(1, nq + 1, dtype=_F32)
    else:
        counts = jnp.full((nq,), nk, _F32)
    return a_num, a_den, counts


def nala_attention_quadratic(q, k, v, *, causal, rope=None, power_scale=3.0, eps=1e-6,
                             feature_map: str = "relu"):
    """The quadratic reference: materialises both N×N weight matrices,
    ``A_num[i, j] = φ_r(q_i)·φ_r(k_j)`` and ``A_den[i, j] = φ(q_i)·φ(k_j)`` (j ≤ i when causal),
    and returns ``o_i = (Σ_j A_num[i,j] v_j / n_i) / (Σ_j A_den[i,j] / n_i + ε)``."""
    _check_qkv(q, k, v, causal, rope)
    a_num, a_den, counts = _weights(q, k, causal=causal, rope=rope, power_scale=power_scale,
                                    feature_map=feature_map)
    v = v.astype(jnp.promote_types(v.dtype, _F32))
    mean_num = jnp.einsum("bhij,bjhv->bihv", a_num, v) / counts[:, None, None]
    mean_den = jnp.einsum("bhij->bih", a_den) / counts[:, None]
    return (mean_num / (mean_den + eps)[..., None]).astype(jnp.promote_types(q.dtype, _F32))


def nala_attention_weights(q, k, *, causal, power_scale=3.0, feature_map: str = "relu"):
    """The attention distribution ``w_ij = φ(q_i)·φ(k_j) / Σ_j' φ(q_i)·φ(k_j')`` (no RoPE,
    ε = 0), ``[batch, heads, n, m]``; rows of a zero query are all zero."""
    _, a_den, _ = _weights(q, k, causal=causal, rope=None, power_scale=power_scale,
                           feature_map=feature_map)
    total = jnp.sum(a_den, axis=-1, keepdims=True)
    return a_den / jnp.where(total > 0, total, 1.0)


def nala_decode_step(q, k, v, state: NaLaState, *, rope=None, power_scale=3.0, eps=1e-6,
                     feature_map: str = "relu"):
    """One generated token with the carried state (the recurrent form of causal NaLa).

    Args:
      q, k: ``[batch, heads, head_dim]``. v: ``[batch, heads, dv]``.
      state: :class:`NaLaState` of the previous tokens (:func:`init_state` for none).
      rope: None or the ``(sin, cos)`` tables of this position, each ``[1, head_dim]`` (e.g.
        ``rope_1d(1, d, offset=position)``) or ``[head_dim]``.

    Returns:
      ``(o [batch, heads, dv] in q's dtype, new state)``. O(2d·dv) per token.
    """
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 3:
            raise ValueError(
                f"{name} must be [batch, heads, head_dim] (one token), got "
                f"{getattr(x, 'shape', type(x))}.")
    if q.shape != k.shape or k.shape[:2] != v.shape[:2]:
        raise ValueError(
            f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} must agree in batch "
            "and heads (and q, k in head_dim).")
    _check_scalars(eps, power_scale)
    _check_state(state, q[:, None], v[:, None])
    if rope is not None:
        rope = tuple(jnp.reshape(t, (1, q.shape[-1])) for t in rope)
    phi_q, phi_k = nala_features(q[:, None], k[:, None], power_scale=power_scale,
                                 feature_map=feature_map)
    qn, kn = _rotate(phi_q, rope)[:, 0], _rotate(phi_k, rope)[:, 0]
    qd, kd = phi_q[:, 0], phi_k[:, 0]
    kv = state.kv + jnp.einsum("bhf,bhv->bhfv", kn, v.astype(_F32))
    k_sum = state.k_sum + kd
    count = state.count + 1
    num = jnp.einsum("bhf,bhfv->bhv", qn, kv)
    den = jnp.einsum("bhf,bhf->bh", qd, k_sum)
    eps_f = jnp.asarray(eps, _F32)
    out = num / (den + eps_f * count.astype(_F32))[..., None]
    out = jnp.where(eps_f >= 0, out, jnp.nan).astype(q.dtype)
    return out, NaLaState(kv, k_sum, count)
