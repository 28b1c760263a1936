"""The temporal attention kernel against the float64 reference (``timesformer.torch_ops.temporal_attention``).

Runs on a GPU when one is present, else in Triton's interpreter (TRITON_INTERPRET=1, set by conftest).
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conftest import (
    DEVICE,
    KERNEL_DTYPES,
    KERNEL_HEAD_DIMS,
    assert_kernel_accuracy,
    assert_tf32_accuracy,
    plain_torch_attention,
    poisoned,
    random_qkv,
    rel_err,
    stable_seed,
    tf32_allowed,
)

from timesformer import torch_ops
from timesformer.kernels import temporal_attention as kt
from timesformer.kernels._common import needs_int64

# (batch, patches, frames, heads, head_dim): every T of the issue (odd, 1, TimeSformer-L's 96) with patch
# counts that leave a partial block of patches, and head sizes that are not powers of two.
SHAPES = [
    (1, 1, 1, 1, 32),
    (2, 7, 1, 2, 12),
    (1, 5, 3, 3, 80),
    (2, 3, 5, 1, 96),
    (1, 9, 8, 2, 64),
    (2, 2, 16, 1, 128),
    (1, 2, 96, 1, 64),
    (1, 3, 17, 2, 8),
]


def _run_and_check(batch, patches, frames, heads, head_dim, dtype, seed):
    hidden = heads * head_dim
    qkv = random_qkv(batch, patches * frames, hidden, seed).to(dtype)
    exact = torch_ops.temporal_attention(qkv.double(), frames, heads)
    with plain_torch_attention():
        plain = torch_ops.temporal_attention(qkv, frames, heads)
    out = poisoned((batch, patches * frames, hidden), dtype)
    kt.temporal_attention_fwd(*qkv.split(hidden, -1), out, frames, heads)
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_temporal_attention_shapes(shape, dtype):
    _run_and_check(*shape, dtype, seed=stable_seed(shape, dtype))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", KERNEL_HEAD_DIMS)
def test_temporal_attention_every_head_size(head_dim, dtype):
    _run_and_check(2, 5, 8, 2, head_dim, dtype, seed=head_dim)


@pytest.mark.parametrize("shape", [(2, 7, 8, 2, 64), (1, 3, 96, 1, 80)], ids=str)
def test_temporal_attention_tf32(shape):
    batch, patches, frames, heads, head_dim = shape
    hidden = heads * head_dim
    qkv = random_qkv(batch, patches * frames, hidden, stable_seed("tf32", shape)).float()
    exact = torch_ops.temporal_attention(qkv.double(), frames, heads)
    with plain_torch_attention(tf32=True):
        plain = torch_ops.temporal_attention(qkv, frames, heads)
    out = poisoned((batch, patches * frames, hidden), torch.float32)
    with tf32_allowed():
        kt.temporal_attention_fwd(*qkv.split(hidden, -1), out, frames, heads)
    assert_tf32_accuracy(out, exact, plain)


def test_custom_op_matches_launcher_and_strided_inputs():
    """q, k, v as views of a padded buffer (row and batch strides that are not the packed ones)."""
    batch, patches, frames, heads, head_dim = 3, 4, 5, 2, 16
    hidden = heads * head_dim
    buf = random_qkv(batch * 2, patches * frames + 3, hidden + 7, seed=5).float()
    qkv = buf[::2, 3:, : 3 * hidden]  # batch stride doubled, a row offset, padding at the end of each row
    exact = torch_ops.temporal_attention(qkv.double(), frames, heads)
    out = kt.temporal_attention(*qkv.split(hidden, -1), frames, heads)
    assert out.is_contiguous()
    assert_kernel_accuracy(out, exact)
    # Separate q, k, v tensors (not one packed projection) and a strided output.
    q, k, v = (x.contiguous() for x in qkv.split(hidden, -1))
    wide = poisoned((batch, patches * frames, 2 * hidden), torch.float32)
    kt.temporal_attention_fwd(q, k, v, wide[..., hidden:], frames, heads)
    assert_kernel_accuracy(wide[..., hidden:], exact)
    assert wide[..., :hidden].isnan().all()


@pytest.mark.parametrize("int64", [False, True])
def test_int64_indexing_path_gives_the_same_result(int64):
    qkv = random_qkv(2, 3 * 4, 32, seed=11).float()
    a, b, c = qkv.split(32, -1)
    out = kt.temporal_attention_fwd(a, b, c, poisoned((2, 12, 32), torch.float32), 4, 2, int64=int64)
    assert_kernel_accuracy(out, torch_ops.temporal_attention(qkv.double(), 4, 2))


def test_offsets_past_int32_switch_to_int64():
    """TimeSformer-L at batch 64 in bf16: offsets past 2**31, checked on shapes without memory."""
    qkv = torch.empty(64, 196 * 96, 3 * 1024, device="meta", dtype=torch.bfloat16)
    q, k, v = qkv.split(1024, -1)
    assert needs_int64(q, k, v)
    assert not needs_int64(*qkv[:8].split(1024, -1))
    out = torch.ops.timesformer.temporal_attention(q, k, v, 96, 16)  # the fake implementation
    assert out.shape == (64, 196 * 96, 1024) and out.device.type == "meta"


def test_a_batch_past_65535_clips_stays_on_grid_axis_0():
    """CUDA limits grid axes 1 and 2 to 65535 (the interpreter takes any grid): the clips go on axis 0."""
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    qkv = torch.empty(70_000, 3 * 2, 3 * 8, device="meta")
    with mock.patch.object(kt, "_temporal_attention_kernel", Recorder()):
        kt.temporal_attention_fwd(*qkv.split(8, -1), torch.empty(70_000, 6, 8, device="meta"), 2, 2)
    assert len(grids) == 1 and grids[0][0] >= 70_000 and all(g <= 65535 for g in grids[0][1:])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter
def test_nan_stays_in_its_patch():
    """A NaN in one row's values reaches the outputs of that patch's frames only, not its block neighbours."""
    batch, patches, frames, heads, head_dim = 1, 6, 3, 1, 16
    hidden = heads * head_dim
    qkv = random_qkv(batch, patches * frames, hidden, seed=3).float()
    qkv[0, 2 * frames + 1, 2 * hidden + 5] = float("nan")  # v of patch 2, frame 1, one channel
    out = kt.temporal_attention(*qkv.split(hidden, -1), frames, heads)
    with plain_torch_attention():  # the reference's math (torch's CPU SDPA may drop NaN)
        exact = torch_ops.temporal_attention(qkv.double(), frames, heads)
    assert torch.equal(out.isnan(), exact.isnan())
    assert exact.isnan().any() and not exact[0, : 2 * frames].isnan().any()
    ok = ~exact.isnan()
    assert rel_err(out[ok], exact[ok]) <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("batch_view", ["packed", "strided batch"])
def test_long_clips_take_the_online_softmax_kernel(dtype, batch_view):
    """Past one tile of frames each patch's frames are a sequence of the online-softmax kernel: one launch over
    a packed projection, one per clip where the batch stride does not allow the (batch * N, T) view."""
    frames = kt.max_frames_in_tile(dtype) + 3
    heads, head_dim = 2, 16
    hidden = heads * head_dim
    qkv = random_qkv(2, 3 * frames, hidden, seed=8).to(dtype)
    exact = torch_ops.temporal_attention(qkv.double(), frames, heads)
    with plain_torch_attention():
        plain = torch_ops.temporal_attention(qkv, frames, heads)
    out = poisoned((2, 3 * frames, hidden), dtype)
    if batch_view == "strided batch":
        out = poisoned((2, 3 * frames + 5, hidden), dtype)[:, 5:]
    with mock.patch.object(kt, "_launch_joint", wraps=kt._launch_joint) as online:
        kt.temporal_attention_fwd(*qkv.split(hidden, -1), out, frames, heads)
    assert online.call_count == (1 if batch_view == "packed" else 2)
    assert_kernel_accuracy(out, exact, plain)


def test_bad_input_is_rejected_with_the_numbers():
    qkv = random_qkv(2, 12, 32, seed=1).float()
    q, k, v = qkv.split(32, -1)
    with pytest.raises(ValueError, match=r"q, k, v must share a dtype, got torch.float32, torch.float16"):
        kt.temporal_attention(q, k.half(), v, 4, 2)
    with pytest.raises(
        ValueError, match=r"k and v must have the same shape, got \(2, 12, 32\) and \(2, 11, 32\)"
    ):
        kt.temporal_attention(q, k, v[:, :11], 4, 2)
    with pytest.raises(ValueError, match=r"q has 12 rows, not a multiple of num_frames=5"):
        kt.temporal_attention(q, k, v, 5, 2)
    with pytest.raises(ValueError, match=r"hidden size 32 is not divisible by num_heads=3"):
        kt.temporal_attention(q, k, v, 4, 3)
    with pytest.raises(ValueError, match=r"num_frames must be at least 1, got 0"):
        kt.temporal_attention(q, k, v, 0, 2)
    with pytest.raises(
        ValueError, match=r"v must be contiguous along its last \(hidden\) dimension, got strides"
    ):
        kt.temporal_attention(q, k, qkv[..., 32::2], 4, 2)
    with pytest.raises(ValueError, match=r"take float16, bfloat16, float32, got float64"):
        kt.temporal_attention(q.double(), k.double(), v.double(), 4, 2)
    with pytest.raises(ValueError, match=r"head sizes 1 to 128, got 256"):
        big = random_qkv(1, 2, 256, seed=2).float()
        kt.temporal_attention(*big.split(256, -1), 2, 1)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 12, 32\), got \(2, 12, 16\)"):
        kt.temporal_attention_fwd(q, k, v, torch.empty(2, 12, 16, device=DEVICE), 4, 2)
    with pytest.raises(ValueError, match=r"out must be torch.float32 on"):
        kt.temporal_attention_fwd(q, k, v, torch.empty(2, 12, 32, device=DEVICE, dtype=torch.half), 4, 2)
    if DEVICE.type == "cuda":
        with pytest.raises(ValueError, match=r"q, k, v must be on one device"):
            kt.temporal_attention(q, k.cpu(), v, 4, 2)
