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
    with pytest.raises(ValueError, match="public_samples"):
        lr.LDPRegressionSettings(public_samples=30_000, chunk=25_000)
    with pytest.raises(ValueError, match="public_samples"):
        lr.LDPRegressionSettings(public_samples=0)
    with pytest.raises(ValueError, match="epsilon_seeds"):
        lr.LDPRegressionSettings(seeds=3, epsilon_seeds=4)


def test_estimate_errors_uses_the_public_sample_size_and_a_noise_free_public_curve():
    settings = lr.LDPRegressionSettings(d=3, k=1, n_grid=(10, 20), chunk=10,
                                        epsilons=(1.0, 2.0), epsilon_ref=1.0, seeds=2,
                                        epsilon_seeds=2)
    beta = np.array([1.0, 0.0, 0.0])
    eye = np.eye(3)
    n, m = 20, 10
    sums = {"ldp_mat": np.stack([n * eye] * 2), "ldp_vec": np.stack([n * beta] * 2),
            "public_vec": np.stack([n * (beta + [0.0, 0.1, 0.0]), n * (beta + [0.3, 0, 0])]),
            "clean_mat": n * eye, "clean_vec": n * (beta + [0.0, 0.0, 0.2]),
            "public_mat": m * 2 * eye}  # the m public x's have covariance 2I
    errors = lr.estimate_errors(sums, n, beta, settings, public_n=m)
    assert set(errors) == set(lr.VARIANTS)
    np.testing.assert_allclose(errors["ldp"], 0, atol=1e-12)
    np.testing.assert_allclose(errors["non_private"], 0, atol=1e-12)  # H_1 drops the 0.2
    # with Σ̂ = 2I the public estimate is H_1(ĉ/2): 0.5 and 0.65 against β₁ = 1
    np.testing.assert_allclose(errors["ldp_public"], [0.5, 0.35], atol=1e-9)
    np.testing.assert_allclose(errors["public_no_noise"], [0.5, 0.5], atol=1e-9)
    # the default public sample size is n: Σ̂ = I, the noise-free public curve is exact
    errors_n = lr.estimate_errors({**sums, "public_mat": n * eye}, n, beta, settings)
    np.testing.assert_allclose(errors_n["public_no_noise"], 0, atol=1e-12)


@pytest.mark.slow
def test_ldp_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import run_experiment

    settings = lr.LDPRegressionSettings(d=5, k=2, n_grid=(5_000, 10_000, 20_000), chunk=5_000,
                                        epsilons=(4.0, 8.0, 16.0), epsilon_ref=8.0, seeds=3,
                                        epsilon_seeds=2)
    run_experiment("ldp_regression", settings=settings, out_dir=tmp_path, seed=0)

    run_dir = tmp_path / "ldp_regression"
    assert (run_dir / "error_vs_n_eps.png").stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    results = payload["metrics"]
    assert payload["config"]["settings"]["seeds"] == 3
    for variant in lr.VARIANTS:
        errors_n = np.asarray(results["errors_vs_n"][variant])
        errors_eps = np.asarray(results["errors_vs_epsilon"][variant])
        assert errors_n.shape == (3, 3) and errors_eps.shape == (2, 3)
        for errors in (errors_n, errors_eps):
            assert np.all(np.isfinite(errors)) and np.all(errors >= 0)
        # the ε sweep's seeds are the n sweep's first seeds: same error at (n_max, ε_ref)
        np.testing.assert_allclose(errors_eps[:, 1], errors_n[:2, -1], rtol=1e-9, atol=1e-12)
    assert set(results["noise_free_slopes_vs_n"]) == {"non_private", "public_no_noise"}
    assert [r["n"] for r in results["error_vs_n"]] == [5_000, 10_000, 20_000]
    assert [r["epsilon"] for r in results["error_vs_epsilon"]] == [4.0, 8.0, 16.0]
    for row in results["error_vs_n"]:
        assert row["nldp_upper_public"] <= row["nldp_lower"] <= row["nldp_upper"]  # log 5 > 1
    slopes = results["slopes"]
    for variant in ("ldp", "ldp_public"):
        for axis, theory in (("n", -0.5), ("epsilon", -1.0)):
            s = slopes[variant][axis]
            assert s["theory"] == theory and len(s["per_seed"]) == {"n": 3, "epsilon": 2}[axis]
            assert s["matches"] == (abs(s["fitted"] - theory) <= s["allowed_deviation"])
    # more privacy budget, less error: the ε slope is clearly negative even on this tiny run
    assert slopes["ldp_public"]["epsilon"]["fitted"] < -0.5
    verdict = results["verdict"]
    assert isinstance(verdict["all_match"], bool) and len(verdict["text"]) == 5
    assert payload["paper_vs_ours"][0]["paper"] == -0.5
    assert results["privacy"]["laplace_scale_times_epsilon"] == 5 * 5 + 2 * 5 * 3.0


@pytest.mark.slow
def test_a_fixed_public_sample_only_changes_the_public_covariance():
    import jax

    base = dict(d=4, k=1, n_grid=(2_000, 4_000), chunk=2_000, epsilons=(4.0, 8.0),
                epsilon_ref=8.0, seeds=1, epsilon_seeds=1)
    with jax.enable_x64(True):
        grow, _, _ = lr.simulate(lr.LDPRegressionSettings(**base), seed=0)
        fixed, _, _ = lr.simulate(lr.LDPRegressionSettings(**base, public_samples=2_000), seed=0)
    for variant in ("ldp", "non_private"):
        np.testing.assert_array_equal(grow[variant], fixed[variant])
    for variant in ("ldp_public", "public_no_noise"):
        np.testing.assert_array_equal(grow[variant][:, 0], fixed[variant][:, 0])  # n = m
        assert np.all(grow[variant][:, 1] != fixed[variant][:, 1])  # n = 2m: Σ̂ from m only
