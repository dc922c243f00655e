"""Sparse linear regression under local differential privacy: error vs n and vs ε.

``python -m experiments ldp_regression [--full] [--seed N] [--out DIR]``

Zhu, Ding, Aggarwal, Xu and Wang, "Improved analysis of sparse linear regression in local
differential privacy model" (ICLR 2024, arXiv 2310.07367) prove that non-interactive ε-LDP
estimation of a k-sparse β* in ℝ^d from n users has ℓ2 error between √(dk log d)/(√n ε)
(lower bound) and Õ(d√k/(√n ε)) (their algorithm), improved by √d with public unlabeled
data. Both rates fall as n^{-1/2} and ε^{-1}. Here:

1. Synthetic sub-Gaussian data: x with i.i.d. Rademacher (default) or Gaussian entries,
   β* with k nonzero entries ±1/√k (‖β*‖₂ = 1) on a random support, y = ⟨x, β*⟩ + N(0, σ²).
2. Every user clips (‖x̃‖_∞ ≤ r, |ỹ| ≤ r') and releases x̃x̃ᵀ and x̃ỹ with Laplace noise
   (pure ε-LDP, :func:`jaxbounds.bounds.privacy.privatize_statistics`); in the public-data
   variant the server estimates Σ from as many public unlabeled x's as there are users (m = n;
   ``public_samples`` fixes m instead) and the users release only x̃ỹ
   (:func:`~jaxbounds.bounds.privacy.privatize_products`). A non-private curve runs the same
   estimator on the clipped data without noise, and a diagnostic curve runs the public-data
   estimator on the exact x̃ỹ (the error of the public covariance and of sampling alone).
3. The server's estimate is iterative hard thresholding on (Σ̄, ĉ) (``method="iht"``)
   (:func:`~jaxbounds.bounds.privacy.sparse_estimate`).
4. Users are streamed in chunks and the sums kept at every n of the grid, so the n sweep
   uses nested prefixes of one stream of users per seed; all ε of the grid privatise the
   same users with the same standard Laplace draws scaled by Δ₁/ε (common random numbers).
5. Fit the log-log slopes of the mean error (over seeds) against n (at ``epsilon_ref``) and
   against ε (at the largest n); theory: −1/2 and −1. The verdict is computed from the fit:
   a slope matches if it is within ``max(slope_tolerance, 2·standard error)`` of the theory,
   the standard error coming from the spread of the per-seed slopes. The error at each n is
   dominated by a sum of i.i.d. privacy noise, a random walk along the nested n grid, so one
   seed's n-slope scatters by about ±0.25: the n sweep uses 40 seeds (±0.035) and the ε sweep,
   whose slope is nearly deterministic under common random numbers, the first 10 of them.
   With 5 seeds the slope of the mean scatters by ±0.1 and the standard error estimated from
   5 per-seed slopes is itself unreliable: one such run gave −0.335 ± 0.026 for the public
   variant, while 50 seeds of the same random stream give −0.498 ± 0.034.

Writes ``results.json`` and ``error_vs_n_eps.png`` under ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.bounds import privacy as pv

VARIANTS = ("ldp", "ldp_public", "non_private", "public_no_noise")
LABELS = {"ldp": "ε-LDP (Laplace), no public data",
          "ldp_public": "ε-LDP (Laplace) + public unlabeled x",
          "non_private": "non-private (clipped, no noise)",
          "public_no_noise": "public-x covariance, noise-free x·y (diagnostic)"}
PAPER = {
    "claim": "NLDP: lower bound Ω(√(dk log d)/(√n ε)), upper bound Õ(d√k/(√n ε)), improved "
             "by √d with public unlabeled data; sequentially interactive: Ω(√(dk)/(√n ε)) and "
             "Õ(k√d/(√n ε)).",
    "slope_vs_n": -0.5,
    "slope_vs_epsilon": -1.0,
}


@dataclasses.dataclass(frozen=True)
class LDPRegressionSettings(Settings):
    """Everything the experiment varies. The defaults run in a few minutes on a 2-core CPU."""

    d: int = 8
    k: int = 2
    design: str = "rademacher"
    noise_std: float = 0.5
    clip_x: float = 1.0
    clip_y: float = 3.0
    # √n·ε sets the noise level: n ≥ 25,000 at ε = 8 and ε ≥ 2 at n = 800,000 keep the plain
    # LDP release in the regime where IHT finds the support (at n = 12,500, ε = 8 a fifth of
    # the seeds lose it and the error no longer falls as n^{-1/2})
    n_grid: tuple[int, ...] = (25_000, 50_000, 100_000, 200_000, 400_000, 800_000)
    epsilons: tuple[float, ...] = (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
    epsilon_ref: float = 8.0  # the ε of the error-vs-n sweep
    # the error at each n is dominated by a sum of i.i.d. privacy noise (a random walk along
    # the nested n grid): one seed's n-slope scatters by ±0.25, the slope of a 5-seed mean by
    # ±0.1 (as wide as the tolerance), of a 40-seed mean by ±0.035. All seeds enter the n
    # sweep (at epsilon_ref); the first epsilon_seeds also privatise at every ε for the ε
    # sweep, whose slope scatters far less (common random numbers across ε)
    seeds: int = 40
    epsilon_seeds: int = 10
    chunk: int = 25_000  # users privatised per jitted call; divides every n
    public_samples: int | None = None  # public x's: None = as many as users (m = n); an int
    # fixes m (a multiple of chunk), and the public covariance error then floors the error
    method: str = "iht"  # IHT inverts only the k×k support block: robust to noisy Σ̂
    min_eigenvalue: float = 1e-2
    slope_tolerance: float = 0.1

    @classmethod
    def full(cls) -> LDPRegressionSettings:
        """``--full``: a longer n sweep, a larger d and more seeds."""
        return cls(d=16, k=3, n_grid=tuple(100_000 * 2**j for j in range(7)), seeds=40,
                   chunk=50_000, epsilons=(2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0),
                   epsilon_ref=16.0)

    def __post_init__(self):
        self.check(positive=("d", "k", "seeds", "epsilon_seeds", "chunk"))
        if self.epsilon_seeds > self.seeds:
            raise ValueError(f"epsilon_seeds must be <= seeds = {self.seeds}, got "
                             f"{self.epsilon_seeds}.")
        if self.k > self.d:
            raise ValueError(f"k must be <= d, got k = {self.k}, d = {self.d}.")
        if self.design not in ("rademacher", "gaussian"):
            raise ValueError(f"design must be 'rademacher' or 'gaussian', got {self.design!r}.")
        if len(self.n_grid) < 2 or any(n % self.chunk or n <= 0 for n in self.n_grid) \
                or list(self.n_grid) != sorted(set(self.n_grid)):
            raise ValueError(f"n_grid must hold >= 2 increasing multiples of chunk = "
                             f"{self.chunk}, got {self.n_grid!r}.")
        if len(self.epsilons) < 2 or any(e <= 0 for e in self.epsilons) \
                or list(self.epsilons) != sorted(set(self.epsilons)):
            raise ValueError(f"epsilons must hold >= 2 increasing values > 0, got "
                             f"{self.epsilons!r}.")
        if self.epsilon_ref not in self.epsilons:
            raise ValueError(f"epsilon_ref must be one of epsilons {self.epsilons!r}, got "
                             f"{self.epsilon_ref!r}.")
        if self.public_samples is not None and (
                isinstance(self.public_samples, bool) or self.public_samples <= 0
                or self.public_samples % self.chunk):
            raise ValueError(f"public_samples must be None or a positive multiple of chunk = "
                             f"{self.chunk}, got {self.public_samples!r}.")
        for name in ("clip_x", "clip_y", "min_eigenvalue", "slope_tolerance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}.")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}.")


# --- simulation ---------------------------------------------------------------------------


def make_beta(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """k-sparse β* with entries ±1/√k on a random support (‖β*‖₂ = 1)."""
    beta = np.zeros(d)
    support = rng.choice(d, k, replace=False)
    beta[support] = rng.choice([-1.0, 1.0], k) / np.sqrt(k)
    return beta


@functools.partial(jax.jit, static_argnames=("chunk", "design", "clip_x", "clip_y"))
def chunk_sums(key, beta, epsilons, noise_std, *, chunk, design, clip_x, clip_y):
    """Sums over one chunk of users of every released statistic, for every ε at once (all ε
    privatise the same users with the same standard Laplace draws: common random numbers)."""
    k_data, k_public, k_stats, k_products = jax.random.split(key, 4)
    x, y = pv.make_sparse_regression(k_data, chunk, beta, design=design, noise_std=noise_std)
    x_public, _ = pv.make_sparse_regression(k_public, chunk, beta, design=design)

    def private(eps):
        mats, vecs = pv.privatize_statistics(k_stats, x, y, eps, clip_x=clip_x, clip_y=clip_y)
        products = pv.privatize_products(k_products, x, y, eps, clip_x=clip_x, clip_y=clip_y)
        return mats.sum(0), vecs.sum(0), products.sum(0)

    mats, vecs, products = jax.vmap(private)(epsilons)
    x_c, y_c = pv.clip_data(x, y, clip_x, clip_y)
    x_pub = jnp.clip(x_public, -clip_x, clip_x)
    return {"ldp_mat": mats, "ldp_vec": vecs, "public_vec": products,
            "clean_mat": x_c.T @ x_c, "clean_vec": x_c.T @ y_c, "public_mat": x_pub.T @ x_pub}


def estimate_errors(sums: dict[str, np.ndarray], n: int, beta: np.ndarray,
                    settings: LDPRegressionSettings, public_n: int | None = None
                    ) -> dict[str, np.ndarray]:
    """ℓ2 errors of the estimators at one n: {variant: [E]} (the noise-free ones: constant).

    ``sums`` holds sums over the first n users, except ``public_mat``: the sum over the first
    ``public_n`` public x's (default n). ``public_no_noise`` is the public-data estimator fed
    the users' exact (clipped) x·y: its error is the part due to the public covariance
    estimate and to sampling, with no privacy noise.
    """
    public_n = n if public_n is None else public_n
    est = jax.vmap(lambda c, v: pv.sparse_estimate(c, v, settings.k, method=settings.method,
                                                   min_eigenvalue=settings.min_eigenvalue))
    num_eps = sums["ldp_vec"].shape[0]  # the ε values the chunk sums were privatised at
    tile = lambda m: np.broadcast_to(m, (num_eps, *m.shape))
    public_cov = tile(sums["public_mat"] / public_n)
    problems = {
        "ldp": (sums["ldp_mat"] / n, sums["ldp_vec"] / n),
        "ldp_public": (public_cov, sums["public_vec"] / n),
        "non_private": (tile(sums["clean_mat"] / n), tile(sums["clean_vec"] / n)),
        "public_no_noise": (public_cov, tile(sums["clean_vec"] / n)),
    }
    return {name: np.linalg.norm(np.asarray(est(jnp.asarray(c), jnp.asarray(v))) - beta,
                                 axis=-1) for name, (c, v) in problems.items()}


def simulate(settings: LDPRegressionSettings, seed: int) -> tuple[dict, dict, dict]:
    """(errors_n, errors_eps, extra): errors_n[variant] [seeds, len(n_grid)] at epsilon_ref,
    errors_eps[variant] [epsilon_seeds, len(epsilons)] at the largest n."""
    errors_n = {v: np.zeros((settings.seeds, len(settings.n_grid))) for v in VARIANTS}
    errors_eps = {v: np.zeros((settings.epsilon_seeds, len(settings.epsilons)))
                  for v in VARIANTS}
    betas = []
    all_eps = jnp.asarray(settings.epsilons)
    ref_eps = jnp.asarray([settings.epsilon_ref])
    num_chunks = settings.n_grid[-1] // settings.chunk
    public_samples = settings.public_samples or settings.n_grid[-1]
    bar = progress(range(settings.seeds * num_chunks), desc="users privatised (chunks)")
    root = jax.random.key(seed)  # threefry: on CPU ~5x faster than "rbg" for these draws
    it = iter(bar)
    for s in range(settings.seeds):
        beta = make_beta(np.random.default_rng([seed, s]), settings.d, settings.k)
        betas.append(beta.tolist())
        beta_j = jnp.asarray(beta)
        sweep_eps = s < settings.epsilon_seeds
        epsilons = all_eps if sweep_eps else ref_eps
        i_ref = settings.epsilons.index(settings.epsilon_ref) if sweep_eps else 0
        totals = None
        for c in range(num_chunks):
            next(it)
            sums = chunk_sums(jax.random.fold_in(jax.random.fold_in(root, s), c), beta_j,
                              epsilons, settings.noise_std, chunk=settings.chunk,
                              design=settings.design, clip_x=settings.clip_x,
                              clip_y=settings.clip_y)
            sums = {key: np.asarray(v, np.float64) for key, v in sums.items()}
            if c * settings.chunk >= public_samples:  # the m public x's are all drawn
                sums["public_mat"] = np.zeros_like(sums["public_mat"])
            totals = sums if totals is None else {key: totals[key] + sums[key] for key in sums}
            n = (c + 1) * settings.chunk
            if n in settings.n_grid:
                i = settings.n_grid.index(n)
                for name, err in estimate_errors(totals, n, beta, settings,
                                                 min(n, public_samples)).items():
                    errors_n[name][s, i] = err[i_ref]
                    if sweep_eps and n == settings.n_grid[-1]:
                        errors_eps[name][s] = err
        bar.set_postfix(seed=s)
    bar.close()
    return errors_n, errors_eps, {"betas": betas}


# --- analysis -----------------------------------------------------------------------------


def fit_slope(x, y) -> float:
    """Least-squares slope of log y against log x."""
    return float(np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)[0])


def slope_summary(x, errors_per_seed: np.ndarray, theory: float, tolerance: float) -> dict:
    """Slope of the seed-mean error, per-seed slopes, their standard error, and a verdict."""
    x = np.asarray(x, float)
    mean = errors_per_seed.mean(0)
    slope = fit_slope(x, mean)
    per_seed = [fit_slope(x, e) for e in errors_per_seed]
    se = float(np.std(per_seed, ddof=1) / np.sqrt(len(per_seed))) if len(per_seed) > 1 else 0.0
    allowed = max(tolerance, 2 * se)
    half = len(x) // 2  # a diagnostic of curvature, not used by the verdict
    upper_half = fit_slope(x[half:], mean[half:]) if len(x) - half >= 2 else slope
    return {"fitted": slope, "theory": theory, "per_seed": per_seed, "standard_error": se,
            "allowed_deviation": allowed, "matches": bool(abs(slope - theory) <= allowed),
            "fitted_upper_half": upper_half}


def make_verdict(slopes: dict[str, dict[str, dict]]) -> dict[str, Any]:
    lines = []
    for variant in ("ldp", "ldp_public"):
        for axis, label in (("n", "n"), ("epsilon", "ε")):
            s = slopes[variant][axis]
            word = "matches" if s["matches"] else "does NOT match"
            lines.append(f"{LABELS[variant]}: slope vs {label} {s['fitted']:+.3f} "
                         f"(± {s['standard_error']:.3f}) {word} the theory {s['theory']:+.1f} "
                         f"(allowed deviation {s['allowed_deviation']:.3f}; upper half of the "
                         f"grid alone: {s['fitted_upper_half']:+.3f}).")
    ok = all(slopes[v][a]["matches"] for v in ("ldp", "ldp_public") for a in ("n", "epsilon"))
    lines.append("All fitted slopes match the 1/(√n ε) rate." if ok else
                 "At least one fitted slope does not match the 1/(√n ε) rate.")
    return {"all_match": ok, "text": lines}


def bound_curves(n, eps, settings: LDPRegressionSettings) -> dict[str, np.ndarray]:
    d, k = settings.d, settings.k
    return {"nldp_upper": np.asarray(pv.nldp_upper_bound(n, d, k, eps)),
            "nldp_upper_public": np.asarray(pv.nldp_upper_bound(n, d, k, eps,
                                                                public_data=True)),
            "nldp_lower": np.asarray(pv.nldp_lower_bound(n, d, k, eps))}


# --- plot ---------------------------------------------------------------------------------


def plot(path, settings: LDPRegressionSettings, errors_n, errors_eps, slopes) -> None:
    with figure(path, 1, 2, figsize=(12, 4.8)) as (fig, axes):
        _draw(fig, axes, settings, errors_n, errors_eps, slopes)


def _draw(fig, axes, settings: LDPRegressionSettings, errors_n, errors_eps, slopes) -> None:
    from matplotlib.ticker import NullFormatter

    n_grid = np.asarray(settings.n_grid, float)
    eps = np.asarray(settings.epsilons, float)
    sweeps = [(axes[0], n_grid, errors_n, "n (users)",
               bound_curves(n_grid, settings.epsilon_ref, settings), "n",
               f"error vs n (ε = {settings.epsilon_ref:g}, {settings.seeds} seeds)"),
              (axes[1], eps, errors_eps, "ε",
               bound_curves(settings.n_grid[-1], eps, settings), "epsilon",
               f"error vs ε (n = {settings.n_grid[-1]:,}, {settings.epsilon_seeds} seeds)")]
    for ax, x, errors, xlabel, bounds, axis, title in sweeps:
        for variant, marker in zip(VARIANTS, "osdv"):
            e = errors[variant]
            label = LABELS[variant]
            if variant in slopes:
                label += f" (slope {slopes[variant][axis]['fitted']:+.2f})"
            ax.errorbar(x, e.mean(0), yerr=e.std(0), marker=marker, capsize=3, label=label,
                        alpha=0.5 if variant == "public_no_noise" else 1.0)
        ax.plot(x, bounds["nldp_upper"], "k--", label="upper d√k/(√n ε)")
        ax.plot(x, bounds["nldp_upper_public"], "k-.", label="upper, public: √(dk)/(√n ε)")
        ax.plot(x, bounds["nldp_lower"], "k:", label="lower √(dk log d)/(√n ε)")
        ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="‖β̂ − β*‖₂", title=title)
        ax.set_xticks(x, [f"{v:,g}" for v in x])  # the grid values, no crowded minor labels
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Sparse linear regression under LDP: d = {settings.d}, k = {settings.k}, "
                 f"{settings.design} x, mean ± std over the seeds (bound constants = 1)",
                 fontsize=10)


# --- the experiment -----------------------------------------------------------------------


@experiment("ldp_regression", "Sparse linear regression under local differential privacy: "
            "error vs n and eps beside the upper and lower bound rates.")
def run(config: RunConfig, settings: LDPRegressionSettings) -> dict[str, Any]:
    """Run the experiment in float64; the metrics."""
    with jax.enable_x64(True):
        return _run(config, settings)


def _run(config: RunConfig, settings: LDPRegressionSettings) -> dict[str, Any]:
    started = time.perf_counter()
    scales = pv.release_noise_scales(settings.d, 1.0, settings.clip_x, settings.clip_y)
    public_scale = pv.release_noise_scales(settings.d, 1.0, settings.clip_x, settings.clip_y,
                                           public=True)[1]
    print(f"LDP sparse regression: d = {settings.d}, k = {settings.k}, {settings.design} x, "
          f"clip r = {settings.clip_x:g}, r' = {settings.clip_y:g}; Laplace scale per "
          f"coordinate {float(scales[0]):.4g}/ε (joint), {float(public_scale):.4g}/ε (public "
          f"variant); n up to {settings.n_grid[-1]:,}, {settings.seeds} seeds, public sample "
          f"m = {settings.public_samples or 'n'}.")
    errors_n, errors_eps, extra = simulate(settings, config.seed)
    sim_seconds = time.perf_counter() - started

    slopes = {v: {"n": slope_summary(settings.n_grid, errors_n[v], -0.5,
                                     settings.slope_tolerance),
                  "epsilon": slope_summary(settings.epsilons, errors_eps[v], -1.0,
                                           settings.slope_tolerance)}
              for v in ("ldp", "ldp_public")}
    verdict = make_verdict(slopes)
    # not part of the verdict: the noise-free curves' n-slopes (the public one is -1/2 only
    # while the public sample grows with n; with a fixed m it flattens to a floor)
    diagnostics = {v: fit_slope(settings.n_grid, errors_n[v].mean(0))
                   for v in ("non_private", "public_no_noise")}

    n_bounds = bound_curves(np.asarray(settings.n_grid, float), settings.epsilon_ref, settings)
    e_bounds = bound_curves(settings.n_grid[-1], np.asarray(settings.epsilons), settings)
    mean = lambda a: a.mean(0)
    table_n = [{"n": n, **{v: float(mean(errors_n[v])[i]) for v in VARIANTS},
                **{b: float(n_bounds[b][i]) for b in n_bounds}}
               for i, n in enumerate(settings.n_grid)]
    table_eps = [{"epsilon": e, **{v: float(mean(errors_eps[v])[j]) for v in VARIANTS},
                  **{b: float(e_bounds[b][j]) for b in e_bounds}}
                 for j, e in enumerate(settings.epsilons)]

    headers = ["n", "LDP err", "LDP+public err", "non-private err", "public, noise-free err",
               "upper d√k/(√nε)", "lower √(dk log d)/(√nε)"]
    columns = ["ldp", "ldp_public", "non_private", "public_no_noise", "nldp_upper",
               "nldp_lower"]
    print(f"\nerror vs n at ε = {settings.epsilon_ref:g} (mean over {settings.seeds} seeds):")
    print(format_table(headers, [[r["n"], *(r[c] for c in columns)] for r in table_n]))
    print(f"\nerror vs ε at n = {settings.n_grid[-1]:,} (mean over the first "
          f"{settings.epsilon_seeds} seeds):")
    print(format_table(["ε", *headers[1:]],
                       [[r["epsilon"], *(r[c] for c in columns)] for r in table_eps]))
    print("\nverdict:")
    for line in verdict["text"]:
        print(f"  {line}")
    print(f"  (diagnostic, not in the verdict: n-slopes of the noise-free curves: non-private "
          f"{diagnostics['non_private']:+.3f}, public covariance "
          f"{diagnostics['public_no_noise']:+.3f}; public sample m = "
          f"{settings.public_samples or 'n'})")
    print(f"\ntime: simulation {sim_seconds:.1f} s")
    plot(config.run_dir / "error_vs_n_eps.png", settings, errors_n, errors_eps, slopes)
    return {
        "privacy": {"mechanism": "laplace (pure ε-LDP)",
                    "laplace_scale_times_epsilon": float(scales[0]),
                    "laplace_scale_times_epsilon_public": float(public_scale),
                    "common_random_numbers": "all ε share the users and the standard Laplace "
                                             "draws; n values are nested prefixes"},
        "betas": extra["betas"],
        "errors_vs_n": {v: errors_n[v] for v in VARIANTS},  # [seeds, n_grid] at epsilon_ref
        "errors_vs_epsilon": {v: errors_eps[v] for v in VARIANTS},  # [epsilon_seeds, eps]
        "error_vs_n": table_n,
        "error_vs_epsilon": table_eps,
        "slopes": slopes,
        "verdict": verdict,
        "noise_free_slopes_vs_n": diagnostics,
        "seconds": {"simulation": sim_seconds},
        "paper_vs_ours": [
            *(paper_row(f"log-log slope of the error vs {axis}, {v}", PAPER[f"slope_vs_{axis}"],
                        slopes[v][axis]["fitted"])
              for v in ("ldp", "ldp_public") for axis in ("n", "epsilon")),
            paper_row("rates", PAPER["claim"], verdict["text"])],
    }
