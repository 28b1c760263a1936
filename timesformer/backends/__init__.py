"""Backend registry: the one place that maps a backend name to the code that runs the layers.

``eager`` is the reference math (attention maps materialized), ``sdpa`` the algebra of DESIGN.md section 2
with ``torch.nn.functional.scaled_dot_product_attention``, ``triton`` the Triton kernels. ``auto`` picks the
fastest one that runs on the model's device, head size and dtype, and logs why once.

Nothing here imports Triton or queries a device at import time: ``triton`` is looked up when a model on
a CUDA device (or on the CPU under ``TRITON_INTERPRET=1``) asks for it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from typing import NamedTuple

import torch

from .._compile import assume_constant_result
from .base import Backend, BackendUnavailableError

logger = logging.getLogger(__name__)

# Ampere and later: bf16 tensor cores, and the architectures the kernels are written for.
MIN_CAPABILITY = (8, 0)


class BackendInfo(NamedTuple):
    available: bool
    reason: str


# Both lookups run on every forward of a model with an explicit backend: cached (per process, and per
# device for the GPU queries).
@functools.cache
def _triton_installed() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def _cuda_status(device: torch.device) -> BackendInfo:
    if torch.version.hip is not None:
        return BackendInfo(False, "the kernels are written and tested for NVIDIA GPUs, not ROCm")
    if not torch.cuda.is_available():
        return BackendInfo(False, "CUDA is not available to this torch build")
    capability = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if capability < MIN_CAPABILITY:
        need = ".".join(map(str, MIN_CAPABILITY))
        return BackendInfo(
            False,
            f"the kernels need compute capability >= {need}; {name} has {capability[0]}.{capability[1]}",
        )
    return BackendInfo(True, "Triton kernels on " + name)


def _triton_status(device: torch.device, head_dim: int | None, dtype: torch.dtype | None) -> BackendInfo:
    from ..kernels._common import dtype_reason, head_dim_reason, interpreting

    if not _triton_installed():
        return BackendInfo(False, "Triton is not installed (pip install triton; Linux only)")
    if device.type == "cuda":
        info = _cuda_status(device)
        if not info.available:
            return info
        where = info.reason
    elif device.type == "cpu":
        if not interpreting():
            return BackendInfo(
                False,
                "the kernels run on CUDA GPUs; on the CPU only in Triton's interpreter (TRITON_INTERPRET=1)",
            )
        where = "Triton kernels in the interpreter (TRITON_INTERPRET=1; slow, for tests)"
    else:
        return BackendInfo(False, f"the kernels run on CUDA GPUs, not on {device.type}")
    reason = (head_dim_reason(head_dim) if head_dim is not None else None) or (
        dtype_reason(dtype) if dtype is not None else None
    )
    if reason:
        return BackendInfo(False, reason)
    return BackendInfo(True, where)


def _load_eager() -> Backend:
    from .eager import EagerBackend

    return EagerBackend()


def _load_sdpa() -> Backend:
    from .sdpa import SdpaBackend

    return SdpaBackend()


def _load_triton() -> Backend:
    if not _triton_installed():
        raise BackendUnavailableError("the triton backend needs Triton (pip install triton; Linux only)")
    from .triton import TritonBackend

    return TritonBackend()


class BackendEntry(NamedTuple):
    load: Callable[[], Backend]
    # (device, head_dim or None, dtype or None) -> whether the backend runs there, and why (not).
    status: Callable[[torch.device, int | None, torch.dtype | None], BackendInfo]


# The backends, by name: the only list of them (the CLI's choices and every check are built from it).
BACKENDS: dict[str, BackendEntry] = {
    "eager": BackendEntry(
        _load_eager, lambda *_: BackendInfo(True, "reference math; runs wherever torch runs")
    ),
    "sdpa": BackendEntry(
        _load_sdpa,
        lambda *_: BackendInfo(True, "torch scaled_dot_product_attention; runs wherever torch runs"),
    ),
    "triton": BackendEntry(_load_triton, _triton_status),
}
BACKEND_NAMES = tuple(BACKENDS)
# What a model or the command line accepts: a backend, or "auto" (chosen per device, head size and dtype).
BACKEND_CHOICES = (*BACKEND_NAMES, "auto")


def _entry(name: str) -> BackendEntry:
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {name!r}") from None


def _status(
    name: str, device: torch.device, head_dim: int | None = None, dtype: torch.dtype | None = None
) -> BackendInfo:
    return _entry(name).status(device, head_dim, dtype)


def available_backends(
    device: torch.device | str | None = None, head_dim: int | None = None, dtype: torch.dtype | None = None
) -> dict[str, BackendInfo]:
    """For each backend, whether it runs on ``device`` (default: CPU) and why (or why not).

    Args:
        device: where the model lives.
        head_dim, dtype: a model's head size and parameter dtype, to check them too (optional).

    Returns:
        ``{name: BackendInfo(available, reason)}`` for ``"eager"``, ``"sdpa"`` and ``"triton"``.
    """
    device = torch.device("cpu" if device is None else device)
    return {name: _status(name, device, head_dim, dtype) for name in BACKEND_NAMES}


_LOADED: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The backend object for ``name``; raises ``BackendUnavailableError`` for one that cannot exist here."""
    # A plain dict, not functools.cache: torch.compile traces a forward's lookup here as a dict read.
    backend = _LOADED.get(name)
    if backend is None:
        backend = _LOADED[name] = _entry(name).load()
    return backend


FP32_WITHOUT_TF32 = (
    "float32 without TF32: full-precision products run on the FMA units, where cuBLAS and SDPA are faster; "
    "allow TF32 (torch.set_float32_matmul_precision('high')) or use bfloat16 "
    "(model.to(torch.bfloat16)) for the Triton kernels"
)


@functools.cache
def _auto_name(device: torch.device, head_dim: int | None, dtype: torch.dtype | None, tf32: bool) -> str:
    # Cached per (device, head size, dtype, TF32): the reason is logged once per kind of model.
    if device.type != "cuda":
        info = BackendInfo(
            False, f"auto uses the Triton kernels on CUDA devices only, this model is on {device}"
        )
    else:
        from ..kernels._common import interpreting

        info = _status("triton", device, head_dim, dtype)
        if info.available and interpreting():
            info = BackendInfo(
                False, "TRITON_INTERPRET=1 is set: the kernels would run in the slow interpreter"
            )
        elif info.available and dtype == torch.float32 and not tf32:
            # Predicted slower than sdpa, not measured: without tensor cores the kernels' fp32 products
            # run at the FMA rate (a fraction of cuBLAS's fp32 throughput on the same device).
            info = BackendInfo(False, FP32_WITHOUT_TF32)
        elif info.available and dtype == torch.float32:
            info = BackendInfo(True, info.reason + "; float32 with TF32 products (TF32 is allowed)")
    if info.available:
        logger.info("backend 'auto' on %s: using triton (%s)", device, info.reason)
        return "triton"
    logger.info("backend 'auto' on %s: using sdpa (triton: %s)", device, info.reason)
    return "sdpa"


# Evaluated by torch.compile while it traces a forward, not traced into: the checks read the environment
# (importlib's find_spec, which torch 2.11's dynamo refuses to trace, device queries, logging), and their
# answer is a constant of the run.
@assume_constant_result
def _resolve_name(
    requested: str, device: torch.device, head_dim: int | None, dtype: torch.dtype | None
) -> str:
    if requested == "auto":
        from ..kernels._common import tf32_allowed

        # TF32 is a process-wide setting the user may change between calls: part of the cache key.
        return _auto_name(device, head_dim, dtype, dtype == torch.float32 and tf32_allowed())
    info = _status(requested, device, head_dim, dtype)
    if not info.available:
        raise BackendUnavailableError(f"backend {requested!r} cannot run on {device}: {info.reason}")
    return requested


def resolve_backend(
    requested: str, device: torch.device, head_dim: int | None = None, dtype: torch.dtype | None = None
) -> Backend:
    """The backend that runs a model whose parameters are on ``device`` (with this head size and dtype)."""
    return get_backend(_resolve_name(requested, device, head_dim, dtype))


__all__ = [
    "BACKENDS",
    "BACKEND_CHOICES",
    "BACKEND_NAMES",
    "Backend",
    "BackendInfo",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "resolve_backend",
]
