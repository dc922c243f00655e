"""``DoRADense``: a drop-in for ``flax.linen.Dense`` whose base kernel is frozen.

A thin shell over :func:`jaxbounds.adapters.dora.functional.dora_linear`. Parameters, in the
Flax layout, under the same module name an ``nn.Dense`` would have:

* ``kernel`` [d_in, d_out] and ``bias`` [d_out]: the base layer, frozen (``stop_gradient``
  here, and ``freeze_base`` leaves them bit-identical under any optax optimizer);
* ``kernel_sq_norm`` [d_out]: the cached colsum(W₀ ⊙ W₀), frozen with the base;
* ``lora_a`` [d_in, r], ``lora_b`` [r, d_out] (zero at init) and ``magnitude`` [d_out]
  (= ‖W₀[:, j]‖ at init, float32 whatever ``param_dtype`` is): the adapter.

At initialisation the layer equals the base layer exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbounds.adapters.dora.functional import column_sq_norm, dora_linear, lora_scale

BASE_PARAM_NAMES = ("kernel", "bias", "kernel_sq_norm")
ADAPTER_PARAM_NAMES = ("lora_a", "lora_b", "magnitude")


def default_lora_a_init(key, shape, dtype=jnp.float32):
    """Kaiming-uniform with a = √5 over fan-in, as PEFT initialises lora_A: U(±1/√d_in)."""
    bound = 1.0 / jnp.sqrt(shape[0])
    return jax.random.uniform(key, shape, dtype, -bound, bound)


class DoRADense(nn.Module):
    """DoRA-adapted dense layer: y = g ⊙ (x·W₀ + s·(xA)·B) + bias.

    Attributes:
      features: d_out.
      rank: r, with 1 ≤ r ≤ min(d_in, d_out).
      alpha: LoRA α; the scale is α/r (α/√r with ``use_rslora``).
      use_bias, dtype, param_dtype, kernel_init, bias_init: as for ``nn.Dense``.
      detach_norm: treat the column norm as a constant in the backward pass (default).
      implementation: for the fused GEMM ("xla" | "triton" | "interpret" | None).
    """

    features: int
    rank: int
    alpha: float = 1.0
    use_rslora: bool = False
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()
    lora_a_init: Callable = default_lora_a_init
    detach_norm: bool = True
    implementation: str | None = None

    @nn.compact
    def __call__(self, x):
        d_in = x.shape[-1]
        if not isinstance(self.features, int) or self.features <= 0:
            raise ValueError(f"features must be a positive int, got {self.features!r}.")
        if not isinstance(self.rank, int) or not 1 <= self.rank <= min(d_in, self.features):
            raise ValueError(
                f"rank must be an int in [1, min(d_in, features)] = [1, "
                f"{min(d_in, self.features)}], got {self.rank!r}."
            )
        scale = lora_scale(self.alpha, self.rank, use_rslora=self.use_rslora)
        kernel = self.param("kernel", self.kernel_init, (d_in, self.features), self.param_dtype)
        sq_norm = self.param("kernel_sq_norm", lambda _: column_sq_norm(kernel))
        a = self.param("lora_a", self.lora_a_init, (d_in, self.rank), self.param_dtype)
        b = self.param("lora_b", nn.initializers.zeros_init(), (self.rank, self.features),
                       self.param_dtype)
        # m is kept in float32 whatever param_dtype is, so that g = m / n is exactly 1 at init.
        magnitude = self.param("magnitude", lambda _: jnp.sqrt(sq_norm))
        kernel, sq_norm = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(sq_norm)
        x, kernel, a, b = nn.dtypes.promote_dtype(x, kernel, a, b, dtype=self.dtype)
        y = dora_linear(
            x, kernel, a, b, magnitude, scale,
            detach_norm=self.detach_norm, w0_sq_norm=sq_norm,
            implementation=self.implementation,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + jax.lax.stop_gradient(bias).astype(y.dtype)
        return y
