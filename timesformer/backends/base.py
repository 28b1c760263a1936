"""What every backend shares: the encoder loop, the per-call state, and the training-time noise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from torch import nn

    from ..modeling import TimesformerEmbeddings, TimesformerLayer, TimesformerModel


class BackendUnavailableError(RuntimeError):
    """A backend was asked for where it cannot run; the message says why."""


@dataclass(frozen=True)
class ForwardContext:
    """What every layer of one forward call needs to know about it.

    Attributes:
        num_frames: ``T`` of the input clip (not the config's).
        num_patches: ``N`` of the input's patch grid (not the config's).
        training: dropout and drop-path are active.
        inference: the backend's inference path runs: eval mode, no autograd graph recorded, and the
            residual stream belongs to this call, so layers update it in place and use prepared (folded,
            fused) weights that carry no gradient.
    """

    num_frames: int
    num_patches: int
    training: bool
    inference: bool


def drop_path(x: torch.Tensor, rate: float, mask_shape: tuple[int, ...], training: bool) -> torch.Tensor:
    """Stochastic depth with the reference's formula; ``mask_shape`` broadcasts against ``x``."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = torch.floor(torch.rand(mask_shape, dtype=x.dtype, device=x.device) + keep)
    return x.div(keep) * mask


def needs_autograd(model: torch.nn.Module, pixel_values: torch.Tensor) -> bool:
    """Whether the forward builds a graph: grad mode, and the input, a parameter, or the embeddings' output
    (``enable_input_require_grads``, with every weight frozen) requires grad."""
    if not torch.is_grad_enabled():
        return False
    embeddings = getattr(getattr(model, "base_model", model), "embeddings", None)
    return (
        pixel_values.requires_grad
        or getattr(embeddings, "input_requires_grad", False)
        or any(p.requires_grad for p in model.parameters())
    )


class Backend:
    """Runs a ``TimesformerModel``'s encoder. Subclasses implement ``layer``."""

    name: str = "base"
    # Whether the backend has an inference path (``ForwardContext.inference``): in-place residual updates
    # and prepared weights when there is no autograd and the model is in eval mode.
    has_inference_path: bool = False
    # Whether torch.autocast applies to the backend's computation (it casts torch's ops, not Triton kernels).
    has_autocast: bool = True
    # Whether uint8 frames are normalized inside another op at no cost (the fused patch embedding), so that
    # input pipelines had better send them than normalized floats (4x the bytes).
    fuses_input_normalization: bool = False

    def layer(
        self,
        layer: TimesformerLayer,
        x: torch.Tensor,
        fwd: ForwardContext,
        output_attentions: bool,
        cls_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One encoder layer. With ``cls_only`` a backend may return just the CLS rows ``(B, 1, D)``."""
        raise NotImplementedError

    def embed(
        self, embeddings: TimesformerEmbeddings, pixel_values: torch.Tensor, inference: bool
    ) -> tuple[torch.Tensor, int, tuple[int, int]]:
        """The embeddings module's tokens with their ``frames`` and patch ``grid``: ``(x, frames, grid)``; a
        backend may compute them its own way on its ``inference`` path."""
        return (embeddings(pixel_values), *embeddings.frames_and_grid(pixel_values))

    def classify(
        self, layernorm: nn.LayerNorm | None, classifier: nn.Module, cls: torch.Tensor, fwd: ForwardContext
    ) -> torch.Tensor:
        """Logits ``(rows, labels)`` from the final CLS rows ``cls`` ``(rows, 1, hidden)`` (strided view);
        ``layernorm`` ``None`` where the model dropped its final LayerNorm."""
        return classifier(cls[:, 0] if layernorm is None else layernorm(cls[:, 0]))

    def encode(
        self,
        model: TimesformerModel,
        pixel_values: torch.Tensor,
        *,
        output_attentions: bool,
        output_hidden_states: bool,
        cls_only: bool = False,
    ) -> tuple[
        torch.Tensor, tuple[torch.Tensor, ...] | None, tuple[torch.Tensor, ...] | None, ForwardContext
    ]:
        """Embeddings and every layer; returns ``(x, hidden_states, attentions, fwd)`` before the final
        LayerNorm.

        ``cls_only``: the caller reads only ``x[:, 0]`` (a classifier without ``hidden_states``), so the
        last layer may skip the patch rows' work and return ``x`` of shape ``(B, 1, D)``.
        """
        # Not under torch.jit.trace (the legacy ONNX export): the inference path's in-place residual updates
        # of slices come out of the ONNX exporter wrong. Not under torch.func's transforms (vmap): the
        # kernels' custom ops have no batching rules, and the in-place ones cannot fall back to a loop. Not
        # inside a forward-mode AD level (a dual input, even under no_grad): the kernels would drop its
        # tangent silently, where torch's ops carry it or say they cannot.
        inference = (
            self.has_inference_path
            and not model.training
            and not needs_autograd(model, pixel_values)
            and not torch.jit.is_tracing()
            and not torch._C._are_functorch_transforms_active()
            and getattr(torch.autograd.forward_ad, "_current_level", -1) < 0
        )
        x, num_frames, (gh, gw) = self.embed(model.embeddings, pixel_values, inference)
        fwd = ForwardContext(num_frames, num_patches=gh * gw, training=model.training, inference=inference)
        # The flags by keyword, as transformers passes them: a pre-hook returning new positional arguments
        # (the hidden states alone) keeps them.
        out = model.encoder(
            x,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            fwd=fwd,
            backend=self,
            cls_only=cls_only,
        )
        return out.last_hidden_state, out.hidden_states, out.attentions, fwd
