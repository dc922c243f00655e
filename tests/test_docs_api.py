"""Every public module (not package) of both packages has a section in the API reference."""

import pathlib
import pkgutil

import pytest

import jaxbounds
import pallas_kernels

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"


def public_modules(package):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            yield info.name


@pytest.mark.parametrize("module", sorted([*public_modules(jaxbounds),
                                           *public_modules(pallas_kernels)]))
def test_public_module_has_an_api_section(module):
    pages = "\n".join(p.read_text() for p in DOCS.glob("*.md"))
    assert f"::: {module}\n" in pages, f"add '::: {module}' to a page under docs/api/"
