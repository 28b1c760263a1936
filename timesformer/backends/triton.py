"""The ``triton`` backend: the ``sdpa`` backend's layer code with attention run by the Triton kernels.

Attention reads q, k and v where the projections wrote them (views of one packed ``qkv``; no permute, cat
or repeat) and writes contexts in the model's row order. The projections, LayerNorms and MLP still run on
torch ops until the fusion kernels land.

The kernels are inference kernels (no backward, no attention dropout): a call that records autograd or
runs in training mode uses the torch ops (the ``sdpa`` backend's path) for that call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .. import ops as torch_ops
from ..kernels import attention as _attn
from ..kernels import temporal_attention as _temporal
from .sdpa import SdpaBackend

if TYPE_CHECKING:
    from .base import Step


def _thirds(packed: torch.Tensor, parts: int = 3) -> tuple[torch.Tensor, ...]:
    """Views of the q, k, v (or k, v) thirds of a packed projection: strided, no copy."""
    width = packed.shape[-1]
    if width % parts:
        raise ValueError(f"packed projection width {width} is not a multiple of {parts}")
    return packed.split(width // parts, dim=-1)


def _no_dropout(dropout_p: float) -> None:
    if dropout_p:
        raise ValueError(f"the Triton attention kernels have no attention dropout, got dropout_p={dropout_p}")


class KernelOps:
    """``timesformer.ops``' signatures and layouts, computed by the Triton kernels."""

    @staticmethod
    def attention(qkv: torch.Tensor, num_heads: int, dropout_p: float = 0.0) -> torch.Tensor:
        _no_dropout(dropout_p)
        return _attn.attention(*_thirds(qkv), num_heads)

    @staticmethod
    def temporal_attention(
        qkv: torch.Tensor, num_frames: int, num_heads: int, dropout_p: float = 0.0
    ) -> torch.Tensor:
        _no_dropout(dropout_p)
        if num_frames <= _temporal.MAX_FRAMES:
            return _temporal.temporal_attention(*_thirds(qkv), num_frames, num_heads)
        # Past one tile of frames, each patch's T rows are a sequence of their own: the online-softmax
        # kernel takes them as a (batch * N, T) batch (a view of a contiguous projection).
        batch, rows, width = qkv.shape
        seqs = qkv.reshape(batch * (rows // num_frames), num_frames, width)
        return _attn.attention(*_thirds(seqs), num_heads).view(batch, rows, width // 3)

    @staticmethod
    def spatial_attention(
        qkv: torch.Tensor, num_frames: int, num_heads: int, dropout_p: float = 0.0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _no_dropout(dropout_p)
        return _attn.spatial_attention(*_thirds(qkv), num_frames, num_heads)

    @staticmethod
    def cls_attention(q: torch.Tensor, kv: torch.Tensor, num_heads: int) -> torch.Tensor:
        return _attn.attention(q.unsqueeze(1), *_thirds(kv, 2), num_heads).squeeze(1)

    @staticmethod
    def spatial_cls_attention(
        q: torch.Tensor, kv: torch.Tensor, num_frames: int, num_heads: int
    ) -> torch.Tensor:
        return _attn.spatial_attention(q.unsqueeze(1), *_thirds(kv, 2), num_frames, num_heads)[1]


class TritonBackend(SdpaBackend):
    name = "triton"
    ops = KernelOps

    def ops_for(self, step: Step):
        # step.inplace is exactly "eval mode and no autograd" for this backend (supports_inplace); the
        # kernels have no backward and no dropout, so other calls run the torch ops.
        return KernelOps if step.inplace else torch_ops
