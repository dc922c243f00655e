"""The LDP sparse-regression experiment: its slope fit and verdict (fast), settings checks
(fast), and one end-to-end run on a tiny configuration (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import ldp_regression as lr


def test_slope_fit_and_verdict_follow_the_numbers():
    n = np.array([1e3, 1e4, 1e5])
    errors = np.stack([3 * n**-0.5 * f for f in (0.9, 1.0, 1.1)])
    summary = lr.slope_summary(n, errors, -0.5, 0.1)
    assert np.isclose(summary["fitted"], -0.5) and summary["matches"]
    bad = lr.slope_summary(n, np.stack([n**-0.2] * 3), -0.5, 0.1)
    assert not bad["matches"]
    slopes = {v: {"n": summary, "epsilon": summary} for v in ("ldp", "ldp_public")}
    assert lr.make_verdict(slopes)["all_match"] is True
    slopes["ldp"]["epsilon"] = bad
    verdict = lr.make_verdict(slopes)
    assert verdict["all_match"] is False and "does NOT match" in " ".join(verdict["text"])


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="k"):
        lr.LDPRegressionSettings(d=3, k=4)
    with pytest.raises(ValueError, match="n_grid"):
        lr.LDPRegressionSettings(n_grid=(30_000, 50_000), chunk=25_000)
    with pytest.raises(ValueError, match="epsilon_ref"):
        lr.LDPRegressionSettings(epsilon_ref=5.0)
    with pytest.raises(ValueError, match="clip_y"):
        lr.LDPRegressionSettings(clip_y=0.0)


@pytest.mark.slow
def test_ldp_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import RunConfig

    settings = lr.LDPRegressionSettings(d=5, k=2, n_grid=(5_000, 10_000, 20_000), chunk=5_000,
                                        epsilons=(4.0, 8.0, 16.0), epsilon_ref=8.0, seeds=2)
    lr.run(RunConfig(name="ldp_regression", out_dir=tmp_path, seed=0), settings=settings)

    run_dir = tmp_path / "ldp_regression"
    assert (run_dir / "error_vs_n_eps.png").stat().st_size > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["config"]["settings"]["seeds"] == 2
    for variant in lr.VARIANTS:
        errors = np.asarray(results["errors"][variant])
        assert errors.shape == (2, 3, 3) and np.all(np.isfinite(errors)) and np.all(errors >= 0)
    assert [r["n"] for r in results["error_vs_n"]] == [5_000, 10_000, 20_000]
    assert [r["epsilon"] for r in results["error_vs_epsilon"]] == [4.0, 8.0, 16.0]
    for row in results["error_vs_n"]:
        assert row["nldp_upper_public"] <= row["nldp_lower"] <= row["nldp_upper"]  # log 5 > 1
    slopes = results["slopes"]
    for variant in ("ldp", "ldp_public"):
        for axis, theory in (("n", -0.5), ("epsilon", -1.0)):
            s = slopes[variant][axis]
            assert s["theory"] == theory and len(s["per_seed"]) == 2
            assert s["matches"] == (abs(s["fitted"] - theory) <= s["allowed_deviation"])
    # more privacy budget, less error: the ε slope is clearly negative even on this tiny run
    assert slopes["ldp_public"]["epsilon"]["fitted"] < -0.5
    verdict = results["verdict"]
    assert isinstance(verdict["all_match"], bool) and len(verdict["text"]) == 5
    assert results["paper"]["slope_vs_n"] == -0.5
    assert results["privacy"]["laplace_scale_times_epsilon"] == 5 * 5 + 2 * 5 * 3.0
