"""What the kernel families share: argument checks, the support rules, and launch-size decisions.

Nothing here imports Triton: the ``triton`` backend's availability check and the ops' fake (shape-only)
implementations use these helpers on machines and tensors where no kernel can run.

Argument checks: every op validates in one place per call path. Its ``_check_<op>`` (in the op's module,
built from the ``check_*`` helpers below) validates the inputs and returns the sizes the launch needs; the
custom op and its fake call it before allocating the output, the ``*_fwd`` launchers call it and then
``check_out`` on the caller's output; all of them then launch without checking again. Messages name the op
first (``"temporal_attention: q must ..."``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence

import torch

# fp16/bf16 run the products on tensor cores with fp32 accumulation; fp32 runs them in full precision.
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Head sizes are padded to a power of two >= 16 inside the kernels (the tile width of tl.dot) and
# masked; above 128 the fixed tiles would no longer fit in registers.
MAX_HEAD_DIM = 128
INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------- support rules


def interpreting() -> bool:
    """Whether Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Triton's interpreter keeps the launch being run (its grid) in one process-wide object: launches from two
# threads at once (threads sharing a model on the CPU) broke each other's ("x >= grid_dim[0]"), so they run one
# at a time there.
_INTERPRETER_LOCK = threading.RLock()


def on_device(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """A block whose launches go to ``x``'s GPU. Triton launches on the current CUDA device and its stream,
    not on the tensors' device: a model on ``cuda:1`` while ``cuda:0`` is current (torchrun ranks without
    ``torch.cuda.set_device``) would launch on the wrong GPU. In the interpreter: one launch at a time."""
    if x.is_cuda:
        return torch.cuda.device(x.device)
    if not interpreting():
        # (Triton's own message here is "0 active drivers".)
        raise RuntimeError(
            f"the Triton kernels run on CUDA tensors, or on the CPU in Triton's interpreter (TRITON_INTERPRET=1 "
            f"set before importing timesformer); got tensors on {x.device}"
        )
    return _INTERPRETER_LOCK


def dtype_name(dtype: torch.dtype) -> str:
    """``"float16"`` for ``torch.float16``."""
    return str(dtype).removeprefix("torch.")


def head_dim_reason(head_dim: int) -> str | None:
    """Why the kernels cannot take heads of this size, or ``None`` when they can."""
    if not 1 <= head_dim <= MAX_HEAD_DIM:
        return f"the Triton attention kernels take head sizes 1 to {MAX_HEAD_DIM}, got {head_dim}"
    return None


def dtype_reason(dtype: torch.dtype) -> str | None:
    """Why the kernels cannot take this dtype, or ``None`` when they can."""
    if dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES)
        return f"the Triton attention kernels take {names}, got {dtype_name(dtype)}"
    return None


# -------------------------------------------------------------------------------------------- argument checks


def check_tensor(op: str, name: str, x, dims: int | None = None, layout: str = "") -> None:
    """``x`` is a ``torch.Tensor`` and, given ``dims``, has that many dimensions; ``layout`` names them in
    the message, e.g. ``"(batch, rows, hidden)"``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(x).__name__}")
    if dims is not None and x.dim() != dims:
        raise ValueError(f"{op}: {name} must have {dims} dimensions {layout}, got shape {tuple(x.shape)}")


def check_shape(op: str, name: str, x: torch.Tensor, shape: Sequence[int], note: str = "") -> None:
    """``x`` has exactly ``shape`` (``note`` says where that shape comes from)."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {tuple(shape)}{note}, got {tuple(x.shape)}")


def check_like(
    op: str,
    name: str,
    x: torch.Tensor,
    like: torch.Tensor,
    like_name: str,
    *,
    dtype_str: Callable[[torch.dtype], str] = str,
) -> None:
    """``x`` has the dtype and device of ``like`` (called ``like_name`` in the message; ``dtype_str`` writes
    the dtypes: ``torch.float16`` by default, ``float16`` with ``dtype_name``)."""
    if x.dtype != like.dtype or x.device != like.device:
        raise ValueError(
            f"{op}: {name} must be {dtype_str(like.dtype)} on {like.device} like {like_name}, "
            f"got {dtype_str(x.dtype)} on {x.device}"
        )


def check_last_stride(op: str, name: str, x: torch.Tensor, dim: str = "") -> None:
    """``x`` has a unit stride along its last dimension (the kernels' vector loads and stores), which one of
    size 0 or 1 has whatever its stride; ``dim`` names that dimension in the message, e.g. ``"hidden"``."""
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        last = f"last ({dim})" if dim else "last"
        raise ValueError(
            f"{op}: {name} must be contiguous along its {last} dimension, got strides {tuple(x.stride())} "
            f"for shape {tuple(x.shape)}; pass a view with a unit last stride"
        )


def check_out(
    op: str,
    name: str,
    out: torch.Tensor,
    shape: Sequence[int],
    like: torch.Tensor,
    *,
    like_name: str = "q",
    dtype_str: Callable[[torch.dtype], str] = str,
    last_stride: bool = True,
    reads: dict[str, torch.Tensor | None] | None = None,
) -> None:
    """Validate an output tensor a launcher writes: ``shape``, the dtype and device of ``like``, unless
    ``last_stride=False`` (a kernel that stores at any strides) a unit last stride where it has elements,
    and no memory shared within it or with the launch's inputs ``reads`` (``check_writes``)."""
    check_tensor(op, name, out)
    check_shape(op, name, out, shape)
    check_like(op, name, out, like, like_name, dtype_str=dtype_str)
    if last_stride and out.numel():
        check_last_stride(op, name, out)
    check_writes(op, name, out, reads or {})


def _layout(t: torch.Tensor) -> tuple[int, int, bool]:
    """``(first byte, past the last byte, whether two elements may share memory)`` of ``t``. Each dimension's
    stride, in increasing order, must step past everything the smaller ones span: views of dense tensors
    (slices, transposes, packed thirds) pass, expand()ed ones do not."""
    extent, overlap = 1, False
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride(), strict=True) if sz > 1):
        overlap = overlap or stride < extent
        extent += (size - 1) * stride
    start = t.data_ptr()
    return start, start + extent * t.element_size(), overlap


def check_writes(op: str, name: str, out: torch.Tensor, reads: dict[str, torch.Tensor | None]) -> None:
    """``out`` can be written by concurrent programs: no two of its elements share memory (an expanded,
    zero-stride view), and it does not overlap a tensor of ``reads`` that other programs may still read.

    Conservative: tensors count as overlapping when their memory spans do, so interleaved views that share
    no element (``s[:, :3]`` and ``s[:, 4:]`` of a batch) are refused too. On real tensors only (it reads
    addresses): call it in an op's implementation, not its fake. (The interpreter runs programs one after
    another, so without this check such calls give a wrong but repeatable result there and a race on a
    GPU.)"""
    if out.numel() == 0 or out.device.type == "meta":
        return
    lo, hi, overlap = _layout(out)
    if overlap:
        raise ValueError(
            f"{op}: {name} has elements that share memory (strides {tuple(out.stride())} for shape "
            f"{tuple(out.shape)}, e.g. an expand()ed view); each element must have its own"
        )
    for other, t in reads.items():
        if t is None or t.numel() == 0:
            continue
        t_lo, t_hi, _ = _layout(t)  # tensors of separate allocations never share addresses
        if t_lo < hi and lo < t_hi:
            raise ValueError(
                f"{op}: {name} overlaps {other} in memory; the op writes {name} while it reads {other}"
            )


def check_qkv(op: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> tuple[int, int]:
    """Validate q, k, v of ``(batch, rows, hidden)`` for ``op``; returns ``(hidden, head_dim)``.

    Rows may be strided (e.g. q, k, v as views into one packed projection); the last dimension must be
    contiguous. ``q`` may have fewer rows than ``k``/``v`` (a CLS-only query).
    """
    tensors = {"q": q, "k": k, "v": v}
    for name, x in tensors.items():
        check_tensor(op, name, x, 3, "(batch, rows, hidden)")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{op}: q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    reason = dtype_reason(q.dtype)
    if reason:
        raise ValueError(f"{op}: {reason}")
    if k.shape != v.shape:
        raise ValueError(f"{op}: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[2] != k.shape[2]:
        raise ValueError(
            f"{op}: q {tuple(q.shape)} and k {tuple(k.shape)} must agree in batch and hidden size"
        )
    hidden = q.shape[2]
    if num_heads < 1 or hidden % num_heads:
        raise ValueError(f"{op}: hidden size {hidden} is not divisible by num_heads={num_heads}")
    head_dim = hidden // num_heads
    reason = head_dim_reason(head_dim)
    if reason:
        raise ValueError(f"{op}: {reason}")
    for name, x in tensors.items():
        check_last_stride(op, name, x, "hidden")
        if any(s < 0 for s in x.stride()):
            raise ValueError(f"{op}: {name} has negative strides {tuple(x.stride())}")
    return hidden, head_dim


# ------------------------------------------------------------------------------------------- launch decisions


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def block_head(head_dim: int) -> int:
    """Tile width for a head: ``tl.dot`` needs a power of two of at least 16 along the reduction."""
    return max(16, next_pow2(head_dim))


def tf32_allowed() -> bool:
    """Whether the user let float32 products run as TF32, the way torch's own CUDA matmuls do:
    ``torch.backends.cuda.matmul.fp32_precision = "tf32"`` (or ``"none"`` with
    ``torch.backends.fp32_precision = "tf32"``), or the older ``torch.backends.cuda.matmul.allow_tf32 =
    True`` / ``torch.set_float32_matmul_precision("high")``.

    Read through the newer attribute, which reflects the older calls too: once the newer API has been
    used, torch raises on the older getters ("mix of the legacy and new APIs")."""
    precision = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if precision is None:  # a torch without the newer API
        return torch.get_float32_matmul_precision() != "highest" or bool(
            torch.backends.cuda.matmul.allow_tf32
        )
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


def dot_precision(dtype: torch.dtype) -> str:
    """The ``tl.dot`` input precision for ``dtype``: float32 takes full-precision (FMA) products unless TF32
    is allowed (``tf32_allowed``), as torch's matmuls do; 16-bit inputs are exact on tensor cores anyway."""
    if dtype == torch.float32 and not tf32_allowed():
        return "ieee"
    return "tf32"


def batch_row_strides(*tensors: torch.Tensor) -> list[int]:
    """``[t.stride(0), t.stride(1)]`` of each tensor in turn: the ``stride_<t>b, stride_<t>r`` kernel args."""
    return [s for t in tensors for s in (t.stride(0), t.stride(1))]


def needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether an element offset into any of ``tensors`` can exceed int32 (then kernels index in int64)."""
    for x in tensors:
        if x.numel() == 0:
            continue
        last = sum((size - 1) * stride for size, stride in zip(x.shape, x.stride(), strict=True))
        if last > INT32_MAX:
            return True
    return False
