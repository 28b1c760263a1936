"""``@triton.jit`` helpers the kernel families share (imports Triton; load it only with a kernel).

Two of them make Triton's CPU interpreter (``TRITON_INTERPRET=1``, how CI runs the kernels) compute what the
GPU computes. Kernels pass ``INTERPRET`` (a constexpr, false on the GPU, where these helpers are plain
``tl.dot`` and ``.to``):

- bfloat16 is stored as raw 16-bit patterns in the interpreter: ``tl.dot`` multiplies those patterns
  (triton-lang/triton#11584) and a float32 -> bfloat16 cast truncates, where the GPU rounds to nearest even;
- the interpreter ignores ``input_precision`` and multiplies float32 in full precision, where the GPU's
  ``"tf32"`` products keep 10 mantissa bits of each input: ``mma`` rounds float32 inputs to TF32 itself (to
  nearest, ties away from zero, on the GPU too), so that tests measure TF32's error on the CPU as well.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _round_to_tf32(x, INTERPRET: tl.constexpr):
    # To nearest, ties away from zero: 10 mantissa bits stay. On the GPU one instruction (what CUDA's
    # __float_to_tf32 and CUTLASS's default tf32 conversion use), which keeps NaN and inf; the interpreter adds
    # half a TF32 ulp to the magnitude's bits and truncates, keeping NaN itself (the carry would turn
    # 0x7FFFFFFF, the NaN a GPU's arithmetic produces, into -0.0, and 0x7F800001 into inf). A select in the GPU
    # path instead cost the fp32 GEMM tiles registers they did not have (spills on sm_80 and sm_90).
    if INTERPRET:
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x1000) & 0xFFFFE000
        return tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    else:
        return tl.inline_asm_elementwise(
            "cvt.rna.tf32.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1
        )


@triton.jit
def mma(a, b, DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr):
    """``tl.dot(a, b)`` with fp32 accumulation (2-D or batched 3-D operands)."""
    if INTERPRET:
        if a.dtype == tl.bfloat16:
            # bfloat16 -> fp32 is exact and the interpreter accumulates in fp32 either way.
            return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    if a.dtype == tl.float32:
        if DOT_PRECISION == "tf32":
            # A tensor core reads the top 19 bits of an fp32 input (PTX: the other 13 are ignored), i.e. it
            # truncates, with twice the error of rounding; round to nearest first, as torch's TF32 matmuls
            # do. The interpreter then multiplies the rounded values exactly: the same products as the GPU.
            a = _round_to_tf32(a, INTERPRET)
            b = _round_to_tf32(b, INTERPRET)
            if INTERPRET:
                return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b, input_precision=DOT_PRECISION)


@triton.jit
def to_dtype(x, DTYPE: tl.constexpr, INTERPRET: tl.constexpr):
    """fp32 ``x`` cast to ``DTYPE``, rounded to nearest even as on the GPU."""
    if INTERPRET:
        if DTYPE == tl.bfloat16:
            # Round the fp32 bit pattern at bit 16 (ties to even) so that the truncating cast is exact.
            bits = x.to(tl.uint32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & 0xFFFF0000
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))  # a NaN's payload would carry
    return x.to(DTYPE)
