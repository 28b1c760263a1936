"""The patch-embedding kernel: im2col GEMM with the conv weight, bias, position and time embeddings, CLS rows.

Against the float64 reference ``timesformer.torch_ops.patch_embed`` (and ``normalize_frames`` for uint8 frames). Runs
on a GPU when one is present, else in Triton's interpreter (TRITON_INTERPRET=1, set by conftest).
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    DEVICE,
    KERNEL_DTYPES,
    assert_kernel_accuracy,
    errors_in_threads,
    poisoned,
    rel_err,
    stable_seed,
)

from timesformer import torch_ops
from timesformer.kernels import patch_embed as kp
from timesformer.kernels._common import needs_int64

# ImageNet statistics, as the TimeSformer / VideoMAE image processors use them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
RESCALE = 1 / 255

LAYOUTS = ("divided_space_time", "joint_space_time", "space_only")

# (batch, frames, channels, height, width, patch_h, patch_w, hidden): non-square grids (2x3, 3x2), T = 1 and 3,
# patches 3 (K = 27 and 9), 4, 8 and 4x3, D not a power of two, rows, D and K around the 64 / 128 blocks
# (M = 150 and 72 rows, D = 136 and 80, K = 192 and 48: several row, column and reduction blocks).
SHAPES = [
    (2, 3, 3, 6, 9, 3, 3, 24),
    (1, 1, 1, 9, 6, 3, 3, 40),
    (2, 3, 3, 8, 12, 4, 4, 80),
    (1, 3, 3, 16, 24, 8, 8, 136),
    (2, 3, 1, 20, 20, 4, 4, 24),
    (1, 3, 3, 8, 9, 4, 3, 40),
]


def _params(channels, patch_h, patch_w, hidden, num_patches, frames, seed, space_only=False):
    """Float64 (weight, bias, pos, time, cls), random and nonzero, weights scaled like a trained conv."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return scale * torch.randn(*shape, generator=gen, dtype=torch.float64)

    fan_in = channels * patch_h * patch_w
    weight = randn(hidden, channels, patch_h, patch_w, scale=fan_in**-0.5)
    time = None if space_only else randn(frames, hidden, scale=0.3)
    return weight, randn(hidden, scale=0.3), randn(1 + num_patches, hidden, scale=0.3), time, randn(hidden)


def _to(params, dtype):
    return [None if p is None else p.to(device=DEVICE, dtype=dtype) for p in params]


def _out_shape(batch, frames, num_patches, hidden, space_only):
    if space_only:
        return (batch * frames, 1 + num_patches, hidden)
    return (batch, 1 + num_patches * frames, hidden)


def _float_case(shape, dtype, layout, seed, pixels_view=None):
    batch, frames, channels, height, width, patch_h, patch_w, hidden = shape
    space_only = layout == "space_only"
    num_patches = (height // patch_h) * (width // patch_w)
    gen = torch.Generator().manual_seed(seed + 1)
    pixels64 = torch.randn(batch, frames, channels, height, width, generator=gen, dtype=torch.float64)
    params64 = _params(channels, patch_h, patch_w, hidden, num_patches, frames, seed, space_only)
    pixels = pixels64.to(device=DEVICE, dtype=dtype)
    if pixels_view is not None:
        pixels = pixels_view(pixels)
    params = _to(params64, dtype)
    # The reference on the inputs as the kernel sees them (rounded to dtype), in float64.
    exact = torch_ops.patch_embed(pixels.double(), *_to(params, torch.float64), space_only=space_only)
    plain = torch_ops.patch_embed(pixels, *params, space_only=space_only)
    out = poisoned(_out_shape(batch, frames, num_patches, hidden, space_only), dtype)
    kp.patch_embed_fwd(pixels, *params, out, channels_last=False, space_only=space_only)
    assert_kernel_accuracy(out, exact, plain)
    return pixels, params, exact, plain


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_float_pixels(shape, dtype):
    # divided and space-only on every shape and dtype; joint (the divided layout) has its own test.
    for layout in ("divided_space_time", "space_only"):
        _float_case(shape, dtype, layout, seed=stable_seed(shape, dtype, layout))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_custom_op_every_layout(dtype, layout):
    shape = (2, 3, 3, 8, 12, 4, 4, 40)
    pixels, params, exact, plain = _float_case(shape, dtype, layout, seed=stable_seed("op", dtype, layout))
    out = kp.patch_embed(pixels, *params, space_only=layout == "space_only")
    assert out.is_contiguous() and out.dtype == dtype
    assert_kernel_accuracy(out, exact, plain)


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_strided_inputs_and_output(dtype):
    """Pixels as a permuted, cropped view; a permuted weight; a strided table; an output with a row pitch."""
    batch, frames, channels, height, width, patch_h, patch_w, hidden = 2, 3, 3, 8, 12, 4, 4, 40
    num_patches = 6
    gen = torch.Generator().manual_seed(stable_seed("strided", dtype))
    big = torch.randn(batch, channels, frames, height + 1, width + 2, generator=gen, dtype=torch.float64)
    pixels = big.to(device=DEVICE, dtype=dtype).permute(0, 2, 1, 3, 4)[..., 1:, 2:]
    assert not pixels.is_contiguous()
    weight, bias, pos, time, cls = _to(
        _params(channels, patch_h, patch_w, hidden, num_patches, frames, stable_seed("strided-w", dtype)),
        dtype,
    )
    weight = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last conv weight
    pos = torch.stack((pos, -pos), dim=-1)[..., 0]  # the same values, every other element of a buffer
    assert not weight.is_contiguous() and pos.stride(1) == 2
    exact = torch_ops.patch_embed(*_to((pixels, weight, bias, pos, time, cls), torch.float64))
    plain = torch_ops.patch_embed(pixels, weight, bias, pos, time, cls)
    rows = 1 + num_patches * frames
    out = poisoned((batch, rows + 2, hidden + 5), dtype)[:, 1 : 1 + rows, 3 : 3 + hidden]
    kp.patch_embed_fwd(pixels, weight, bias, pos, time, cls, out, channels_last=False, space_only=False)
    assert_kernel_accuracy(out, exact, plain)


def _frames(batch, frames, height, width, channels, seed, near_mean=False):
    """uint8 channels-last frames as a strided view: every other frame of an RGBA-like buffer, alpha dropped.
    ``near_mean``: within 2 of MEAN's colour (a flat grey region: normalized pixels near 0)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 2 * frames, height, width, channels + 1)
    if near_mean:
        colour = torch.tensor([round(m / RESCALE) for m in MEAN[:channels]] + [0])
        buf = (colour + torch.randint(-2, 3, shape, generator=gen)).clamp(0, 255).to(torch.uint8)
    else:
        buf = torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return buf.to(DEVICE)[:, ::2, ..., :channels]


# Parameters at their usual scale (conv weights of std 0.14, the fan-in scale), and all 200x smaller: the
# weights folded with rescale / std into float16 then fell below its smallest normal number (6.1e-5), where
# they lose precision (3-5x plain torch's error). Frames near the mean colour: the folded weights' rounding
# multiplied the raw pixel values, and such frames had 2.6x plain torch's error.
@pytest.mark.parametrize("frames_kind", ("random", "near_mean"))
@pytest.mark.parametrize("scale", (1.0, 0.005))
@pytest.mark.parametrize("layout", ("divided_space_time", "space_only"))
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
def test_uint8_frames_with_folded_normalization(dtype, layout, scale, frames_kind):
    batch, frames, channels, height, width, patch_h, patch_w, hidden = 2, 3, 3, 8, 12, 4, 4, 40
    space_only = layout == "space_only"
    num_patches = (height // patch_h) * (width // patch_w)
    seed = stable_seed("u8", dtype, layout, scale, frames_kind)
    u8 = _frames(batch, frames, height, width, channels, seed, near_mean=frames_kind == "near_mean")
    assert not u8.is_contiguous()
    params = _params(channels, patch_h, patch_w, hidden, num_patches, frames, seed, space_only)
    weight, bias, pos, time, cls = _to([None if p is None else p * scale for p in params], dtype)
    exact = torch_ops.patch_embed(
        torch_ops.normalize_frames(u8, MEAN, STD, RESCALE, torch.float64),
        *_to((weight, bias, pos, time, cls), torch.float64),
        space_only=space_only,
    )
    # What a user would run instead: the image processor's float32 math cast to dtype, then the model.
    plain = torch_ops.patch_embed(
        torch_ops.normalize_frames(u8, MEAN, STD, RESCALE, dtype),
        weight,
        bias,
        pos,
        time,
        cls,
        space_only=space_only,
    )
    w_folded, b_folded, shift = kp.fold_normalization(weight, bias, MEAN, STD, RESCALE)
    assert w_folded.dtype == dtype and b_folded.dtype == torch.float32
    out = poisoned(_out_shape(batch, frames, num_patches, hidden, space_only), dtype)
    u8_options = dict(channels_last=True, space_only=space_only, pixel_scale=RESCALE, pixel_shift=shift)
    kp.patch_embed_fwd(u8, w_folded, b_folded, pos, time, cls, out, **u8_options)
    assert_kernel_accuracy(out, exact, plain)
    op_out = kp.patch_embed(u8, w_folded, b_folded, pos, time, cls, **u8_options)
    assert torch.equal(op_out, out)


def test_fold_normalization_is_exact_algebra():
    weight, bias = _params(3, 4, 3, 24, 6, 2, seed=5)[:2]
    u8 = _frames(2, 2, 8, 9, 3, seed=6).cpu()
    w_folded, b_folded, shift = kp.fold_normalization(weight, bias, MEAN, STD, RESCALE)
    assert w_folded.dtype == b_folded.dtype == torch.float64
    assert shift.dtype == torch.float32 and shift.tolist() == [124, 116, 104]  # MEAN * 255, rounded
    ref = torch.nn.functional.conv2d(
        torch_ops.normalize_frames(u8, MEAN, STD, RESCALE, torch.float64).flatten(0, 1),
        weight,
        bias,
        stride=(4, 3),
    )
    shifted = u8.permute(0, 1, 4, 2, 3).flatten(0, 1).double() - shift.double().view(-1, 1, 1)
    folded = RESCALE * torch.nn.functional.conv2d(shifted, w_folded, stride=(4, 3)) + b_folded.view(-1, 1, 1)
    assert rel_err(folded, ref) < 1e-14
    # The shift stays a pixel value whatever the statistics (the difference must stay within -255..255).
    assert kp.fold_normalization(weight, bias, (-1, 0.5, 9), STD, RESCALE)[2].tolist() == [0, 128, 255]


@pytest.mark.parametrize("int64", [False, True])
def test_int64_indexing_path(int64):
    shape = (2, 3, 3, 8, 12, 4, 4, 24)
    batch, frames, channels, height, width, patch_h, patch_w, hidden = shape
    gen = torch.Generator().manual_seed(11)
    pixels = torch.randn(batch, frames, channels, height, width, generator=gen).to(DEVICE)
    params = _to(_params(channels, patch_h, patch_w, hidden, 6, frames, 12), torch.float32)
    out = poisoned((batch, 1 + 6 * frames, hidden), torch.float32)
    kp.patch_embed_fwd(pixels, *params, out, channels_last=False, space_only=False, int64=int64)
    assert_kernel_accuracy(out, torch_ops.patch_embed(pixels.double(), *_to(params, torch.float64)))


def test_fake_shapes_and_int64_switch():
    """Shape-only runs (meta tensors): TimeSformer-L's 96 frames at batch 1024 need 64-bit offsets."""
    meta = dict(device="meta", dtype=torch.bfloat16)
    pixels = torch.empty(1024, 96, 3, 224, 224, **meta)
    weight = torch.empty(1024, 3, 16, 16, **meta)
    bias, cls = torch.empty(1024, **meta), torch.empty(1024, **meta)
    pos, time = torch.empty(197, 1024, **meta), torch.empty(96, 1024, **meta)
    assert needs_int64(pixels) and not needs_int64(pixels[:8])
    out = torch.ops.timesformer.patch_embed(pixels, weight, bias, pos, time, cls, False, False)
    assert out.shape == (1024, 1 + 196 * 96, 1024) and out.dtype == torch.bfloat16
    frames = torch.empty(4, 96, 224, 224, 3, device="meta", dtype=torch.uint8)
    out = torch.ops.timesformer.patch_embed(frames, weight, bias.float(), pos, None, cls, True, True)
    assert out.shape == (4 * 96, 197, 1024)


def test_op_passes_opcheck_and_compiles():
    """Schema, fake (shape-only) implementation and dynamic-shape tracing agree with the kernel."""
    weight, bias, pos, time, cls = _to(_params(3, 4, 4, 24, 6, 3, seed=8), torch.float32)
    pixels = torch.randn(2, 3, 3, 8, 12, device=DEVICE)
    torch.library.opcheck(
        torch.ops.timesformer.patch_embed.default, (pixels, weight, bias, pos, time, cls, False, False)
    )
    u8 = _frames(2, 3, 8, 12, 3, seed=9)
    w_folded, b_folded, shift = kp.fold_normalization(weight.bfloat16(), bias, MEAN, STD, RESCALE)
    torch.library.opcheck(
        torch.ops.timesformer.patch_embed.default,
        (u8, w_folded, b_folded, pos.bfloat16(), None, cls.bfloat16(), True, True, RESCALE, shift),
    )

    def f(pixels):
        return kp.patch_embed(pixels, weight, bias, pos, time, cls)

    assert torch.equal(torch.compile(f, backend="aot_eager", fullgraph=True)(pixels), f(pixels))


def test_empty_batch():
    params = _to(_params(3, 4, 4, 24, 6, 3, seed=2), torch.float32)
    out = kp.patch_embed(torch.randn(0, 3, 3, 8, 12, device=DEVICE), *params)
    assert out.shape == (0, 19, 24)


def test_bad_input_is_rejected_with_the_numbers():
    f32 = torch.float32
    pixels = torch.randn(2, 3, 3, 8, 12, device=DEVICE)
    weight, bias, pos, time, cls = _to(_params(3, 4, 4, 24, 6, 3, seed=3), f32)
    out = torch.empty(2, 19, 24, device=DEVICE)

    def call(*args, **kw):
        kwargs = dict(channels_last=False, space_only=False) | kw
        return kp.patch_embed_fwd(*args, **kwargs)

    good = (pixels, weight, bias, pos, time, cls, out)

    def bad(index, value, **kw):
        args = list(good)
        args[index] = value
        return call(*args, **kw)

    with pytest.raises(TypeError, match=r"pixels must be a torch.Tensor, got ndarray"):
        bad(0, pixels.cpu().numpy())
    with pytest.raises(
        ValueError,
        match=r"pixels must have 5 dimensions \(batch, frames, channels, height, width\), got shape \(6, 3, 8, 12\)",
    ):
        bad(0, pixels.flatten(0, 1))
    with pytest.raises(ValueError, match=r"weight must be one of float16, bfloat16, float32, got float64"):
        kp.patch_embed(pixels.double(), *_to((weight, bias, pos, time, cls), torch.float64))
    with pytest.raises(ValueError, match=r"pixels must have the weight's dtype float32, got float16"):
        bad(0, pixels.half())
    with pytest.raises(
        ValueError,
        match=r"channels_last pixels must be uint8 frames \(batch, frames, height, width, channels\), got float32",
    ):
        call(*good, channels_last=True)
    with pytest.raises(ValueError, match=r"weight takes 3 channels, pixels have 1"):
        bad(0, pixels[:, :, :1])
    with pytest.raises(
        ValueError, match=r"frame size 8x10 must be a positive multiple of the patch size 4x4"
    ):
        bad(0, pixels[..., :10])
    with pytest.raises(
        ValueError, match=r"frame size 8x12 must be a positive multiple of the patch size 3x4"
    ):
        bad(1, weight[:, :, :3])
    with pytest.raises(
        ValueError, match=r"pixels must have at least one frame, got shape \(2, 0, 3, 8, 12\)"
    ):
        bad(0, pixels[:, :0])
    with pytest.raises(
        ValueError, match=r"pos must have shape \(7, 24\) \(1 \+ 2x3 patches\), got \(6, 24\)"
    ):
        bad(3, pos[:6])
    with pytest.raises(ValueError, match=r"time must have shape \(3, 24\), got \(2, 24\)"):
        bad(4, time[:2])
    with pytest.raises(ValueError, match=r"time must be a \(3, 24\) tensor unless space_only, got None"):
        bad(4, None)
    with pytest.raises(ValueError, match=r"space_only has no time embedding: time must be None"):
        call(*good[:6], torch.empty(6, 7, 24, device=DEVICE), space_only=True)
    with pytest.raises(ValueError, match=r"bias must have shape \(24,\), got \(23,\)"):
        bad(2, bias[:23])
    with pytest.raises(ValueError, match=r"cls must have shape \(24,\), got \(1, 24\)"):
        bad(5, cls[None])
    with pytest.raises(ValueError, match=r"pos must be float32 \(the weight's dtype\), got float16"):
        bad(3, pos.half())
    with pytest.raises(ValueError, match=r"time must be on the weight's device .*, got meta"):
        bad(4, time.to("meta"))
    with pytest.raises(ValueError, match=r"out must have shape \(2, 19, 24\), got \(6, 7, 24\)"):
        bad(6, torch.empty(6, 7, 24, device=DEVICE))
    with pytest.raises(ValueError, match=r"out must be float32 on .* like the weight, got float16"):
        bad(6, out.half())
    with pytest.raises(ValueError, match=r"mean must have 3 values \(one per channel\), got 2"):
        kp.fold_normalization(weight, bias, MEAN[:2], STD, RESCALE)
    with pytest.raises(ValueError, match=r"std must be nonzero"):
        kp.fold_normalization(weight, bias, MEAN, (1.0, 0.0, 1.0), RESCALE)
    with pytest.raises(ValueError, match=r"rescale must be a positive finite number, got 0"):
        kp.fold_normalization(weight, bias, MEAN, STD, 0)
    with pytest.raises(ValueError, match=r"pixel_scale must be a finite number, got nan"):
        call(*good, pixel_scale=float("nan"))
    with pytest.raises(ValueError, match=r"pixel_shift applies to uint8 frames \(channels_last\) only"):
        call(*good, pixel_shift=torch.zeros(3, device=DEVICE))
    u8 = _frames(2, 3, 8, 12, 3, seed=3)
    with pytest.raises(
        ValueError, match=r"pixel_shift must have shape \(3,\) \(one per channel\), got \(4,\)"
    ):
        call(u8, *good[1:], channels_last=True, pixel_shift=torch.zeros(4, device=DEVICE))
    with pytest.raises(ValueError, match=r"pixel_shift must be float32, got float16"):
        call(u8, *good[1:], channels_last=True, pixel_shift=torch.zeros(3, device=DEVICE).half())


def test_launches_from_several_threads():
    """Threads sharing a model launch kernels at once; in Triton's interpreter, whose launch state is
    process-wide, they broke each other's grids (``x >= grid_dim[0]``) unless run one at a time."""
    weight, bias, pos, time, cls = _to(_params(3, 4, 4, 24, 6, 3, seed=13), torch.float32)
    inputs = [
        torch.randn(b, 3, 3, 8, 12, generator=torch.Generator().manual_seed(b)).to(DEVICE) for b in (1, 2, 3)
    ]
    expected = [kp.patch_embed(x, weight, bias, pos, time, cls) for x in inputs]

    def work(k):
        for _ in range(15):
            assert torch.equal(kp.patch_embed(inputs[k], weight, bias, pos, time, cls), expected[k])

    assert errors_in_threads(work, 3) == []
