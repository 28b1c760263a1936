"""Patch embedding in one kernel: im2col GEMM with the conv weight, bias + position + time embedding, CLS rows.

``Conv2d(C, D, (ph, pw), stride=(ph, pw))`` on each frame is a GEMM with one row per (clip ``b``, frame ``t``,
patch ``n``) and a reduction over ``K = C * ph * pw`` ordered like the conv weight ``(D, C, ph, pw)``. The
kernel addresses the pixels of a row straight in the input (im2col by address arithmetic: no unfold, permute or
copy), multiplies by the weight with fp32 accumulation and, in the fp32 epilogue, adds ``bias[d]``,
``pos[1 + n, d]`` and ``time[t, d]``, rounds once to the output dtype and stores the row at its place in the
model's layout (DESIGN.md section 1):

- divided / joint space-time: ``out`` is ``(B, 1 + N * T, D)`` and patch ``(b, t, n)`` is ``out[b, 1 + n * T + t]``;
- space-only: ``out`` is ``(B * T, 1 + N, D)`` and patch ``(b, t, n)`` is ``out[b * T + t, 1 + n]``, no time term.

The GEMM's rows are numbered in the output's own order (``m = (b, n, t)``, resp. ``(b, t, n)``), so that row
``m`` of sequence ``s`` is row ``1 + m % S`` of ``out[s]`` (``S`` patch rows per sequence): a row block is one
contiguous run of output rows (coalesced stores of the largest tensor the kernel writes), and the program whose
block holds a sequence's first patch row also writes that sequence's CLS row, ``cls + pos[0]``. The pixels of a
row are read once either way (each pixel belongs to one patch); the ``D / BLOCK_N`` programs that share a row
block are neighbours in the grid, so they share its pixels in L2.

Inputs: float ``pixel_values (B, T, C, H, W)``, or uint8 frames ``(B, T, H, W, C)`` as a video decoder gives
them, normalized ``(u * rescale - mean[c]) / std[c]`` by folding ``mean`` and ``std`` into the weights and bias
(``fold_normalization``), subtracting an integer near each channel's mean from the pixels (``pixel_shift``) and
applying ``rescale`` in the epilogue (``pixel_scale``).

Pure-torch references: ``timesformer.torch_ops.patch_embed`` and ``timesformer.torch_ops.normalize_frames``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from ._common import (
    SUPPORTED_DTYPES,
    check_out,
    check_shape,
    check_tensor,
    dot_precision,
    dtype_name,
    interpreting,
    needs_int64,
    on_device,
)
from ._triton_utils import mma, to_dtype

# ----------------------------------------------------------------------------------------------------- kernel


@triton.jit
def _patch_embed_kernel(
    # Pointers: pixels, conv weight, bias, position table, time table, CLS token, output, uint8 pixel shift
    X,
    W,
    Bias,
    Pos,
    Time,
    Cls,
    Out,
    Shift,
    # Strides of the pixels in logical (batch, frame, channel, y, x) order, whatever the memory order
    stride_xb,
    stride_xt,
    stride_xc,
    stride_xh,
    stride_xw,
    # Strides of the weight (hidden, channel, kh, kw)
    stride_wd,
    stride_wc,
    stride_wh,
    stride_ww,
    # Strides of bias (hidden), pos (row, hidden), time (frame, hidden) and cls (hidden)
    stride_bd,
    stride_pr,
    stride_pd,
    stride_tt,
    stride_td,
    stride_cd,
    # Strides of the output (sequence, row, hidden)
    stride_os,
    stride_or,
    stride_od,
    # Stride of the uint8 pixels' per-channel shift (channel)
    stride_sc,
    # Sizes: GEMM rows (B * T * N), columns (D), reduction (K = C * ph * pw); frames T, patches N per frame,
    # patches per grid row
    num_rows,
    hidden,
    reduction,
    num_frames,
    num_patches,
    grid_w,
    # Factor of the product (the pixels' rescale, 1 / 255 for uint8 frames; 1 for float pixels)
    pixel_scale,
    # Patch size; features: time embedding (off for space-only), uint8 pixels
    PATCH_H: tl.constexpr,
    PATCH_W: tl.constexpr,
    HAS_TIME: tl.constexpr,
    PIXELS_U8: tl.constexpr,
    # Tile sizes
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    # tl.dot input precision, interpreter fixes (_triton_utils), 64-bit offsets
    DOT_PRECISION: tl.constexpr,
    INTERPRET: tl.constexpr,
    INT64: tl.constexpr,
):
    # The column blocks of one row block are neighbours on the (flattened) grid: they run together and
    # read the block's pixels from L2 after the first; the weight (D x K) stays in L2 throughout.
    num_n = tl.cdiv(hidden, BLOCK_N)
    pid = tl.program_id(0)
    offs_m = (pid // num_n) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid % num_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = offs_m < num_rows
    n_ok = offs_n < hidden

    # GEMM row -> (sequence, position in it) in the output's order -> (clip, frame, patch).
    if HAS_TIME:
        seq_len = num_patches * num_frames
        seq = offs_m // seq_len
        r = offs_m % seq_len
        n = r // num_frames
        t = r % num_frames
        b = seq
    else:
        seq = offs_m // num_patches
        r = offs_m % num_patches
        n = r
        b = seq // num_frames
        t = seq % num_frames
    gy = n // grid_w
    gx = n % grid_w
    if INT64:
        seq = seq.to(tl.int64)
        r = r.to(tl.int64)
        b = b.to(tl.int64)
        t = t.to(tl.int64)
        gy = gy.to(tl.int64)
        gx = gx.to(tl.int64)
        offs_n = offs_n.to(tl.int64)  # ``out`` may be hidden-major: offs_n * stride_od is then the large term

    # im2col: the address of pixel (row m, k) is row_part[m] + col_part[k].
    x_rows = X + b * stride_xb + t * stride_xt + (gy * PATCH_H) * stride_xh + (gx * PATCH_W) * stride_xw
    w_cols = W + offs_n * stride_wd
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, reduction, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        k_ok = offs_k < reduction
        c = offs_k // (PATCH_H * PATCH_W)
        kh = (offs_k // PATCH_W) % PATCH_H
        kw = offs_k % PATCH_W
        if INT64:
            c = c.to(tl.int64)
            kh = kh.to(tl.int64)
            kw = kw.to(tl.int64)
        x = tl.load(
            x_rows[:, None] + (c * stride_xc + kh * stride_xh + kw * stride_xw)[None, :],
            mask=m_ok[:, None] & k_ok[None, :],
            other=0,
        )
        w = tl.load(
            w_cols[None, :] + (c * stride_wc + kh * stride_wh + kw * stride_ww)[:, None],
            mask=k_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        if PIXELS_U8:
            # The normalization is folded into W, Bias and pixel_scale (fold_normalization). The pixels
            # enter the product less an integer per channel near its mean: the difference (-255..255) is
            # exact in every compute dtype, and the rounding of W multiplies it, not the raw value, so a flat
            # frame near the mean colour is as accurate as the unfused normalize-then-convolve.
            shift = tl.load(Shift + c * stride_sc, mask=k_ok, other=0.0)
            x = to_dtype(x.to(tl.float32) - shift[None, :], W.dtype.element_ty, INTERPRET)
        acc += mma(x, w, DOT_PRECISION, INTERPRET)

    # Epilogue in fp32, one rounding: * pixel_scale + bias + pos[1 + n] (+ time[t]).
    mask = m_ok[:, None] & n_ok[None, :]
    acc = acc * pixel_scale
    acc += tl.load(Bias + offs_n * stride_bd, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc += tl.load(Pos + (1 + n)[:, None] * stride_pr + offs_n[None, :] * stride_pd, mask=mask, other=0.0).to(
        tl.float32
    )
    if HAS_TIME:
        time_ptrs = Time + t[:, None] * stride_tt + offs_n[None, :] * stride_td
        acc += tl.load(time_ptrs, mask=mask, other=0.0).to(tl.float32)
    out_seq = Out + seq[:, None] * stride_os + offs_n[None, :] * stride_od
    tl.store(
        out_seq + (1 + r)[:, None] * stride_or, to_dtype(acc, Out.dtype.element_ty, INTERPRET), mask=mask
    )

    # CLS row of each sequence whose first patch row is in this block: cls + pos[0], one rounding.
    cls = tl.load(Cls + offs_n * stride_cd, mask=n_ok, other=0.0).to(tl.float32)
    cls += tl.load(Pos + offs_n * stride_pd, mask=n_ok, other=0.0).to(tl.float32)
    cls_tile = tl.zeros([BLOCK_M, BLOCK_N], tl.float32) + cls[None, :]
    first = m_ok & (r == 0)
    tl.store(
        out_seq, to_dtype(cls_tile, Out.dtype.element_ty, INTERPRET), mask=first[:, None] & n_ok[None, :]
    )


# -------------------------------------------------------------------------------------------- argument checks

_OP = "patch_embed"


def _check_patch_embed(
    pixels,
    weight,
    bias,
    pos,
    time,
    cls,
    channels_last: bool,
    space_only: bool,
    pixel_scale: float,
    pixel_shift,
) -> tuple[tuple[int, int, int], tuple[int, int, int, int, int]]:
    """Validate the op's inputs; returns ``(out_shape, (B, T, N, grid_w, D))``."""
    if not math.isfinite(pixel_scale):
        raise ValueError(f"{_OP}: pixel_scale must be a finite number, got {pixel_scale!r}")
    layout = (
        "(batch, frames, height, width, channels)"
        if channels_last
        else "(batch, frames, channels, height, width)"
    )
    check_tensor(_OP, "pixels", pixels, 5, layout)
    check_tensor(_OP, "weight", weight, 4, "(hidden, channels, patch_h, patch_w)")
    if weight.dtype not in SUPPORTED_DTYPES:
        names = ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES)
        raise ValueError(f"{_OP}: weight must be one of {names}, got {dtype_name(weight.dtype)}")
    if channels_last:
        if pixels.dtype != torch.uint8:
            raise ValueError(
                f"{_OP}: channels_last pixels must be uint8 frames {layout}, got {dtype_name(pixels.dtype)}"
            )
        batch, frames, height, width, channels = pixels.shape
    else:
        if pixels.dtype != weight.dtype:
            raise ValueError(
                f"{_OP}: pixels must have the weight's dtype {dtype_name(weight.dtype)}, "
                f"got {dtype_name(pixels.dtype)}"
            )
        batch, frames, channels, height, width = pixels.shape
    hidden, w_channels, patch_h, patch_w = weight.shape
    if w_channels != channels:
        raise ValueError(f"{_OP}: weight takes {w_channels} channels, pixels have {channels}")
    if frames < 1:
        raise ValueError(f"{_OP}: pixels must have at least one frame, got shape {tuple(pixels.shape)}")
    if (
        patch_h < 1
        or patch_w < 1
        or height < patch_h
        or width < patch_w
        or height % patch_h
        or width % patch_w
    ):
        raise ValueError(
            f"{_OP}: frame size {height}x{width} must be a positive multiple of the patch size {patch_h}x{patch_w}"
        )
    grid_h, grid_w = height // patch_h, width // patch_w
    num_patches = grid_h * grid_w

    if space_only:
        if time is not None:
            raise ValueError(f"{_OP}: space_only has no time embedding: time must be None, got a tensor")
    elif time is None:
        raise ValueError(f"{_OP}: time must be a ({frames}, {hidden}) tensor unless space_only, got None")
    tables = {"bias": (bias, (hidden,)), "pos": (pos, (1 + num_patches, hidden)), "cls": (cls, (hidden,))}
    if time is not None:
        tables["time"] = (time, (frames, hidden))
    allowed = f"{dtype_name(weight.dtype)} (the weight's dtype)"
    if weight.dtype != torch.float32:
        allowed += " or float32"
    for name, (x, shape) in tables.items():
        check_tensor(_OP, name, x)
        check_shape(_OP, name, x, shape, f" (1 + {grid_h}x{grid_w} patches)" if name == "pos" else "")
        if x.dtype not in (weight.dtype, torch.float32):
            raise ValueError(f"{_OP}: {name} must be {allowed}, got {dtype_name(x.dtype)}")
    if pixel_shift is not None:
        if not channels_last:
            raise ValueError(
                f"{_OP}: pixel_shift applies to uint8 frames (channels_last) only, got float pixels"
            )
        check_tensor(_OP, "pixel_shift", pixel_shift)
        check_shape(_OP, "pixel_shift", pixel_shift, (channels,), " (one per channel)")
        if pixel_shift.dtype != torch.float32:
            raise ValueError(f"{_OP}: pixel_shift must be float32, got {dtype_name(pixel_shift.dtype)}")
        tables["pixel_shift"] = (pixel_shift, (channels,))
    for name, x in {"pixels": pixels, **{k: v for k, (v, _) in tables.items()}}.items():
        if x.device != weight.device:
            raise ValueError(f"{_OP}: {name} must be on the weight's device {weight.device}, got {x.device}")
    if space_only:
        out_shape = (batch * frames, 1 + num_patches, hidden)
    else:
        out_shape = (batch, 1 + num_patches * frames, hidden)
    return out_shape, (batch, frames, num_patches, grid_w, hidden)


# --------------------------------------------------------------------------------------- launch configuration


def _launch_config(dtype: torch.dtype, pixels_u8: bool) -> dict:
    # Fixed, not autotuned: see kernels/__init__.py. 16-bit: the standard tensor-core GEMM tile, 128 x 128
    # with a 64-deep reduction step (K = 768 for TimeSformer-base: 12 steps), an fp32 accumulator of 64
    # registers per thread over 8 warps, 3 pipeline stages of (128 x 64 + 64 x 128) x 2 bytes = 96 KiB of
    # shared memory (fits A100 and H100). uint8 frames take a 32-deep step: their conversion to the compute
    # dtype holds a second copy of the pixel tile in registers, and with 64 the int64-offset variant spills
    # on sm_80. fp32 (full-precision FMA products, or TF32 where allowed) holds twice the bytes per
    # element: a smaller tile with 4 warps and 2 stages.
    if dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=2)
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=32 if pixels_u8 else 64, num_warps=8, num_stages=3)


# --------------------------------------------------------------------------------------------------- launcher


def _launch(
    out,
    sizes,
    int64,
    pixels,
    weight,
    bias,
    pos,
    time,
    cls,
    channels_last,
    space_only,
    pixel_scale,
    pixel_shift,
) -> torch.Tensor:
    """Launch on checked arguments (the op's, after ``out``, ``sizes``: ``_check_patch_embed``'s
    ``(B, T, N, grid_w, D)``, and ``int64``)."""
    batch, frames, num_patches, grid_w, hidden = sizes
    if out.numel() == 0:
        return out
    # Logical (B, T, C, H, W) strides whatever the memory order: channels-last frames are a permuted view.
    x = pixels.permute(0, 1, 4, 2, 3) if channels_last else pixels
    num_rows = batch * frames * num_patches
    cfg = _launch_config(weight.dtype, channels_last)
    grid = (triton.cdiv(num_rows, cfg["BLOCK_M"]) * triton.cdiv(hidden, cfg["BLOCK_N"]),)
    tables = [bias, pos, cls] + ([] if time is None else [time])
    time_arg = pos if time is None else time  # never read without HAS_TIME
    if pixel_shift is None:  # (float pixels never read it)
        pixel_shift = torch.zeros(x.shape[2], dtype=torch.float32, device=x.device)
    with on_device(x):
        _patch_embed_kernel[grid](
            x,
            weight,
            bias,
            pos,
            time_arg,
            cls,
            out,
            pixel_shift,
            *x.stride(),
            *weight.stride(),
            bias.stride(0),
            *pos.stride(),
            *time_arg.stride(),
            cls.stride(0),
            *out.stride(),
            pixel_shift.stride(0),
            num_rows,
            hidden,
            weight[0].numel(),
            frames,
            num_patches,
            grid_w,
            pixel_scale,
            PATCH_H=weight.shape[2],
            PATCH_W=weight.shape[3],
            HAS_TIME=not space_only,
            PIXELS_U8=channels_last,
            DOT_PRECISION=dot_precision(weight.dtype),
            INTERPRET=interpreting(),
            INT64=needs_int64(pixels, weight, out, *tables) if int64 is None else int64,
            **cfg,
        )
    return out


def patch_embed_fwd(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    time: torch.Tensor | None,
    cls: torch.Tensor,
    out: torch.Tensor,
    *,
    channels_last: bool,
    space_only: bool,
    pixel_scale: float = 1.0,
    pixel_shift: torch.Tensor | None = None,
    int64: bool | None = None,
) -> torch.Tensor:
    """Launcher of ``patch_embed``: writes every element of ``out`` and returns it.

    Args:
        pixels: float ``(B, T, C, H, W)`` in the weight's dtype, or (``channels_last``) uint8 frames
            ``(B, T, H, W, C)`` for a weight with the normalization folded in (``fold_normalization``). Any
            strides; ``H``, ``W`` multiples of the patch size.
        weight: ``(D, C, ph, pw)`` conv weight (float32, float16 or bfloat16), any strides: it sets the
            compute and output dtype and the patch size.
        bias: ``(D,)``. pos: ``(1 + N, D)`` position table already interpolated to the grid
            (``N = (H / ph) * (W / pw)``). time: ``(T, D)`` time table already interpolated to ``T``, or
            ``None`` for ``space_only``. cls: ``(D,)``. These four: any strides, the weight's dtype or float32
            (they are added in fp32).
        out: ``(B, 1 + N * T, D)``, rows in ``(n t)`` order, or ``(B * T, 1 + N, D)`` for ``space_only``; the
            weight's dtype and device, any strides.
        channels_last: the pixels are uint8 ``(B, T, H, W, C)`` frames.
        space_only: space-only layout, no time embedding.
        pixel_scale: factor of the product, before the bias (the processor's ``rescale_factor`` for uint8
            frames and ``fold_normalization``'s weights).
        pixel_shift: float32 ``(C,)`` subtracted from the uint8 pixels before the product (``fold_normalization``'s
            shift; integers from 0 to 255 keep the difference exact); ``None``: zeros.
        int64: index in 64 bits (default: only where offsets need it).
    """
    args = (pixels, weight, bias, pos, time, cls, channels_last, space_only, float(pixel_scale), pixel_shift)
    out_shape, sizes = _check_patch_embed(*args)
    check_out(
        _OP,
        "out",
        out,
        out_shape,
        weight,
        like_name="the weight",
        dtype_str=dtype_name,
        last_stride=False,
        reads={"pixels": pixels, "weight": weight, "bias": bias, "pos": pos, "time": time, "cls": cls},
    )
    return _launch(out, sizes, int64, *args)


# ----------------------------------------------------------------------------------------------------- the op


@torch.library.custom_op("timesformer::patch_embed", mutates_args=())
def _patch_embed_op(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    time: torch.Tensor | None,
    cls: torch.Tensor,
    channels_last: bool,
    space_only: bool,
    pixel_scale: float = 1.0,
    pixel_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    args = (pixels, weight, bias, pos, time, cls, channels_last, space_only, pixel_scale, pixel_shift)
    out_shape, sizes = _check_patch_embed(*args)
    out = torch.empty(out_shape, dtype=weight.dtype, device=weight.device)
    return _launch(out, sizes, None, *args)


@_patch_embed_op.register_fake
def _(pixels, weight, bias, pos, time, cls, channels_last, space_only, pixel_scale=1.0, pixel_shift=None):
    out_shape, _ = _check_patch_embed(
        pixels, weight, bias, pos, time, cls, channels_last, space_only, pixel_scale, pixel_shift
    )
    return weight.new_empty(out_shape)


def patch_embed(
    pixels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    pos: torch.Tensor,
    time: torch.Tensor | None,
    cls: torch.Tensor,
    *,
    channels_last: bool = False,
    space_only: bool = False,
    pixel_scale: float = 1.0,
    pixel_shift: torch.Tensor | None = None,
) -> torch.Tensor:
    """Embeddings of a clip in the model's layout: conv patch embedding, CLS, position and time embeddings.

    Args:
        pixels: float ``(B, T, C, H, W)`` in the weight's dtype (normalized pixel values), or with
            ``channels_last`` uint8 frames ``(B, T, H, W, C)`` (pass the weight, bias and shift of
            ``fold_normalization`` and the ``rescale`` as ``pixel_scale``). Any strides; ``H``, ``W``
            multiples of the patch size ``(ph, pw)``.
        weight: ``(D, C, ph, pw)`` conv weight, float32 / float16 / bfloat16: the output dtype.
        bias: ``(D,)``.
        pos: ``(1 + N, D)``, the position table already interpolated to the grid, ``N = (H/ph) * (W/pw)``.
        time: ``(T, D)``, the time table already interpolated to ``T``; ``None`` for ``space_only``.
        cls: ``(D,)``.
        channels_last: the pixels are uint8 ``(B, T, H, W, C)`` frames.
        space_only: the space-only layout (no time embedding).
        pixel_scale: factor of the conv's product, applied before the bias (in the fp32 epilogue).
        pixel_shift: float32 ``(C,)``, uint8 frames only: subtracted from each pixel before the product
            (``fold_normalization``'s shift); ``None``: zeros.

    Returns:
        A new contiguous ``(B, 1 + N * T, D)`` tensor, row 0 CLS and row ``1 + n * T + t`` patch ``n`` of frame
        ``t``; or ``(B * T, 1 + N, D)`` for ``space_only``. Bias, tables and CLS may be float32 with a 16-bit
        weight: everything after the product is added in fp32 and rounded once.
    """
    return torch.ops.timesformer.patch_embed(
        pixels, weight, bias, pos, time, cls, channels_last, space_only, float(pixel_scale), pixel_shift
    )


# ----------------------------------------------------------------------------------------- weight preparation


def fold_normalization(
    weight: torch.Tensor,
    bias: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    rescale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold the image processor's normalization ``(u * rescale - mean[c]) / std[c]`` into the conv: returns
    ``(W', bias', shift)`` for ``patch_embed(frames, W', bias', ..., channels_last=True, pixel_scale=rescale,
    pixel_shift=shift)``.

    With ``shift[c]`` the integer nearest ``mean[c] / rescale`` (the mean colour in pixel units, 0 to 255):
    ``conv(W, (u * rescale - mean) / std) + bias = rescale * conv(W', u - shift) + bias'`` where
    ``W'[d, c, kh, kw] = W[d, c, kh, kw] / std[c]`` and
    ``bias'[d] = bias[d] - sum_{c, kh, kw} W'[d, c, kh, kw] * (mean[c] - shift[c] * rescale)``.

    Why fold rather than normalize each loaded pixel before the product: the main loop stays a plain product
    (no per-element multiply-add with a per-channel scale); the algebra is exact (the conv is linear). The
    rounding it adds is one rounding of each ``W'`` to the weight's dtype, and the kernel multiplies it by
    ``u - shift``, an exact integer of the size of the normalized pixel: the same size of error as rounding
    each normalized pixel, which the unfused pipeline does. (Multiplied by the raw ``u`` instead, a flat frame
    near the mean colour, whose normalized pixels are near 0, came out with 2.6 times that error.)
    ``rescale`` stays out of ``W'``: folded in, it took float16 weights below about 3.5e-3 into float16's
    subnormal range (``W * rescale / std`` under 6.1e-5), where they lose precision. It is applied to the
    fp32 product instead. Computed once per weight (callers cache it).

    Args:
        weight: ``(D, C, ph, pw)`` conv weight.
        bias: ``(D,)``.
        mean, std: ``C`` numbers each (sequences or tensors).
        rescale: the processor's ``rescale_factor`` (``1 / 255``), a positive finite number.

    Returns:
        ``(weight', bias', shift)``: computed in float64 and cast once, ``weight'`` to the weight's dtype,
        ``bias'`` to float32 at least (it is added in the kernel's fp32 epilogue, and can be larger than the
        bias itself: keeping it in fp32 costs nothing and avoids a 16-bit rounding), ``shift`` ``(C,)`` float32.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() != 4:
        raise ValueError(
            f"fold_normalization: weight must be a (hidden, channels, patch_h, patch_w) tensor, got "
            f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}"
        )
    channels = weight.shape[1]
    mean64 = torch.as_tensor(mean, dtype=torch.float64, device=weight.device).reshape(-1)
    std64 = torch.as_tensor(std, dtype=torch.float64, device=weight.device).reshape(-1)
    for name, v in (("mean", mean64), ("std", std64)):
        if v.numel() != channels:
            raise ValueError(
                f"fold_normalization: {name} must have {channels} values (one per channel), got {v.numel()}"
            )
    if not bool((std64 != 0).all()):
        raise ValueError(f"fold_normalization: std must be nonzero, got {std64.tolist()}")
    if not (isinstance(rescale, (int, float)) and 0 < rescale < math.inf):
        raise ValueError(f"fold_normalization: rescale must be a positive finite number, got {rescale!r}")
    if tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(
            f"fold_normalization: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}"
        )
    w64 = weight.detach().to(torch.float64) / std64.view(1, channels, 1, 1)
    shift = (mean64 / rescale).round().clamp(0, 255)
    rest = (mean64 - shift * rescale).view(1, channels, 1, 1)
    b_folded = bias.detach().to(torch.float64) - (w64 * rest).sum(dim=(1, 2, 3))
    return w64.to(weight.dtype), b_folded.to(torch.promote_types(bias.dtype, torch.float32)), shift.float()
