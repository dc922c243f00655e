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

Implementations: the non-causal form is two global sums (plain XLA). The causal form runs
:func:`pallas_kernels.causal_linear_attention` on the features (chunks of 64 by default),
which owns the choice of implementation: a checkpointed chunked ``lax.scan`` (``"xla"``) or
the Pallas kernel (``"triton"``, ``"interpret"``). Both are linear in the sequence length in
time and memory. Layout ``[batch, seq, heads, head_dim]``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify

from jaxbounds import _checks
from jaxbounds.attention.rope import apply_rope
from pallas_kernels import (
    LinearAttentionBlockSizes,
    causal_linear_attention,
    implementation_sequence,
)

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


def _validate(q, k, v, *, eps, power_scale, causal=True, rope=None, state=None) -> None:
    """Every static check of the public functions (q, k, v ``[B, N, H, d]``)."""
    same_seq = "when causal or with rope" if causal or rope is not None else ""
    _checks.check_qkv(q, k, v, same_seq=same_seq)
    _checks.check_number("eps", eps, low=0)
    _checks.check_number("power_scale", power_scale, low=0, low_open=True)
    if rope is not None:
        if not isinstance(rope, (tuple, list)) or len(rope) != 2:
            raise ValueError(f"rope must be None or a (sin, cos) pair, got {type(rope)}.")
        for name, table in zip(("sin", "cos"), rope, strict=True):
            _checks.check_exact_shape(f"rope {name} table", table, (q.shape[1], q.shape[3]),
                                      "[seq, head_dim]")
    if state is not None:
        if not isinstance(state, NaLaState):
            raise TypeError(f"initial_state must be a NaLaState, got {type(state).__name__}.")
        b, _, h, d = q.shape
        for name, want in (("kv", (b, h, 2 * d, v.shape[-1])), ("k_sum", (b, h, 2 * d)),
                           ("count", ())):
            _checks.check_exact_shape(f"initial_state.{name}", getattr(state, name), want)


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
      implementation: "xla" | "triton" | "interpret", a sequence of them tried in order,
        or None, for the causal core (:func:`pallas_kernels.causal_linear_attention`); the
        non-causal form is always XLA.
      feature_map: "relu" (the official code) or "cosine" (the paper's cosine map).
      chunk_size: the causal chunk (a power of two ≥ 16); default 64 (from the shapes).

    Returns:
      ``o [batch, seq, heads, dv]`` in q's dtype, and the final :class:`NaLaState` when
      ``return_state``. Any sequence length works (the causal core pads to the chunk).
    """
    _validate(q, k, v, eps=eps, power_scale=power_scale, causal=causal, rope=rope,
              state=initial_state)
    if not causal and (initial_state is not None or return_state):
        raise ValueError(
            "initial_state and return_state are for causal=True (a carried prefix state); "
            f"got causal={causal!r}.")
    implementation_sequence(implementation)  # validated here too for the non-causal form
    phi_q, phi_k = nala_features(q, k, power_scale=power_scale, feature_map=feature_map)
    qn, kn = _rotate(phi_q, rope), _rotate(phi_k, rope)
    # Features in the compute dtype of the inputs (bf16 stays bf16); sums in float32, or
    # float64 for float64 inputs.
    low = jnp.dtype(q.dtype).itemsize < 4
    cast = (lambda x: x.astype(q.dtype)) if low else (lambda x: x)
    qn, kn, qd, kd = map(cast, (qn, kn, phi_q, phi_k))
    acc = jnp.promote_types(jnp.result_type(q, k, v), _F32)  # float64 stays float64
    eps_f = jnp.asarray(eps, acc)
    if not causal:
        n = k.shape[1]
        ein = functools.partial(jnp.einsum, preferred_element_type=acc)
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
    out, s, z = causal_linear_attention(qn, kn, qd, kd, v, s0, z0, eps=eps_f, count=count0,
                                        block_sizes=blocks, implementation=implementation)
    out = jnp.where(eps_f >= 0, out, jnp.nan).astype(q.dtype)
    if return_state:
        return out, NaLaState(s, z, jnp.asarray(count0, jnp.int32) + q.shape[1])
    return out


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
    _validate(q, k, v, eps=eps, power_scale=power_scale, causal=causal, rope=rope)
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
    _validate(q[:, None], k[:, None], v[:, None], eps=eps, power_scale=power_scale,
              state=state)
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
