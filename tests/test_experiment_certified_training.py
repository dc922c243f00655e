"""The certified-training experiment: model helpers (fast) and a tiny end-to-end run (slow)."""

from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import certified_training as ct
from experiments import digits
from experiments._runner import run_experiment


def test_model_matrices_and_stages_match_the_network():
    for model in (ct.MLP(8), ct.CNN((2, 3), 5)):
        params = model.init(jax.random.key(0))
        x = jax.random.uniform(jax.random.key(1), (2, *model.input_shape))
        logits = ct._logits_batch(model)(params, x)
        v = x[0]
        for stage in model.stages(params):
            v = stage(v)
        np.testing.assert_allclose(v, logits[0], rtol=1e-5, atol=1e-6)
        # matrices are the bias-free linear maps: the chain with zero biases matches
        zero = jax.tree.map(lambda a: a if a.ndim > 1 else jnp.zeros_like(a), params)
        h = x[0].reshape(-1)
        mats = model.matrices(zero)
        for k, m in enumerate(mats):
            h = m @ h
            if k < len(mats) - 1:
                h = jax.nn.relu(h)
        np.testing.assert_allclose(h, ct._logits_batch(model)(zero, x)[0], rtol=1e-4,
                                   atol=1e-5)


def test_digits_are_scaled_to_unit_interval():
    d = digits.stratified_split(0.3, 0)
    x_train, x_test, y_train, y_test = d.x_train, d.x_test, d.y_train, d.y_test
    assert x_train.shape[1] == 64 and x_train.min() >= 0 and x_train.max() <= 1
    assert len(x_test) == len(y_test) and set(np.unique(y_train)) == set(range(10))


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path: pathlib.Path):
    settings = ct.CertifiedSettings(
        steps=12, warmup_steps=2, ramp_steps=5, mlp_width=8, methods=("standard", "ibp"),
        archs=("mlp",), n_crown=4, n_tight=4, n_local=3, widths=(4,), width_steps=6)
    run_experiment("certified_training", settings=settings, out_dir=tmp_path)
    run_dir = tmp_path / "certified_training"
    saved = results = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert (run_dir / "tightness_vs_width.png").exists()
    assert (run_dir / "tightness_layers.png").exists()
    for method in ("standard", "ibp"):
        entry = saved["mlp"]["trained"][method]
        assert 0 <= entry["ibp_verified_acc_same_points"] <= entry["crown_verified_acc"] <= 1
        assert entry["ibp_verified_acc"] <= entry["clean_acc"] + 1e-9
        tau = entry["tightness"]["per_layer"]
        assert abs(tau[0] - 1.0) < 1e-9 and all(0 < t <= 1 + 1e-9 for t in tau)
        lip = entry["lipschitz"]
        assert lip["naive_inf"] > 0 and lip["naive_2"] > 0
        if "local_inf_upper_mean" in lip:
            assert lip["local_sound_pairs"]
            assert lip["local_inf_upper_max"] <= lip["naive_inf"] * (1 + 1e-6)
        if "lipsdp_2" in lip:
            assert lip["lipsdp_2"] <= lip["naive_2"] * (1 + 1e-6)
    assert results["width_sweep"][0]["width"] == 4
