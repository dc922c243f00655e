"""LIMIT: the critical number of documents per embedding dimension, by free embeddings.

``python -m experiments limit [--full] [--seed N] [--out DIR]``

Weller et al., "On the theoretical limitations of embedding-based retrieval" (arXiv
2508.21038), Section 4. For each embedding dimension ``d``:

1. :func:`jaxbounds.bounds.retrieval.critical_n_search` finds the largest number of
   documents ``n`` for which free unit-norm embeddings of the ``n`` documents and of the
   ``C(n, 2)`` queries (one per pair of documents), trained with full-batch InfoNCE
   (τ = 0.1, Adam lr 0.01, rows renormalised after each step, early stop after
   ``patience`` steps without a 1e-5 loss improvement), rank every query's pair first.
   Galloping from the paper's fit, then binary search, as in the LIMIT code.
2. The measured critical n is set beside the paper's cubic fit
   ``−10.5322 + 4.0309d + 0.0520d² + 0.0037d³`` and, for d ≤ 3, beside the exact limit of
   unit-norm embeddings (2, 3, 4 at d = 1, 2, 3: top-2 sets of points on a sphere are the
   edges of their convex hull).
3. A check that the critical n is a limit of the optimiser, not of the dimension: the
   explicit 4-dimensional :func:`~jaxbounds.bounds.retrieval.neighborly_embedding`
   realises every top-2 set of ``neighborly_n`` documents, far beyond the measured
   critical n at d = 4.

The default (d = 3…8, at most 20,000 steps per run) takes a few minutes on a laptop CPU;
``--full`` runs d = 3…8, 10, 12, 16, 20, 24, 28, 32 with the LIMIT code's 100,000-step cap
(at d = 32, n ≈ 293 and ≈ 43k queries: an hour or more on CPU, meant for a GPU).

Writes ``results.json`` and ``critical_n.png`` under ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import numpy as np

from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.bounds import retrieval

PAPER = "Weller et al., arXiv 2508.21038, Section 4 / Figure 2"
# The exact critical n of unit-norm embeddings for k = 2 (see the module docstring); for
# d ≥ 4 there is none (neighborly_embedding realises every pair of any n documents).
EXACT_CRITICAL_N = {1: 2, 2: 3, 3: 4}


@dataclasses.dataclass(frozen=True)
class LimitSettings(Settings):
    """Everything the LIMIT experiment can vary. The defaults run in minutes on a CPU."""

    dims: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
    k: int = 2
    temperature: float = 0.1
    learning_rate: float = 0.01
    max_steps: int = 20_000  # the LIMIT code: 100,000 (runs here stop on patience first)
    patience: int = 1000
    min_delta: float = 1e-5
    positive_reduction: str = "mean"  # the LIMIT code's loss
    max_n: int = 5000  # cap on the search (the fit gives ≈ 27 at d = 8, ≈ 293 at d = 32)
    restarts: int = 1  # random starts per n (the paper: 1)
    neighborly_n: int = 40  # documents of the explicit d = 4 construction

    @classmethod
    def full(cls) -> LimitSettings:
        """The paper-sized configuration of ``--full`` (meant for a GPU)."""
        return cls(dims=(3, 4, 5, 6, 7, 8, 10, 12, 16, 20, 24, 28, 32), max_steps=100_000,
                   neighborly_n=300)

    def fit_kwargs(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "learning_rate": self.learning_rate,
                "max_steps": self.max_steps, "patience": self.patience,
                "min_delta": self.min_delta, "positive_reduction": self.positive_reduction}


def measure_dimension(d: int, settings: LimitSettings, key, bar=None) -> dict[str, Any]:
    """The critical-n search at one ``d``; a JSON-ready row."""

    def report(summary: dict[str, Any]) -> None:
        if bar is not None:
            bar.set_postfix(d=d, n=summary["n"], ok=summary["success"],
                            steps=summary["steps"])

    result = retrieval.critical_n_search(d, settings.k, key=key, max_n=settings.max_n,
                                         restarts=settings.restarts, callback=report,
                                         **settings.fit_kwargs())
    fit = float(retrieval.critical_n_fit(d))
    runs = list(result.evaluations.values())
    critical = result.critical_n
    return {
        "d": d,
        "critical_n": critical,
        "queries_at_critical_n": None if critical is None else math.comb(critical, settings.k),
        "first_failure": result.first_failure,
        "capped": result.capped,
        "fit": fit,
        "measured_minus_fit": None if critical is None else critical - fit,
        "exact_limit": EXACT_CRITICAL_N.get(d) if settings.k == 2 else None,
        "runs": runs,
        "steps_total": sum(r["steps"] for r in runs),
        "hit_max_steps": sum(r["stop_reason"] == retrieval.STOP_MAX_STEPS for r in runs),
        "seconds": result.seconds,
    }


def neighborly_check(n: int, k: int) -> dict[str, Any]:
    """Margins of the explicit ``2k``-dimensional embedding of all ``C(n, k)`` sets (built
    in float64: its margins shrink like n^(−2k))."""
    with jax.enable_x64(True):
        queries, docs, qrels = (np.asarray(x) for x in retrieval.neighborly_embedding(n, k))
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    top = np.min(np.where(qrels, scores, np.inf), axis=1)
    rest = np.max(np.where(qrels, -np.inf, scores), axis=1)
    margin = float(np.min(top - rest))
    return {"d": 2 * k, "n": n, "k": k, "queries": math.comb(n, k), "min_margin": margin,
            "all_top_k_sets_exact": margin > 0}


def plot_critical_n(path, rows: list[dict[str, Any]], title: str) -> None:
    """Measured critical n per d, the paper's fit, and the exact limits for d ≤ 3."""
    dims = [r["d"] for r in rows]
    grid = np.linspace(min(dims), max(dims), 200)
    with figure(path) as (_, ax):
        ax.plot(grid, np.asarray(retrieval.critical_n_fit(grid)), "-", color="C1",
                label="paper's fit  −10.53 + 4.03d + 0.052d² + 0.0037d³")
        measured = [(r["d"], r["critical_n"]) for r in rows if r["critical_n"] is not None]
        if measured:
            ax.plot(*zip(*measured), "o", color="C0", label="measured (free embeddings)")
        exact = [(d, EXACT_CRITICAL_N[d]) for d in dims if d in EXACT_CRITICAL_N]
        if exact:
            ax.plot(*zip(*exact), "x", color="k", ms=9, label="exact limit (unit norm)")
        ax.set(xlabel="embedding dimension d", ylabel="critical n (top-2, all pairs)",
               title=title)
        ax.grid(alpha=0.3)
        ax.legend()


@experiment("limit", "LIMIT: critical n per embedding dimension d by free-embedding "
            "optimisation, vs the fit.")
def run(config: RunConfig, settings: LimitSettings) -> dict[str, Any]:
    """The critical-n search per d and the explicit d = 4 construction; the metrics."""
    key = jax.random.PRNGKey(config.seed)
    print(f"LIMIT: critical n for d = {', '.join(map(str, settings.dims))} (k = {settings.k}); "
          f"InfoNCE τ = {settings.temperature}, Adam lr = {settings.learning_rate}, "
          f"≤ {settings.max_steps:,} steps, patience {settings.patience} "
          f"(min Δ {settings.min_delta:g}).")
    rows = []
    bar = progress(settings.dims, desc="critical n")
    for d in bar:
        rows.append(measure_dimension(d, settings, jax.random.fold_in(key, d), bar))
    neighborly = neighborly_check(settings.neighborly_n, settings.k)

    headers = ["d", "fit (paper)", "measured n*", "first fail", "queries at n*",
               "exact", "runs", "steps", "seconds"]
    table = format_table(headers, [
        [r["d"], round(r["fit"], 1), r["critical_n"], r["first_failure"],
         r["queries_at_critical_n"], r["exact_limit"] if r["exact_limit"] else "none (∞)",
         len(r["runs"]), r["steps_total"], round(r["seconds"], 1)]
        for r in rows])
    print(f"\n{table}")
    print(f"\nexplicit d = {neighborly['d']} embedding of all {neighborly['queries']:,} "
          f"top-{neighborly['k']} sets of n = {neighborly['n']} docs: exact = "
          f"{neighborly['all_top_k_sets_exact']} (min margin {neighborly['min_margin']:.3g})")
    plot_critical_n(config.run_dir / "critical_n.png", rows,
                    f"LIMIT free embeddings, k = {settings.k}")
    return {
        "fit_coefficients": list(retrieval.FIT_COEFFICIENTS),
        "fit_extrapolations": {str(d): float(retrieval.critical_n_fit(d))
                               for d in (512, 768, 1024, 3072, 4096)},
        "critical_n": rows,
        "neighborly": neighborly,
        "table": table,
        "paper_vs_ours": [paper_row(f"critical n at d = {r['d']} ({PAPER}: the fit)", r["fit"],
                                    r["critical_n"]) for r in rows],
    }
