"""RoPE tables: norm preservation, the relative-position property, 2-D axial layout, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxbounds.attention.rope import apply_rope, rope_1d, rope_2d


def _qk(key, seq, d):
    kq, kk = jax.random.split(key)
    return (jax.random.normal(kq, (1, seq, 2, d)), jax.random.normal(kk, (1, seq, 2, d)))


def test_rotation_preserves_norms():
    q, _ = _qk(jax.random.PRNGKey(0), 12, 16)
    rotated = apply_rope(q, rope_1d(12, 16))
    np.testing.assert_allclose(
        jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5
    )


def test_scores_depend_only_on_relative_position():
    d = 16
    key = jax.random.PRNGKey(1)
    q1 = jax.random.normal(key, (d,))
    k1 = jax.random.normal(jax.random.fold_in(key, 1), (d,))
    seq = 10
    q = jnp.broadcast_to(q1, (1, seq, 1, d))
    k = jnp.broadcast_to(k1, (1, seq, 1, d))
    table = rope_1d(seq, d)
    scores = jnp.einsum("bqhd,bkhd->qk", apply_rope(q, table), apply_rope(k, table))
    for offset in range(-3, 4):
        diagonal = jnp.diagonal(scores, offset=offset)
        np.testing.assert_allclose(diagonal, diagonal[0], rtol=1e-4, atol=1e-4)


def test_first_position_is_identity_and_offset_shifts():
    q, _ = _qk(jax.random.PRNGKey(2), 6, 8)
    np.testing.assert_allclose(apply_rope(q, rope_1d(6, 8))[:, 0], q[:, 0], rtol=1e-6)
    full = apply_rope(q, rope_1d(6, 8))
    tail = apply_rope(q[:, 3:], rope_1d(3, 8, offset=3))
    np.testing.assert_allclose(tail, full[:, 3:], rtol=1e-5, atol=1e-6)


def test_2d_tables_rotate_rows_and_columns_separately():
    h, w, d = 3, 4, 8
    sin, cos = rope_2d(h, w, d)
    assert sin.shape == cos.shape == (h * w, d)
    angles = jnp.arctan2(sin, cos)
    quarter = d // 4
    rows = np.repeat(np.arange(h), w)
    cols = np.tile(np.arange(w), h)
    # pair 0 rotates with the row index at frequency 1, pair d/4 with the column index
    np.testing.assert_allclose(angles[:, 0], rows, atol=1e-6)
    np.testing.assert_allclose(angles[:, quarter], cols, atol=1e-6)
    np.testing.assert_allclose(angles[:, : d // 2], angles[:, d // 2:], atol=0)


def test_bf16_input_keeps_dtype():
    q, _ = _qk(jax.random.PRNGKey(3), 4, 8)
    assert apply_rope(q.astype(jnp.bfloat16), rope_1d(4, 8)).dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rope_1d(4, 7), "head_dim"),
        (lambda: rope_1d(0, 8), "seq_len"),
        (lambda: rope_2d(2, 2, 6), "head_dim"),
        (lambda: rope_2d(0, 2, 8), "height"),
        (lambda: apply_rope(jnp.ones((1, 5, 2, 8)), rope_1d(4, 8)), "do not match"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
