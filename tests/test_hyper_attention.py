"""HyperAttention: exact limits (short n, one block, no samples, causal recursion), the
unbiased residual normaliser, custom_vjp gradients against jax.grad of the pure-jnp path,
the inverse-Gray-code bucket order, shard-independent randomness and bad input."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention import hyper, lsh
from jaxbounds.attention.softmax import softmax_attention
from pallas_kernels.checking import relative_error

B, N, H, D = 2, 128, 2, 16


def _qkv(seed, n=N, d=D, scale=1.0):
    keys = jax.random.split(jax.random.PRNGKey(seed), 3)
    return tuple(scale * jax.random.normal(k, (B, n, H, d), jnp.float32) for k in keys)


KEY = jax.random.PRNGKey(42)


def _hyper(impl, **kw):
    return jax.jit(lambda q, k, v, key: hyper.hyper_attention(
        q, k, v, key=key, return_lse=True, implementation=impl, **kw))


def test_short_sequences_are_exact():
    q, k, v = _qkv(0)
    for causal in (False, True):
        out, lse = hyper.hyper_attention(q, k, v, key=KEY, causal=causal, min_seq_len=N,
                                         return_lse=True)
        ref, ref_lse = softmax_attention(q, k, v, causal=causal, return_lse=True)
        assert relative_error(out, ref) < 1e-6 and relative_error(lse, ref_lse) < 1e-6
        assert lse.shape == (B, N, H) and out.dtype == q.dtype


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_one_block_is_exact_even_with_samples(impl):
    q, k, v = _qkv(1)  # every sample lies in the query's own block: the residual is empty
    out, lse = _hyper(impl, block_size=N, sample_size=32, min_seq_len=16)(q, k, v, KEY)
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True)
    assert relative_error(out, ref) < 1e-5 and relative_error(lse, ref_lse) < 1e-5


def _block_mask(q, k, key, block, num_projections=7):
    """Dense [B, H, n, n] mask "same sorted block", rebuilt from the public pieces."""
    proj_key, _ = hyper.hyper_keys(key)
    planes = lsh.hyperplanes(proj_key, q.shape[-1], num_projections)
    pos_q = lsh.inverse_permutation(lsh.sort_lsh_permutation(jnp.swapaxes(q, 1, 2), planes))
    pos_k = lsh.inverse_permutation(lsh.sort_lsh_permutation(jnp.swapaxes(k, 1, 2), planes))
    return (pos_q[..., :, None] // block) == (pos_k[..., None, :] // block)


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_no_samples_is_attention_masked_to_the_sorted_blocks(impl):
    q, k, v = _qkv(2)
    out, lse = _hyper(impl, block_size=32, sample_size=0, min_seq_len=16)(q, k, v, KEY)
    mask = _block_mask(q, k, KEY, 32)
    assert 0 < float(jnp.mean(mask)) < 0.5  # a real restriction, every row non-empty
    ref, ref_lse = softmax_attention(q, k, v, return_lse=True, mask=mask)
    assert relative_error(out, ref) < 1e-5 and relative_error(lse, ref_lse) < 1e-5


@pytest.mark.parametrize("impl", ["xla", "interpret"])
def test_causal_recursion_with_half_blocks_and_no_samples_is_exact(impl):
    # min_seq_len = n/4: two recursion levels; the lower-left parts (n/2 and n/4 long) run
    # the block path with one block each, so only the recursion and lse merges are tested.
    q, k, v = _qkv(3)
    out, lse = _hyper(impl, causal=True, block_size=N // 2, sample_size=0,
                      min_seq_len=N // 4)(q, k, v, KEY)
    ref, ref_lse = softmax_attention(q, k, v, causal=True, return_lse=True)
    assert relative_error(out, ref) < 1e-5 and relative_error(lse, ref_lse) < 1e-5


def test_residual_normaliser_is_unbiased():
    """E[e^{lse_res}] = Σ_{j ∉ B(i)} e^{c q_i·k_j}: mean over 2,000 sample keys (fixed
    hyperplanes) within 3 standard errors, for the total and for (almost) every query."""
    n, m, block, draws = 128, 16, 32, 2000
    q, k, v = (jnp.swapaxes(x[:1, :, :1], 1, 2) for x in _qkv(4, n=n, scale=0.7))
    proj_key, sample_key = hyper.hyper_keys(KEY)
    planes = lsh.hyperplanes(proj_key, D, 7)
    cfg = hyper._Config(block_size=block, sample_size=m, min_seq_len=0, scale=D ** -0.5,
                        implementation="xla")

    def draw(i):
        keys = hyper.per_head_keys(jax.random.fold_in(sample_key, i), 1, 1)
        parts = hyper._noncausal_parts(q, k, v, keys, planes, cfg)
        return jnp.exp(parts["lse_res"][0, 0]), parts["perm_q"], parts["perm_k"]

    est, perm_q, perm_k = jax.jit(jax.vmap(draw))(jnp.arange(draws))
    assert np.all(np.asarray(perm_q) == np.asarray(perm_q[0]))  # hyperplanes fixed
    est = np.asarray(est, np.float64)  # [draws, n] in sorted query order
    logits = np.asarray(q[0, 0], np.float64) @ np.asarray(k[0, 0], np.float64).T * D ** -0.5
    pos_q = np.argsort(np.asarray(perm_q[0, 0, 0]))
    pos_k = np.argsort(np.asarray(perm_k[0, 0, 0]))
    off_block = (pos_q[:, None] // block) != (pos_k[None, :] // block)
    true = (np.exp(logits) * off_block).sum(axis=1)[np.asarray(perm_q[0, 0, 0])]  # sorted

    total, total_true = est.sum(axis=1), true.sum()
    se = total.std(ddof=1) / math.sqrt(draws)
    assert abs(total.mean() - total_true) <= 3 * se, (total.mean(), total_true, se)
    se_i = est.std(axis=0, ddof=1) / math.sqrt(draws)
    within = np.abs(est.mean(axis=0) - true) <= 3 * se_i
    assert within.mean() >= 0.97, within.mean()


def test_custom_vjp_gradients_equal_jax_grad_of_the_pure_jnp_path():
    """Same key → same permutations and samples on both paths; the loss uses out and lse."""
    q, k, v = _qkv(5)
    w_out = jax.random.normal(jax.random.PRNGKey(7), (B, N, H, D))
    w_lse = jax.random.normal(jax.random.PRNGKey(8), (B, N, H))

    def loss(impl, causal):
        def f(q, k, v):
            out, lse = hyper.hyper_attention(q, k, v, key=KEY, causal=causal, block_size=32,
                                             sample_size=24, min_seq_len=32,
                                             return_lse=True, implementation=impl)
            return jnp.sum(out * w_out) + jnp.sum(lse * w_lse)

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))

    # causal with min_seq_len = n/4: the lower-left quarter (n/2 long) runs the non-causal
    # block + sampled path, the rest is exact; both lse merges are differentiated.
    val, grads = loss("interpret", True)(q, k, v)
    ref_val, ref_grads = loss("xla", True)(q, k, v)
    assert abs(float(val - ref_val)) <= 1e-4 * abs(float(ref_val)) + 1e-4
    assert relative_error(grads, ref_grads) < 1e-4
    assert all(float(jnp.linalg.norm(g)) > 0 for g in grads)


def test_adjacent_buckets_in_gray_rank_order_differ_in_one_bit():
    r = 7
    buckets = np.arange(2 ** r)
    order = buckets[np.argsort(np.asarray(lsh.inverse_gray_code(buckets)))]
    hamming = [bin(int(a) ^ int(b)).count("1") for a, b in zip(order[:-1], order[1:])]
    assert hamming == [1] * (2 ** r - 1)
    np.testing.assert_array_equal(np.asarray(lsh.gray_code(lsh.inverse_gray_code(buckets))),
                                  buckets)
    # Sorting by the Gray code itself (the reference code's choice) breaks the property.
    wrong = buckets[np.argsort(np.asarray(lsh.gray_code(buckets)))]
    assert max(bin(int(a) ^ int(b)).count("1") for a, b in zip(wrong[:-1], wrong[1:])) > 1


def test_sort_is_stable_and_groups_equal_buckets():
    x = jax.random.normal(jax.random.PRNGKey(9), (3, 200, 8))
    planes = lsh.hyperplanes(jax.random.PRNGKey(10), 8, 3)
    perm = np.asarray(lsh.sort_lsh_permutation(x, planes))
    rank = np.asarray(lsh.inverse_gray_code(lsh.lsh_buckets(x, planes)))
    for row in range(3):
        sorted_rank = rank[row, perm[row]]
        assert np.all(np.diff(sorted_rank) >= 0)
        for value in np.unique(sorted_rank):  # stable: original order inside a bucket
            assert np.all(np.diff(perm[row][sorted_rank == value]) > 0)
    inv = np.asarray(lsh.inverse_permutation(jnp.asarray(perm)))
    np.testing.assert_array_equal(np.take_along_axis(inv, perm, axis=1),
                                  np.broadcast_to(np.arange(200), (3, 200)))


def test_randomness_is_explicit_and_depends_on_global_indices_only():
    q, k, v = _qkv(6)
    kw = dict(block_size=32, sample_size=16, min_seq_len=32, implementation="xla")

    @jax.jit
    def run(q, k, v, key, offsets):
        # causal: its lower-left quarter runs the non-causal sampled path
        return hyper.hyper_attention(q, k, v, key=key, causal=True, batch_offset=offsets[0],
                                     head_offset=offsets[1], **kw)

    full = run(q, k, v, KEY, jnp.zeros(2, jnp.int32))
    other = run(q, k, v, jax.random.PRNGKey(43), jnp.zeros(2, jnp.int32))
    assert float(jnp.max(jnp.abs(full - other))) > 1e-3
    # One batch row and one head, told its (traced) global offsets, reproduces its slice.
    sl = (slice(1, 2), slice(None), slice(1, 2))
    part = run(q[sl], k[sl], v[sl], KEY, jnp.array([1, 1]))
    np.testing.assert_allclose(np.asarray(part), np.asarray(full[sl]), rtol=1e-6, atol=1e-6)


def test_merge_lse_handles_empty_parts():
    out = jnp.ones((2, 3))
    lse = jnp.array([0.5, -jnp.inf])
    merged, merged_lse = hyper.merge_lse(out, lse, 2 * out, jnp.array([-jnp.inf, 1.0]))
    np.testing.assert_allclose(np.asarray(merged), [[1, 1, 1], [2, 2, 2]])
    np.testing.assert_allclose(np.asarray(merged_lse), [0.5, 1.0])
    grad = jax.grad(lambda a: hyper.merge_lse(out, a, out, jnp.full(2, -jnp.inf))[1].sum())(lse)
    assert np.all(np.isfinite(np.asarray(grad)))


def test_bad_input_raises_clear_errors():
    q, k, v = _qkv(0)
    with pytest.raises(ValueError, match="block_size must be a power of two, got 48"):
        hyper.hyper_attention(q, k, v, key=KEY, block_size=48, min_seq_len=16)
    q2, k2, v2 = _qkv(0, n=96)
    with pytest.raises(ValueError, match="length 96 must be a multiple of block_size=64"):
        hyper.hyper_attention(q2, k2, v2, key=KEY, block_size=64, min_seq_len=16)
    with pytest.raises(ValueError, match="odd length"):
        hyper.hyper_attention(q2, k2, v2, key=KEY, causal=True, block_size=1, min_seq_len=2)
    with pytest.raises(ValueError, match="same head_dim"):
        hyper.hyper_attention(q, k[..., :8], v, key=KEY)
    with pytest.raises(ValueError, match="same sequence length"):
        hyper.hyper_attention(q, k[:, :64], v[:, :64], key=KEY)
    with pytest.raises(ValueError, match="k .* and v .* must agree in batch, seq and heads"):
        hyper.hyper_attention(q, k, v[:, :64], key=KEY)
    with pytest.raises(ValueError, match=r"\[batch, seq, heads, head_dim\]"):
        hyper.hyper_attention(q[0], k, v, key=KEY)
    with pytest.raises(TypeError, match="key"):
        hyper.hyper_attention(q, k, v, key=None)
    with pytest.raises(ValueError, match="num_projections must be <= 30"):
        hyper.hyper_attention(q, k, v, key=KEY, num_projections=31)
    with pytest.raises(ValueError, match="sample_size must be >= 0, got -1"):
        hyper.hyper_attention(q, k, v, key=KEY, sample_size=-1)
    # short sequences run exactly and need no block alignment
    hyper.hyper_attention(q2, k2, v2, key=KEY, block_size=64, min_seq_len=96)
