"""The analytic FLOP count: DESIGN.md section 4's table, and torch's own count of the models' products."""

from __future__ import annotations

import pytest
import torch
from conftest import ATTENTION_TYPES, make_pair, plain_torch_attention, random_clip
from torch.utils.flop_counter import FlopCounterMode

from timesformer import TimesformerConfig
from timesformer.flops import count_flops


def test_base_matches_design_table():
    base = TimesformerConfig(num_labels=400)  # TimeSformer-base, 8 x 224^2
    as_written = count_flops(base, algebra=False)
    fused = count_flops(base)
    assert round(as_written.total / 1e9, 1) == 391.7
    assert round(fused.total / 1e9, 1) == 369.1
    per_layer = {k: round(v / 1e9, 2) for k, v in fused.per_layer.items()}
    assert per_layer == {
        "qkv_t": 5.55,
        "attn_t": 0.04,
        "out_t": 1.85,
        "dense_t": 0.0,
        "qkv_s": 5.55,
        "attn_s": 0.95,
        "out_s": 1.85,
        "fc1": 7.4,
        "fc2": 7.4,
    }
    assert round((fused.per_layer["fc1"] + fused.per_layer["fc2"]) / 1e9, 2) == 14.81
    assert round(fused.layer_total / 1e9, 1) == 30.6


def test_scales_with_batch_frames_and_size():
    cfg = TimesformerConfig(num_labels=7)
    one = count_flops(cfg).total
    assert count_flops(cfg, 5).total == pytest.approx(5 * one)
    # HR (16 x 448^2) and L (96 x 224^2) are other inputs of the same layer stack.
    hr = count_flops(cfg, num_frames=16, image_size=448)
    assert hr.total > count_flops(cfg, num_frames=96).total / 10 > one / 10
    assert count_flops(cfg, image_size=(224, 448)).total == pytest.approx(
        count_flops(cfg, image_size=(448, 224)).total
    )


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_matches_torch_flop_counter_on_transformers(hf, attention_type):
    """torch's FlopCounterMode counts every mm/bmm/conv the reference runs: that is the "as written" count."""
    ref, ours, kwargs = make_pair(hf, attention_type, seed=3)
    x = random_clip(kwargs, batch=2)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        ref(x)
    expected = count_flops(ours.config, 2, algebra=False)
    assert counter.get_total_flops() == pytest.approx(expected.total, rel=1e-12)


@pytest.mark.parametrize("classification", [False, True])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_matches_torch_flop_counter_on_our_sdpa_backend(hf, attention_type, classification):
    """The sdpa backend does the algebra's work, no more: its products sum to the ``algebra=True`` count
    (the classifier's last layer on the CLS rows only)."""
    _, ours, kwargs = make_pair(hf, attention_type, seed=4, classification=classification)
    ours.set_backend("sdpa")
    frames = kwargs["num_frames"] + 1  # another T than the config's: the count follows the input
    x = random_clip(kwargs, batch=3, frames=frames)
    counter = FlopCounterMode(display=False)
    with torch.no_grad():
        ours(x)  # prepares (and caches) the folded temporal projection, a once-per-model product
        # FlopCounterMode does not see inside CPU SDPA: run its math as matmuls so they are counted.
        with plain_torch_attention(), counter:
            ours(x)
    expected = count_flops(
        ours.config, 3, num_frames=frames, classifier=classification, last_layer_cls_only=classification
    )
    unseen = 0
    if classification and attention_type == "divided_space_time":
        # ops.spatial_cls_attention takes the CLS key and value of each frame by elementwise products
        # (4 FLOPs per head dim), which FlopCounterMode does not count.
        unseen = 4 * 3 * frames * kwargs["hidden_size"]
    assert counter.get_total_flops() + unseen == pytest.approx(expected.total, rel=1e-12)
    assert expected.total < count_flops(ours.config, 3, num_frames=frames, algebra=False).total


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        count_flops(TimesformerConfig(), 0)
    with pytest.raises(ValueError, match="attention_type"):
        count_flops({**TimesformerConfig().to_dict(), "attention_type": "axial"})
    with pytest.raises(ValueError, match="algebra"):
        count_flops(TimesformerConfig(), algebra=False, last_layer_cls_only=True)
    with pytest.raises(ValueError, match="hidden_size"):
        count_flops({})
