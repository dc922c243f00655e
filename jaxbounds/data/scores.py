"""Data-pruning scores: EL2N and GraNd (Paul, Ganguli & Dziugaite, "Deep Learning on a Data
Diet: Finding Important Examples Early in Training", NeurIPS 2021, arXiv 2107.07075).

For a classifier with logits f_w(x) ∈ ℝ^C, softmax output p_w(x) = softmax(f_w(x)), one-hot
label e_y and cross-entropy ℓ(w; x, y) = −log p_w(x)_y, the two scores of an example (xᵢ, yᵢ):

    EL2N  (error L2 norm)    χ(xᵢ, yᵢ) = E_w ‖p_w(xᵢ) − e_{yᵢ}‖₂
    GraNd (gradient norm)    χ(xᵢ, yᵢ) = E_w ‖∇_w ℓ(w; xᵢ, yᵢ)‖₂

The gradient is over *all* parameters (every leaf of the params pytree, as one vector) and
E_w is the mean over independently trained (or initialised) runs, here the models of
``params_list``. The paper computes EL2N a few epochs into training (epoch 20 on CIFAR-10)
and GraNd at initialisation, each averaged over 10 runs, then keeps the examples of highest
score (the hardest) and discards the rest.

For a linear softmax layer f(x) = Wᵀx + b, ∂ℓ/∂f = p − e_y, so ∇_W ℓ = x (p − e_y)ᵀ and
∇_b ℓ = p − e_y, hence ‖∇ℓ‖₂² = ‖p − e_y‖₂² (‖x‖₂² + 1): GraNd = EL2N · √(‖x‖² + 1), model by
model and therefore also for the mean over models.

Both functions are pure and jitted per model (``apply_fn`` and ``batch_size`` are static, so
pass the same ``apply_fn`` object to reuse the compilation). Examples are processed in
fixed-size batches (``lax.map`` over the data padded to a multiple of the batch size with
copies of the last example, whose scores are dropped). GraNd takes per-example gradients
with ``vmap`` inside one batch and reduces each to its norm at once, so at most
``batch_size`` per-example gradients exist at any time, never ``n``.

Bad input raises ``ValueError``/``TypeError``: mismatched ``x``/``y`` lengths, non-integer
labels, labels outside ``[0, C)`` for the ``C`` logits of ``apply_fn``, an empty
``params_list``, a bad ``batch_size``. Labels that are traced values (the functions called
under an outer ``jax.jit``) cannot be checked: there an out-of-range label gives a NaN score
for that example; :func:`checked_el2n_scores` and :func:`checked_grand_scores` raise instead
(through ``jax.experimental.checkify``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxbounds._checks import check_callable, check_int, is_traced, make_checked, require
from jaxbounds._dtypes import as_compute

__all__ = [
    "el2n_scores",
    "grand_scores",
    "checked_el2n_scores",
    "checked_grand_scores",
    "DEFAULT_EL2N_BATCH_SIZE",
    "DEFAULT_GRAND_BATCH_SIZE",
]

ApplyFn = Callable[[Any, jax.Array], jax.Array]

DEFAULT_EL2N_BATCH_SIZE = 1024
DEFAULT_GRAND_BATCH_SIZE = 64


# --- argument checks -----------------------------------------------------------------------


def _models(params_list) -> list:
    """A Python list of params pytrees, from a list or a stacked pytree (leading model axis)."""
    if isinstance(params_list, list):
        if not params_list:
            raise ValueError("params_list must hold at least one params pytree, got an empty "
                             "list.")
        return params_list
    leaves = jax.tree_util.tree_leaves(params_list)
    if not leaves:
        raise ValueError("params_list must be a non-empty list of params pytrees or a stacked "
                         f"pytree with a leading model axis, got {type(params_list).__name__} "
                         "with no array leaves.")
    sizes = {int(np.shape(leaf)[0]) if np.ndim(leaf) else None for leaf in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("params_list, when not a Python list, must be a stacked pytree whose "
                         "leaves all share a leading model axis; got leading sizes "
                         f"{sorted(map(str, sizes))}. Wrap a single model's params in a list: "
                         "[params].")
    (count,) = sizes
    if count == 0:
        raise ValueError("params_list must stack at least one model, got a leading model axis "
                         "of size 0.")
    return [jax.tree_util.tree_map(lambda a, i=i: a[i], params_list) for i in range(count)]


def _inputs(apply_fn, models, x, y, batch_size):
    """Check the inputs; return (x, y, num_classes, batch_size) with batch_size clamped to n."""
    check_callable("apply_fn", apply_fn)
    batch_size = check_int("batch_size", batch_size, minimum=1)
    x = jnp.asarray(x)
    y = y if is_traced(y) else np.asarray(y)
    if x.ndim < 1:
        raise ValueError(f"x must have a leading example axis, got a scalar of shape {x.shape}.")
    if np.ndim(y) != 1:
        raise ValueError(f"y must be a 1-D array of integer labels [n], got shape "
                         f"{np.shape(y)}.")
    if not jnp.issubdtype(y.dtype, jnp.integer) or y.dtype == bool:
        raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}.")
    n = x.shape[0]
    if y.shape[0] != n:
        raise ValueError(f"x and y must hold the same number of examples, got x with {n} "
                         f"(shape {x.shape}) and y with {y.shape[0]}.")
    if n == 0:
        raise ValueError("x must hold at least one example, got 0.")
    batch_size = min(batch_size, n)
    probe = jax.ShapeDtypeStruct((batch_size, *x.shape[1:]), x.dtype)
    logits = jax.eval_shape(apply_fn, models[0], probe)
    if not (hasattr(logits, "shape") and len(logits.shape) == 2
            and logits.shape[0] == batch_size):
        shape = getattr(logits, "shape", type(logits).__name__)
        raise ValueError(f"apply_fn(params, x) must return logits of shape [batch, classes], "
                         f"got {shape} for a batch of {batch_size} examples.")
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"apply_fn(params, x) must return floating logits, got dtype "
                        f"{logits.dtype}.")
    num_classes = int(logits.shape[1])
    require("y", y, lambda v: (v >= 0) & (v < num_classes),
            f"class labels in [0, {num_classes}) for the {num_classes} logits of apply_fn")
    return x, jnp.asarray(y), num_classes, batch_size


# --- per-model kernels (jitted) ------------------------------------------------------------


def _batched(per_batch, x, y, batch_size: int):
    """Apply ``per_batch(xb, yb) -> [batch_size]`` over fixed-size batches (padded), -> [n]."""
    n = x.shape[0]
    num_batches = -(-n // batch_size)
    pad = num_batches * batch_size - n
    # Pad with copies of the last example (always a valid input for apply_fn); dropped below.
    x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
    y = jnp.concatenate([y, jnp.repeat(y[-1:], pad, axis=0)]) if pad else y
    xb = x.reshape(num_batches, batch_size, *x.shape[1:])
    yb = y.reshape(num_batches, batch_size)
    out = lax.map(lambda args: per_batch(*args), (xb, yb))
    return out.reshape(-1)[:n]


def _nan_for_bad_labels(scores, y, num_classes: int):
    valid = (y >= 0) & (y < num_classes)
    return jnp.where(valid, scores, jnp.nan)


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_classes", "batch_size"))
def _el2n_one_model(apply_fn, params, x, y, *, num_classes: int, batch_size: int):
    def per_batch(xb, yb):
        probs = jax.nn.softmax(as_compute(apply_fn(params, xb))[0], axis=-1)
        error = probs - jax.nn.one_hot(yb, num_classes, dtype=probs.dtype)
        return jnp.sqrt(jnp.sum(error * error, axis=-1))

    return _nan_for_bad_labels(_batched(per_batch, x, y, batch_size), y, num_classes)


def _tree_norm(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(as_compute(leaf)[0])) for leaf in leaves))


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_classes", "batch_size"))
def _grand_one_model(apply_fn, params, x, y, *, num_classes: int, batch_size: int):
    def example_loss(p, xi, yi):
        logits = as_compute(apply_fn(p, xi[None])[0])[0]
        return -jax.nn.log_softmax(logits)[yi]

    def example_grad_norm(xi, yi):
        # Reduced to a scalar inside the vmap: one batch of per-example gradients at a time.
        return _tree_norm(jax.grad(example_loss)(params, xi, yi))

    def per_batch(xb, yb):
        return jax.vmap(example_grad_norm)(xb, yb)

    return _nan_for_bad_labels(_batched(per_batch, x, y, batch_size), y, num_classes)


def _mean_over_models(one_model, apply_fn, params_list, x, y, batch_size):
    models = _models(params_list)
    x, y, num_classes, batch_size = _inputs(apply_fn, models, x, y, batch_size)
    total = None
    for params in models:
        scores = one_model(apply_fn, params, x, y, num_classes=num_classes,
                           batch_size=batch_size)
        total = scores if total is None else total + scores
    return total / len(models)


# --- public API ----------------------------------------------------------------------------


def el2n_scores(apply_fn: ApplyFn, params_list, x, y, *,
                batch_size: int = DEFAULT_EL2N_BATCH_SIZE) -> jax.Array:
    """EL2N scores ``E_w ‖softmax(f_w(x_i)) − onehot(y_i)‖₂``, one per example, shape ``[n]``.

    Args:
      apply_fn: ``apply_fn(params, x) -> logits [batch, classes]`` (e.g. ``model.apply``).
      params_list: a Python list of params pytrees (one per independent run), or one stacked
        pytree whose every leaf has a leading model axis. The scores are averaged over them.
      x: inputs ``[n, ...]``.
      y: integer class labels ``[n]`` in ``[0, classes)``.
      batch_size: examples per forward pass (bounds memory; does not change the result).

    Returns:
      ``[n]`` scores (float32, or float64 for float64 logits); higher = harder. Under an
      outer ``jit`` an out-of-range label gives NaN for that example (see
      :func:`checked_el2n_scores`).
    """
    return _mean_over_models(_el2n_one_model, apply_fn, params_list, x, y, batch_size)


def grand_scores(apply_fn: ApplyFn, params_list, x, y, *,
                 batch_size: int = DEFAULT_GRAND_BATCH_SIZE) -> jax.Array:
    """GraNd scores ``E_w ‖∇_w CE(f_w(x_i), y_i)‖₂`` over all parameters, shape ``[n]``.

    Per-example gradients are taken with ``vmap`` over one batch of ``batch_size`` examples at
    a time (``lax.map`` over the batches) and each is reduced to its norm at once, so the
    memory peak is about ``batch_size`` × (number of parameters), whatever ``n``.

    Args: as :func:`el2n_scores`; ``apply_fn`` is called on single-example batches
    ``[1, ...]`` under ``vmap``, so it must treat examples independently (no batch norm in
    training mode).

    Returns:
      ``[n]`` scores (float32, or float64 for float64 logits). Under an outer ``jit`` an
      out-of-range label gives NaN for that example (see :func:`checked_grand_scores`).
    """
    return _mean_over_models(_grand_one_model, apply_fn, params_list, x, y, batch_size)


def _checked(fn, default_batch_size: int):
    def checked(apply_fn: ApplyFn, params_list, x, y, *,
                batch_size: int = default_batch_size) -> jax.Array:
        models = _models(params_list)
        batch_size = check_int("batch_size", batch_size, minimum=1)
        n = int(np.shape(x)[0]) if np.ndim(x) else 1
        probe = jax.ShapeDtypeStruct((max(1, min(batch_size, n)), *np.shape(x)[1:]),
                                     jnp.result_type(x))
        num_classes = int(jax.eval_shape(apply_fn, models[0], probe).shape[-1])
        return make_checked(
            lambda models, x, y: fn(apply_fn, models, x, y, batch_size=batch_size),
            lambda models, x, y: [((y >= 0) & (y < num_classes),
                                   f"y must hold class labels in [0, {num_classes})")],
        )(models, x, y)

    checked.__name__ = f"checked_{fn.__name__}"
    checked.__doc__ = (f"Checked variant of ``{fn.__name__}``: traced out-of-range labels "
                       "raise (``checkify.JaxRuntimeError``) instead of giving NaN scores.\n\n"
                       f"{fn.__doc__}")
    return checked


checked_el2n_scores = _checked(el2n_scores, DEFAULT_EL2N_BATCH_SIZE)
checked_grand_scores = _checked(grand_scores, DEFAULT_GRAND_BATCH_SIZE)
