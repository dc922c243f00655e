"""The weighted least-squares experiment: settings checks (fast) and one tiny end-to-end
run (slow)."""

from __future__ import annotations

import json

import pytest

from experiments import weighted_least_squares as wls


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="ratios"):
        wls.WLSSettings(ratios=(0.5,))
    with pytest.raises(ValueError, match="methods"):
        wls.WLSSettings(methods=("uniform",))
    with pytest.raises(ValueError, match="delta"):
        wls.WLSSettings(delta=1.5)
    assert wls.sizes(10, 1.5, "dpp_copies") is None and wls.sizes(10, 2.0, "dpp_copies") == 20


@pytest.mark.slow
def test_wls_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import run_experiment

    settings = wls.WLSSettings(dims=(4,), ratios=(1.0, 2.0), targets=("runge", "abs"),
                               draws=4, max_batches=5, quadrature_nodes=50)
    run_experiment("weighted_least_squares", settings=settings, out_dir=tmp_path)
    run_dir = tmp_path / "weighted_least_squares"
    for name in ("error_vs_ratio.png", "stability_vs_ratio.png"):
        assert (run_dir / name).stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    results = payload["metrics"]
    rows = results["table"]
    assert {r["method"] for r in rows} == set(wls.METHODS)
    for row in rows:
        assert 0 <= row["stability_rate"] <= 1
        assert row["error_ratio"] >= 1 - 1e-9  # never better than the best approximation
    rep = [r for r in rows if r["method"] == "repeated"]
    assert all(1 <= r["n_over_m"] <= 5 for r in rep)
