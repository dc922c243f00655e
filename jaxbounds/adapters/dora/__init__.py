"""DoRA with factored norms: functions, a fused Pallas GEMM, a linen layer, optax wiring.

See ``docs/dora.md``. Papers: DoRA (arXiv 2402.09353); "Scaling DoRA" (arXiv 2603.22276).
"""

from jaxbounds.adapters.dora.convert import dora_interceptor, to_dora_params
from jaxbounds.adapters.dora.dense import ADAPTER_PARAM_NAMES, BASE_PARAM_NAMES, DoRADense
from jaxbounds.adapters.dora.functional import (
    check_dora_shapes,
    column_sq_norm,
    dora_column_norm,
    dora_column_norm_dense,
    dora_delta,
    dora_linear,
    dora_linear_dense,
    dora_scale,
    lora_scale,
)
from jaxbounds.adapters.dora.optim import adapter_labels, freeze_base

__all__ = [
    "ADAPTER_PARAM_NAMES",
    "BASE_PARAM_NAMES",
    "DoRADense",
    "adapter_labels",
    "check_dora_shapes",
    "column_sq_norm",
    "dora_column_norm",
    "dora_column_norm_dense",
    "dora_delta",
    "dora_interceptor",
    "dora_linear",
    "dora_linear_dense",
    "dora_scale",
    "freeze_base",
    "lora_scale",
    "to_dora_params",
]
