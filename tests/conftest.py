"""Suite-wide guards."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _x64_does_not_leak():
    """Float64 is enabled per test with ``with jax.enable_x64(True):`` (or a fixture doing
    that), never globally: a global switch silently changes the dtypes of every later test."""
    assert not jax.config.jax_enable_x64, "jax_enable_x64 was left on before this test"
    yield
    assert not jax.config.jax_enable_x64, "this test left jax_enable_x64 on"
