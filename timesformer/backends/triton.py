"""The ``triton`` backend: every layer as the launches of DESIGN.md section 3.

In inference (no autograd, eval mode) a divided layer is

    1  LN_t -> qkv_t over x[:, 1:]            kernels.linear.layer_norm_linear (LayerNorm folded)
    2  temporal attention                       kernels.temporal_attention
    3  folded out_t/dense_t, + residual         kernels.linear.linear_residual_ into x[:, 1:]
    4  LN_1 -> qkv_s over all rows              layer_norm_linear
    5  spatial attention (CLS once per clip)    kernels.attention.spatial_attention
    6  out_s + residual; CLS row from the       linear_residual_ into x[:, 1:], and into x[:, :1] with the
       frame-mean of its contexts               frame-mean of the CLS contexts (two launches)
    7  LN_2 -> fc1 + GELU                       layer_norm_linear
    8  fc2 + residual                           linear_residual_ into x

with q, k, v read as strided thirds of one packed projection and every residual update written in place:
no permute, cat, repeat or contiguous copy of an activation. Joint and space-only layers are steps 4-8
with joint attention. The embeddings are one kernel (``kernels.patch_embed``); a classifier's last layer
runs the query, out-projection and MLP on the CLS rows only, and its final LayerNorm and head are one
fused launch on those rows.

Prepared weights (LayerNorm folded into the projections, the folded temporal projection, fp32 bias
vectors, interpolated position and time tables) are cached per module and follow the parameters
(``timesformer.weight_cache``).

The kernels are inference kernels (no backward, no dropout): a call that records autograd or runs in
training mode is run by the ``sdpa`` backend, which this backend holds as its fallback.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..kernels import attention as _attn
from ..kernels import linear as _linear
from ..kernels import patch_embed as _patch
from ..kernels import temporal_attention as _temporal
from ..weight_cache import cached_weights
from .base import Backend
from .sdpa import SdpaBackend, _fold_temporal

if TYPE_CHECKING:
    from ..modeling import TimeSformerAttention, TimesformerEmbeddings, TimesformerLayer
    from .base import ForwardContext


def _thirds(packed: torch.Tensor, parts: int = 3) -> tuple[torch.Tensor, ...]:
    """Views of the q, k, v (or k, v) thirds of a packed projection: strided, no copy."""
    width = packed.shape[-1]
    if width % parts:
        raise ValueError(f"packed projection width {width} is not a multiple of {parts}")
    return packed.split(width // parts, dim=-1)


# ------------------------------------------------------------------------------ prepared weights


def _ln_proj(owner: nn.Module, key: str, ln: nn.LayerNorm, proj: nn.Linear) -> tuple[torch.Tensor, ...]:
    """``(W', c1, c2)`` of ``kernels.linear.prepare_layer_norm_linear`` for ``proj(ln(.))``, cached."""
    return cached_weights(
        owner,
        key,
        tuple(t for t in (ln.weight, ln.bias, proj.weight, proj.bias) if t is not None),
        lambda *_: _linear.prepare_layer_norm_linear(ln.weight, ln.bias, proj.weight, proj.bias),
    )


def _proj(owner: nn.Module, key: str, proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(W, fp32 bias)`` of a projection followed by a residual add, cached."""
    sources = (proj.weight,) if proj.bias is None else (proj.weight, proj.bias)
    return cached_weights(owner, key, sources, lambda w, b=None: (w, None if b is None else b.float()))


def _temporal_proj(layer: TimesformerLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """``temporal_dense ∘ temporal out-projection`` as one matrix and fp32 bias (DESIGN.md section 2)."""
    out, dense = layer.temporal_attention.output.dense, layer.temporal_dense

    def prepare(*sources):
        w, b = _fold_temporal(*sources)
        return w, b.float()

    return cached_weights(
        layer, "triton_temporal_fold", (out.weight, out.bias, dense.weight, dense.bias), prepare
    )


def _eps(ln: nn.LayerNorm) -> float:
    return float(ln.eps)


class TritonBackend(Backend):
    name = "triton"
    has_inference_path = True
    has_autocast = False
    fuses_input_normalization = True

    def __init__(self) -> None:
        # The kernels have no backward and no dropout: training and autograd calls (every call off the
        # inference path, ``ForwardContext.inference`` false) and attention maps run the sdpa backend.
        from . import get_backend

        self.fallback: SdpaBackend = get_backend("sdpa")

    # ------------------------------------------------------------------ embeddings and head
    def embed(
        self, embeddings: TimesformerEmbeddings, pixel_values: torch.Tensor, inference: bool
    ) -> tuple[torch.Tensor, int, tuple[int, int]]:
        if not inference:
            return self.fallback.embed(embeddings, pixel_values, inference)
        frames_u8 = pixel_values.dtype == torch.uint8
        frames, grid = embeddings.frames_and_grid(pixel_values)
        conv = embeddings.patch_embeddings.projection
        pos = cached_weights(
            embeddings,
            f"triton_pos_{grid}",
            (embeddings.position_embeddings,),
            lambda _: embeddings.position_embeddings_for(grid)[0],
        )
        space_only = embeddings.attention_type == "space_only"
        time = None
        if not space_only:
            time = cached_weights(
                embeddings,
                f"triton_time_{frames}",
                (embeddings.time_embeddings,),
                lambda _: embeddings.time_embeddings_for(frames)[0],
            )
        if frames_u8:
            norm = embeddings.input_normalization
            weight, bias, pixel_shift = cached_weights(
                embeddings,
                f"triton_patch_fold_{norm}",
                (conv.weight, conv.bias),
                lambda w, b: _patch.fold_normalization(w, b, norm.mean, norm.std, norm.rescale_factor),
            )
            pixel_scale = norm.rescale_factor
        else:
            weight, bias, pixel_scale, pixel_shift = conv.weight, conv.bias, 1.0, None
        x = _patch.patch_embed(
            pixel_values,
            weight,
            bias,
            pos,
            time,
            embeddings.cls_token.view(-1),
            channels_last=frames_u8,
            space_only=space_only,
            pixel_scale=pixel_scale,
            pixel_shift=pixel_shift,
        )
        return x, frames, grid

    def classify(
        self, layernorm: nn.LayerNorm | None, classifier: nn.Module, cls: torch.Tensor, fwd: ForwardContext
    ) -> torch.Tensor:
        # A trainable head on a frozen backbone (linear probing) records autograd here even where the
        # encoder took the inference path: the fused head's cached weights would drop its graph.
        if (
            not fwd.inference
            or type(classifier) is not nn.Linear
            or layernorm is None
            or (
                torch.is_grad_enabled()
                and any(p.requires_grad for m in (layernorm, classifier) for p in m.parameters())
            )
        ):  # called as is
            return self.fallback.classify(layernorm, classifier, cls, fwd)
        w, c1, c2 = _ln_proj(classifier, "triton_head", layernorm, classifier)
        return _linear.layer_norm_linear(cls, w, c1, c2, _eps(layernorm))[:, 0]

    # ------------------------------------------------------------------------------ layers
    def layer(
        self,
        layer: TimesformerLayer,
        x: torch.Tensor,
        fwd: ForwardContext,
        output_attentions: bool,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, None]:
        if not fwd.inference or output_attentions:
            return self.fallback.layer(layer, x, fwd, output_attentions, cls_only)
        divided = layer.attention_type == "divided_space_time"
        if divided:
            self._fused_temporal(layer, x, fwd)
        if cls_only:
            return self._fused_cls_only(layer, x, fwd), None
        if divided:
            self._fused_spatial(layer, x, fwd)
        else:
            self._fused_joint(layer, x)
        self._fused_mlp(layer, x)
        return x, None

    def _fused_temporal(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> None:
        """Steps 1-3 on ``x[:, 1:]`` (the ``T`` rows of a patch are contiguous there), in place."""
        xt = x[:, 1:]
        ln = layer.temporal_layernorm
        qkv = _linear.layer_norm_linear(
            xt, *_ln_proj(layer, "triton_qkv_t", ln, layer.temporal_attention.attention.qkv), _eps(ln)
        )
        ctx = _temporal.temporal_attention(*_thirds(qkv), fwd.num_frames, layer.num_heads)
        _linear.linear_residual_(ctx, *_temporal_proj(layer), xt)

    def _qkv_s(self, layer: TimesformerLayer, rows: torch.Tensor, part: slice) -> torch.Tensor:
        ln = layer.layernorm_before
        w, c1, c2 = _ln_proj(layer, "triton_qkv_s", ln, layer.attention.attention.qkv)
        return _linear.layer_norm_linear(rows, w[part], c1[part], c2[part], _eps(ln))

    def _out_s(self, attention: TimeSformerAttention, owner: nn.Module) -> tuple[torch.Tensor, ...]:
        return _proj(owner, "triton_out_s", attention.output.dense)

    def _fused_spatial(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> None:
        """Steps 4-6: CLS's q/k/v once per clip, its context averaged over frames in the projection."""
        qkv = self._qkv_s(layer, x, slice(None))
        patch_ctx, cls_ctx = _attn.spatial_attention(*_thirds(qkv), fwd.num_frames, layer.num_heads)
        w, b = self._out_s(layer.attention, layer)
        _linear.linear_residual_(patch_ctx, w, b, x[:, 1:])
        _linear.linear_residual_(cls_ctx, w, b, x[:, :1], mean_rows=True)

    def _fused_joint(self, layer: TimesformerLayer, x: torch.Tensor) -> None:
        qkv = self._qkv_s(layer, x, slice(None))
        ctx = _attn.attention(*_thirds(qkv), layer.num_heads)
        _linear.linear_residual_(ctx, *self._out_s(layer.attention, layer), x)

    def _fused_mlp(self, layer: TimesformerLayer, x: torch.Tensor) -> None:
        """Steps 7-8: GELU (or the config's activation) in fc1's epilogue, fc2 adds into ``x``."""
        ln, act = layer.layernorm_after, layer.intermediate.intermediate_act_fn.name
        in_kernel = act in _linear.ACTIVATIONS_IN_KERNEL
        h = _linear.layer_norm_linear(
            x,
            *_ln_proj(layer, "triton_fc1", ln, layer.intermediate.dense),
            _eps(ln),
            act if in_kernel else "linear",
        )
        if not in_kernel:
            # An activation the epilogue does not implement: torch applies it (one more pass over h).
            h = layer.intermediate.intermediate_act_fn.fn(h)
        _linear.linear_residual_(h, *_proj(layer, "triton_fc2", layer.output.dense), x)

    def _fused_cls_only(self, layer: TimesformerLayer, x: torch.Tensor, fwd: ForwardContext) -> torch.Tensor:
        """The last layer of a classifier: keys and values from every row, the rest on CLS rows only.

        Returns ``x[:, :1]`` (a view) updated in place.
        """
        hidden = x.shape[-1]
        cls = x[:, :1]
        q = self._qkv_s(layer, cls, slice(0, hidden))
        k, v = _thirds(self._qkv_s(layer, x, slice(hidden, None)), 2)
        w, b = self._out_s(layer.attention, layer)
        if layer.attention_type == "divided_space_time":
            cls_ctx = _attn.spatial_attention(q, k, v, fwd.num_frames, layer.num_heads)[1]
            _linear.linear_residual_(cls_ctx, w, b, cls, mean_rows=True)
        else:
            ctx = _attn.attention(q, k, v, layer.num_heads)
            _linear.linear_residual_(ctx, w, b, cls)
        self._fused_mlp(layer, cls)
        return cls
