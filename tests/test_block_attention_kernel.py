"""Block and sampled attention kernels (interpret mode) against their references, and the
references against exact masked softmax attention: outputs, lse and VJPs (with an lse
cotangent), fully masked rows, padding, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.softmax import softmax_attention
from pallas_kernels import block_attention as ba
from pallas_kernels.checking import relative_error
from pallas_kernels.registry import KERNELS

B, H, N, D, BLOCK = 1, 2, 128, 24, 32  # d = 24: the head dim is padded to 32 in the kernel


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


def _to_seq_major(x):
    return jnp.swapaxes(x, 1, 2)


def _vjp(fn, args, cts):
    out, pullback = jax.vjp(fn, *args)
    return out, pullback(cts)


@pytest.fixture(scope="module")
def block_inputs():
    kq, kk, kv, ko, kl = jax.random.split(jax.random.PRNGKey(0), 5)
    q, k, v = (_normal(x, (B, H, N, D)) for x in (kq, kk, kv))
    cts = (_normal(ko, (B, H, N, D)), _normal(kl, (B, H, N)))
    return (q, k, v), cts


def test_block_reference_is_exact_attention_masked_to_blocks(block_inputs):
    (q, k, v), _ = block_inputs
    out, lse = ba.block_attention_reference(q, k, v, block_size=BLOCK)
    same = (np.arange(N)[:, None] // BLOCK) == (np.arange(N)[None, :] // BLOCK)
    ref_out, ref_lse = softmax_attention(*map(_to_seq_major, (q, k, v)), return_lse=True,
                                         mask=jnp.asarray(same)[None, None])
    assert relative_error(out, _to_seq_major(ref_out)) < 1e-5
    assert relative_error(lse, jnp.swapaxes(ref_lse, 1, 2)) < 1e-5


def test_block_kernel_matches_reference_with_lse_cotangent(block_inputs):
    args, cts = block_inputs
    kernel = jax.jit(lambda *a: _vjp(
        lambda q, k, v: ba.block_attention(q, k, v, block_size=BLOCK,
                                           implementation="interpret"), a, cts))
    ref = jax.jit(lambda *a: _vjp(
        lambda q, k, v: ba.block_attention_reference(q, k, v, block_size=BLOCK), a, cts))
    (out, lse), grads = kernel(*args)
    (ref_out, ref_lse), ref_grads = ref(*args)
    assert relative_error(out, ref_out) < 1e-5
    assert relative_error(lse, ref_lse) < 1e-5
    assert relative_error(grads, ref_grads) < 1e-5
    # The lse cotangent alone (dO = 0): dS = P ∘ dlse, so dV = 0 and dQ, dK are non-zero.
    zero_do = (jnp.zeros_like(cts[0]), cts[1])
    _, lse_grads = jax.jit(lambda *a: _vjp(
        lambda q, k, v: ba.block_attention(q, k, v, block_size=BLOCK,
                                           implementation="interpret"), a, zero_do))(*args)
    ref_lse_grads = jax.vjp(
        lambda q, k, v: ba.block_attention_reference(q, k, v, block_size=BLOCK),
        *args)[1](zero_do)
    assert relative_error(lse_grads, ref_lse_grads) < 1e-5
    assert float(jnp.max(jnp.abs(lse_grads[2]))) == 0.0
    assert float(jnp.linalg.norm(lse_grads[0])) > 0.0


def _sampled_inputs(seed, m=40):
    kq, kk, kv, kb, ko, kl = jax.random.split(jax.random.PRNGKey(seed), 6)
    q = _normal(kq, (B, H, N, D))
    ks, vs = _normal(kk, (B, H, m, D)), _normal(kv, (B, H, m, D))
    sample_block = jax.random.randint(kb, (B, H, m), 0, N // BLOCK)
    # head 1: every sample in block 0, so the queries of block 0 see nothing (lse = −∞)
    sample_block = sample_block.at[:, 1].set(0)
    cts = (_normal(ko, (B, H, N, D)), _normal(kl, (B, H, N)))
    return (q, ks, vs, sample_block), cts


def test_sampled_reference_is_exact_attention_on_the_samples_with_the_block_mask():
    (q, ks, vs, sb), _ = _sampled_inputs(1)
    out, lse = ba.sampled_attention_reference(q, ks, vs, sb, block_size=BLOCK)
    keep = (sb[:, :, None, :] != (jnp.arange(N) // BLOCK)[:, None])
    ref_out, ref_lse = softmax_attention(*map(_to_seq_major, (q, ks, vs)), return_lse=True,
                                         mask=keep)
    assert relative_error(out, _to_seq_major(ref_out)) < 1e-5
    ref_lse = jnp.swapaxes(ref_lse, 1, 2)
    masked = np.asarray(~jnp.any(keep, axis=-1))
    assert masked[0, 1, :BLOCK].all() and not masked[0, 0].any()
    assert np.all(np.isneginf(np.asarray(lse)[masked]))
    np.testing.assert_allclose(np.asarray(lse)[~masked], np.asarray(ref_lse)[~masked],
                               rtol=1e-5, atol=1e-5)


def test_sampled_kernel_matches_reference_with_masked_rows_and_padding():
    args, cts = _sampled_inputs(2)  # m = 40 is padded to 64 samples of block −1
    fn = lambda q, ks, vs: ba.sampled_attention(q, ks, vs, args[3], block_size=BLOCK,
                                                implementation="interpret")
    ref_fn = lambda q, ks, vs: ba.sampled_attention_reference(q, ks, vs, args[3],
                                                              block_size=BLOCK)
    # the −∞ rows get a zero lse cotangent (a finite one would be meaningless there)
    cts = (cts[0], jnp.where(jnp.isfinite(ref_fn(*args[:3])[1]), cts[1], 0.0))
    (out, lse), grads = jax.jit(lambda *a: _vjp(fn, a, cts))(*args[:3])
    (ref_out, ref_lse), ref_grads = jax.jit(lambda *a: _vjp(ref_fn, a, cts))(*args[:3])
    finite = np.isfinite(np.asarray(ref_lse))
    assert not finite.all()
    np.testing.assert_array_equal(np.isfinite(np.asarray(lse)), finite)
    assert relative_error(out, ref_out) < 1e-5
    assert relative_error(np.asarray(lse)[finite], np.asarray(ref_lse)[finite]) < 1e-5
    assert np.all(np.asarray(out)[~finite] == 0.0)
    assert relative_error(grads, ref_grads) < 1e-5
    assert all(np.all(np.isfinite(np.asarray(g))) for g in grads)


def test_both_kernels_are_registered_in_the_block_attention_family():
    names = {name for name, spec in KERNELS.items() if spec.family == "block_attention"}
    assert {"block_attention_float32", "sampled_attention_float32"} <= names
    assert all(KERNELS[name].differentiable for name in names)


def test_default_block_sizes_fit_the_block():
    blocks = ba.BlockAttentionBlockSizes.default(32, 40)
    assert (blocks.block_q, blocks.block_k) == (32, 64)
    blocks.validate(32, sampled=True)
    with pytest.raises(ValueError, match="block_k"):
        ba.BlockAttentionBlockSizes(block_q=32, block_k=64).validate(32, sampled=False)
    with pytest.raises(ValueError, match="power of two >= 16"):
        ba.BlockAttentionBlockSizes(block_q=8).validate(32, sampled=False)


def test_bad_input_raises_clear_errors(block_inputs):
    (q, k, v), _ = block_inputs
    with pytest.raises(ValueError, match="block_size must be a power of two.*48"):
        ba.block_attention(q, k, v, block_size=48, implementation="xla")
    with pytest.raises(ValueError, match="n=128 must be a multiple of block_size=256"):
        ba.block_attention(q, k, v, block_size=256)
    with pytest.raises(ValueError, match="same shape"):
        ba.block_attention(q, k[..., :16], v, block_size=BLOCK)
    with pytest.raises(ValueError, match="rank 4"):
        ba.block_attention(q[0], k, v, block_size=BLOCK)
    (q, ks, vs, sb), _ = _sampled_inputs(3)
    with pytest.raises(TypeError, match="integer dtype"):
        ba.sampled_attention(q, ks, vs, sb.astype(jnp.float32), block_size=BLOCK)
    with pytest.raises(ValueError, match="sample_block"):
        ba.sampled_attention(q, ks, vs, sb[..., :5], block_size=BLOCK)
    with pytest.raises(ValueError, match="implementation"):
        ba.sampled_attention(q, ks, vs, sb, block_size=BLOCK, implementation="cuda")
