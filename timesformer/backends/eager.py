"""The ``eager`` backend: the reference computation, op for op.

It follows ``transformers``' TimesformerLayer (permute, repeat and cat included) and materializes the
attention maps, so it can return them (``output_attentions=True``) and, in training mode, draws the same
random numbers in the same order as the reference. The one deliberate difference: it uses the input's
frame count and patch grid where the reference uses the config's (DESIGN.md section 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import Backend, ForwardContext, drop_path

if TYPE_CHECKING:
    from ..modeling import TimesformerAttention, TimesformerLayer


def _drop_path(layer: TimesformerLayer, x: torch.Tensor, training: bool) -> torch.Tensor:
    # The reference's TimesformerDropPath: one draw per leading index.
    return drop_path(x, layer.drop_path_rate, (x.shape[0],) + (1,) * (x.dim() - 1), training)


def _attention(
    module: TimesformerAttention, x: torch.Tensor, need_weights: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Self-attention + output projection of ``x`` ``(batch, seqlen, hidden)``; maps ``(batch, heads, L, L)``."""
    attn = module.attention
    batch, seqlen, hidden = x.shape
    heads = attn.num_heads
    qkv = attn.qkv(x).reshape(batch, seqlen, 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    probs = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
    probs = attn.attn_drop(probs)
    ctx = (probs @ v).transpose(1, 2).reshape(batch, seqlen, hidden)
    out = module.output.dropout(module.output.dense(ctx))
    return out, (probs if need_weights else None)


def _mlp(layer: TimesformerLayer, x: torch.Tensor, training: bool) -> torch.Tensor:
    h = layer.intermediate.dense(layer.layernorm_after(x))
    h = layer.intermediate.dropout(layer.intermediate.intermediate_act_fn(h))
    h = layer.output.dropout(layer.output.dense(h))
    return x + _drop_path(layer, h, training)


class EagerBackend(Backend):
    name = "eager"
    has_inference_path = False

    def layer(
        self,
        layer: TimesformerLayer,
        x: torch.Tensor,
        fwd: ForwardContext,
        output_attentions: bool,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if layer.attention_type != "divided_space_time":
            a, probs = _attention(layer.attention, layer.layernorm_before(x), output_attentions)
            x = x + _drop_path(layer, a, fwd.training)
            return _mlp(layer, x, fwd.training), probs

        batch, _, hidden = x.shape
        frames, n = fwd.num_frames, fwd.num_patches

        # Temporal: rows of one patch are contiguous.
        xt = x[:, 1:, :].reshape(batch * n, frames, hidden)
        a, _ = _attention(layer.temporal_attention, layer.temporal_layernorm(xt), False)
        r = _drop_path(layer, a, fwd.training).reshape(batch, n * frames, hidden)
        xt = x[:, 1:, :] + layer.temporal_dense(r)

        # Spatial: CLS repeated per frame, patches regrouped by frame.
        init_cls = x[:, 0, :].unsqueeze(1)
        cls = init_cls.repeat(1, frames, 1).reshape(batch * frames, 1, hidden)
        s = xt.reshape(batch, n, frames, hidden).permute(0, 2, 1, 3).reshape(batch * frames, n, hidden)
        s = torch.cat((cls, s), 1)
        a, probs = _attention(layer.attention, layer.layernorm_before(s), output_attentions)
        r = _drop_path(layer, a, fwd.training)
        cls_r = r[:, 0, :].reshape(batch, frames, hidden).mean(1, keepdim=True)
        r = (
            r[:, 1:, :]
            .reshape(batch, frames, n, hidden)
            .permute(0, 2, 1, 3)
            .reshape(batch, n * frames, hidden)
        )
        x = torch.cat((init_cls, xt), 1) + torch.cat((cls_r, r), 1)
        return _mlp(layer, x, fwd.training), probs
