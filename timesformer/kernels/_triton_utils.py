"""``@triton.jit`` helpers the kernel families share (imports Triton; load it only with a kernel).

Two of them exist for the interpreter only. Under ``TRITON_INTERPRET=1`` (how CI runs the kernels) bfloat16
is stored as raw 16-bit patterns: ``tl.dot`` multiplies those patterns (triton-lang/triton#11584) and a
float32 -> bfloat16 cast truncates, where the GPU rounds to nearest even. Kernels pass
``INTERPRET_BF16`` (a constexpr, false on the GPU, where these helpers are plain ``tl.dot`` and ``.to``)
so that the interpreter computes what the GPU computes.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mma(a, b, DOT_PRECISION: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation (2-D or batched 3-D operands)."""
    if INTERPRET_BF16:
        # bfloat16 -> fp32 is exact and the interpreter accumulates in fp32 either way.
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, INTERPRET_BF16: tl.constexpr):
    """fp32 ``x`` cast to ``DTYPE``, rounded to nearest even as on the GPU."""
    if INTERPRET_BF16:
        # Round the fp32 bit pattern at bit 16 (ties to even) so that the truncating cast is exact.
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
        x = bits.to(tl.float32, bitcast=True)
    return x.to(DTYPE)
