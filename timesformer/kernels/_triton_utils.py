"""``@triton.jit`` helpers the kernel families share (imports Triton; load it only with a kernel)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mma(a, b, DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation (2-D or batched 3-D operands).

    ``UPCAST`` is set only under ``TRITON_INTERPRET=1`` for bfloat16 operands: the interpreter multiplies
    the raw bit patterns of bfloat16 in ``tl.dot`` (triton-lang/triton#11584). bfloat16 -> fp32 is exact
    and the interpreter accumulates in fp32 either way, so the result is what the GPU computes.
    """
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)
