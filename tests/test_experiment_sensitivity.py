"""The ℓp sensitivity-sampling experiment: helpers (fast) and a tiny end-to-end run (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import sensitivity_sampling as exp


def test_needed_sizes_picks_the_first_size_below_each_target():
    rows = [{"method": "lewis", "m": m, "distortion": {"median": d}}
            for m, d in ((10, 0.9), (20, 0.4), (40, 0.2))]
    assert exp.needed_sizes(rows, (0.5, 0.3, 0.1)) == {"lewis": {"0.5": 20, "0.3": 40,
                                                                 "0.1": None}}


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="methods"):
        exp.SensitivitySamplingSettings(methods=("random",))
    with pytest.raises(ValueError, match="ps"):
        exp.SensitivitySamplingSettings(ps=(0.5,))
    with pytest.raises(ValueError, match="trials"):
        exp.SensitivitySamplingSettings(trials=0)


@pytest.mark.slow
def test_sensitivity_sampling_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import run_experiment

    settings = exp.SensitivitySamplingSettings(
        n_structured=60, d_structured=3, heavy_rows=2, ps=(3.0,), sample_sizes=(10, 40),
        trials=2, num_starts=2, num_steps=10, irls_iters=20, diabetes_rows=100)
    run_experiment("sensitivity_sampling", settings=settings, out_dir=tmp_path, seed=0)
    run_dir = tmp_path / "sensitivity_sampling"
    for name in ("structured", "diabetes"):
        assert (run_dir / f"distortion_{name}.png").stat().st_size > 0
        assert (run_dir / f"regression_{name}.png").stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    results = payload["metrics"]
    assert payload["config"]["settings"]["trials"] == 2
    diabetes = results["datasets"]["diabetes"]
    assert diabetes["n"] == 100 and diabetes["d"] == 11
    for entry in results["datasets"].values():
        total = entry["total_sensitivity"]
        rank = total["3"]["rank"]
        assert total["3"]["lower"] <= total["3"]["upper"] <= rank ** 1.5 + 1e-6
        assert not total["3"]["exact"]
        methods = {r["method"] for r in entry["table"]}
        assert methods == set(exp.METHODS)
        for row in entry["table"]:
            assert len(row["distortions"]) == 2 and np.all(np.array(row["distortions"]) >= 0)
            assert all(e >= 0 for e in row["excesses"])
        assert set(entry["needed_sizes"]) == {"3"}
    assert payload["seconds"] > 0
