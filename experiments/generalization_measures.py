"""Jiang et al.'s generalization measures on a 2⁶ grid of digits MLPs: Kendall τ, granulated
Kendall Ψ, and the tightness gaps of the PAC-Bayes risk bounds.

``python -m experiments generalization_measures [--full] [--seed N] [--out DIR]``

1. Data: scikit-learn's bundled digits (1797 8×8 images, 10 classes; no download), pixels in
   [0, 1], a fixed random split into ``train_size`` training and the rest test examples. A
   label-noise fraction p replaces exactly ⌊p·n⌋ labels, chosen at random, by a different
   random class — in the training **and** the test set (independent draws): the noisy labels
   are the data distribution, so a PAC-Bayes bound on the test error is a bound on the noisy
   test error. The clean test accuracy is reported beside it.
2. A full factorial grid, two values each of width, depth (hidden layers), learning rate,
   weight decay, batch size and label noise: 64 ReLU MLPs, each trained for ``steps`` steps of
   SGD with momentum (weight decay as an L2 term on every parameter). Models that share a
   shape (width, depth, batch size) train together under one ``vmap``.
3. Every measure of :func:`jaxbounds.bounds.measures.generalization_measures` on the
   (noisy) training set, and the generalization gap = train accuracy − test accuracy.
4. Kendall τ (``scipy.stats.kendalltau``) between each measure and the gap over the 64 models,
   and the granulated Kendall Ψ of Jiang et al. (2020, eq. 4): for each hyperparameter i,
   ψ_i is the mean τ over the groups of models in which only i varies (32 pairs here; a tie
   gives τ = 0), and Ψ = the mean of the ψ_i.
5. The PAC-Bayes measures turned into risk bounds (module :func:`pac_bayes_risk_bounds`):
   R(Q) ≤ kl⁻¹(ê(Q), (KL(Q‖P) + ln(2√m/δ) + ln N)/m) for the Gaussian posterior Q of each
   flatness search, its tightness gap bound − test error across the grid (min/median/max),
   and a check that no bound falls below the Gibbs test error it bounds.

Writes ``results.json``, ``kendall.png`` and ``tightness.png`` under ``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from experiments import digits
from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.bounds import measures as M
from jaxbounds.bounds.pac_bayes import kl_inverse_upper

HPARAMS = ("width", "depth", "learning_rate", "weight_decay", "batch_size", "label_noise")

# The PAC-Bayes measures that are turned into risk bounds, with the posterior they use.
RISK_BOUNDS = {
    "pacbayes_init": ("isotropic", "init"),
    "pacbayes_orig": ("isotropic", "origin"),
    "pacbayes_mag_init": ("magnitude", "init"),
    "pacbayes_mag_orig": ("magnitude", "origin"),
}

# What Jiang et al. (2020) report, CIFAR-10 (their Table 2 / Table 5). We could not read the
# paper's tables offline, so no number is quoted; the qualitative statement is from the
# abstract and section 6 as summarised in docs/generalization_measures.md.
JIANG_REPORTED = {
    name: {"tau": None, "psi": None, "sourced": False} for name in M.MEASURE_NAMES
}


@dataclasses.dataclass(frozen=True)
class GeneralizationSettings(Settings):
    """The grid and the measurement settings. Defaults run in a few minutes on a 2-core CPU."""

    widths: tuple[int, ...] = (32, 128)
    depths: tuple[int, ...] = (1, 3)
    learning_rates: tuple[float, ...] = (0.01, 0.05)
    weight_decays: tuple[float, ...] = (0.0, 1e-3)
    batch_sizes: tuple[int, ...] = (32, 128)
    label_noises: tuple[float, ...] = (0.0, 0.2)
    steps: int = 1500
    momentum: float = 0.9
    train_size: int = 1000
    # The flatness search (Jiang et al. / the reference: depth 15, 10 draws, [0, 2], 0.1±0.01).
    search_depth: int = 15
    mc_samples: int = 10
    power_iters: int = 100
    magnitude_eps: float = 1e-3
    # The risk bounds.
    delta: float = 0.05
    gibbs_test_samples: int = 10
    prior_variance_log2: tuple[float, float] = (-20.0, 4.0)  # the grid of the mag. prior
    prior_variance_points: int = 49

    @classmethod
    def full(cls) -> GeneralizationSettings:
        """``--full``: train 4× longer, with more Monte-Carlo draws for the Gibbs test error."""
        return cls(steps=6000, gibbs_test_samples=50)

    def grid(self) -> list[dict[str, Any]]:
        values = (self.widths, self.depths, self.learning_rates, self.weight_decays,
                  self.batch_sizes, self.label_noises)
        return [dict(zip(HPARAMS, combo)) for combo in itertools.product(*values)]


# --- data ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DigitsData:
    x_train: np.ndarray
    x_test: np.ndarray
    y_train_clean: np.ndarray
    y_test_clean: np.ndarray
    noisy: dict[float, tuple[np.ndarray, np.ndarray]]  # p -> (y_train, y_test)
    num_classes: int


def corrupt_labels(rng: np.random.Generator, labels: np.ndarray, fraction: float,
                   num_classes: int) -> np.ndarray:
    """Replace exactly ⌊fraction·n⌋ labels, chosen at random, by a different random class."""
    labels = labels.copy()
    count = int(math.floor(fraction * len(labels)))
    chosen = rng.choice(len(labels), size=count, replace=False)
    labels[chosen] = (labels[chosen] + rng.integers(1, num_classes, size=count)) % num_classes
    return labels


def load_data(settings: GeneralizationSettings, seed: int) -> DigitsData:
    x, y = digits.load_digits()
    order = np.random.default_rng(seed).permutation(len(y))
    train, test = order[:settings.train_size], order[settings.train_size:]
    num_classes = int(y.max()) + 1
    noisy = {}
    for p in settings.label_noises:
        rng = np.random.default_rng([seed, int(round(p * 1e6))])
        noisy[p] = (corrupt_labels(rng, y[train], p, num_classes),
                    corrupt_labels(rng, y[test], p, num_classes))
    return DigitsData(x[train], x[test], y[train], y[test], noisy, num_classes)


# --- models and training --------------------------------------------------------------------


def make_trainer(model, momentum: float):
    """Jitted ``(params [G], lr [G], wd [G], y_train [G, n], x_train, indices) -> params [G]``:
    G models of one shape, each its own SGD-with-momentum run over the shared index stream."""

    def train_one(params, lr, wd, y_train, x_train, indices):
        def loss(p, batch):
            return digits.cross_entropy(model.apply(p, x_train[batch]), y_train[batch])

        def step(carry, batch):
            p, v = carry
            g = jax.grad(loss)(p, batch)
            v = jax.tree_util.tree_map(lambda v, g, p: momentum * v + g + wd * p, v, g, p)
            p = jax.tree_util.tree_map(lambda p, v: p - lr * v, p, v)
            return (p, v), None

        velocity = jax.tree_util.tree_map(jnp.zeros_like, params)
        (params, _), _ = jax.lax.scan(step, (params, velocity), indices)
        return params

    return jax.jit(jax.vmap(train_one, in_axes=(0, 0, 0, 0, None, None)))


def _unstack(tree, index):
    return jax.tree_util.tree_map(lambda a: a[index], tree)


def train_grid(settings: GeneralizationSettings, data: DigitsData, seed: int):
    """Train every grid point; returns (models {(w, d): MLP}, rows with params and inits)."""
    rows = [dict(h) for h in settings.grid()]
    for index, row in enumerate(rows):
        row["index"] = index
    models = {(w, d): digits.MLP(w, d, data.num_classes)
              for w in settings.widths for d in settings.depths}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["width"], row["depth"], row["batch_size"]), []).append(row)
    x_train = jnp.asarray(data.x_train)
    dummy = jnp.zeros((1, data.x_train.shape[1]), jnp.float32)
    trainers, initializers = {}, {}
    for (width, depth, batch_size), members in progress(groups.items(), desc="train groups"):
        model = models[(width, depth)]
        if (width, depth) not in trainers:
            trainers[(width, depth)] = make_trainer(model, settings.momentum)
            initializers[(width, depth)] = jax.jit(jax.vmap(
                lambda k, model=model: model.init(k, dummy)))
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(seed), r["index"])
                          for r in members])
        inits = initializers[(width, depth)](keys)
        lrs = jnp.asarray([r["learning_rate"] for r in members], jnp.float32)
        wds = jnp.asarray([r["weight_decay"] for r in members], jnp.float32)
        ys = jnp.asarray(np.stack([data.noisy[r["label_noise"]][0] for r in members]))
        indices = jnp.asarray(digits.index_stream(np.random.default_rng([seed, batch_size]),
                                           len(data.y_train_clean), settings.steps,
                                           batch_size))
        trained = trainers[(width, depth)](inits, lrs, wds, ys, x_train, indices)
        for position, row in enumerate(members):
            row["params"] = _unstack(trained, position)
            row["init"] = _unstack(inits, position)
    return models, rows


# --- the risk bounds ----------------------------------------------------------------------


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(a, np.float64))
                           for a in jax.tree_util.tree_leaves(tree)])


def isotropic_kl(theta: np.ndarray, prior_mean: np.ndarray, sigma: float) -> float:
    """KL(N(θ, σ²I) ‖ N(θ_P, σ²I)) = ‖θ − θ_P‖² / (2σ²)."""
    return float(np.sum((theta - prior_mean) ** 2) / (2 * sigma**2))


def magnitude_kl(theta: np.ndarray, prior_mean: np.ndarray, sigma: float, eps: float,
                 prior_variances: np.ndarray) -> tuple[float, float]:
    """min over the grid λ of KL(N(θ, diag(σ²θ_i² + ε²)) ‖ N(θ_P, λI)); returns (KL, λ).

    KL = ½ Σ_i [s_i²/λ + (θ_i − θ_P,i)²/λ − 1 + ln(λ/s_i²)], s_i² = σ²θ_i² + ε².
    """
    s2 = sigma**2 * theta**2 + eps**2
    lam = prior_variances[:, None]
    kl = 0.5 * np.sum(s2 / lam + (theta - prior_mean) ** 2 / lam - 1 + np.log(lam / s2), axis=1)
    best = int(np.argmin(kl))
    return float(kl[best]), float(prior_variances[best])


def pac_bayes_risk_bounds(kl: np.ndarray, gibbs_train_error: np.ndarray, m: int, delta: float,
                          log_choices: float) -> np.ndarray:
    """Maurer / Langford–Seeger: R(Q) ≤ kl⁻¹(ê(Q), (KL + ln(2√m/δ) + ln N)/m).

    ``log_choices`` = ln N pays (union bound) for the N values the data-dependent choices of
    σ (and of the prior variance) could take. Vectorised over models.
    """
    c = (np.asarray(kl) + math.log(2 * math.sqrt(m) / delta) + log_choices) / m
    q = np.clip(np.asarray(gibbs_train_error, np.float64), 0.0, 1.0)
    return np.asarray(kl_inverse_upper(jnp.asarray(q, jnp.float32), jnp.asarray(c, jnp.float32)))


# --- Kendall ------------------------------------------------------------------------------


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 2:
        return float("nan")
    tau = kendalltau(a[ok], b[ok]).statistic
    return float(tau)


def granulated_kendall(rows: list[dict], measure: str, gap: str = "gap") -> dict[str, Any]:
    """Jiang et al.'s Ψ: ψ_i = mean over the groups in which only hyperparameter i varies of
    τ(measure, gap) within the group (NaN, i.e. all-tied, counts as 0); Ψ = mean_i ψ_i over
    the hyperparameters that take at least two values."""
    psi = {}
    for h in HPARAMS:
        others = [o for o in HPARAMS if o != h]
        groups: dict[tuple, list[dict]] = {}
        for row in rows:
            groups.setdefault(tuple(row[o] for o in others), []).append(row)
        taus = []
        for members in groups.values():
            if len({r[h] for r in members}) < 2:
                continue
            tau = kendall([r["measures"][measure] for r in members], [r[gap] for r in members])
            taus.append(0.0 if math.isnan(tau) else tau)
        psi[h] = float(np.mean(taus)) if taus else None
    defined = [v for v in psi.values() if v is not None]
    return {"psi": psi, "Psi": float(np.mean(defined)) if defined else None}


# --- plots --------------------------------------------------------------------------------


def plot_kendall(path, table: list[dict]) -> None:
    names = [r["measure"] for r in table]
    y = np.arange(len(names))
    with figure(path, figsize=(8, 0.32 * len(names) + 1.5)) as (_, ax):
        ax.barh(y - 0.2, [r["tau"] for r in table], height=0.4, label="Kendall τ (all models)")
        ax.barh(y + 0.2, [np.nan if r["Psi"] is None else r["Psi"] for r in table], height=0.4,
                label="granulated Kendall Ψ")
        ax.set_yticks(y, names, fontsize=8)
        ax.invert_yaxis()
        ax.axvline(0, color="k", lw=0.8)
        ax.set(xlabel="correlation with the generalization gap (train acc − test acc)",
               title="Jiang et al. measures on the digits MLP grid")
        ax.legend(loc="lower right", fontsize=8)


def plot_tightness(path, rows: list[dict]) -> None:
    names = list(RISK_BOUNDS)
    with figure(path, 1, 2, figsize=(11, 4.5)) as (_, (left, right)):
        for i, name in enumerate(names):
            left.scatter([r["test_error"] for r in rows],
                         [r["risk_bounds"][name]["bound"] for r in rows], s=12, label=name)
            gaps = np.asarray([r["risk_bounds"][name]["tightness_gap"] for r in rows])
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(gaps))
            right.scatter(np.full(len(gaps), i) + jitter, gaps, s=10)
            right.plot([i - 0.3, i + 0.3], [np.median(gaps)] * 2, color="k", lw=1.5)
        left.plot([0, 1], [0, 1], "k--", lw=0.8, label="bound = test error")
        left.axhline(0.9, color="grey", lw=0.8, ls=":", label="random guessing (0.9)")
        left.set(xlabel="test error (noisy labels)", ylabel="PAC-Bayes risk bound",
                 xlim=(0, 1), ylim=(0, 1.02))
        left.legend(fontsize=7)
        right.set_xticks(range(len(names)), names, rotation=20, fontsize=8)
        right.set(ylabel="tightness gap = bound − test error",
                  title="non-uniform tightness across the 2⁶ grid")


# --- the run ------------------------------------------------------------------------------


def _summary(values) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    return {"min": float(np.min(values)), "median": float(np.median(values)),
            "max": float(np.max(values)), "spread": float(np.max(values) - np.min(values))}


@experiment("generalization_measures", "Jiang et al. measures on a 2^6 grid of digits MLPs: "
            "Kendall tau, granulated Psi, PAC-Bayes tightness gaps.")
def run(config: RunConfig, settings: GeneralizationSettings) -> dict[str, Any]:
    """Train the grid, measure, bound and correlate; the metrics."""
    started = time.perf_counter()
    data = load_data(settings, config.seed)
    m = len(data.y_train_clean)
    grid = settings.grid()
    print(f"generalization measures: {len(grid)} MLPs on digits ({m} train / "
          f"{len(data.y_test_clean)} test), {settings.steps} SGD steps each")

    # 1. Train the grid.
    models, rows = train_grid(settings, data, config.seed)
    train_seconds = time.perf_counter() - started

    # 2. Measures, accuracies, Gibbs test errors.
    x_train, x_test = jnp.asarray(data.x_train), jnp.asarray(data.x_test)
    gibbs = {}
    measure_started = time.perf_counter()
    base_key = jax.random.PRNGKey(config.seed + 1)
    for row in progress(rows, desc="measures"):
        model = models[(row["width"], row["depth"])]
        y_train, y_test = (jnp.asarray(a) for a in data.noisy[row["label_noise"]])
        key = jax.random.fold_in(base_key, row["index"])
        result = M.generalization_measures(
            row["params"], row["init"], model.apply, (x_train, y_train),
            key=jax.random.fold_in(key, 0), num_train=m, power_iters=settings.power_iters,
            search_depth=settings.search_depth, mc_samples=settings.mc_samples,
            magnitude_eps=settings.magnitude_eps)
        row["measures"] = {k: float(v) for k, v in result["normalized"].items()}
        row["raw_measures"] = {k: float(v) for k, v in result["measures"].items()}
        row["diagnostics"] = {k: np.asarray(v).tolist() for k, v in
                              result["diagnostics"].items()}
        row["train_accuracy"] = float(result["diagnostics"]["train_accuracy"])
        row["test_accuracy"] = digits.accuracy(model, row["params"], x_test, y_test)
        row["clean_test_accuracy"] = digits.accuracy(model, row["params"], x_test,
                                              jnp.asarray(data.y_test_clean))
        row["gap"] = row["train_accuracy"] - row["test_accuracy"]
        row["train_error"] = 1 - row["train_accuracy"]
        row["test_error"] = 1 - row["test_accuracy"]
        arch = (row["width"], row["depth"])
        if arch not in gibbs:
            gibbs[arch] = jax.jit(lambda p, yy, k, s, s_mag, model=model: jnp.stack([
                M.perturbed_accuracy(p, model.apply, x_test, yy, s, key=k,
                                     num_samples=settings.gibbs_test_samples),
                M.perturbed_accuracy(p, model.apply, x_test, yy, s_mag,
                                     key=jax.random.fold_in(k, 1),
                                     num_samples=settings.gibbs_test_samples,
                                     magnitude_eps=settings.magnitude_eps)]))
        diag = result["diagnostics"]
        gibbs_acc = gibbs[arch](row["params"], y_test, jax.random.fold_in(key, 1),
                                 diag["pacbayes_sigma"], diag["pacbayes_mag_sigma"])
        row["gibbs_test_error"] = {"isotropic": 1 - float(gibbs_acc[0]),
                                   "magnitude": 1 - float(gibbs_acc[1])}
        row["gibbs_train_error"] = {
            "isotropic": 1 - float(diag["pacbayes_perturbed_accuracy"]),
            "magnitude": 1 - float(diag["pacbayes_mag_perturbed_accuracy"])}
    measure_seconds = time.perf_counter() - measure_started

    # 3. PAC-Bayes risk bounds and their tightness gaps.
    prior_variances = 2.0 ** np.linspace(*settings.prior_variance_log2,
                                         settings.prior_variance_points)
    log_sigma_choices = settings.search_depth * math.log(2)  # ≤ 2^depth bisection midpoints
    for name, (posterior, prior) in RISK_BOUNDS.items():
        kls, errors = [], []
        for row in rows:
            theta = _flat(row["params"])
            mean = _flat(row["init"]) if prior == "init" else np.zeros_like(theta)
            if posterior == "isotropic":
                kl = isotropic_kl(theta, mean, row["diagnostics"]["pacbayes_sigma"])
            else:
                kl, _ = magnitude_kl(theta, mean, row["diagnostics"]["pacbayes_mag_sigma"],
                                     settings.magnitude_eps, prior_variances)
            kls.append(kl)
            errors.append(row["gibbs_train_error"][posterior])
        log_choices = log_sigma_choices + (math.log(len(prior_variances))
                                           if posterior == "magnitude" else 0.0)
        bounds = pac_bayes_risk_bounds(np.asarray(kls), np.asarray(errors), m, settings.delta,
                                       log_choices)
        for row, kl, bound in zip(rows, kls, bounds):
            row.setdefault("risk_bounds", {})[name] = {
                "kl": kl, "bound": float(bound),
                "tightness_gap": float(bound) - row["test_error"],
                "gibbs_gap": float(bound) - row["gibbs_test_error"][posterior]}

    # 4. Kendall τ and Ψ.
    gaps = [r["gap"] for r in rows]
    table = []
    for name in M.MEASURE_NAMES:
        tau = kendall([r["measures"][name] for r in rows], gaps)
        gran = granulated_kendall(rows, name)
        table.append({"measure": name, "equation": M.JIANG_EQUATIONS[name], "tau": tau,
                      "psi": gran["psi"], "Psi": gran["Psi"],
                      "jiang_reported": JIANG_REPORTED[name]})
    tightness = {}
    for name in RISK_BOUNDS:
        tight = [r["risk_bounds"][name]["tightness_gap"] for r in rows]
        gibbs_gaps = [r["risk_bounds"][name]["gibbs_gap"] for r in rows]
        bounds = [r["risk_bounds"][name]["bound"] for r in rows]
        tightness[name] = {
            "tightness_gap": _summary(tight),
            "bound": _summary(bounds),
            "kl_over_m": _summary([r["risk_bounds"][name]["kl"] / m for r in rows]),
            # Non-vacuous: below the 1 − 1/K error of guessing uniformly among K classes.
            "non_vacuous": int(np.sum(np.asarray(bounds) < 1 - 1 / data.num_classes)),
            "violations_of_gibbs_test_error": int(np.sum(np.asarray(gibbs_gaps) < 0)),
            "kendall_bound_vs_test_error": kendall(
                [r["risk_bounds"][name]["bound"] for r in rows], [r["test_error"] for r in rows]),
        }

    run_dir = config.run_dir
    plot_kendall(run_dir / "kendall.png", table)
    plot_tightness(run_dir / "tightness.png", rows)
    headers = ["measure", "eq", "tau", *[f"psi_{h}" for h in HPARAMS], "Psi"]
    print()
    print(format_table(headers, [
        [r["measure"], r["equation"] or "-", r["tau"],
         *[("-" if r["psi"][h] is None else r["psi"][h]) for h in HPARAMS],
         "-" if r["Psi"] is None else r["Psi"]] for r in table]))
    print()
    print(format_table(["bound", "gap min", "gap median", "gap max", "bound median",
                        "KL/m median", "non-vacuous", "violations"], [
        [name, t["tightness_gap"]["min"], t["tightness_gap"]["median"],
         t["tightness_gap"]["max"], t["bound"]["median"], t["kl_over_m"]["median"],
         f"{t['non_vacuous']}/{len(rows)}", t["violations_of_gibbs_test_error"]]
        for name, t in tightness.items()]))
    print(f"\ntrain accuracy {_summary([r['train_accuracy'] for r in rows])}")
    print(f"test accuracy  {_summary([r['test_accuracy'] for r in rows])}")
    print(f"gap            {_summary(gaps)}")
    print(f"time: training {train_seconds:.1f} s, measures {measure_seconds:.1f} s")

    model_rows = [{k: v for k, v in r.items() if k not in ("params", "init")} for r in rows]
    return {
        "papers": {
            "jiang2020": "Jiang et al., Fantastic Generalization Measures and Where to Find "
                         "Them, ICLR 2020, arXiv 1912.02178",
            "gastpar2024": "Gastpar et al., Fantastic Generalization Measures are Nowhere to "
                           "be Found, ICLR 2024, arXiv 2309.13658",
        },
        "num_models": len(rows),
        "num_train": m,
        "num_test": len(data.y_test_clean),
        "kendall": table,
        "tightness": tightness,
        "risk_bound_definition": (
            "R(Q) <= kl^-1(gibbs_train_error, (KL(Q||P) + ln(2 sqrt(m)/delta) + ln N)/m); Q the "
            "Gaussian of the flatness search, P centred at w0 (init) or 0 (orig), N the number "
            "of values the data-dependent sigma (2^depth) and prior variance (grid) can take"),
        "models": model_rows,
        "seconds": {"training": train_seconds, "measures": measure_seconds},
        "paper_vs_ours": [paper_row(f"Kendall tau of {r['measure']} (Jiang et al., CIFAR-10)",
                                    JIANG_REPORTED[r["measure"]]["tau"], r["tau"])
                          for r in table],
    }
