"""NaLaFormer attention (jaxbounds.attention.nalaformer): the linear forms against the
explicit quadratic form (float64), a token-by-token recurrence, gradients, chunked generation,
the entropy property, bf16, and bad input."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments._jaxpr_memory import largest_intermediate_bytes
from jaxbounds.attention import nalaformer as nf
from jaxbounds.attention.rope import rope_1d

B, N, H, D = 2, 100, 2, 16  # N is not a multiple of the chunk (32): padding is exercised
CHUNK = 32


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.isfinite(a)), "NaN/inf in output"
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def qkv(seed, n=N, dtype=jnp.float32, b=B, h=H, d=D):
    kq, kk, kv = jax.random.split(jax.random.PRNGKey(seed), 3)
    make = lambda k: jax.random.normal(k, (b, n, h, d), jnp.float32).astype(dtype)
    return make(kq), make(kk), make(kv)


def quadratic64(q, k, v, *, causal, rope, **kw):
    """The explicit quadratic form, in float64."""
    with jax.enable_x64(True):
        q64, k64, v64 = (jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v))
        out = jax.jit(lambda q, k, v: nf.nala_attention_quadratic(
            q, k, v, causal=causal, rope=rope, **kw))(q64, k64, v64)
        return np.asarray(out)


@pytest.mark.parametrize("causal,implementation,feature_map", [
    (False, "xla", "relu"), (True, "xla", "relu"), (True, "interpret", "relu"),
    (True, "xla", "cosine")])
def test_linear_form_equals_quadratic_form(causal, implementation, feature_map):
    q, k, v = qkv(0)
    rope = rope_1d(N, D)
    out = jax.jit(lambda q, k, v: nf.nala_attention(
        q, k, v, causal=causal, rope=rope, implementation=implementation, chunk_size=CHUNK,
        feature_map=feature_map))(q, k, v)
    ref = quadratic64(q, k, v, causal=causal, rope=rope, feature_map=feature_map)
    assert out.dtype == jnp.float32 and out.shape == (B, N, H, D)
    assert rel(out, ref) < 1e-5


def recurrence_numpy(q, k, v, rope, power_scale=3.0, eps=1e-6):
    """Token by token in float64 NumPy, written from the formula (independent of the code)."""
    q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
    sin, cos = (np.asarray(t, np.float64) for t in rope)
    b, n, h, d = q.shape
    half = d // 2

    def rot(x, t):  # rotate-half RoPE of x [..., d] at position t
        rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos[t] + rotated * sin[t]

    out = np.zeros_like(v)
    s = np.zeros((b, h, 2 * d, v.shape[-1]))
    z = np.zeros((b, h, 2 * d))
    for t in range(n):
        qt, kt = q[:, t], k[:, t] ** 3
        norm = np.linalg.norm(qt, axis=-1, keepdims=True)
        p = power_scale * (0.5 + np.tanh(norm))
        unit = qt / norm
        fq = [np.maximum(unit, 0) ** p, np.maximum(-unit, 0) ** p]
        fk = [np.maximum(kt, 0), np.maximum(-kt, 0)]
        qd, kd = np.concatenate(fq, -1), np.concatenate(fk, -1)
        qn = np.concatenate([rot(x, t) for x in fq], -1)
        kn = np.concatenate([rot(x, t) for x in fk], -1)
        s += kn[..., :, None] * v[:, t][..., None, :]
        z += kd
        num = np.einsum("bhf,bhfv->bhv", qn, s) / (t + 1)
        den = np.einsum("bhf,bhf->bh", qd, z) / (t + 1)
        out[:, t] = num / (den + eps)[..., None]
    return out


@pytest.mark.parametrize("implementation", ["xla"])  # the kernel: test_linear_attention_kernel
def test_causal_equals_token_by_token_recurrence(implementation):
    q, k, v = qkv(1, n=70)
    rope = rope_1d(70, D)
    ref = recurrence_numpy(q, k, v, rope)
    out = jax.jit(lambda q, k, v: nf.nala_attention(
        q, k, v, causal=True, rope=rope, implementation=implementation, chunk_size=CHUNK))(q, k, v)
    assert rel(out, ref) < 1e-5
    # the recurrent decode step, one token at a time
    state = nf.init_state(B, H, D)
    step = jax.jit(nf.nala_decode_step)
    outs = []
    for t in range(70):
        o, state = step(q[:, t], k[:, t], v[:, t], state, rope=(rope[0][t], rope[1][t]))
        outs.append(o)
    assert rel(jnp.stack(outs, axis=1), ref) < 1e-5
    assert int(state.count) == 70


@pytest.mark.parametrize("causal,implementation", [
    (False, "xla"), (True, "xla"), (True, "interpret")])
def test_gradients_match_the_quadratic_reference(causal, implementation):
    n = 80
    q, k, v = qkv(2, n=n)
    rope = rope_1d(n, D)
    ct = jax.random.normal(jax.random.PRNGKey(9), (B, n, H, D))

    def loss(fn, q, k, v, ct):
        return jnp.vdot(fn(q, k, v).astype(ct.dtype), ct)

    fast = lambda q, k, v: nf.nala_attention(q, k, v, causal=causal, rope=rope,
                                             implementation=implementation, chunk_size=CHUNK)
    grads = jax.jit(jax.grad(lambda *a: loss(fast, *a), argnums=(0, 1, 2)))(q, k, v, ct)
    with jax.enable_x64(True):
        ref_fn = lambda q, k, v: nf.nala_attention_quadratic(q, k, v, causal=causal, rope=rope)
        args64 = [jnp.asarray(np.asarray(x, np.float64)) for x in (q, k, v, ct)]
        ref = jax.jit(jax.grad(lambda *a: loss(ref_fn, *a), argnums=(0, 1, 2)))(*args64)
        ref = [np.asarray(g) for g in ref]
    for name, g, r in zip("qkv", grads, ref, strict=True):
        assert rel(g, r) < 1e-4, name


# the kernel's carried state: tests/test_linear_attention_kernel.py (initial state in,
# final state out, all gradients)
@pytest.mark.parametrize("implementation", ["xla"])
def test_chunked_generation_from_a_carried_state_equals_one_pass(implementation):
    n = 96
    q, k, v = qkv(3, n=n)

    @jax.jit
    def run(q, k, v, rope, state):
        return nf.nala_attention(q, k, v, causal=True, rope=rope, initial_state=state,
                                 return_state=True, implementation=implementation,
                                 chunk_size=CHUNK)

    full, full_state = run(q, k, v, rope_1d(n, D), nf.init_state(B, H, D))
    state, pieces = nf.init_state(B, H, D), []
    for start, stop in ((0, 40), (40, n)):
        rope = rope_1d(stop - start, D, offset=start)
        out, state = run(q[:, start:stop], k[:, start:stop], v[:, start:stop], rope, state)
        pieces.append(out)
    assert rel(jnp.concatenate(pieces, axis=1), full) < 1e-5
    assert int(state.count) == int(full_state.count) == n
    assert rel(state.kv, full_state.kv) < 1e-5 and rel(state.k_sum, full_state.k_sum) < 1e-5
    # and one decode step after the prompt equals the full pass's next token
    q2, k2, v2 = qkv(4, n=1)
    rope = rope_1d(1, D, offset=n)
    o, _ = jax.jit(nf.nala_decode_step)(q2[:, 0], k2[:, 0], v2[:, 0], state, rope=rope)
    joined = [jnp.concatenate([a, b], axis=1) for a, b in ((q, q2), (k, k2), (v, v2))]
    ref = recurrence_numpy(*joined, rope_1d(n + 1, D))
    assert rel(o, ref[:, -1]) < 1e-5


def entropy(weights):
    w = np.asarray(weights, np.float64)
    return float(np.mean(-np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1)), 0), -1)))


def test_attention_entropy_falls_as_the_query_norm_grows():
    q, k, _ = qkv(5, n=64, d=32)
    unit = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
    scales = (0.01, 0.1, 0.5, 1.0, 2.0)
    entropies = [entropy(nf.nala_attention_weights(s * unit, k, causal=False)) for s in scales]
    assert all(a > b for a, b in zip(entropies, entropies[1:])), entropies
    assert entropies[0] - entropies[-1] > 0.2
    # tanh saturates: between norm 3 and norm 7 the power p barely moves (< 1% of it)
    far = [entropy(nf.nala_attention_weights(s * unit, k, causal=False)) for s in (3.0, 7.0)]
    assert abs(far[0] - far[1]) < 0.05 * (entropies[0] - entropies[-1])
    # rows of the explicit weights sum to one (causal too)
    w = nf.nala_attention_weights(q, k, causal=True)
    np.testing.assert_allclose(np.sum(np.asarray(w), -1), 1.0, rtol=1e-5)
    assert np.all(np.triu(np.asarray(w)[0, 0], 1) == 0)


@pytest.mark.parametrize("causal,implementation", [(False, "xla"), (True, "xla")])
def test_bf16_inputs_accumulate_in_float32(causal, implementation):  # kernel: its own test
    n = 512 if implementation == "xla" else 128
    q, k, v = qkv(6, n=n, d=16)
    rope = rope_1d(n, 16)
    out = jax.jit(lambda q, k, v: nf.nala_attention(
        q, k, v, causal=causal, rope=rope, implementation=implementation))(
        *(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    up = lambda x: x.astype(jnp.bfloat16).astype(jnp.float32)  # the same (rounded) inputs
    ref = quadratic64(up(q), up(k), up(v), causal=causal, rope=rope)
    assert rel(out.astype(jnp.float32), ref) < 1e-2
    if implementation == "xla":  # every product of the core accumulates in float32
        jaxpr = jax.make_jaxpr(lambda *a: nf.nala_attention(
            *a, causal=causal, rope=rope, implementation="xla"))(
            *(x.astype(jnp.bfloat16) for x in (q, k, v)))
        dots = [e for e in _equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
        assert dots and all(e.outvars[0].aval.dtype == jnp.float32 for e in dots)


def _equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _equations(inner)


def test_zero_query_is_guarded():
    q, k, v = qkv(7, n=40)
    q = q.at[:, 5].set(0.0)
    for causal in (False, True):
        fn = lambda q, c=causal: nf.nala_attention(q, k, v, causal=c, implementation="xla")
        out = jax.jit(fn)(q)
        assert np.all(np.isfinite(np.asarray(out)))
        np.testing.assert_allclose(np.asarray(out[:, 5]), 0.0, atol=1e-6)
        grad = jax.jit(jax.grad(lambda q, f=fn: jnp.sum(f(q) ** 2)))(q)
        assert np.all(np.isfinite(np.asarray(grad)))


def test_cosine_map_gives_non_negative_weights():
    q, k, _ = qkv(8, n=32)
    phi_q, phi_k = nf.nala_features(q, k, feature_map="cosine")
    scores = np.einsum("bihf,bjhf->bhij", np.asarray(phi_q), np.asarray(phi_k))
    assert scores.min() >= 0.0
    phi_q, phi_k = nf.nala_features(q, k)
    assert phi_q.shape == phi_k.shape == (B, 32, H, 2 * D)
    assert float(jnp.min(phi_q)) >= 0 and float(jnp.min(phi_k)) >= 0


def test_causal_xla_path_is_linear_in_memory():
    """Largest intermediate (forward + backward) grows linearly and stays far below an
    [N, 2d, d] cumulative state."""
    d = 64

    def fwd_bwd(q, k, v):
        return jax.grad(lambda q, k, v: jnp.sum(nf.nala_attention(
            q, k, v, causal=True, implementation="xla") ** 2), argnums=(0, 1, 2))(q, k, v)

    sizes = {}
    for n in (1024, 4096):
        shape = jax.ShapeDtypeStruct((1, n, 1, d), jnp.float32)
        sizes[n] = largest_intermediate_bytes(fwd_bwd, shape, shape, shape)
        assert sizes[n] < n * 2 * d * d * 4 / 16
    assert sizes[4096] <= 4.5 * sizes[1024]


def test_bad_input_raises_clear_errors():
    q, k, v = qkv(9, n=32)
    with pytest.raises(ValueError, match="same number of heads"):
        nf.nala_attention(q, k[:, :, :1], v[:, :, :1], causal=True)
    with pytest.raises(ValueError, match="eps must be >= 0, got -0.1"):
        nf.nala_attention(q, k, v, causal=True, eps=-0.1)
    with pytest.raises(ValueError, match="power_scale"):
        nf.nala_attention(q, k, v, causal=False, power_scale=0.0)
    with pytest.raises(ValueError, match=r"rope sin table must have shape \[seq, head_dim\]"):
        nf.nala_attention(q, k, v, causal=True, rope=rope_1d(31, D))
    with pytest.raises(ValueError, match="causal=True"):
        nf.nala_attention(q, k, v, causal=False, return_state=True)
    with pytest.raises(ValueError, match="chunk must be a power of two"):
        nf.nala_attention(q, k, v, causal=True, chunk_size=48, implementation="interpret")
    with pytest.raises(ValueError, match="initial_state.kv must have shape"):
        nf.nala_attention(q, k, v, causal=True, initial_state=nf.init_state(B, H, D // 2))
    with pytest.raises(ValueError, match="feature_map"):
        nf.nala_features(q, k, feature_map="elu")
    with pytest.raises(ValueError, match="must be \\[batch, seq, heads, head_dim\\]"):
        nf.nala_attention(q[0], k[0], v[0], causal=True)
    with pytest.raises(ValueError, match="implementation"):
        nf.nala_attention(q, k, v, causal=True, implementation="cuda")
    # a sequence length that is not a multiple of the chunk is padded, not rejected
    out = nf.nala_attention(q[:, :19], k[:, :19], v[:, :19], causal=True, chunk_size=16,
                            implementation="xla")
    assert out.shape == (B, 19, H, D)


def test_traced_negative_eps_gives_nan_and_the_checked_variant_raises():
    q, k, v = qkv(10, n=16)
    fn = jax.jit(lambda eps: nf.nala_attention(q, k, v, causal=True, eps=eps))
    assert np.all(np.isnan(np.asarray(fn(-1.0))))
    assert np.all(np.isfinite(np.asarray(fn(1e-6))))
    ok = nf.checked_nala_attention(q, k, v, eps=jnp.float32(1e-6), causal=True)
    assert rel(ok, fn(1e-6)) < 1e-6
    from jax.experimental import checkify

    with pytest.raises(checkify.JaxRuntimeError, match="eps must be >= 0"):
        nf.checked_nala_attention(q, k, v, eps=jnp.float32(-1.0), causal=True)


@pytest.mark.parametrize("causal", [True, False])
def test_float64_inputs_compute_in_float64_end_to_end(causal):
    """float64 in, float64 sums: the linear form equals the explicit quadratic form to 1e-12."""
    with jax.enable_x64(True):
        keys = jax.random.split(jax.random.key(11), 3)
        q, k, v = (jax.random.normal(kk, (2, 70, 2, 16), jnp.float64) for kk in keys)
        rope = rope_1d(70, 16)
        out = nf.nala_attention(q, k, v, causal=causal, rope=rope, implementation="xla")
        ref = nf.nala_attention_quadratic(q, k, v, causal=causal, rope=rope)
        assert out.dtype == jnp.float64
        err = float(jnp.linalg.norm(out - ref) / jnp.linalg.norm(ref))
    assert err <= 1e-12, err
