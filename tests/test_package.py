"""The top-level package gives lazy access to every subpackage."""

import importlib
import subprocess
import sys

import pytest

import jaxbounds


@pytest.mark.parametrize("name", jaxbounds.__all__)
def test_every_subpackage_is_reachable_from_the_top_level(name):
    module = getattr(jaxbounds, name)
    assert module is importlib.import_module(f"jaxbounds.{name}")
    assert name in dir(jaxbounds)


def test_verify_function_through_attribute_access():
    assert callable(jaxbounds.verify.interval_bounds)


def test_import_is_lazy():
    code = "import sys, jaxbounds; print('jaxbounds.verify' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        jaxbounds.nonsense  # noqa: B018
