"""The Lipschitz-transformer experiment: settings checks (fast) and an end-to-end run on a
tiny configuration (slow)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from experiments import lipschitz_transformer as E
from experiments._runner import run_experiment


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="optimizer"):
        E.TrainSpec(optimizer="sgd")
    with pytest.raises(ValueError, match="constraint"):
        E.TrainSpec(constraint="clip")
    with pytest.raises(ValueError, match="w_max"):
        E.TrainSpec(w_max=0.0)


def test_full_settings_are_the_papers_shakespeare_config():
    full = E.LipschitzSettings.full().main
    assert (full.d_model, full.context, full.num_blocks, full.num_heads) == (256, 256, 3, 4)
    assert (full.muon_lr, full.steps, full.batch_size, full.beta) == (0.1, 2000, 512, 0.9)
    assert (full.constraint, full.w_max) == ("spectral_soft_cap", 6.0)
    assert E.LipschitzSettings.full().sweep_w_max == (2.0, 4.0, 6.0, 8.0)


TINY = E.TrainSpec(d_model=16, num_blocks=1, num_heads=2, context=16, batch_size=8, steps=12,
                   eval_batches=2, eval_every=6)


@pytest.mark.slow
def test_experiment_end_to_end_on_a_tiny_config(tmp_path):
    settings = E.LipschitzSettings(
        main=TINY, sweep_spec=dataclasses.replace(TINY, steps=6, eval_every=100),
        sweep_methods=("none", "spectral_hard_cap"), sweep_optimizers=("muon",),
        sample_chars=20)
    run_experiment("lipschitz_transformer", settings=settings, out_dir=tmp_path, seed=0)
    run_dir = tmp_path / "lipschitz_transformer"
    payload = json.loads((run_dir / "results.json").read_text())
    saved = payload["metrics"]
    assert (run_dir / "accuracy_vs_bound.png").stat().st_size > 0
    assert (run_dir / "training.png").stat().st_size > 0
    main = saved["main"]
    assert 0.0 <= main["val_accuracy"] <= 1.0 and main["lipschitz_bound"] > 0
    product = 1.0
    for value in main["per_layer"].values():
        product *= value
    assert product == pytest.approx(main["lipschitz_bound"], rel=1e-9)
    assert len(main["losses"]) == 12 and len(main["sample"]) == len("ROMEO:\n") + 20
    assert len(saved["sweep"]) == 2
    capped = [r for r in saved["sweep"] if r["constraint"] == "spectral_hard_cap"]
    free = [r for r in saved["sweep"] if r["constraint"] == "none"]
    assert all(r["lipschitz_bound"] > 0 for r in saved["sweep"])
    assert max(r["lipschitz_bound"] for r in capped) < 1e6 and free
    paper = payload["paper_vs_ours"][0]
    assert paper["paper"] == 0.60 and paper["ours"]["val_accuracy"] == main["val_accuracy"]


@pytest.mark.slow
def test_quickstart_experiment_writes_results(tmp_path, capsys):
    from experiments import quickstart

    settings = quickstart.QuickstartSettings(spec=dataclasses.replace(TINY, steps=5))
    summary = run_experiment("quickstart", settings=settings, out_dir=tmp_path)["metrics"]
    assert (tmp_path / "quickstart" / "results.json").exists()
    assert summary["lipschitz_bound"] > 0 and 0 <= summary["val_accuracy"] <= 1
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed and "certified Lipschitz bound" in printed
    assert len(summary["sample"]) == len("ROMEO:\n") + 200
