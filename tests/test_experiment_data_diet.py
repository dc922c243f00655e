"""The Data Diet experiment: its small helpers (fast) and one end-to-end run on a tiny
configuration (slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import data_diet, digits


def test_top_fraction_keeps_the_highest_scores():
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.3, 0.8])
    np.testing.assert_array_equal(data_diet.top_fraction(scores, 0.5), [1, 3, 5])
    assert len(data_diet.top_fraction(scores, 0.01)) == 1


def test_index_stream_visits_every_kept_example_each_epoch():
    subset = np.array([2, 5, 7, 11, 13])
    stream = digits.index_stream(np.random.default_rng(0), subset, steps=4, batch_size=5)
    assert stream.shape == (4, 5)
    for epoch in stream:  # here one batch is one epoch
        np.testing.assert_array_equal(np.sort(epoch), subset)


def test_verdict_uses_a_two_standard_error_band():
    full = data_diet.summarize([0.97, 0.98, 0.975])
    table = [{"method": "el2n", "fraction": 0.5, **data_diet.summarize([0.976, 0.974, 0.978])},
             {"method": "random", "fraction": 0.5, **data_diet.summarize([0.90, 0.91, 0.92])}]
    verdict = data_diet.make_verdict(table, full, (0.5,), 500)
    assert verdict["paper_claim_holds_at_half"] is True
    assert verdict["el2n_better_than_random_at"] == [0.5]
    assert verdict["smallest_fraction_without_loss"] == 0.5
    table[0].update(data_diet.summarize([0.80, 0.81, 0.82]))
    verdict = data_diet.make_verdict(table, full, (0.5,), 500)
    assert verdict["paper_claim_holds_at_half"] is False
    assert verdict["el2n_worse_than_random_at"] == [0.5]


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="fractions"):
        data_diet.DataDietSettings(fractions=(0.5, 1.5))
    with pytest.raises(ValueError, match="methods"):
        data_diet.DataDietSettings(methods=("random",))
    with pytest.raises(ValueError, match="train_seeds"):
        data_diet.DataDietSettings(train_seeds=0)


@pytest.mark.slow
def test_data_diet_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments._runner import run_experiment

    settings = data_diet.DataDietSettings(hidden=16, learning_rate=1e-2, train_steps=60,
                                          score_epochs=1,
                                          score_seeds=2, train_seeds=2, fractions=(0.5, 0.9))
    run_experiment("data_diet", settings=settings, out_dir=tmp_path, seed=0)

    run_dir = tmp_path / "data_diet"
    assert (run_dir / "accuracy_vs_fraction.png").stat().st_size > 0
    assert (run_dir / "scores.png").stat().st_size > 0
    payload = json.loads((run_dir / "results.json").read_text())
    assert payload["config"]["settings"]["train_seeds"] == 2
    results = payload["metrics"]
    assert results["data"]["train_examples"] + results["data"]["test_examples"] == 1797
    table = results["table"]
    assert {(r["method"], r["fraction"]) for r in table} == {
        (m, f) for m in ("el2n", "grand", "random") for f in (0.5, 0.9)}
    for row in table:
        assert len(row["accuracies"]) == 2
        assert 0.0 <= row["mean"] <= 1.0 and row["std"] >= 0.0
        assert row["kept"] == round(row["fraction"] * results["data"]["train_examples"])
    assert results["full_data"]["mean"] > 0.5  # even 60 steps learn digits
    verdict = results["verdict"]
    assert isinstance(verdict["paper_claim_holds_at_half"], bool)
    assert verdict["text"] and "50%" in verdict["text"][0]
    assert results["scores"]["summary"]["el2n"]["max"] <= np.sqrt(2) + 1e-6
    assert payload["paper_vs_ours"][0]["paper"] == 0.5
