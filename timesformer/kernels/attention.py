"""Spatial (CLS + one frame) and joint / space-only attention: one online-softmax kernel, two row maps.

Every sequence this kernel attends over is "row 0, then rows at a fixed stride":

- spatial pass of a divided layer, sequence (clip ``b``, frame ``t``): position 0 is CLS (row 0 of the clip,
  projected once per clip, DESIGN.md section 2) and position ``i > 0`` is row ``1 + (i - 1) * T + t``, patch
  ``i - 1`` of frame ``t`` in the model's ``(n t)`` order;
- joint space-time and space-only layers: the same map with ``T = 1`` (position ``i`` is row ``i``).

So the kernel gathers q, k and v rows where the projection wrote them (no permute, cat or repeat of CLS) and
writes each query's context to its place: CLS contexts to a ``(batch, T, hidden)`` tensor (one per frame, the
caller averages them), patch contexts back in ``(n t)`` order. One program takes ``BLOCK_M`` queries of one
(sequence, head) and runs FlashAttention's online softmax over key blocks, so any sequence length works
(``N = 784`` for TimeSformer-HR, 18817 tokens for joint attention at TimeSformer-L's 96 frames).

Pure-torch references: ``timesformer.torch_ops.spatial_attention``, ``spatial_cls_attention``, ``attention``
and ``cls_attention``.
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
    on_device,
)
from ._triton_utils import mma, to_dtype

# ----------------------------------------------------------------------------------------------------- kernel


@triton.jit
def _attention_fwd_kernel(
    # Pointers: q, k, v, the CLS (position 0) output, the other positions' output
    Q,
    K,
    V,
    Out_cls,
    Out_rows,
    # Strides (batch, row) of each; the hidden dimension has unit stride
    stride_qb,
    stride_qr,
    stride_kb,
    stride_kr,
    stride_vb,
    stride_vr,
    stride_cb,
    stride_ct,
    stride_ob,
    stride_or,
    # Sizes: queries and keys per sequence, frames T (the row stride of a sequence), Out_rows' row of
    # position 1; softmax scale times log2(e)
    num_queries,
    num_keys,
    num_frames,
    out_row0,
    qk_scale,
    # Head size and its padded tile width
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    # Tile sizes: queries per program, keys per step
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    # tl.dot input precision, interpreter fixes (_triton_utils), 64-bit offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
    INT64: tl.constexpr,
):
    # Query blocks of one sequence are neighbours on axis 0, so they run together and share its keys
    # in L2; (sequence, block) is flattened because B * T can exceed the 65535 limit of axes 1 and 2.
    num_m = tl.cdiv(num_queries, BLOCK_M)
    pid = tl.program_id(0)
    h = tl.program_id(1)
    seq = pid // num_m
    b = seq // num_frames
    t = seq % num_frames
    if INT64:
        b = b.to(tl.int64)

    offs_m = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    col = h * HEAD_DIM + offs_d[None, :]

    q_rows = tl.where(offs_m == 0, 0, 1 + (offs_m - 1) * num_frames + t)
    if INT64:
        q_rows = q_rows.to(tl.int64)
    m_ok = offs_m < num_queries
    q = tl.load(
        Q + b * stride_qb + q_rows[:, None] * stride_qr + col, mask=m_ok[:, None] & d_ok[None, :], other=0.0
    )

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    K_seq = K + b * stride_kb + col
    V_seq = V + b * stride_vb + col
    for start_n in range(0, num_keys, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k_rows = tl.where(offs_n == 0, 0, 1 + (offs_n - 1) * num_frames + t)
        if INT64:
            k_rows = k_rows.to(tl.int64)
        n_ok = offs_n < num_keys
        kv_mask = n_ok[:, None] & d_ok[None, :]
        k = tl.load(K_seq + k_rows[:, None] * stride_kr, mask=kv_mask, other=0.0)
        # fp32 scores; the scale (with log2(e), for exp2) is applied after the product so that q keeps
        # its input precision.
        s = mma(q, tl.trans(k), DOT_PRECISION, INTERPRET) * qk_scale
        s = tl.where(n_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        # A row whose scores so far are all -inf (products that overflowed) subtracts 0, not -inf: its
        # probabilities are then 0 rather than exp2(-inf + inf) = NaN, which no later block would undo.
        m_sub = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.math.exp2(m_i - m_sub)
        # The normalizer sums the probabilities as rounded for the product, so that the weights of each
        # output still sum to one (halves the error of 16-bit outputs on short sequences).
        p = to_dtype(tl.math.exp2(s - m_sub[:, None]), V.dtype.element_ty, INTERPRET)
        l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
        v = tl.load(V_seq + k_rows[:, None] * stride_vr, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + mma(p, v, DOT_PRECISION, INTERPRET)
        m_i = m_new
    acc = acc / l_i[:, None]

    # Position 0 (CLS) goes to the per-frame CLS output, the others back to their (n t) row.
    out_rows = out_row0 + (offs_m - 1) * num_frames + t
    if INT64:
        out_rows = out_rows.to(tl.int64)
    cls_ptrs = Out_cls + b * stride_cb + t * stride_ct + col
    row_ptrs = Out_rows + b * stride_ob + out_rows[:, None] * stride_or + col
    out_ptrs = tl.where((offs_m == 0)[:, None], cls_ptrs, row_ptrs)
    tl.store(
        out_ptrs, to_dtype(acc, Out_rows.dtype.element_ty, INTERPRET), mask=m_ok[:, None] & d_ok[None, :]
    )


# --------------------------------------------------------------------------------------- launch configuration


def _launch_config(head_dim: int, dtype: torch.dtype) -> dict:
    # Fixed, not autotuned: see kernels/__init__.py. 64 x 64 tiles suit the short sequences here (197 keys
    # per spatial sequence: a 128-row query block would be 23% padding either way) at TimeSformer's head
    # size 64. Other head sizes take 32-key blocks: at 96-128 (padded) q, the fp32 accumulator and a 64-key
    # block reach 255 registers and spill on sm_80. Heads of 32 or less take 2 warps: with 4, ptxas spills
    # 4-28 bytes on sm_80 at 72-96 registers in some specializations (Triton 3.6 and 3.9). Full-precision
    # float32 products run on the FMA units and keep whole operand strips in registers: 32 x 16 tiles
    # (64 x 32 spills at head size 64, heavily at 128). float32 on TF32 tensor cores at head sizes over 64:
    # 16-key blocks (64 x 32 spills 12 B on sm_80; 8 warps fit too, at one block per SM; not measured which
    # is faster).
    warps = 4
    if dot_precision(dtype) == "ieee":
        block_m, block_n = 32, 16
    elif 32 < head_dim <= 64:
        block_m, block_n = 64, 64
    elif dtype == torch.float32 and head_dim > 64:
        block_m, block_n = 64, 16
    else:
        block_m, block_n = 64, 32
        if head_dim <= 32:
            warps = 2
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_head(head_dim), num_warps=warps, num_stages=2)


# --------------------------------------------------------------------------------------------------- launcher


def _launch(
    q, k, v, out_cls, out_rows, out_row0, num_queries, num_keys, num_frames, num_heads, head_dim, int64
):
    """Launch the kernel on checked arguments: the sequences of ``num_queries`` queries over ``num_keys``
    keys, position 0 at row 0 and position ``i > 0`` at row ``1 + (i - 1) * num_frames + t`` of each
    frame ``t``; position 0's context goes to ``out_cls[b, t]``, position ``i``'s to row
    ``out_row0 + (i - 1) * num_frames + t`` of ``out_rows``."""
    cfg = _launch_config(head_dim, q.dtype)
    grid = (triton.cdiv(num_queries, cfg["BLOCK_M"]) * q.shape[0] * num_frames, num_heads)
    with on_device(q):
        _attention_fwd_kernel[grid](
            q,
            k,
            v,
            out_cls,
            out_rows,
            *batch_row_strides(q, k, v, out_cls, out_rows),
            num_queries,
            num_keys,
            num_frames,
            out_row0,
            head_dim**-0.5 * math.log2(math.e),
            HEAD_DIM=head_dim,
            DOT_PRECISION=dot_precision(q.dtype),
            INTERPRET=interpreting(),
            INT64=needs_int64(q, k, v, out_cls, out_rows) if int64 is None else int64,
            **cfg,
        )


# ------------------------------------------------------------------------------- joint / space-only attention


def _check_joint(q, k, v, num_heads: int) -> int:
    """Validate ``attention``'s inputs; returns ``head_dim``."""
    op = "attention"
    _, head_dim = check_qkv(op, q, k, v, num_heads)
    if q.shape[1] not in (k.shape[1], 1) or k.shape[1] == 0:
        raise ValueError(
            f"{op}: q must have as many rows as k ({k.shape[1]}) or one (a CLS query), got {q.shape[1]}"
        )
    return head_dim


def _launch_joint(q, k, v, out, num_heads: int, head_dim: int, int64: bool | None) -> torch.Tensor:
    """Launch ``attention`` on checked arguments; returns ``out``."""
    if out.numel():
        # T = 1: position i is row i of q, k, v and of out (position 0 through the "CLS" pointer).
        _launch(q, k, v, out, out, 1, q.shape[1], k.shape[1], 1, num_heads, head_dim, int64)
    return out


def attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    num_heads: int,
    *,
    int64: bool | None = None,
) -> torch.Tensor:
    """Launcher of ``attention``: writes ``out`` (``(batch, q_len, hidden)``, any strides with a contiguous
    last dimension) and returns it. ``int64``: index in 64 bits (default: only where offsets need it)."""
    head_dim = _check_joint(q, k, v, num_heads)
    check_out("attention", "out", out, q.shape, q, reads={"q": q, "k": k, "v": v})
    return _launch_joint(q, k, v, out, num_heads, head_dim, int64)


@torch.library.custom_op("timesformer::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    head_dim = _check_joint(q, k, v, num_heads)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    return _launch_joint(q, k, v, out, num_heads, head_dim, None)


@_attention_op.register_fake
def _(q, k, v, num_heads):
    _check_joint(q, k, v, num_heads)
    return q.new_empty(q.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Softmax attention of every query over a whole sequence (joint space-time and space-only layers).

    Args:
        q: ``(batch, q_len, hidden)``: ``q_len`` is ``seqlen``, or 1 for the CLS query alone (row 0).
        k, v: ``(batch, seqlen, hidden)``. Any strides with a contiguous last dimension, e.g. the thirds of
            one packed ``(batch, seqlen, 3 * hidden)`` projection.
        num_heads: heads; ``head_dim = hidden // num_heads``, 1 to 128.

    Returns:
        ``(batch, q_len, hidden)`` contiguous contexts.
    """
    return torch.ops.timesformer.attention(q, k, v, num_heads)


# ------------------------------------------------------------------------------------------ spatial attention


def _check_spatial(q, k, v, num_frames: int, num_heads: int) -> int:
    """Validate ``spatial_attention``'s inputs; returns ``head_dim``."""
    op = "spatial_attention"
    _, head_dim = check_qkv(op, q, k, v, num_heads)
    rows = k.shape[1]
    if num_frames < 1 or rows < 1 or (rows - 1) % num_frames:
        raise ValueError(
            f"{op}: k has {rows} rows, expected 1 + num_patches * num_frames with num_frames={num_frames}"
        )
    if q.shape[1] not in (rows, 1):
        raise ValueError(f"{op}: q must have as many rows as k ({rows}) or one (CLS), got {q.shape[1]}")
    return head_dim


def _launch_spatial(
    q, k, v, patch_out, cls_out, num_frames: int, num_heads: int, head_dim: int, int64: bool | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch ``spatial_attention`` on checked arguments; returns ``(patch_out, cls_out)``."""
    if cls_out.numel():
        num_keys = 1 + (k.shape[1] - 1) // num_frames
        num_queries = num_keys if q.shape[1] > 1 else 1
        # A CLS-only query writes no patch rows: the kernel gets the CLS output for both pointers.
        rows_out = patch_out if patch_out.numel() else cls_out
        _launch(q, k, v, cls_out, rows_out, 0, num_queries, num_keys, num_frames, num_heads, head_dim, int64)
    return patch_out, cls_out


def spatial_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    patch_out: torch.Tensor,
    cls_out: torch.Tensor,
    num_frames: int,
    num_heads: int,
    *,
    int64: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher of ``spatial_attention``: writes and returns ``(patch_out, cls_out)``.

    Args:
        patch_out: ``(batch, q_rows - 1, hidden)``, any strides with a contiguous last dimension.
        cls_out: ``(batch, T, hidden)``, likewise.
        int64: index in 64 bits (default: only where offsets need it).
    """
    op = "spatial_attention"
    head_dim = _check_spatial(q, k, v, num_frames, num_heads)
    batch, hidden = q.shape[0], q.shape[2]
    reads = {"q": q, "k": k, "v": v}
    check_out(op, "patch_out", patch_out, (batch, q.shape[1] - 1, hidden), q, reads=reads)
    check_out(op, "cls_out", cls_out, (batch, num_frames, hidden), q, reads={**reads, "patch_out": patch_out})
    return _launch_spatial(q, k, v, patch_out, cls_out, num_frames, num_heads, head_dim, int64)


@torch.library.custom_op("timesformer::spatial_attention", mutates_args=())
def _spatial_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    head_dim = _check_spatial(q, k, v, num_frames, num_heads)
    batch, hidden = q.shape[0], q.shape[2]
    patch_ctx = torch.empty(batch, q.shape[1] - 1, hidden, dtype=q.dtype, device=q.device)
    cls_ctx = torch.empty(batch, num_frames, hidden, dtype=q.dtype, device=q.device)
    return _launch_spatial(q, k, v, patch_ctx, cls_ctx, num_frames, num_heads, head_dim, None)


@_spatial_attention_op.register_fake
def _(q, k, v, num_frames, num_heads):
    _check_spatial(q, k, v, num_frames, num_heads)
    batch, hidden = q.shape[0], q.shape[2]
    return q.new_empty(batch, q.shape[1] - 1, hidden), q.new_empty(batch, num_frames, hidden)


def spatial_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_frames: int, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over CLS plus the patches of each frame, in the model's row order (divided layers).

    For each (clip, frame, head) the queries are CLS and the ``N`` patch rows of that frame (rows at stride
    ``T``); keys and values are the same ``1 + N`` rows, CLS's taken from row 0 for every frame.

    Args:
        q: ``(batch, 1 + N * T, hidden)``, row 0 CLS then rows in ``(n t)`` order; or ``(batch, 1, hidden)``,
            the CLS query alone (the last layer of a classifier needs nothing else).
        k, v: ``(batch, 1 + N * T, hidden)`` in the same order. Any strides with a contiguous last
            dimension, e.g. the thirds of one packed projection.
        num_frames: ``T``.
        num_heads: heads; ``head_dim = hidden // num_heads``, 1 to 128.

    Returns:
        ``(patch_ctx, cls_ctx)``: ``(batch, N * T, hidden)`` contexts in ``(n t)`` order (``(batch, 0,
        hidden)`` for a CLS-only query), and ``(batch, T, hidden)``, the CLS context of each frame.
    """
    return torch.ops.timesformer.spatial_attention(q, k, v, num_frames, num_heads)
