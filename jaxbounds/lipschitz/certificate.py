"""Certified Lipschitz upper bounds of :class:`LipschitzMLP` and :class:`LipschitzTransformer`.

Newhouse et al., "Training Transformers with Enforced Lipschitz Constants", arXiv 2507.13338.
The paper composes the model's bound block by block; we derive every factor ourselves (see
``docs/lipschitz.md`` for the full derivation) and compute every spectral norm as an upper
bound: an exact SVD in float64, inflated by an outward margin
(:func:`jaxbounds._linalg.spectral_norm_upper`). Power iteration would approach σ_max from
below and is never used here.

**Norms.** For a sequence X = (x_1, …, x_n) of d-dim tokens, ‖X‖ = max_i rms(x_i) with
rms(x) = ‖x‖₂/√d; the same on the logits (RMS over the vocabulary). A kernel W
``[fan_in, fan_out]`` has ‖W‖ = √(fan_in/fan_out)·σ_max(W) in these norms.

**MLP** (``LipschitzMLPConfig``): L = final_scale · Π_l ‖W_l‖ on all of R^d (ReLU and
GeLU/c are 1-Lipschitz per coordinate, hence per token in RMS).

**Transformer** (``LipschitzTransformerConfig``), for the map embeddings → logits on the
domain D_R0 = {X : ‖X‖ ≤ R0}, R0 = the largest RMS norm of an embedding row (or
``input_radius``); D_R0 contains every embedded token sequence, of any length ≤ context.
Carry a radius R (every activation in the current layer has ‖X‖ ≤ R):

* attention branch, heads h = 1..H of width d_h, per-head operator norms
  a^q_h = √(d_model/d_h)·σ_max(W_q[:, head h]) (likewise a^k_h, a^v_h; note a_h can be up
  to √H·‖W‖, since one head can carry all of a token's energy):
  L_att(R) = ⅓·‖W_o‖·√( (1/H)·Σ_h [a^v_h·(1 + 2·a^q_h·a^k_h·R²)]² ),
  ‖att(X)‖ ≤ ⅓·‖W_o‖·√( (1/H)·Σ_h (a^v_h)² )·R.
  Derivation: out_i = Σ_j p_ij v_j; d out_i = Σ_j p_ij dv_j + Σ_j p_ij (ds_ij − s̄)(v_j − v̄)
  (softmax Jacobian diag(p) − ppᵀ). The first term is a convex combination
  (≤ max_j rms(dv_j)); the second is a p-covariance, ≤ max_j |ds_ij| · max_j rms(v_j) by
  Cauchy–Schwarz. With 1/d_h logits, |ds_ij| ≤ rms(dq_i)·rms(k_j) + rms(q_i)·rms(dk_j)
  (RoPE rotations preserve norms, the causal mask only shortens the row). Dot-product
  attention is not globally Lipschitz: the factor grows with R².
* MLP branch: L_mlp = ‖W_out‖·‖W_in‖ (GeLU/c is 1-Lipschitz: the divisor c is the true
  maximum slope rounded up, applied once), ‖mlp(X)‖ ≤ ‖W_out‖·‖W_in‖·R/c
  (|gelu(t)| ≤ |t|).
* each convex-combination residual x ← (1 − α)x + α·branch(x): factor (1 − α) + α·L_branch,
  radius R ← (1 − α)·R + α·R_branch.
* unembedding: ‖W_u‖, times ``final_scale``.

The total is the product of the factors (Lipschitz constants compose; each sub-block maps
D_R into the convex set D_R', so the segment argument applies layer by layer).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxbounds._checks import check_array, is_traced, require
from jaxbounds._linalg import SIGMA_OUTWARD_RTOL, rms_operator_norm, spectral_norm_upper
from jaxbounds.lipschitz.transformer import (
    GELU_DIVISOR,
    LipschitzMLPConfig,
    LipschitzTransformerConfig,
)

__all__ = [
    "SIGMA_OUTWARD_RTOL",
    "certificate_details",
    "lipschitz_bound",
    "spectral_norm_upper",
]


# --- parameter access and checks ----------------------------------------------------------


def _unwrap(params):
    if isinstance(params, Mapping) and "params" in params and len(params) == 1:
        return params["params"]
    return params


def _get(params, path: str, shape: tuple[int, ...]):
    node = params
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise ValueError(
                f"params has no leaf {path!r} (missing {part!r}); expected the parameters of "
                "the model built from this config.")
        node = node[part]
    if tuple(node.shape) != shape:
        raise ValueError(f"params leaf {path!r} has shape {tuple(node.shape)}, expected {shape} "
                         "for this config.")
    return node


def _transformer_leaves(params, cfg: LipschitzTransformerConfig) -> dict:
    d, hidden, v = cfg.d_model, cfg.mlp_ratio * cfg.d_model, cfg.vocab_size
    shapes = {"embedding": (v, d), "unembed/kernel": (d, v)}
    for i in range(cfg.num_blocks):
        for name in ("query", "key", "value", "out"):
            shapes[f"blocks_{i}/attn/{name}/kernel"] = (d, d)
        shapes[f"blocks_{i}/mlp/fc_in/kernel"] = (d, hidden)
        shapes[f"blocks_{i}/mlp/fc_out/kernel"] = (hidden, d)
    return {path: _get(params, path, shape) for path, shape in shapes.items()}


def _mlp_leaves(params, cfg: LipschitzMLPConfig) -> dict:
    widths = (cfg.in_features,) + cfg.features
    return {f"dense_{i}/kernel": _get(params, f"dense_{i}/kernel", (widths[i], widths[i + 1]))
            for i in range(len(cfg.features))}


# --- the bounds ---------------------------------------------------------------------------


def _mlp_core(leaves, cfg: LipschitzMLPConfig):
    per_layer = {f"dense_{i}": rms_operator_norm(leaves[f"dense_{i}/kernel"])
                 for i in range(len(cfg.features))}
    per_layer["final_scale"] = jnp.asarray(cfg.final_scale, jnp.result_type(float))
    details = {"weight_norms": dict(per_layer)}
    return per_layer, details


def _head_norms(kernel, cfg: LipschitzTransformerConfig):
    """Per-head RMS(d_model)→RMS(d_h) norms of a q/k/v kernel [d_model, d_model]."""
    heads = kernel.reshape(cfg.d_model, cfg.num_heads, cfg.head_dim).transpose(1, 0, 2)
    return rms_operator_norm(heads)  # each head a kernel [d_model, d_h]


def _attention_branch(a_q, a_k, a_v, w_o, radius):
    """(Lipschitz bound, output radius) of the attention branch on inputs of radius R, from
    the per-head norms a_q, a_k, a_v [H] and ‖W_o‖ (formulas: the module docstring)."""
    per_head = a_v * (1.0 + 2.0 * a_q * a_k * radius**2)
    l_att = w_o / 3.0 * jnp.sqrt(jnp.mean(per_head**2))
    r_att = w_o / 3.0 * jnp.sqrt(jnp.mean(a_v**2)) * radius
    return l_att, r_att


def _transformer_core(leaves, cfg: LipschitzTransformerConfig, input_radius):
    dtype = leaves["embedding"].dtype
    alpha = cfg.alpha
    if input_radius is None:
        emb = leaves["embedding"]
        radius = jnp.max(jnp.sqrt(jnp.mean(emb * emb, axis=-1)))
    else:
        radius = jnp.asarray(input_radius, dtype)
    per_layer, radii, branch, norms = {}, {"input": radius}, {}, {}
    inv_c = 1.0 / GELU_DIVISOR[cfg.gelu_approximate]
    for i in range(cfg.num_blocks):
        prefix = f"blocks_{i}"
        # attention sub-block
        a = {n: _head_norms(leaves[f"{prefix}/attn/{n}/kernel"], cfg)
             for n in ("query", "key", "value")}
        w_o = rms_operator_norm(leaves[f"{prefix}/attn/out/kernel"])
        l_att, r_att = _attention_branch(a["query"], a["key"], a["value"], w_o, radius)
        per_layer[f"{prefix}/attn"] = (1 - alpha) + alpha * l_att
        branch[f"{prefix}/attn"] = l_att
        radius = (1 - alpha) * radius + alpha * r_att
        radii[f"{prefix}/attn"] = radius
        for n in ("query", "key", "value"):
            norms[f"{prefix}/attn/{n}/per_head"] = a[n]
        norms[f"{prefix}/attn/out"] = w_o
        # MLP sub-block
        w_in = rms_operator_norm(leaves[f"{prefix}/mlp/fc_in/kernel"])
        w_out = rms_operator_norm(leaves[f"{prefix}/mlp/fc_out/kernel"])
        l_mlp = w_out * w_in
        per_layer[f"{prefix}/mlp"] = (1 - alpha) + alpha * l_mlp
        branch[f"{prefix}/mlp"] = l_mlp
        radius = (1 - alpha) * radius + alpha * l_mlp * inv_c * radius
        radii[f"{prefix}/mlp"] = radius
        norms[f"{prefix}/mlp/fc_in"] = w_in
        norms[f"{prefix}/mlp/fc_out"] = w_out
    w_u = rms_operator_norm(leaves["unembed/kernel"])
    norms["unembed"] = w_u
    per_layer["unembed"] = w_u
    per_layer["final_scale"] = jnp.asarray(cfg.final_scale, dtype)
    details = {"radii": radii, "branch_lipschitz": branch, "weight_norms": norms}
    return per_layer, details


def _core(params, config, input_radius):
    params = _unwrap(params)
    if isinstance(config, LipschitzMLPConfig):
        per_layer, details = _mlp_core(_mlp_leaves(params, config), config)
    else:
        per_layer, details = _transformer_core(_transformer_leaves(params, config), config,
                                               input_radius)
    total = jnp.prod(jnp.stack(list(per_layer.values())))
    return total, per_layer, details


_core_jit = jax.jit(_core, static_argnums=1)


def _run(params, config, input_radius):
    if not isinstance(config, LipschitzMLPConfig | LipschitzTransformerConfig):
        raise TypeError("config must be a LipschitzMLPConfig or a LipschitzTransformerConfig, "
                        f"got {type(config).__name__}.")
    if not isinstance(_unwrap(params), Mapping):
        raise TypeError(f"params must be the model's parameter dict, got "
                        f"{type(params).__name__}.")
    if input_radius is not None and isinstance(config, LipschitzMLPConfig):
        raise ValueError("input_radius applies to the transformer only (an MLP's bound holds "
                         f"on all of R^d); got input_radius={input_radius!r} with a "
                         "LipschitzMLPConfig.")
    if input_radius is not None:
        require("input_radius", input_radius, lambda r: r > 0, "> 0")
    leaves = jax.tree_util.tree_leaves(params)
    for leaf in leaves:
        check_array("params leaves", leaf)
    if jax.config.jax_enable_x64:
        params64 = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64), params)
        return _core_jit(params64, config, input_radius)
    if any(is_traced(leaf) for leaf in leaves + [input_radius]):
        raise ValueError(
            "lipschitz_bound needs float64 SVDs: call it outside jit (it enables float64 "
            "itself), or enable x64 (jax.enable_x64) around the traced call.")
    host = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    radius = None if input_radius is None else float(input_radius)
    with jax.enable_x64(True):
        return _core_jit(host, config, radius)


def lipschitz_bound(params, config, *, input_radius=None):
    """Certified Lipschitz upper bound of the model: ``(total, per_layer)``.

    ``config`` is the model's :class:`LipschitzMLPConfig` or
    :class:`LipschitzTransformerConfig`; ``params`` its parameters (with or without the
    ``{"params": ...}`` wrapper), any float dtype: they are converted to float64.

    * MLP: ‖f(x) − f(y)‖_RMS ≤ total·‖x − y‖_RMS on all of R^in_features.
    * Transformer: for the map :meth:`LipschitzTransformer.from_embeddings`,
      max_i rms(f(X)_i − f(Y)_i) ≤ total·max_i rms(x_i − y_i) for all X, Y in the domain
      {max_i rms(x_i) ≤ R0}, R0 = ``input_radius`` or, by default, the largest RMS norm of
      an embedding row (so every token sequence is covered).

    ``per_layer`` maps ``"blocks_{i}/attn"``, ``"blocks_{i}/mlp"``, ``"unembed"`` and
    ``"final_scale"`` (MLP: ``"dense_{i}"``, ``"final_scale"``) to the factor of that layer;
    their product is ``total``. The factors of the residual sub-blocks are
    (1 − α) + α·L_branch. Formulas: the module docstring.

    A pure function; the computation is ``jax.jit``-compiled (config static) and runs in
    float64: outside x64 it switches float64 on for the call (so it needs concrete params);
    inside a traced function, enable x64. Raises ValueError/TypeError on params that do not
    match ``config``, an unknown config type, or ``input_radius <= 0``.
    """
    total, per_layer, _ = _run(params, config, input_radius)
    return total, per_layer


def certificate_details(params, config, *, input_radius=None) -> dict:
    """Everything behind :func:`lipschitz_bound`: ``total``, ``per_layer``, and for the
    transformer the activation radius after each sub-block (``radii``), each branch's
    Lipschitz bound (``branch_lipschitz``) and every weight norm, per head for q/k/v
    (``weight_norms``), all RMS→RMS."""
    total, per_layer, details = _run(params, config, input_radius)
    return {"total": total, "per_layer": per_layer, **details}
