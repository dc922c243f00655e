"""Data Diet on digits: EL2N-pruned vs random subsets, test accuracy vs the fraction kept.

``python -m experiments data_diet [--full] [--seed N] [--out DIR]``

Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet" (NeurIPS 2021, arXiv 2107.07075)
score each training example by its EL2N, ``E_w ‖softmax(f_w(x)) − onehot(y)‖₂``, a few epochs
into training and averaged over independent runs, keep the highest-scoring (hardest) examples
and report that half of CIFAR-10 can be pruned with no loss of test accuracy. At our scale:

1. scikit-learn's bundled digits (1797 8×8 images, 10 classes; no download), one fixed
   stratified train/test split; a small MLP (flax linen, optax adam).
2. Scores: train ``score_seeds`` MLPs on the full training set for ``score_epochs`` epochs
   and average their EL2N (:func:`jaxbounds.data.scores.el2n_scores`). GraNd
   (:func:`~jaxbounds.data.scores.grand_scores`) at initialisation, averaged over the same
   seeds, is a third selection rule beside EL2N and random.
3. For each fraction kept, train ``train_seeds`` fresh MLPs for a fixed number of steps on the
   top-scoring subset, and on a random subset of the same size (a new one per seed), and on
   the full training set; report test accuracy mean ± std over the seeds.
4. A verdict computed from the numbers: is accuracy at 50% kept within noise of the full data,
   and does EL2N beat random at each fraction?

All seeds train at once (``vmap`` over seeds, ``lax.scan`` over steps, one compilation).
Writes ``results.json``, ``accuracy_vs_fraction.png`` and ``scores.png`` under
``runs/<name>/``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import digits
from experiments._output import figure, format_table, progress
from experiments._runner import RunConfig, Settings, experiment, paper_row
from jaxbounds.data.scores import el2n_scores, grand_scores

METHODS = ("el2n", "grand", "random")
NAMES = {"el2n": "EL2N", "grand": "GraNd", "random": "random"}
PAPER = {
    "dataset": "CIFAR-10, ResNet-18",
    "claim": "EL2N scores a few epochs into training, averaged over 10 runs: keeping the "
             "50% hardest examples loses no test accuracy (slightly improves it); random "
             "pruning of the same size loses accuracy.",
    "fraction_kept_without_loss": 0.5,
    "reproduction": "Kirsch 2023 (arXiv 2303.14753): EL2N at epoch 20 reproduces; GraNd at "
                    "initialisation does not beat random pruning and tracks the input norm.",
}


@dataclasses.dataclass(frozen=True)
class DataDietSettings(Settings):
    """Everything the experiment can vary. The defaults run in about a minute on a 2-core CPU."""

    hidden: int = 128
    learning_rate: float = 1e-3
    batch_size: int = 64
    train_steps: int = 1500  # per training run, whatever the subset size
    score_epochs: int = 3  # epochs on the full training set before computing EL2N
    score_seeds: int = 5  # runs the scores are averaged over
    train_seeds: int = 5  # training runs per (method, fraction), for the error bars
    fractions: tuple[float, ...] = (0.3, 0.5, 0.7, 0.9)
    methods: tuple[str, ...] = METHODS
    test_fraction: float = 0.3
    split_seed: int = 0  # the fixed train/test split
    grand_batch_size: int = 128

    @classmethod
    def full(cls) -> DataDietSettings:
        """``--full``: more seeds, longer training and a finer sweep of fractions."""
        return cls(train_steps=3000, score_seeds=10, train_seeds=10,
                   fractions=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9))

    def __post_init__(self):
        if "el2n" not in self.methods:
            raise ValueError(f"methods must include 'el2n', got {self.methods!r}.")
        self.check(unit=("fractions",), among={"methods": METHODS},
                   positive=("hidden", "batch_size", "train_steps", "score_epochs",
                             "score_seeds", "train_seeds", "grand_batch_size"))

# --- data and model -----------------------------------------------------------------------


def make_init(model, num_features: int):
    """A jitted ``keys [S] -> params`` stacked over the S seeds (flax's default init).

    Use ``jax.random.key(seed, impl="rbg")`` keys: on CPU, threefry's init compiles about
    five times slower, which dominates a small run.
    """
    dummy = jnp.zeros((1, num_features), jnp.float32)
    return jax.jit(jax.vmap(lambda key: model.init(key, dummy)))


def make_trainer(model, tx: optax.GradientTransformation):
    """A jitted ``(params [S], batch_indices [S, steps, batch], x_train, y_train) -> params``:
    each of the S seeds runs adam from its own init over its own index stream."""

    def train_one(params, indices, x_train, y_train):
        def step(carry, batch):
            params, opt_state = carry
            loss_fn = lambda p: digits.cross_entropy(model.apply(p, x_train[batch]),
                                                     y_train[batch])
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), _ = jax.lax.scan(step, (params, tx.init(params)), indices)
        return params

    return jax.jit(jax.vmap(train_one, in_axes=(0, 0, None, None)))


def make_accuracy(model, in_axes=(0, None)):
    """Jitted accuracy of each seed's params (stacked), on shared x, y (the default) or, with
    ``in_axes=0``, on each seed's own examples (x [S, k, ...], y [S, k])."""

    @jax.jit
    def accuracy(stacked_params, x, y):
        logits = jax.vmap(model.apply, in_axes=in_axes)(stacked_params, x)
        return jnp.mean(jnp.argmax(logits, -1) == y, axis=-1)

    return accuracy


# --- scores and the verdict ---------------------------------------------------------------


def top_fraction(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``round(fraction·n)`` highest scores (hardest examples kept)."""
    keep = max(1, int(round(fraction * len(scores))))
    return np.sort(np.argsort(-scores, kind="stable")[:keep])


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks = lambda v: np.argsort(np.argsort(v)).astype(np.float64)
    return float(np.corrcoef(ranks(a), ranks(b))[0, 1])


def summarize(accuracies) -> dict[str, Any]:
    acc = np.asarray(accuracies, np.float64)
    std = float(acc.std(ddof=1)) if acc.size > 1 else 0.0
    return {"mean": float(acc.mean()), "std": std, "sem": std / np.sqrt(acc.size),
            "accuracies": acc.tolist()}


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a − b with a two-standard-error band: 'higher', 'lower' or 'tie' (within noise)."""
    diff = a["mean"] - b["mean"]
    band = 2.0 * float(np.hypot(a["sem"], b["sem"]))
    outcome = "tie" if abs(diff) <= band else ("higher" if diff > 0 else "lower")
    return {"difference": diff, "two_se": band, "outcome": outcome}


def make_verdict(table: list[dict[str, Any]], full_data: dict[str, Any], fractions,
                 num_test: int) -> dict[str, Any]:
    """Compare EL2N with the full data (is 50% kept within noise?) and every score with random
    at each fraction; a difference counts only beyond two standard errors of the means."""
    rows = {(r["method"], r["fraction"]): r for r in table}
    per_fraction, lines = [], []
    for f in fractions:
        el2n, rand = rows[("el2n", f)], rows.get(("random", f))
        vs_full = compare(el2n, full_data)
        vs_random = compare(el2n, rand) if rand else None
        per_fraction.append({"fraction": f, "el2n_vs_full": vs_full,
                             "el2n_vs_random": vs_random})
    no_loss = [p["fraction"] for p in per_fraction if p["el2n_vs_full"]["outcome"] != "lower"]
    smallest = min(no_loss) if no_loss else None
    half = next((p for p in per_fraction if abs(p["fraction"] - 0.5) < 1e-9), None)
    if half is not None:
        d = half["el2n_vs_full"]
        holds = d["outcome"] != "lower"
        lines.append(
            f"Paper's claim (keep 50% by EL2N, no accuracy loss) at our scale: "
            f"{'HOLDS' if holds else 'DOES NOT HOLD'} — EL2N 50%: "
            f"{rows[('el2n', half['fraction'])]['mean']:.4f} vs full data {full_data['mean']:.4f} "
            f"(difference {d['difference']:+.4f} ≈ {d['difference'] * num_test:+.1f} test "
            f"examples; noise band ±{d['two_se']:.4f}, two standard errors).")
    else:
        holds = None
    lines.append("Smallest fraction kept by EL2N with no significant loss: "
                 f"{smallest if smallest is not None else 'none'}.")
    vs_random: dict[str, dict[str, list[float]]] = {}
    for method in sorted({m for m, _ in rows} - {"random"}, key=METHODS.index):
        if not all(("random", f) in rows for f in fractions):
            break
        outcomes: dict[str, list[float]] = {"higher": [], "lower": [], "tie": []}
        for f in fractions:
            outcomes[compare(rows[(method, f)], rows[("random", f)])["outcome"]].append(f)
        vs_random[method] = outcomes
        lines.append(f"{NAMES[method]} vs random: better at "
                     f"{outcomes['higher'] or 'none'}, worse at {outcomes['lower'] or 'none'}, "
                     f"within noise at {outcomes['tie'] or 'none'} (fractions kept).")
    by_outcome = vs_random.get("el2n", {"higher": [], "lower": [], "tie": []})
    return {"paper_claim_holds_at_half": holds,
            "smallest_fraction_without_loss": smallest,
            "el2n_better_than_random_at": by_outcome["higher"],
            "el2n_worse_than_random_at": by_outcome["lower"],
            "el2n_tied_with_random_at": by_outcome["tie"],
            "vs_random": vs_random,
            "per_fraction": per_fraction,
            "text": lines}


# --- plots --------------------------------------------------------------------------------


def plot_accuracy(path, table, full_data, settings: DataDietSettings) -> None:
    labels = {"el2n": f"EL2N (epoch {settings.score_epochs}, {settings.score_seeds} runs)",
              "grand": f"GraNd (init, {settings.score_seeds} runs)",
              "random": "random subset"}
    with figure(path) as (_, ax):
        for offset, method in zip((-0.004, 0.0, 0.004), settings.methods):
            rows = [r for r in table if r["method"] == method]
            ax.errorbar([r["fraction"] + offset for r in rows], [r["mean"] for r in rows],
                        yerr=[r["std"] for r in rows], marker="o", capsize=3,
                        label=labels[method])
        mean, std = full_data["mean"], full_data["std"]
        ax.axhline(mean, color="k", lw=1, ls="--", label="full training set")
        ax.axhspan(mean - std, mean + std, color="k", alpha=0.1)
        ax.set(xlabel="fraction of the training set kept", ylabel="test accuracy",
               title=f"Data Diet on digits (mean ± std over {settings.train_seeds} seeds)")
        ax.legend(loc="lower right")


def plot_scores(path, scores: dict[str, np.ndarray]) -> None:
    with figure(path, 1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False) as (_, axes):
        for ax, (name, values) in zip(axes[0], scores.items()):
            ax.hist(values, bins=50)
            ax.set(title=f"{name} scores (training set)", xlabel=name, ylabel="examples")


# --- the experiment -----------------------------------------------------------------------


@experiment("data_diet", "Data Diet: EL2N-pruned vs random subsets of digits, accuracy vs "
            "fraction kept.")
def run(config: RunConfig, settings: DataDietSettings) -> dict[str, Any]:
    """Scores, the training runs per (method, fraction) and the verdict; the metrics."""
    data = digits.stratified_split(settings.test_fraction, settings.split_seed)
    n_train = len(data.y_train)
    model = digits.MLP(settings.hidden, 2, data.num_classes)
    tx = optax.adam(settings.learning_rate)
    everything = np.arange(n_train)
    root = jax.random.key(config.seed, impl="rbg")
    score_root, train_root = jax.random.split(root)
    x_train, y_train = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    init, train = make_init(model, data.x_train.shape[1]), make_trainer(model, tx)

    def keys(base, tag, count):
        return jax.random.split(jax.random.fold_in(base, tag), count)

    def rng(*tags):
        return np.random.default_rng([config.seed, *tags])

    print(f"Data Diet on digits: {n_train} train / {len(data.y_test)} test examples, "
          f"MLP 64-{settings.hidden}-{settings.hidden}-{data.num_classes}, adam "
          f"{settings.learning_rate:g}, batch {settings.batch_size}.")

    # 1. Scores: EL2N after a few epochs, GraNd at initialisation, averaged over the runs.
    steps_per_epoch = -(-n_train // settings.batch_size)
    score_steps = settings.score_epochs * steps_per_epoch
    score_streams = np.stack([digits.index_stream(rng(0, s), everything, score_steps,
                                           settings.batch_size)
                              for s in range(settings.score_seeds)])
    score_started = time.perf_counter()
    initial = init(keys(score_root, 0, settings.score_seeds))
    early = train(initial, jnp.asarray(score_streams), x_train, y_train)
    # Both score functions take the stacked params (leading seed axis) as they come.
    scores = {"el2n": np.asarray(el2n_scores(model.apply, early, data.x_train,
                                             data.y_train))}
    if "grand" in settings.methods:
        scores["grand"] = np.asarray(grand_scores(model.apply, initial, data.x_train,
                                                  data.y_train,
                                                  batch_size=settings.grand_batch_size))
    accuracy, fit_accuracy = make_accuracy(model), make_accuracy(model, 0)
    early_train_acc = np.asarray(accuracy(early, data.x_train, data.y_train))
    score_seconds = time.perf_counter() - score_started
    print(f"scores: {settings.score_seeds} runs, EL2N after {settings.score_epochs} epochs "
          f"(train accuracy then {early_train_acc.mean():.3f}), in {score_seconds:.1f} s")

    # 2. Training runs: full data, then each (method, fraction), all seeds at once.
    seeds = settings.train_seeds
    train_init = init(keys(train_root, 0, seeds))

    def train_and_test(subsets: list[np.ndarray], tag: int) -> tuple[list[float], float]:
        streams = np.stack([digits.index_stream(rng(1, tag, s), subsets[s],
                                                settings.train_steps, settings.batch_size)
                            for s in range(seeds)])
        # The same S initialisations for every job (common random numbers).
        params = train(train_init, jnp.asarray(streams), x_train, y_train)
        test_acc = np.asarray(accuracy(params, data.x_test, data.y_test))
        idx = np.stack(subsets)  # every subset of a job has the same size
        train_acc = np.asarray(fit_accuracy(params, data.x_train[idx], data.y_train[idx]))
        return test_acc.tolist(), float(train_acc.mean())

    jobs = [(method, f) for f in settings.fractions for method in settings.methods]
    bar = progress(range(len(jobs) + 1), desc="train (all seeds at once)")
    train_started = time.perf_counter()
    table: list[dict[str, Any]] = []
    for job in bar:
        if job == 0:
            accs, fit = train_and_test([everything] * seeds, tag=0)
            full_data = {**summarize(accs), "train_accuracy": fit, "kept": n_train}
            bar.set_postfix(full=f"{full_data['mean']:.3f}")
            continue
        method, fraction = jobs[job - 1]
        if method == "random":
            keep = max(1, int(round(fraction * n_train)))
            subsets = [np.sort(rng(2, job, s).choice(n_train, keep, replace=False))
                       for s in range(seeds)]
        else:
            subsets = [top_fraction(scores[method], fraction)] * seeds
        accs, fit = train_and_test(subsets, tag=job)
        row = {"method": method, "fraction": fraction, "kept": len(subsets[0]),
               **summarize(accs), "train_accuracy": fit}
        table.append(row)
        bar.set_postfix({f"{method}@{fraction:g}": f"{row['mean']:.3f}"})
    train_seconds = time.perf_counter() - train_started

    verdict = make_verdict(table, full_data, settings.fractions, len(data.y_test))

    headers = ["fraction kept", "examples",
               *[f"{NAMES[m]} acc (mean ± std)" for m in settings.methods]]
    rows = {(r["method"], r["fraction"]): r for r in table}
    body = [[f, rows[(settings.methods[0], f)]["kept"],
             *[f"{rows[(m, f)]['mean']:.4f} ± {rows[(m, f)]['std']:.4f}"
               for m in settings.methods]] for f in settings.fractions]
    body.append([1.0, n_train, *[f"{full_data['mean']:.4f} ± {full_data['std']:.4f}"]
                 * len(settings.methods)])
    print()
    print(f"test accuracy over {seeds} training seeds, {settings.train_steps} steps each:")
    print(format_table(headers, body))
    corr = spearman(scores["el2n"], scores["grand"]) if "grand" in scores else None
    input_norm = np.linalg.norm(data.x_train, axis=1)
    corr_norm = spearman(scores["grand"], input_norm) if "grand" in scores else None
    if corr is not None:
        print(f"Spearman rank correlation: EL2N (epoch {settings.score_epochs}) vs GraNd "
              f"(init) {corr:.3f}; GraNd (init) vs input norm ‖x‖ {corr_norm:.3f}")
    print()
    print("verdict:")
    for line in verdict["text"]:
        print(f"  {line}")
    print(f"\ntime: scores {score_seconds:.1f} s, training {train_seconds:.1f} s")
    plot_accuracy(config.run_dir / "accuracy_vs_fraction.png", table, full_data, settings)
    plot_scores(config.run_dir / "scores.png", scores)
    half = next((r for r in table if r["method"] == "el2n" and r["fraction"] == 0.5), None)
    return {
        "data": {"dataset": "sklearn digits", "train_examples": n_train,
                 "test_examples": len(data.y_test), "features": data.x_train.shape[1],
                 "classes": data.num_classes},
        "scores": {
            "el2n_epoch": settings.score_epochs,
            "score_runs_train_accuracy": early_train_acc.tolist(),
            "summary": {name: {"mean": float(v.mean()), "min": float(v.min()),
                               "median": float(np.median(v)), "max": float(v.max())}
                        for name, v in scores.items()},
            "spearman_el2n_grand": corr,
            "spearman_grand_input_norm": corr_norm,
        },
        "full_data": full_data,
        "table": table,
        "verdict": verdict,
        "seconds": {"scores": score_seconds, "training": train_seconds},
        "paper_vs_ours": [
            paper_row("fraction kept by EL2N without accuracy loss",
                      PAPER["fraction_kept_without_loss"],
                      verdict["smallest_fraction_without_loss"]),
            paper_row("test accuracy at 50% kept by EL2N vs full data",
                      "no loss (CIFAR-10, ResNet-18)",
                      None if half is None else {"el2n_half": half["mean"],
                                                 "full": full_data["mean"]}),
            paper_row("claim", PAPER["claim"], verdict["text"])],
    }
