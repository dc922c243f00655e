"""Mutation tests of the Lipschitz certificate: the soundness search proves it can fail.

Each test takes an instance whose true Lipschitz constant is known, makes the certificate
unsound on purpose by monkeypatching one of its internal factors (never a library flag), and
asserts that the worst-case search of ``test_lipschitz_certificate`` (difference quotients
and power-iterated Jacobian norms, float64, in the certificate's max-RMS norm and domain)
finds a ratio above the mutated bound. Unmutated, the same search must stay below the bound
and, where the bound is exact, reach it to 1e-6. The rows go to
``runs/mutation_table_lipschitz.md``.
"""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_lipschitz_certificate import worst_case
from worst_case import report_coverage

from jaxbounds.lipschitz import certificate as C
from jaxbounds.lipschitz import transformer as T

ROWS: list[str] = []
TABLE = pathlib.Path(__file__).resolve().parents[1] / "runs" / "mutation_table_lipschitz.md"


@pytest.fixture(scope="module", autouse=True)
def _write_table():
    yield
    header = ["| target | mutation | instance | caught by | best / mutated bound |",
              "|---|---|---|---|---|"]
    text = "\n".join(header + ROWS) + "\n"
    print("\n" + text)
    TABLE.parent.mkdir(exist_ok=True)
    TABLE.write_text(text)


def _mutate(monkeypatch, name, make):
    """Replace ``C.<name>`` by ``make(original)`` and drop the compiled certificate."""
    monkeypatch.setattr(C, name, make(getattr(C, name)))
    # a new function object: jit's trace cache is keyed on the function
    monkeypatch.setattr(C, "_core_jit", jax.jit(lambda *args: C._core(*args), static_argnums=1))


def _f64(params):
    with jax.enable_x64(True):
        return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)


_BEST: dict = {}


def _best(instance, *args):
    """The best ratio the search finds on ``instance(*args)`` (searched once per instance:
    the search does not depend on the bound, so every mutation of it reuses the result)."""
    key = (instance.__name__, *args)
    if key not in _BEST:
        _, _, f, shape, radius = instance(*args)
        with jax.enable_x64(True):
            _BEST[key] = max(worst_case(f, shape, radius, seed=0))
    return _BEST[key]


def _record(target, mutation, instance, best, bound, test):
    caught = best > bound
    ROWS.append(f"| {target} | {mutation} | {instance} | "
                f"{test if caught else 'NOT CAUGHT'} | {best / bound:.6f} |")
    return caught


# --- instances with an exact constant -----------------------------------------------------


def _mlp(features, in_features, kernels, final_scale=1.5):
    cfg = T.LipschitzMLPConfig(in_features=in_features, features=features,
                               final_scale=final_scale)
    model = T.LipschitzMLP(cfg)
    params = {"params": {f"dense_{i}": {"kernel": np.asarray(k, np.float64)}
                         for i, k in enumerate(kernels)}}
    p64 = _f64(params)
    return cfg, params, lambda x: model.apply(p64, x), (1, in_features), None


def one_layer_mlp():
    """One layer: the bound final_scale·‖W‖ is the exact constant."""
    w = np.random.default_rng(0).normal(size=(6, 5)) * np.linspace(0.3, 2.0, 5)
    return _mlp((5,), 6, [w])


def relu_mlp_exact():
    """W_2·relu(s·x) with W_2's top right singular vector e_1: the Jacobian s·W_2·D(x) has the
    norm s·‖W_2‖ = the bound wherever x_1 > 0 (half the starts)."""
    w2 = np.zeros((4, 3))
    w2[0, 0], w2[1, 1], w2[2, 2], w2[3, 2] = 3.0, 1.0, 0.5, 0.4
    return _mlp((4, 3), 4, [1.3 * np.eye(4), w2])


def _transformer(qk, vo, *, d=8, context=4, vocab=10):
    """One block, one head, α = ½: W_q = W_k = qk·I, W_v = W_o = vo·I, the MLP branch off
    (fc_out = 0, so its factor is exactly ½), a random unembedding; tokens of RMS ≤ 1. With
    qk = 0 the attention is the causal mean of the values and the whole map is linear, so
    the bound is exact; with qk > 0 the softmax term of the attention factor is active."""
    cfg = T.LipschitzTransformerConfig(vocab_size=vocab, d_model=d, num_blocks=1, num_heads=1,
                                       context=context, zero_init=False)
    model = T.LipschitzTransformer(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, context), jnp.int32))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)["params"]
    attn = p["blocks_0"]["attn"]
    for name, scale in (("query", qk), ("key", qk), ("value", vo), ("out", vo)):
        attn[name]["kernel"] = scale * np.eye(d)
    p["blocks_0"]["mlp"]["fc_out"]["kernel"] *= 0.0
    p["unembed"]["kernel"] = np.random.default_rng(2).normal(size=(d, vocab)) * np.linspace(
        0.2, 1.0, vocab)
    params = {"params": p}
    p64 = _f64(params)
    radius = float(C.certificate_details(params, cfg)["radii"]["input"])

    def f(x):
        return model.apply(p64, x[None], method=model.from_embeddings)[0]

    return cfg, params, f, (context, d), radius


# --- the unmutated certificate: sound, and the search reaches the exact cases ---------------


@pytest.mark.parametrize("make", [one_layer_mlp, relu_mlp_exact])
def test_search_attains_exact_mlp_bounds(make):
    cfg, params = make()[:2]
    bound = float(C.lipschitz_bound(params, cfg)[0])
    cov = report_coverage(f"certificate {make.__name__}", _best(make), bound)
    assert 1 - 1e-6 <= cov <= 1 + 1e-9


def test_search_attains_exact_transformer_bound():
    cfg, params = _transformer(0.0, 3.0)[:2]
    bound = float(C.lipschitz_bound(params, cfg)[0])
    cov = report_coverage("certificate transformer qk=0", _best(_transformer, 0.0, 3.0), bound)
    assert 1 - 1e-6 <= cov <= 1 + 1e-9


# --- mutations ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [one_layer_mlp, relu_mlp_exact])
def test_mlp_bound_cut_by_one_percent_is_caught(monkeypatch, make):
    cfg, params = make()[:2]

    def scale_first_layer(core):
        def mutated(leaves, config):
            per_layer, details = core(leaves, config)
            return {**per_layer, "dense_0": 0.99 * per_layer["dense_0"]}, details
        return mutated

    _mutate(monkeypatch, "_mlp_core", scale_first_layer)
    bound = float(C.lipschitz_bound(params, cfg)[0])
    assert _record("certificate (MLP)", "0.99 × true (layer factor)", make.__name__, _best(make),
                   bound, "test_mlp_bound_cut_by_one_percent_is_caught")


def _scale_attention(factor):
    def make(branch):
        def mutated(*args):
            l_att, r_att = branch(*args)
            return factor * l_att, r_att
        return mutated
    return make


def test_transformer_total_cut_by_one_percent_is_caught(monkeypatch):
    cfg, params = _transformer(0.0, 3.0)[:2]

    def scale_unembed(core):
        def mutated(leaves, config, input_radius):
            per_layer, details = core(leaves, config, input_radius)
            return {**per_layer, "unembed": 0.99 * per_layer["unembed"]}, details
        return mutated

    _mutate(monkeypatch, "_transformer_core", scale_unembed)
    bound = float(C.lipschitz_bound(params, cfg)[0])
    assert _record("certificate (transformer)", "0.99 × true (unembedding factor)",
                   "1 block, qk=0 (linear)", _best(_transformer, 0.0, 3.0), bound,
                   "test_transformer_total_cut_by_one_percent_is_caught")


def test_attention_factor_cut_by_one_percent_is_caught(monkeypatch):
    """Only the attention branch's Lipschitz factor L_att is scaled by 0.99 (the total then
    drops by 0.75%): caught on the instance where the attention path is exact."""
    cfg, params = _transformer(0.0, 3.0)[:2]
    _mutate(monkeypatch, "_attention_branch", _scale_attention(0.99))
    bound = float(C.lipschitz_bound(params, cfg)[0])
    assert _record("certificate (transformer)", "attention factor L_att × 0.99",
                   "1 block, qk=0 (linear)", _best(_transformer, 0.0, 3.0), bound,
                   "test_attention_factor_cut_by_one_percent_is_caught")


def _scale_softmax_term(factor):
    """Scale only the softmax term 2·a_q·a_k·R² of the attention factor (a_q enters nowhere
    else), leaving every instance with W_q·W_k = 0 exact."""
    def make(branch):
        return lambda a_q, a_k, a_v, w_o, radius: branch(factor * a_q, a_k, a_v, w_o, radius)
    return make


# With W_q = W_k = 0.5·I the softmax term is active (half of the value term): the search
# reaches 85.6% of the bound there (best 4.1278, bound 4.8218). The total is
# 1.7534·(2 + 0.75·s) when the softmax term is scaled by s, so the search catches s < 0.472:
# 0.45 is caught; a 1% cut is not. The bound adds the value term (1) and the covariance term
# (2·a_q·a_k·R²) at their separate maxima; the first wants every dx_j along one direction,
# the second a split dx_j1 = -dx_j2, so (apparently) no input attains both and the bound is
# loose here, or else the search is too weak: one of them needs strengthening. Four times
# more starts or steps move the best only to 4.161. The 1% row stays in the table as a strict
# expected failure (it turns into a pass, and the test fails, once the gap closes).
SOFTMAX_QK = 0.5


@pytest.mark.parametrize("factor", [
    0.45,
    pytest.param(0.99, marks=pytest.mark.xfail(
        strict=True, reason="the search reaches 85.6% of the bound on this instance")),
])
def test_softmax_term_of_attention_factor_cut_is_caught(monkeypatch, factor):
    cfg, params = _transformer(SOFTMAX_QK, 3.0)[:2]
    _mutate(monkeypatch, "_attention_branch", _scale_softmax_term(factor))
    bound = float(C.lipschitz_bound(params, cfg)[0])
    assert _record("certificate (transformer)", f"softmax term 2·a_q·a_k·R² × {factor}",
                   f"1 block, qk={SOFTMAX_QK}", _best(_transformer, SOFTMAX_QK, 3.0), bound,
                   "test_softmax_term_of_attention_factor_cut_is_caught")


def test_attention_factor_with_softmax_term_is_sound():
    cfg, params = _transformer(SOFTMAX_QK, 3.0)[:2]
    bound = float(C.lipschitz_bound(params, cfg)[0])
    cov = report_coverage(f"certificate transformer qk={SOFTMAX_QK}",
                          _best(_transformer, SOFTMAX_QK, 3.0), bound)
    assert 0.85 <= cov <= 1.0
