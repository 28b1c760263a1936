"""The pure-torch attention ops (the sdpa backend's, and the Triton kernels' references) against explicit math."""

from __future__ import annotations

import pytest
import torch
from conftest import ATTENTION_TYPES, assert_close, make_pair, random_clip

from timesformer import torch_ops


def _softmax_attention(q, k, v):
    """q: [..., Lq, dh], k/v: [..., Lk, dh], float64."""
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    return scores.softmax(-1) @ v


def _heads(t, heads):  # [..., L, D] -> [..., heads, L, dh]
    return t.unflatten(-1, (heads, -1)).transpose(-3, -2)


def _merge(t):  # [..., heads, L, dh] -> [..., L, D]
    return t.transpose(-3, -2).flatten(-2)


SHAPES = [  # (batch, patches, frames, heads, head_dim): primes and ones on purpose
    (1, 1, 1, 1, 4),
    (2, 3, 5, 2, 8),
    (1, 7, 2, 3, 5),
    (3, 4, 1, 1, 16),
]


@pytest.mark.parametrize("b,n,t,h,dh", SHAPES)
def test_temporal_attention(b, n, t, h, dh):
    d = h * dh
    qkv = torch.randn(b, n * t, 3 * d, dtype=torch.float64)
    q, k, v = (_heads(x.reshape(b, n, t, d), h) for x in qkv.split(d, -1))
    expected = _merge(_softmax_attention(q, k, v)).reshape(b, n * t, d)
    assert_close(torch_ops.temporal_attention(qkv, t, h), expected, rel=1e-12, abs_=1e-12)


@pytest.mark.parametrize("b,n,t,h,dh", SHAPES)
def test_spatial_attention_and_cls_query(b, n, t, h, dh):
    d = h * dh
    qkv = torch.randn(b, 1 + n * t, 3 * d, dtype=torch.float64)
    cls, patches = qkv[:, :1], qkv[:, 1:].reshape(b, n, t, 3 * d).transpose(1, 2)  # [B, T, N, 3D]
    seqs = torch.cat((cls[:, None].expand(b, t, 1, 3 * d), patches), 2)  # [B, T, 1+N, 3D]
    q, k, v = (_heads(x, h) for x in seqs.split(d, -1))
    out = _merge(_softmax_attention(q, k, v))  # [B, T, 1+N, D]
    patch_ctx, cls_ctx = torch_ops.spatial_attention(qkv, t, h)
    assert_close(patch_ctx, out[:, :, 1:].transpose(1, 2).reshape(b, n * t, d), rel=1e-12, abs_=1e-12)
    assert_close(cls_ctx, out[:, :, 0], rel=1e-12, abs_=1e-12)
    alone = torch_ops.spatial_cls_attention(qkv[:, 0, :d], qkv[:, :, d:], t, h)
    assert_close(alone, out[:, :, 0], rel=1e-12, abs_=1e-12)


@pytest.mark.parametrize("b,length,h,dh", [(1, 1, 1, 4), (2, 13, 3, 8), (3, 6, 2, 5)])
def test_attention_and_cls_attention(b, length, h, dh):
    d = h * dh
    qkv = torch.randn(b, length, 3 * d, dtype=torch.float64)
    q, k, v = (_heads(x, h) for x in qkv.split(d, -1))
    expected = _merge(_softmax_attention(q, k, v))
    assert_close(torch_ops.attention(qkv, h), expected, rel=1e-12, abs_=1e-12)
    assert_close(
        torch_ops.cls_attention(qkv[:, 0, :d], qkv[:, :, d:], h), expected[:, 0], rel=1e-12, abs_=1e-12
    )


def test_bad_packing_is_rejected():
    with pytest.raises(ValueError, match="3 \\* num_heads \\* head_dim with num_heads=4, got 18"):
        torch_ops.attention(torch.randn(1, 2, 18), 4)
    with pytest.raises(ValueError, match="not a multiple of num_frames=3"):
        torch_ops.temporal_attention(torch.randn(1, 4, 12), 3, 2)
    for op, rows in (
        (torch_ops.temporal_attention, 4),
        (torch_ops.spatial_attention, 5),
    ):  # was ZeroDivisionError
        with pytest.raises(ValueError, match="num_frames must be at least 1, got 0"):
            op(torch.randn(1, rows, 12), 0, 2)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_classifier_cls_only_last_layer(hf, attention_type, layers):
    """The classifier's last layer runs on CLS only (no hidden_states asked): logits still match."""
    ref, ours, kwargs = make_pair(hf, attention_type, seed=70, num_hidden_layers=layers)
    ours.set_backend("sdpa")
    x = random_clip(kwargs, batch=3)
    with torch.no_grad():
        assert_close(ours(x).logits, ref(x).logits)


@pytest.mark.parametrize("kind", [list, tuple, torch.tensor], ids=["list", "tuple", "tensor"])
def test_normalize_frames_takes_numbers_or_a_tensor(kind):
    """mean and std are filled on the frames' device (no host-to-device copy, which a CUDA-graph capture
    refuses): the same values as the formula, whichever form they come in."""
    gen = torch.Generator().manual_seed(5)
    frames = torch.randint(0, 256, (2, 3, 5, 7, 3), dtype=torch.uint8, generator=gen)
    mean, std, rescale = [0.41, 0.52, 0.63], [0.21, 0.26, 0.33], 1 / 255
    got = torch_ops.normalize_frames(frames, kind(mean), kind(std), rescale)
    x = frames.permute(0, 1, 4, 2, 3).float()
    expected = (x * rescale - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)
    assert got.shape == (2, 3, 3, 5, 7) and torch.equal(got, expected)
