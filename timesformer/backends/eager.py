"""The ``eager`` backend: the reference computation, op for op, by calling the model's modules.

The modules' ``forward`` methods (``timesformer.modeling``) follow ``transformers``' TimesformerLayer
(permute, repeat and cat included) and materialize the attention maps, so this backend can return them
(``output_attentions=True``) and, in training mode, draws the same random numbers in the same order as the
reference. Because every module is called, hooks fire and wrapped modules (adapters) run. The one
deliberate difference: it uses the input's frame count and patch grid where the reference uses the
config's (DESIGN.md section 1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Backend, ForwardContext

if TYPE_CHECKING:
    import torch

    from ..modeling import TimesformerLayer


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
        x, *probs = layer(x, output_attentions, num_frames=fwd.num_frames)
        return x, (probs[0] if output_attentions else None)
