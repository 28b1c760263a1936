"""Prepared weights (folded, transposed, cast) that follow the parameters they come from."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn


def _fingerprint(t: torch.Tensor) -> tuple:
    return (t.data_ptr(), t._version, t.dtype, t.device, tuple(t.shape))


def cached_weights(
    module: nn.Module,
    key: str,
    sources: Sequence[torch.Tensor],
    prepare: Callable[..., tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, ...]:
    """``prepare(*sources)``, recomputed only when a source changed.

    A source changes when it is edited in place (``load_state_dict``, optimizer steps and ``p.add_()``
    bump its version counter) or replaced (``.to()``, ``.half()`` give it new storage). The cache keeps
    the old sources alive, so a new tensor can never reuse their address and look unchanged. Edits
    through ``.data`` bypass version counters: call ``model.clear_weight_cache()`` after those.
    """
    cache: dict = module.__dict__.setdefault("_weight_cache", {})
    stamp = tuple(_fingerprint(s) for s in sources)
    hit = cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[2]
    with torch.no_grad():
        prepared = prepare(*(s.detach() for s in sources))
    cache[key] = (stamp, tuple(s.detach() for s in sources), prepared)
    return prepared
