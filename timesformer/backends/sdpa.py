"""The ``sdpa`` backend: the algebra of DESIGN.md section 2 on torch ops.

Compared with the reference layer it
- runs attention through ``timesformer.torch_ops`` (``scaled_dot_product_attention``; no attention maps);
- addresses the temporal pass where the rows lie (``x[:, 1:]``, rows of a patch are contiguous) instead of
  permuting the residual stream, and never repeats or concatenates CLS into the spatial pass: CLS's
  q/k/v are computed once per clip;
- in inference (no autograd, eval mode) folds ``temporal_dense ∘ temporal out-projection`` into one
  matrix, projects the frame-mean of the CLS context once instead of ``T`` CLS rows, and updates the
  residual stream in place.

With autograd or in training mode it keeps the unfolded projections so that gradients reach every
parameter and dropout / drop-path act where the reference applies them.

The ``triton`` backend runs its training and autograd calls here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .. import torch_ops
from ..weight_cache import cached_weights
from .base import Backend, ForwardContext, drop_path

if TYPE_CHECKING:
    from torch import nn

    from ..modeling import TimesformerLayer


def _fold_temporal(w_out: torch.Tensor, b_out: torch.Tensor, w_dense: torch.Tensor, b_dense: torch.Tensor):
    # dense(out(c)) = Wd (Wo c + bo) + bd. Accumulated in float64 (float32 where a device has no
    # float64, e.g. MPS) and cast once, so the folded matrix carries one rounding.
    acc = torch.float64 if w_out.device.type in ("cpu", "cuda") else torch.float32
    wd = w_dense.to(acc)
    weight = (wd @ w_out.to(acc)).to(w_out.dtype)
    bias = (wd @ b_out.to(acc) + b_dense.to(acc)).to(b_out.dtype)
    return weight, bias


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    return F.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)


class SdpaBackend(Backend):
    name = "sdpa"
    has_inference_path = True

    def layer(
        self,
        layer: TimesformerLayer,
        x: torch.Tensor,
        fwd: ForwardContext,
        output_attentions: bool,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if output_attentions:
            raise ValueError(f"the {self.name} backend does not materialize attention maps; use eager")
        if cls_only and fwd.inference:
            return self._cls_only(layer, x, fwd), None
        if layer.attention_type == "divided_space_time":
            x = self._divided(layer, x, fwd)
        else:
            x = self._joint(layer, x, fwd)
        return self._mlp(layer, x, fwd), None

    # ------------------------------------------------------------------ pieces
    def _dropout(self, module: nn.Dropout, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        return F.dropout(x, module.p, training=True) if fwd.training and module.p > 0 else x

    def _attn_dropout(self, layer_attention, fwd: ForwardContext) -> float:
        return layer_attention.attention.attn_drop.p if fwd.training else 0.0

    def _joint(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        """Joint space-time (``x``: ``(B, 1 + N*T, D)``) or space-only (``x``: ``(B*T, 1 + N, D)``) attention."""
        attn = layer.attention
        qkv = F.linear(
            _layer_norm(x, layer.layernorm_before), attn.attention.qkv.weight, attn.attention.qkv.bias
        )
        ctx = torch_ops.attention(qkv, layer.num_heads, self._attn_dropout(attn, fwd))
        out = F.linear(ctx, attn.output.dense.weight, attn.output.dense.bias)
        if fwd.inference:
            return x.add_(out)
        out = self._dropout(attn.output.dropout, out, fwd)
        return x + drop_path(out, layer.drop_path_rate, (x.shape[0], 1, 1), fwd.training)

    def _cls_only(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        """The last layer of a classifier, which only needs CLS: ``(B, 1, D)`` out.

        Keys and values still come from every row, but the query, output projection and MLP run on the
        CLS rows only (about 5% of the base model's FLOPs).
        """
        attn = layer.attention
        if layer.attention_type == "divided_space_time":
            x = self._temporal(layer, x, fwd)
        hidden = x.shape[-1]
        h = _layer_norm(x, layer.layernorm_before)
        w, b = attn.attention.qkv.weight, attn.attention.qkv.bias
        kv = F.linear(h, w[hidden:], None if b is None else b[hidden:])
        q = F.linear(h[:, 0], w[:hidden], None if b is None else b[:hidden])
        if layer.attention_type == "divided_space_time":
            ctx = torch_ops.spatial_cls_attention(q, kv, fwd.num_frames, layer.num_heads).mean(1)
        else:
            ctx = torch_ops.cls_attention(q, kv, layer.num_heads)
        cls = x[:, :1] + F.linear(ctx, attn.output.dense.weight, attn.output.dense.bias).unsqueeze(1)
        return self._mlp(layer, cls, fwd)

    def _temporal(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        """Temporal half of a divided layer: ``x`` with ``x[:, 1:]`` updated (in place when allowed)."""
        batch, _, hidden = x.shape
        frames, n = fwd.num_frames, fwd.num_patches

        # The T rows of each patch are contiguous in x[:, 1:].
        t_attn = layer.temporal_attention
        xt = x[:, 1:]
        qkv = F.linear(
            _layer_norm(xt, layer.temporal_layernorm), t_attn.attention.qkv.weight, t_attn.attention.qkv.bias
        )
        ctx = torch_ops.temporal_attention(qkv, frames, layer.num_heads, self._attn_dropout(t_attn, fwd))
        if fwd.inference:
            w, b = cached_weights(
                layer,
                "temporal_fold",
                (
                    t_attn.output.dense.weight,
                    t_attn.output.dense.bias,
                    layer.temporal_dense.weight,
                    layer.temporal_dense.bias,
                ),
                _fold_temporal,
            )
            xt.add_(F.linear(ctx, w, b))
        else:
            r = self._dropout(
                t_attn.output.dropout,
                F.linear(ctx, t_attn.output.dense.weight, t_attn.output.dense.bias),
                fwd,
            )
            # The reference's drop-path draws once per (clip, patch) sequence of the temporal pass.
            r = drop_path(
                r.view(batch, n, frames, hidden), layer.drop_path_rate, (batch, n, 1, 1), fwd.training
            )
            xt = xt + F.linear(
                r.view(batch, n * frames, hidden), layer.temporal_dense.weight, layer.temporal_dense.bias
            )
            x = torch.cat((x[:, :1], xt), 1)
        return x

    def _divided(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        batch, _, hidden = x.shape
        frames, n = fwd.num_frames, fwd.num_patches
        x = self._temporal(layer, x, fwd)

        # Spatial pass: CLS + the patches of each frame; CLS projected once per clip.
        s_attn = layer.attention
        qkv = F.linear(
            _layer_norm(x, layer.layernorm_before), s_attn.attention.qkv.weight, s_attn.attention.qkv.bias
        )
        patch_ctx, cls_ctx = torch_ops.spatial_attention(
            qkv, frames, layer.num_heads, self._attn_dropout(s_attn, fwd)
        )
        w_o, b_o = s_attn.output.dense.weight, s_attn.output.dense.bias
        if fwd.inference:
            x[:, 1:].add_(F.linear(patch_ctx, w_o, b_o))
            # mean_t(out(c_t)) == out(mean_t c_t): project one averaged CLS row instead of T.
            x[:, 0].add_(F.linear(cls_ctx.mean(1), w_o, b_o))
            return x
        r_p, r_c = F.linear(patch_ctx, w_o, b_o), F.linear(cls_ctx, w_o, b_o)
        if fwd.training and s_attn.output.dropout.p > 0:
            # One draw over the reference's (clip, frame, CLS + patches) layout, so that a seed draws the
            # reference's mask (training with one seed gives transformers' numbers).
            r = torch.cat((r_c.unsqueeze(2), r_p.view(batch, n, frames, hidden).transpose(1, 2)), 2)
            r = F.dropout(r, s_attn.output.dropout.p, training=True)
            r_c, r_p = r[:, :, 0], r[:, :, 1:].transpose(1, 2).reshape(batch, n * frames, hidden)
        if fwd.training and layer.drop_path_rate > 0:
            # The reference draws once per (clip, frame) sequence of the spatial pass, CLS included.
            keep = 1.0 - layer.drop_path_rate
            mask = torch.floor(torch.rand((batch, frames), dtype=x.dtype, device=x.device) + keep) / keep
            r_p = (r_p.view(batch, n, frames, hidden) * mask.view(batch, 1, frames, 1)).view(
                batch, n * frames, hidden
            )
            r_c = r_c * mask.unsqueeze(-1)
        return x + torch.cat((r_c.mean(1, keepdim=True), r_p), 1)

    def _mlp(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        h = F.linear(
            _layer_norm(x, layer.layernorm_after),
            layer.intermediate.dense.weight,
            layer.intermediate.dense.bias,
        )
        h = self._dropout(layer.intermediate.dropout, layer.intermediate.intermediate_act_fn.fn(h), fwd)
        h = F.linear(h, layer.output.dense.weight, layer.output.dense.bias)
        if fwd.inference:
            return x.add_(h)
        h = self._dropout(layer.output.dropout, h, fwd)
        return x + drop_path(h, layer.drop_path_rate, (x.shape[0], 1, 1), fwd.training)
