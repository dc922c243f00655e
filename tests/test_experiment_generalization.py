"""The generalization-measures experiment: label noise, Ψ, risk-bound helpers (fast), and one
end-to-end run on a tiny grid (slow)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments import generalization_measures as G


def test_corrupt_labels_changes_exactly_the_fraction_to_other_classes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500).astype(np.int32)
    noisy = G.corrupt_labels(np.random.default_rng(1), labels, 0.2, 10)
    assert np.sum(noisy != labels) == 100
    assert noisy.min() >= 0 and noisy.max() < 10
    np.testing.assert_array_equal(G.corrupt_labels(rng, labels, 0.0, 10), labels)


def test_granulated_kendall_on_a_hand_made_grid():
    # Two hyperparameters vary (lr, noise); the gap follows noise exactly, the measure follows
    # noise in one lr group and is tied in the other.
    rows = []
    for lr in (0.1, 0.2):
        for noise in (0.0, 0.5):
            row = {h: 0 for h in G.HPARAMS}
            row.update(learning_rate=lr, label_noise=noise, gap=noise + lr / 10)
            row["measures"] = {"m": noise if lr == 0.1 else 1.0}
            rows.append(row)
    result = G.granulated_kendall(rows, "m")
    assert result["psi"]["label_noise"] == pytest.approx(0.5)  # τ = 1 and a tie (0)
    assert result["psi"]["learning_rate"] == pytest.approx(1.0)  # +1 in both noise groups
    assert result["psi"]["width"] is None  # a single value: no group
    assert result["Psi"] == pytest.approx(0.75)


def test_kl_helpers_and_risk_bound():
    theta = np.array([1.0, -2.0, 0.5])
    assert G.isotropic_kl(theta, np.zeros(3), 0.5) == pytest.approx(np.sum(theta**2) / 0.5)
    grid = 2.0 ** np.linspace(-10, 4, 57)
    kl, lam = G.magnitude_kl(theta, np.zeros(3), 0.3, 1e-3, grid)
    s2 = 0.09 * theta**2 + 1e-6
    direct = 0.5 * np.sum(s2 / lam + theta**2 / lam - 1 + np.log(lam / s2))
    assert kl == pytest.approx(direct) and kl >= 0
    bounds = G.pac_bayes_risk_bounds(np.array([0.0, 10.0, 1e4]), np.array([0.1, 0.1, 0.1]),
                                     m=1000, delta=0.05, log_choices=15 * math.log(2))
    assert np.all(np.diff(bounds) > 0) and np.all(bounds > 0.1) and bounds[-1] > 0.99


@pytest.mark.slow
def test_generalization_experiment_end_to_end_on_a_tiny_grid(tmp_path):
    from experiments._runner import run_experiment

    settings = G.GeneralizationSettings(
        widths=(16,), depths=(1,), learning_rates=(0.01, 0.05), weight_decays=(0.0,),
        batch_sizes=(32,), label_noises=(0.0, 0.2), steps=150, search_depth=8, mc_samples=4,
        gibbs_test_samples=4)
    run_experiment("generalization_measures", settings=settings, out_dir=tmp_path, seed=0)
    out = tmp_path / "generalization_measures"
    payload = json.loads((out / "results.json").read_text())
    results = payload["metrics"]
    assert len(payload["paper_vs_ours"]) == len(G.M.MEASURE_NAMES)
    for png in ("kendall.png", "tightness.png"):
        assert (out / png).stat().st_size > 0
    assert results["num_models"] == 4 and len(results["models"]) == 4
    names = [row["measure"] for row in results["kendall"]]
    assert names == list(G.M.MEASURE_NAMES)
    for row in results["kendall"]:
        assert set(row["psi"]) == set(G.HPARAMS)
        assert row["psi"]["width"] is None and row["psi"]["label_noise"] is not None
        assert row["tau"] is None or -1 <= row["tau"] <= 1 or math.isnan(row["tau"])
    for model in results["models"]:
        assert set(model["measures"]) == set(G.M.MEASURE_NAMES)
        assert model["gap"] == pytest.approx(model["train_accuracy"] - model["test_accuracy"])
        for bound in model["risk_bounds"].values():
            assert 0 < bound["bound"] <= 1
            assert bound["tightness_gap"] == pytest.approx(bound["bound"] - model["test_error"])
    assert set(results["tightness"]) == set(G.RISK_BOUNDS)
    for summary in results["tightness"].values():
        gap = summary["tightness_gap"]
        assert gap["min"] <= gap["median"] <= gap["max"]
        assert summary["violations_of_gibbs_test_error"] == 0
