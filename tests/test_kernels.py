"""Every registered Pallas kernel: interpret mode against its reference (outputs and VJPs),
and the "xla" implementation against an independent NumPy float64 formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels import block_attention as ba
from pallas_kernels import dora, newton_schulz
from pallas_kernels import linear_attention as la
from pallas_kernels.checking import check_kernel, relative_error
from pallas_kernels.registry import KERNELS, families, split_name


def test_registry_is_populated():
    assert "dora" in families()
    for spec in KERNELS.values():
        assert set(spec.rtol) and all(0 < r < 0.1 for r in spec.rtol.values())


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_matches_reference_in_interpret_mode(name):
    spec = KERNELS[name]
    for seed in (0, 1):  # fresh random inputs for each check
        check = check_kernel(spec, jax.random.PRNGKey(seed), "small", "interpret")
        assert check.ok, check
        if spec.differentiable:
            assert check.grad_error is not None


# --- independent formulas, written from the math in NumPy float64 -------------------------


def _dora_numpy(x, w0, xa, b, g):
    return g[None, :] * (x @ w0 + dora._SCALE * (xa @ b))


def _linear_attention_numpy(qn, kn, qd, kd, v, s0, z0):
    """Token by token: S_i = S₀ + Σ_{j≤i} kn_jᵀ v_j, z_i = z₀ + Σ_{j≤i} kd_j,
    o_i = qn_i·S_i / (qd_i·z_i + ε·(count + i + 1))."""
    batch, n, heads, _ = qn.shape
    out = np.zeros(v.shape)
    s, z = s0.copy(), z0.copy()
    for i in range(n):
        s += np.einsum("bhf,bhv->bhfv", kn[:, i], v[:, i])
        z += kd[:, i]
        num = np.einsum("bhf,bhfv->bhv", qn[:, i], s)
        den = np.einsum("bhf,bhf->bh", qd[:, i], z) + la._EPS * (la._COUNT + i + 1)
        out[:, i] = num / den[..., None]
    return out, s, z


def _softmax_lse_numpy(logits, keep, v):
    """(out, lse) of a masked softmax over the last axis; fully masked rows: (0, −∞)."""
    logits = np.where(keep, logits, -np.inf)
    top = np.max(logits, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.exp(logits - top)
    total = weights.sum(-1, keepdims=True)
    out = np.einsum("...qk,...kd->...qd", weights / np.where(total > 0, total, 1.0), v)
    with np.errstate(divide="ignore"):
        lse = np.log(total[..., 0]) + top[..., 0]
    return out, lse


def _block_attention_numpy(q, k, v):
    n, d = q.shape[2], q.shape[3]
    b = ba._block_of((q,))
    blocks = np.arange(n) // b
    logits = np.einsum("bhqd,bhkd->bhqk", q, k) / np.sqrt(d)
    return _softmax_lse_numpy(logits, blocks[:, None] == blocks[None, :], v)


def _sampled_attention_numpy(q, ks, vs, sample_block):
    n, d = q.shape[2], q.shape[3]
    q_block = np.arange(n) // ba._block_of((q,))
    logits = np.einsum("bhqd,bhkd->bhqk", q, ks) / np.sqrt(d)
    keep = (sample_block[:, :, None, :] != q_block[:, None]) & (sample_block[:, :, None, :] >= 0)
    return _softmax_lse_numpy(logits, keep, vs)


def _newton_schulz_numpy(x):
    for a, b, c in newton_schulz._COEFFICIENTS:  # fat X: A = X·Xᵀ
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


NUMPY_FORMULAS = {
    "newton_schulz": _newton_schulz_numpy,
    "dora_matmul": _dora_numpy,
    "causal_linear_attention": _linear_attention_numpy,
    "block_attention": _block_attention_numpy,
    "sampled_attention": _sampled_attention_numpy,
}


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_xla_implementation_matches_an_independent_numpy_formula(name):
    spec = KERNELS[name]
    op, dtype = split_name(name)
    inputs = spec.make_inputs(jax.random.PRNGKey(2), "small")
    out = jax.jit(lambda *a: spec.run(*a, implementation="xla"))(*inputs)
    as64 = lambda x: np.asarray(x, np.float64) if jnp.issubdtype(x.dtype, jnp.floating) else (
        np.asarray(x))
    expected = NUMPY_FORMULAS[op](*map(as64, inputs))
    out_leaves = jax.tree_util.tree_leaves(out)
    expected_leaves = jax.tree_util.tree_leaves(expected)
    assert len(out_leaves) == len(expected_leaves)
    for got, want in zip(out_leaves, expected_leaves, strict=True):
        finite = np.isfinite(want)
        np.testing.assert_array_equal(np.isfinite(np.asarray(got, np.float64)), finite)
        rtol = 1e-5 if dtype == "float32" else spec.rtol[dtype]  # an XLA float32 path: 1e-5
        assert relative_error(np.asarray(got)[finite], want[finite]) < rtol, name


def test_relative_error_rejects_nan_and_shape_mismatch():
    assert relative_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == float("inf")
    assert relative_error(np.ones(3), np.ones(4)) == float("inf")
    assert relative_error(np.ones(3), np.ones(3)) == 0.0
