"""Spectral weight constraints for Lipschitz-constrained networks.

Newhouse, Hess, Cesista, Zahorodnii, Bernstein, Isola, "Training Transformers with Enforced
Lipschitz Constants", arXiv 2507.13338. Every function is pure, works under ``jit`` and
``vmap``, and is batched over leading dims. Write W = U diag(σ) Vᵀ.

**One signature.** Every constraint is ``f(w, param, *, key=None, layout="flax",
norm="spectral", **options)``: ``param`` is the bound ``w_max`` (the strength λ for
:func:`spectral_weight_decay`, the strength α for :func:`spectral_soft_cap`); ``key`` seeds
the power iteration of the fast methods (unused by the others, which accept it so that any
constraint can be mapped over a params tree); ``layout`` is ``"flax"`` for kernels
``[..., in, out]`` (the default) or ``"torch"`` for ``[..., out, in]``; the result has the
layout of ``w``.

Fast methods (matrix products only):

* :func:`spectral_normalize`: W / max(1, σ̂_max / w_max), σ̂_max by power iteration
  (:func:`jaxbounds._linalg.power_iteration`, warm-startable through ``v0``). It approaches
  σ_max **from below**, so nothing here is a certificate.
* :func:`spectral_hammer`: W + (w_max − σ̂_max)·u vᵀ: sets the top singular value to w_max,
  leaves the others unchanged.
* :func:`spectral_weight_decay`: W − λ·σ̂_max·u vᵀ: shrinks only the top singular value.
* :func:`spectral_soft_cap`: two odd cubic steps, W ← W(I − αWᵀW), then W ← W(I + αWᵀW).
  On a singular value σ with t = ασ² the composite is σ·(1 − 3t² + 3t³ − t⁴).
  :func:`soft_cap_alpha` picks α (see there).
* :func:`spectral_hard_cap`: min(σ, w_max) on every singular value through two matrix signs
  (Q = msign(W), M = W − w_max·Q, cap = ½[W + w_max·Q − msign(M)·Qᵀ·M]); :func:`msign` by
  Newton–Schulz with the coefficient schedule :data:`MSIGN_COEFFICIENTS`.

Exact references (SVD): :func:`svd_clip` (= the exact hard cap), :func:`spectral_normalize_svd`,
:func:`spectral_hammer_svd`, :func:`spectral_weight_decay_svd`, :func:`spectral_soft_cap_svd`,
:func:`spectral_hard_cap_svd`.

**Norms.** ``w_max`` is a bound on σ_max (``norm="spectral"``, the default) or on the RMS→RMS
operator norm (``norm="rms"``), ‖W‖_RMS→RMS = √(fan_in/fan_out)·σ_max, the convention of the
paper's transformer. With ``norm="rms"`` the functions convert internally:
σ_max ≤ w_max·√(fan_out/fan_in), with fan_in and fan_out read through ``layout``. For the
soft cap, α is given in the chosen norm (the spectral α is α·fan_in/fan_out).

**Bad input.** A weight with fewer than 2 dims raises ``ValueError``; an integer weight
``TypeError``; a concrete ``w_max ≤ 0`` ``ValueError``. A traced ``w_max ≤ 0`` gives NaN.
Computation runs in float32 (float64 when the input is float64), and the result is cast back
to the input dtype; rounding a capped bfloat16 weight can put σ_max up to ~0.4% above w_max,
so keep constrained master weights in float32.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds import _linalg
from jaxbounds._checks import check_bool, check_choice, check_int, nan_unless, require
from jaxbounds._dtypes import compute_dtype
from jaxbounds._layout import check_layout, from_out_in, to_out_in

__all__ = [
    "MSIGN_COEFFICIENTS",
    "PAPER_HARD_CAP_COEFFICIENTS",
    "CONSTRAINTS",
    "NORMS",
    "WARM_STARTED",
    "get_constraint",
    "msign",
    "rms_to_spectral",
    "soft_cap_alpha",
    "spectral_hammer",
    "spectral_hammer_svd",
    "spectral_hard_cap",
    "spectral_hard_cap_svd",
    "spectral_normalize",
    "spectral_normalize_svd",
    "spectral_soft_cap",
    "spectral_soft_cap_svd",
    "spectral_weight_decay",
    "spectral_weight_decay_svd",
    "svd_clip",
]

# Newton–Schulz schedule for msign: odd quintics p(x) = a·x + b·x³ + c·x⁵, applied to the
# singular values after scaling X by an upper bound on σ_max. Each step k is the minimax
# polynomial for the interval [ℓ_k, u_k] that the previous steps leave (greedy design in the
# spirit of "Polar Express", Amsel et al. 2025), starting from [1e-3, 1]; we designed them with
# scipy (Nelder–Mead on max|1 − p(x)|) and rounded to 6 decimals. In exact arithmetic the
# first 7 steps send every x ∈ [1e-3, 1] to within 2.5e-9 of 1 (intervals after each step:
# [0.0079, 1.99], [0.033, 1.97], [0.13, 1.87], [0.43, 1.57], [0.87, 1.13], [0.9985, 1.0017],
# [1 − 2.5e-9, 1 + 4e-9]). Steps beyond the 7th repeat (15x − 10x³ + 3x⁵)/8, whose fixed
# point 1 is attracting to third order; it mops up float32 roundoff and extends the range.
MSIGN_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (7.878725, -20.193778, 12.954223),
    (4.187604, -3.112043, 0.580981),
    (3.931992, -2.860803, 0.540254),
    (3.343897, -2.507452, 0.512197),
    (2.323204, -1.689066, 0.420989),
    (1.893601, -1.270429, 0.376973),
    (1.874936, -1.249870, 0.374934),
)
_MSIGN_FIXED_POINT = (1.875, -1.25, 0.375)
DEFAULT_MSIGN_STEPS = 8

# The paper's hard cap (reference code, credited there to F. Cesista): four odd quintic steps
# applied directly to W / w_max, approximating min(1, x). Overshoots the cap by about 1%.
PAPER_HARD_CAP_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (0.805032, 0.206361, -0.019763),
    (0.649867, 0.162935, -0.011150),
    (1.810259, -0.200265, 0.008251),
    (1.004384, -0.183490, 0.014413),
)

NORMS = ("spectral", "rms")
_HIGHEST = _linalg.HIGHEST
_POSITIVE = "a positive number (> 0)"


def rms_to_spectral(w_shape, bound, norm: str = "rms", *, layout: str = "flax"):
    """Convert a bound on ‖W‖ in ``norm`` to a bound on σ_max for a kernel of ``w_shape``.

    ‖W‖_RMS→RMS = √(fan_in/fan_out)·σ_max, so σ_max ≤ bound·√(fan_out/fan_in), with the
    kernel ``[..., in, out]`` (``layout="flax"``) or ``[..., out, in]`` (``"torch"``). With
    ``norm="spectral"`` the bound is returned unchanged.
    """
    check_choice("norm", norm, NORMS)
    check_layout(layout)
    if norm == "spectral":
        return bound
    fan_out, fan_in = w_shape[-2:] if layout == "torch" else w_shape[-2:][::-1]
    return bound * float(np.sqrt(fan_out / fan_in))


def _as_matrix(w, layout, norm):
    """Checked ``w`` and its map matrix ``[..., fan_out, fan_in]`` in the compute dtype."""
    w = _linalg.check_matrix(w)
    check_layout(layout)
    check_choice("norm", norm, NORMS)
    return w, to_out_in(w, layout).astype(compute_dtype(w))


def _bounded(w, w_max, layout, norm):
    """``(w, matrix, σ bound)`` for a constraint with bound ``w_max`` in ``norm``."""
    w, x = _as_matrix(w, layout, norm)
    require("w_max", w_max, lambda v: v > 0, _POSITIVE)
    return w, x, rms_to_spectral(x.shape, w_max, norm, layout="torch")


def _finish(x, w, layout, valid=True):
    """The matrix ``x`` back in ``w``'s layout and dtype, NaN where not ``valid``."""
    return from_out_in(nan_unless(valid, x).astype(w.dtype), layout)


def _mT(x):
    return jnp.swapaxes(x, -1, -2)


def _mm(a, b, precision):
    return jnp.matmul(a, b, precision=precision)


def _matvec(x, v):
    return jnp.einsum("...oi,...i->...o", x, v, precision=_HIGHEST)


# ----------------------------------------------------------------------------- power iteration

def _rank_one(w, key, layout, norm, num_iters, v0, return_vector, top_value):
    """W + (top_value(σ̂) − σ̂)·u vᵀ with (σ̂, v) from power iteration and u = Wv/σ̂ (for
    spectral_hammer and spectral_weight_decay)."""
    w, x = _as_matrix(w, layout, norm)
    if v0 is not None:
        v0 = jnp.asarray(v0, x.dtype)
    sigma, v = _linalg.power_iteration(x, num_iters=num_iters, key=key, v0=v0)
    u = _matvec(x, v) / jnp.maximum(sigma, jnp.finfo(x.dtype).tiny)[..., None]
    target, valid = top_value(sigma, x.shape)
    out = x + (target - sigma)[..., None, None] * (u[..., :, None] * v[..., None, :])
    out = _finish(out, w, layout, valid)
    return (out, v) if return_vector else out


def spectral_normalize(w, w_max, *, key=None, layout: str = "flax", norm: str = "spectral",
                       num_iters: int = 16, v0=None, return_vector: bool = False):
    """W / max(1, σ̂_max/w_max), σ̂_max by power iteration (paper §3, "spectral normalize").

    Since σ̂_max ≤ σ_max, the result can exceed w_max by the power-iteration error; warm
    starting (``v0`` = the vector returned by the previous call) makes that error vanish over
    training steps. ``return_vector=True`` returns ``(w_new, v)``, v the top right singular
    vector ``[..., fan_in]`` of the map, for the next warm start. Without ``key`` and ``v0``
    the start vector is deterministic.
    """
    w, x, bound = _bounded(w, w_max, layout, norm)
    if v0 is not None:
        v0 = jnp.asarray(v0, x.dtype)
    sigma, v = _linalg.power_iteration(x, num_iters=num_iters, key=key, v0=v0)
    out = x / jnp.maximum(1.0, sigma / bound)[..., None, None]
    out = _finish(out, w, layout, jnp.asarray(w_max) > 0)
    return (out, v) if return_vector else out


def spectral_hammer(w, w_max, *, key=None, layout: str = "flax", norm: str = "spectral",
                    num_iters: int = 16, v0=None, return_vector: bool = False):
    """W + (w_max − σ̂_max)·u vᵀ: sets the top singular value to w_max (paper §3.2, "hammer").

    The other singular values and all singular vectors stay (exactly, if (u, v) are exact).
    The hammer only caps the *top* direction: with several σ above w_max it needs repeated
    applications (the paper relies on the small per-step change of Muon's updates).
    ``key``, ``num_iters``, ``v0``, ``return_vector``: as for :func:`spectral_normalize`.
    """
    require("w_max", w_max, lambda v: v > 0, _POSITIVE)

    def top_value(sigma, shape):
        return rms_to_spectral(shape, w_max, norm, layout="torch"), jnp.asarray(w_max) > 0

    return _rank_one(w, key, layout, norm, num_iters, v0, return_vector, top_value)


def spectral_weight_decay(w, strength, *, key=None, layout: str = "flax",
                          norm: str = "spectral", num_iters: int = 16, v0=None,
                          return_vector: bool = False):
    """W − λ·σ̂_max·u vᵀ: decays only the top singular value, σ_max ← (1 − λ)·σ_max.

    ``strength`` λ ∈ [0, 1] takes the place of ``w_max`` in the common signature; it is
    scale-free, so ``norm`` is only checked. A traced λ outside [0, 1] gives NaN. ``key``,
    ``num_iters``, ``v0``, ``return_vector``: as for :func:`spectral_normalize`.
    """
    require("strength", strength, lambda s: (s >= 0) & (s <= 1), "in [0, 1]")

    def top_value(sigma, shape):
        lam = jnp.asarray(strength)
        return (1 - lam) * sigma, (lam >= 0) & (lam <= 1)

    return _rank_one(w, key, layout, norm, num_iters, v0, return_vector, top_value)


# ----------------------------------------------------------------------------- soft cap

def _gram_step(x, a, b, c, precision):
    """x ← x·(a + b·A + c·A²) with A = xᵀx, using the smaller Gram matrix."""
    fan_out, fan_in = x.shape[-2], x.shape[-1]
    if fan_out >= fan_in:
        gram = _mm(_mT(x), x, precision)
        poly = b * gram if c == 0 else b * gram + c * _mm(gram, gram, precision)
        return a * x + _mm(x, poly, precision)
    gram = _mm(x, _mT(x), precision)
    poly = b * gram if c == 0 else b * gram + c * _mm(gram, gram, precision)
    return a * x + _mm(poly, x, precision)


def soft_cap_alpha(w_max, wd=0.0, lr=1.0, max_update_norm=1.0, *, num_bisections: int = 60):
    """Strength α of the soft cap that sends k = w_max(1 − wd) + lr·max_update_norm to w_max.

    The composite map of :func:`spectral_soft_cap` on a singular value σ is
    σ·g(ασ²) with g(t) = 1 − 3t² + 3t³ − t⁴, i.e. the quartic in α
    −k⁹α⁴ + 3k⁷α³ − 3k⁵α² + (k − w_max) = 0 of the reference code. g falls strictly on
    t ≥ 0 (g′(t) = −t(4t² − 9t + 6) < 0) from g(0) = 1 to g(1) = 0, so for k > w_max the
    smallest non-negative root is the unique t* ∈ (0, 1) with g(t*) = w_max/k, found by
    bisection (jittable, traced ``lr`` is fine); α = t*/k².

    Deviation from the reference: for k ≤ w_max (nothing to cap) we return α = 0, where the
    reference's root filter falls back to 1.0.

    Guarantee and its domain: d/dσ[σ·g(ασ²)] = 1 − 15t² + 21t³ − 9t⁴ vanishes first at
    t = 1/3, where g = 62/81, so the map increases on [0, k] exactly when
    w_max/k ≥ 62/81 ≈ 0.765. Then every σ ≤ k lands at ≤ w_max. So if the weights were within
    w_max before the step and the update's spectral norm is ≤ lr·max_update_norm (Muon:
    ≤ 1.21·lr with optax's standard coefficients), the soft cap keeps them within w_max,
    provided k ≤ (81/62)·w_max, e.g. lr·max_update_norm ≤ 0.306·w_max with wd = 0.
    All four numbers are in the same norm (use the RMS→RMS norm with ``norm="rms"``).
    """
    require("w_max", w_max, lambda v: v > 0, _POSITIVE)
    require("wd", wd, lambda v: (v >= 0) & (v < 1), "in [0, 1)")
    require("lr", lr, lambda v: v >= 0, "non-negative")
    require("max_update_norm", max_update_norm, lambda v: v >= 0, "non-negative")
    dtype = jnp.result_type(float)
    w_max = jnp.asarray(w_max, dtype)
    k = w_max * (1 - jnp.asarray(wd, dtype)) + jnp.asarray(lr, dtype) * jnp.asarray(
        max_update_norm, dtype)
    ratio = w_max / jnp.maximum(k, jnp.finfo(dtype).tiny)

    def g(t):
        return 1 - 3 * t**2 + 3 * t**3 - t**4

    def body(_, bracket):
        lo, hi = bracket
        mid = 0.5 * (lo + hi)
        above = g(mid) > ratio  # root lies to the right
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, num_bisections, body,
                               (jnp.zeros_like(ratio), jnp.ones_like(ratio)))
    t = 0.5 * (lo + hi)
    alpha = jnp.where(k > w_max, t / k**2, 0.0)
    return nan_unless(w_max > 0, alpha)


def _soft_cap_scale(x, norm):
    """c² = fan_in/fan_out for ``norm="rms"`` (σ_rms = c·σ, so t = α·c²·σ²), else 1."""
    return 1.0 if norm == "spectral" else x.shape[-1] / x.shape[-2]


def spectral_soft_cap(w, alpha, *, key=None, layout: str = "flax", norm: str = "spectral",
                      precision=_HIGHEST):
    """Soft cap: W ← W(I − αWᵀW), then W ← W(I + αWᵀW) (reference code's ``soft_cap``).

    On each singular value, σ ↦ σ·(1 − 3t² + 3t³ − t⁴) with t = ασ² (measured in ``norm``);
    choose α with :func:`soft_cap_alpha`. α = 0 is the identity. Four Gram products.
    ``key`` is unused (the common signature).
    """
    del key
    w, x = _as_matrix(w, layout, norm)
    require("alpha", alpha, lambda a: a >= 0, "non-negative")
    a = jnp.asarray(alpha, x.dtype) * _soft_cap_scale(x, norm)
    x = _gram_step(x, 1.0, -a, 0, precision)
    x = _gram_step(x, 1.0, a, 0, precision)
    return _finish(x, w, layout, jnp.asarray(alpha) >= 0)


# ----------------------------------------------------------------------------- msign, hard cap

def _msign_schedule(num_steps: int):
    base = MSIGN_COEFFICIENTS[:num_steps]
    return base + (_MSIGN_FIXED_POINT,) * max(0, num_steps - len(base))


def msign(x, *, num_steps: int = DEFAULT_MSIGN_STEPS, precision=_HIGHEST,
          implementation=None):
    """Matrix sign (polar factor) U·sign(Σ)·Vᵀ by Newton–Schulz, batched over leading dims.

    X is first scaled by s = ‖(XᵀX)²‖_F^{1/4} ≥ σ_max (an over-estimate by at most
    rank^{1/8}, far tighter than ‖X‖_F), reusing the first step's Gram products; then the
    quintic schedule :data:`MSIGN_COEFFICIENTS` runs (3 matrix products per step). Accuracy:
    singular values with σ/s ≥ 1e-3 are sent to 1 within float roundoff with the default 8
    steps; smaller ones are sent to values in (0, 1) (a zero singular value stays 0).

    Steps after the first run through :func:`pallas_kernels.newton_schulz_steps` with
    ``implementation`` (None: the default dispatch; "xla" off a CUDA GPU).
    """
    from pallas_kernels import newton_schulz_steps  # the Newton–Schulz op

    x = _linalg.check_matrix(x, "x")
    check_int("num_steps", num_steps, minimum=1)
    dtype = compute_dtype(x)
    x = x.astype(dtype)
    tall = x.shape[-2] >= x.shape[-1]
    if not tall:
        x = _mT(x)  # work with the smaller Gram matrix XᵀX
    tiny = jnp.finfo(dtype).tiny
    # msign is scale-invariant: pre-scale by ‖X‖_F so that the fourth powers below can
    # neither underflow (a tiny or zero X, e.g. W − w_max·msign(W) when every σ = w_max)
    # nor overflow. A zero matrix stays exactly zero.
    fro = jnp.linalg.norm(x, axis=(-2, -1), keepdims=True)
    x = x / jnp.maximum(fro, tiny)
    (a, b, c), *rest = _msign_schedule(num_steps)
    gram = _mm(_mT(x), x, precision)
    gram2 = _mm(gram, gram, precision)
    s2 = jnp.sqrt(jnp.linalg.norm(gram2, axis=(-2, -1)))  # ≥ σ_max²
    s2 = jnp.maximum(s2, tiny)[..., None, None]
    x = x / jnp.sqrt(s2)
    gram = gram / s2
    gram2 = (gram2 / s2) / s2
    x = a * x + _mm(x, b * gram + c * gram2, precision)
    if rest:
        x = newton_schulz_steps(x, rest, precision=precision, implementation=implementation)
    return x if tall else _mT(x)


def spectral_hard_cap(w, w_max, *, key=None, layout: str = "flax", norm: str = "spectral",
                      num_steps: int = DEFAULT_MSIGN_STEPS, paper_coefficients: bool = False,
                      precision=_HIGHEST, implementation=None):
    """Hard cap: min(σ, w_max) on every singular value, with matrix products only.

    With Q = msign(W) and M = W − w_max·Q (= U(Σ − w_max)Vᵀ), msign(M)·Qᵀ·M = U|Σ − w_max|Vᵀ,
    so ½[W + w_max·Q − msign(M)·Qᵀ·M] = U·½(Σ + w_max − |Σ − w_max|)·Vᵀ = U·min(Σ, w_max)·Vᵀ.
    Cost: 2·(3·num_steps) + 2 matrix products. ``key`` is unused (the common signature).

    Accuracy (spectra 0.05·w_max … 4·w_max, float32): σ_max ≤ w_max(1 + 1e-3) and every
    singular value within 1e-2·w_max of min(σ, w_max), tested on CPU up to 96×96 (errors
    ~1e-5) and measured on an H200 at 4096² (max error 1e-4 with the default 8 steps,
    2.4e-4 with 7, 2.8e-3 with 6: 6 steps miss the 1e-3 target). The binding constraint is
    the smallest σ/s that msign must resolve: ≈ 0.05/(4·rank^{1/8}) for W and
    ≈ 0.01/(3·rank^{1/8}) for M, both ≥ 1e-3 up to rank 4096.

    ``precision`` defaults to ``HIGHEST`` and must stay there on a GPU: with the default
    (TF32, 10-bit mantissa) matrix products the iteration *diverges* (measured on an H200:
    σ_max off by 1e6 at 2048² and 4096²), because the early, aggressive quintics amplify the
    rounding errors beyond their design interval.
    ``paper_coefficients=True`` instead runs the paper's fixed four quintic steps
    (:data:`PAPER_HARD_CAP_COEFFICIENTS`) on W/w_max; it overshoots the cap by about 1% and
    is only accurate for σ up to a few w_max. ``num_steps`` is ignored there.
    ``implementation`` is passed to :func:`msign` (the Newton–Schulz op).
    """
    del key
    w, x, bound = _bounded(w, w_max, layout, norm)
    check_bool("paper_coefficients", paper_coefficients)
    if paper_coefficients:
        y = x / bound
        for a, b, c in PAPER_HARD_CAP_COEFFICIENTS:
            y = _gram_step(y, a, b, c, precision)
        out = y * bound
    else:
        q = msign(x, num_steps=num_steps, precision=precision, implementation=implementation)
        m = x - bound * q
        sm = msign(m, num_steps=num_steps, precision=precision, implementation=implementation)
        if x.shape[-2] >= x.shape[-1]:  # Qᵀ M is [fan_in, fan_in]
            corr = _mm(sm, _mm(_mT(q), m, precision), precision)
        else:  # msign(M)·Qᵀ·M = (M·Qᵀ)·msign(M) for these aligned matrix functions
            corr = _mm(_mm(m, _mT(q), precision), sm, precision)
        out = 0.5 * (x + bound * q - corr)
    return _finish(out, w, layout, jnp.asarray(w_max) > 0)


# ----------------------------------------------------------------------------- SVD references

def _svd_map(x, w, layout, spectrum, valid=True):
    """U·spectrum(Σ)·Vᵀ of the map ``x`` (one SVD), back in ``w``'s layout and dtype."""
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    out = jnp.matmul(u * spectrum(s)[..., None, :], vt, precision=_HIGHEST)
    return _finish(out, w, layout, valid)


def svd_clip(w, w_max, *, key=None, layout: str = "flax", norm: str = "spectral"):
    """Exact hard cap U·min(Σ, w_max)·Vᵀ by ``jnp.linalg.svd`` (the reference).

    ``key`` is unused (the common signature)."""
    del key
    w, x, bound = _bounded(w, w_max, layout, norm)
    return _svd_map(x, w, layout, lambda s: jnp.minimum(s, bound), jnp.asarray(w_max) > 0)


spectral_hard_cap_svd = svd_clip


def spectral_normalize_svd(w, w_max, *, key=None, layout: str = "flax",
                           norm: str = "spectral"):
    """Exact W / max(1, σ_max/w_max). ``key`` is unused (the common signature)."""
    del key
    w, x, bound = _bounded(w, w_max, layout, norm)
    s = jnp.linalg.svd(x, compute_uv=False)
    out = x / jnp.maximum(1.0, s[..., 0] / bound)[..., None, None]
    return _finish(out, w, layout, jnp.asarray(w_max) > 0)


def spectral_hammer_svd(w, w_max, *, key=None, layout: str = "flax", norm: str = "spectral"):
    """Exact hammer: the top singular value set to w_max, the others unchanged.

    ``key`` is unused (the common signature)."""
    del key
    w, x, bound = _bounded(w, w_max, layout, norm)

    def spectrum(s):
        return s.at[..., 0].set(jnp.broadcast_to(jnp.asarray(bound, s.dtype), s.shape[:-1]))

    return _svd_map(x, w, layout, spectrum, jnp.asarray(w_max) > 0)


def spectral_weight_decay_svd(w, strength, *, key=None, layout: str = "flax",
                              norm: str = "spectral"):
    """Exact spectral weight decay: σ_max ← (1 − λ)·σ_max, the others unchanged.

    ``key`` is unused and ``norm`` only checked (the common signature)."""
    del key
    w, x = _as_matrix(w, layout, norm)
    require("strength", strength, lambda s: (s >= 0) & (s <= 1), "in [0, 1]")
    return _svd_map(x, w, layout, lambda s: s.at[..., 0].multiply(1 - strength))


def spectral_soft_cap_svd(w, alpha, *, key=None, layout: str = "flax",
                          norm: str = "spectral"):
    """Exact soft cap: σ ↦ σ·(1 − 3t² + 3t³ − t⁴), t = α·σ² (σ measured in ``norm``).

    ``key`` is unused (the common signature)."""
    del key
    w, x = _as_matrix(w, layout, norm)
    require("alpha", alpha, lambda a: a >= 0, "non-negative")
    scale = _soft_cap_scale(x, norm)

    def spectrum(s):
        t = alpha * scale * s**2
        return s * (1 - 3 * t**2 + 3 * t**3 - t**4)

    return _svd_map(x, w, layout, spectrum)


# ----------------------------------------------------------------------------- lookup

CONSTRAINTS: dict[str, Callable] = {
    "spectral_normalize": spectral_normalize,
    "spectral_hammer": spectral_hammer,
    "spectral_weight_decay": spectral_weight_decay,
    "spectral_soft_cap": spectral_soft_cap,
    "spectral_hard_cap": spectral_hard_cap,
    "svd_clip": svd_clip,
    "spectral_normalize_svd": spectral_normalize_svd,
    "spectral_hammer_svd": spectral_hammer_svd,
    "spectral_weight_decay_svd": spectral_weight_decay_svd,
    "spectral_soft_cap_svd": spectral_soft_cap_svd,
}
_ALIASES = {
    "normalize": "spectral_normalize",
    "hammer": "spectral_hammer",
    "weight_decay": "spectral_weight_decay",
    "soft_cap": "spectral_soft_cap",
    "hard_cap": "spectral_hard_cap",
    "svd": "svd_clip",
}


def get_constraint(name: str) -> Callable:
    """The constraint function called ``name`` (a key of :data:`CONSTRAINTS` or a short alias:
    ``normalize``, ``hammer``, ``weight_decay``, ``soft_cap``, ``hard_cap``, ``svd``)."""
    if not isinstance(name, str):
        raise TypeError(f"constraint name must be a str, got {type(name).__name__}.")
    key = _ALIASES.get(name, name)
    if key not in CONSTRAINTS:
        valid = sorted(set(CONSTRAINTS) | set(_ALIASES))
        raise ValueError(f"unknown constraint name {name!r}; expected one of {valid}.")
    return CONSTRAINTS[key]


# The constraints that run a power iteration and take a warm-start vector ``v0``.
WARM_STARTED: frozenset[Callable] = frozenset(
    {spectral_normalize, spectral_hammer, spectral_weight_decay})
