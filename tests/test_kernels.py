"""Every registered Pallas kernel, in interpret mode, against its reference: outputs and VJPs."""

import jax
import pytest

from pallas_kernels.checking import check_kernel, relative_error
from pallas_kernels.registry import KERNELS, families


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


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_xla_path_is_the_reference(name):
    check = check_kernel(KERNELS[name], jax.random.PRNGKey(2), "small", "xla")
    assert check.ok, check


def test_relative_error_rejects_nan_and_shape_mismatch():
    import numpy as np

    assert relative_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])) == float("inf")
    assert relative_error(np.ones(3), np.ones(4)) == float("inf")
    assert relative_error(np.ones(3), np.ones(3)) == 0.0
