"""Turn a trained linen model's ``nn.Dense`` params into DoRA params, and run it.

``to_dora_params`` walks a params tree and, for every Dense-like layer (a dict with a 2-D
``kernel``) whose '/'-joined path passes ``include``, adds ``kernel_sq_norm``, ``lora_a``,
``lora_b`` (zero) and ``magnitude`` (= column norms of the kernel, float32). The adapted layers then
equal the base layers exactly (g = 1).

Two ways to use the result:

* a model whose layers are :class:`DoRADense` (same names and base params as ``nn.Dense``);
* the *unmodified* model, applied under :func:`dora_interceptor`, which routes every
  ``nn.Dense`` that owns ``lora_a`` through :func:`dora_linear` (``flax.linen.intercept_methods``).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbounds.adapters.dora.dense import DoRADense, default_lora_a_init
from jaxbounds.adapters.dora.functional import column_sq_norm, dora_linear, lora_scale

Include = str | Iterable[str] | Callable[[str], bool] | None


def _include_fn(include: Include) -> Callable[[str], bool]:
    if include is None:
        return lambda path: True
    if callable(include):
        return include
    if isinstance(include, str):
        include = [include]
    try:
        patterns = [re.compile(p) for p in include]
    except (TypeError, re.error) as err:
        raise TypeError(
            "include must be None, a regex string, a sequence of regex strings or a "
            f"callable(path) -> bool, got {include!r} ({err})."
        ) from err
    return lambda path: any(p.search(path) for p in patterns)


def _is_dense(node: Any) -> bool:
    return (
        isinstance(node, Mapping)
        and "kernel" in node
        and hasattr(node["kernel"], "ndim")
        and node["kernel"].ndim == 2
        and "lora_a" not in node
    )


def to_dora_params(
    params,
    *,
    rank: int,
    alpha: float,
    key,
    include: Include = None,
    use_rslora: bool = False,
    lora_a_init: Callable = default_lora_a_init,
):
    """DoRA params for the Dense layers of ``params`` chosen by ``include``.

    Args:
      params: a linen params tree (with or without the top-level ``"params"`` key).
      rank: the LoRA rank r; 1 ≤ r ≤ min(d_in, d_out) for every chosen layer.
      alpha: LoRA α. The scale α/r is not stored in the params: give the same α to
        ``DoRADense`` or :func:`dora_interceptor`. It is checked here (α > 0).
      key: a ``jax.random`` key for ``lora_a``; each layer gets ``fold_in(key, i)``.
      include: None (every Dense), a regex or regexes searched in the layer path
        (e.g. ``"attn|mlp"``), or a callable ``path -> bool``.
      use_rslora: checked with α and r like ``lora_scale``.
      lora_a_init: initialiser for ``lora_a``.

    Returns:
      A new tree of the input's type; the base leaves are the same arrays.

    Raises:
      ValueError: a bad rank or α, or when no layer matched ``include``.
    """
    lora_scale(alpha, rank, use_rslora=use_rslora)  # validates rank and alpha
    chosen = _include_fn(include)
    frozen_input = isinstance(params, flax.core.FrozenDict)
    tree = flax.core.unfreeze(params) if frozen_input else params
    counter = [0]

    def convert(node, path):
        if _is_dense(node) and chosen(path):
            kernel = node["kernel"]
            d_in, d_out = kernel.shape
            if rank > min(d_in, d_out):
                raise ValueError(
                    f"rank must be <= min(d_in, d_out) = {min(d_in, d_out)} for layer "
                    f"{path!r} with kernel {tuple(kernel.shape)}, got {rank}."
                )
            sq = column_sq_norm(kernel)
            layer_key = jax.random.fold_in(key, counter[0])
            counter[0] += 1
            out = dict(node)
            out["kernel_sq_norm"] = sq
            out["lora_a"] = lora_a_init(layer_key, (d_in, rank), kernel.dtype)
            out["lora_b"] = jnp.zeros((rank, d_out), kernel.dtype)
            out["magnitude"] = jnp.sqrt(sq)  # float32: g = m / n is exactly 1 at init
            return out
        if isinstance(node, Mapping):
            return {k: convert(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}
        return node

    result = convert(tree, "")
    if counter[0] == 0:
        raise ValueError(f"include={include!r} matched no Dense layer (a dict with a 2-D kernel).")
    return flax.core.freeze(result) if frozen_input else result


@contextlib.contextmanager
def dora_interceptor(
    alpha: float,
    *,
    use_rslora: bool = False,
    detach_norm: bool = True,
    implementation: str | None = None,
):
    """Apply an unmodified linen model with DoRA params from :func:`to_dora_params`.

    Inside the context, every ``nn.Dense.__call__`` whose params hold ``lora_a`` computes
    ``dora_linear`` (+ bias) with the frozen base; other Dense layers run as usual::

        params = to_dora_params(params, rank=8, alpha=16.0, key=key, include="mlp")
        with dora_interceptor(alpha=16.0):
            y = model.apply(params, x)

    A converted layer that is not an ``nn.Dense`` (e.g. ``nn.DenseGeneral``) raises a
    TypeError rather than being silently ignored. The interception happens at trace time: a
    function jitted inside the context keeps the DoRA computation in its compiled cache, so
    jit the function that opens the context (or call it inside the context every time).
    ``nn.Dense``'s ``precision`` and ``dot_general`` options are not used on adapted layers.
    """

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__" or isinstance(module, DoRADense):
            return next_fun(*args, **kwargs)
        if not module.has_variable("params", "lora_a"):
            return next_fun(*args, **kwargs)
        if not isinstance(module, nn.Dense):
            raise TypeError(
                f"dora_interceptor routes only flax.linen.Dense layers, but module "
                f"{'/'.join(module.path) or module.name!r} of type {type(module).__name__} "
                "holds DoRA params (lora_a); exclude it with to_dora_params(include=...)."
            )
        if len(args) + len(kwargs) != 1:
            raise TypeError(f"nn.Dense takes one input; got args={args!r}, kwargs={kwargs!r}.")
        x = args[0] if args else next(iter(kwargs.values()))
        get = lambda name: module.get_variable("params", name)
        a = get("lora_a")
        scale = lora_scale(alpha, a.shape[1], use_rslora=use_rslora)
        kernel = jax.lax.stop_gradient(get("kernel"))
        sq_norm = (
            jax.lax.stop_gradient(get("kernel_sq_norm"))
            if module.has_variable("params", "kernel_sq_norm")
            else None
        )
        x, kernel, a, b = nn.dtypes.promote_dtype(x, kernel, a, get("lora_b"), dtype=module.dtype)
        y = dora_linear(
            x, kernel, a, b, get("magnitude"), scale,
            detach_norm=detach_norm, w0_sq_norm=sq_norm, implementation=implementation,
        )
        if module.use_bias:
            y = y + jax.lax.stop_gradient(get("bias")).astype(y.dtype)
        return y

    with nn.intercept_methods(intercept):
        yield
