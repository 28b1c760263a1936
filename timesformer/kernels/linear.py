"""Fused linear layers: LayerNorm -> projection (-> activation), and projection + bias + residual add.

One GEMM kernel, ``out = epilogue(A @ W^T)``, with constexpr features for the six products of a layer
(DESIGN.md section 3):

- ``LN`` (``LN_t -> qkv_t``, ``LN_1 -> qkv_s``, ``LN_2 -> fc1``, final LayerNorm -> classifier). The
  scheme is *folding*: with ``W' = W diag(gamma)``, ``c1 = W' 1`` and ``c2 = W beta + b``,

      LN(x) W^T + b = rstd * (x W'^T - mean * c1) + c2.

  So the main loop multiplies the rows as loaded (no normalize-and-round step between the load and the
  tensor-core product, which would put ALU work on the A tile's path), and the LayerNorm costs a per-row
  correction in the epilogue. The row statistics come from the same A tiles the loop loads anyway, combined
  tile by tile with Chan's parallel update of (mean, M2), which is as accurate as the two-pass formula
  (no ``E[x^2] - E[x]^2`` cancellation); no separate statistics pass, no extra read of ``x``. ``c1`` is
  summed from the *rounded* ``W'`` the loop uses, so the ``mean * c1`` term cancels what the loop added.
  Accuracy: with 16-bit rows the products are exact and the normalized rows are never rounded (torch
  rounds them), ``W'`` is rounded once where torch uses ``W``: errors of one size (tests check the 2x rule
  against torch). The ``mean * c1`` cancellation costs ~|mean|/std fp32 ulps, under a 16-bit ulp until a
  row's mean is ~1000x (fp16) or ~10000x (bf16) its spread, or a row is one value (known limit: the
  residual stream's rows are far from that; rows of zeros are exact). fp32 rows have no such margin
  (``CENTER``): each tile's deviations from its mean are multiplied instead, and the accumulator is kept
  relative to the running mean of the tiles so far (each tile adds its mean's distance from it times the
  tile's weight sums; each move of it subtracts the move times the earlier tiles' sums), so no large term
  cancels (rows 1000x off zero, constant rows, and rows whose first features stand 100x apart keep fp32's
  accuracy; a TF32 product rounds only the deviations).
- ``ACTIVATION``: exact (erf) GELU, the tanh GELU, ReLU, SiLU, quick GELU or none, in fp32 before the one
  rounding. Other activations of the config run in torch after the kernel (``ACTIVATIONS_IN_KERNEL``).
- ``RESIDUAL``: ``out = residual + A W^T + b``, written in place into the residual stream (out-projections,
  the folded temporal projection, ``fc2``): each element is read and written by the same program.
- ``MEAN_ROWS``: each A row is the mean of ``rows`` input rows, i.e. the spatial out-projection's CLS row
  taking the frame-mean of its per-frame contexts (``out_s`` is linear, DESIGN.md section 2).

Rows are addressed as ``(batch, rows)`` with two strides, so ``x[:, 1:]`` (the temporal pass skipping CLS)
and ``x[:, :1]`` are read and written in place, with no copy.

Two launch-configuration candidates change the code, both off by default until ``bench/tune.py`` times
them on an H200 (``bench/NOTES.md``):

- ``TMA_A``/``TMA_W``: the A and W tiles come through tensor descriptors (Hopper's tensor memory accelerator:
  one instruction per tile, out-of-bounds rows and columns filled with zeros, no address arithmetic in the
  loop) instead of pointer loads (``cp.async`` on sm_80/sm_90). A needs rows at one stride for that (not
  ``x[:, 1:]`` of several clips, not ``MEAN_ROWS``).
- ``PERSISTENT``/``FLATTEN``: one program per SM walks the output tiles, the tile loop flattened so that
  the next tile's loads overlap this tile's epilogue.

Pure-torch references: ``timesformer.torch_ops.layer_norm_linear`` and ``linear_residual``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from ._common import (
    SUPPORTED_DTYPES,
    check_last_stride,
    check_like,
    check_out,
    check_tensor,
    check_writes,
    dot_precision,
    interpreting,
    needs_int64,
    next_pow2,
    on_device,
)
from ._triton_utils import mma, to_dtype

# hidden_act names computed in the epilogue, and their codes (ACTIVATION constexpr).
ACTIVATIONS_IN_KERNEL = {
    "linear": 0,
    "gelu": 1,
    "gelu_python": 1,
    "gelu_new": 2,
    "gelu_accurate": 2,
    "gelu_python_tanh": 2,
    "gelu_pytorch_tanh": 2,
    "relu": 3,
    "silu": 4,
    "swish": 4,
    "quick_gelu": 5,
}


# ----------------------------------------------------------------------------------------------------- kernel


@triton.jit
def _tanh(x):
    # tl has no tanh; 1 - 2 / (e^2x + 1) saturates correctly at both ends (e^2x -> inf or 0).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _activation(x, ACTIVATION: tl.constexpr):
    if ACTIVATION == 1:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACTIVATION == 2:
        x = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    elif ACTIVATION == 3:
        x = tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN, as torch's relu
    elif ACTIVATION == 4:
        x = x * tl.sigmoid(x)
    elif ACTIVATION == 5:
        x = x * tl.sigmoid(1.702 * x)
    return x


# fmt: off
@triton.jit
def _linear_tile(
    tile,
    X, W, XDesc, WDesc, Out, Res, Bias, Colsum,
    stride_xb, stride_xr, stride_xk, stride_wn, stride_wk, stride_ob, stride_or, stride_rb, stride_rr,
    out_rows, mean_rows, M, N, K, eps,
    LN: tl.constexpr, HAS_BIAS: tl.constexpr, RESIDUAL: tl.constexpr, MEAN_ROWS: tl.constexpr,
    ACTIVATION: tl.constexpr, CENTER: tl.constexpr, TMA_A: tl.constexpr, TMA_W: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PRECISION: tl.constexpr, INTERPRET: tl.constexpr, INT64: tl.constexpr,
):
    # fmt: on
    """Output tile ``tile`` of ``_linear_kernel`` (below), whose other arguments are documented there."""
    # The tile's (row block, column block) in grouped order (Triton's matmul tutorial): GROUP_M row blocks
    # sweep the columns together, so their A rows and the W columns they share stay in L2.
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    group = tile // (GROUP_M * num_n)
    first_m = group * GROUP_M
    group_size = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (tile % (GROUP_M * num_n)) % group_size
    pid_n = (tile % (GROUP_M * num_n)) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < M
    n_ok = offs_n < N
    # GEMM row m is row (b, r) of the 3-D output (and residual); A's row is the same (b, r), or for
    # MEAN_ROWS the rows (b, 0 .. mean_rows-1).
    b = offs_m // out_rows
    r = offs_m % out_rows
    offs_k = tl.arange(0, BLOCK_K)
    if INT64:
        b = b.to(tl.int64)
        r = r.to(tl.int64)
        # (The weight's and output's column terms too: ``needs_int64`` also counts the weight, and a
        # transposed input's k * stride_xk.)
        offs_n = offs_n.to(tl.int64)
        offs_k = offs_k.to(tl.int64)
    if MEAN_ROWS:
        x_rows = X + b * stride_xb
    else:
        x_rows = X + b * stride_xb + r * stride_xr

    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    mean = tl.zeros([BLOCK_M], tl.float32)
    m2 = tl.zeros([BLOCK_M], tl.float32)
    # What acc holds the rows less of (CENTER: the running mean of the tiles so far); ``mean`` is kept relative
    # to it, so that merging the tiles' means rounds at the size of their spread, not of the rows' offset.
    shift = tl.zeros([BLOCK_M], tl.float32)
    # CENTER: the weight sums of the tiles so far, which a move of ``shift`` multiplies.
    wsum = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < K
        a_mask = m_ok[:, None] & k_ok[None, :]
        a_ptrs = x_rows[:, None] + k[None, :] * stride_xk
        if TMA_A:
            a = XDesc.load([pid_m * BLOCK_M, k0])
        elif MEAN_ROWS:
            a32 = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
            for t in range(0, mean_rows):
                a32 += tl.load(a_ptrs + t * stride_xr, mask=a_mask, other=0.0).to(tl.float32)
            a = to_dtype(a32 / mean_rows, X.dtype.element_ty, INTERPRET)
        else:
            a = tl.load(a_ptrs, mask=a_mask, other=0.0)
        if TMA_W:
            w = WDesc.load([pid_n * BLOCK_N, k0]).T
        else:
            w = tl.load(
                W + offs_n[None, :] * stride_wn + k[:, None] * stride_wk,
                mask=k_ok[:, None] & n_ok[None, :],
                other=0.0,
            )
        if LN:
            # Chan et al.: merge this tile's (count, mean, M2) into the running ones.
            a32 = a.to(tl.float32)
            count_a = k0 * 1.0
            count_b = tl.sum(k_ok.to(tl.float32), 0)
            mean_b = tl.sum(a32, 1) / count_b
            dev = tl.where(k_ok[None, :], a32 - mean_b[:, None], 0.0)
            if CENTER:
                shift = tl.where(k0 == 0, mean_b, shift)
            delta = (mean_b - shift) - mean
            total = count_a + count_b
            mean += delta * (count_b / total)
            # (The count factor first: it is 0 on the first tile, whose delta squared may overflow.)
            m2 += tl.sum(dev * dev, 1) + delta * (delta * (count_a * count_b / total))
            if CENTER:
                # fp32 rows multiplied raw would leave mean * c1 to cancel at fp32 precision, ~|mean|/std ulps
                # where torch centers first, and a TF32 product rounds its inputs relative to their size.
                # Multiply the tile's deviations from its mean instead, and keep acc relative to the running
                # mean of the tiles so far (the shift, moved here by ``step``): the tile's mean adds its
                # distance from that times its weight sums, the move subtracts ``step`` times the earlier
                # tiles'. Every term stays small, and a tile far from the others (a row whose first features
                # stand apart) is not a large term in every later tile and in a final mean * c1 (3x torch's
                # error where the first tile stood 100x apart, measured with the first tile's mean as shift).
                moved = shift + mean
                step = moved - shift  # exact: the two are close (Sterbenz)
                w_b = tl.sum(w, 0)
                acc += mma(dev, w, DOT_PRECISION, INTERPRET)
                # The same two rank-1 updates in the form that compiles without spilling for each precision
                # on Triton 3.6 and 3.9 (tools.gpu_compile): as one expression, full-precision products
                # spilled 8-12 B on sm_90 with 3.6; as two, TF32 spilled 4 B on sm_80 with 3.9.
                if DOT_PRECISION == "tf32":
                    acc += (mean_b - moved)[:, None] * w_b[None, :] - step[:, None] * wsum[None, :]
                else:
                    acc += (mean_b - moved)[:, None] * w_b[None, :]
                    acc -= step[:, None] * wsum[None, :]
                wsum += w_b
                mean -= step
                shift = moved
            else:
                # 16-bit rows go in exactly as loaded (no rounding on the A tile's path): the products are
                # exact and the fp32 cancellation costs ~|mean|/std fp32 ulps, far under a 16-bit ulp.
                acc += mma(a, w, DOT_PRECISION, INTERPRET)
        else:
            acc += mma(a, w, DOT_PRECISION, INTERPRET)

    if LN:
        rstd = 1.0 / tl.sqrt(m2 / K + eps)
        c1 = tl.load(Colsum + offs_n, mask=n_ok, other=0.0)
        acc = (acc - mean[:, None] * c1[None, :]) * rstd[:, None]
    if HAS_BIAS:
        acc += tl.load(Bias + offs_n, mask=n_ok, other=0.0)[None, :]
    acc = _activation(acc, ACTIVATION)
    out_mask = m_ok[:, None] & n_ok[None, :]
    if RESIDUAL:
        res_ptrs = Res + (b * stride_rb + r * stride_rr)[:, None] + offs_n[None, :]
        acc += tl.load(res_ptrs, mask=out_mask, other=0.0).to(tl.float32)
    out_ptrs = Out + (b * stride_ob + r * stride_or)[:, None] + offs_n[None, :]
    tl.store(out_ptrs, to_dtype(acc, Out.dtype.element_ty, INTERPRET), mask=out_mask)


@triton.jit
def _linear_kernel(
    # Pointers: A rows, weight, output, residual, bias, LayerNorm column sums (c1); tensor descriptors of A
    # (rows, features) and W (None where TMA_A / TMA_W is off)
    X,
    W,
    XDesc,
    WDesc,
    Out,
    Res,
    Bias,
    Colsum,
    # Strides of A (batch, row, feature), the weight (out feature, in feature), output and residual
    # (batch, row; unit feature stride)
    stride_xb,
    stride_xr,
    stride_xk,
    stride_wn,
    stride_wk,
    stride_ob,
    stride_or,
    stride_rb,
    stride_rr,
    # Sizes: output rows per batch, A rows averaged per output row (MEAN_ROWS), GEMM M x N x K;
    # the LayerNorm's epsilon
    out_rows,
    mean_rows,
    M,
    N,
    K,
    eps,
    # Features: folded LayerNorm, bias, in-place residual add, A rows as a mean of rows, activation code,
    # fp32 rows centered per tile for the LayerNorm's product
    LN: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    RESIDUAL: tl.constexpr,
    MEAN_ROWS: tl.constexpr,
    ACTIVATION: tl.constexpr,
    CENTER: tl.constexpr,
    # A and W tiles through their tensor descriptors; a persistent grid, its tile loop flattened
    TMA_A: tl.constexpr,
    TMA_W: tl.constexpr,
    PERSISTENT: tl.constexpr,
    FLATTEN: tl.constexpr,
    # Tile sizes and grouped launch order
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    # tl.dot input precision, interpreter fixes (_triton_utils), 64-bit offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
    INT64: tl.constexpr,
):
    # One output tile per program, or with PERSISTENT a grid of about one program per SM walking the tiles;
    # FLATTEN lets Triton pipeline across tiles (the next tile's first loads overlap this one's epilogue).
    # The tile is a function so that the default, one tile per program, compiles without a loop around it
    # (a one-trip loop costs registers: 149 -> 196 in LN_1 -> qkv_s on sm_90).
    # fmt: off
    if PERSISTENT:
        num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
        for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
            _linear_tile(
                tile,
                X, W, XDesc, WDesc, Out, Res, Bias, Colsum,
                stride_xb, stride_xr, stride_xk, stride_wn, stride_wk, stride_ob, stride_or, stride_rb, stride_rr,
                out_rows, mean_rows, M, N, K, eps, LN, HAS_BIAS, RESIDUAL, MEAN_ROWS, ACTIVATION, CENTER,
                TMA_A, TMA_W, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, DOT_PRECISION, INTERPRET, INT64,
            )
    else:
        _linear_tile(
            tl.program_id(0),
            X, W, XDesc, WDesc, Out, Res, Bias, Colsum,
            stride_xb, stride_xr, stride_xk, stride_wn, stride_wk, stride_ob, stride_or, stride_rb, stride_rr,
            out_rows, mean_rows, M, N, K, eps, LN, HAS_BIAS, RESIDUAL, MEAN_ROWS, ACTIVATION, CENTER,
            TMA_A, TMA_W, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, DOT_PRECISION, INTERPRET, INT64,
        )
    # fmt: on


# -------------------------------------------------------------------------------------------- argument checks

_ROWS = "(batch, rows, features)"


def _check_operands(op: str, x: torch.Tensor, weight: torch.Tensor, vectors: dict) -> tuple[int, int]:
    """Validate ``x``, ``weight`` and the float32 epilogue vectors (``None``: absent); returns ``(N, K)``."""
    check_tensor(op, "x", x, 3, _ROWS)
    check_last_stride(op, "x", x)
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    check_tensor(op, "weight", weight, 2, "(out_features, in_features)")
    check_like(op, "weight", weight, x, "x")
    n, k = weight.shape
    if x.shape[2] != k:
        raise ValueError(f"{op}: x has {x.shape[2]} features but weight {tuple(weight.shape)} takes {k}")
    for name, vec in vectors.items():
        if vec is None:
            continue
        if vec.shape != (n,) or vec.dtype != torch.float32 or vec.device != x.device:
            raise ValueError(
                f"{op}: {name} must be a float32 ({n},) vector on {x.device}, got {vec.dtype} "
                f"{tuple(vec.shape)} on {vec.device}"
            )
        if n > 1 and vec.stride(0) != 1:
            raise ValueError(f"{op}: {name} must be contiguous, got stride {vec.stride(0)}")
    return n, k


def _activation_code(op: str, activation: str) -> int:
    try:
        return ACTIVATIONS_IN_KERNEL[activation]
    except KeyError:
        raise ValueError(
            f"{op}: activation must be one of {tuple(ACTIVATIONS_IN_KERNEL)}, got {activation!r}"
        ) from None


# --------------------------------------------------------------------------------------- launch configuration


def _launch_config(m: int, dtype: torch.dtype, precision: str = "ieee") -> dict:
    # Fixed, not autotuned: see kernels/__init__.py. 128 x 128 x 64 with 3 stages is the usual Hopper bf16
    # GEMM tile that fits in shared memory; the row block shrinks for the few-row products (CLS rows, the
    # classifier) so that they do not compute 128-row tiles of padding. fp32 (full-precision FMA products, or
    # TF32 where allowed) holds twice the bytes per element: half the tile each way. Full-precision products
    # hold their operands in registers (FMA, no tensor cores): 8 warps share the tile, where 4 spilled 56 B
    # per thread on sm_90 (Triton 3.9) with the LayerNorm's centered rows.
    if dtype == torch.float32:
        block_m, block_n, block_k, warps, stages = 64, 64, 32, 4 if precision == "tf32" else 8, 2
    else:
        block_m, block_n, block_k, warps, stages = 128, 128, 64, 8, 3
    return dict(
        BLOCK_M=min(block_m, max(16, next_pow2(m))),
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        GROUP_M=8,
        num_warps=warps,
        num_stages=stages,
        # Candidates for bench/tune.py, off until timed on an H200 (bench/NOTES.md): tiles through tensor
        # descriptors where the GPU has a TMA (sm_90+) and the operands allow it (_descriptors); a persistent
        # grid of one program per SM, its tile loop flattened or not.
        TMA=False,
        PERSISTENT=False,
        FLATTEN=False,
    )


# Programs of a persistent grid: None is one per SM, or 3 in the interpreter (no GPU to ask). Tests set a
# few, so that on a GPU too each program walks several tiles.
_PERSISTENT_PROGRAMS: int | None = None


def _grid(m: int, n: int, cfg: dict, x: torch.Tensor) -> tuple[int]:
    tiles = triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    if not cfg["PERSISTENT"]:
        return (tiles,)
    programs = _PERSISTENT_PROGRAMS
    if programs is None:
        programs = torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 3
    return (min(tiles, programs),)


def _descriptors(
    x, weight, out_rows, mean_rows, precision, cfg
) -> tuple[TensorDescriptor | None, TensorDescriptor | None]:
    """Tensor descriptors of A as ``(M, K)`` rows and of W, or ``None`` for an operand that is loaded by
    pointers: everywhere unless ``cfg["TMA"]``; on GPUs without a TMA (before sm_90); for full-precision
    fp32 products, ``precision == "ieee"`` (FMA from registers: descriptor tiles made them spill 500-900 B
    per thread on sm_90); for A rows that are not at one stride (``x[:, 1:]`` of several clips) or averaged
    (``mean_rows``); for rows that overlap (a zero stride: ``expand``) or are empty; where a base address or
    a row stride is not a multiple of 16 bytes (the TMA's rule)."""
    if not cfg["TMA"] or (x.is_cuda and torch.cuda.get_device_capability(x.device)[0] < 9):
        return None, None
    if precision == "ieee":
        return None, None
    batch, rows, k = x.shape

    def readable(t: torch.Tensor, row_stride: int, num_rows: int) -> bool:
        return (
            k > 0
            and (num_rows == 1 or row_stride >= k)
            and t.data_ptr() % 16 == 0
            and row_stride * t.element_size() % 16 == 0
        )

    if out_rows == 1:
        row_stride = x.stride(0)
    elif batch == 1 or x.stride(0) == rows * x.stride(1):
        row_stride = x.stride(1)
    else:
        row_stride = None
    x_desc = w_desc = None
    if not mean_rows and row_stride is not None and readable(x, row_stride, batch * rows):
        block = [cfg["BLOCK_M"], cfg["BLOCK_K"]]
        x_desc = TensorDescriptor(x, [batch * rows, k], [row_stride, 1], block)
    if weight.stride(1) == 1 and readable(weight, weight.stride(0), weight.shape[0]):
        w_desc = TensorDescriptor(
            weight, list(weight.shape), list(weight.stride()), [cfg["BLOCK_N"], cfg["BLOCK_K"]]
        )
    return x_desc, w_desc


# --------------------------------------------------------------------------------------------------- launcher


def _launch(x, weight, out, res, bias, colsum, out_rows, mean_rows, eps, activation, int64):
    """Launch the kernel on checked arguments: ``out = epilogue(A @ W^T)``, ``res`` the residual (``None``:
    none), ``colsum`` the LayerNorm's ``c1`` (``None``: no LayerNorm), ``mean_rows`` A rows averaged per
    output row (0: none), ``activation`` a code of ``ACTIVATIONS_IN_KERNEL``."""
    n, k = weight.shape
    m = out.shape[0] * out_rows
    if m == 0 or n == 0:
        return
    precision = dot_precision(x.dtype)
    cfg = _launch_config(m, x.dtype, precision)
    if mean_rows:
        # The CLS rows' product (a row per clip) gains nothing from a persistent grid, and its row-mean loop
        # inside the flattened tile loop spills on sm_90.
        cfg.update(PERSISTENT=False, FLATTEN=False)
    x_desc, w_desc = _descriptors(x, weight, out_rows, mean_rows, precision, cfg)
    grid = _grid(m, n, cfg, x)
    del cfg["TMA"]
    dummy = out  # unread pointer for absent operands (their constexpr flag is off)
    res_ = dummy if res is None else res
    with on_device(x):
        _linear_kernel[grid](
            x,
            weight,
            x_desc,
            w_desc,
            out,
            res_,
            dummy if bias is None else bias,
            dummy if colsum is None else colsum,
            x.stride(0),
            x.stride(1),
            x.stride(2),
            weight.stride(0),
            weight.stride(1),
            out.stride(0),
            out.stride(1),
            res_.stride(0),
            res_.stride(1),
            out_rows,
            mean_rows,
            m,
            n,
            k,
            eps,
            LN=colsum is not None,
            HAS_BIAS=bias is not None,
            RESIDUAL=res is not None,
            MEAN_ROWS=mean_rows > 0,
            ACTIVATION=activation,
            CENTER=colsum is not None and x.dtype == torch.float32,
            TMA_A=x_desc is not None,
            TMA_W=w_desc is not None,
            DOT_PRECISION=precision,
            INTERPRET=interpreting(),
            INT64=needs_int64(x, weight, out, res_) if int64 is None else int64,
            **cfg,
        )


# ------------------------------------------------------------------------------------------ layer_norm_linear

_LN_OP = "layer_norm_linear"


def _check_layer_norm_linear(x, weight, colsum, bias, activation: str) -> tuple[int, int]:
    """Validate the op's inputs; returns ``(out_features, activation code)``."""
    n, k = _check_operands(_LN_OP, x, weight, {"colsum": colsum, "bias": bias})
    if colsum is not None and k == 0:
        # The rows' statistics would be 0 / 0: a model has no such layer, and NaN out would say nothing.
        raise ValueError(f"{_LN_OP}: the LayerNorm needs at least one feature, got x {tuple(x.shape)}")
    return n, _activation_code(_LN_OP, activation)


def layer_norm_linear_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    colsum: torch.Tensor | None,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    *,
    eps: float = 1e-5,
    activation: str = "linear",
    int64: bool | None = None,
) -> torch.Tensor:
    """Launcher of ``layer_norm_linear``: writes ``out`` ``(batch, rows, out_features)`` and returns it.

    ``colsum=None`` skips the LayerNorm (a plain projection with bias and activation epilogue).
    """
    n, code = _check_layer_norm_linear(x, weight, colsum, bias, activation)
    reads = {"x": x, "weight": weight, "colsum": colsum, "bias": bias}
    check_out(_LN_OP, "out", out, (*x.shape[:2], n), x, like_name="x", reads=reads)
    _launch(x, weight, out, None, bias, colsum, x.shape[1], 0, float(eps), code, int64)
    return out


@torch.library.custom_op("timesformer::layer_norm_linear", mutates_args=())
def _layer_norm_linear_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    colsum: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    activation: str,
) -> torch.Tensor:
    n, code = _check_layer_norm_linear(x, weight, colsum, bias, activation)
    out = torch.empty((*x.shape[:2], n), dtype=x.dtype, device=x.device)
    _launch(x, weight, out, None, bias, colsum, x.shape[1], 0, eps, code, None)
    return out


@_layer_norm_linear_op.register_fake
def _(x, weight, colsum, bias, eps, activation):
    n, _ = _check_layer_norm_linear(x, weight, colsum, bias, activation)
    return x.new_empty((*x.shape[:2], n))


def layer_norm_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    colsum: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float = 1e-5,
    activation: str = "linear",
) -> torch.Tensor:
    """``act(LayerNorm(x) @ W^T + b)`` with the LayerNorm folded into prepared weights.

    Args:
        x: ``(batch, rows, in_features)``, any batch and row strides (e.g. ``x[:, 1:]``), contiguous
            features.
        weight, colsum, bias: ``prepare_layer_norm_linear``'s ``(W', c1, c2)``: ``(out_features,
            in_features)`` in ``x``'s dtype, two float32 ``(out_features,)`` vectors. ``colsum=None``: no
            LayerNorm, ``bias`` (float32 or ``None``) is the plain bias.
        eps: the LayerNorm's epsilon.
        activation: a name in ``ACTIVATIONS_IN_KERNEL``.

    Returns:
        ``(batch, rows, out_features)``, contiguous, in ``x``'s dtype.
    """
    return torch.ops.timesformer.layer_norm_linear(x, weight, colsum, bias, float(eps), activation)


# ------------------------------------------------------------------------------------------- linear_residual_

_RES_OP = "linear_residual_"


def _check_linear_residual(x, weight, bias, residual, mean_rows: bool) -> None:
    """Validate the op's inputs (``residual`` is also its output)."""
    n, _ = _check_operands(_RES_OP, x, weight, {"bias": bias})
    check_tensor(_RES_OP, "residual", residual, 3, _ROWS)
    check_last_stride(_RES_OP, "residual", residual)
    if mean_rows and x.shape[1] == 0:
        raise ValueError(f"{_RES_OP}: mean_rows averages the rows of x, and x {tuple(x.shape)} has none")
    rows = 1 if mean_rows else x.shape[1]
    expected = (x.shape[0], rows, n)
    if tuple(residual.shape) != expected or residual.dtype != x.dtype or residual.device != x.device:
        raise ValueError(
            f"{_RES_OP}: residual must be {x.dtype} {expected} on {x.device}, got {residual.dtype} "
            f"{tuple(residual.shape)} on {residual.device}"
        )


# The op writes into its argument, so it is the launcher itself: no separate ``*_fwd``.
@torch.library.custom_op("timesformer::linear_residual_", mutates_args=("residual",))
def _linear_residual_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    mean_rows: bool,
    int64: bool | None,
) -> None:
    _check_linear_residual(x, weight, bias, residual, mean_rows)
    check_writes(_RES_OP, "residual", residual, {"x": x, "weight": weight, "bias": bias})
    out_rows = residual.shape[1]
    _launch(
        x, weight, residual, residual, bias, None, out_rows, x.shape[1] if mean_rows else 0, 0.0, 0, int64
    )


@_linear_residual_op.register_fake
def _(x, weight, bias, residual, mean_rows, int64):
    _check_linear_residual(x, weight, bias, residual, mean_rows)


def linear_residual_(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor,
    *,
    mean_rows: bool = False,
    int64: bool | None = None,
) -> torch.Tensor:
    """``residual += x @ W^T + b`` in place (one rounding of the sum); returns ``residual``.

    Args:
        x: ``(batch, rows, in_features)``, any batch and row strides, contiguous features.
        weight: ``(out_features, in_features)`` in ``x``'s dtype; bias: float32 ``(out_features,)`` or None.
        residual: ``(batch, rows, out_features)`` (any batch and row strides, e.g. ``x[:, 1:]`` of the
            residual stream), or ``(batch, 1, out_features)`` with ``mean_rows``.
        mean_rows: project the mean of each batch's ``rows`` rows of ``x`` (the frame-mean of the CLS
            contexts) into its one residual row.
    """
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, residual)):
        # The other ops fail at backward (no autograd formula); an in-place op cannot: its result would carry
        # no gradient to x, W and b, and a leaf's data would change under autograd. Checked here: autograd is
        # off inside the op.
        raise ValueError(
            f"{_RES_OP}: the op has no backward, and an input requires grad: call it under torch.no_grad() "
            "or torch.inference_mode()"
        )
    torch.ops.timesformer.linear_residual_(x, weight, bias, residual, mean_rows, int64)
    return residual


# ----------------------------------------------------------------------------------------- weight preparation


def prepare_layer_norm_linear(
    ln_weight: torch.Tensor | None,
    ln_bias: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold a LayerNorm's affine map into the projection after it: returns ``(W', c1, c2)``.

    ``W' = W diag(gamma)`` in ``weight``'s dtype (one rounding), ``c1 = W' 1`` summed from the rounded
    ``W'`` and ``c2 = W beta + b``, both float32 (the epilogue works in fp32). Sums in float64.

    Args:
        ln_weight, ln_bias: ``(in_features,)`` (``None``: 1 and 0, a LayerNorm without affine map).
        weight: ``(out_features, in_features)``; bias: ``(out_features,)`` or ``None``.
    """
    acc = torch.float64 if weight.device.type in ("cpu", "cuda") else torch.float32
    w = weight.to(acc)
    folded = (w if ln_weight is None else w * ln_weight.to(acc)).to(weight.dtype)
    colsum = folded.to(acc).sum(1).float()
    shift = torch.zeros(weight.shape[0], dtype=acc, device=weight.device)
    if ln_bias is not None:
        shift += w @ ln_bias.to(acc)
    if bias is not None:
        shift += bias.to(acc)
    return folded, colsum, shift.float()
