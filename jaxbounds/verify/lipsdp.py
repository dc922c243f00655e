r"""LipSDP: certified ℓ2 Lipschitz bounds of feed-forward networks by semidefinite programming.

Papers: Fazlyab, Robey, Hassani, Morari, Pappas, "Efficient and Accurate Estimation of
Lipschitz Constants for Deep Neural Networks" (NeurIPS 2019), LipSDP-Neuron; Pauli, Havens,
Araujo, Garg, Khorrami, Allgöwer, Hu, "Novel Quadratic Constraints for Extending LipSDP beyond
Slope-Restricted Activations" (ICLR 2024, arXiv 2401.14033), LipSDP-NSR for GroupSort, MaxMin
and Householder activations.

The network
-----------
f(x) = W_L φ(W_{L-1} ⋯ φ(W_0 x + b_0) ⋯ + b_{L-1}) + b_L. The weights are passed as Flax
kernels ``[in, out]`` (``layout="flax"``, the default: layer k computes ``h @ kernel``, so the
kernel is W_kᵀ) or as ``[out, in]`` matrices W_k with ``layout="torch"``. Biases never change
a Lipschitz constant.
:func:`network_forward` evaluates exactly the network the bound is about (the activation
conventions below). ``weights=[W]`` is a linear map: the bound is ‖W‖₂ exactly.

The SDP
-------
Stack the increments of two inputs: z = (Δx, Δw_1, …, Δw_L), Δw_k the post-activation and
Δv_k = W_{k-1}Δw_{k-1} the pre-activation increments of hidden layer k. Every activation
layer satisfies a quadratic constraint (QC) [Δv_k; Δw_k]ᵀ Q_k(y_k) [Δv_k; Δw_k] ≥ 0, linear in
its multipliers y_k. If, for some ρ ≥ 0 and admissible y,

    M(ρ, y) = Σ_k [V_k; R_k]ᵀ Q_k(y_k) [V_k; R_k] + CᵀC − ρ·E_x ⪯ 0

(V_k z = Δv_k, R_k z = Δw_k, C z = Δf, E_x the identity on the Δx block)

then ‖Δf‖² ≤ ρ‖Δx‖² − QC terms ≤ ρ‖Δx‖² (S-procedure), so √ρ is an ℓ2 Lipschitz bound.
:func:`lipsdp_bound` minimises ρ over (ρ, y) with cvxpy (Clarabel by default).

QCs (all are homogeneous in the increments, hence also hold along any segment):

* **Slope-restricted** φ with slope in [α, β] (ReLU, tanh: [0, 1]; sigmoid: [0, ¼];
  ``"slope"`` with ``slope=(α, β)``), LipSDP-Neuron: T = diag(λ), λ ≥ 0,

      Q = [[−2αβ T, (α+β) T], [(α+β) T, −2T]]   ⇔  2 (Δw − αΔv)ᵀ T (βΔv − Δw) ≥ 0.

  ``mode="layer"`` ties λ within a layer (LipSDP-Layer). The coupled-T variant
  (LipSDP-Network) is not offered: its QC is known to be invalid.
* **GroupSort / MaxMin / Householder** (Pauli et al. 2024): on each group g of size n_g the
  incremental map is Δw_g = D Δv_g with D in the convex hull of the activation's Jacobians:
  doubly stochastic for GroupSort (MaxMin = GroupSort with n_g = 2), I − 2c·uuᵀ (c ∈ [0, 1])
  for the Householder activation σ(z) = z if uᵀz > 0 else (I − 2uuᵀ)z. Hence (i) each group is
  1-Lipschitz, ‖Δw_g‖ ≤ ‖Δv_g‖, and (ii) a projection P_g is preserved, P_gΔw_g = P_gΔv_g:
  P_g = 11ᵀ/n_g (sum preservation) for GroupSort, P_g = I − uuᵀ for Householder. The QC is

      λ_g(‖Δv_g‖² − ‖Δw_g‖²) ≥ 0,  λ_g ≥ 0,   on the subspace where P_g(Δv_g − Δw_g) = 0.

  The paper and its released code (ppauli/QCs_MaxMin) add the equality through lossless
  terms with free multipliers, 2μ_g(Δv_g − Δw_g)ᵀP_gΔw_g + 2ν_g(Δw_g − Δv_g)ᵀP_gΔv_g
  (block form [[T − 2S, P + S], [P + S, −T − 2P]]). We impose it exactly instead: Δw_k =
  P_kΔv_k + B_kξ_k with B_k an orthonormal basis of range(I − P_k), and the LMI is written in
  the free coordinates ζ = (Δx, ξ_1, …, ξ_L). By Finsler's lemma this is at least as tight as
  any lossless multipliers (the paper's included) and it is better conditioned: with free
  μ, ν the optimum is approached only as they grow without bound (Clarabel then stops at
  "optimal_inaccurate" with a certified value 9× too loose on a 16-16 MaxMin net), and the
  LMI is smaller (n_in + Σ n_k/2 for MaxMin).
  Conventions: MaxMin maps a pair (a, b) to (max, min); GroupSort sorts each group in
  descending order; MaxMin is the Householder activation with u = (1, −1)/√2.
* ``"maxmin_residual_relu"``: the naive alternative the paper improves on. Each MaxMin pair
  is rewritten as a residual ReLU layer, (max, min)(a, b) = (b + r₁, b − r₂) with
  r = ReLU(a − b, b − a), and LipSDP-Neuron is applied to that network. It treats r₁, r₂ as
  independent, so it cannot see r₁ − r₂ = a − b: for a single MaxMin layer it gives √2 where
  the truth (and LipSDP-NSR) is 1.

Soundness: certifying the solver's answer
-----------------------------------------
An SDP solver's ρ is not a bound (interior-point and first-order solvers stop at a tolerance;
SCS has returned 36.23 for a network whose constant is ≥ 36.48). :func:`certify_multipliers`
fixes the multipliers y (negative λ from the solver are clipped to 0 so that every QC is
valid), after which M(ρ, y) = M₀ − ρE_x is linear in ρ. With M₀ split into the Δx block and
the rest, [[X, Y], [Yᵀ, R]]:

    M(ρ) ⪯ 0  ⇔  R ≺ 0  and  X − ρI − Y R⁻¹ Yᵀ ⪯ 0  ⇔  ρ ≥ ρ*(y) = λ_max(X + Y(−R)⁻¹Yᵀ)

(Schur complement; R does not contain ρ). R must be negative definite, otherwise no ρ works
for these multipliers and a ValueError is raised. ρ*(y) is computed in float64 NumPy/SciPy
(Cholesky of −R, triangular solve, ``eigvalsh``) and a first-order floating-point error
estimate, 32·D·u·(‖X‖ + ‖Y‖²/|λ_max(R)|·(1 + κ(R))), is added outward. The returned bound is
√ρ*. The same routine in JAX (:func:`certified_bound_jax`) turns any admissible multipliers
(e.g. ones solved once, reused while the weights change a little) into a cheap,
differentiable bound; it returns NaN where R is not negative definite.

Solving
-------
The SDP is solved on the normalised network W̃_k = W_k/‖W_k‖₂ (the relaxation scales exactly:
ρ = ρ̃·Π‖W_k‖₂², y_k = ỹ_k·Π_j‖W_j‖₂²/Π_{j<k}‖W_j‖₂²), with a small margin
M(ρ, y) + δ·diag(0, I) ⪯ 0 that keeps R strictly negative definite for the certification.
``solver="jax"`` is a first-order backend: it minimises the convex function ρ*(y) of the
multipliers directly (Adam on log λ over a soft maximum of the eigenvalues of the Schur
complement, with continuation, in float64 JAX), from admissible product-bound multipliers;
each iterate is certifiable, the best one is certified in float64. On random 6-16-16-3
networks it lands within 0.15 % of the interior-point value (600 steps).

Limits: dense matrices of size n_in + Σ n_k (the interior-point solve is for widths in the
hundreds, not thousands); ℓ2 only; fully connected layers (convolutions must be unrolled to
matrices).
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from jaxbounds._checks import (
    check_array,
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_sequence,
    require,
)
from jaxbounds._dtypes import as_compute
from jaxbounds._linalg import spectral_norm_upper
from jaxbounds.verify._weights import layer_matrices

_SLOPES = {"relu": (0.0, 1.0), "tanh": (0.0, 1.0), "sigmoid": (0.0, 0.25), "slope": None}
_GROUPS = ("groupsort", "maxmin", "householder")
_REWRITES = ("maxmin_residual_relu",)
ACTIVATIONS = tuple(_SLOPES) + _GROUPS + _REWRITES
_UNIT_ROUNDOFF = 2.0**-53


@dataclasses.dataclass(frozen=True)
class Multipliers:
    """QC multipliers: ``lam[k]`` holds λ ≥ 0 of activation layer k, per neuron
    (slope-restricted activations and ``maxmin_residual_relu``) or per group (GroupSort,
    MaxMin, Householder; the projection preservation is imposed exactly, it needs none)."""

    lam: tuple


@dataclasses.dataclass(frozen=True)
class LipSDPReport:
    """What :func:`lipsdp_bound` and :func:`certify_multipliers` did.

    ``bound`` = √``rho_certified`` is the certified ℓ2 Lipschitz bound; ``rho_solver`` is the
    solver's raw optimal ρ (not a bound until certified; ``None`` when certifying given
    multipliers); ``rest_block_max_eig`` < 0 is λ_max(R); ``float_margin`` was added to ρ*;
    ``product_bound`` is Π‖W_k‖₂, each factor a certified upper bound on σ_max.
    """

    bound: float
    rho_certified: float
    rho_solver: float | None
    solver: str
    solver_status: str
    activation: str
    multipliers: Multipliers
    rest_block_max_eig: float
    float_margin: float
    product_bound: float
    solve_seconds: float


@dataclasses.dataclass(frozen=True)
class _Spec:
    activation: str
    kind: str  # "slope" or "group"
    alpha: float
    beta: float
    sizes: tuple  # sizes of the QC'd (activation) layers
    groups: tuple  # group count per layer ("group" kind), else sizes
    expand: tuple  # per layer: matrix mapping per-group values to per-neuron values
    proj: tuple  # per layer: block-diagonal preserved projection P ("group" kind)
    basis: tuple  # per layer: orthonormal basis of range(I − P) ("group" kind)


# ----------------------------------------------------------------------------- arguments


def _network(weights, activation, layout, slope, group_size, householder_v, *, xp=np):
    """``(ws, spec)``: the matrices W_k ``[out, in]`` of the layers (float64 NumPy arrays, or
    jax arrays of the compute dtype with ``xp=jax.numpy``) and the QC specification."""
    ws = layer_matrices(weights, layout, finite=True)
    ws = [np.asarray(w, np.float64) for w in ws] if xp is np else list(as_compute(*ws))
    return ws, _spec(ws, activation, slope, group_size, householder_v)


def _householder_vectors(householder_v, sizes, group_size) -> list[np.ndarray]:
    """Per hidden layer: unit vectors [groups, group_size]."""
    if householder_v is None:
        raise ValueError(
            "householder_v is required for activation='householder': an array [group_size] "
            "(shared), [groups, group_size], or a list of those per hidden layer."
        )
    if isinstance(householder_v, list | tuple):
        per_layer = check_sequence(
            "householder_v", householder_v, length=len(sizes), per="hidden layer"
        )
    else:
        per_layer = [householder_v] * len(sizes)
    out = []
    for k, (u, n) in enumerate(zip(per_layer, sizes)):
        name = f"householder_v for hidden layer {k}"
        u = np.asarray(check_array(name, u, ndim=(1, 2), kind="numeric", finite=True),
                       np.float64)
        if u.ndim == 1:
            u = np.broadcast_to(u, (n // group_size, u.shape[0]))
        if u.shape != (n // group_size, group_size):
            raise ValueError(
                f"{name} must have shape ({group_size},) or "
                f"({n // group_size}, {group_size}), got {u.shape}."
            )
        norms = np.linalg.norm(u, axis=1, keepdims=True)
        require(name, norms, lambda v: v > 0, "nonzero in every group")
        out.append(u / norms)
    return out


def _spec(ws, activation, slope, group_size, householder_v) -> _Spec:
    check_choice("activation", activation, ACTIVATIONS)
    sizes = tuple(w.shape[0] for w in ws[:-1])
    if activation in ("maxmin",) + _REWRITES:
        group_size = 2
    elif activation in _SLOPES:
        group_size = 1
    group_size = check_int("group_size", group_size, minimum=1)
    for k, n in enumerate(sizes):
        if n % group_size:
            raise ValueError(
                f"hidden layer {k} has width {n}, not a multiple of the group size "
                f"{group_size} that activation={activation!r} needs."
            )
    if activation not in _GROUPS:
        if activation == "slope" and slope is None:
            raise ValueError("activation='slope' needs slope=(alpha, beta).")
        if activation != "slope" and slope is not None:
            raise ValueError(f"slope is only used with activation='slope', got {slope!r}.")
        alpha, beta = _SLOPES.get(activation) or slope or (0.0, 1.0)
        alpha, beta = float(alpha), float(beta)
        if not (math.isfinite(alpha) and math.isfinite(beta) and alpha <= beta):
            raise ValueError(f"slope must be finite with alpha <= beta, got {slope!r}.")
        eyes = tuple(np.eye(n) for n in sizes)
        return _Spec(activation, "slope", alpha, beta, sizes, sizes, eyes, (), ())
    expand, proj, basis = [], [], []
    if activation == "householder":
        us = _householder_vectors(householder_v, sizes, group_size)
    for k, n in enumerate(sizes):
        g = n // group_size
        expand.append(np.kron(np.eye(g), np.ones((group_size, 1))))
        if activation == "householder":
            blocks = [np.eye(group_size) - np.outer(u, u) for u in us[k]]
        else:
            blocks = [np.full((group_size, group_size), 1.0 / group_size)] * g
        proj.append(_block_diag(blocks, n))
        # Orthonormal basis of range(I − P_k), group by group (eigenvectors with eigenvalue 1).
        cols = []
        for gi, b in enumerate(blocks):
            vals, vecs = np.linalg.eigh(np.eye(group_size) - b)
            keep = vecs[:, vals > 0.5]
            full = np.zeros((n, keep.shape[1]))
            full[gi * group_size : (gi + 1) * group_size] = keep
            cols.append(full)
        basis.append(np.concatenate(cols, axis=1))
    return _Spec(
        activation, "group", 0.0, 1.0, sizes, tuple(n // group_size for n in sizes),
        tuple(expand), tuple(proj), tuple(basis),
    )


def _block_diag(blocks, n):
    out = np.zeros((n, n))
    i = 0
    for b in blocks:
        m = b.shape[0]
        out[i : i + m, i : i + m] = b
        i += m
    return out


# ----------------------------------------------------------------------------- the LMI


def _network_maps(ws, spec, xp):
    """(n_in, [V_k], [R_k], C): linear maps from the free coordinates ζ to the QC'd pre- and
    post-activation increments and to the output increment.

    Feed-forward slope-restricted: ζ = z = (Δx, Δw_1, …, Δw_L). Group activations: the
    preserved projection is imposed exactly, Δw_k = P_k Δv_k + B_k ξ_k with B_k an orthonormal
    basis of range(I − P_k), and ζ = (Δx, ξ_1, …, ξ_L). Residual rewrite: ζ = (Δx, Δr_1, …)."""
    n_in = ws[0].shape[1]
    sizes = [w.shape[0] for w in ws[:-1]]
    free = [b.shape[1] for b in spec.basis] if spec.kind == "group" else sizes
    dim = n_in + sum(free)
    starts = [int(o) for o in np.cumsum([0, n_in] + free)]

    def place(mat, start):
        rows, cols = mat.shape
        return xp.concatenate(
            [xp.zeros((rows, start)), mat, xp.zeros((rows, dim - start - cols))], axis=1
        )

    vs, rs = [], []
    h = place(xp.eye(n_in), 0)
    for k, (w, n) in enumerate(zip(ws[:-1], sizes)):
        pre = w @ h
        if spec.activation in _REWRITES:
            # h_k = H W_{k-1} h_{k-1} + G r_k,  r_k = ReLU(S W_{k-1} h_{k-1}),  per pair (a, b):
            # S = [[1, -1], [-1, 1]], H = [[0, 1], [0, 1]], G = [[1, 0], [0, -1]].
            pairs = np.eye(n // 2)
            s_mat = np.kron(pairs, np.array([[1.0, -1.0], [-1.0, 1.0]]))
            h_mat = np.kron(pairs, np.array([[0.0, 1.0], [0.0, 1.0]]))
            g_mat = np.kron(pairs, np.array([[1.0, 0.0], [0.0, -1.0]]))
            r = place(xp.eye(n), starts[k + 1])
            vs.append(s_mat @ pre)
            rs.append(r)
            h = h_mat @ pre + g_mat @ r
        elif spec.kind == "group":
            h = spec.proj[k] @ pre + place(xp.asarray(spec.basis[k]), starts[k + 1])
            vs.append(pre)
            rs.append(h)
        else:
            h = place(xp.eye(n), starts[k + 1])
            vs.append(pre)
            rs.append(h)
    return n_in, vs, rs, ws[-1] @ h


def _qc_blocks(spec, k, lam, diag):
    """(Q_vv, Q_vw, Q_ww) of activation layer k; works for numpy, jax.numpy and cvxpy."""
    if spec.kind == "slope":
        t = diag(lam)
        a, b = spec.alpha, spec.beta
        return -2.0 * a * b * t, (a + b) * t, -2.0 * t
    t = diag(spec.expand[k] @ lam)  # λ_g (‖Δv_g‖² − ‖Δw_g‖²)
    return t, None, -t


def _lmi(maps, spec, mult, diag):
    """M₀ = M(0, y) = Σ_k [V;R]ᵀ Q_k [V;R] + CᵀC (not yet symmetrised)."""
    _, vs, rs, c = maps
    total = c.T @ c
    for k, (v, r) in enumerate(zip(vs, rs)):
        qvv, qvw, qww = _qc_blocks(spec, k, mult.lam[k], diag)
        total = total + v.T @ qvv @ v + r.T @ qww @ r
        if qvw is not None:
            cross = v.T @ qvw @ r
            total = total + cross + cross.T
    return total


def _smallest_rho_numpy(m0, n_in):
    """(ρ*, λ_max(R), float margin) for M₀ − ρE_x ⪯ 0; raises if R is not negative definite."""
    import scipy.linalg

    m0 = 0.5 * (m0 + m0.T)
    dim = m0.shape[0]
    x, y, r = m0[:n_in, :n_in], m0[:n_in, n_in:], m0[n_in:, n_in:]
    if r.size == 0:
        s, rest_max, margin = x, -math.inf, 32 * dim * _UNIT_ROUNDOFF * _sigma(x)
    else:
        eig_r = np.linalg.eigvalsh(r)
        rest_max = float(eig_r[-1])
        scale = float(max(np.abs(eig_r).max(), np.finfo(np.float64).tiny))
        if not rest_max < -64 * dim * _UNIT_ROUNDOFF * scale:
            raise ValueError(
                "the block of the LipSDP matrix that rho does not touch must be negative "
                f"definite, but its largest eigenvalue is {rest_max:.3e} (scale {scale:.3e}): "
                "no rho makes the matrix inequality hold for these multipliers."
            )
        chol = np.linalg.cholesky(-r)
        half = scipy.linalg.solve_triangular(chol, y.T, lower=True)
        s = x + half.T @ half
        kappa = scale / -rest_max
        margin = (
            32 * dim * _UNIT_ROUNDOFF
            * (_sigma(x) + _sigma(y) ** 2 / -rest_max * (1 + kappa))
        )
    lam_max = float(np.linalg.eigvalsh(0.5 * (s + s.T))[-1])
    return max(lam_max + float(margin), 0.0), rest_max, float(margin)


def _lambdas(mult, spec, xp=np, dtype=np.float64) -> tuple:
    """The λ of ``mult``, one array per activation layer broadcast to its neurons or groups.

    A concrete λ must be finite and >= 0 (a QC with a negative multiplier is not valid);
    traced ones are checked by the caller."""
    if not isinstance(mult, Multipliers):
        raise TypeError(f"multipliers must be a Multipliers, got {type(mult).__name__}.")
    lam = check_sequence(
        "multipliers.lam", mult.lam, length=len(spec.sizes), per="activation layer"
    )
    out = tuple(
        xp.array(xp.broadcast_to(xp.asarray(l, dtype), (n,))) for l, n in zip(lam, spec.groups)
    )
    for k, l in enumerate(out):
        check_finite(f"multipliers.lam[{k}]", l)
        require(f"multipliers.lam[{k}]", l, lambda v: v >= 0,
                ">= 0 (a QC with a negative multiplier is not valid)")
    return out


def _sigma(w) -> float:
    """A certified upper bound on σ_max(w) (float64 SVD with an outward margin)."""
    return float(spectral_norm_upper(w))


def _product_bound(ws):
    return float(np.prod([_sigma(w) for w in ws]))


# ----------------------------------------------------------------------------- public API


def certify_multipliers(weights, multipliers: Multipliers, activation: str = "relu", *,
                        layout: str = "flax", slope=None, group_size: int = 2,
                        householder_v=None) -> tuple[float, LipSDPReport]:
    """Certified ℓ2 Lipschitz bound √ρ*(y) for fixed admissible multipliers y.

    ρ*(y) = λ_max(X + Y(−R)⁻¹Yᵀ) (+ a float64 error margin), the exact smallest ρ with
    M(ρ, y) ⪯ 0 (module docstring). Raises ValueError if a λ is negative or if R is not
    negative definite (then no ρ works for these multipliers). Arguments as in
    :func:`lipsdp_bound`. Returns ``(bound, report)``.
    """
    ws, spec = _network(weights, activation, layout, slope, group_size, householder_v)
    return _certify(ws, spec, multipliers, "given", "given multipliers", None, 0.0)


def _certify(ws, spec, multipliers, solver, status, rho_solver, seconds):
    mult = Multipliers(_lambdas(multipliers, spec))
    maps = _network_maps(ws, spec, np)
    rho, rest_max, margin = _smallest_rho_numpy(_lmi(maps, spec, mult, np.diag), maps[0])
    bound = math.sqrt(rho)
    report = LipSDPReport(
        bound=bound, rho_certified=rho, rho_solver=rho_solver, solver=solver,
        solver_status=status, activation=spec.activation, multipliers=mult,
        rest_block_max_eig=rest_max, float_margin=margin, product_bound=_product_bound(ws),
        solve_seconds=seconds,
    )
    return bound, report


def certified_bound_jax(weights, multipliers: Multipliers, activation: str = "relu", *,
                        layout: str = "flax", slope=None, group_size: int = 2,
                        householder_v=None):
    """JAX version of :func:`certify_multipliers`: √ρ*(y) as a differentiable jax scalar.

    Works under ``jit`` and ``grad`` (w.r.t. the weights and the multipliers); returns NaN
    where R is not negative definite or a traced λ is negative (traced values cannot raise;
    use :func:`certify_multipliers` for the checked float64 certificate). Run it with
    ``jax.enable_x64(True)`` for a certificate; in float32 it is an estimate. (Unlike
    :func:`certify_multipliers` it adds no floating-point margin.)
    """
    import jax.numpy as jnp

    ws, spec = _network(
        weights, activation, layout, slope, group_size, householder_v, xp=jnp
    )
    schur, valid = _schur_jax(ws, spec, _lambdas(multipliers, spec, jnp, ws[0].dtype))
    rho = jnp.maximum(jnp.linalg.eigvalsh(schur)[-1], 0.0)
    return jnp.where(valid, jnp.sqrt(rho), jnp.nan)


def _schur_jax(ws, spec, lam):
    """(X + Y(−R)⁻¹Yᵀ symmetrised, valid) in JAX for the matrices ``ws`` ``[out, in]`` and the
    λ ``lam``; valid is False where R is not negative definite or a λ is negative."""
    import jax.numpy as jnp
    from jax.scipy.linalg import solve_triangular

    dtype = ws[0].dtype
    maps = _network_maps(ws, spec, jnp)
    m0 = _lmi(maps, spec, Multipliers(tuple(lam)), jnp.diag)
    m0 = 0.5 * (m0 + m0.T)
    n_in = maps[0]
    x, y, r = m0[:n_in, :n_in], m0[:n_in, n_in:], m0[n_in:, n_in:]
    valid = jnp.all(jnp.stack([jnp.all(l >= 0) for l in lam])) if lam else jnp.array(True)
    if r.shape[0] == 0:
        s = x
    else:
        eig_r = jnp.linalg.eigvalsh(r)
        eps = jnp.finfo(dtype).eps
        valid = valid & (eig_r[-1] < -64 * m0.shape[0] * eps * jnp.max(jnp.abs(eig_r)))
        chol = jnp.linalg.cholesky(-r)
        half = solve_triangular(chol, y.T, lower=True)
        s = x + half.T @ half
    return 0.5 * (s + s.T), valid


def product_multipliers(weights, activation: str = "relu", *, layout: str = "flax",
                        slope=None, group_size: int = 2, householder_v=None,
                        factor: float = 2.0) -> Multipliers:
    """Hand-picked admissible multipliers (no solver): λ_k = c^{L−k+1} Π_{j≥k} ‖W_j‖₂² per layer
    (c = ``factor`` > 1), μ = ν = 0. R is then negative definite for 1-Lipschitz activations
    with slope in [0, 1] and for the group activations, and √ρ* ≤ c^{L/2}·Π‖W_k‖₂ (the product
    bound up to the factor). The starting point of ``solver="jax"``. Arguments as in
    :func:`lipsdp_bound`."""
    ws, spec = _network(weights, activation, layout, slope, group_size, householder_v)
    return _product_multipliers(ws, spec, factor)


def _product_multipliers(ws, spec, factor):
    check_number("factor", factor, low=1, low_open=True)
    norms = [max(_sigma(w), 1e-300) for w in ws]
    lam, t = [], 1.0
    for k in reversed(range(len(spec.sizes))):
        t = factor * t * norms[k + 1] ** 2
        lam.append(np.full(spec.groups[k], t))
    return Multipliers(tuple(reversed(lam)))


def lipsdp_bound(
    weights,
    activation: str = "relu",
    *,
    solver: str = "CLARABEL",
    layout: str = "flax",
    slope=None,
    group_size: int = 2,
    householder_v=None,
    mode: str = "neuron",
    margin: float = 1e-7,
    verbose: bool = False,
    solver_options: dict | None = None,
    jax_steps: int = 600,
) -> tuple[float, LipSDPReport]:
    """Certified ℓ2 Lipschitz bound of a feed-forward network by LipSDP / LipSDP-NSR.

    Args:
      weights: list of 2-D arrays, one per layer: Flax kernels ``[in, out]`` (the default
        ``layout="flax"``) or ``[out, in]`` matrices W_0, …, W_L with ``layout="torch"``. One
        matrix means a linear map (bound = ‖W‖₂).
      activation: ``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"slope"`` (with ``slope=(α, β)``),
        ``"groupsort"`` (``group_size``), ``"maxmin"``, ``"householder"`` (``householder_v``:
        [group_size], [groups, group_size] or a list per hidden layer; normalised), or
        ``"maxmin_residual_relu"`` (the naive residual-ReLU rewrite of MaxMin, for comparison).
      solver: a cvxpy solver name (``"CLARABEL"`` default, ``"SCS"``, …) or ``"jax"`` (the
        first-order backend).
      mode: ``"neuron"`` (a λ per neuron / group) or ``"layer"`` (one λ per layer).
      margin: δ in M + δ·diag(0, I) ⪯ 0 on the normalised problem (keeps R certifiable).

    Returns:
      ``(bound, report)``: bound = √ρ*, certified from the solver's multipliers by
      :func:`certify_multipliers` (never the solver's raw ρ, which the report also carries).
    """
    ws, spec = _network(weights, activation, layout, slope, group_size, householder_v)
    check_choice("mode", mode, ("neuron", "layer"))
    check_number("margin", margin, low=0, high=1, high_open=True)
    check_int("jax_steps", jax_steps, minimum=1)
    if not spec.sizes:  # a linear map: no multipliers, ρ* = ‖W‖₂² exactly
        return _certify(ws, spec, Multipliers(()), "none", "linear (no SDP)", None, 0.0)
    norms = np.array([_sigma(w) for w in ws])
    norms = np.where(norms > 0, norms, 1.0)
    normalised = [w / s for w, s in zip(ws, norms)]
    start = time.perf_counter()
    if solver == "jax":
        mult_n, rho_n, status = _solve_jax(normalised, spec, jax_steps)
    else:
        mult_n, rho_n, status = _solve_cvxpy(
            normalised, spec, activation, solver, mode, margin, verbose, solver_options or {}
        )
    seconds = time.perf_counter() - start
    # Undo the normalisation: y_k = ỹ_k · Π_j s_j² / Π_{j<k} s_j², ρ = ρ̃ · Π_j s_j².
    total = float(np.prod(norms**2))
    before = np.cumprod(norms[:-1] ** 2)  # Π_{j<=k-1} for hidden layer k (1-based)
    scale = [total / b for b in before]
    mult = Multipliers(tuple(np.maximum(l, 0.0) * s for l, s in zip(mult_n.lam, scale)))
    rho_solver = None if rho_n is None else rho_n * total
    return _certify(ws, spec, mult, solver, status, rho_solver, seconds)


def _solve_cvxpy(ws, spec, activation, solver, mode, margin, verbose, options):
    try:
        import cvxpy as cp
    except ImportError as err:  # pragma: no cover - the [verify] extra
        raise ImportError("lipsdp_bound needs cvxpy: pip install 'jaxbounds[verify]'.") from err
    if solver not in cp.installed_solvers():
        raise ValueError(
            f"solver must be 'jax' or an installed cvxpy solver {cp.installed_solvers()}, "
            f"got {solver!r}."
        )
    lam = []
    for n in spec.groups:
        if mode == "layer":
            lam.append(cp.Variable(nonneg=True) * np.ones(n))
        else:
            lam.append(cp.Variable(n, nonneg=True))
    mult = Multipliers(tuple(lam))
    maps = _network_maps(ws, spec, np)
    n_in = maps[0]
    m0 = _lmi(maps, spec, mult, cp.diag)
    dim = m0.shape[0]
    rho = cp.Variable(nonneg=True)
    sel_x = np.zeros((dim, dim))
    sel_x[:n_in, :n_in] = np.eye(n_in)
    sel_r = np.eye(dim) - sel_x
    lmi = 0.5 * (m0 + m0.T) - rho * sel_x + margin * sel_r
    problem = cp.Problem(cp.Minimize(rho), [lmi << 0])
    try:
        problem.solve(solver=solver, verbose=verbose, **options)
    except cp.error.SolverError as err:
        raise RuntimeError(f"cvxpy solver {solver} failed on the LipSDP problem: {err}") from err
    if rho.value is None or any(getattr(l, "value", 0) is None for l in lam):
        raise RuntimeError(f"the LipSDP solve returned no solution (status {problem.status!r}).")

    def value(e):
        return np.asarray(e.value, dtype=np.float64).reshape(-1)

    return Multipliers(tuple(value(l) for l in lam)), float(rho.value), str(problem.status)


def _solve_jax(ws, spec, steps):
    """First-order backend: minimise the convex ρ*(y) = λ_max(S(y)) over log λ, in JAX.

    λ_max is not smooth where the top eigenvalue of S is repeated, so Adam (lr 0.05) descends
    the soft maximum τ·log Σ_i exp(λ_i(S)/τ) ≥ λ_max with τ shrinking geometrically from
    10⁻¹ to 10⁻⁵ × the current λ_max (continuation). A step that leaves the domain (R not
    negative definite, or λ < 0) is rejected and the step scale halved. It starts from the
    admissible :func:`product_multipliers`, runs ``steps`` iterations in one ``lax.scan`` in
    float64, and keeps the best iterate; its multipliers are certified afterwards."""
    import jax
    import jax.numpy as jnp
    import optax

    start = _product_multipliers(ws, spec, 2.0)
    sizes = [len(l) for l in start.lam]
    splits = [int(i) for i in np.cumsum(sizes)[:-1]]
    optimiser = optax.adam(0.05)
    with jax.enable_x64(True):
        ws_j = [jnp.asarray(w) for w in ws]

        def objective(flat, tau):
            lam = tuple(jnp.exp(p) for p in jnp.split(flat, splits))
            schur, valid = _schur_jax(ws_j, spec, lam)
            eigs = jnp.linalg.eigvalsh(schur)
            soft = tau * jax.scipy.special.logsumexp(eigs / tau)
            return jnp.where(valid, soft, jnp.inf), jnp.where(valid, eigs[-1], jnp.inf)

        grad_fn = jax.value_and_grad(objective, has_aux=True)

        def body(carry, i):
            x, state, scale, best, best_x, current = carry
            tau = current * 10.0 ** (-1.0 - 4.0 * i / steps)
            (_, top), grad = grad_fn(x, tau)
            update, new_state = optimiser.update(grad, state)
            trial = x + scale * update
            value, trial_top = objective(trial, tau)
            ok = jnp.isfinite(value)
            x = jnp.where(ok, trial, x)
            state = jax.tree.map(lambda a, b: jnp.where(ok, a, b), new_state, state)
            scale = jnp.where(ok, jnp.minimum(1.0, scale * 1.05), scale * 0.5)
            top = jnp.where(ok, trial_top, top)
            better = top < best
            best_x = jnp.where(better, x, best_x)
            best = jnp.where(better, top, best)
            return (x, state, scale, best, best_x, top), None

        @jax.jit
        def run(x0):
            _, top0 = objective(x0, 1.0)
            carry = (x0, optimiser.init(x0), jnp.asarray(1.0), top0, x0, top0)
            carry, _ = jax.lax.scan(body, carry, jnp.arange(steps, dtype=x0.dtype))
            return carry[4], carry[3]

        best_x, best = run(jnp.log(jnp.concatenate([jnp.asarray(l) for l in start.lam])))
        best_x = np.asarray(best_x)
    lam = tuple(np.exp(p) for p in np.split(best_x, splits))
    return Multipliers(lam), float(best), f"first-order (Adam, smoothed λ_max): {steps} steps"


def network_forward(weights, x, activation: str = "relu", *, biases=None,
                    layout: str = "flax", group_size: int = 2, householder_v=None):
    """The network :func:`lipsdp_bound` bounds, f(x) = W_L φ(⋯φ(W_0 x + b_0)⋯) + b_L, in JAX.

    ``x``: [..., n_in]; ``weights``, ``layout`` and the activations as in
    :func:`lipsdp_bound`. GroupSort sorts each group of ``group_size`` in descending order,
    MaxMin is GroupSort with groups of 2 (pair (a, b) → (max, min)), Householder is
    z ↦ z if uᵀz > 0 else z − 2(uᵀz)u per group (u normalised). ``"maxmin_residual_relu"`` is
    the same function as ``"maxmin"``. ``"slope"`` has no forward function.
    """
    import jax
    import jax.numpy as jnp

    if activation == "slope":
        raise ValueError("activation='slope' is a class of functions, it has no forward pass.")
    ws, spec = _network(weights, activation, layout, None, group_size, householder_v, xp=jnp)
    us = (
        _householder_vectors(householder_v, spec.sizes, group_size)
        if activation == "householder" else None
    )
    if biases is not None:
        biases = check_sequence("biases", biases, length=len(ws), per="layer")
    h = jnp.asarray(x)
    for k, w in enumerate(ws):
        h = h @ w.T
        if biases is not None:
            h = h + biases[k]
        if k == len(ws) - 1:
            break
        if activation == "relu":
            h = jax.nn.relu(h)
        elif activation == "tanh":
            h = jnp.tanh(h)
        elif activation == "sigmoid":
            h = jax.nn.sigmoid(h)
        else:
            g = 2 if activation in ("maxmin", "maxmin_residual_relu") else group_size
            grouped = h.reshape(*h.shape[:-1], -1, g)
            if activation == "householder":
                u = jnp.asarray(us[k], dtype=h.dtype)
                dot = jnp.sum(grouped * u, axis=-1, keepdims=True)
                grouped = jnp.where(dot > 0, grouped, grouped - 2 * dot * u)
            else:
                grouped = -jnp.sort(-grouped, axis=-1)
            h = grouped.reshape(h.shape)
    return h
