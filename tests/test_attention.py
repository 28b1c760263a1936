"""The online-softmax attention kernel: spatial attention with CLS, and joint / space-only attention.

Against the float64 references in ``timesformer.torch_ops``. Runs on a GPU when one is present, else in Triton's
interpreter (TRITON_INTERPRET=1, set by conftest).
"""

from __future__ import annotations

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
from timesformer.kernels import attention as ka
from timesformer.kernels._common import needs_int64

# ------------------------------------------------------------------------------------------ spatial

# (batch, patches, frames, heads, head_dim): N not a multiple of the 64-key block (1, 7, 49, 196, 785),
# T = 1 and odd T, head sizes that are not powers of two.
SPATIAL_SHAPES = [
    (1, 1, 1, 1, 32),
    (2, 7, 3, 2, 80),
    (1, 49, 5, 1, 96),
    (2, 64, 2, 1, 16),
    (1, 196, 2, 1, 64),
    (1, 785, 1, 1, 32),
    (3, 5, 8, 3, 12),
]


def _spatial(batch, patches, frames, heads, head_dim, dtype, seed, cls_only=False):
    hidden = heads * head_dim
    qkv = random_qkv(batch, 1 + patches * frames, hidden, seed).to(dtype)
    exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), frames, heads)
    with plain_torch_attention():
        plain_p, plain_c = torch_ops.spatial_attention(qkv, frames, heads)
    q, k, v = qkv.split(hidden, -1)
    if cls_only:
        q = q[:, :1]
    patch_out = poisoned((batch, q.shape[1] - 1, hidden), dtype)
    cls_out = poisoned((batch, frames, hidden), dtype)
    ka.spatial_attention_fwd(q, k, v, patch_out, cls_out, frames, heads)
    assert_kernel_accuracy(cls_out, exact_c, plain_c)
    if not cls_only:
        assert_kernel_accuracy(patch_out, exact_p, plain_p)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SPATIAL_SHAPES, ids=str)
def test_spatial_attention_shapes(shape, dtype):
    _spatial(*shape, dtype, seed=stable_seed(shape, dtype))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", KERNEL_HEAD_DIMS)
def test_spatial_attention_every_head_size(head_dim, dtype):
    _spatial(2, 9, 3, 2, head_dim, dtype, seed=stable_seed(head_dim, dtype))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 7, 3, 2, 16), (1, 70, 1, 1, 80)], ids=str)
def test_spatial_cls_query_alone(shape, dtype):
    _spatial(*shape, dtype, seed=stable_seed("cls", shape, dtype), cls_only=True)


def test_spatial_custom_op_on_strided_views():
    batch, patches, frames, heads, head_dim = 2, 5, 3, 2, 8
    hidden = heads * head_dim
    buf = random_qkv(2 * batch, 1 + patches * frames + 2, hidden + 3, seed=4).float()
    qkv = buf[1::2, 2:, : 3 * hidden]
    exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), frames, heads)
    patch_ctx, cls_ctx = ka.spatial_attention(*qkv.split(hidden, -1), frames, heads)
    assert patch_ctx.is_contiguous() and cls_ctx.is_contiguous()
    assert_kernel_accuracy(patch_ctx, exact_p)
    assert_kernel_accuracy(cls_ctx, exact_c)


@pytest.mark.parametrize("int64", [False, True])
def test_spatial_int64_indexing_path(int64):
    qkv = random_qkv(2, 1 + 6 * 3, 16, seed=12).float()
    exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), 3, 2)
    p, c = ka.spatial_attention_fwd(
        *qkv.split(16, -1),
        poisoned((2, 18, 16), torch.float32),
        poisoned((2, 3, 16), torch.float32),
        3,
        2,
        int64=int64,
    )
    assert_kernel_accuracy(p, exact_p)
    assert_kernel_accuracy(c, exact_c)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter
def test_spatial_nan_in_a_query_stays_in_its_row():
    batch, patches, frames, heads, head_dim = 1, 5, 3, 2, 8
    hidden = heads * head_dim
    qkv = random_qkv(batch, 1 + patches * frames, hidden, seed=6).float()
    qkv[0, 1 + 2 * frames + 1, 3] = float("nan")  # q of patch 2, frame 1, head 0
    p, c = ka.spatial_attention(*qkv.split(hidden, -1), frames, heads)
    with plain_torch_attention():  # torch's CPU SDPA drops a NaN query row; the reference's math keeps it
        exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), frames, heads)
    assert torch.equal(p.isnan(), exact_p.isnan()) and torch.equal(c.isnan(), exact_c.isnan())
    assert exact_p.isnan().sum() == head_dim and not exact_c.isnan().any()
    ok = ~exact_p.isnan()
    assert rel_err(p[ok], exact_p[ok]) <= 1e-5


@pytest.mark.parametrize("shape", [(2, 7, 3, 2, 80), (1, 70, 2, 1, 64)], ids=str)
def test_spatial_attention_tf32(shape):
    batch, patches, frames, heads, head_dim = shape
    hidden = heads * head_dim
    qkv = random_qkv(batch, 1 + patches * frames, hidden, stable_seed("tf32", shape)).float()
    exact_p, exact_c = torch_ops.spatial_attention(qkv.double(), frames, heads)
    with plain_torch_attention(tf32=True):
        plain_p, plain_c = torch_ops.spatial_attention(qkv, frames, heads)
    patch_out = poisoned((batch, patches * frames, hidden), torch.float32)
    cls_out = poisoned((batch, frames, hidden), torch.float32)
    with tf32_allowed():
        ka.spatial_attention_fwd(*qkv.split(hidden, -1), patch_out, cls_out, frames, heads)
    assert_tf32_accuracy(patch_out, exact_p, plain_p)
    assert_tf32_accuracy(cls_out, exact_c, plain_c)


# -------------------------------------------------------------------------------------------- joint

# (batch, length, heads, head_dim): lengths around the 64-row blocks, 1 + N * T of small clips.
JOINT_SHAPES = [
    (1, 1, 1, 32),
    (2, 2, 2, 80),
    (1, 65, 1, 96),
    (2, 127, 3, 16),
    (1, 197, 1, 64),
    (1, 300, 2, 12),
]


def _joint(batch, length, heads, head_dim, dtype, seed, cls_only=False):
    hidden = heads * head_dim
    qkv = random_qkv(batch, length, hidden, seed).to(dtype)
    exact = torch_ops.attention(qkv.double(), heads)
    with plain_torch_attention():
        plain = torch_ops.attention(qkv, heads)
    q, k, v = qkv.split(hidden, -1)
    if cls_only:
        q, exact, plain = q[:, :1], exact[:, :1], plain[:, :1]
    out = ka.attention_fwd(q, k, v, poisoned(q.shape, dtype), heads)
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", JOINT_SHAPES, ids=str)
def test_joint_attention_shapes(shape, dtype):
    _joint(*shape, dtype, seed=stable_seed("joint", shape, dtype))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("head_dim", KERNEL_HEAD_DIMS)
def test_joint_attention_every_head_size(head_dim, dtype):
    _joint(2, 70, 2, head_dim, dtype, seed=stable_seed("joint", head_dim, dtype))


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_joint_cls_query_alone(dtype):
    _joint(2, 130, 2, 32, dtype, seed=stable_seed("joint-cls", dtype), cls_only=True)


def test_joint_attention_tf32():
    batch, length, heads, head_dim = 2, 97, 2, 48
    hidden = heads * head_dim
    qkv = random_qkv(batch, length, hidden, stable_seed("tf32 joint")).float()
    exact = torch_ops.attention(qkv.double(), heads)
    with plain_torch_attention(tf32=True):
        plain = torch_ops.attention(qkv, heads)
    out = poisoned((batch, length, hidden), torch.float32)
    with tf32_allowed():
        ka.attention_fwd(*qkv.split(hidden, -1), out, heads)
    assert_tf32_accuracy(out, exact, plain)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy, inside the interpreter
def test_joint_nan_in_a_query_stays_in_its_row():
    qkv = random_qkv(2, 70, 16, seed=9).float()
    qkv[1, 66, 4] = float("nan")  # q of row 66, clip 1, head 0 (second query block)
    out = ka.attention(*qkv.split(16, -1), 2)
    with plain_torch_attention():
        exact = torch_ops.attention(qkv.double(), 2)
    assert torch.equal(out.isnan(), exact.isnan()) and exact.isnan().sum() == 8
    ok = ~exact.isnan()
    assert rel_err(out[ok], exact[ok]) <= 1e-5


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's overflow, inside the interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_joint_first_key_block_overflowing_to_minus_inf(dtype):
    """Query 0's scores against the first 64 keys (a whole key block, whatever its size) overflow to -inf
    and the others are finite: softmax gives those keys weight 0; the running max stayed -inf after the first
    block and exp2(-inf + inf) made the row NaN (fp32 and bf16 have the range for the product to overflow)."""
    hidden, heads = 16, 2
    qkv = random_qkv(2, 80, hidden, seed=stable_seed("overflow", dtype))
    q, k, _ = qkv.view(2, 80, 3, hidden).unbind(2)
    q[..., 0], k[..., 0] = 0.0, 0.0  # this feature adds nothing, but for query 0 and the first 64 keys
    q[:, 0, 0], k[:, :64, 0] = 1e20, -1e20
    qkv = qkv.to(dtype)
    exact = torch_ops.attention(qkv.double(), heads)  # scores of -1e40, finite in float64
    with plain_torch_attention():
        plain = torch_ops.attention(qkv, heads)
    out = ka.attention_fwd(*qkv.split(hidden, -1), poisoned((2, 80, hidden), dtype), heads)
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("int64", [False, True])
def test_joint_int64_indexing_path(int64):
    qkv = random_qkv(2, 70, 16, seed=13).float()
    out = ka.attention_fwd(*qkv.split(16, -1), poisoned((2, 70, 16), torch.float32), 2, int64=int64)
    assert_kernel_accuracy(out, torch_ops.attention(qkv.double(), 2))


def test_offsets_past_int32_switch_to_int64():
    """Joint attention over TimeSformer-L's 96 frames at batch 64, and HR's spatial pass at batch 96."""
    qkv = torch.empty(64, 1 + 196 * 96, 3 * 1024, device="meta", dtype=torch.bfloat16)
    q, k, v = qkv.split(1024, -1)
    assert needs_int64(q, k, v) and not needs_int64(*qkv[:8].split(1024, -1))
    assert torch.ops.timesformer.attention(q, k, v, 16).shape == (64, 1 + 196 * 96, 1024)
    hr = torch.empty(96, 1 + 784 * 16, 3 * 768, device="meta", dtype=torch.bfloat16)
    assert needs_int64(*hr.split(768, -1))
    p, c = torch.ops.timesformer.spatial_attention(*hr.split(768, -1), 16, 12)
    assert p.shape == (96, 784 * 16, 768) and c.shape == (96, 16, 768)


def test_bad_input_is_rejected_with_the_numbers():
    qkv = random_qkv(2, 13, 16, seed=1).float()
    q, k, v = qkv.split(16, -1)
    with pytest.raises(
        ValueError, match=r"q must have as many rows as k \(13\) or one \(a CLS query\), got 5"
    ):
        ka.attention(q[:, :5], k, v, 2)
    with pytest.raises(ValueError, match=r"q \(2, 13, 16\) and k \(1, 13, 16\) must agree in batch"):
        ka.attention(q, k[:1], v[:1], 2)
    with pytest.raises(
        ValueError, match=r"k has 13 rows, expected 1 \+ num_patches \* num_frames with num_frames=5"
    ):
        ka.spatial_attention(q, k, v, 5, 2)
    with pytest.raises(
        ValueError, match=r"must have 3 dimensions \(batch, rows, hidden\), got shape \(13, 16\)"
    ):
        ka.attention(q[0], k[0], v[0], 2)
    with pytest.raises(ValueError, match=r"q must be contiguous along its last \(hidden\) dimension"):
        ka.spatial_attention(qkv[..., ::3], k, v, 3, 2)
    with pytest.raises(ValueError, match="out overlaps q in memory"):
        ka.attention_fwd(q, k, v, qkv[..., 8:24], 2)
    with pytest.raises(ValueError, match="cls_out overlaps patch_out in memory"):
        patch_out = torch.empty(2, 12, 16, device=DEVICE)
        ka.spatial_attention_fwd(q, k, v, patch_out, patch_out[:, :3], 3, 2)
    with pytest.raises(ValueError, match=r"cls_out must have shape \(2, 3, 16\), got \(2, 4, 16\)"):
        ka.spatial_attention_fwd(
            q, k, v, torch.empty(2, 12, 16, device=DEVICE), torch.empty(2, 4, 16, device=DEVICE), 3, 2
        )


def test_cpu_tensors_without_the_interpreter_are_refused_clearly(monkeypatch):
    """Triton's own error for CPU tensors is "0 active drivers ([]). There should only be one."."""
    from timesformer.kernels import attention

    q = torch.randn(1, 5, 3 * 8)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match=r"run on CUDA tensors, or on the CPU in Triton's interpreter"):
        attention.attention(q, q, q, 2)
