"""Bad input gets an exception naming what was expected and what came; odd layouts give the same numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, random_clip, randomize_, small_config_kwargs

import timesformer

KWARGS = small_config_kwargs(
    "divided_space_time", seed=30, num_channels=3, image_size=16, num_frames=2, num_labels=4
)


@pytest.fixture(params=["eager", "sdpa"])
def model(request):
    cfg = timesformer.TimesformerConfig(**KWARGS)
    return randomize_(timesformer.TimesformerForVideoClassification(cfg, backend=request.param), 2).eval()


@pytest.mark.parametrize(
    "shape,dtype,message",
    [
        ((2, 3, 16, 16), torch.float32, r"5 dimensions .* got shape \(2, 3, 16, 16\)"),
        ((1, 2, 4, 16, 16), torch.float32, r"3 channels .* got 4"),
        ((1, 2, 3, 16, 12), torch.float32, r"multiples of the patch size 8x8, got 16x12"),
        ((1, 2, 3, 4, 16), torch.float32, r"multiples of the patch size 8x8, got 4x16"),
        ((1, 2, 16, 16, 3), torch.uint8, r"uint8 pixel_values are frames .*set_input_normalization"),
        ((1, 2, 3, 16, 16), torch.bool, r"floating-point .* got dtype torch.bool"),
        ((1, 2, 3, 16, 16), torch.int64, r"floating-point .* got dtype torch.int64"),
        ((0, 2, 3, 16, 16), torch.float32, r"at least one clip .* got shape \(0, 2, 3, 16, 16\)"),
        ((1, 0, 3, 16, 16), torch.float32, r"at least one frame"),
    ],
)
def test_bad_pixel_values(model, shape, dtype, message):
    with pytest.raises(ValueError, match=message):
        model(torch.ones(shape).to(dtype))


def test_not_a_tensor(model):
    with pytest.raises(TypeError, match="torch.Tensor, got ndarray"):
        model(torch.randn(1, 2, 3, 16, 16).numpy())


def test_input_on_other_device(model):
    x = torch.empty(1, 2, 3, 16, 16, device="meta")
    with pytest.raises(ValueError, match="pixel_values is on meta but the model is on cpu"):
        model(x)


@pytest.mark.parametrize(
    "labels,message",
    [
        (torch.tensor([0, 1, 2]), r"expects 2 labels .* got shape \(3,\)"),
        (torch.tensor([0, 4]), r"in \[0, 4\) .* got \[4\]"),
        (torch.tensor([-3, 1]), r"got \[-3\]"),
    ],
)
def test_bad_single_label_labels(model, labels, message):
    with pytest.raises(ValueError, match=message):
        model(random_clip(KWARGS), labels=labels)


def test_bad_multi_label_and_regression_labels():
    cfg = timesformer.TimesformerConfig(**KWARGS)
    model = timesformer.TimesformerForVideoClassification(cfg).eval()
    with pytest.raises(ValueError, match=r"multi-label .* shape \(2, 4\), got \(2, 3\)"):
        model(random_clip(KWARGS), labels=torch.rand(2, 3))
    reg = timesformer.TimesformerForVideoClassification(
        timesformer.TimesformerConfig(**{**KWARGS, "num_labels": 1})
    ).eval()
    with pytest.raises(ValueError, match=r"regression labels must have shape \(2,\) or \(2, 1\), got \(3,\)"):
        reg(random_clip(KWARGS), labels=torch.rand(3))


def test_ignore_index_is_accepted(model):
    out = model(random_clip(KWARGS), labels=torch.tensor([-100, 1]))
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_nan_propagates_to_its_clip_only(backend, attention_type):
    cfg = timesformer.TimesformerConfig(**{**KWARGS, "attention_type": attention_type})
    model = randomize_(timesformer.TimesformerModel(cfg, backend=backend), 3).eval()
    x = random_clip(KWARGS, batch=2)
    x[0, 1, 2, 5, 7] = float("nan")
    with torch.no_grad():
        out = model(x).last_hidden_state
        clean = model(x[1:]).last_hidden_state
    assert torch.isnan(out[0]).any()
    assert_close(out[1:], clean)


def test_non_contiguous_and_channels_last_inputs(model):
    x = random_clip(KWARGS, batch=2)
    with torch.no_grad():
        expected = model(x).logits
        # frames stored as [B, T, H, W, C] (what a decoder produces), viewed as [B, T, C, H, W]
        channels_last = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        assert not channels_last.is_contiguous()
        assert_close(model(channels_last).logits, expected)
        padded = torch.randn(2, 2, 3, 16, 32)[..., ::2]
        padded.copy_(x)
        assert_close(model(padded).logits, expected)
        assert_close(model(x.double()).logits, expected)  # other float dtypes are converted


def test_labels_on_other_device(model):
    with pytest.raises(ValueError, match="labels are on meta but the logits are on cpu"):
        model(random_clip(KWARGS), labels=torch.empty(2, dtype=torch.long, device="meta"))
