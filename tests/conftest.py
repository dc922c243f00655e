"""Suite-wide guards and the 8-device subprocess harness."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import pytest


@pytest.fixture(autouse=True)
def _x64_does_not_leak():
    """Float64 is enabled per test with ``with jax.enable_x64(True):`` (or a fixture doing
    that), never globally: a global switch silently changes the dtypes of every later test."""
    assert not jax.config.jax_enable_x64, "jax_enable_x64 was left on before this test"
    yield
    assert not jax.config.jax_enable_x64, "this test left jax_enable_x64 on"


REPO = Path(__file__).resolve().parents[1]


def run_on_8_devices(script: str, *, timeout: int = 300) -> dict:
    """Run ``script`` in a fresh Python with 8 fake CPU devices; return its RESULT JSON.

    A mesh of several CPU devices needs ``--xla_force_host_platform_device_count`` before
    jax starts, so multi-device checks run in a subprocess. The script prints one line
    ``RESULT <json>``; this returns the parsed JSON (the last such line).
    """
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAXBOUNDS_IMPLEMENTATION", None)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture
def eight_devices():
    """The 8-device subprocess harness, :func:`run_on_8_devices`, as a fixture."""
    return run_on_8_devices


# Test modules that also run on the newest jax the supported range allows (`make test`'s
# newest-jax stage): every jaxpr walker, every kernel in interpret mode, and the modules.
NEWEST_JAX_MODULES = (
    "test_verify_", "test_certified_training", "test_kernels", "_kernel.py", "test_backend",
    "_layers", "test_self_attention", "test_lipschitz_transformer", "test_package",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(part in item.nodeid.split("::")[0] for part in NEWEST_JAX_MODULES):
            item.add_marker(pytest.mark.newest_jax)
