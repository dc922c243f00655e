"""Dispatch: resolve_implementation and the JAXBOUNDS_IMPLEMENTATION override."""

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels import _backend


def test_default_is_xla_on_cpu(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    assert jax.default_backend() == "cpu"
    assert _backend.resolve_implementation(None) == "xla"


@pytest.mark.parametrize("name", ["xla", "interpret"])
def test_explicit_values_pass_through(name):
    assert _backend.resolve_implementation(name) == name


def test_unknown_value_lists_valid_ones():
    with pytest.raises(ValueError, match=r"implementation must be one of .*xla.*triton.*interpret"):
        _backend.resolve_implementation("cuda")
    with pytest.raises(ValueError, match="got 3"):
        _backend.resolve_implementation(3)


def test_triton_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        _backend.resolve_implementation("triton")


def test_environment_variable_overrides_default(monkeypatch):
    monkeypatch.setenv(_backend.ENV_VAR, "interpret")
    assert _backend.resolve_implementation(None) == "interpret"
    assert _backend.resolve_implementation("xla") == "xla"  # an explicit argument wins
    monkeypatch.setenv(_backend.ENV_VAR, "bogus")
    with pytest.raises(ValueError, match="JAXBOUNDS_IMPLEMENTATION"):
        _backend.resolve_implementation(None)


def test_pad_axis_pads_with_zeros_to_a_multiple():
    x = jnp.arange(1.0, 11.0).reshape(2, 5)
    y = _backend.pad_axis(x, 1, 4)
    assert y.shape == (2, 8)
    assert jnp.array_equal(y[:, :5], x) and not jnp.any(y[:, 5:])
    assert _backend.pad_axis(x, 0, 2) is x


def test_dot_accumulates_in_float32():
    a = jax.random.normal(jax.random.PRNGKey(0), (16, 32), jnp.float32).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (32, 16), jnp.float32)
    out = _backend.dot(a, b)
    assert out.dtype == jnp.float32
    ref = a.astype(jnp.float32) @ b
    assert jnp.allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_compiler_params_selects_triton():
    params = _backend.compiler_params(num_warps=8, num_stages=2)
    assert params.num_warps == 8 and params.num_stages == 2


def test_kernel_preferred_hint_only_changes_the_default(monkeypatch):
    monkeypatch.delenv(_backend.ENV_VAR, raising=False)
    monkeypatch.setattr(_backend, "default_backend_is_cuda", lambda: True)
    assert _backend.resolve_implementation(None) == "triton"
    assert _backend.resolve_implementation(None, kernel_preferred=False) == "xla"
    assert _backend.resolve_implementation("triton", kernel_preferred=False) == "triton"
    monkeypatch.setenv(_backend.ENV_VAR, "triton")
    assert _backend.resolve_implementation(None, kernel_preferred=False) == "triton"
