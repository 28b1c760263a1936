"""Temporal attention of a divided space-time layer, read and written in the model's ``(n t)`` row order.

Row ``n * T + t`` of ``x[:, 1:]`` is patch ``n`` of frame ``t`` (DESIGN.md section 1), so the ``T`` rows a
temporal sequence attends over are contiguous. One program takes ``BLOCK_P`` patches of one (clip, head):
a ``[BLOCK_P, T, head_dim]`` tile of q, k and v, the ``T x T`` scores of every patch at once as one batched
``tl.dot``, and a softmax without a key loop. Packing several patches per program keeps programs large when
``T`` is 8; batching the product per patch, rather than one block-diagonal product over all rows, keeps a NaN
in one patch's values out of its neighbours' outputs.

The ``T x T`` scores of a tile live in registers, so one tile holds at most ``max_frames_in_tile(dtype)``
frames (32, or 16 for float32: full-precision FMA products hold whole operand strips in registers, and on
TF32 tensor cores float32 operands take twice bf16's registers): past that the compiled kernel spills
(``make gpu-compile``). Longer clips (TimeSformer-L's 96 frames) run
each patch's ``T`` rows as one sequence of the online-softmax kernel of ``attention.py``, which walks the keys
in blocks.

Pure-torch reference: ``timesformer.torch_ops.temporal_attention``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._common import (
    batch_row_strides,
    block_head,
    check_out,
    check_qkv,
    dot_precision,
    interpreting,
    needs_int64,
    next_pow2,
    on_device,
)
from ._triton_utils import mma, to_dtype
from .attention import _launch_joint

# ----------------------------------------------------------------------------------------------------- kernel


@triton.jit
def _temporal_attention_kernel(
    # Pointers: q, k, v, output
    Q,
    K,
    V,
    Out,
    # Strides (batch, row) of each; the hidden dimension has unit stride
    stride_qb,
    stride_qr,
    stride_kb,
    stride_kr,
    stride_vb,
    stride_vr,
    stride_ob,
    stride_or,
    # Sizes: patches N and frames T per clip (row n * T + t); softmax scale times log2(e)
    num_patches,
    num_frames,
    qk_scale,
    # Head size and its padded tile width
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    # Tile sizes: frames (padded) per patch, patches per program
    BLOCK_T: tl.constexpr,
    BLOCK_P: tl.constexpr,
    # tl.dot input precision, interpreter fixes (_triton_utils), 64-bit offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
    INT64: tl.constexpr,
):
    # (clip, patch block) is flattened on axis 0 because the batch can exceed the 65535 limit of axes 1 and 2.
    num_pb = tl.cdiv(num_patches, BLOCK_P)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    b = pid // num_pb
    pid_p = pid % num_pb
    if INT64:
        b = b.to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    rows = offs_p[:, None] * num_frames + offs_t[None, :]  # [P, T]: the (n t) row of each tile slot
    if INT64:
        rows = rows.to(tl.int64)
    frame_ok = offs_t < num_frames
    row_ok = (offs_p < num_patches)[:, None] & frame_ok[None, :]
    mask = row_ok[:, :, None] & (offs_d < HEAD_DIM)[None, None, :]
    col = h * HEAD_DIM + offs_d[None, None, :]

    q = tl.load(Q + b * stride_qb + rows[:, :, None] * stride_qr + col, mask=mask, other=0.0)
    k = tl.load(K + b * stride_kb + rows[:, :, None] * stride_kr + col, mask=mask, other=0.0)
    v = tl.load(V + b * stride_vb + rows[:, :, None] * stride_vr + col, mask=mask, other=0.0)

    # Scores in fp32; the softmax scale and log2(e) are applied here, not to q, so that q keeps its
    # input precision for the product.
    s = mma(q, tl.trans(k, (0, 2, 1)), DOT_PRECISION, INTERPRET) * qk_scale  # [P, T, T]
    s = tl.where(frame_ok[None, None, :], s, float("-inf"))
    m = tl.max(s, 2)
    # The normalizer sums the probabilities as rounded for the product: each output's weights sum to one.
    p = to_dtype(tl.math.exp2(s - m[:, :, None]), V.dtype.element_ty, INTERPRET)
    denom = tl.sum(p.to(tl.float32), 2)
    o = mma(p, v, DOT_PRECISION, INTERPRET) / denom[:, :, None]

    tl.store(
        Out + b * stride_ob + rows[:, :, None] * stride_or + col,
        to_dtype(o, Out.dtype.element_ty, INTERPRET),
        mask=mask,
    )


# -------------------------------------------------------------------------------------------- argument checks


def _check_temporal(q, k, v, num_frames: int, num_heads: int) -> tuple[int, int, int]:
    """Validate the op's inputs; returns ``(num_patches, head_dim, batch)``."""
    op = "temporal_attention"
    _, head_dim = check_qkv(op, q, k, v, num_heads)
    if q.shape != k.shape:
        raise ValueError(f"{op}: q, k, v must have the same shape, got {tuple(q.shape)} and {tuple(k.shape)}")
    if num_frames < 1:
        raise ValueError(f"{op}: num_frames must be at least 1, got {num_frames}")
    rows = q.shape[1]
    if rows % num_frames:
        raise ValueError(f"{op}: q has {rows} rows, not a multiple of num_frames={num_frames}")
    return rows // num_frames, head_dim, q.shape[0]


# --------------------------------------------------------------------------------------- launch configuration

# T is padded to a power of two; 16 is the smallest reduction length tl.dot takes for 16-bit inputs
# (the probabilities @ values product reduces over frames).
MIN_BLOCK_T = 16


def max_frames_in_tile(dtype: torch.dtype) -> int:
    """The most frames one program's tile holds without spilling (checked by ``make gpu-compile`` on
    sm_80/sm_90 with Triton 3.6 and the current version: 64 frames spill on 3.6 at head size 128, and 32
    float32 frames on TF32 at head size 128, even one patch per program)."""
    return 16 if dtype == torch.float32 else 32


def _launch_config(num_frames: int, head_dim: int, dtype: torch.dtype) -> dict:
    # Fixed, not autotuned: see kernels/__init__.py. 64 rows per program on tensor cores (4 patches of 16
    # padded frames at TimeSformer's T = 8); 16 for full-precision float32, whose FMA products keep whole
    # operand strips in registers (32 rows spill at head size 128).
    block_t = max(MIN_BLOCK_T, next_pow2(num_frames))
    rows = 16 if dot_precision(dtype) == "ieee" else 64
    return dict(BLOCK_T=block_t, BLOCK_P=max(1, rows // block_t), BLOCK_D=block_head(head_dim), num_warps=4)


# --------------------------------------------------------------------------------------------------- launcher


def _launch(q, k, v, out, num_frames: int, num_heads: int, sizes, int64: bool | None) -> torch.Tensor:
    """Launch on checked arguments (``sizes``: ``_check_temporal``'s ``(num_patches, head_dim, batch)``)."""
    num_patches, head_dim, batch = sizes
    if out.numel() == 0:
        return out
    if num_frames > max_frames_in_tile(q.dtype):
        # Each patch's T contiguous rows as one sequence: (batch, N * T, hidden) seen as (batch * N, T, hidden)
        # where the batch stride allows that view, else one launch per clip.
        def seqs(x: torch.Tensor) -> torch.Tensor:
            return x.as_strided((x.shape[0] * num_patches, num_frames, x.shape[2]),
                                (num_frames * x.stride(1), x.stride(1), 1))  # fmt: skip

        # The views of checked arguments are valid attention arguments: launched without checking again.
        tensors = (q, k, v, out)
        if batch == 1 or all(x.stride(0) == num_patches * num_frames * x.stride(1) for x in tensors):
            _launch_joint(*map(seqs, tensors), num_heads, head_dim, int64)
        else:
            for b in range(batch):
                _launch_joint(*(seqs(x[b : b + 1]) for x in tensors), num_heads, head_dim, int64)
        return out
    cfg = _launch_config(num_frames, head_dim, q.dtype)
    grid = (triton.cdiv(num_patches, cfg["BLOCK_P"]) * batch, num_heads)
    with on_device(q):
        _temporal_attention_kernel[grid](
            q,
            k,
            v,
            out,
            *batch_row_strides(q, k, v, out),
            num_patches,
            num_frames,
            head_dim**-0.5 * math.log2(math.e),
            HEAD_DIM=head_dim,
            DOT_PRECISION=dot_precision(q.dtype),
            INTERPRET=interpreting(),
            INT64=needs_int64(q, k, v, out) if int64 is None else int64,
            **cfg,
        )
    return out


def temporal_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    num_frames: int,
    num_heads: int,
    *,
    int64: bool | None = None,
) -> torch.Tensor:
    """Launcher of ``temporal_attention``: writes ``out`` and returns it.

    Args:
        q, k, v: as for ``temporal_attention``.
        out: ``(batch, num_patches * T, hidden)``, any strides with a contiguous last dimension.
        int64: index in 64 bits; default: only when an offset into a tensor can exceed 2**31 - 1.
    """
    sizes = _check_temporal(q, k, v, num_frames, num_heads)
    check_out("temporal_attention", "out", out, q.shape, q, reads={"q": q, "k": k, "v": v})
    return _launch(q, k, v, out, num_frames, num_heads, sizes, int64)


# ----------------------------------------------------------------------------------------------------- the op


@torch.library.custom_op("timesformer::temporal_attention", mutates_args=())
def _temporal_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, num_heads: int
) -> torch.Tensor:
    sizes = _check_temporal(q, k, v, num_frames, num_heads)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return _launch(q, k, v, out, num_frames, num_heads, sizes, None)


@_temporal_attention_op.register_fake
def _(q, k, v, num_frames, num_heads):
    _check_temporal(q, k, v, num_frames, num_heads)
    return q.new_empty(q.shape)


def temporal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, num_heads: int
) -> torch.Tensor:
    """Softmax attention over the ``T`` frames of each (clip, patch, head), in the model's row order.

    Args:
        q, k, v: ``(batch, num_patches * T, hidden)``, row ``n * T + t`` = patch ``n`` of frame ``t``. Any
            strides with a contiguous last dimension, e.g. the three thirds of one packed
            ``(batch, num_patches * T, 3 * hidden)`` projection.
        num_frames: ``T`` (any; past ``max_frames_in_tile`` each patch is a sequence of the online-softmax
            kernel).
        num_heads: heads; ``head_dim = hidden // num_heads``, 1 to 128.

    Returns:
        ``(batch, num_patches * T, hidden)`` contiguous contexts, rows in the same order.
    """
    return torch.ops.timesformer.temporal_attention(q, k, v, num_frames, num_heads)
