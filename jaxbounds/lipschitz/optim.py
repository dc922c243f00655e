"""Projecting parameters onto a spectral-norm ball after each optimizer step, as an optax shell.

Newhouse et al., "Training Transformers with Enforced Lipschitz Constants" (arXiv 2507.13338):
take an optimizer step, then project every constrained weight matrix back onto its
constraint set (:mod:`jaxbounds.lipschitz.constraints`).

**Why this is not a plain gradient transform.** A projection acts on the *new parameters*
W + Δ, not on the update Δ. :func:`lipschitz_projection` returns an optax transform whose
``update(updates, state, params)`` **requires ``params``** and emits

    Δ′ = project(params + Δ) − params,

so that ``optax.apply_updates(params, Δ′)`` = project(params + Δ). Put it LAST in the chain::

    tx = optax.chain(
        optax.contrib.muon(learning_rate=schedule, beta=0.9),   # or optax.adamw(...)
        lipschitz_projection("spectral_hard_cap", 1.0, norm="rms"),
    )
    updates, opt_state = tx.update(grads, opt_state, params)   # params is required
    params = optax.apply_updates(params, updates)

(:func:`with_projection` builds that chain.) Two caveats: (1) params + (Δ′ − params) is not
bit-exactly project(params + Δ) in floating point: the difference is a few ulps of the
parameter, far below the constraint tolerances; (2) any transform placed *after* it (e.g. a
learning-rate scale) would break the guarantee, so it must be last. The explicit alternative,
``params = project_params(optax.apply_updates(params, updates), ...)``, is also provided.

**A tree map over one signature.** Every constraint of
:mod:`~jaxbounds.lipschitz.constraints` (and any callable of the same form) is
``f(w, w_max, *, key=None, layout="flax", **options)``; the projection calls it on every
labelled leaf with that leaf's bound, like ``optax.projections`` over a params tree. Leaves
that share shape, dtype and bound are stacked into one batched call. The power-iteration
constraints (:data:`~jaxbounds.lipschitz.constraints.WARM_STARTED`) keep their start
vectors in the state and warm-start from them at every step.

**Which leaves.** ``labels`` is a function of the params (default :func:`default_labels`),
or a tree, of per-leaf values: ``False`` or ``None`` (leave alone), ``True`` (constrain with
``w_max``), or a float (constrain with that bound). :func:`default_labels` marks every leaf
with ndim ≥ 2 except embedding tables (leaves named ``embedding``); names are read from
linen dicts and ``nnx.State`` alike (:mod:`jaxbounds._labels`). Kernels are Flax
``[..., in, out]`` (``layout="flax"``, the default) or ``[..., out, in]``
(``layout="torch"``); leading dims are batch (e.g. stacked layers). A ``DenseGeneral``
kernel with several input or output axes must be given a custom label/reshape by the
caller.

**optax.contrib.muon (optax 0.2.8)** orthogonalises the momentum with 5 Newton–Schulz steps
(presets ``ns_coeffs='standard'`` (default) and ``'dion'``; the docstring's ``'muon'`` raises),
then scales by √max(1, fan_out/fan_in) and by the learning rate. The orthogonalised update's
singular values land in [0.68, 1.20] ('standard'; scalar supremum 1.2024) or [0.98, 1.15]
('dion'), not exactly 1; :func:`muon_update_bound` returns the resulting bound on the update's
norm per unit learning rate, the quantity the soft cap's coupling needs. The paper's Muon uses
momentum ``beta=0.9`` (optax default 0.95). ``adaptive=True`` rescales updates by a dual norm
and voids the bound.

**Bad updates.** If an update is not finite, the projection's warm-start vectors keep their
last finite values, so training can continue
after the NaN step (wrap the whole chain in ``optax.apply_if_finite`` to also skip the step).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from numbers import Real
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbounds import _linalg
from jaxbounds._checks import check_callable, check_choice
from jaxbounds._labels import label_tree
from jaxbounds._layout import check_layout, to_out_in
from jaxbounds.lipschitz import constraints as C

__all__ = [
    "MUON_MAX_SINGULAR_VALUE",
    "LipschitzProjectionState",
    "default_labels",
    "lipschitz_projection",
    "muon_update_bound",
    "project_params",
    "spectral_soft_cap_to_bound",
    "with_projection",
]

# Supremum over x ∈ (0, 1] of the 5-step Newton–Schulz map in optax.contrib.muon (scalar sweep:
# 'standard' 1.2024, 'dion' 1.1450), rounded up by ~0.01 for float32 roundoff.
MUON_MAX_SINGULAR_VALUE = {"standard": 1.21, "dion": 1.155}
_MUON_PRESETS = {"muon": "standard", "muon_dion": "dion"}


class LipschitzProjectionState(NamedTuple):
    """``count``: steps taken (int32); ``vectors``: per-leaf warm-start right singular vectors
    (a tuple aligned with the flattened params; ``None`` where unused)."""

    count: jax.Array
    vectors: tuple


def default_labels(params):
    """True for every leaf with ndim ≥ 2 except ones named ``embedding`` (embedding tables)."""
    return label_tree(params, lambda name, x: bool(jnp.ndim(x) >= 2 and name != "embedding"))


def muon_update_bound(shape, *, preset: str = "standard", layout: str = "flax",
                      norm: str = "spectral") -> float:
    """Bound on ‖Δ‖/lr for optax.contrib.muon's update of a weight of ``shape`` (>= 2-D).

    optax scales the orthogonalised momentum O (σ(O) ≤ s_max, :data:`MUON_MAX_SINGULAR_VALUE`)
    by √max(1, fan_out/fan_in) (its default, ``consistent_rms=None``). Hence
    σ_max(Δ)/lr ≤ s_max·√max(1, fan_out/fan_in), and in the RMS→RMS norm
    ‖Δ‖/lr ≤ s_max·max(1, √(fan_in/fan_out)). optax 0.2.8 has no ``'muon'`` preset.
    """
    check_choice("preset", preset, MUON_MAX_SINGULAR_VALUE)
    check_layout(layout)
    check_choice("norm", norm, C.NORMS)
    if len(shape) < 2:
        raise ValueError(f"shape must have >= 2 dims, got {tuple(shape)}.")
    fan_in, fan_out = (shape[-2], shape[-1]) if layout == "flax" else (shape[-1], shape[-2])
    spectral = MUON_MAX_SINGULAR_VALUE[preset] * max(1.0, fan_out / fan_in) ** 0.5
    return spectral if norm == "spectral" else spectral * (fan_in / fan_out) ** 0.5


def spectral_soft_cap_to_bound(w, w_max, *, key=None, layout: str = "flax",
                               norm: str = "spectral", learning_rate, wd: float = 0.0,
                               max_update_norm: float | str = "muon", precision=_linalg.HIGHEST):
    """The soft cap as a constraint with bound ``w_max``: α = :func:`constraints.soft_cap_alpha`
    (w_max, wd, learning_rate, max_update_norm), then :func:`constraints.spectral_soft_cap`.

    The projection uses it for ``"spectral_soft_cap"``, so that α follows the learning rate:
    k = w_max(1 − wd) + lr·max_update_norm maps to w_max. ``max_update_norm`` is a float in
    ``norm`` units, or ``"muon"`` / ``"muon_dion"`` for :func:`muon_update_bound` of ``w``.
    """
    if isinstance(max_update_norm, str):
        check_choice("max_update_norm", max_update_norm, _MUON_PRESETS)
        max_update_norm = muon_update_bound(jnp.shape(w), preset=_MUON_PRESETS[max_update_norm],
                                            layout=layout, norm=norm)
    alpha = C.soft_cap_alpha(w_max, wd, learning_rate, max_update_norm)
    return C.spectral_soft_cap(w, alpha, key=key, layout=layout, norm=norm,
                               precision=precision)


# Constraints whose second argument, in the projection, is a bound rather than a strength.
_BOUND_FORMS = {C.spectral_soft_cap: spectral_soft_cap_to_bound}


def _resolve_constraint(constraint) -> Callable:
    fn = C.get_constraint(constraint) if isinstance(constraint, str) else constraint
    return _BOUND_FORMS.get(check_callable("constraint", fn), fn)


def _at_step(options: dict, count) -> dict:
    """Options with every callable (a schedule of the step count) evaluated at ``count``."""
    return {k: v(count) if callable(v) else v for k, v in options.items()}


def _build_projection(constraint, w_max, labels, key, layout, group_same_shape, options):
    """``(init_fn, project)`` shared by :func:`lipschitz_projection` and :func:`project_params`."""
    fn = _resolve_constraint(constraint)
    check_layout(layout)
    try:  # every argument checked now: the constraint on a 2×2 identity, schedules at step 0
        inspect.signature(fn).bind(None, w_max, layout=layout, **options)
        fn(jnp.eye(2), w_max, layout=layout, **_at_step(options, 0))
    except TypeError as err:
        raise TypeError(f"constraint {constraint!r} with options {sorted(options)}: {err}") \
            from err
    warm = fn in C.WARM_STARTED
    label_fn = default_labels if labels is None else labels if callable(labels) else (
        lambda _: labels)

    def leaf_bounds(params):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        tree = label_fn(params)
        try:
            marks = treedef.flatten_up_to(tree)
        except (ValueError, TypeError) as err:
            raise ValueError(
                "labels must give a pytree with the structure of params (one entry per leaf: "
                f"False/None, True or a float bound); got {tree!r}.") from err
        bounds = [None if m is None or m is False else w_max if m is True else m for m in marks]
        for leaf, bound in zip(leaves, bounds, strict=True):
            if bound is not None and jnp.ndim(leaf) < 2:
                raise ValueError(
                    f"labels marks a leaf of shape {jnp.shape(leaf)} (ndim < 2) for a matrix "
                    "constraint; only weights with ndim >= 2 can be constrained.")
        return leaves, treedef, bounds

    def init_fn(params):
        leaves, _, bounds = leaf_bounds(params)
        keys = list(jax.random.split(key, len(leaves))) if key is not None else [None] * len(
            leaves)
        vectors = tuple(
            _linalg.power_iteration(to_out_in(leaf, layout), num_iters=1, key=k)[1]
            if warm and bound is not None else None
            for leaf, bound, k in zip(leaves, bounds, keys, strict=True))
        return LipschitzProjectionState(count=jnp.zeros([], jnp.int32), vectors=vectors)

    def project(params, new_params, state):
        """Projected leaves of ``new_params`` (labels read from ``params``) and new state."""
        leaves, treedef, bounds = leaf_bounds(params)
        new_leaves = treedef.flatten_up_to(new_params)
        opts = _at_step(options, state.count)
        out, vectors = list(new_leaves), list(state.vectors)
        groups: dict = {}
        for i, (leaf, bound) in enumerate(zip(new_leaves, bounds, strict=True)):
            if bound is None:
                continue
            if warm:
                out[i], v = fn(leaf, bound, layout=layout, v0=vectors[i], return_vector=True,
                               **opts)
                vectors[i] = jnp.where(jnp.all(jnp.isfinite(v)), v, vectors[i])
                continue
            same = group_same_shape and isinstance(bound, Real)
            groups.setdefault((jnp.shape(leaf), jnp.result_type(leaf), bound) if same else i,
                              []).append(i)
        for idx in groups.values():
            batch = jnp.stack([new_leaves[i] for i in idx])
            projected = fn(batch, bounds[idx[0]], layout=layout, **opts)
            for j, i in enumerate(idx):
                out[i] = projected[j]
        new_state = LipschitzProjectionState(
            count=optax.safe_increment(state.count), vectors=tuple(vectors))
        return treedef, leaves, out, new_state

    return init_fn, project


def lipschitz_projection(
    constraint: str | Callable,
    w_max: float = 1.0,
    *,
    labels: Any = None,
    key: jax.Array | None = None,
    layout: str = "flax",
    group_same_shape: bool = True,
    **options,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform that projects the *parameters* after the update (see module doc).

    Args:
      constraint: a name accepted by :func:`constraints.get_constraint` or a callable with
        the constraints' signature ``f(w, w_max, *, key=None, layout="flax", **options)``.
      w_max: the bound (in ``norm``) for leaves labelled ``True``; for
        ``spectral_weight_decay`` it is the strength λ ∈ [0, 1] instead. For
        ``"spectral_soft_cap"`` it is a bound too: α is derived from it each step
        (:func:`spectral_soft_cap_to_bound`, which needs ``learning_rate=``).
      labels: which leaves to constrain (module doc): a function of the params (default
        :func:`default_labels`) or a tree.
      key: PRNG key for the start vectors of the power-iteration constraints (optional: the
        start is deterministic without it; later steps warm-start from the state). The
        constraint itself is called as ``f(w, bound, layout=layout, **options)`` (plus
        ``v0``/``return_vector`` for the power-iteration constraints).
      layout: ``"flax"`` for ``[..., in, out]`` kernels, ``"torch"`` for ``[..., out, in]``.
      group_same_shape: stack the leaves that share shape, dtype and bound and project them
        in one batched call (fewer, larger matrix products; the same result up to float
        roundoff). Power-iteration constraints always run per leaf (each has its vector).
      **options: keyword arguments of the constraint, e.g. ``norm="rms"``, ``num_iters`` of
        the power iteration, ``num_steps`` or ``paper_coefficients`` of the hard cap,
        ``learning_rate``, ``wd``, ``max_update_norm`` of the soft cap. An option given as a
        callable is a schedule of the step count (as optax's learning rates), evaluated at
        every update: pass the optimizer's schedule as ``learning_rate``.

    Returns:
      ``optax.GradientTransformationExtraArgs``; its ``update`` raises ``ValueError`` when
      ``params`` is not given. Arguments are checked when the transform is built.
    """
    init_fn, project = _build_projection(constraint, w_max, labels, key, layout,
                                         group_same_shape, options)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(
                "lipschitz_projection projects parameters: call tx.update(updates, state, "
                "params) with params (it emits project(params + updates) - params).")
        new_params = jax.tree.map(lambda p, d: p + d, params, updates)
        treedef, leaves, projected, new_state = project(params, new_params, state)
        upd_leaves = treedef.flatten_up_to(updates)
        out = [d if q is n else (q - p).astype(d.dtype)
               for p, d, q, n in zip(leaves, upd_leaves, projected,
                                     treedef.flatten_up_to(new_params), strict=True)]
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def with_projection(optimizer: optax.GradientTransformation, constraint, w_max=1.0,
                    **kwargs) -> optax.GradientTransformationExtraArgs:
    """``optax.chain(optimizer, lipschitz_projection(constraint, w_max, **kwargs))``.

    E.g. ``with_projection(optax.contrib.muon(lr, beta=0.9), "spectral_hard_cap", 1.0,
    norm="rms")``. Remember to pass ``params`` to ``update``.
    """
    return optax.chain(optimizer, lipschitz_projection(constraint, w_max, **kwargs))


def project_params(params, constraint, w_max=1.0, *, labels=None, key: jax.Array | None = None,
                   layout: str = "flax", group_same_shape: bool = True, **options):
    """Project the constrained leaves of ``params`` once (e.g. at initialisation, or after
    ``optax.apply_updates`` as the explicit alternative to :func:`lipschitz_projection`).

    Arguments as for :func:`lipschitz_projection`. Power-iteration methods start cold (use
    ``num_iters`` generously, or the ``svd`` variants); schedules are taken at step 0.
    """
    init_fn, project = _build_projection(constraint, w_max, labels, key, layout,
                                         group_same_shape, options)
    treedef, _, projected, _ = project(params, params, init_fn(params))
    return treedef.unflatten(projected)
