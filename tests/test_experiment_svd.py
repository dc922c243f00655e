"""The concatenated-SVD clustering experiment: helpers (fast) and one tiny end-to-end run
(slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import svd_clustering


def test_column_blocks_cut_every_kernel():
    kernels = [np.zeros((8, 10)), np.zeros((8, 4))]
    blocks = svd_clustering.column_blocks(kernels, 4)
    assert [b.shape for b in blocks] == [(8, 4), (8, 4), (8, 2), (8, 4)]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="eps_values"):
        svd_clustering.SvdClusteringSettings(eps_values=(0.1, 1.0))
    with pytest.raises(ValueError, match="methods"):
        svd_clustering.SvdClusteringSettings(methods=("kmeans",))
    with pytest.raises(ValueError, match="rank"):
        svd_clustering.SvdClusteringSettings(rank=0)


@pytest.mark.slow
def test_svd_clustering_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import run_experiment

    settings = svd_clustering.SvdClusteringSettings(
        eps_values=(0.1, 0.2), rank=4, rows=12, groups=2, per_group=3, width=4, dim=2,
        hidden_layers=1, train_steps=20, block_width=32, tightness_draws=8,
        tightness_blocks=3, tightness_noise=(0.05,))
    run_experiment("svd_clustering", settings=settings, out_dir=tmp_path, seed=0)
    run_dir = tmp_path / "svd_clustering"
    assert (run_dir / "compression.png").stat().st_size > 0
    assert (run_dir / "tightness.png").stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    results = payload["metrics"]
    table = results["table"]
    assert {(r["dataset"], r["method"], r["eps"]) for r in table} == {
        (d, m, e) for d in ("synthetic", "mlp_weights", "mlp_updates")
        for m in ("maxnorm", "residual", "approximate", "certified") for e in (0.1, 0.2)}
    for row in table:
        assert row["compression_ratio"] > 0 and row["seconds"] >= 0
        if row["method"] != "approximate":
            assert row["violations"] == 0
            assert all(t <= f + 1e-12 for t, f in zip(row["true_errors"], row["figures"]))
    assert results["summary"]["bound_based_violations"] == 0
    for t in results["tightness"]:
        assert t["violations"] == {"weyl": 0, "residual": 0, "certified": 0}
        assert t["weyl_ge_residual_everywhere"]
