"""CROWN: IBP ⊇ CROWN ⊇ worst-case search, exact (MILP) ⊆ CROWN ⊆ IBP on tiny ReLU nets,
the memory estimate and chunking."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from worst_case import box_extremes, check_box, coverage_of, milp_range, mlp_forward

from jaxbounds.verify import crown_bounds, interval_bounds


@pytest.fixture(autouse=True)
def _float64():
    with jax.enable_x64(True):
        yield


def _random_mlp(rng, sizes):
    return [(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.3)
            for i, o in zip(sizes[:-1], sizes[1:], strict=True)]


def _mlp_fn(layers):
    def fn(x):
        return mlp_forward([(jnp.asarray(w), jnp.asarray(b)) for w, b in layers], x)

    return fn


class _CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.avg_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(4, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(3)(nn.relu(nn.Dense(10)(x)))


def _check_nested(fn, lo, hi, n=20_000, **kwargs):
    ibp_lo, ibp_hi = interval_bounds(fn, lo, hi)
    c_lo, c_hi = jax.jit(lambda a, b: crown_bounds(fn, a, b, **kwargs))(lo, hi)
    assert bool(jnp.all(ibp_lo <= c_lo)) and bool(jnp.all(c_hi <= ibp_hi))
    report = check_box(fn, lo, hi, c_lo, c_hi, samples=n, starts=16, steps=60, label="CROWN")
    assert report.violations == 0
    return (ibp_lo, ibp_hi), (c_lo, c_hi)


@pytest.mark.parametrize("seed", range(2))
def test_random_mlp_ibp_contains_crown_contains_samples(seed):
    rng = np.random.default_rng(seed)
    fn = _mlp_fn(_random_mlp(rng, [6, 32, 32, 16, 4]))
    x0 = jnp.asarray(rng.uniform(size=6))
    ibp, crown = _check_nested(fn, x0 - 0.1, x0 + 0.1)
    # on average CROWN is much tighter
    assert float(jnp.sum(crown[1] - crown[0])) < 0.9 * float(jnp.sum(ibp[1] - ibp[0]))


def test_cnn_flax_apply_nested():
    model = _CNN()
    x0 = jax.random.uniform(jax.random.key(0), (1, 8, 8, 1), jnp.float64)
    params = model.init(jax.random.key(1), x0)
    _check_nested(lambda x: model.apply(params, x), x0 - 0.03, x0 + 0.03, n=10_000)


def test_residual_and_spec():
    rng = np.random.default_rng(5)
    w1, w2, w3 = (rng.normal(size=(8, 8)) / 3 for _ in range(3))

    def fn(x):
        h = x + jax.nn.relu(w1 @ x)
        return w3 @ (h + jax.nn.relu(w2 @ h))

    x0 = jnp.asarray(rng.uniform(size=8))
    lo, hi = x0 - 0.1, x0 + 0.1
    _check_nested(fn, lo, hi)
    spec = jnp.asarray(np.eye(8)[:3] - np.eye(8)[3])  # margins z_j - z_3
    s_lo, s_hi = crown_bounds(fn, lo, hi, spec=spec)
    report = check_box(lambda x: spec @ fn(x), lo, hi, s_lo, s_hi, seed=2, label="spec")
    assert report.violations == 0
    o_lo, o_hi = crown_bounds(fn, lo, hi)
    naive_lo = spec.clip(0) @ o_lo + spec.clip(None, 0) @ o_hi  # spec applied after the fact
    assert bool(jnp.all(s_lo >= naive_lo - 1e-12))
    assert float(jnp.sum(s_lo - naive_lo)) > 0


def test_linear_network_is_exact():
    rng = np.random.default_rng(0)
    w1, w2 = rng.normal(size=(5, 4)), rng.normal(size=(3, 5))

    def fn(x):
        return w2 @ (w1 @ x + 1.0)

    lo, hi = -jnp.ones(4), jnp.ones(4)
    c_lo, c_hi = crown_bounds(fn, lo, hi)
    a = w2 @ w1
    np.testing.assert_allclose(c_hi, np.abs(a).sum(1) + w2.sum(1), rtol=1e-12)
    np.testing.assert_allclose(c_lo, -np.abs(a).sum(1) + w2.sum(1), rtol=1e-12)
    report = check_box(fn, lo, hi, c_lo, c_hi, label="linear network")
    assert report.violations == 0 and report.coverage >= 1 - 1e-6


@pytest.mark.parametrize("seed", range(3))
def test_exact_milp_range_inside_crown_inside_ibp(seed):
    """The MILP range is exact: the worst-case search reaches it (coverage >= 1 - 1e-6) and
    it lies inside CROWN, inside IBP."""
    rng = np.random.default_rng(100 + seed)
    layers = _random_mlp(rng, [3, 6, 5, 2])
    fn = _mlp_fn(layers)
    x0 = rng.uniform(size=3)
    lo, hi = x0 - 0.3, x0 + 0.3
    ibp_lo, ibp_hi = interval_bounds(fn, jnp.asarray(lo), jnp.asarray(hi))
    c_lo, c_hi = crown_bounds(fn, jnp.asarray(lo), jnp.asarray(hi))
    exact = np.array([milp_range(layers, lo, hi, j) for j in range(2)])
    found = box_extremes(fn, lo, hi, starts=16, steps=200, polish=40)
    cov = coverage_of(found.lo, found.hi, exact[:, 0], exact[:, 1])
    print(f"[worst-case] MILP seed {seed}: search coverage of the exact range {cov:.9f}, "
          f"of CROWN {coverage_of(found.lo, found.hi, np.asarray(c_lo), np.asarray(c_hi)):.4f}")
    assert cov >= 1 - 1e-6
    assert np.all(found.lo >= exact[:, 0] - 1e-9) and np.all(found.hi <= exact[:, 1] + 1e-9)
    for j in range(2):
        assert ibp_lo[j] <= c_lo[j] <= exact[j, 0]
        assert exact[j, 1] <= c_hi[j] <= ibp_hi[j]


def test_chunked_equals_unchunked_and_memory_error():
    rng = np.random.default_rng(7)
    fn = _mlp_fn(_random_mlp(rng, [6, 24, 24, 5]))
    x0 = jnp.asarray(rng.uniform(size=6))
    lo, hi = x0 - 0.2, x0 + 0.2
    full = crown_bounds(fn, lo, hi)
    spec = jnp.asarray(rng.normal(size=(7, 5)))
    full_spec = crown_bounds(fn, lo, hi, spec=spec)
    for chunk in (1, 5, 13):
        np.testing.assert_allclose(crown_bounds(fn, lo, hi, chunk_size=chunk), full,
                                   rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(crown_bounds(fn, lo, hi, spec=spec, chunk_size=chunk),
                                   full_spec, rtol=1e-12, atol=1e-12)
    chunked = jax.jit(lambda a, b: crown_bounds(fn, a, b, chunk_size=8))(lo, hi)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-12)
    # the estimate: the widest pass has 48 rows; per row the pending coefficients plus the
    # step's operands and temporaries, 8 bytes each
    with pytest.raises(ValueError, match=r"need about .* GiB \(48 rows x \d+ coefficients x "
                       r"8 bytes.*max_bytes=1000.*chunk_size=\d+.*intermediate='ibp'"):
        crown_bounds(fn, lo, hi, max_bytes=1000)
    message = ""
    try:
        crown_bounds(fn, lo, hi, max_bytes=20_000)
    except ValueError as err:
        message = str(err)
    suggested = int(message.split("chunk_size=")[1].split(" ")[0])
    np.testing.assert_allclose(crown_bounds(fn, lo, hi, max_bytes=20_000, chunk_size=suggested),
                               full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        crown_bounds(fn, lo, hi, chunk_size=0)
    with pytest.raises(ValueError, match="max_bytes must be >= 1"):
        crown_bounds(fn, lo, hi, max_bytes=0)


_MNIST_SCRIPT = """
import resource, sys
sys.path.insert(0, "tests")
import flax.linen as nn, jax, jax.numpy as jnp, numpy as np
from worst_case import check_box
from jaxbounds.verify import crown_bounds

class CNN(nn.Module):  # the Flax MNIST example
    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(nn.relu(nn.Conv(32, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.avg_pool(nn.relu(nn.Conv(64, (3, 3))(x)), (2, 2), (2, 2))
        x = nn.relu(nn.Dense(256)(x.reshape(x.shape[0], -1)))
        return nn.Dense(10)(x)

model = CNN()
x0 = jax.random.uniform(jax.random.key(0), (1, 28, 28, 1))
params = model.init(jax.random.key(1), x0)
fn = lambda x: model.apply(params, x)
lo, hi = x0 - 0.01, x0 + 0.01
try:
    crown_bounds(fn, lo, hi, max_bytes=4 << 30)
    print("NO ERROR")
except ValueError as err:
    print("ERROR", err)
c_lo, c_hi = crown_bounds(fn, lo, hi, chunk_size=2048)
c_lo.block_until_ready()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
i_lo, i_hi = crown_bounds(fn, lo, hi, intermediate="ibp")
with jax.enable_x64(True):
    params64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    fn64 = lambda x: model.apply(params64, x)
    report = check_box(fn64, lo.astype(jnp.float64), hi.astype(jnp.float64), c_lo, c_hi,
                       starts=4, steps=25, samples=2000, label="MNIST CNN full CROWN")
print("RESULT", rss, report.violations, report.coverage,
      float(jnp.mean(c_hi - c_lo)), float(jnp.mean(i_hi - i_lo)))
"""


@pytest.mark.slow
def test_mnist_cnn_full_crown_fits_in_4gb_and_is_sound(tmp_path):
    """Full CROWN on the Flax MNIST-example CNN: without chunks the estimate (~23 GiB) is
    refused with a clear error; with chunk_size=2048 it runs under 4 GB peak RSS (measured in
    a subprocess), 0 violations under the worst-case search, tighter than CROWN-IBP."""
    import subprocess
    import sys
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", _MNIST_SCRIPT], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    assert "ERROR crown_bounds: the backward passes need about" in proc.stdout
    assert "chunk_size=" in proc.stdout and "intermediate='ibp'" in proc.stdout
    rss, violations, coverage, crown_width, ibp_width = map(
        float, proc.stdout.split("RESULT")[1].split())
    assert rss < 4.0, rss
    assert violations == 0 and coverage > 0
    assert crown_width <= ibp_width


def test_errors():
    with pytest.raises(ValueError, match="'tanh'"):
        crown_bounds(jnp.tanh, jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="'mul'"):
        crown_bounds(lambda x: x * x, jnp.zeros(2), jnp.ones(2))
    with pytest.raises(ValueError, match="lower must be <= upper"):
        crown_bounds(jax.nn.relu, jnp.ones(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="spec must have shape"):
        crown_bounds(jax.nn.relu, jnp.zeros(2), jnp.ones(2), spec=jnp.ones((2, 3)))
