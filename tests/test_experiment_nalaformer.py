"""The NaLaFormer experiment end to end on a tiny configuration (slow), and its models."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import char_model, nalaformer
from experiments._runner import run_experiment


def _model(attention):
    return char_model.CharTransformer(char_model.CharModelConfig(
        40, d_model=16, num_layers=2, num_heads=2, context=8, attention=attention,
        positions=False, rope=attention != "nala"))


def test_the_two_models_differ_only_in_the_attention_layer():
    trees = {}
    for attention in nalaformer.ATTENTIONS:
        model = _model(attention)
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        trees[attention] = {jax.tree_util.keystr(p): x.shape for p, x in flat}
    # both see positions through RoPE inside their attention: no learned position table
    outside = lambda tree: {k: v for k, v in tree.items() if "'attn'" not in k}
    assert outside(trees["nala"]) == outside(trees["softmax"])
    assert not any("pos_embed" in k for tree in trees.values() for k in tree)
    assert any("'qkvg'" in k for k in trees["nala"])
    assert any("'query'" in k for k in trees["softmax"])
    with pytest.raises(ValueError, match="attention must be one of"):
        _model("linear").init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))


@pytest.mark.slow
def test_nalaformer_experiment_end_to_end_on_a_tiny_config(tmp_path):
    settings = nalaformer.NaLaSettings(d_model=16, num_layers=1, num_heads=2, context=32,
                                       batch_size=8, steps=40, warmup=5, eval_every=20,
                                       eval_batches=2)
    run_experiment("nalaformer", settings=settings, out_dir=tmp_path, seed=0)
    out = tmp_path / "nalaformer"
    payload = json.loads((out / "results.json").read_text())
    results = payload["metrics"]
    assert (out / "curves.png").stat().st_size > 0
    for name in ("nala", "softmax"):
        res = results["results"][name]
        assert len(res["train_curve"]) == 40 and len(res["val_curve"]) == 3  # steps 0, 20, 40
        assert np.isfinite(res["val_loss"])
        assert res["val_bpc"] == pytest.approx(res["val_loss"] / np.log(2))
        assert res["train_curve"][-1] < res["train_curve"][0]  # it learns
    paper = {row["quantity"]: row["paper"] for row in payload["paper_vs_ours"]}
    assert paper["ImageNet-1K top-1 (%), NaLaFormer-T"] == 82.6
