"""The ``triton`` backend's fused fast path at model level: which launches run, accuracy, uint8 frames.

Runs on a GPU when one is present, else in Triton's interpreter (TRITON_INTERPRET=1, set by conftest).
"""

from __future__ import annotations

import collections
import contextlib

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
from torch.utils._python_dispatch import TorchDispatchMode

import timesformer
from timesformer import TimesformerForVideoClassification, TimesformerModel
from timesformer.torch_ops import normalize_frames


def _model(attention_type, seed, cls=TimesformerModel, backend="triton", **overrides):
    kwargs = small_config_kwargs(attention_type, seed, **overrides)
    model = randomize_(cls(timesformer.TimesformerConfig(**kwargs), backend=backend), seed)
    return model.eval().to(DEVICE), kwargs


class _OpLog(TorchDispatchMode):
    """Records every op that reaches the dispatcher (custom ops as one call: their insides are not seen)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[f"{func.namespace}.{func._opname}"] += 1
        return func(*args, **(kwargs or {}))


# aten ops that only allocate or make views: the fast path may use these and nothing else of aten.
_FREE = {
    "empty",
    "empty_strided",
    "slice",
    "select",
    "view",
    "split",
    "split_with_sizes",
    "permute",
    "unsqueeze",
    "squeeze",
    "t",
    "transpose",
    "detach",
    "alias",
    "as_strided",
    "_unsafe_view",
}


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("cls", [TimesformerModel, TimesformerForVideoClassification])
def test_every_launch_is_a_kernel_and_no_activation_is_copied(attention_type, cls):
    """A layer is the launches of DESIGN.md section 3: no permute/cat/repeat/contiguous copy, no torch
    LayerNorm, matmul, add or mean left on the path."""
    model, kwargs = _model(attention_type, 3, cls=cls, num_hidden_layers=2, hidden_act="gelu")
    x = random_clip(kwargs, seed=4).to(DEVICE)
    with torch.no_grad():
        model(x)  # prepares (folds, casts) and caches the weights
        with _OpLog() as log:
            model(x)
    kernels = {k.removeprefix("timesformer."): v for k, v in log.ops.items() if k.startswith("timesformer.")}
    aten = {k: v for k, v in log.ops.items() if k.startswith("aten.") and k[5:] not in _FREE}
    head = cls is TimesformerForVideoClassification
    # The encoder's output is LayerNorm(x): a LayerNorm with no projection after it to fuse into.
    assert aten == ({} if head else {"aten.native_layer_norm": 1}), f"torch ops on the fast path: {aten}"
    layers = model.config.num_hidden_layers
    expected = collections.Counter(patch_embed=1)
    if attention_type == "divided_space_time":
        expected.update(layer_norm_linear=3 * layers, temporal_attention=layers, spatial_attention=layers)
        expected.update(linear_residual_=4 * layers)
    else:
        expected.update(layer_norm_linear=2 * layers, attention=layers, linear_residual_=2 * layers)
    if head:
        # The last layer's query is a separate (CLS-row) projection, and the head is one more launch; a
        # divided last layer has no patch rows to project out.
        expected.update(layer_norm_linear=2)
        if attention_type == "divided_space_time":
            expected.subtract(linear_residual_=1)
    assert kernels == dict(expected)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_half_precision_within_twice_the_sdpa_error(dtype, attention_type):
    """The issue's whole-model rule: against float32 eager, triton's error at most 2x sdpa's."""
    model, kwargs = _model(
        attention_type, 21, backend="eager", num_frames=3, hidden_size=64, num_attention_heads=2
    )
    x = random_clip(kwargs, seed=22).to(DEVICE)
    with torch.no_grad():
        exact = model(x).last_hidden_state
        model.to(dtype)
        sdpa = rel_err(model.set_backend("sdpa")(x).last_hidden_state, exact)
        triton = rel_err(model.set_backend("triton")(x).last_hidden_state, exact)
    assert triton <= 2 * sdpa, (triton, sdpa)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_float32_within_1e4_of_eager(attention_type):
    model, kwargs = _model(attention_type, 23, backend="eager", hidden_size=40, num_attention_heads=2)
    x = random_clip(kwargs, batch=3, seed=24).to(DEVICE)
    with torch.no_grad():
        exact = model(x).last_hidden_state
        got = model.set_backend("triton")(x).last_hidden_state
    assert rel_err(got, exact) <= 1e-4


def _frames(kwargs, batch=2, frames=None, hw=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = kwargs["num_frames"] if frames is None else frames
    h, w = (kwargs["image_size"],) * 2 if hw is None else hw
    return torch.randint(
        0, 256, (batch, frames, h, w, kwargs["num_channels"]), generator=gen, dtype=torch.uint8
    )


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("backend", ["eager", "sdpa", "triton"])
def test_uint8_frames_are_normalized_by_the_model(attention_type, backend):
    model, kwargs = _model(attention_type, 25, cls=TimesformerForVideoClassification, backend=backend)
    c = kwargs["num_channels"]
    mean, std = [0.45, 0.4, 0.5][:c], [0.225, 0.25, 0.2][:c]
    model.set_input_normalization(mean, std)
    frames = _frames(kwargs, frames=2, hw=(24, 16), seed=26)
    # A channels-last view of a larger buffer: any strides.
    frames = torch.cat((frames, frames), dim=3)[:, :, :, ::2].to(DEVICE)
    with torch.no_grad():
        got = model(frames).logits
        expected = model.set_backend("eager")(normalize_frames(frames, mean, std, 1 / 255)).logits
    assert_close(got, expected)


def test_uint8_frames_need_the_normalization():
    model, kwargs = _model("divided_space_time", 27)
    with pytest.raises(ValueError, match="set_input_normalization"):
        model(_frames(kwargs).to(DEVICE))
    with pytest.raises(ValueError, match="image_mean must have"):
        model.set_input_normalization([0.1] * (kwargs["num_channels"] + 1), 0.2)
    with pytest.raises(ValueError, match="image_std must be positive"):
        model.set_input_normalization(0.5, 0.0)


@pytest.mark.parametrize("hidden_act", ["gelu_new", "quick_gelu", "mish"])
def test_activations_in_the_epilogue_and_the_torch_fallback(hidden_act):
    model, kwargs = _model("divided_space_time", 28, backend="eager", hidden_act=hidden_act)
    x = random_clip(kwargs, seed=29).to(DEVICE)
    with torch.no_grad():
        expected = model(x).last_hidden_state
        got = model.set_backend("triton")(x).last_hidden_state
    assert_close(got, expected)


def test_non_contiguous_pixels():
    model, kwargs = _model("divided_space_time", 30, backend="eager")
    x = random_clip(kwargs, seed=31).to(DEVICE)
    strided = x.transpose(3, 4).contiguous().transpose(3, 4)
    assert not strided.is_contiguous()
    with torch.no_grad():
        expected = model(x).last_hidden_state
        got = model.set_backend("triton")(strided).last_hidden_state
    assert_close(got, expected)


def test_prepared_weights_follow_the_parameters():
    """Folded LayerNorms, the folded temporal projection and the interpolated tables are cached: editing
    or loading weights must reach the next forward."""
    model, kwargs = _model("divided_space_time", 32, cls=TimesformerForVideoClassification)
    x = random_clip(kwargs, frames=kwargs["num_frames"] + 1, seed=33).to(DEVICE)
    with torch.no_grad():
        before = model(x).logits
        layer = model.timesformer.encoder.layer[0]
        for p in (
            layer.temporal_layernorm.weight,
            layer.layernorm_after.bias,
            layer.temporal_dense.weight,
            model.timesformer.embeddings.time_embeddings,
            model.timesformer.layernorm.weight,
        ):
            p.mul_(1.5)
            got = model(x).logits
            expected = model.set_backend("eager")(x).logits
            model.set_backend("triton")
            assert not torch.allclose(got, before)
            assert_close(got, expected)
            before = got
        other = randomize_(TimesformerForVideoClassification(model.config), seed=99)
        model.load_state_dict(other.state_dict())
        assert_close(model(x).logits, other.eval().to(DEVICE).set_backend("eager")(x).logits)


# The backend lookups are functools caches of pure functions of (device, head size, dtype): tracing through
# them is what the warning asks about, and is correct here.
@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
def test_fast_path_traces_under_torch_compile():
    """The fused ops are custom ops with fake implementations (in-place ones on views of the residual
    stream): the whole model traces as one graph and computes the same logits."""
    model, kwargs = _model("divided_space_time", 34, cls=TimesformerForVideoClassification)
    x = random_clip(kwargs, seed=35).to(DEVICE)
    with torch.no_grad():
        expected = model(x).logits
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x).logits
    assert torch.equal(got, expected)


def test_every_launch_goes_to_its_tensors_device(monkeypatch):
    """Triton launches on the current CUDA device, not on the tensors': each kernel family launches inside
    ``on_device`` of its first tensor (a model on cuda:1 while cuda:0 is current still runs on cuda:1)."""
    from timesformer.kernels import attention, linear, patch_embed, temporal_attention

    kernel_type = type(attention._attention_fwd_kernel)  # JITFunction on a GPU, the interpreter's on the CPU

    guarded: list[torch.Tensor] = []
    launches: list[bool] = []

    @contextlib.contextmanager
    def on_device(x):
        guarded.append(x)
        try:
            yield
        finally:
            guarded.pop()

    for module in (attention, linear, patch_embed, temporal_attention):
        monkeypatch.setattr(module, "on_device", on_device)
    run = kernel_type.run

    def recording_run(self, *args, **kwargs):
        launches.append(bool(guarded) and guarded[-1] is args[0])
        return run(self, *args, **kwargs)

    monkeypatch.setattr(kernel_type, "run", recording_run)
    for attention_type in ("divided_space_time", "joint_space_time"):
        model, kwargs = _model(attention_type, 44, cls=TimesformerForVideoClassification)
        with torch.no_grad():
            model(random_clip(kwargs, seed=45).to(DEVICE))
    assert len(launches) > 10 and all(launches)


def test_autocast_runs_the_call_on_sdpa():
    """The kernels run in the parameters' dtype and are not autocast ops: under autocast to another dtype the
    call runs on sdpa, whose ops autocast casts (the logits came back float32 under bfloat16 autocast)."""
    kwargs = small_config_kwargs("divided_space_time", seed=71)
    model = randomize_(TimesformerForVideoClassification(timesformer.TimesformerConfig(**kwargs)), 71)
    model.eval().to(DEVICE)
    x = random_clip(kwargs, seed=72).to(DEVICE)
    with torch.no_grad(), torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        expected = model.set_backend("sdpa")(x).logits
        got = model.set_backend("triton")(x).logits
        assert model.backend == "sdpa"
    assert got.dtype == torch.bfloat16 and torch.equal(got, expected)
    assert model.backend == "triton"
    model.to(torch.bfloat16)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):  # the parameters' own dtype: the kernels run
        assert model.backend == "triton"
