"""Compare a registered kernel with its reference: outputs and VJPs, on random inputs.

Shared by the interpret-mode tests and ``experiments/gpu_check.py``. The reference runs on
float32-upcast copies of low-precision inputs, so the error measured is the kernel's own.
Errors are ‖out − ref‖ / ‖ref‖ over each output leaf; NaN never passes.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.registry import KernelSpec

_LOW_PRECISION = (jnp.bfloat16, jnp.float16)


@dataclasses.dataclass(frozen=True)
class KernelCheck:
    name: str
    size: str
    implementation: str
    out_error: float
    grad_error: float | None
    rtol: float

    @property
    def ok(self) -> bool:
        errors = [self.out_error] + ([] if self.grad_error is None else [self.grad_error])
        return all(np.isfinite(e) and e <= self.rtol for e in errors)


def relative_error(out, ref) -> float:
    """max over leaves of ‖out − ref‖ / ‖ref‖ in float64 (inf for NaN or shape mismatch)."""
    worst = 0.0
    for o, r in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref), strict=True):
        o = np.asarray(o, np.float64)
        r = np.asarray(r, np.float64)
        if o.shape != r.shape or not np.all(np.isfinite(o)):
            return float("inf")
        denom = np.linalg.norm(r)
        err = np.linalg.norm(o - r) / (denom if denom > 0 else 1.0)
        worst = max(worst, float(err))
    return worst


def _upcast(x):
    if hasattr(x, "dtype") and any(x.dtype == d for d in _LOW_PRECISION):
        return x.astype(jnp.float32)
    return x


def check_kernel(spec: KernelSpec, key, size: str, implementation: str) -> KernelCheck:
    """Run ``spec`` with ``implementation`` and its reference on fresh random inputs."""
    k_in, k_ct = jax.random.split(key)
    inputs = spec.make_inputs(k_in, size)
    ref_inputs = tuple(_upcast(x) for x in inputs)
    run = lambda *a: spec.run(*a, implementation=implementation)
    out = jax.jit(run)(*inputs)
    ref = jax.jit(spec.reference)(*ref_inputs)
    out_dtype = jnp.dtype(jax.tree_util.tree_leaves(out)[0].dtype).name
    rtol = float(spec.rtol.get(out_dtype, max(spec.rtol.values())))
    out_error = relative_error(out, ref)

    grad_error = None
    if spec.differentiable:
        argnums = spec.diff_argnums or tuple(range(len(inputs)))
        leaves, treedef = jax.tree_util.tree_flatten(out)
        ct_keys = jax.random.split(k_ct, len(leaves))
        cts = [jax.random.normal(k, l.shape, jnp.float32).astype(l.dtype)
               for k, l in zip(ct_keys, leaves)]
        cotangent = jax.tree_util.tree_unflatten(treedef, cts)
        ref_cotangent = jax.tree_util.tree_map(_upcast, cotangent)

        def vjp_of(fn, args, ct):
            def partial_fn(*diff):
                full = list(args)
                for i, d in zip(argnums, diff):
                    full[i] = d
                return fn(*full)

            _, pullback = jax.vjp(partial_fn, *(args[i] for i in argnums))
            return pullback(ct)

        grads = jax.jit(lambda *a: vjp_of(run, a, cotangent))(*inputs)
        ref_grads = jax.jit(lambda *a: vjp_of(spec.reference, a, ref_cotangent))(*ref_inputs)
        grad_error = relative_error(grads, ref_grads)
    return KernelCheck(spec.name, size, implementation, out_error, grad_error, rtol)
