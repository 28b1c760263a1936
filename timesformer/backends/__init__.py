"""Backend registry: the one place that maps a backend name to the code that runs the layers.

``eager`` is the reference math (attention maps materialized), ``sdpa`` the algebra of DESIGN.md section 2
with ``torch.nn.functional.scaled_dot_product_attention``, ``triton`` the fused kernels (not implemented
yet). ``auto`` picks the fastest one that runs on the model's device.
"""

from __future__ import annotations

import functools
import logging
from typing import NamedTuple

import torch

from .base import Backend, BackendUnavailableError

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("eager", "sdpa", "triton")

_TRITON_MISSING = (
    "the triton backend is not implemented yet: its kernels arrive with the Triton attention and fusion "
    "issues; use backend='sdpa' (or 'auto')"
)


class BackendInfo(NamedTuple):
    available: bool
    reason: str


def _status(name: str, device: torch.device) -> BackendInfo:
    if name == "eager":
        return BackendInfo(True, "reference math; runs wherever torch runs")
    if name == "sdpa":
        return BackendInfo(True, "torch scaled_dot_product_attention; runs wherever torch runs")
    if name == "triton":
        return BackendInfo(False, _TRITON_MISSING)
    raise ValueError(f"backend must be one of {(*BACKEND_NAMES, 'auto')}, got {name!r}")


def available_backends(device: torch.device | str | None = None) -> dict[str, BackendInfo]:
    """For each backend, whether it runs on ``device`` (default: CPU) and why (or why not).

    Returns:
        ``{name: BackendInfo(available, reason)}`` for ``"eager"``, ``"sdpa"`` and ``"triton"``.
    """
    device = torch.device("cpu" if device is None else device)
    return {name: _status(name, device) for name in BACKEND_NAMES}


@functools.cache
def get_backend(name: str) -> Backend:
    """The backend object for ``name``; raises ``BackendUnavailableError`` for one that cannot exist here."""
    if name == "eager":
        from .eager import EagerBackend

        return EagerBackend()
    if name == "sdpa":
        from .sdpa import SdpaBackend

        return SdpaBackend()
    if name == "triton":
        raise BackendUnavailableError(_TRITON_MISSING)
    raise ValueError(f"backend must be one of {(*BACKEND_NAMES, 'auto')}, got {name!r}")


@functools.cache
def _auto(device_type: str) -> Backend:
    info = _status("triton", torch.device(device_type))
    if info.available:
        logger.info("backend 'auto' on %s: using triton", device_type)
        return get_backend("triton")
    logger.info("backend 'auto' on %s: using sdpa (triton: %s)", device_type, info.reason)
    return get_backend("sdpa")


def resolve_backend(requested: str, device: torch.device) -> Backend:
    """The backend that runs a model whose parameters are on ``device``."""
    if requested == "auto":
        return _auto(device.type)
    info = _status(requested, device)
    if not info.available:
        raise BackendUnavailableError(f"backend {requested!r} cannot run on {device}: {info.reason}")
    return get_backend(requested)


__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendInfo",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "resolve_backend",
]
