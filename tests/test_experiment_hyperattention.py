"""The HyperAttention patching experiment end to end on a tiny configuration (slow), and
the chunked exact baseline of the benchmark (fast)."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.softmax import softmax_attention


def test_benchmark_chunked_exact_baseline_is_exact():
    from experiments.bench_hyperattention import chunked_exact_attention

    q, k, v = (jax.random.normal(x, (1, 256, 2, 16)) for x in jax.random.split(
        jax.random.PRNGKey(0), 3))
    for causal in (False, True):
        out, lse = jax.jit(lambda q, k, v, c=causal: chunked_exact_attention(
            q, k, v, causal=c, chunk=64))(q, k, v)
        ref, ref_lse = softmax_attention(q, k, v, causal=causal, return_lse=True)
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(lse), np.asarray(ref_lse), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_hyperattention_experiment_end_to_end_on_a_tiny_config(tmp_path):
    from experiments import hyperattention
    from experiments._runner import run_experiment

    settings = hyperattention.HyperSettings(
        d_model=32, num_layers=2, num_heads=2, context=256, batch_size=4, steps=30,
        block_size=32, sample_size=32, min_seq_len=64, eval_batches=2, eval_keys=2)
    run_experiment("hyperattention", settings=settings, out_dir=tmp_path, seed=0)
    payload = json.loads((tmp_path / "hyperattention" / "results.json").read_text())
    saved = results = payload["metrics"]
    assert payload["paper_vs_ours"][0]["paper"] == 5.6
    assert (tmp_path / "hyperattention" / "perplexity.png").stat().st_size > 0
    rows = saved["patched"]
    assert [r["patched_layers"] for r in rows] == [0, 1, 2]
    assert all(np.isfinite(r["perplexity"]) and r["perplexity"] > 1 for r in rows)
    assert rows[0]["perplexity_std_over_keys"] == 0.0
    assert rows[-1]["perplexity"] != rows[0]["perplexity"]  # patching changes the model
    # training did something: below the perplexity of the untrained model
    assert rows[0]["perplexity"] < math.exp(saved["train_losses"][0])
    assert results["perplexity_exact"] == pytest.approx(rows[0]["perplexity"])
    assert len(saved["train_losses"]) == 30
    assert saved["train_losses"][-1] < saved["train_losses"][0]
    assert jnp.isfinite(results["perplexity_all_patched"])
