"""The layer matrices of a feed-forward network, read in the package's weight layout."""

from __future__ import annotations

from jaxbounds._checks import check_array, check_sequence
from jaxbounds._layout import check_layout, to_out_in


def layer_matrices(weights, layout: str, *, finite: bool = False) -> list:
    """The matrices W_k ``[out, in]`` (y = W_k x) of a list of layer weights.

    ``weights``: a non-empty list of 2-D arrays, Flax kernels ``[in, out]``
    (``layout="flax"``) or ``[out, in]`` matrices (``layout="torch"``); each layer's input
    size must be the previous layer's output size. ``finite``: refuse NaN or infinity.
    """
    check_layout(layout)
    mats = []
    for k, w in enumerate(check_sequence("weights", weights, nonempty=True)):
        w = check_array(f"weights[{k}]", w, ndim=2, kind="numeric", finite=finite)
        mats.append(to_out_in(w, layout))
        if k and mats[k].shape[1] != mats[k - 1].shape[0]:
            raise ValueError(
                f"weights[{k}] has fan_in {mats[k].shape[1]} but weights[{k - 1}] has fan_out "
                f"{mats[k - 1].shape[0]} (with layout={layout!r} a weight is "
                f"{'[in, out]' if layout == 'flax' else '[out, in]'})."
            )
    return mats
