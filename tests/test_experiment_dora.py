"""The DoRA experiment: char-model data helpers (fast), the CLI registry (fast), and one
end-to-end run on a tiny configuration (slow)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments import char_model
from experiments.__main__ import main


@pytest.fixture(scope="module")
def corpus() -> str:
    return char_model.load_corpus()


@pytest.fixture(scope="module")
def vocab(corpus) -> char_model.CharVocab:
    return char_model.CharVocab.from_text(corpus)


def test_split_plays_finds_the_nine_plays(corpus):
    plays = char_model.split_plays(corpus)
    assert len(plays) == 9
    assert plays[0].title == "ALL'S WELL THAT ENDS WELL"
    assert plays[6].title == "HAMLET, PRINCE OF DENMARK"
    assert plays[-1].title == "KING HENRY IV, SECOND PART"
    for play in plays:
        assert play.text.startswith(play.title)
        assert len(play.text) > 50_000
        assert play.text.count("by William Shakespeare") == 1
    offsets = [corpus.index(play.text.strip()) for play in plays]
    assert offsets == sorted(offsets)


def test_split_plays_rejects_text_without_author_lines():
    with pytest.raises(ValueError, match="by William Shakespeare"):
        char_model.split_plays("just some text\n")


def test_vocab_round_trips(corpus, vocab):
    sample = corpus[100_000:102_000]
    ids = vocab.encode(sample)
    assert ids.dtype == np.int32 and ids.shape == (len(sample),)
    assert ids.min() >= 0 and ids.max() < vocab.size
    assert vocab.decode(ids) == sample
    assert vocab.chars == tuple(sorted(set(corpus)))


def test_vocab_rejects_unknown_characters(vocab):
    with pytest.raises(ValueError, match="outside the vocabulary"):
        vocab.encode("hello \u263a")


def test_batches_have_the_right_shapes(vocab):
    tokens = vocab.encode("To be, or not to be, that is the question. " * 20)
    inputs, targets = char_model.sample_batch(np.random.default_rng(0), tokens, 5, 16)
    assert inputs.shape == targets.shape == (5, 16)
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    batches = char_model.eval_batches(tokens, 4, 16, max_batches=100)
    assert len(batches) == (len(tokens) - 1) // 16 // 4
    assert all(x.shape == y.shape == (4, 16) for x, y in batches)


def test_split_tokens_keeps_the_tail_for_validation():
    train, val = char_model.split_tokens(np.arange(100), 0.1)
    np.testing.assert_array_equal(train, np.arange(90))
    np.testing.assert_array_equal(val, np.arange(90, 100))


def test_model_logits_shape_and_dense_names(vocab):
    config = char_model.CharModelConfig(vocab.size, d_model=16, num_layers=2, num_heads=2,
                                        context=8)
    model = char_model.CharTransformer(config)
    params = jax.jit(char_model.init_params, static_argnums=0)(model, jax.random.PRNGKey(0))
    logits = jax.jit(model.apply)(params, np.zeros((3, 8), np.int32))
    assert logits.shape == (3, 8, vocab.size)
    from jaxbounds.adapters.dora import to_dora_params

    dora_params = to_dora_params(params, rank=2, alpha=4.0, key=jax.random.PRNGKey(1),
                                 include=char_model.BLOCK_DENSE_PATTERN)
    adapted = [
        "/".join(str(k.key) for k in path[:-1])
        for path, _ in jax.tree_util.tree_flatten_with_path(dora_params)[0]
        if path[-1].key == "lora_a"
    ]
    expected = {
        f"params/block_{i}/{name}"
        for i in range(2)
        for name in ("attn/query", "attn/key", "attn/value", "attn/out", "mlp/fc_in", "mlp/fc_out")
    }
    assert set(adapted) == expected  # not the embeddings, the norms or the LM head


def test_cli_unknown_experiment_exits_2_and_lists(capsys):
    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err
    assert "nosuch" in err and "dora" in err and "quickstart" in err


def test_cli_list_prints_the_experiments():
    # A subprocess: ``print_list(stream=sys.stdout)`` binds stdout at import time, out of
    # capsys's reach.
    repo = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "experiments", "list"], cwd=repo,
                          capture_output=True, text=True, timeout=120, check=True)
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert "dora" in lines and "quickstart" in lines and "limit" in lines
    assert "Lipschitz" in lines["quickstart"] and "DoRA" not in lines["quickstart"]
    assert "hyperattention" in lines and "gpu_check" in lines  # the benchmarks


def test_cli_settings_flags_override_the_defaults(monkeypatch):
    import experiments.__main__ as cli

    seen = {}
    monkeypatch.setattr(cli, "run_experiment", lambda name, **kw: seen.update(kw, name=name))
    assert main(["dora", "--pretrain-steps", "7", "--include", "x", "--out", "o"]) == 0
    assert seen["name"] == "dora" and seen["out_dir"] == "o"
    assert seen["settings"].pretrain_steps == 7 and seen["settings"].include == "x"
    assert seen["settings"].d_model == 128
    assert main(["dora", "--full", "--rank", "4"]) == 0
    assert seen["settings"].pretrain_steps == 5000 and seen["settings"].rank == 4


@pytest.mark.slow
def test_dora_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments import dora
    from experiments._runner import run_experiment

    settings = dora.DoRASettings(d_model=32, num_layers=1, num_heads=2, context=32,
                                 batch_size=16, pretrain_steps=60, adapt_steps=60,
                                 eval_batches=2, eval_every=20)
    run_experiment("dora", settings=settings, out_dir=tmp_path, seed=0)

    payload = json.loads((tmp_path / "dora" / "results.json").read_text())
    assert set(payload) == {"experiment", "config", "metrics", "paper_vs_ours", "environment",
                            "seconds"}
    assert payload["experiment"] == "dora" and payload["config"]["settings"]["rank"] == 8
    assert {"jax", "device", "python"} <= set(payload["environment"])
    assert (tmp_path / "dora" / "losses.png").stat().st_size > 0
    results = payload["metrics"]
    losses = results["losses"]
    assert losses["held_out_after"] < losses["held_out_before"]
    assert abs(losses["held_out_before"] - losses["held_out_base"]) < 1e-4
    assert len(losses["pretrain"]) == 60 and len(losses["adapt"]) == 60
    assert results["frozen_bit_identical"] is True
    assert results["adapters_changed"] is True
    rows = {(r["d_in"], r["d_out"], r["rank"]): r for r in results["norm_memory"]}
    for row in rows.values():
        assert row["factored_bytes"] <= row["bound_bytes"]
    big = rows[(8192, 8192, 384)]
    assert big["dense_bytes"] >= 16 * big["factored_bytes"]
