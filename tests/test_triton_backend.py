"""The ``triton`` backend at model level, its availability rules, and the kernels as ``torch.library`` ops.

Models run on a GPU when one is present, else in Triton's interpreter (TRITON_INTERPRET=1, set by conftest).
"""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import (
    ATTENTION_TYPES,
    DEVICE,
    assert_close,
    random_clip,
    randomize_,
    rel_err,
    small_config_kwargs,
)

import timesformer
from timesformer import BackendUnavailableError, TimesformerForVideoClassification, TimesformerModel
from timesformer import backends as registry


def _pair(attention_type, seed, cls=TimesformerModel, **overrides):
    kwargs = small_config_kwargs(attention_type, seed, **overrides)
    model = randomize_(cls(timesformer.TimesformerConfig(**kwargs), backend="eager"), seed).eval().to(DEVICE)
    return model, kwargs


def _eager_and_triton(model, x, **call):
    with torch.no_grad():
        expected = model.set_backend("eager")(x, **call)
        got = model.set_backend("triton")(x, **call)
    return got, expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_model_matches_eager(attention_type, seed):
    model, kwargs = _pair(attention_type, seed)
    x = random_clip(kwargs, seed=seed).to(DEVICE)
    got, expected = _eager_and_triton(model, x, output_hidden_states=True)
    assert model.backend == "triton"
    assert_close(got.last_hidden_state, expected.last_hidden_state)
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_close(a, b)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_classifier_matches_eager(attention_type):
    """The classifier's last layer runs CLS-only queries (spatial_cls / cls attention kernels)."""
    model, kwargs = _pair(attention_type, 3, cls=TimesformerForVideoClassification)
    x = random_clip(kwargs, batch=3, seed=4).to(DEVICE)
    got, expected = _eager_and_triton(model, x)
    assert_close(got.logits, expected.logits)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("frames,hw", [(5, (24, 16)), (1, (8, 8)), (2, (32, 40))])
def test_other_frame_counts_and_resolutions(attention_type, frames, hw):
    model, kwargs = _pair(attention_type, 5, image_size=16, num_frames=3)
    x = random_clip(kwargs, frames=frames, hw=hw, seed=6).to(DEVICE)
    got, expected = _eager_and_triton(model, x)
    assert_close(got.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize("head_dim", [32, 64, 80])
def test_supported_head_sizes_at_model_level(head_dim):
    model, kwargs = _pair(
        "divided_space_time",
        7,
        cls=TimesformerForVideoClassification,
        hidden_size=2 * head_dim,
        num_attention_heads=2,
    )
    x = random_clip(kwargs, seed=8).to(DEVICE)
    got, expected = _eager_and_triton(model, x)
    assert_close(got.logits, expected.logits)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_half_precision_error_within_twice_eager(dtype, attention_type):
    kwargs = small_config_kwargs(attention_type, seed=41, num_frames=3, hidden_size=64, num_attention_heads=2)
    cfg = timesformer.TimesformerConfig(**kwargs)
    model = randomize_(TimesformerForVideoClassification(cfg, backend="eager"), 2).eval().to(DEVICE)
    x = random_clip(kwargs).to(DEVICE)
    with torch.no_grad():
        exact = model.double()(x.double()).logits
        model.to(dtype)
        eager_err = rel_err(model(x.to(dtype)).logits, exact)
        triton_err = rel_err(model.set_backend("triton")(x.to(dtype)).logits, exact)
    assert triton_err <= 2 * eager_err, (triton_err, eager_err)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gpu_nan_pixel_gives_nan_logits_with_tf32(attention_type):
    """0x7FFFFFFF is the NaN a GPU's arithmetic produces: rounded to TF32 it came out as -0.0, so a clip with
    one such pixel got finite logits on triton (fp32 with TF32 allowed, the only way auto picks triton for
    fp32) where eager's were NaN. The other clip of the batch stays finite."""
    model, kwargs = _pair(attention_type, 5, cls=TimesformerForVideoClassification)
    x = random_clip(kwargs, batch=2, seed=6).to(DEVICE)
    x[0, -1, -1, 3, 2] = torch.tensor([0x7FFFFFFF], dtype=torch.int32).view(torch.float32).item()
    saved = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        got, expected = _eager_and_triton(model, x)
    finally:
        torch.set_float32_matmul_precision(saved)
    per_clip = attention_type != "space_only"  # space_only's logits are one row per frame
    rows = x.shape[0] if per_clip else x.shape[0] * x.shape[1]
    assert got.logits.shape[0] == rows
    assert torch.equal(got.logits.isnan(), expected.logits.isnan()) and expected.logits.isnan().any()
    assert not expected.logits.isnan().all()


def test_training_and_autograd_take_the_torch_path():
    """The kernels have no backward and no dropout: such calls run the sdpa path and train as before."""
    model, kwargs = _pair("divided_space_time", 9, cls=TimesformerForVideoClassification)
    x = random_clip(kwargs, seed=10).to(DEVICE)
    labels = torch.tensor([0, 1], device=DEVICE)
    model.set_backend("triton")
    loss = model(x, labels=labels).loss  # eval mode, autograd on
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_backend("eager")(x, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        assert_close(grads[n], p.grad, rel=1e-4, abs_=1e-5)

    model.train()
    torch.manual_seed(0)
    a = model.set_backend("triton")(x).logits
    torch.manual_seed(0)
    b = model.set_backend("sdpa")(x).logits
    assert torch.equal(a, b)


def test_hidden_states_snapshots_and_inplace_residual():
    model, kwargs = _pair("joint_space_time", 11)
    x = random_clip(kwargs, seed=12).to(DEVICE)
    got, expected = _eager_and_triton(model, x, output_hidden_states=True)
    for a, b in zip(got.hidden_states, expected.hidden_states, strict=True):
        assert_close(a, b)


# ----------------------------------------------------------------------------------- availability


def test_triton_runs_on_cpu_only_in_the_interpreter(monkeypatch):
    if DEVICE.type == "cuda":
        pytest.skip("checks the CPU rules; on a GPU machine the interpreter is not set")
    info = timesformer.available_backends("cpu")
    assert info["triton"].available and "interpreter" in info["triton"].reason
    monkeypatch.delenv("TRITON_INTERPRET")
    info = timesformer.available_backends("cpu")["triton"]
    assert not info.available and "TRITON_INTERPRET=1" in info.reason
    model, _ = _pair("divided_space_time", 0)
    with pytest.raises(
        BackendUnavailableError, match=r"backend 'triton' cannot run on cpu: .*TRITON_INTERPRET=1"
    ):
        model.set_backend("triton").backend  # noqa: B018


def test_unsupported_head_size_and_dtype_are_refused_with_the_reason():
    info = timesformer.available_backends(DEVICE, head_dim=256)["triton"]
    assert not info.available and "head sizes 1 to 128, got 256" in info.reason
    info = timesformer.available_backends(DEVICE, dtype=torch.float64)["triton"]
    assert not info.available and "got float64" in info.reason
    model, kwargs = _pair("divided_space_time", 0)
    model.double()
    with pytest.raises(BackendUnavailableError, match=r"take float16, bfloat16, float32, got float64"):
        model.set_backend("triton")(random_clip(kwargs).to(DEVICE).double())
    # auto falls back to sdpa for what the kernels cannot take.
    assert model.set_backend("auto").backend == "sdpa"


def test_auto_on_cpu_is_sdpa_even_under_the_interpreter(caplog):
    registry._auto_name.cache_clear()
    model, _ = _pair("divided_space_time", 0)
    model.cpu()
    with caplog.at_level(logging.INFO, logger="timesformer.backends"):
        assert model.set_backend("auto").backend == "sdpa"
        assert model.backend == "sdpa"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "using sdpa" in messages[0] and "CUDA devices only" in messages[0]


class _FakeCuda:
    """Stands in for torch.cuda's device queries, to test the GPU rules on any machine."""

    def __init__(self, capability, name):
        self.capability, self.name = capability, name

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: self.capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: self.name)
        monkeypatch.setattr(torch.version, "hip", None)
        registry._cuda_status.cache_clear()
        registry._auto_name.cache_clear()


def test_gpu_rules_compute_capability_and_auto(monkeypatch, caplog):
    cuda = torch.device("cuda", 0)
    _FakeCuda((7, 5), "Tesla T4").install(monkeypatch)
    info = registry._status("triton", cuda, 64, torch.float16)
    assert (
        not info.available and info.reason == "the kernels need compute capability >= 8.0; Tesla T4 has 7.5"
    )
    assert registry.resolve_backend("auto", cuda, 64, torch.float16).name == "sdpa"

    _FakeCuda((9, 0), "NVIDIA H100").install(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with caplog.at_level(logging.INFO, logger="timesformer.backends"):
        assert registry.resolve_backend("auto", cuda, 64, torch.bfloat16).name == "triton"
        assert registry.resolve_backend("auto", cuda, 64, torch.bfloat16).name == "triton"
        assert registry.resolve_backend("auto", cuda, 256, torch.bfloat16).name == "sdpa"
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # once per kind of model
    assert "using triton" in messages[0] and "head sizes 1 to 128, got 256" in messages[1]

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    registry._auto_name.cache_clear()
    assert registry.resolve_backend("auto", cuda, 64, torch.bfloat16).name == "sdpa"
    registry._auto_name.cache_clear()
    registry._cuda_status.cache_clear()


def test_fp32_auto_takes_sdpa_unless_tf32_is_allowed(monkeypatch, caplog):
    from timesformer.kernels._common import dot_precision

    cuda = torch.device("cuda", 0)
    _FakeCuda((9, 0), "NVIDIA H200").install(monkeypatch)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        with caplog.at_level(logging.INFO, logger="timesformer.backends"):
            assert registry.resolve_backend("auto", cuda, 64, torch.float32).name == "sdpa"
            assert dot_precision(torch.float32) == "ieee"
            # An explicit choice is honoured: full-precision products.
            assert registry.resolve_backend("triton", cuda, 64, torch.float32).name == "triton"
            torch.set_float32_matmul_precision("high")
            assert registry.resolve_backend("auto", cuda, 64, torch.float32).name == "triton"
            assert dot_precision(torch.float32) == "tf32"
            torch.set_float32_matmul_precision("highest")
            torch.backends.cuda.matmul.allow_tf32 = True  # the older spelling of the same switch
            assert registry.resolve_backend("auto", cuda, 64, torch.float32).name == "triton"
            torch.backends.cuda.matmul.allow_tf32 = False
            assert registry.resolve_backend("auto", cuda, 64, torch.float32).name == "sdpa"
            # 16-bit models are not affected by the switch.
            assert registry.resolve_backend("auto", cuda, 64, torch.bfloat16).name == "triton"
    finally:
        torch.set_float32_matmul_precision(saved)
        registry._auto_name.cache_clear()
        registry._cuda_status.cache_clear()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages  # once per (dtype, TF32) kind
    assert "using sdpa" in messages[0] and "float32 without TF32" in messages[0]
    assert "set_float32_matmul_precision('high')" in messages[0] and "bfloat16" in messages[0]
    assert "using triton" in messages[1] and "TF32 products" in messages[1]
    assert "using triton" in messages[2]


@pytest.mark.parametrize(
    "matmul, default, allowed",
    [("tf32", "none", True), ("ieee", "tf32", False), ("none", "tf32", True), ("none", "ieee", False)],
)
def test_tf32_through_torchs_newer_switches(matmul, default, allowed):
    """``torch.backends.cuda.matmul.fp32_precision`` (torch >= 2.9): once it is set, torch raises on the older
    getters, which a float32 forward must then not call."""
    from timesformer.kernels._common import dot_precision, tf32_allowed

    saved = torch.backends.cuda.matmul.fp32_precision, torch.backends.fp32_precision
    try:
        torch.backends.fp32_precision = default
        torch.backends.cuda.matmul.fp32_precision = matmul
        assert tf32_allowed() is allowed
        assert dot_precision(torch.float32) == ("tf32" if allowed else "ieee")
        model = timesformer.TimesformerModel(timesformer.TimesformerConfig(**small_config_kwargs(seed=3)))
        with torch.no_grad():
            model(random_clip(small_config_kwargs(seed=3), batch=1))  # auto resolves on the CPU
    finally:
        torch.backends.cuda.matmul.fp32_precision, torch.backends.fp32_precision = saved
    torch.get_float32_matmul_precision()  # the older getter works again for the tests that follow


def test_other_devices_are_refused():
    info = registry._status("triton", torch.device("mps"))
    assert not info.available and "not on mps" in info.reason


# ------------------------------------------------------------------------------- torch.library ops


def _op_cases():
    gen = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 1 + 3 * 4, 48, generator=gen).to(DEVICE)
    q, k, v = qkv.split(16, -1)
    return [
        (torch.ops.timesformer.temporal_attention.default, (q[:, 1:], k[:, 1:], v[:, 1:], 4, 2)),
        (torch.ops.timesformer.spatial_attention.default, (q, k, v, 4, 2)),
        (torch.ops.timesformer.spatial_attention.default, (q[:, :1], k, v, 4, 2)),
        (torch.ops.timesformer.attention.default, (q, k, v, 2)),
        (torch.ops.timesformer.attention.default, (q[:, :1], k, v, 2)),
    ]


def test_custom_ops_pass_opcheck():
    """Schema, fake (shape-only) implementations and dynamic-shape tracing agree with the kernels."""
    registry.get_backend("triton")  # registers the ops
    for op, args in _op_cases():
        torch.library.opcheck(op, args)


def test_ops_trace_under_torch_compile():
    from timesformer.kernels import attention, temporal_attention

    def layer_attention(qkv):
        q, k, v = qkv.split(48 // 3, dim=-1)  # strided views of the packed projection, as the backend passes
        patch, cls = attention.spatial_attention(q, k, v, 4, 2)
        joint = attention.attention(q, k, v, 2)
        temporal = temporal_attention.temporal_attention(q[:, 1:], k[:, 1:], v[:, 1:], 4, 2)
        return patch + temporal, cls.mean(1), joint

    qkv = torch.randn(2, 1 + 3 * 4, 48, device=DEVICE)
    compiled = torch.compile(layer_attention, backend="aot_eager", fullgraph=True)
    for a, b in zip(compiled(qkv), layer_attention(qkv), strict=True):
        assert torch.equal(a, b)
