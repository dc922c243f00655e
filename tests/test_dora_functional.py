"""DoRA pure functions against float64 references: factored norm, linear map, gradients, delta."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments._jaxpr_memory import largest_intermediate_bytes
from jaxbounds.adapters.dora import (
    column_sq_norm,
    dora_column_norm,
    dora_column_norm_dense,
    dora_delta,
    dora_linear,
    dora_linear_dense,
    lora_scale,
)

D_IN, D_OUT, RANK, TOKENS = 40, 24, 6, 10
SCALE = 1.5


def random_problem(seed, dtype=np.float32, d_in=D_IN, d_out=D_OUT, rank=RANK, tokens=TOKENS):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((tokens, d_in))
    w0 = rng.standard_normal((d_in, d_out)) / np.sqrt(d_in)
    a = rng.standard_normal((d_in, rank)) / np.sqrt(d_in)
    b = 0.3 * rng.standard_normal((rank, d_out))
    m = 0.5 + rng.uniform(size=d_out)
    return tuple(v.astype(dtype) for v in (x, w0, a, b, m))


def norm64(w0, a, b, s):
    w = np.asarray(w0, np.float64) + s * np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    return np.linalg.norm(w, axis=0)


def linear64(x, w0, a, b, m, s):
    w = np.asarray(w0, np.float64) + s * np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    return (np.asarray(x, np.float64) @ w) * (np.asarray(m, np.float64) / np.linalg.norm(w, axis=0))


def rel(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    assert np.all(np.isfinite(out))
    return np.linalg.norm(out - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_factored_norm_matches_float64_dense(seed):
    x, w0, a, b, m = random_problem(seed)
    ref = norm64(w0, a, b, SCALE)
    assert rel(dora_column_norm(w0, a, b, SCALE), ref) < 1e-6
    cached = column_sq_norm(w0)
    assert rel(dora_column_norm(w0, a, b, SCALE, w0_sq_norm=cached), ref) < 1e-6
    assert rel(dora_column_norm_dense(w0, a, b, SCALE), ref) < 1e-6


def test_factored_norm_in_float64_is_exact():
    with jax.enable_x64(True):
        x, w0, a, b, m = random_problem(3, np.float64)
        out = dora_column_norm(jnp.asarray(w0), jnp.asarray(a), jnp.asarray(b), SCALE)
        assert out.dtype == jnp.float32  # accumulated and returned in float32 by contract
        assert rel(out, norm64(w0, a, b, SCALE)) < 1e-6


def test_norm_is_clamped_at_zero_before_sqrt():
    # W0 + s·AB = 0 in column 0: n² may round slightly negative; it must give 0, not NaN.
    x, w0, a, b, m = random_problem(4, d_in=8, d_out=4, rank=1)
    a = np.zeros_like(a)
    a[0, 0] = 1.0
    b = np.zeros_like(b)
    w0 = w0.copy()
    w0[:, 0] = 0.0
    w0[0, 0] = 0.1
    b[0, 0] = -0.1 / SCALE
    n = dora_column_norm(w0, a, b, SCALE)
    assert np.all(np.isfinite(n)) and float(n[0]) < 1e-4


def test_norm_never_forms_ab():
    d_in, d_out, rank = 512, 256, 16
    shapes = dict(w0=(d_in, d_out), a=(d_in, rank), b=(rank, d_out))
    w0, a, b = (jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes.values())
    sq = jax.ShapeDtypeStruct((d_out,), jnp.float32)
    bound = 4 * (d_out * rank + rank * rank + d_out)
    cached = largest_intermediate_bytes(
        lambda w0, a, b, sq: dora_column_norm(w0, a, b, SCALE, w0_sq_norm=sq), w0, a, b, sq)
    uncached = largest_intermediate_bytes(lambda w0, a, b: dora_column_norm(w0, a, b, SCALE),
                                          w0, a, b)
    dense = largest_intermediate_bytes(lambda w0, a, b: dora_column_norm_dense(w0, a, b, SCALE),
                                       w0, a, b)
    assert cached <= bound and uncached <= bound
    assert dense >= 4 * d_in * d_out


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
def test_dora_linear_matches_float64(implementation):
    x, w0, a, b, m = random_problem(5)
    y = dora_linear(x, w0, a, b, m, SCALE, implementation=implementation)
    assert y.shape == (TOKENS, D_OUT) and y.dtype == jnp.float32
    assert rel(y, linear64(x, w0, a, b, m, SCALE)) < 1e-5


def test_dora_linear_keeps_leading_dims_and_jits():
    x, w0, a, b, m = random_problem(6)
    x3 = x.reshape(2, 5, D_IN)
    y = jax.jit(lambda *p: dora_linear(*p, SCALE))(x3, w0, a, b, m)
    assert y.shape == (2, 5, D_OUT)
    assert rel(y.reshape(TOKENS, D_OUT), linear64(x, w0, a, b, m, SCALE)) < 1e-5


def test_dora_linear_vmaps_over_a_stack_of_adapters():
    x, w0, a, b, m = random_problem(7)
    a2, b2, m2 = (np.stack([v, 0.5 * v]) for v in (a, b, m))
    ys = jax.vmap(lambda a, b, m: dora_linear(x, w0, a, b, m, SCALE))(a2, b2, m2)
    for i in range(2):
        assert rel(ys[i], linear64(x, w0, a2[i], b2[i], m2[i], SCALE)) < 1e-5


def test_at_initialisation_dora_equals_the_base_layer():
    x, w0, a, b, m = random_problem(8)
    b = np.zeros_like(b)
    m = np.linalg.norm(w0.astype(np.float64), axis=0).astype(np.float32)
    y = dora_linear(x, w0, a, b, m, SCALE)
    assert rel(y, x.astype(np.float64) @ w0) < 1e-6


def _reference_grads64(x, w0, a, b, m, detach):
    """Gradients of Σ sin(y) for (x, A, B, m) from the dense formula in float64."""

    def loss(x, a, b, m):
        w = w0 + SCALE * a @ b
        n = jnp.sqrt(jnp.sum(w * w, axis=0))
        if detach:
            n = jax.lax.stop_gradient(n)
        return jnp.sum(jnp.sin((x @ w) * (m / n)))

    with jax.enable_x64(True):
        args = [jnp.asarray(v, jnp.float64) for v in (x, a, b, m)]
        w0 = jnp.asarray(w0, jnp.float64)
        return [np.asarray(g) for g in jax.grad(loss, argnums=(0, 1, 2, 3))(*args)]


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
@pytest.mark.parametrize("detach", [True, False])
def test_gradients_match_dense_float64(detach, implementation):
    x, w0, a, b, m = random_problem(9)

    def loss(x, a, b, m):
        y = dora_linear(x, w0, a, b, m, SCALE, detach_norm=detach, implementation=implementation)
        return jnp.sum(jnp.sin(y))

    grads = jax.grad(loss, argnums=(0, 1, 2, 3))(x, a, b, m)
    ref = _reference_grads64(x, w0, a, b, m, detach)
    for name, g, r in zip("xabm", grads, ref):
        assert rel(g, r) < 1e-5, name


def test_detach_changes_the_adapter_gradient():
    x, w0, a, b, m = random_problem(10)
    grad_b = lambda detach: jax.grad(
        lambda b: jnp.sum(jnp.sin(dora_linear(x, w0, a, b, m, SCALE, detach_norm=detach))))(b)
    assert rel(grad_b(True), grad_b(False)) > 1e-3


def test_dense_reference_matches_float64():
    x, w0, a, b, m = random_problem(11)
    assert rel(dora_linear_dense(x, w0, a, b, m, SCALE), linear64(x, w0, a, b, m, SCALE)) < 1e-5


@pytest.mark.parametrize("implementation", ["xla", "interpret"])
def test_bfloat16_activations_and_base(implementation):
    x, w0, a, b, m = random_problem(12)
    y = dora_linear(x.astype(jnp.bfloat16), w0.astype(jnp.bfloat16), a, b, m, SCALE,
                    implementation=implementation)
    assert y.dtype == jnp.bfloat16
    assert rel(y, linear64(x, w0, a, b, m, SCALE)) < 1e-2


def test_stable_delta_beats_the_naive_form_in_bfloat16():
    """bf16 activations, float32 g within 1e-3 of 1: the naive g⊙(base + s·lora) − base,
    rounded to the activation dtype, cancels catastrophically; the stable form does not."""
    rng = np.random.default_rng(13)
    tokens, d_out, s = 256, 512, 0.25
    base64 = rng.standard_normal((tokens, d_out))
    lora64 = 1e-2 * rng.standard_normal((tokens, d_out))
    g = (1.0 + 1e-3 * rng.uniform(-1, 1, d_out)).astype(np.float32)
    base = jnp.asarray(base64, jnp.bfloat16)
    lora = jnp.asarray(lora64, jnp.bfloat16)
    # float64 truth on the same (bf16-rounded) inputs
    b64, l64, g64 = (np.asarray(v, np.float64) for v in (base, lora, g))
    truth = (g64 - 1.0) * b64 + g64 * (s * l64)

    stable = dora_delta(base, lora, jnp.asarray(g), s)
    naive_y = (jnp.asarray(g) * (base.astype(jnp.float32) + s * lora.astype(jnp.float32)))
    naive = naive_y.astype(jnp.bfloat16) - base  # the layer output lives in bf16
    err_stable, err_naive = rel(stable, truth), rel(naive, truth)
    assert err_stable < 1e-6  # float32 result: essentially exact
    assert err_naive > 0.5  # the naive delta is mostly rounding noise
    assert err_naive / err_stable > 1e5
    # Even rounded to bf16 the stable delta keeps bf16 accuracy.
    assert rel(stable.astype(jnp.bfloat16), truth) < 5e-3


def test_dora_delta_plus_base_is_the_dora_output():
    x, w0, a, b, m = random_problem(14)
    base = x @ w0
    lora = (x @ a) @ b
    g = m / norm64(w0, a, b, SCALE)
    y = base + dora_delta(base, lora, jnp.asarray(g, jnp.float32), SCALE)
    assert rel(y, linear64(x, w0, a, b, m, SCALE)) < 1e-5


# --- bad input -----------------------------------------------------------------------------

def test_rank_out_of_range_is_rejected():
    x, w0, a, b, m = random_problem(15)
    with pytest.raises(ValueError, match="rank r = a.shape\\[1\\] must satisfy"):
        dora_linear(x, w0, a[:, :0], b[:0], m, SCALE)
    big = D_OUT + 1
    with pytest.raises(ValueError, match=f"got r = {big}"):
        dora_column_norm(w0, np.ones((D_IN, big), np.float32), np.ones((big, D_OUT), np.float32),
                         SCALE)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda p: {**p, "a": p["a"][:-1]}, "a must have shape"),
        (lambda p: {**p, "b": p["b"][:, :-1]}, "b must have shape"),
        (lambda p: {**p, "m": p["m"][:-1]}, "magnitude must have shape"),
        (lambda p: {**p, "x": p["x"][:, :-1]}, "x must have shape"),
        (lambda p: {**p, "w0": p["w0"][None]}, "w0 must have rank 2"),
    ],
)
def test_mismatched_shapes_are_rejected(mutate, match):
    x, w0, a, b, m = random_problem(16)
    p = mutate(dict(x=x, w0=w0, a=a, b=b, m=m))
    with pytest.raises(ValueError, match=match):
        dora_linear(p["x"], p["w0"], p["a"], p["b"], p["m"], SCALE)


@pytest.mark.parametrize("name", ["x", "w0", "a", "b", "m"])
def test_integer_dtypes_are_rejected(name):
    p = dict(zip("x w0 a b m".split(), random_problem(17)))
    p[name] = p[name].astype(np.int32)
    label = "magnitude" if name == "m" else name
    with pytest.raises(TypeError, match=f"{label} must have a floating dtype"):
        dora_linear(p["x"], p["w0"], p["a"], p["b"], p["m"], SCALE)


def test_cached_norm_shape_is_checked():
    x, w0, a, b, m = random_problem(18)
    with pytest.raises(ValueError, match="w0_sq_norm must have shape"):
        dora_column_norm(w0, a, b, SCALE, w0_sq_norm=np.ones(3, np.float32))


def test_delta_shapes_are_checked():
    base = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="lora must have the shape"):
        dora_delta(base, np.ones((4, 2), np.float32), np.ones(3, np.float32), 1.0)
    with pytest.raises(ValueError, match="g must have shape"):
        dora_delta(base, base, np.ones(2, np.float32), 1.0)


@pytest.mark.parametrize("alpha, rank, error, match", [
    (1.0, 0, ValueError, "rank"), (1.0, 2.5, TypeError, "rank"),
    (0.0, 4, ValueError, "alpha"), ("1", 4, TypeError, "alpha")])
def test_lora_scale_validates(alpha, rank, error, match):
    with pytest.raises(error, match=match):
        lora_scale(alpha, rank)


def test_negative_magnitude_is_rejected():
    x, w0, a, b, m = random_problem(19)
    m = np.asarray(m).copy()
    m[1] = -0.5
    with pytest.raises(ValueError, match="magnitude must be non-negative"):
        dora_linear(x, w0, a, b, m, SCALE)


def test_lora_scale_values():
    assert lora_scale(16, 8) == 2.0
    assert lora_scale(16, 4, use_rslora=True) == 8.0
