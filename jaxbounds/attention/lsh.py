"""sortLSH: angular LSH buckets ordered so that adjacent buckets differ in one bit.

HyperAttention (Han et al., arXiv 2310.05869, Definition 1) hashes every query and key with
r random hyperplanes ``w_1..w_r`` (a *shared* [d, r] Gaussian matrix):

    bits(x)_t = 1[⟨w_t, x⟩ > 0],      bucket(x) = Σ_t bits(x)_t · 2^t  ∈ [0, 2^r).

Vectors at a small angle share many bits. The buckets are then visited in Gray-code order,
bucket G(0), G(1), G(2), … with G(t) = t ⊕ (t >> 1), so that consecutive buckets differ in
exactly one hyperplane. The sort key of a bucket x is therefore its *rank* in that sequence,
the inverse Gray code G⁻¹(x) = x ⊕ (x >> 1) ⊕ (x >> 2) ⊕ … (a prefix XOR). Sorting by G(x)
itself, as the reference implementation does, does not give this property (G(x) and
G(x + 1) can differ in many bits once mapped back; see ``tests/test_hyper_attention.py``).

Queries and keys are stable-sorted by rank: equal ranks keep their sequence order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = [
    "gray_code",
    "hyperplanes",
    "inverse_gray_code",
    "inverse_permutation",
    "lsh_buckets",
    "sort_lsh_permutation",
]

MAX_PROJECTIONS = 30  # buckets and ranks are int32


def hyperplanes(key, head_dim: int, num_projections: int) -> jax.Array:
    """The shared [head_dim, num_projections] standard Gaussian hyperplane normals."""
    return jax.random.normal(key, (head_dim, num_projections), jnp.float32)


def lsh_buckets(x, planes) -> jax.Array:
    """int32 bucket Σ_t 1[⟨w_t, x⟩ > 0]·2^t of each vector ``x [..., d]``, planes [d, r]."""
    proj = jnp.einsum("...d,dr->...r", x.astype(jnp.float32), planes)
    weights = (2 ** jnp.arange(planes.shape[-1])).astype(jnp.int32)
    return jnp.sum(jnp.where(proj > 0, weights, 0), axis=-1).astype(jnp.int32)


def gray_code(t) -> jax.Array:
    """G(t) = t ⊕ (t >> 1): the t-th bucket in Gray-code order."""
    t = jnp.asarray(t, jnp.int32)
    return t ^ (t >> 1)


def inverse_gray_code(x) -> jax.Array:
    """G⁻¹(x) = x ⊕ (x >> 1) ⊕ (x >> 2) ⊕ …: the rank of bucket x in Gray-code order
    (exact for 0 ≤ x < 2^31)."""
    x = jnp.asarray(x, jnp.int32)
    for shift in (1, 2, 4, 8, 16):
        x = x ^ (x >> shift)
    return x


def sort_lsh_permutation(x, planes) -> jax.Array:
    """Stable permutation [..., n] that sorts the vectors ``x [..., n, d]`` by the
    inverse-Gray-code rank of their LSH bucket (sorted = x[perm])."""
    rank = inverse_gray_code(lsh_buckets(x, planes))
    return jnp.argsort(rank, axis=-1, stable=True).astype(jnp.int32)


def inverse_permutation(perm) -> jax.Array:
    """inv with inv[perm[i]] = i along the last axis (a scatter, no second sort)."""
    n = perm.shape[-1]
    flat = perm.reshape(-1, n)
    iota = jnp.arange(n, dtype=perm.dtype)
    inv = jax.vmap(lambda p: jnp.zeros((n,), perm.dtype).at[p].set(iota))(flat)
    return inv.reshape(perm.shape)
