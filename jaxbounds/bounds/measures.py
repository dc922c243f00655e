r"""The generalization measures of Jiang et al. (2020) for Flax / pytree MLPs and CNNs.

Paper: Y. Jiang, B. Neyshabur, H. Mobahi, D. Krishnan, S. Bengio, *Fantastic Generalization
Measures and Where to Find Them*, ICLR 2020 (arXiv 1912.02178), Appendix C. The formulas and
the conventions below follow the widely used reference implementation of that appendix,
``data/generation/measures.py`` of github.com/nitarshan/robust-generalization-measures
(Dziugaite et al., NeurIPS 2020), which cites the equation numbers in comments. Differences
from that code are marked **[differs]**.

What the network is
-------------------
``params`` is any pytree (a Flax ``variables`` dict or a nested dict of arrays) and
``apply_fn(params, x) -> logits [n, K]``. A **weight matrix** is a leaf at least 2-D whose
last path key is ``kernel`` (Flax ``Dense``/``Conv``). A Dense kernel ``[in, out]`` becomes the
``(out, in)`` matrix; a conv kernel ``[kh, kw, in, out]`` becomes ``(out, in·kh·kw)`` (the
PyTorch ``weight.view(out, -1)`` layout of the reference). These are W₁…W_d (d of them).
Every other leaf (biases) is a **bias**. Batch-norm networks are not supported (Jiang et al.
fold BN into the preceding layer first; do that before calling).

* Norm products, sums and distances (everything with W_i) use the weight matrices only,
  as in the reference (its ``get_weights_only`` drops every name containing ``bias``).
* The parameter vector w (ω = its length, ``params``, ``l2``, ``l2_dist`` and the PAC-Bayes
  measures) is the concatenation of the weight matrices too — the reference's choice.
  ``include_biases=True`` puts the biases into w as well (Jiang's text speaks of all
  parameters; we could not check which the paper's own code used).
* The path-norm squares **all** leaves, biases included (reference: ``param.pow_(2)`` on every
  parameter).
* The flatness searches perturb **all** leaves, biases included (reference:
  ``model.parameters()``).

The margin
----------
margin_i = f(x_i)[y_i] − max_{j≠y_i} f(x_i)[j] over the n examples of ``train_batch``.
γ is the k-th smallest margin, k = max(1, ⌊n·p/100⌋) with p = ``margin_percentile`` = 10:
the reference's ``kthvalue(m // 10)``. Like the reference, the measures use |γ| (a negative
10th-percentile margin, i.e. >10% training error, enters by its magnitude); the signed value is
in ``diagnostics["margin"]``. γ = 0 gives infinite margin measures.

The measures (raw values; eq. numbers of Jiang et al. Appendix C)
-----------------------------------------------------------------
With ‖·‖_F the Frobenius norm, ‖·‖₂ the spectral norm (largest singular value, by batched
power iteration, :mod:`jaxbounds.bounds.spectral`), w⁰, W_i⁰ the initial parameters, m the
number of training examples (``num_train``, default n):

====================================  =========================================================
``params`` (20)                       ω
``inverse_margin`` (22)               1/γ²
``log_prod_of_spec`` (32)             Σ_i log ‖W_i‖₂²
``log_prod_of_spec_over_margin`` (31) Σ_i log ‖W_i‖₂² − log γ²
``log_spec_init_main`` (29)           (31) + log Σ_i ‖W_i − W_i⁰‖_F² / ‖W_i‖₂²
``log_spec_orig_main`` (30)           (31) + log Σ_i ‖W_i‖_F² / ‖W_i‖₂²
``fro_over_spec`` (33)                Σ_i ‖W_i‖_F² / ‖W_i‖₂²
``log_sum_of_spec_over_margin`` (34)  log d + (1/d)·(Σ_i log ‖W_i‖₂² − log γ²)
``log_sum_of_spec`` (35)              log d + (1/d)·Σ_i log ‖W_i‖₂²
``log_prod_of_fro_over_margin`` (36)  Σ_i log ‖W_i‖_F² − log γ²
``log_prod_of_fro`` (37)              Σ_i log ‖W_i‖_F²
``log_sum_of_fro_over_margin`` (38)   log d + (1/d)·(Σ_i log ‖W_i‖_F² − log γ²)
``log_sum_of_fro`` (39)               log d + (1/d)·Σ_i log ‖W_i‖_F²
``fro_dist`` (40)                     Σ_i ‖W_i − W_i⁰‖_F²
``dist_spec_init`` (41)               Σ_i ‖W_i − W_i⁰‖₂²
``param_norm`` (42)                   Σ_i ‖W_i‖_F²
``l2`` / ``l2_dist``                  ‖w‖₂ / ‖w − w⁰‖₂ (the reference's vector norms)
``path_norm_over_margin`` (43)        path_norm / γ²
``path_norm`` (44)                    Σ_k f_{θ²}(𝟏)_k: the network with every parameter
                                      squared, applied to one all-ones input, outputs summed
``pacbayes_init`` (48)                ‖w − w⁰‖₂² / (4σ²) + log(m/σ) + 10
``pacbayes_orig`` (49)                ‖w‖₂² / (4σ²) + log(m/σ) + 10
``pacbayes_flatness`` (53)            1/σ²
``pacbayes_mag_init`` (56)            ¼ Σ_i log[(ε² + (σ'²+1)‖w − w⁰‖²/ω) /
                                      (ε² + σ'²(w_i − w_i⁰)²)] + log(m/σ') + 10
``pacbayes_mag_orig`` (57)            the same with ‖w‖² in the numerator (the denominator
                                      keeps w_i − w_i⁰, as in the paper and the reference)
``pacbayes_mag_flatness`` (61)        1/σ'²
====================================  =========================================================

σ and σ' (the flatness searches, :func:`pac_bayes_sigma`)
--------------------------------------------------------
σ is the largest standard deviation of isotropic Gaussian noise u ~ N(0, σ²I) added to all
parameters such that the Monte-Carlo mean training accuracy drops by 0.1 (to within ±0.01):
bisection on [0, 2], ``search_depth`` = 15 halvings, ``mc_samples`` = 10 draws per step,
stopping early once |drop − 0.1| < 0.01 (the reference's ``_pacbayes_sigma``). The drop is
|acc(w + u) − acc(w)| on ``train_batch``. If the target is never met the last midpoint is
returned: within 2·2⁻¹⁵ of the crossing point, or of a bracket end when the drop stays
below 0.1 even at σ = 2 (a very flat net: σ → 2) or above it at σ → 0;
``diagnostics["pacbayes_converged"]`` says which happened and ``pacbayes_drop`` gives the
measured drop.

**σ is the standard deviation** — Jiang et al.'s convention. **[differs]** The reference code
draws ``torch.normal(0, sigma**2)``, whose second argument is the *standard deviation*, so its
σ_ref is the square root of ours (its 1/σ_ref² is our 1/σ).

σ' is the same search for the magnitude-aware posterior: u_i ~ N(0, σ'² w_i² + ε²),
ε = ``magnitude_eps`` = 10⁻³ — variance σ'²w_i² + ε², standard deviation √(σ'²w_i² + ε²), as
in the paper's posterior. **[differs]** The reference passes σ'²w_i² + ε² as the standard
deviation.

Normalisation (Jiang et al.'s adjustment for the data set size)
---------------------------------------------------------------
``result["normalized"][name]`` is 0.5·(v − log m) for the ``log_*`` measures and √(v/m) for
every other measure (the reference's ``adjust_measure``, applied to all measures including
``params``, ``inverse_margin`` and the PAC-Bayes ones). The raw values are in
``result["measures"]``. m is a constant across models trained on one data set, so neither
normalisation changes a Kendall τ.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxbounds._checks import (
    check_callable,
    check_int,
    is_traced,
    make_checked,
    nan_unless,
    require,
)
from jaxbounds.bounds.spectral import spectral_norms

# The measures in Jiang et al.'s Appendix C order, and their equation numbers.
JIANG_EQUATIONS: dict[str, int | None] = {
    "params": 20,
    "inverse_margin": 22,
    "log_spec_init_main": 29,
    "log_spec_orig_main": 30,
    "log_prod_of_spec_over_margin": 31,
    "log_prod_of_spec": 32,
    "fro_over_spec": 33,
    "log_sum_of_spec_over_margin": 34,
    "log_sum_of_spec": 35,
    "log_prod_of_fro_over_margin": 36,
    "log_prod_of_fro": 37,
    "log_sum_of_fro_over_margin": 38,
    "log_sum_of_fro": 39,
    "fro_dist": 40,
    "dist_spec_init": 41,
    "param_norm": 42,
    "l2": None,
    "l2_dist": None,
    "path_norm_over_margin": 43,
    "path_norm": 44,
    "pacbayes_init": 48,
    "pacbayes_orig": 49,
    "pacbayes_flatness": 53,
    "pacbayes_mag_init": 56,
    "pacbayes_mag_orig": 57,
    "pacbayes_mag_flatness": 61,
}
MEASURE_NAMES: tuple[str, ...] = tuple(JIANG_EQUATIONS)
FLATNESS_MEASURES: tuple[str, ...] = tuple(n for n in MEASURE_NAMES if n.startswith("pacbayes"))


# --- the network's weights ----------------------------------------------------------------


def _key_name(entry) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _path_string(path) -> str:
    return "/".join(_key_name(entry) for entry in path)


def _is_kernel(path, leaf) -> bool:
    return bool(path) and _key_name(path[-1]) == "kernel" and jnp.ndim(leaf) >= 2


def kernel_leaves(params) -> list[tuple[str, jax.Array]]:
    """``[(path, kernel), ...]``: the leaves at least 2-D whose last key is ``kernel``."""
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return [(_path_string(path), leaf) for path, leaf in flat if _is_kernel(path, leaf)]


def kernel_to_matrix(kernel: jax.Array) -> jax.Array:
    """A Flax kernel as the ``(out, in·∏spatial)`` matrix of PyTorch's ``weight.view(out, -1)``.

    Dense ``[in, out]`` → ``(out, in)``; conv ``[*spatial, in, out]`` → ``(out, in·∏spatial)``
    with the columns ordered (in, *spatial) as in PyTorch's ``[out, in, kh, kw]``.
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"kernel must be at least 2-D, got shape {kernel.shape}.")
    nd = kernel.ndim
    perm = (nd - 1, nd - 2, *range(nd - 2))  # out, in, *spatial
    return jnp.transpose(kernel, perm).reshape(kernel.shape[-1], -1)


def weight_matrices(params) -> list[jax.Array]:
    """The weight matrices W₁…W_d of ``params`` (see :func:`kernel_to_matrix`)."""
    return [kernel_to_matrix(k) for _, k in kernel_leaves(params)]


def _vector(params, include_biases: bool) -> jax.Array:
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    leaves = [leaf for path, leaf in flat if include_biases or _is_kernel(path, leaf)]
    return jnp.concatenate([jnp.ravel(leaf) for leaf in leaves])


# --- output measures ----------------------------------------------------------------------


def classification_margins(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """margin_i = logits[i, y_i] − max_{j≠y_i} logits[i, j], shape ``[n]``."""
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    if logits.ndim != 2 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have shape [n, K] with K >= 2, got {logits.shape}.")
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"labels must have shape [{logits.shape[0]}] to match logits, got {labels.shape}.")
    true = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    is_true = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    other = jnp.max(jnp.where(is_true, -jnp.inf, logits), axis=1)
    return true - other


def margin_rank(n: int, percentile: float = 10.0) -> int:
    """k = max(1, ⌊n·p/100⌋): the 1-based rank of the percentile margin among n margins."""
    return max(1, int(math.floor(n * percentile / 100.0 + 1e-9)))


def percentile_margin(margins: jax.Array, percentile: float = 10.0) -> jax.Array:
    """The k-th smallest margin, k = :func:`margin_rank` (the reference's ``kthvalue``)."""
    margins = jnp.asarray(margins)
    if margins.ndim != 1 or margins.shape[0] < 1:
        raise ValueError(f"margins must be a non-empty 1-D array, got shape {margins.shape}.")
    require("percentile", percentile, lambda p: (p > 0) & (p <= 100), "in (0, 100]")
    k = margin_rank(margins.shape[0], percentile)
    return jnp.sort(margins)[k - 1]


def path_norm(params, apply_fn: Callable, input_shape: tuple[int, ...]) -> jax.Array:
    """Σ_k f_{θ²}(𝟏)_k: ``apply_fn`` with every leaf squared on one all-ones input of shape
    ``(1, *input_shape)``, outputs summed (Neyshabur et al.'s path-norm², as Jiang's eq. 44).

    For a bias-free linear map x ↦ xW this is Σ_ij W_ij²; for a ReLU net without biases it is
    the sum over input→output paths of the product of squared weights.
    """
    squared = jax.tree_util.tree_map(jnp.square, params)
    leaves = jax.tree_util.tree_leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    return jnp.sum(apply_fn(squared, jnp.ones((1, *input_shape), dtype)))


# --- flatness ------------------------------------------------------------------------------


def _accuracy(logits, labels):
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def _perturb(params, key, sigma, magnitude_eps, magnitude):
    # One Gaussian draw for all leaves (one threefry call, cheap to compile), split by size.
    # ``magnitude`` (a bool, possibly traced) picks std √(σ²w² + ε²) over std σ.
    leaves, treedef = jax.tree_util.tree_flatten(params)
    dtype = jnp.result_type(*leaves)
    sizes = [int(jnp.size(leaf)) for leaf in leaves]
    z = jax.random.normal(key, (sum(sizes),), dtype)
    noisy, offset = [], 0
    for leaf, size in zip(leaves, sizes):
        noise = z[offset:offset + size].reshape(jnp.shape(leaf)).astype(jnp.result_type(leaf))
        offset += size
        if magnitude is False:
            std = sigma
        else:
            std = jnp.where(magnitude,
                            jnp.sqrt(sigma**2 * jnp.square(leaf) + magnitude_eps**2), sigma)
        noisy.append(leaf + std * noise)
    return jax.tree_util.tree_unflatten(treedef, noisy)


def _mc_accuracy(params, apply_fn, x, y, key, sigma, num_samples, magnitude_eps, magnitude):
    keys = jax.random.split(key, num_samples)

    def one(k):
        return _accuracy(apply_fn(_perturb(params, k, sigma, magnitude_eps, magnitude), x), y)

    return jnp.mean(jax.vmap(one)(keys))


def perturbed_accuracy(params, apply_fn: Callable, x, y, sigma, *, key,
                       num_samples: int = 10,
                       magnitude_eps: float | None = None) -> jax.Array:
    """Mean training accuracy of w + u over ``num_samples`` draws (vmapped).

    u ~ N(0, σ²I) on every leaf, or with ``magnitude_eps`` = ε the magnitude-aware
    u_i ~ N(0, σ²w_i² + ε²) (variance; std √(σ²w_i² + ε²)).
    """
    magnitude = magnitude_eps is not None
    eps = magnitude_eps if magnitude else 0.0
    return _mc_accuracy(params, apply_fn, x, y, key, sigma, num_samples, eps, magnitude)


def _bisection(params, apply_fn, x, y, key, magnitude, *, magnitude_eps, search_depth,
               num_samples, target_drop, tolerance, bracket, base_accuracy):
    lo0, hi0 = bracket
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))

    def cond(state):
        step, _, _, _, _, _, done = state
        return (step < search_depth) & ~done

    def body(state):
        step, lo, hi, _, _, _, _ = state
        sigma = (lo + hi) / 2
        acc = _mc_accuracy(params, apply_fn, x, y, jax.random.fold_in(key, step), sigma,
                           num_samples, magnitude_eps, magnitude)
        drop = jnp.abs(acc - base_accuracy)
        done = jnp.abs(drop - target_drop) < tolerance
        too_much = drop > target_drop
        hi = jnp.where(~done & too_much, sigma, hi)
        lo = jnp.where(~done & ~too_much, sigma, lo)
        return step + 1, lo, hi, sigma, acc.astype(dtype), drop.astype(dtype), done

    zero = jnp.zeros((), dtype)
    state = (jnp.int32(0), jnp.asarray(lo0, dtype), jnp.asarray(hi0, dtype),
             jnp.asarray((lo0 + hi0) / 2, dtype), zero, zero, jnp.bool_(False))
    steps, _, _, sigma, acc, drop, done = jax.lax.while_loop(cond, body, state)
    return {"sigma": sigma, "drop": drop, "perturbed_accuracy": acc,
            "base_accuracy": jnp.asarray(base_accuracy, dtype), "converged": done,
            "iterations": steps}


def pac_bayes_sigma(params, apply_fn: Callable, x, y, *, key, magnitude_eps: float | None = None,
                    search_depth: int = 15, num_samples: int = 10, target_drop: float = 0.1,
                    tolerance: float = 0.01, bracket: tuple[float, float] = (0.0, 2.0),
                    base_accuracy=None) -> dict[str, jax.Array]:
    """Bisection for the noise level whose accuracy drop is ``target_drop`` ± ``tolerance``.

    Each of at most ``search_depth`` steps sets σ = (lo + hi)/2, measures the drop
    |acc(w+u) − acc(w)| by :func:`perturbed_accuracy` (a fresh key per step, folded from
    ``key``), stops if |drop − target| < tolerance, else moves hi ← σ (too much noise) or
    lo ← σ. σ is the noise *standard deviation* (Jiang et al.'s convention; see the module
    docstring for the reference code's σ²); with ``magnitude_eps`` = ε the noise is the
    magnitude-aware u_i ~ N(0, σ²w_i² + ε²). Runs as one ``lax.while_loop``; jit-able.

    Returns ``{"sigma", "drop", "perturbed_accuracy", "base_accuracy", "converged",
    "iterations"}``; ``converged`` is False when the depth ran out (σ then sits within
    (hi−lo)·2⁻ᵈᵉᵖᵗʰ of the crossing point or of a bracket end).
    """
    if base_accuracy is None:
        base_accuracy = _accuracy(apply_fn(params, x), y)
    magnitude = magnitude_eps is not None
    return _bisection(params, apply_fn, x, y, key, magnitude,
                      magnitude_eps=magnitude_eps if magnitude else 0.0,
                      search_depth=search_depth, num_samples=num_samples,
                      target_drop=target_drop, tolerance=tolerance, bracket=bracket,
                      base_accuracy=base_accuracy)


# --- normalisation -------------------------------------------------------------------------


def normalize_measures(measures: dict[str, Any], num_train) -> dict[str, jax.Array]:
    """Jiang et al.'s size adjustment: 0.5·(v − log m) for ``log_*`` names, else √(v/m)."""
    m = jnp.asarray(num_train, jnp.result_type(float))
    out = {}
    for name, value in measures.items():
        value = jnp.asarray(value)
        if name.startswith("log_"):
            out[name] = 0.5 * (value - jnp.log(m))
        else:
            out[name] = jnp.sqrt(value / m)
    return out


# --- the suite ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Config:
    flatness: bool
    power_iters: int
    margin_percentile: float
    include_biases: bool
    search_depth: int
    mc_samples: int
    target_drop: float
    drop_tolerance: float
    sigma_bracket: tuple[float, float]
    magnitude_eps: float


class _ById:
    """A static-argument wrapper that hashes an unhashable callable by identity."""

    def __init__(self, fn):
        self.fn = fn

    def __hash__(self):
        return id(self.fn)

    def __eq__(self, other):
        return isinstance(other, _ById) and other.fn is self.fn


def _static_fn(fn):
    try:
        hash(fn)
        return fn
    except TypeError:
        return _ById(fn)


def _measures_impl(static_fn, config: _Config, params, params_init, x, y, key, num_train):
    apply_fn = static_fn.fn if isinstance(static_fn, _ById) else static_fn
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(params))
    m = jnp.asarray(num_train, dtype)

    mats = weight_matrices(params)
    mats0 = weight_matrices(params_init)
    dists = [a - b for a, b in zip(mats, mats0)]
    d = len(mats)
    fro2 = jnp.stack([jnp.sum(jnp.square(a)) for a in mats])
    all_spec = spectral_norms(mats + dists, num_iters=config.power_iters)  # one batched loop
    spec = all_spec[:d]
    spec2 = jnp.square(spec)
    dist_fro2 = jnp.stack([jnp.sum(jnp.square(a)) for a in dists])
    dist_spec2 = jnp.square(all_spec[d:])

    w = _vector(params, config.include_biases)
    w0 = _vector(params_init, config.include_biases)
    omega = w.shape[0]

    logits = apply_fn(params, x)
    margins = classification_margins(logits, y)
    margin_signed = percentile_margin(margins, config.margin_percentile)
    gamma = jnp.abs(margin_signed)
    log_gamma2 = 2 * jnp.log(gamma)
    train_accuracy = _accuracy(logits, y)

    log_prod_spec = jnp.sum(jnp.log(spec2))
    log_prod_fro = jnp.sum(jnp.log(fro2))
    out: dict[str, jax.Array] = {}
    out["params"] = jnp.asarray(omega, dtype)
    out["inverse_margin"] = 1.0 / gamma**2
    out["log_prod_of_spec_over_margin"] = log_prod_spec - log_gamma2
    out["log_spec_init_main"] = (out["log_prod_of_spec_over_margin"]
                                 + jnp.log(jnp.sum(dist_fro2 / spec2)))
    out["fro_over_spec"] = jnp.sum(fro2 / spec2)
    out["log_spec_orig_main"] = out["log_prod_of_spec_over_margin"] + jnp.log(out["fro_over_spec"])
    out["log_prod_of_spec"] = log_prod_spec
    out["log_sum_of_spec_over_margin"] = math.log(d) + (log_prod_spec - log_gamma2) / d
    out["log_sum_of_spec"] = math.log(d) + log_prod_spec / d
    out["log_prod_of_fro_over_margin"] = log_prod_fro - log_gamma2
    out["log_prod_of_fro"] = log_prod_fro
    out["log_sum_of_fro_over_margin"] = math.log(d) + (log_prod_fro - log_gamma2) / d
    out["log_sum_of_fro"] = math.log(d) + log_prod_fro / d
    out["fro_dist"] = jnp.sum(dist_fro2)
    out["dist_spec_init"] = jnp.sum(dist_spec2)
    out["param_norm"] = jnp.sum(fro2)
    out["l2"] = jnp.linalg.norm(w)
    out["l2_dist"] = jnp.linalg.norm(w - w0)
    out["path_norm"] = path_norm(params, apply_fn, x.shape[1:])
    out["path_norm_over_margin"] = out["path_norm"] / gamma**2

    diagnostics: dict[str, jax.Array] = {
        "margin": margin_signed,
        "train_accuracy": train_accuracy,
        "num_train": m,
        "num_weight_matrices": jnp.asarray(d),
        "spectral_norms": spec,
        "frobenius_norms": jnp.sqrt(fro2),
    }

    if config.flatness:
        # Both searches (isotropic, magnitude-aware) run as one vmapped while-loop.
        both = jax.vmap(lambda k, magnitude: _bisection(
            params, apply_fn, x, y, k, magnitude, magnitude_eps=config.magnitude_eps,
            search_depth=config.search_depth, num_samples=config.mc_samples,
            target_drop=config.target_drop, tolerance=config.drop_tolerance,
            bracket=config.sigma_bracket, base_accuracy=train_accuracy))(
                jax.random.split(key), jnp.array([False, True]))
        iso = {k: v[0] for k, v in both.items()}
        mag = {k: v[1] for k, v in both.items()}
        sigma, sigma_mag, eps = iso["sigma"], mag["sigma"], config.magnitude_eps
        log_term = jnp.log(m / sigma) + 10
        out["pacbayes_init"] = jnp.sum(jnp.square(w - w0)) / (4 * sigma**2) + log_term
        out["pacbayes_orig"] = jnp.sum(jnp.square(w)) / (4 * sigma**2) + log_term
        out["pacbayes_flatness"] = 1.0 / sigma**2
        denominator = eps**2 + sigma_mag**2 * jnp.square(w - w0)

        def mag_bound(reference_sq_norm):
            numerator = eps**2 + (sigma_mag**2 + 1) * reference_sq_norm / omega
            return (0.25 * jnp.sum(jnp.log(numerator / denominator))
                    + jnp.log(m / sigma_mag) + 10)

        out["pacbayes_mag_init"] = mag_bound(jnp.sum(jnp.square(w - w0)))
        out["pacbayes_mag_orig"] = mag_bound(jnp.sum(jnp.square(w)))
        out["pacbayes_mag_flatness"] = 1.0 / sigma_mag**2
        for prefix, found in (("pacbayes", iso), ("pacbayes_mag", mag)):
            for field in ("sigma", "drop", "perturbed_accuracy", "converged", "iterations"):
                diagnostics[f"{prefix}_{field}"] = found[field]

    labels_ok = jnp.all((y >= 0) & (y < logits.shape[-1]))
    measures = {name: nan_unless(labels_ok, out[name]) for name in MEASURE_NAMES if name in out}
    return {"measures": measures, "normalized": normalize_measures(measures, m),
            "diagnostics": diagnostics}


_measures_jit = jax.jit(_measures_impl, static_argnums=(0, 1))


def _validate(params, params_init, apply_fn, train_batch, key, num_train, config: _Config):
    check_callable("apply_fn", apply_fn)
    if not isinstance(train_batch, (tuple, list)) or len(train_batch) != 2:
        raise TypeError("train_batch must be a pair (x, y) of inputs [n, ...] and integer "
                        f"labels [n], got {type(train_batch).__name__}.")
    x, y = train_batch
    if jnp.ndim(x) < 2:
        raise ValueError(f"train_batch x must have shape [n, ...] with n >= 1, got "
                         f"{jnp.shape(x)}.")
    n = jnp.shape(x)[0]
    if jnp.shape(y) != (n,):
        raise ValueError(f"train_batch y must have shape [{n}] (one label per input), got "
                         f"{jnp.shape(y)}.")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise TypeError(f"train_batch y must hold integer labels, got dtype "
                        f"{jnp.result_type(y)}.")
    structure, structure0 = (jax.tree_util.tree_structure(params),
                             jax.tree_util.tree_structure(params_init))
    if structure != structure0:
        raise ValueError("params_init must have the same tree structure as params, got "
                         f"{structure0} vs {structure}.")
    for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                            jax.tree_util.tree_leaves(params_init)):
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"params_init leaf {_path_string(path)!r} has shape "
                             f"{jnp.shape(b)}, expected {jnp.shape(a)} as in params.")
        if not jnp.issubdtype(jnp.result_type(a), jnp.floating):
            raise TypeError(f"params leaf {_path_string(path)!r} must be floating-point, "
                            f"got dtype {jnp.result_type(a)}.")
    if not kernel_leaves(params):
        raise ValueError("params holds no weight matrix: expected leaves at least 2-D whose "
                         "last key is 'kernel' (Flax Dense/Conv layers).")
    if num_train is not None:
        check_int("num_train", num_train, minimum=1)
    check_int("power_iters", config.power_iters, minimum=1)
    require("margin_percentile", config.margin_percentile, lambda p: (p > 0) & (p <= 100),
            "in (0, 100]")
    if config.flatness:
        if key is None:
            raise ValueError("key is required for the flatness (PAC-Bayes) measures: pass "
                             "key=jax.random.PRNGKey(...), or flatness=False.")
        check_int("search_depth", config.search_depth, minimum=1)
        check_int("mc_samples", config.mc_samples, minimum=1)
        require("target_drop", config.target_drop, lambda t: (t > 0) & (t < 1), "in (0, 1)")
        require("drop_tolerance", config.drop_tolerance, lambda t: t > 0, "> 0")
        bracket = config.sigma_bracket
        if len(bracket) != 2:
            raise ValueError(f"sigma_bracket must be a pair (lo, hi), got {bracket!r}.")
        require("sigma_bracket", bracket, lambda b: (b[0] >= 0) & (b[1] > b[0]),
                "a pair 0 <= lo < hi")
        require("magnitude_eps", config.magnitude_eps, lambda e: e > 0, "> 0")
    logits = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(jnp.shape(x),
                                                                    jnp.result_type(x)))
    if len(logits.shape) != 2 or logits.shape[0] != n or logits.shape[1] < 2:
        raise ValueError(f"apply_fn(params, x) must return logits of shape [{n}, K] with "
                         f"K >= 2, got {logits.shape}.")
    if not is_traced(y):
        require("train_batch y", y, lambda v: (v >= 0) & (v < logits.shape[1]),
                f"labels in [0, {logits.shape[1]})")
    return n


def generalization_measures(params, params_init, apply_fn: Callable, train_batch, *,
                            key: jax.Array | None = None, num_train: int | None = None,
                            flatness: bool = True, power_iters: int = 100,
                            margin_percentile: float = 10.0, include_biases: bool = False,
                            search_depth: int = 15, mc_samples: int = 10,
                            target_drop: float = 0.1, drop_tolerance: float = 0.01,
                            sigma_bracket: tuple[float, float] = (0.0, 2.0),
                            magnitude_eps: float = 1e-3) -> dict[str, dict[str, jax.Array]]:
    """Jiang et al. (2020)'s generalization measures of one trained network (module docstring).

    Args:
      params: the trained parameters (a Flax ``variables`` dict or any pytree); weight
        matrices are the ≥2-D leaves named ``kernel``.
      params_init: the parameters at initialisation (same tree and shapes).
      apply_fn: ``apply_fn(params, x) -> logits [n, K]`` (e.g. ``model.apply``).
      train_batch: ``(x [n, ...], y [n] int)``, the training set (or a sample of it) on which
        the margin, the path-norm input shape and the flatness searches are evaluated.
      key: a ``jax.random`` key for the flatness searches; required when ``flatness``.
      num_train: m, the number of training examples, for log(m/σ) and the normalisation;
        default n.
      flatness: compute the six ``pacbayes_*`` measures (two bisection searches).
      power_iters: power-iteration steps per spectral norm (batched over same-shape layers).
      margin_percentile: γ is the ⌊n·p/100⌋-th smallest margin (p = 10).
      include_biases: put the biases into the parameter vector w (ω, l2, PAC-Bayes).
      search_depth, mc_samples, target_drop, drop_tolerance, sigma_bracket, magnitude_eps:
        the flatness search (15, 10, 0.1, 0.01, (0, 2), 10⁻³ as in the reference).

    Returns:
      ``{"measures": raw values, "normalized": 0.5(v − log m) / √(v/m), "diagnostics":
      margin, train accuracy, per-layer norms, σ searches}``, each a dict of scalars keyed
      by the names of :data:`MEASURE_NAMES`. Jitted (``apply_fn`` is a static argument,
      cached by hash or identity). Labels out of [0, K) raise when concrete and give NaN
      measures when traced (see :func:`checked_generalization_measures`).
    """
    config = _Config(flatness=bool(flatness), power_iters=power_iters,
                     margin_percentile=float(margin_percentile),
                     include_biases=bool(include_biases), search_depth=search_depth,
                     mc_samples=mc_samples, target_drop=float(target_drop),
                     drop_tolerance=float(drop_tolerance),
                     sigma_bracket=tuple(float(b) for b in sigma_bracket),
                     magnitude_eps=float(magnitude_eps))
    n = _validate(params, params_init, apply_fn, train_batch, key, num_train, config)
    x, y = train_batch
    if key is None:
        key = jax.random.PRNGKey(0)  # unused: flatness is off
    m = n if num_train is None else num_train
    return _measures_jit(_static_fn(apply_fn), config, params, params_init, jnp.asarray(x),
                         jnp.asarray(y), key, jnp.asarray(m, jnp.float32))


def checked_generalization_measures(params, params_init, apply_fn: Callable, train_batch,
                                    **kwargs) -> dict[str, dict[str, jax.Array]]:
    """:func:`generalization_measures` that raises (``checkify``) on out-of-range labels even
    when they are traced, instead of returning NaN measures."""
    x, y = train_batch
    logits = jax.eval_shape(apply_fn, params, jax.ShapeDtypeStruct(jnp.shape(x),
                                                                    jnp.result_type(x)))
    num_classes = logits.shape[-1]
    checked = make_checked(
        lambda params, params_init, x, y: generalization_measures(
            params, params_init, apply_fn, (x, y), **kwargs),
        lambda params, params_init, x, y: [
            ((y >= 0) & (y < num_classes),
             f"train_batch y must hold labels in [0, {num_classes})")])
    return checked(params, params_init, x, y)
