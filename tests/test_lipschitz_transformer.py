"""LipschitzMLP / LipschitzTransformer: architecture as in Newhouse et al. (arXiv 2507.13338),
checked against an independent NumPy forward pass, plus constants, init and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from jaxbounds.lipschitz import transformer as T

TINY = dict(vocab_size=11, d_model=16, num_blocks=2, num_heads=2, context=8)


def _init(cfg, seed=0):
    model = T.LipschitzTransformer(cfg)
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, cfg.context), jnp.int32))
    return model, params


# --- GeLU constants -------------------------------------------------------------------------


def test_gelu_max_slope_constants_are_the_true_maxima_rounded_up():
    x = math.sqrt(2.0)
    phi = math.exp(-1.0) / math.sqrt(2 * math.pi)
    closed_form = 0.5 * (1 + math.erf(1.0)) + x * phi  # Φ(√2) + √2 φ(√2)
    assert T.GELU_MAX_SLOPE[False] == pytest.approx(closed_form, abs=1e-15)
    with jax.enable_x64(True):
        grid = jnp.concatenate([jnp.linspace(-8.0, 8.0, 1601, dtype=jnp.float64),
                                jnp.linspace(1.3, 1.55, 50_001, dtype=jnp.float64)])
        for approximate in (False, True):
            slope = jax.vmap(jax.grad(lambda t, a=approximate: jax.nn.gelu(t, approximate=a)))
            peak = float(jnp.max(slope(grid)))
            assert peak <= T.GELU_MAX_SLOPE[approximate] + 1e-12
            assert peak >= T.GELU_MAX_SLOPE[approximate] - 1e-9
            divisor = T.GELU_DIVISOR[approximate]
            assert divisor >= T.GELU_MAX_SLOPE[approximate]
            assert divisor * 1e6 == round(divisor * 1e6)
            assert divisor - T.GELU_MAX_SLOPE[approximate] < 1e-6
            # the paper's 1.1289 is below both maxima: its GeLU is not 1-Lipschitz
            assert T.GELU_MAX_SLOPE[approximate] > 1.1289
            assert float(jnp.max(slope(grid))) / divisor <= 1.0
    assert T.GELU_DIVISOR == {False: 1.128905, True: 1.128994}


def test_lipschitz_gelu_matches_scipy_erf_form():
    x = np.linspace(-5, 5, 101)
    expected = 0.5 * x * (1 + erf(x / np.sqrt(2))) / 1.128905
    got = np.asarray(T.lipschitz_gelu(jnp.asarray(x, jnp.float32), approximate=False))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# --- init inside the constraint set ---------------------------------------------------------


def _rms_norm_np(kernel) -> float:
    fan_in, fan_out = kernel.shape
    return math.sqrt(fan_in / fan_out) * np.linalg.svd(np.asarray(kernel, np.float64),
                                                       compute_uv=False)[0]


@pytest.mark.parametrize("init_norm", [0.5, 1.0])
def test_weights_start_inside_the_constraint_set(init_norm):
    cfg = T.LipschitzTransformerConfig(**TINY, init_norm=init_norm, zero_init=True)
    _, params = _init(cfg)
    p = params["params"]
    for i in range(cfg.num_blocks):
        for name in ("query", "key", "value"):
            k = np.asarray(p[f"blocks_{i}"]["attn"][name]["kernel"], np.float64)
            s = np.linalg.svd(k, compute_uv=False)  # all singular values equal
            np.testing.assert_allclose(s, init_norm, rtol=1e-5)
        assert not np.any(np.asarray(p[f"blocks_{i}"]["attn"]["out"]["kernel"]))
        assert not np.any(np.asarray(p[f"blocks_{i}"]["mlp"]["fc_out"]["kernel"]))
        assert _rms_norm_np(p[f"blocks_{i}"]["mlp"]["fc_in"]["kernel"]) == pytest.approx(
            init_norm, rel=1e-5)
    assert _rms_norm_np(p["unembed"]["kernel"]) == pytest.approx(init_norm, rel=1e-5)
    rms = np.sqrt(np.mean(np.asarray(p["embedding"]) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-5)


def test_mlp_init_and_shapes():
    cfg = T.LipschitzMLPConfig(in_features=6, features=(9, 4), activation="gelu",
                               init_norm=0.7, final_scale=2.0)
    model = T.LipschitzMLP(cfg)
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((6,)))
    kernels = params["params"]
    assert kernels["dense_0"]["kernel"].shape == (6, 9)
    assert kernels["dense_1"]["kernel"].shape == (9, 4)
    for layer in kernels.values():
        assert _rms_norm_np(layer["kernel"]) == pytest.approx(0.7, rel=1e-5)
    x = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
    w0, w1 = (np.asarray(kernels[f"dense_{i}"]["kernel"], np.float64) for i in range(2))
    h = np.asarray(x, np.float64) @ w0
    h = 0.5 * h * (1 + erf(h / np.sqrt(2))) / 1.128905
    np.testing.assert_allclose(np.asarray(model.apply(params, x)), 2.0 * h @ w1, rtol=1e-4,
                               atol=1e-5)


# --- the forward pass against an independent NumPy implementation ---------------------------


def _np_rope(x, base=10000.0):
    """x [seq, heads, d]: rotate-half RoPE, pair j with j + d/2 at angle pos·base^(−2j/d)."""
    seq, _, d = x.shape
    half = d // 2
    freq = base ** (-2.0 * np.arange(half) / d)
    ang = np.arange(seq)[:, None] * freq[None, :]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _np_forward(p, cfg, ids):
    """The paper's architecture written out in NumPy, float64, one sequence."""
    from math import tanh

    alpha = 1.0 / (2 * cfg.num_blocks)
    x = np.asarray(p["embedding"], np.float64)[ids]
    seq, d, heads = len(ids), cfg.d_model, cfg.num_heads
    hd = d // heads
    c = 1.128994
    gelu = np.vectorize(lambda t: 0.5 * t * (1 + tanh(math.sqrt(2 / math.pi)
                                                       * (t + 0.044715 * t**3))))
    for i in range(cfg.num_blocks):
        blk = {k: {n: np.asarray(v["kernel"], np.float64) for n, v in sub.items()}
               for k, sub in p[f"blocks_{i}"].items()}
        a = blk["attn"]
        q = _np_rope((x @ a["query"]).reshape(seq, heads, hd))
        k = _np_rope((x @ a["key"]).reshape(seq, heads, hd))
        v = (x @ a["value"]).reshape(seq, heads, hd)
        logits = np.einsum("qhd,khd->hqk", q, k) / hd  # 1/d, not 1/sqrt(d)
        logits = np.where(np.tril(np.ones((seq, seq), bool))[None], logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", w, v).reshape(seq, d) / 3.0
        x = (1 - alpha) * x + alpha * (o @ a["out"])
        m = blk["mlp"]
        x = (1 - alpha) * x + alpha * (gelu(x @ m["fc_in"]) / c @ m["fc_out"])
    return x @ np.asarray(p["unembed"]["kernel"], np.float64)


def test_forward_matches_independent_numpy_architecture():
    cfg = T.LipschitzTransformerConfig(**TINY, zero_init=False, init_norm=1.5)
    model, params = _init(cfg, seed=3)
    ids = np.array([[1, 5, 2, 9, 0, 3, 3, 7]], np.int32)
    expected = _np_forward(params["params"], cfg, ids[0])
    got = np.asarray(model.apply(params, jnp.asarray(ids)))[0]
    np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-5)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        got64 = np.asarray(model.apply(p64, jnp.asarray(ids)))[0]
        assert got64.dtype == np.float64
    np.testing.assert_allclose(got64, expected, rtol=1e-10, atol=1e-12)


def test_causal_and_from_embeddings_agree():
    cfg = T.LipschitzTransformerConfig(**TINY, zero_init=False)
    model, params = _init(cfg)
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 8), 0, cfg.vocab_size)
    logits = model.apply(params, ids)
    emb = model.apply(params, ids, method=model.embed)
    np.testing.assert_allclose(model.apply(params, emb, method=model.from_embeddings), logits,
                               rtol=1e-6, atol=1e-6)
    changed = ids.at[:, 5].set((ids[:, 5] + 1) % cfg.vocab_size)
    logits2 = model.apply(params, changed)
    np.testing.assert_allclose(logits2[:, :5], logits[:, :5], rtol=1e-6, atol=1e-6)
    assert not np.allclose(logits2[:, 5:], logits[:, 5:])


def test_residual_share_counts_transformer_blocks():
    # α = residual_scale / (2N), N = number of (attention + MLP) blocks, as the reference.
    assert T.LipschitzTransformerConfig(**TINY).alpha == pytest.approx(0.25)
    cfg = T.LipschitzTransformerConfig(**{**TINY, "num_blocks": 3}, residual_scale=1.5)
    assert cfg.alpha == pytest.approx(0.25)


def test_labels_and_embedding_projection():
    cfg = T.LipschitzTransformerConfig(**TINY)
    _, params = _init(cfg)
    labels = T.constraint_labels(params)
    flat = {"/".join(str(k.key) for k in path): lab
            for path, lab in jax.tree_util.tree_flatten_with_path(labels)[0]}
    assert flat["params/embedding"] == "embedding"
    assert flat["params/unembed/kernel"] == "spectral"
    assert sum(lab == "spectral" for lab in flat.values()) == 6 * cfg.num_blocks + 1
    grown = jax.tree_util.tree_map(lambda a: 3.0 * a, params)
    projected = T.project_embedding(grown, max_rms=1.0)
    rms = np.sqrt(np.mean(np.asarray(projected["params"]["embedding"]) ** 2, axis=-1))
    np.testing.assert_allclose(rms, 1.0, rtol=1e-5)
    np.testing.assert_array_equal(projected["params"]["unembed"]["kernel"],
                                  grown["params"]["unembed"]["kernel"])


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(d_model=15), "num_heads"),
    (dict(num_heads=0), "num_heads"),
    (dict(residual_scale=-1.0), "residual_scale"),
    (dict(residual_scale=5.0), "convex"),
    (dict(attention="linear"), "attention must be one of"),
    (dict(init_norm=0.0), "init_norm"),
    (dict(final_scale=-2.0), "final_scale"),
])
def test_bad_transformer_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        T.LipschitzTransformerConfig(**{**TINY, **kwargs})


@pytest.mark.parametrize("name", ["nala", "hyper"])
def test_planned_attention_types_raise_clearly(name):
    with pytest.raises(NotImplementedError, match="not available"):
        T.LipschitzTransformerConfig(**TINY, attention=name)


def test_bad_mlp_config_and_inputs():
    with pytest.raises(ValueError, match="activation"):
        T.LipschitzMLPConfig(in_features=3, features=(2,), activation="tanh")
    with pytest.raises(ValueError, match="features"):
        T.LipschitzMLPConfig(in_features=3, features=())
    cfg = T.LipschitzTransformerConfig(**TINY)
    model, params = _init(cfg)
    with pytest.raises(ValueError, match="context"):
        model.apply(params, jnp.zeros((1, 9), jnp.int32))
    with pytest.raises(ValueError, match="integer"):
        model.apply(params, jnp.zeros((1, 4), jnp.float32))
    with pytest.raises(ValueError, match="d_model"):
        model.apply(params, jnp.zeros((1, 4, 3)), method=model.from_embeddings)
    with pytest.raises(ValueError, match="max_rms"):
        T.project_embedding(params, max_rms=0.0)
