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
        lipschitz_projection("spectral_hard_cap", w_max=1.0, norm="rms"),
    )
    updates, opt_state = tx.update(grads, opt_state, params)   # params is required
    params = optax.apply_updates(params, updates)

(:func:`with_projection` builds that chain.) Two caveats: (1) params + (Δ′ − params) is not
bit-exactly project(params + Δ) in floating point: the difference is a few ulps of the
parameter, far below the constraint tolerances; (2) any transform placed *after* it (e.g. a
learning-rate scale) would break the guarantee, so it must be last. The explicit alternative,
``params = project_params(optax.apply_updates(params, updates), ...)``, is also provided.

**Which leaves.** ``labels`` maps the params pytree to a pytree of per-leaf values: ``False``
or ``None`` (leave alone), ``True`` (constrain with ``w_max``), or a float (constrain with
that bound). Default (:func:`default_labels`): every leaf with ndim ≥ 2 except Flax
``nn.Embed`` tables (named ``embedding``). Flax kernels are ``[..., in, out]``
(``layout="flax"``, the default) and are transposed to ``[..., fan_out, fan_in]`` for the
constraint; leading dims are batch (e.g. stacked layers). A ``DenseGeneral`` kernel with
several input or output axes must be given a custom label/reshape by the caller.

**optax.contrib.muon (optax 0.2.8)** orthogonalises the momentum with 5 Newton–Schulz steps
(presets ``ns_coeffs='standard'`` (default) and ``'dion'``; the docstring's ``'muon'`` raises),
then scales by √max(1, fan_out/fan_in) and by the learning rate. The orthogonalised update's
singular values land in [0.68, 1.20] ('standard'; scalar supremum 1.2024) or [0.98, 1.15]
('dion'), not exactly 1; :func:`muon_update_bound` returns the resulting bound on the update's
norm per unit learning rate, the quantity the soft cap's coupling needs. The paper's Muon uses
momentum ``beta=0.9`` (optax default 0.95). ``adaptive=True`` rescales updates by a dual norm
and voids the bound.

**Bad updates.** If an update is not finite, the projection's state (its step count and the
power-iteration warm-start vectors) keeps its last finite values, so training can continue
after the NaN step (wrap the whole chain in ``optax.apply_if_finite`` to also skip the step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxbounds.lipschitz import constraints as C

__all__ = [
    "MUON_MAX_SINGULAR_VALUE",
    "LipschitzProjectionState",
    "default_labels",
    "lipschitz_projection",
    "muon_update_bound",
    "project_params",
    "with_projection",
]

# Supremum over x ∈ (0, 1] of the 5-step Newton–Schulz map in optax.contrib.muon (scalar sweep:
# 'standard' 1.2024, 'dion' 1.1450), rounded up by ~0.01 for float32 roundoff.
MUON_MAX_SINGULAR_VALUE = {"standard": 1.21, "dion": 1.155}

_POWER_METHODS = ("spectral_normalize", "spectral_hammer", "spectral_weight_decay")
_LAYOUTS = ("flax", "fan_out_fan_in")


class LipschitzProjectionState(NamedTuple):
    """``count``: steps taken (int32); ``vectors``: per-leaf warm-start left singular vectors
    (a tuple aligned with the flattened params; ``None`` where unused)."""

    count: jax.Array
    vectors: tuple


def _leaf_name(path) -> str | None:
    if not path:
        return None
    last = path[-1]
    for attr in ("key", "name", "idx"):
        if hasattr(last, attr):
            return str(getattr(last, attr))
    return None


def default_labels(params):
    """True for every leaf with ndim ≥ 2 except ones named ``embedding`` (Flax ``nn.Embed``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: bool(jnp.ndim(x) >= 2 and _leaf_name(path) != "embedding"), params)


def muon_update_bound(shape, *, preset: str = "standard", layout: str = "flax",
                      norm: str = "spectral") -> float:
    """Bound on ‖Δ‖/lr for optax.contrib.muon's update of a weight of ``shape`` (2-D).

    optax scales the orthogonalised momentum O (σ(O) ≤ s_max, :data:`MUON_MAX_SINGULAR_VALUE`)
    by √max(1, fan_out/fan_in) (its default, ``consistent_rms=None``). Hence
    σ_max(Δ)/lr ≤ s_max·√max(1, fan_out/fan_in), and in the RMS→RMS norm
    ‖Δ‖/lr ≤ s_max·max(1, √(fan_in/fan_out)).
    """
    if preset not in MUON_MAX_SINGULAR_VALUE:
        raise ValueError(
            f"preset must be one of {sorted(MUON_MAX_SINGULAR_VALUE)}, got {preset!r} "
            "(optax 0.2.8 has no 'muon' preset).")
    _check_layout(layout)
    if len(shape) < 2:
        raise ValueError(f"shape must have >= 2 dims, got {tuple(shape)}.")
    fan_in, fan_out = (shape[-2], shape[-1]) if layout == "flax" else (shape[-1], shape[-2])
    s_max = MUON_MAX_SINGULAR_VALUE[preset]
    spectral = s_max * max(1.0, fan_out / fan_in) ** 0.5
    if norm == "spectral":
        return spectral
    if norm == "rms":
        return spectral * (fan_in / fan_out) ** 0.5
    raise ValueError(f"norm must be 'spectral' or 'rms', got {norm!r}.")


def _check_layout(layout: str) -> None:
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}.")


def _resolve_constraint(constraint):
    if callable(constraint):
        return None, constraint
    fn = C.get_constraint(constraint)
    name = next(n for n, f in C.CONSTRAINTS.items() if f is fn)
    return name, fn


def _resolve_labels(labels, params, w_max, needs_bound=True):
    if labels is None:
        tree = default_labels(params)
    elif callable(labels):
        tree = labels(params)
    else:
        tree = labels
    leaves, treedef = jax.tree_util.tree_flatten(params)
    try:
        label_leaves = treedef.flatten_up_to(tree)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "labels must give a pytree with the same structure as params (one entry per "
            f"leaf: False/None, True or a float bound); got {tree!r}.") from err
    bounds = []
    for leaf, lab in zip(leaves, label_leaves, strict=True):
        if lab is None or lab is False:
            bounds.append(None)
            continue
        if jnp.ndim(leaf) < 2:
            raise ValueError(
                f"labels marks a leaf of shape {jnp.shape(leaf)} (ndim < 2) for a matrix "
                "constraint; only weights with ndim >= 2 can be constrained.")
        bound = w_max if lab is True else lab
        if needs_bound:
            C._check_positive("w_max", bound)
        bounds.append(True if bound is None else bound)
    return leaves, treedef, bounds


def _to_matrix(x, layout):
    return jnp.swapaxes(x, -1, -2) if layout == "flax" else x


def _build_projection(
    constraint: str | Callable,
    w_max: float | None = 1.0,
    *,
    labels: Any = None,
    layout: str = "flax",
    norm: str = "spectral",
    key: jax.Array | None = None,
    num_iters: int = 16,
    strength: float = 0.1,
    learning_rate: float | Callable | None = None,
    wd: float = 0.0,
    max_update_norm: float | str = "muon",
    constraint_kwargs: dict | None = None,
    group_same_shape: bool = True,
) -> tuple[Callable, Callable]:
    """Build (init_fn, project) shared by lipschitz_projection and project_params."""
    name, fn = _resolve_constraint(constraint)
    _check_layout(layout)
    C._check_norm(norm)
    if name != "spectral_weight_decay" and w_max is not None:
        C._check_positive("w_max", w_max)
    C._check_iters("num_iters", num_iters)
    uses_power = name in _POWER_METHODS
    if uses_power and key is None:
        raise ValueError(f"constraint {name!r} uses power iteration: pass key=jax.random.key(...)")
    if name == "spectral_soft_cap":
        if learning_rate is None:
            raise ValueError(
                "spectral_soft_cap needs learning_rate= (a float or the optimizer's schedule) "
                "to recompute its strength alpha each step.")
        if isinstance(max_update_norm, str) and max_update_norm not in ("muon", "muon_dion"):
            raise ValueError(
                "max_update_norm must be a number, 'muon' or 'muon_dion', got "
                f"{max_update_norm!r}.")
    extra = dict(constraint_kwargs or {})
    needs_bound = name not in ("spectral_weight_decay", "spectral_weight_decay_svd")

    def init_fn(params):
        leaves, _, bounds = _resolve_labels(labels, params, w_max, needs_bound)
        vectors = []
        keys = jax.random.split(key, len(leaves)) if uses_power else [None] * len(leaves)
        for leaf, bound, k in zip(leaves, bounds, keys, strict=True):
            if bound is None or not uses_power:
                vectors.append(None)
                continue
            mat_shape = _to_matrix(jnp.zeros(jnp.shape(leaf), jnp.float32), layout).shape
            u = jax.random.normal(k, mat_shape[:-1], jnp.float32)
            vectors.append(u / jnp.linalg.norm(u, axis=-1, keepdims=True))
        return LipschitzProjectionState(count=jnp.zeros([], jnp.int32), vectors=tuple(vectors))

    def _alpha(bound, shape, count):
        lr = learning_rate(count) if callable(learning_rate) else learning_rate
        if isinstance(max_update_norm, str):
            preset = "dion" if max_update_norm == "muon_dion" else "standard"
            mun = muon_update_bound(shape, preset=preset, layout=layout, norm=norm)
        else:
            mun = max_update_norm
        return C.soft_cap_alpha(bound, wd, lr, mun)

    def _project_leaf(w, bound, u, count):
        mat = _to_matrix(w, layout)
        new_u = None
        if name in ("spectral_normalize", "spectral_hammer"):
            mat, new_u = fn(mat, bound, u0=u, num_iters=num_iters, norm=norm,
                            return_vector=True, **extra)
        elif name == "spectral_weight_decay":
            mat, new_u = fn(mat, strength, u0=u, num_iters=num_iters, return_vector=True,
                            **extra)
        elif name in ("spectral_soft_cap", "spectral_soft_cap_svd"):
            mat = fn(mat, _alpha(bound, jnp.shape(w), count), norm=norm, **extra)
        elif name == "spectral_weight_decay_svd":
            mat = fn(mat, strength, **extra)
        elif name is None:  # user callable on [..., fan_out, fan_in]
            mat = fn(mat, bound, **extra)
        else:
            mat = fn(mat, bound, norm=norm, **extra)
        return _to_matrix(mat, layout).astype(w.dtype), new_u

    groupable = name is not None and name not in _POWER_METHODS and group_same_shape

    def project(params, new_params, state):
        """Projected leaves of ``new_params`` (labels read from ``params``) and new state."""
        leaves, treedef, bounds = _resolve_labels(labels, params, w_max, needs_bound)
        new_leaves = treedef.flatten_up_to(new_params)
        out, vectors = list(new_leaves), list(state.vectors)
        groups: dict = {}
        for i, (p, bound) in enumerate(zip(new_leaves, bounds, strict=True)):
            if bound is None:
                continue
            if groupable:  # stateless constraint: one batched call per (shape, dtype, bound)
                groups.setdefault((jnp.shape(p), jnp.result_type(p), bound), []).append(i)
                continue
            projected, new_u = _project_leaf(p, bound, vectors[i], state.count)
            out[i] = projected
            if new_u is not None:
                finite = jnp.all(jnp.isfinite(new_u))
                vectors[i] = jnp.where(finite, new_u, vectors[i])
        for (_, _, bound), idx in groups.items():
            if len(idx) == 1:
                out[idx[0]] = _project_leaf(new_leaves[idx[0]], bound, None, state.count)[0]
                continue
            stacked = jnp.stack([new_leaves[i] for i in idx])
            projected = _project_leaf(stacked, bound, None, state.count)[0]
            for j, i in enumerate(idx):
                out[i] = projected[j]
        new_state = LipschitzProjectionState(
            count=optax.safe_increment(state.count), vectors=tuple(vectors))
        return treedef, leaves, out, new_state

    return init_fn, project


def lipschitz_projection(
    constraint: str | Callable,
    w_max: float | None = 1.0,
    *,
    labels: Any = None,
    layout: str = "flax",
    norm: str = "spectral",
    key: jax.Array | None = None,
    num_iters: int = 16,
    strength: float = 0.1,
    learning_rate: float | Callable | None = None,
    wd: float = 0.0,
    max_update_norm: float | str = "muon",
    constraint_kwargs: dict | None = None,
    group_same_shape: bool = True,
) -> optax.GradientTransformationExtraArgs:
    """An optax transform that projects the *parameters* after the update (see module doc).

    Args:
      constraint: a name accepted by :func:`constraints.get_constraint` or a callable
        ``f(w, w_max) -> w`` on ``[..., fan_out, fan_in]`` matrices.
      w_max: the default bound (in ``norm``) for leaves labelled ``True``. Unused by
        ``spectral_weight_decay`` (which shrinks σ_max by ``strength`` instead).
      labels: which leaves to constrain (module doc); default :func:`default_labels`.
      layout: ``"flax"`` for ``[..., in, out]`` kernels, ``"fan_out_fan_in"`` otherwise.
      norm: ``"spectral"`` (σ_max ≤ w_max) or ``"rms"`` (√(fan_in/fan_out)·σ_max ≤ w_max).
      key: PRNG key for the initial power-iteration vectors (required by ``spectral_normalize``,
        ``spectral_hammer`` and ``spectral_weight_decay``; later steps warm-start).
      num_iters: power-iteration steps per update (warm started from the previous step).
      strength: λ of ``spectral_weight_decay``.
      learning_rate, wd, max_update_norm: the soft cap's coupling (:func:`soft_cap_alpha`):
        α is recomputed each step so that k = w_max(1 − wd) + lr·max_update_norm maps to
        w_max. ``learning_rate`` is a float or an optax schedule of the step count (pass the
        optimizer's); ``max_update_norm`` is a float in ``norm`` units or ``"muon"`` /
        ``"muon_dion"`` for :func:`muon_update_bound` per leaf.
      constraint_kwargs: extra keyword arguments for the constraint (e.g. ``num_steps`` or
        ``paper_coefficients`` of the hard cap).
      group_same_shape: for the stateless built-in constraints (caps, SVD variants), stack
        the leaves that share shape, dtype and bound and project them in one batched call
        (fewer, larger matrix products; the result is the same up to float roundoff).

    Returns:
      ``optax.GradientTransformationExtraArgs``; its ``update`` raises ``ValueError`` when
      ``params`` is not given.
    """
    init_fn, project = _build_projection(
        constraint, w_max, labels=labels, layout=layout, norm=norm, key=key,
        num_iters=num_iters, strength=strength, learning_rate=learning_rate, wd=wd,
        max_update_norm=max_update_norm, constraint_kwargs=constraint_kwargs,
        group_same_shape=group_same_shape)

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


def project_params(params, constraint, w_max=1.0, *, labels=None, layout: str = "flax",
                   norm: str = "spectral", key: jax.Array | None = None, **kwargs):
    """Project the constrained leaves of ``params`` once (e.g. at initialisation, or after
    ``optax.apply_updates`` as the explicit alternative to :func:`lipschitz_projection`).

    Power-iteration methods start cold from ``key`` (use ``num_iters`` generously, or the
    ``svd`` variants). For the soft cap pass ``learning_rate`` etc. as in
    :func:`lipschitz_projection`.
    """
    init_fn, project = _build_projection(constraint, w_max, labels=labels, layout=layout,
                                         norm=norm, key=key, **kwargs)
    treedef, _, projected, _ = project(params, params, init_fn(params))
    return treedef.unflatten(projected)
