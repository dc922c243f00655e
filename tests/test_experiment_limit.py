"""The LIMIT experiment end to end on a tiny configuration (slow)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_limit_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments import limit
    from experiments._runner import run_experiment

    settings = limit.LimitSettings(dims=(2, 3), max_steps=4000, patience=300,
                                   neighborly_n=12)
    run_experiment("limit", settings=settings, out_dir=tmp_path, seed=0)

    run_dir = tmp_path / "limit"
    assert (run_dir / "critical_n.png").stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    results = payload["metrics"]
    assert payload["config"]["settings"]["dims"] == [2, 3]
    assert results["fit_coefficients"] == [-10.5322, 4.0309, 0.0520, 0.0037]
    assert abs(results["fit_extrapolations"]["512"] - 512_290) < 1
    rows = {row["d"]: row for row in results["critical_n"]}
    assert sorted(rows) == [2, 3]
    for d, row in rows.items():
        # Unit-norm top-2 sets are hull edges: at most n at d = 2, 3n − 6 at d = 3, so no
        # run can beat the exact limits 3 and 4 (the optimiser may fall short of them: it
        # can collapse two documents into one point, a local minimum of InfoNCE).
        assert row["exact_limit"] == d + 1
        critical = row["critical_n"]
        assert 2 <= critical <= d + 1
        assert row["first_failure"] > critical
        assert row["queries_at_critical_n"] == critical * (critical - 1) // 2
        assert row["fit"] == pytest.approx(-10.5322 + 4.0309 * d + 0.0520 * d**2
                                           + 0.0037 * d**3)
        assert row["runs"] and all({"n", "success", "steps", "margin"} <= set(r)
                                   for r in row["runs"])
        successes = {r["n"]: r["success"] for r in row["runs"]}
        assert successes[critical] and not successes[row["first_failure"]]
        assert not any(ok for n, ok in successes.items() if n > d + 1)  # never beats theory
        for r in row["runs"]:
            assert (r["margin"] > 0) == r["success"]
    assert results["neighborly"]["all_top_k_sets_exact"] is True
    assert results["neighborly"]["queries"] == 66
    assert "environment" in payload and payload["seconds"] > 0
