"""ℓp subspace embeddings by row sampling: distortion and ℓp regression vs sample size.

``python -m experiments sensitivity_sampling [--full] [--seed N] [--out DIR]``

Woodruff & Yasuda, "Sharper Bounds for ℓp Sensitivity Sampling" (ICML 2023,
arXiv 2306.00732) bound the number of rows that ℓp sensitivity sampling needs for a
(1 ± ε) ℓp subspace embedding by roughly 𝔖^{2/p} (1 ≤ p < 2) and 𝔖^{2−2/p} (p > 2), where
𝔖 = Σ s_i is the total sensitivity, beside root-leverage sampling (≈ d rows, p < 2) and the
leverage + sensitivity mixture (d^{2/p} 𝔖^{2−4/p}, p > 2). At our scale:

1. Two matrices ``M = [A, b]``: a structured one (a few heavy coordinate rows on top of
   Gaussian rows with lognormal row scales) and scikit-learn's bundled diabetes data
   (442 × 10 standardised features + intercept, target b; no download).
2. For p ∈ {1, 1.5, 3}, sampling scores: uniform, leverage τ, root leverage τ^{p/2},
   ℓp Lewis weights, ℓp sensitivities (exact by HiGHS LPs at p = 1, the certified upper
   bound otherwise) and, for p > 2, the mixture τ/d + s/𝔖.
3. For each score, sample size m and trial: keep row i with probability
   min(1, m s_i/Σs), rescaled by q^{−1/p}
   (:func:`~jaxbounds.bounds.sensitivity.sensitivity_sample`),
   estimate the distortion sup_x |‖SMx‖_p/‖Mx‖_p − 1| over the column space of M
   (:func:`~jaxbounds.bounds.sensitivity.subspace_embedding_distortion`, a lower
   estimate), and solve the sampled ℓp regression min ‖S(Ax − b)‖_p (HiGHS LP at p = 1,
   IRLS otherwise); report the relative excess cost ‖Ax̂ − b‖_p/‖Ax* − b‖_p − 1.
4. Per method, the smallest m whose median distortion is ≤ each target ε.

Writes ``results.json``, ``distortion_<data>.png`` and ``regression_<data>.png``.
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
from jaxbounds.bounds import sensitivity as sens

METHODS = ("uniform", "leverage", "root_leverage", "lewis", "sensitivity", "mixture")
NAMES = {"uniform": "uniform", "leverage": "leverage", "root_leverage": "root leverage",
         "lewis": "Lewis weights", "sensitivity": "sensitivity", "mixture": "leverage+sens."}
DATASETS = ("structured", "diabetes")
PAPER = {
    "reference": "Woodruff & Yasuda, Sharper Bounds for lp Sensitivity Sampling, ICML 2023, "
                 "arXiv 2306.00732",
    "total_sensitivity": "S = d at p = 2; S <= d for p < 2; S <= d^(p/2) for p > 2",
    "sample_sizes": {
        "general": "O~(eps^-2 S d)",
        "sensitivity_p_lt_2": "O~(eps^-2 S^(2/p)) (tight up to polylogs)",
        "sensitivity_p_gt_2": "O~(eps^-2 S^(2-2/p))",
        "root_leverage_p_lt_2": "O~(eps^-2 d)",
        "mixture_p_gt_2": "O~(eps^-2 d^(2/p) S^(2-4/p))",
    },
    "claim": "for matrices with small total sensitivity, sensitivity sampling needs fewer "
             "rows than the general S d bound; uniform sampling fails on heavy rows.",
}


@dataclasses.dataclass(frozen=True)
class SensitivitySamplingSettings(Settings):
    """Everything the experiment can vary. The defaults run in a few minutes on 2 cores."""

    n_structured: int = 600
    d_structured: int = 8
    heavy_rows: int = 4
    heavy_scale: float = 40.0
    ps: tuple[float, ...] = (1.0, 1.5, 3.0)
    sample_sizes: tuple[int, ...] = (30, 60, 120, 240)
    trials: int = 4
    methods: tuple[str, ...] = METHODS
    datasets: tuple[str, ...] = DATASETS
    num_starts: int = 12  # random starts of the distortion search (plus structured ones)
    num_steps: int = 80
    irls_iters: int = 80
    targets: tuple[float, ...] = (0.5, 0.3)
    diabetes_rows: int = 0  # 0: all 442 rows; else the first k (for quick tests)

    @classmethod
    def full(cls) -> SensitivitySamplingSettings:
        """``--full``: a larger structured matrix, more sizes, trials and search."""
        return cls(n_structured=3000, d_structured=12, heavy_rows=6,
                   sample_sizes=(30, 60, 120, 240, 480, 960), trials=10, num_starts=32,
                   num_steps=150, irls_iters=120, targets=(0.5, 0.3, 0.2))

    def __post_init__(self):
        self.check(among={"methods": METHODS, "datasets": DATASETS},
                   positive=("ps", "sample_sizes", "n_structured", "d_structured", "trials",
                             "num_steps", "irls_iters"))
        if not 0 <= self.heavy_rows <= self.n_structured:
            raise ValueError(f"heavy_rows must be in [0, n_structured], got {self.heavy_rows}.")


# --- data ---------------------------------------------------------------------------------


def structured_matrix(rng: np.random.Generator, n: int, d: int, heavy: int,
                      scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian rows (lognormal row scales) + ``heavy`` rows ``scale·e_j``; b = Ax + noise."""
    A = rng.standard_normal((n, d)) * rng.lognormal(0.0, 0.5, size=(n, 1))
    for k in range(heavy):
        A[k] = 0.0
        A[k, k % d] = scale
    x = rng.standard_normal(d)
    b = A @ x + rng.standard_t(2.0, size=n)  # heavy-tailed noise: ℓp regression matters
    return A, b


def diabetes_matrix() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's bundled diabetes data: standardised features + intercept, standardised y."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    A = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    return A, (y - y.mean()) / y.std()


# --- ℓp regression --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("p", "iters"))
def irls_regression(A, b, p, iters):
    """min_x ‖Ax − b‖_p for p > 1 by IRLS (weights max(|r|, η)^{p−2}; step 1/(p−1) for p > 2).

    Zero rows (dropped by sampling) contribute nothing.
    """
    theta = 1.0 if p <= 2 else 1.0 / (p - 1)
    x0 = jnp.linalg.lstsq(A, b)[0]

    def body(_, x):
        r = A @ x - b
        s = jnp.maximum(jnp.abs(r), 1e-9 * jnp.max(jnp.abs(r)) + 1e-300)
        wgt = s ** (p - 2)
        G = A.T @ (wgt[:, None] * A) + 1e-14 * jnp.trace(A.T @ A) * jnp.eye(A.shape[1])
        x_new = jnp.linalg.solve(G, A.T @ (wgt * b))
        return (1 - theta) * x + theta * x_new

    return jax.lax.fori_loop(0, iters, body, x0)


def l1_regression(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min_x ‖Ax − b‖₁ by HiGHS: min 1ᵀ(r⁺ + r⁻) s.t. Ax − r⁺ + r⁻ = b."""
    from scipy import optimize, sparse

    n, d = A.shape
    eye = sparse.identity(n, format="csr")
    A_eq = sparse.hstack([sparse.csr_matrix(A), -eye, eye], format="csr")
    cost = np.concatenate([np.zeros(d), np.ones(2 * n)])
    res = optimize.linprog(cost, A_eq=A_eq, b_eq=b,
                           bounds=[(None, None)] * d + [(0, None)] * (2 * n), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed: {res.message}")
    return res.x[:d]


def lp_cost(A, b, x, p) -> float:
    return float(np.sum(np.abs(A @ x - b) ** p) ** (1 / p))


def solve_regression(A, b, p, iters) -> np.ndarray:
    if p == 1:
        keep = np.any(A != 0, axis=1)
        return l1_regression(A[keep], b[keep])
    return np.asarray(irls_regression(jnp.asarray(A), jnp.asarray(b), p, iters))


# --- scores ---------------------------------------------------------------------------------


def sampling_scores(M: np.ndarray, p: float, methods) -> tuple[dict[str, np.ndarray], dict]:
    """Scores per method for the matrix M, and the total sensitivity (exact or a bracket)."""
    tau = np.asarray(sens.leverage_scores(M))
    d = int(round(tau.sum()))
    bounds = sens.lp_sensitivities(M, p)
    lower, upper = np.asarray(bounds.lower), np.asarray(bounds.upper)
    total = {"lower": float(lower.sum()), "upper": float(upper.sum()),
             "exact": bool(bounds.exact), "rank": d,
             "lewis_weight_sum": None, "root_leverage_sum": float(np.sum(tau ** (p / 2)))}
    w = np.asarray(sens.lewis_weights(M, p))
    total["lewis_weight_sum"] = float(w.sum())
    scores = {"uniform": np.ones(len(M)), "leverage": tau, "root_leverage": tau ** (p / 2),
              "lewis": w, "sensitivity": upper,
              "mixture": tau / d + upper / upper.sum()}
    return {m: scores[m] for m in methods if m != "mixture" or p > 2}, total


# --- main -----------------------------------------------------------------------------------


def summarize(values) -> dict[str, float]:
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
            "q75": float(np.quantile(v, 0.75)), "mean": float(v.mean())}


def needed_sizes(rows: list[dict[str, Any]], targets) -> dict[str, dict[str, int | None]]:
    """Smallest sampled m whose median distortion is ≤ each target (None: not reached)."""
    out: dict[str, dict[str, int | None]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["m"])
        out[method] = {f"{t:g}": next((r["m"] for r in mine
                                       if r["distortion"]["median"] <= t), None)
                       for t in targets}
    return out


def plot_curves(path, table, key, ylabel, title, settings) -> None:
    ps = sorted({r["p"] for r in table})
    with figure(path, 1, len(ps), figsize=(5 * len(ps), 4), dpi=110,
                squeeze=False) as (fig, axes):
        for ax, p in zip(axes[0], ps):
            for method in settings.methods:
                rows = sorted((r for r in table if r["p"] == p and r["method"] == method),
                              key=lambda r: r["m"])
                if not rows:
                    continue
                m = [r["m"] for r in rows]
                ax.plot(m, [max(r[key]["median"], 1e-6) for r in rows], marker="o",
                        label=NAMES[method])
                ax.fill_between(m, [max(r[key]["q25"], 1e-6) for r in rows],
                                [max(r[key]["q75"], 1e-6) for r in rows], alpha=0.15)
            ax.set(xscale="log", yscale="log", xlabel="sample size m (expected rows)",
                   ylabel=ylabel, title=f"p = {p:g}")
            ax.grid(True, which="both", alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.suptitle(title)


@experiment("sensitivity_sampling", "lp subspace embeddings: distortion vs sample size for "
            "uniform, leverage, root-leverage, Lewis and sensitivity sampling; lp regression on "
            "the sample.")
def run(config: RunConfig, settings: SensitivitySamplingSettings) -> dict[str, Any]:
    """Distortion and regression per dataset, p, method and sample size; the metrics."""
    rng = np.random.default_rng(config.seed)
    root = jax.random.key(config.seed)
    results: dict[str, Any] = {"datasets": {}}
    with jax.enable_x64(True):
        data = {}
        for name in settings.datasets:
            if name == "structured":
                data[name] = structured_matrix(rng, settings.n_structured,
                                               settings.d_structured, settings.heavy_rows,
                                               settings.heavy_scale)
            else:
                A, b = diabetes_matrix()
                k = settings.diabetes_rows or len(A)
                data[name] = (A[:k], b[:k])
        for di, (name, (A, b)) in enumerate(data.items()):
            M = np.concatenate([A, b[:, None]], axis=1)
            n = len(M)
            entry: dict[str, Any] = {"n": n, "d": A.shape[1], "columns_of_M": M.shape[1],
                                     "total_sensitivity": {}, "table": [],
                                     "full_cost": {}, "score_seconds": {}}
            print(f"\n{name}: A is {A.shape[0]} x {A.shape[1]}, sampling rows of [A, b]")
            for pi, p in enumerate(settings.ps):
                t0 = time.perf_counter()
                scores, total = sampling_scores(M, p, settings.methods)
                entry["score_seconds"][f"{p:g}"] = time.perf_counter() - t0
                entry["total_sensitivity"][f"{p:g}"] = total
                x_full = solve_regression(A, b, p, settings.irls_iters)
                full_cost = lp_cost(A, b, x_full, p)
                entry["full_cost"][f"{p:g}"] = full_cost
                jobs = [(meth, m) for meth in scores for m in settings.sample_sizes]
                distort = jax.jit(jax.vmap(
                    lambda SA, k, p=p, M=M: sens.subspace_embedding_distortion(
                        SA, M, p, key=k, num_starts=settings.num_starts,
                        num_steps=settings.num_steps).distortion))
                bar = progress(jobs, desc=f"{name} p={p:g}", leave=False)
                for ji, (meth, m) in enumerate(bar):
                    keys = jax.random.split(jax.random.fold_in(root, 1000 * di + 100 * pi + ji),
                                            2 * settings.trials)
                    samples = [sens.sensitivity_sample(keys[t], M, float(m), scores[meth], p)
                               for t in range(settings.trials)]
                    SM = jnp.stack([s.SA for s in samples])
                    dist = np.asarray(distort(SM, keys[settings.trials:]))
                    excess, kept = [], []
                    for s in samples:
                        SMt = np.asarray(s.SA)
                        kept.append(int(np.asarray(s.mask).sum()))
                        x_hat = solve_regression(SMt[:, :-1], SMt[:, -1], p, settings.irls_iters)
                        excess.append(max(lp_cost(A, b, x_hat, p) / full_cost - 1.0, 0.0))
                    entry["table"].append({"p": p, "method": meth, "m": m,
                                           "kept_mean": float(np.mean(kept)),
                                           "distortion": summarize(dist),
                                           "distortions": dist.tolist(),
                                           "excess": summarize(excess), "excesses": excess})
                    bar.set_postfix({meth: f"{np.median(dist):.3g}"})
                sens_total = total["upper"]
                entry.setdefault("paper_sizes", {})[f"{p:g}"] = {
                    "general_S_d": float(sens.general_sample_size(
                        sens_total, M.shape[1], eps=0.5)),
                    "sensitivity": float(sens.sensitivity_sample_size(sens_total, eps=0.5, p=p)),
                    **({"root_leverage": float(sens.root_leverage_sample_size(
                        M.shape[1], eps=0.5, p=p))} if p < 2 else {}),
                    **({"mixture": float(sens.mixture_sample_size(
                        M.shape[1], sens_total, eps=0.5, p=p))} if p > 2 else {}),
                    "note": "formula values at eps = 0.5 with constant = log_factor = 1",
                }
            entry["needed_sizes"] = {
                f"{p:g}": needed_sizes([r for r in entry["table"] if r["p"] == p],
                                       settings.targets) for p in settings.ps}
            plot_curves(config.run_dir / f"distortion_{name}.png", entry["table"],
                        "distortion", "distortion (median, IQR)",
                        f"{name}: subspace-embedding distortion of [A, b]", settings)
            plot_curves(config.run_dir / f"regression_{name}.png", entry["table"], "excess",
                        "relative excess cost", f"{name}: sampled lp regression", settings)
            results["datasets"][name] = entry
            # terminal tables
            print("total sensitivity (rank of [A, b] = "
                  f"{entry['total_sensitivity'][f'{settings.ps[0]:g}']['rank']}):")
            print(format_table(["p", "S lower", "S upper", "exact", "sum tau^(p/2)"],
                               [[p, t["lower"], t["upper"], t["exact"], t["root_leverage_sum"]]
                                for p, t in ((float(k), v) for k, v in
                                             entry["total_sensitivity"].items())]))
            for p in settings.ps:
                rows = [r for r in entry["table"] if r["p"] == p]
                meths = list(dict.fromkeys(r["method"] for r in rows))
                body = [[m, *[next(r for r in rows if r["method"] == meth and r["m"] == m)
                              ["distortion"]["median"] for meth in meths]]
                        for m in settings.sample_sizes]
                print(f"p = {p:g}: median distortion")
                print(format_table(["m", *[NAMES[x] for x in meths]], body))
    results["paper_vs_ours"] = [
        paper_row(f"total sensitivity of [A, b], {name}, p = {p}", PAPER["total_sensitivity"],
                  total) for name, entry in results["datasets"].items()
        for p, total in entry["total_sensitivity"].items()
    ] + [paper_row("claim", PAPER["claim"], {name: entry["needed_sizes"]
                                             for name, entry in results["datasets"].items()})]
    return results
