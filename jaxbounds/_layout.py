"""The one weight-layout vocabulary of the package.

``layout="flax"`` (the default everywhere): a dense kernel is ``[..., in, out]``, as Flax
stores it, and a layer computes ``y = x @ W``. ``layout="torch"``: ``[..., out, in]``, as
PyTorch stores it, and ``y = x @ W.T``. Every function that takes weight matrices takes this
one keyword, so a square kernel is never read in the wrong orientation silently.
"""

from __future__ import annotations

from jaxbounds._checks import check_choice

LAYOUTS = ("flax", "torch")


def check_layout(layout: str) -> str:
    return check_choice("layout", layout, LAYOUTS)


def to_out_in(w, layout: str = "flax"):
    """``w`` as the matrix ``A`` of the map ``x -> A x`` (shape ``[..., out, in]``)."""
    check_layout(layout)
    return w if layout == "torch" else w.swapaxes(-1, -2)


def from_out_in(a, layout: str = "flax"):
    """Inverse of :func:`to_out_in`: ``[..., out, in]`` back to ``layout``."""
    check_layout(layout)
    return a if layout == "torch" else a.swapaxes(-1, -2)
