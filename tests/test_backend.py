"""Dispatch (one op, several implementations), the GPU records, and the version shims."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pallas_kernels
from pallas_kernels import _backend, registry
from pallas_kernels.op import ENV_VAR, Op, implementation_sequence


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def fake_cuda(monkeypatch, kind="NVIDIA H200"):
    monkeypatch.setattr(_backend, "cuda_available", lambda: True)
    monkeypatch.setattr(_backend, "device_kind", lambda: kind)


def toy_op(name="dora_matmul", dtype=jnp.float32, **table):
    """An op whose implementations return their own name (or raise what they are given)."""
    def impl(label):
        def run(x):
            if isinstance(table.get(label), Exception):
                raise table[label]
            return label
        return run
    names = table or {"triton": None, "xla": None, "interpret": None}
    return Op(name, {label: impl(label) for label in names}, lambda x: dtype)


# --- the implementation argument ------------------------------------------------------------


def test_default_is_xla_on_cpu():
    assert jax.default_backend() == "cpu"
    assert implementation_sequence(None) == ("xla",)
    assert pallas_kernels.cuda_available() is False


def test_default_on_a_cuda_gpu_is_triton_then_xla(monkeypatch):
    fake_cuda(monkeypatch)
    assert implementation_sequence(None) == ("triton", "xla")


@pytest.mark.parametrize("value, names", [("xla", ("xla",)), ("interpret", ("interpret",)),
                                          (("interpret", "xla"), ("interpret", "xla")),
                                          (["triton", "xla"], ("triton", "xla"))])
def test_names_and_sequences_pass_through(value, names):
    assert implementation_sequence(value) == names


def test_unknown_value_lists_valid_ones():
    with pytest.raises(ValueError, match=r"implementation must be one of .*triton.*xla.*interpret"):
        implementation_sequence("cuda")
    with pytest.raises(ValueError, match="got 3"):
        implementation_sequence(3)
    with pytest.raises(ValueError, match="non-empty sequence"):
        implementation_sequence(())
    with pytest.raises(ValueError, match="got 'cuda'"):
        implementation_sequence(("xla", "cuda"))


def test_environment_variable_overrides_the_default(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "interpret")
    assert implementation_sequence(None) == ("interpret",)
    assert implementation_sequence("xla") == ("xla",)  # an explicit argument wins
    monkeypatch.setenv(ENV_VAR, "triton, xla")
    assert implementation_sequence(None) == ("triton", "xla")
    monkeypatch.setenv(ENV_VAR, "bogus")
    with pytest.raises(ValueError, match=f"environment variable {ENV_VAR}"):
        implementation_sequence(None)


def _traces_a_kernel(*args) -> bool:
    """Whether a fresh trace of dora_matmul (the choice is made at trace time) calls Pallas."""
    return "pallas_call" in str(jax.make_jaxpr(lambda *a: pallas_kernels.dora_matmul(*a))(*args))


def test_environment_variable_reaches_the_kernel(monkeypatch):
    args = _dora_inputs(jnp.float32)
    monkeypatch.setenv(ENV_VAR, "interpret")
    assert _traces_a_kernel(*args)
    monkeypatch.setenv(ENV_VAR, "xla")
    assert not _traces_a_kernel(*args)


# --- the op: sequences and the triton gate --------------------------------------------------


def test_a_sequence_falls_back_past_not_implemented():
    op = toy_op(interpret=NotImplementedError("no"), xla=None)
    assert op(1.0, implementation=("interpret", "xla")) == "xla"
    with pytest.raises(NotImplementedError, match="no"):  # alone, it propagates
        op(1.0, implementation="interpret")
    with pytest.raises(NotImplementedError, match="no implementation of dora_matmul"):
        op(1.0, implementation=("interpret",) * 2)
    with pytest.raises(NotImplementedError, match="no 'triton' implementation"):
        op(1.0, implementation="triton")


def test_other_errors_are_not_swallowed_by_the_sequence():
    op = toy_op(interpret=ValueError("bad"), xla=None)
    with pytest.raises(ValueError, match="bad"):
        op(1.0, implementation=("interpret", "xla"))


def test_explicit_triton_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="needs a CUDA GPU.*'interpret'"):
        toy_op()(1.0, implementation="triton")
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        pallas_kernels.dora_matmul(*_dora_inputs(jnp.float32), implementation="triton")
    # inside a sequence, the missing GPU only skips the kernel
    assert toy_op()(1.0, implementation=("triton", "xla")) == "xla"


@pytest.mark.parametrize("name, dtype, kind, expected", [
    ("dora_matmul", jnp.bfloat16, "NVIDIA H200", "triton"),  # verified and faster
    ("dora_matmul", jnp.float32, "NVIDIA H200", "xla"),  # verified, slower than cuBLAS TF32
    ("block_attention", jnp.float32, "NVIDIA H200", "xla"),
    ("sampled_attention", jnp.bfloat16, "NVIDIA H200", "triton"),
    ("causal_linear_attention", jnp.float32, "NVIDIA H200", "triton"),
    ("dora_matmul", jnp.bfloat16, "NVIDIA A100-SXM4-80GB", "xla"),  # no record for this card
    ("dora_matmul", jnp.float16, "NVIDIA H200", "xla"),  # no record for this dtype
])
def test_default_sequence_runs_triton_only_where_recorded_and_preferred(
        monkeypatch, name, dtype, kind, expected):
    fake_cuda(monkeypatch, kind)
    op = toy_op(name, dtype)
    assert op(1.0) == expected
    assert op(1.0, implementation="triton") == "triton"  # explicit: always the kernel
    if expected == "xla":  # in a sequence, the unrecorded kernel raises NotImplementedError
        with pytest.raises(NotImplementedError, match="not recorded as verified and faster"):
            op(1.0, implementation=("triton", "triton"))


def test_the_real_op_follows_the_records(monkeypatch):
    """dora_matmul on a (faked) H200 with the default: XLA in float32, the kernel in bf16."""
    fake_cuda(monkeypatch)
    for dtype, kernel in ((jnp.float32, False), (jnp.bfloat16, True)):
        assert _traces_a_kernel(*_dora_inputs(dtype)) == kernel, dtype


def _dora_inputs(dtype):
    ks = jax.random.split(jax.random.PRNGKey(0), 5)
    return (jax.random.normal(ks[0], (16, 24)).astype(dtype),
            jax.random.normal(ks[1], (24, 20)).astype(dtype),
            jax.random.normal(ks[2], (16, 4)).astype(dtype),
            jax.random.normal(ks[3], (4, 20)).astype(dtype),
            1.0 + 0.1 * jax.random.normal(ks[4], (20,)))


# --- the records ----------------------------------------------------------------------------


def test_shipped_records_are_the_h200_check():
    want = {("dora_matmul", "float32"): False, ("dora_matmul", "bfloat16"): True,
            ("block_attention", "float32"): False, ("block_attention", "bfloat16"): True,
            ("sampled_attention", "float32"): False, ("sampled_attention", "bfloat16"): True,
            ("causal_linear_attention", "float32"): True,
            ("causal_linear_attention", "bfloat16"): True,
            ("newton_schulz", "float32"): False, ("newton_schulz", "bfloat16"): False}
    records = [r for r in registry.verified_records() if r["device_kind"] == "NVIDIA H200"]
    assert {(r["kernel"], r["dtype"]): r["preferred"] for r in records} == want
    assert all(r["jax_version"] == "0.11.2" for r in records)
    # every kernel verified on the card except the float32 Newton–Schulz (TF32-sized error)
    unverified = {(r["kernel"], r["dtype"]) for r in records if not r["verified"]}
    assert unverified == {("newton_schulz", "float32")}


def _row(name, size, status="OK", kernel_ms=1.0, xla_ms=2.0):
    return dict(name=name, size=size, status=status, kernel_ms=kernel_ms, xla_ms=xla_ms)


def test_record_verified_writes_verified_and_preferred(tmp_path):
    path = tmp_path / "records.json"
    checks = [
        _row("dora_matmul_float32", "small", kernel_ms=0.1, xla_ms=0.2),
        _row("dora_matmul_float32", "large", kernel_ms=1.3, xla_ms=0.5),  # slower at large
        _row("dora_matmul_bfloat16", "small"), _row("dora_matmul_bfloat16", "large"),
        _row("block_attention_float32", "small"),
        dict(name="block_attention_float32", size="medium", status="FAIL", error="boom"),
    ]
    new = registry.record_verified(checks, "Fake GPU", "0.0.1", path=path)
    got = {(r["kernel"], r["dtype"]): (r["verified"], r["preferred"]) for r in new}
    assert got == {("dora_matmul", "float32"): (True, False),
                   ("dora_matmul", "bfloat16"): (True, True),
                   ("block_attention", "float32"): (False, False)}
    assert registry.is_preferred("dora_matmul", jnp.bfloat16, "Fake GPU", path=path)
    assert not registry.is_preferred("dora_matmul", "float32", "Fake GPU", path=path)
    assert not registry.is_preferred("dora_matmul", "bfloat16", "Other GPU", path=path)
    on_disk = json.loads(path.read_text())["records"]
    assert {r["jax_version"] for r in on_disk} == {"0.0.1"}

    # a second check replaces its own (kernel, dtype, device) records and keeps the others
    registry.record_verified([_row("dora_matmul_float32", "large", kernel_ms=0.4)],
                             "Fake GPU", "0.0.2", path=path)
    registry.record_verified([_row("dora_matmul_float32", "large")], "Other GPU", "0.0.2",
                             path=path)
    records = json.loads(path.read_text())["records"]
    assert len(records) == 4
    assert registry.is_preferred("dora_matmul", "float32", "Fake GPU", path=path)
    assert registry.lookup("dora_matmul", "float32", "Fake GPU", path)["jax_version"] == "0.0.2"
    assert registry.lookup("dora_matmul", "bfloat16", "Fake GPU", path)["jax_version"] == "0.0.1"


def test_record_verified_rejects_bad_names(tmp_path):
    with pytest.raises(ValueError, match="'<op>_<dtype>'"):
        registry.record_verified([_row("dora", "small")], "Fake GPU", "0", path=tmp_path / "r")
    with pytest.raises(ValueError, match="device_kind"):
        registry.record_verified([], "", "0", path=tmp_path / "r")


def test_registration_is_idempotent():
    spec = next(iter(registry.KERNELS.values()))
    count = len(registry.KERNELS)
    assert registry.register(spec) is spec
    assert registry.register(spec) is spec
    assert len(registry.KERNELS) == count


# --- shims and scaffolding ------------------------------------------------------------------


def test_pad_axis_pads_with_zeros_to_a_multiple():
    x = jnp.arange(1.0, 11.0).reshape(2, 5)
    y = _backend.pad_axis(x, 1, 4)
    assert y.shape == (2, 8)
    assert jnp.array_equal(y[:, :5], x) and not jnp.any(y[:, 5:])
    assert _backend.pad_axis(x, 0, 2) is x


def test_dot_accumulates_in_float32():
    a = jax.random.normal(jax.random.PRNGKey(0), (16, 32), jnp.float32).astype(jnp.bfloat16)
    b = jax.random.normal(jax.random.PRNGKey(1), (32, 16), jnp.float32)
    out = _backend.dot(a, b)
    assert out.dtype == jnp.float32
    ref = np.asarray(a, np.float64) @ np.asarray(b, np.float64)
    np.testing.assert_allclose(np.asarray(out), ref, rtol=1e-5, atol=1e-5)


def test_compiler_params_selects_triton():
    params = _backend.compiler_params(num_warps=8, num_stages=2)
    assert params.num_warps == 8 and params.num_stages == 2


def test_block_sizes_validate_launch_parameters():
    with pytest.raises(ValueError, match="block_sizes.num_warps must be a positive int"):
        pallas_kernels.DoRABlockSizes(num_warps=0).validate()
    with pytest.raises(ValueError, match="block_sizes.chunk must be a power of two >= 16"):
        pallas_kernels.LinearAttentionBlockSizes(chunk=8).validate()
