r"""Local Lipschitz constants over an ℓ∞ box: sound upper bounds, attained lower bounds.

For f: ℝⁿ → ℝᵐ and the box B = {x : ‖x − x₀‖_∞ ≤ ε} the local Lipschitz constant in the
ℓp norm is L_p(B) = sup_{x ∈ B} ‖J_f(x)‖_{p→p} (over the points where f is differentiable;
on a convex set this is also the smallest L with ‖f(x) − f(y)‖_p ≤ L‖x − y‖_p). Norms:
``"inf"``: ‖J‖_{∞→∞} = max_i Σ_j |J_ij| (max row ℓ1 norm, the default); ``"1"``: max column
ℓ1 norm; ``"2"``: spectral norm. Paper: Shi, Wang, Zhang, Kolter, Hsieh, "Efficiently
Computing Local Lipschitz Constants of Neural Networks via Bound Propagation" (NeurIPS 2022).

Upper bound, any JAX function (:func:`local_lipschitz_upper`, ``method="interval"``)
-----------------------------------------------------------------------------------
Interval bound propagation (:func:`jaxbounds.verify.interval_bounds`) through the graph of
``jax.jacrev(f)`` and of ``jax.jacfwd(f)``; both enclose every J(x), x ∈ B, entrywise, so
their intersection [J_lo, J_hi] does too. The ReLU derivative is a step: inside the graph it
is ``select(z > 0, g, 0)``, and where the pre-activation box straddles 0 the comparison is
undecided and the rule takes the hull of both branches — the relaxation relu'(z) ∈ [0, 1].
With A = max(|J_lo|, |J_hi|) ≥ |J(x)| entrywise,

    ‖J(x)‖_{∞→∞} ≤ max_i Σ_j A_ij,   ‖J(x)‖_{1→1} ≤ max_j Σ_i A_ij,   ‖J(x)‖₂ ≤ ‖A‖₂

(the last since ‖J‖₂ ≤ ‖|J|‖₂ ≤ ‖A‖₂ for 0 ≤ |J| ≤ A; for ``"2"`` also
‖J‖₂ ≤ ‖J_c‖₂ + ‖J_r‖₂ with J_c, J_r the centre and radius, and the smaller is kept, which is
exact for a linear map). The final norm is widened by the factor 1 + 4·(n + m)·u (u the
unit roundoff of the dtype) against rounding in its own sums; the spectral norms come from
an SVD, accurate to a few ulp.

Upper bound, ReLU MLPs (``method="linear"``, for a :class:`ReluMLP`)
-------------------------------------------------------------------
J(x) = W_L D_L(x) W_{L−1} ⋯ D_1(x) W_0 with D_k = diag(1[z_k(x) > 0]). Bound the
pre-activations z_k over B with CROWN (backward linear relaxation; Zhang et al. 2018)
intersected with IBP, layer by layer; then D_k ∈ [d_lo, d_hi] entrywise (d = 0 or 1 where
the sign is decided, [0, 1] where z_k straddles 0). Since

    ‖J_i(x)‖₁ = max_{s ∈ [−1, 1]ⁿ} e_iᵀ J(x) s,

‖J‖_{∞→∞} ≤ max_i max_{s, D} y_i for the *gain network* y = W_L G_L(⋯G_1(W_0 s)), whose
"activation" G_k(t) = D_k t may take any value between d_lo·t and d_hi·t: for an undecided
neuron, G(t) ∈ [min(0, t), max(0, t)]. That is bounded by linear bound propagation again
(CROWN: the convex upper envelope max(0, t) lies below its chord u(t − l)/(u − l), the
concave lower one min(0, t) above its chord −l(t − u)/(u − l)), intersected with IBP at every
layer; by the symmetry of s both the upper bound of y_i and minus its lower bound bound
‖J_i‖₁, and the smaller is kept. ``"1"`` uses the transposed chain (Jᵀ); ``"2"`` falls back to
the interval method. The result is the minimum of the linear and the interval bounds (both
are sound). This is a compact, chain-structured form of Shi et al.'s idea (linear
relaxation of the Jacobian's graph with ReLU-derivative relaxations), not their full
bilinear relaxation.

Lower bound (:func:`local_lipschitz_lower`)
-------------------------------------------
max ‖J(x)‖ over points x ∈ B actually evaluated — an attained value, hence ≤ L_p(B) whatever
the search does: x₀, random points and random vertices of B, then projected sign-gradient
ascent on ‖J(x)‖ from the best of them. For piecewise-linear networks ∇_x‖J(x)‖ = 0 almost
everywhere, so there the ascent takes random sign steps (a random walk over linear regions);
for smooth activations it climbs.

Naive global bound (:func:`naive_lipschitz_bound`): Π_k ‖W_k‖_{p→p}, valid for any
1-Lipschitz elementwise activations, on all of ℝⁿ.

Limits: the interval method handles whatever :func:`interval_bounds` handles (it raises
naming an unsupported primitive); the Jacobian has m·n entries, so it is for inputs of
moderate size. Gaps: the interval relaxation forgets the correlation between entries of J
(each D_k entry is free per entry); the linear method for ReLU MLPs only.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import (
    check_array,
    check_choice,
    check_int,
    check_key,
    check_sequence,
    require,
)
from jaxbounds._linalg import spectral_norm_upper
from jaxbounds.verify._weights import layer_matrices

NORMS = ("inf", "1", "2")

__all__ = [
    "NORMS",
    "ReluMLP",
    "jacobian_interval",
    "jacobian_norm",
    "local_lipschitz_lower",
    "local_lipschitz_upper",
    "naive_lipschitz_bound",
]


# ----------------------------------------------------------------------------- helpers


_NORM_ALIASES = {"inf": "inf", "1": "1", "2": "2", np.inf: "inf", 1: "1", 2: "2"}


def _norm_name(norm) -> str:
    """``norm`` as one of :data:`NORMS` (``np.inf``, 1 and 2 are accepted as aliases)."""
    try:
        norm = _NORM_ALIASES.get(norm, norm)
    except TypeError:  # unhashable: refused below
        pass
    return check_choice("norm", norm, NORMS)


def _as_box(x0, eps):
    """``(x0, eps)`` as arrays of x0's shape and floating dtype, after checking them."""
    x0 = check_array("x0", jnp.asarray(x0))
    if x0.size == 0:
        raise ValueError(f"x0 must be non-empty, got shape {x0.shape}.")
    eps = jnp.asarray(eps, dtype=x0.dtype)
    require("eps", eps, lambda e: np.isfinite(e) & (e >= 0), "finite and >= 0")
    try:
        return x0, jnp.broadcast_to(eps, x0.shape)
    except ValueError as err:
        raise ValueError(
            f"eps must broadcast to x0's shape {x0.shape}, got shape {eps.shape}."
        ) from err


def _flat_fn(fn: Callable, x0):
    """g(x_flat) = fn(x_flat.reshape(x0.shape)).ravel()."""
    shape = x0.shape

    def flat(x):
        return jnp.ravel(fn(x.reshape(shape)))

    return flat


def jacobian_norm(jac, norm: str = "inf"):
    """‖J‖_{p→p} of a matrix [m, n]: max row ℓ1 ("inf"), max column ℓ1 ("1"), spectral ("2")."""
    norm = _norm_name(norm)
    if norm == "inf":
        return jnp.max(jnp.sum(jnp.abs(jac), axis=1))
    if norm == "1":
        return jnp.max(jnp.sum(jnp.abs(jac), axis=0))
    return jnp.linalg.norm(jac, ord=2)


def _outward(value, size, dtype):
    return value * (1 + 4 * size * jnp.finfo(dtype).eps)


# ----------------------------------------------------------------------------- interval method


def jacobian_interval(fn: Callable, x0, eps, *, mode: str = "both"):
    """Entrywise bounds [J_lo, J_hi] ([m, n], inputs and outputs flattened) on J_f(x) over the
    box ‖x − x₀‖_∞ ≤ ε, by IBP through ``jacrev`` (``mode="rev"``), ``jacfwd`` (``"fwd"``)
    or both, intersected (``"both"``)."""
    from jaxbounds.verify.ibp import interval_bounds

    if mode not in ("rev", "fwd", "both"):
        raise ValueError(f"mode must be 'rev', 'fwd' or 'both', got {mode!r}.")
    x0, eps = _as_box(x0, eps)
    flat = _flat_fn(fn, x0)
    lo_x, hi_x = jnp.ravel(x0 - eps), jnp.ravel(x0 + eps)
    boxes = []
    if mode in ("rev", "both"):
        boxes.append(interval_bounds(jax.jacrev(flat), lo_x, hi_x))
    if mode in ("fwd", "both"):
        boxes.append(interval_bounds(jax.jacfwd(flat), lo_x, hi_x))
    lo = jnp.maximum(*[b[0] for b in boxes]) if len(boxes) > 1 else boxes[0][0]
    hi = jnp.minimum(*[b[1] for b in boxes]) if len(boxes) > 1 else boxes[0][1]
    return lo, hi


def _interval_upper(fn, x0, eps, norm):
    if _hashable(fn):
        lo, hi = _jacobian_interval_jit(x0, eps, fn=fn)
    else:
        lo, hi = jacobian_interval(fn, x0, eps)
    bound = jacobian_norm(jnp.maximum(jnp.abs(lo), jnp.abs(hi)), norm)
    if norm == "2":  # also ‖J‖₂ ≤ ‖J_c‖₂ + ‖J_r‖₂ (exact when the interval is a point)
        centre, radius = (lo + hi) / 2, (hi - lo) / 2
        bound = jnp.minimum(bound, jacobian_norm(centre, "2") + jacobian_norm(radius, "2"))
    return _outward(bound, lo.shape[0] + lo.shape[1], lo.dtype)


@functools.partial(jax.jit, static_argnames=("fn",))
def _jacobian_interval_jit(x0, eps, *, fn):
    """Compiled once per (fn, shapes): fn is a static (hashable) argument."""
    return jacobian_interval(fn, x0, eps)


def _hashable(fn) -> bool:
    try:
        hash(fn)
    except TypeError:
        return False
    return True


# ----------------------------------------------------------------------------- ReLU MLPs


@dataclasses.dataclass(frozen=True, eq=False)
class ReluMLP:
    """f(x) = relu(⋯relu(x @ K_0 + b_0)⋯) @ K_L + b_L for Flax kernels K_k ``[in, out]``
    (``layout="flax"``, the default), or f(x) = W_L relu(⋯relu(W_0 x + b_0)⋯) + b_L for
    ``[out, in]`` matrices with ``layout="torch"``. ``biases=None`` means zero biases.
    Callable on ``x`` [..., n_in], so it is also an ordinary JAX function for the interval
    method and the lower bound. ``matrices`` holds the W_k ``[out, in]`` (y = W_k x)."""

    weights: tuple
    biases: tuple | None = None
    layout: str = "flax"

    def __post_init__(self):
        ws = tuple(jnp.asarray(w) for w in check_sequence("weights", self.weights))
        mats = tuple(layer_matrices(ws, self.layout))  # [out, in]
        if self.biases is None:
            bs = tuple(jnp.zeros(m.shape[0], m.dtype) for m in mats)
        else:
            biases = check_sequence("biases", self.biases, length=len(ws), per="layer")
            bs = tuple(jnp.asarray(b) for b in biases)
        for k, (m, b) in enumerate(zip(mats, bs)):
            if b.shape != (m.shape[0],):
                raise ValueError(
                    f"biases[{k}] must have shape ({m.shape[0]},) (the fan_out of weights[{k}] "
                    f"{tuple(ws[k].shape)}, layout={self.layout!r}), got {b.shape}."
                )
        object.__setattr__(self, "weights", ws)
        object.__setattr__(self, "biases", bs)
        object.__setattr__(self, "matrices", mats)

    def __call__(self, x):
        h = x
        for k, (w, b) in enumerate(zip(self.matrices, self.biases)):
            h = h @ w.T + b
            if k < len(self.matrices) - 1:
                h = jax.nn.relu(h)
        return h


def _relu_lines(lo, hi):
    """Linear bounds of relu on [lo, hi]: (upper slope, upper offset, lower slope, lower off)."""
    active, inactive = lo >= 0, hi <= 0
    width = jnp.where(active | inactive, 1.0, hi - lo)
    chord = jnp.where(active, 1.0, jnp.where(inactive, 0.0, hi / width))
    upper_off = jnp.where(active | inactive, 0.0, -chord * lo)
    lower = jnp.where(active, 1.0, jnp.where(inactive, 0.0, (hi > -lo).astype(lo.dtype)))
    return chord, upper_off, lower, jnp.zeros_like(lo)


def _relu_interval(lo, hi):
    return jax.nn.relu(lo), jax.nn.relu(hi)


def _gain_lines(d_lo, d_hi):
    """Linear bounds of G(t) ∈ hull{d_lo·t, d_hi·t} on t ∈ [lo, hi] (d_lo, d_hi ∈ {0, 1})."""

    def lines(lo, hi):
        fixed = d_lo == d_hi
        pos, neg = lo >= 0, hi <= 0
        width = jnp.where(pos | neg, 1.0, hi - lo)
        # upper envelope max(0, t): t if lo >= 0, 0 if hi <= 0, else the chord
        su = jnp.where(pos, 1.0, jnp.where(neg, 0.0, hi / width))
        tu = jnp.where(pos | neg, 0.0, -su * lo)
        # lower envelope min(0, t): 0 if lo >= 0, t if hi <= 0, else the chord
        sl = jnp.where(pos, 0.0, jnp.where(neg, 1.0, -lo / width))
        tl = jnp.where(pos | neg, 0.0, -sl * hi)
        d = d_lo.astype(lo.dtype)
        return (
            jnp.where(fixed, d, su), jnp.where(fixed, 0.0, tu),
            jnp.where(fixed, d, sl), jnp.where(fixed, 0.0, tl),
        )

    def interval(lo, hi):
        corners = jnp.stack([d_lo * lo, d_lo * hi, d_hi * lo, d_hi * hi])
        return jnp.min(corners, axis=0), jnp.max(corners, axis=0)

    return lines, interval


def _crown_chain(ws, bs, activations, centre, radius):
    """Bounds of every pre-activation and the output of y = W_L σ_L(⋯σ_1(W_0 x + b_0)⋯) + b_L
    over x ∈ centre ± radius, by CROWN intersected with IBP layer by layer.

    ``activations[k] = (lines(lo, hi), interval(lo, hi))`` for hidden layer k + 1."""
    z = ws[0] @ centre + bs[0]
    rad = jnp.abs(ws[0]) @ radius
    bounds = [(z - rad, z + rad)]
    lines = []
    for k in range(1, len(ws)):
        lines_fn, interval_fn = activations[k - 1]
        lines.append(lines_fn(*bounds[k - 1]))
        # IBP step from the (intersected) previous bounds
        a_lo, a_hi = interval_fn(*bounds[k - 1])
        c, r = (a_lo + a_hi) / 2, (a_hi - a_lo) / 2
        ibp_mid, ibp_rad = ws[k] @ c + bs[k], jnp.abs(ws[k]) @ r
        up = _backward(ws, bs, lines, k, ws[k], bs[k], centre, radius)
        low = -_backward(ws, bs, lines, k, -ws[k], -bs[k], centre, radius)
        bounds.append((jnp.maximum(low, ibp_mid - ibp_rad), jnp.minimum(up, ibp_mid + ibp_rad)))
    return bounds


def _backward(ws, bs, lines, k, lam, beta, centre, radius):
    """Upper bound of lam·a_k + beta over the box, a_k = σ_k(z_k) the output of hidden layer k
    (a_0 = x), through the linear bounds ``lines[j-1]`` of every hidden layer j <= k."""
    beta = beta
    for j in range(k, 0, -1):
        su, tu, sl, tl = lines[j - 1]
        pos, neg = jnp.maximum(lam, 0), jnp.minimum(lam, 0)
        beta = beta + pos @ tu + neg @ tl
        lam = pos * su + neg * sl
        beta = beta + lam @ bs[j - 1]
        lam = lam @ ws[j - 1]
    return lam @ centre + jnp.abs(lam) @ radius + beta


@functools.partial(jax.jit, static_argnames=("norm",))
def _linear_upper_mlp(weights, biases, x0, eps, *, norm):
    ws = [w.astype(x0.dtype) for w in weights]
    bs = [b.astype(x0.dtype) for b in biases]
    relu = [(_relu_lines, _relu_interval)] * (len(ws) - 1)
    pre = _crown_chain(ws, bs, relu, x0, eps)[:-1]
    gains = [_gain_lines(lo > 0, hi > 0) for lo, hi in pre]
    if norm == "1":  # Jᵀ = W_0ᵀ D_1 ⋯ D_L W_Lᵀ
        ws, gains = [w.T for w in reversed(ws)], list(reversed(gains))
    zeros = [jnp.zeros(w.shape[0], x0.dtype) for w in ws]
    n = ws[0].shape[1]
    out_lo, out_hi = _crown_chain(
        ws, zeros, gains, jnp.zeros(n, x0.dtype), jnp.ones(n, x0.dtype)
    )[-1]
    rows = jnp.minimum(out_hi, -out_lo)
    return _outward(jnp.max(rows), ws[0].shape[1] + ws[-1].shape[0], x0.dtype)


# ----------------------------------------------------------------------------- public API


def local_lipschitz_upper(fn: Callable, x0, eps, *, norm: str = "inf", method: str | None = None):
    """Sound upper bound on max_{‖x − x₀‖_∞ ≤ ε} ‖J_f(x)‖_{p→p} (module docstring).

    Args:
      fn: any JAX function of one array (inputs and outputs are flattened), or a
        :class:`ReluMLP` (then the linear method is available).
      x0: the centre, a floating array; eps: the radius, ≥ 0, a scalar or broadcastable to x0.
      norm: ``"inf"`` (default, max row ℓ1 norm), ``"1"`` or ``"2"``.
      method: ``"interval"`` (IBP through the Jacobian's graph, any fn) or ``"linear"``
        (ReluMLP only; returns min(linear, interval)); default: ``"linear"`` for a ReluMLP
        with norm ``"inf"``/``"1"``, else ``"interval"``.

    Returns a scalar of x0's dtype; in float64 (``jax.enable_x64``) for a certificate.
    """
    norm = _norm_name(norm)
    x0, eps_b = _as_box(x0, eps)
    if method is None:
        method = "linear" if isinstance(fn, ReluMLP) and norm != "2" else "interval"
    if method not in ("interval", "linear"):
        raise ValueError(f"method must be 'interval' or 'linear', got {method!r}.")
    interval = _interval_upper(fn, x0, eps_b, norm)
    if method == "interval":
        return interval
    if not isinstance(fn, ReluMLP):
        raise ValueError(
            f"method='linear' needs fn to be a ReluMLP, got {type(fn).__name__}; use "
            "method='interval' for other functions."
        )
    if norm == "2":
        raise ValueError("method='linear' bounds the 'inf' and '1' norms; use 'interval' for '2'.")
    if x0.ndim != 1:
        raise ValueError(f"a ReluMLP takes x0 of shape [n_in], got {x0.shape}.")
    linear = _linear_upper_mlp(fn.matrices, fn.biases, x0, eps_b, norm=norm)
    return jnp.minimum(linear, interval)


@functools.partial(
    jax.jit,
    static_argnames=("fn", "shape", "norm", "num_samples", "num_starts", "num_steps"),
)
def _search(key, centre, radius, *, fn, shape, norm, num_samples, num_starts, num_steps):
    """The search of :func:`local_lipschitz_lower`, compiled once per fn and settings."""
    flat = _flat_fn(fn, jnp.zeros(shape))
    n = int(np.prod(shape))
    half = num_samples // 2
    starts_count = max(num_starts, 1)

    def value(x):
        return jacobian_norm(jax.jacrev(flat)(x), norm)

    def search(key, centre, radius):
        k_uniform, k_vertex, k_walk = jax.random.split(key, 3)
        uniform = jax.random.uniform(k_uniform, (half, n), centre.dtype, -1.0, 1.0)
        flips = jax.random.bernoulli(k_vertex, 0.5, (num_samples - half, n))
        vertex = jnp.where(flips, 1.0, -1.0).astype(centre.dtype)
        points = jnp.concatenate(
            [centre[None], centre + radius * uniform, centre + radius * vertex]
        )
        values = jax.vmap(value)(points)
        order = jnp.argsort(-values)[:starts_count]
        x = points[order]
        best_v, best_x = values[order[0]], points[order[0]]
        grad_fn = jax.vmap(jax.value_and_grad(value))

        def step(i, carry):
            x, best_v, best_x, k = carry
            v, g = grad_fn(x)
            top = jnp.argmax(v)
            best_x = jnp.where(v[top] > best_v, x[top], best_x)
            best_v = jnp.maximum(best_v, v[top])
            k, k_step = jax.random.split(k)
            random_sign = jnp.where(jax.random.bernoulli(k_step, 0.5, x.shape), 1.0, -1.0)
            direction = jnp.where(g != 0, jnp.sign(g), random_sign)
            size = 0.5 * (1 - i / max(num_steps, 1)) * radius
            x = jnp.clip(x + size * direction, centre - radius, centre + radius)
            return x, best_v, best_x, k

        if not num_steps:
            return best_v, best_x
        x, best_v, best_x, _ = jax.lax.fori_loop(0, num_steps, step, (x, best_v, best_x, k_walk))
        v = jax.vmap(value)(x)
        top = jnp.argmax(v)
        best_x = jnp.where(v[top] > best_v, x[top], best_x)
        return jnp.maximum(best_v, v[top]), best_x

    return search(key, centre, radius)


def local_lipschitz_lower(
    fn: Callable,
    x0,
    eps,
    *,
    key,
    norm: str = "inf",
    num_samples: int = 512,
    num_starts: int = 8,
    num_steps: int = 30,
    return_point: bool = False,
):
    """An attained value of ‖J_f(x)‖_{p→p} in the box, hence a valid lower bound on the local
    Lipschitz constant: the best of x₀, ``num_samples`` random points (half uniform, half
    vertices) and ``num_steps`` of projected sign-gradient ascent from the ``num_starts``
    best (random sign steps where the gradient vanishes). With ``return_point=True`` returns
    ``(value, x)`` with x the point that attains it."""
    norm = _norm_name(norm)
    x0, eps_b = _as_box(x0, eps)
    key = check_key("key", key)
    static = dict(
        fn=fn, shape=x0.shape, norm=norm,
        num_samples=check_int("num_samples", num_samples, minimum=0),
        num_starts=check_int("num_starts", num_starts, minimum=0),
        num_steps=check_int("num_steps", num_steps, minimum=0),
    )
    if _hashable(fn):
        best_v, best_x = _search(key, jnp.ravel(x0), jnp.ravel(eps_b), **static)
    else:
        search = jax.jit(functools.partial(_search.__wrapped__, **static))
        best_v, best_x = search(key, jnp.ravel(x0), jnp.ravel(eps_b))
    if return_point:
        return best_v, best_x.reshape(x0.shape)
    return best_v


def naive_lipschitz_bound(weights: Sequence, *, norm: str = "inf", layout: str = "flax"):
    """Π_k ‖W_k‖_{p→p}: the global Lipschitz bound of a network with 1-Lipschitz elementwise
    activations. ``weights``: Flax kernels ``[in, out]`` (``layout="flax"``, the default) or
    ``[out, in]`` matrices (``layout="torch"``). For ``"2"`` each factor is a certified upper
    bound on σ_max (a float64 SVD with an outward margin)."""
    norm = _norm_name(norm)
    total = 1.0
    for w in layer_matrices([jnp.asarray(w) for w in check_sequence("weights", weights)], layout):
        total = total * (spectral_norm_upper(w) if norm == "2" else jacobian_norm(w, norm))
    return total
