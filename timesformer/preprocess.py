"""Frame preprocessing: resize (shortest edge), center crop, rescale, normalize, channels first.

What ``transformers``' ``TimesformerVideoProcessor`` (and ``VideoMAEImageProcessor``, which the model cards'
``preprocessor_config.json`` names) does to each decoded frame, as one op: uint8 ``[T, H, W, 3]`` frames
in, ``[T, 3, crop_h, crop_w]`` pixel values out. The resize is bilinear with antialiasing (a triangle filter
widened by the scale when shrinking, as PIL's ``BILINEAR`` and ``F.interpolate(..., antialias=True)`` do),
computed in float32 without rounding to uint8 in between.

Two implementations with the same results:

- the native op ``torch.ops.timesformer_csrc.preprocess_frames`` (``csrc/``, CPU parallel over frames and
  rows, CUDA), which computes only the pixels inside the crop;
- ``preprocess_frames_torch``, pure torch (``F.interpolate``, then slicing), used when the extension is not
  built; the package says so once (logging).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from ._compile import assume_constant_result

logger = logging.getLogger("timesformer")

# transformers' IMAGENET_DEFAULT_MEAN / _STD: TimesformerVideoProcessor's defaults (VideoMAEImageProcessor's
# are 0.5 / 0.5; the model cards' preprocessor_config.json files give theirs explicitly).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# transformers' IMAGENET_STANDARD_MEAN / _STD: the defaults of VideoMAE's processors.
STANDARD_MEAN = (0.5, 0.5, 0.5)
STANDARD_STD = (0.5, 0.5, 0.5)
# PIL's filter codes, as preprocessor_config.json's "resample" spells them.
BILINEAR = 2
_PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


# The most pixels a frame is resized to before its views are cropped. The torch paths resize whole frames
# (float32, all of a clip's frames at once), so a narrow strip of a video (16x65520: 1 M pixels, a few KB of
# file) would otherwise ask for tens of GB. 2**22 is 224 x 18724 (aspect ratios up to 1:83 at the usual
# shortest edge), and 1526 x 2713 (854x480 video at the largest shortest edge check_model accepts).
MAX_RESIZED_PIXELS = 2**22
# The most patches a view's frame may have: attention over them costs their square (with patch_size 1, a
# 2048x2048 crop of a 36 KB model folder asked for some 18 hours per video). 16384 is a 2048x2048 crop in
# 16x16 patches; a 224 model has 196.
MAX_PATCHES_PER_FRAME = 128 * 128
# The same for joint space-time attention, over all of a clip's patches at once: 4 frames of the most patches,
# or 334 frames of a 224 model's.
MAX_JOINT_TOKENS = 4 * MAX_PATCHES_PER_FRAME


def resize_output_size(
    height: int, width: int, shortest_edge: int, longest_edge: int | None = None
) -> tuple[int, int]:
    """``(h, w)`` after resizing the shortest edge to ``shortest_edge``, keeping the aspect ratio the way
    ``transformers`` rounds it (the long edge truncated: ``int(shortest_edge * long / short)``). With
    ``longest_edge``, the shortest edge is made smaller where the long one would exceed it, as
    ``transformers``' ``get_size_with_aspect_ratio`` does."""
    if height <= 0 or width <= 0 or shortest_edge <= 0 or (longest_edge is not None and longest_edge <= 0):
        raise ValueError(
            f"sizes must be positive, got {height}x{width}, shortest_edge={shortest_edge} and "
            f"longest_edge={longest_edge}"
        )
    short, long = (width, height) if width <= height else (height, width)
    size, raw = shortest_edge, None
    if longest_edge is not None and long / short * size > longest_edge:
        raw = longest_edge * short / long
        size = round(raw)
    if short == size:
        return height, width
    new_long = int((raw if raw is not None else size) * long / short)
    if size < 1 or new_long < 1:
        raise ValueError(
            f"frames of {height}x{width} resized to shortest_edge={shortest_edge} within longest_edge="
            f"{longest_edge} have a side of {min(size, new_long)} pixels: an aspect ratio this extreme is not "
            "supported"
        )
    return (new_long, size) if width <= height else (size, new_long)


def fit_within_size(height: int, width: int, max_height: int, max_width: int) -> tuple[int, int]:
    """``(h, w)`` of a ``height x width`` frame scaled, its aspect ratio kept, to the largest size within
    ``max_height x max_width`` (up or down), rounded down as ``transformers`` does; a side that would round to
    nothing (an extreme aspect ratio) is an error."""
    scale = min(max_height / height, max_width / width)
    size = int(height * scale), int(width * scale)
    if min(size) < 1:
        raise ValueError(
            f"frames of {height}x{width} fit in {max_height}x{max_width} (size max_height, max_width) as "
            f"{size[0]}x{size[1]} pixels: an aspect ratio this extreme is not supported"
        )
    return size


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """``(top, left)`` of a ``crop_h x crop_w`` center crop, as ``transformers``' ``center_crop`` places it. A
    crop larger than the frame on a side starts before it (negative): the frame is padded there with black
    (zeros before normalization), with the odd pixel after it, as ``transformers``' video processors pad."""
    top = (height - crop_h) // 2 if crop_h <= height else -((crop_h - height) // 2)
    left = (width - crop_w) // 2 if crop_w <= width else -((crop_w - width) // 2)
    return top, left


# float32's largest value, and the smallest magnitude that does not round to 0 in it (half of its smallest
# subnormal, 2**-149, rounds to 0: ties to even).
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 2.0**-149 * 0.5000001


def _check(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype) -> None:
    if (
        not isinstance(frames, torch.Tensor)
        or frames.dtype != torch.uint8
        or frames.dim() != 4
        or frames.shape[-1] != 3
    ):
        got = (
            f"{tuple(frames.shape)} {frames.dtype}"
            if isinstance(frames, torch.Tensor)
            else type(frames).__name__
        )
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {got}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError(
            f"expected at least one frame of at least 1x1 pixels, got shape {tuple(frames.shape)}"
        )
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"expected 3 means and 3 stds (RGB), got {len(mean)} and {len(std)}")
    # As the kernels use them: float32, where 1e-50 is 0 and 1e300 inf (outputs inf, NaN or 0). Plain Python,
    # so that torch.compile traces it without a break.
    if any(not _FLOAT32_TINY <= abs(float(s)) <= _FLOAT32_MAX for s in std):
        raise ValueError(f"std must be finite and nonzero in float32, got {list(std)}")
    if any(not abs(float(m)) <= _FLOAT32_MAX for m in mean):
        raise ValueError(f"mean must be finite in float32, got {list(mean)}")
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"expected dtype float32, bfloat16 or float16, got {dtype}")


def crop_boxes(height: int, width: int, crop_h: int, crop_w: int, crops: int = 1) -> list[tuple[int, int]]:
    """``(top, left)`` of each spatial view of a ``height x width`` (resized) frame: ``crops=1`` the center
    crop; ``crops=3`` three crops along the long side (left, center, right; top, center, bottom for portrait
    frames), the test protocol of the TimeSformer and VideoMAE papers (three center crops where the crop is
    longer than that side, padded as ``center_crop_box`` says)."""
    if crops not in (1, 3):
        raise ValueError(f"crops must be 1 or 3, got {crops}")
    top, left = center_crop_box(height, width, crop_h, crop_w)
    if crops == 1:
        return [(top, left)]
    if height > width:
        return [(0, left), (top, left), (height - crop_h, left)] if crop_h <= height else [(top, left)] * 3
    return [(top, 0), (top, left), (top, width - crop_w)] if crop_w <= width else [(top, left)] * 3


def _box(size: tuple[int, int], crop: tuple[int, int], box: tuple[int, int] | None) -> tuple[int, int]:
    """``box``, or the center crop's: a crop's side lies inside the frame's, or covers it (padding)."""
    (rh, rw), (ch, cw) = size, crop
    if box is None:
        return center_crop_box(rh, rw, ch, cw)
    top, left = box
    if not (min(0, rh - ch) <= top <= max(0, rh - ch) and min(0, rw - cw) <= left <= max(0, rw - cw)):
        raise ValueError(
            f"crop {ch}x{cw} at (top, left) = {box} does not fit in the resized frame {rh}x{rw} (a crop side "
            "longer than the frame's must cover it)"
        )
    return top, left


def _inside(size: tuple[int, int], crop: tuple[int, int], box: tuple[int, int]):
    """The part of the crop at ``box`` inside the ``size`` frame: ``(crop, box)`` of that part, and the
    ``(rows, columns)`` slices it fills in the crop."""
    (rh, rw), (ch, cw), (top, left) = size, crop, box
    t0, t1, l0, l1 = max(top, 0), min(top + ch, rh), max(left, 0), min(left + cw, rw)
    return (t1 - t0, l1 - l0), (t0, l0), (slice(t0 - top, t1 - top), slice(l0 - left, l1 - left))


def preprocess_frames_torch(
    frames: torch.Tensor,
    size: tuple[int, int],
    crop: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    rescale: float = 1 / 255,
    dtype: torch.dtype = torch.float32,
    box: tuple[int, int] | None = None,
) -> torch.Tensor:
    """The pure-torch implementation (the reference of the native op). Arguments as ``preprocess_frames``."""
    _check(frames, mean, std, dtype)
    (rh, rw), (ch, cw) = size, crop
    top, left = _box(size, crop, box)
    x = frames.permute(0, 3, 1, 2).float()
    if (rh, rw) != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    # Zeros (black) where the crop is larger than the frame, before normalization, as transformers pads.
    pad = (max(-left, 0), max(left + cw - rw, 0), max(-top, 0), max(top + ch - rh, 0))
    if any(pad):
        x = F.pad(x, pad)
        top, left = max(top, 0), max(left, 0)
    x = x[:, :, top : top + ch, left : left + cw]
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x * rescale - m) / s).to(dtype).contiguous()


@functools.cache
def native_available() -> bool:
    """Whether the ``csrc/`` extension is built and loaded (says once, by logging, when it is not)."""
    try:
        from . import _C  # noqa: F401  (registers torch.ops.timesformer_csrc)
    except ImportError as exc:
        logger.info(
            "timesformer: native preprocessing extension not built (%s); using the pure-torch implementation "
            "(same results, slower). Reinstall with a C++ compiler to build it.",
            exc,
        )
        return False
    return hasattr(torch.ops, "timesformer_csrc") and hasattr(torch.ops.timesformer_csrc, "preprocess_frames")


@assume_constant_result  # a dispatcher query torch.compile cannot trace
def native_cuda_available() -> bool:
    """Whether the native extension is built with its CUDA kernel (frames can be preprocessed on the GPU)."""
    return native_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
        "timesformer_csrc::preprocess_frames", "CUDA"
    )


def preprocess_frames(
    frames: torch.Tensor,
    size: tuple[int, int],
    crop: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    rescale: float = 1 / 255,
    dtype: torch.dtype = torch.float32,
    *,
    box: tuple[int, int] | None = None,
    native: bool | None = None,
) -> torch.Tensor:
    """Resize, crop (the center crop unless ``box`` says where), rescale and normalize decoded frames.

    Args:
        frames: uint8 ``(T, H, W, 3)`` RGB frames (any strides), on the CPU or a CUDA device.
        size: ``(h, w)`` to resize to (see ``resize_output_size``); the frames' own size skips the resize.
        crop: ``(crop_h, crop_w)`` of the center crop taken from the resized frames.
        mean, std: per channel, applied after ``rescale``.
        rescale: multiplies the 0..255 values first (``1 / 255``).
        dtype: float32, bfloat16 or float16 (computed in float32, rounded once).
        box: ``(top, left)`` of the crop in the resized frame (``crop_boxes``); default: the center crop.
        native: force (True) or avoid (False) the native op; default: native when built for the frames'
            device (the CPU, or CUDA where the extension has its CUDA kernel), else the torch path.

    Returns:
        ``(T, 3, crop_h, crop_w)`` contiguous tensor of ``dtype`` on the frames' device.
    """
    _check(frames, mean, std, dtype)  # before reading the frames' device: a NumPy array's is a string
    if native is None:
        native_here = native_cuda_available() if frames.device.type == "cuda" else frames.device.type == "cpu"
        use_native = native_here and native_available()
    else:
        use_native = native
    if native and not native_available():
        raise RuntimeError("the native preprocessing extension is not built (see README: Native extension)")
    if not use_native:
        return preprocess_frames_torch(frames, size, crop, mean, std, rescale, dtype, box)
    box = _box(size, crop, box)
    part, part_box, (rows, cols) = _inside(size, crop, box)
    out = torch.ops.timesformer_csrc.preprocess_frames(
        frames,
        *size,
        *part_box,
        *part,
        [float(m) for m in mean],
        [float(s) for s in std],
        float(rescale),
        dtype,
    )
    if part == tuple(crop):
        return out
    # The crop is larger than the frame: the op computes the part inside, the rest is black (0) normalized,
    # computed as the torch path computes it.
    m = torch.tensor(mean, dtype=torch.float32, device=out.device)
    s = torch.tensor(std, dtype=torch.float32, device=out.device)
    black = ((torch.zeros(3, device=out.device) * rescale - m) / s).to(dtype)
    padded = black.view(1, 3, 1, 1).expand(out.shape[0], 3, *crop).contiguous()
    padded[:, :, rows, cols] = out
    return padded


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 16384:
        raise ValueError(f"{name} must be an int from 1 to 16384, got {value!r}")
    return value


def per_channel(name: str, values, channels: int = 3) -> tuple[float, ...]:
    """``channels`` finite numbers, one per channel; one number (or a 1-element sequence) stands for all, as
    in ``transformers``' processors. For the processor's and ``set_input_normalization``'s mean and std."""
    try:
        if isinstance(
            values, (str, bytes, Mapping, set, frozenset)
        ):  # a dict would give its keys, a set no order
            raise TypeError
        items = [float(v) for v in ([values] if isinstance(values, (int, float)) else values)]
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be {channels} numbers (one per channel) or one number, got {values!r}"
        ) from None
    if len(items) == 1:
        items *= channels
    if len(items) != channels:
        raise ValueError(f"{name} must have {channels} values (one per channel), got {len(items)}")
    if not all(math.isfinite(v) for v in items):
        raise ValueError(f"{name} must be finite numbers, got {items}")
    return tuple(items)


# The largest pixel value after normalization: float16's largest number. ImageNet's statistics give 2.7, raw
# 0..255 pixels 255; 1e20 passed a float32 bound and overflowed the model's LayerNorm (every video "not finite").
MAX_NORMALIZED = 65504.0


def check_normalization(mean: Sequence[float], std: Sequence[float], rescale: float) -> None:
    """``(u * rescale - mean) / std`` of every uint8 ``u`` must be at most ``MAX_NORMALIZED`` in size, and
    other than 0 in float32 for ``u`` above 0 (``std`` 1e-45 or ``rescale`` 1e308 passed as positive and
    finite, then made every video "not finite"). ``std`` must be positive and ``rescale`` positive and finite
    (already checked)."""
    for m, s in zip(mean, std, strict=True):
        scale = rescale / s
        if not (scale > 1e-30 and (255 * rescale + abs(m)) / s <= MAX_NORMALIZED):
            raise ValueError(
                f"rescale_factor {rescale!r}, image_mean {m!r} and image_std {s!r} normalize pixels to "
                f"{scale:.3g} x u - {m / s:.3g}, out of the range a model takes (scale over 1e-30, values up "
                f"to {MAX_NORMALIZED:g})"
            )


class VideoProcessor:
    """The image processor's video path, configurable the same way: ``shortest_edge`` resize, center crop,
    rescale, normalize; ``from_pretrained(dir)`` reads a Hugging Face ``preprocessor_config.json``.

    Calling it on uint8 ``(T, H, W, 3)`` frames (or a list of such clips, all the same length) returns
    ``pixel_values`` ``(batch, T, 3, crop_h, crop_w)``.
    """

    def __init__(
        self,
        shortest_edge: int = 224,
        crop_size: tuple[int, int] = (224, 224),
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        rescale_factor: float = 1 / 255,
        do_resize: bool = True,
        do_center_crop: bool = True,
        do_rescale: bool = True,
        do_normalize: bool = True,
        longest_edge: int | None = None,
        resize_to: tuple[int, int] | None = None,
        fit_within: tuple[int, int] | None = None,
    ):
        self.shortest_edge = _positive_int("size.shortest_edge", shortest_edge)
        self.longest_edge = None if longest_edge is None else _positive_int("size.longest_edge", longest_edge)
        # size {height, width}: every frame resized to exactly that, its aspect ratio not kept (as transformers);
        # shortest_edge and longest_edge then play no part.
        self.resize_to = None
        if resize_to is not None:
            if not isinstance(resize_to, (tuple, list)) or len(resize_to) != 2:
                raise ValueError(f"resize_to must be (height, width), got {resize_to!r}")
            self.resize_to = (
                _positive_int("size.height", resize_to[0]),
                _positive_int("size.width", resize_to[1]),
            )
        # size {max_height, max_width}: the aspect ratio kept, the largest size within both (as transformers).
        self.fit_within = None
        if fit_within is not None:
            if resize_to is not None:
                raise ValueError("resize_to and fit_within are two sizes: pass one")
            if not isinstance(fit_within, (tuple, list)) or len(fit_within) != 2:
                raise ValueError(f"fit_within must be (max_height, max_width), got {fit_within!r}")
            self.fit_within = (
                _positive_int("size.max_height", fit_within[0]),
                _positive_int("size.max_width", fit_within[1]),
            )
        if isinstance(crop_size, dict) and set(crop_size) == {"height", "width"}:
            crop_size = (crop_size["height"], crop_size["width"])
        if isinstance(crop_size, (int, float)) or (
            isinstance(crop_size, (tuple, list)) and len(crop_size) == 1
        ):
            crop_size = (
                (crop_size, crop_size) if isinstance(crop_size, (int, float)) else tuple(crop_size) * 2
            )
        if not isinstance(crop_size, (tuple, list)) or len(crop_size) != 2:
            raise ValueError(
                f"crop_size must be (height, width), one int, or {{'height', 'width'}}, got {crop_size!r}"
            )
        self.crop_size = (
            _positive_int("crop_size.height", crop_size[0]),
            _positive_int("crop_size.width", crop_size[1]),
        )
        self.image_mean = per_channel("image_mean", image_mean)
        self.image_std = per_channel("image_std", image_std)
        if any(not s > 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive and finite, got {list(self.image_std)}")
        self.rescale_factor = _number("rescale_factor", rescale_factor)
        if not self.rescale_factor > 0:
            raise ValueError(f"rescale_factor must be positive and finite, got {rescale_factor!r}")
        for name, flag in (("do_resize", do_resize), ("do_center_crop", do_center_crop),
                           ("do_rescale", do_rescale), ("do_normalize", do_normalize)):  # fmt: skip
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be true or false, got {flag!r}")
        self.do_resize, self.do_center_crop = do_resize, do_center_crop
        self.do_rescale, self.do_normalize = do_rescale, do_normalize
        check_normalization(*self.normalization())  # the values applied (do_rescale / do_normalize)

    def check_model(self, config, source: str = "the preprocessor") -> None:
        """Refuse settings that cannot feed ``config``'s model, naming ``source`` (e.g. the config file): the
        views must have one fixed size (a center crop) that is a multiple of the patch size. (A crop larger
        than a resized frame is padded, as in ``transformers``.)"""
        ph, pw = config.patch_hw
        ch, cw = self.crop_size
        if not self.do_center_crop:
            raise ValueError(
                f"{source}: do_center_crop is false: frames would keep their resized size, which depends on "
                "each video's aspect ratio; expected do_center_crop true with a crop_size"
            )
        if ch % ph or cw % pw:
            raise ValueError(
                f"{source}: crop_size {ch}x{cw} is not a multiple of the model's patch size {ph}x{pw}"
            )
        if ch * cw > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"{source}: crop_size {ch}x{cw}: crops over {MAX_RESIZED_PIXELS:,} pixels (2048x2048) are not "
                "supported"
            )
        if (ch // ph) * (cw // pw) > MAX_PATCHES_PER_FRAME:
            raise ValueError(
                f"{source}: crop_size {ch}x{cw} is {ch // ph}x{cw // pw} patches of {ph}x{pw} per frame; at most "
                f"{MAX_PATCHES_PER_FRAME:,} are supported (attention costs their square)"
            )
        joint = config.num_frames * (ch // ph) * (cw // pw)
        if config.attention_type == "joint_space_time" and joint > MAX_JOINT_TOKENS:
            raise ValueError(
                f"{source}: crop_size {ch}x{cw} and num_frames {config.num_frames} are {joint:,} patches per clip in "
                f"joint space-time attention; at most {MAX_JOINT_TOKENS:,} are supported (attention costs their "
                "square)"
            )
        if (ch, cw) != tuple(config.image_hw):
            h, w = config.image_hw
            warnings.warn(
                f"{source}: crops of {ch}x{cw} for a model of image_size {h}x{w}: its position embeddings are "
                f"interpolated to {ch // ph}x{cw // pw} patches (a checkpoint's preprocessor config has its "
                "image_size; without one, the default crops are 224x224)",
                stacklevel=2,
            )
        if self.do_resize and (self.resize_to or self.fit_within) is not None:
            rh, rw = self.resize_to or self.fit_within
            if rh * rw > MAX_RESIZED_PIXELS:
                raise ValueError(
                    f"{source}: size {rh}x{rw}: resizes over {MAX_RESIZED_PIXELS:,} pixels are not supported"
                )
            return
        # Room for 1.8:1 frames: 16:9, and 854x480 or 720x404 (a little wider once rounded).
        if self.do_resize and self.shortest_edge * int(self.shortest_edge * 1.8) > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"{source}: size.shortest_edge {self.shortest_edge} would resize a 16:9 video over "
                f"{MAX_RESIZED_PIXELS:,} pixels; at most 1526 is supported"
            )

    @classmethod
    def from_dict(cls, config: dict, processor_type: str = "TimesformerVideoProcessor") -> VideoProcessor:
        """From the fields of a ``preprocessor_config.json`` (missing ones take the defaults of the class its
        ``image_processor_type`` or ``video_processor_type`` names, else of ``processor_type``)."""
        resample = config.get("resample", BILINEAR)
        if resample is not None and (isinstance(resample, bool) or not isinstance(resample, int)):
            raise ValueError(
                f"preprocessor config: resample must be a PIL filter number (2: bilinear), got {resample!r}"
            )
        if resample not in (None, BILINEAR):
            # Only bilinear is implemented (the native op and the torch fallback). Other filters shift the
            # normalized pixels by up to about 0.15 (bicubic) or 1.2 (nearest) against transformers' PIL path.
            warnings.warn(
                f"preprocessor config: resample={resample!r} ({_PIL_FILTERS.get(resample, 'unknown')}) is not "
                "implemented; frames are resized bilinearly (resample=2), so inputs differ slightly from "
                "transformers' processor with this config",
                stacklevel=2,
            )
        size = config.get("size", {"shortest_edge": 224})
        if isinstance(size, int):
            size = {"shortest_edge": size}
        elif isinstance(size, (list, tuple)) and len(size) == 2:
            size = {"height": size[0], "width": size[1]}  # (height, width), as transformers' get_size_dict
        exact = isinstance(size, dict) and set(size) == {"height", "width"}
        fit = isinstance(size, dict) and set(size) == {"max_height", "max_width"}
        if (
            not exact
            and not fit
            and (
                not isinstance(size, dict)
                or "shortest_edge" not in size
                or not set(size) <= {"shortest_edge", "longest_edge"}
            )
        ):
            raise ValueError(
                "preprocessor config: expected size with 'shortest_edge' (and optionally 'longest_edge'), "
                f"'height' and 'width', or 'max_height' and 'max_width', as transformers' processors, got {size}"
            )
        # Defaults of the class the config names: VideoMAE's processors normalize with 0.5 / 0.5 (transformers'
        # AutoImageProcessor picks VideoMAEImageProcessor for TimeSformer), its TimesformerVideoProcessor with
        # ImageNet's mean and std.
        kind = config.get("image_processor_type") or config.get("video_processor_type") or processor_type
        mean, std = (
            (STANDARD_MEAN, STANDARD_STD)
            if str(kind).startswith("VideoMAE")
            else (IMAGENET_MEAN, IMAGENET_STD)
        )
        return cls(
            shortest_edge=size.get("shortest_edge", 224),
            longest_edge=size.get("longest_edge"),
            resize_to=(size["height"], size["width"]) if exact else None,
            fit_within=(size["max_height"], size["max_width"]) if fit else None,
            crop_size=config.get("crop_size", {"height": 224, "width": 224}),
            image_mean=config.get("image_mean", mean),
            image_std=config.get("image_std", std),
            rescale_factor=config.get("rescale_factor", 1 / 255),
            do_resize=config.get("do_resize", True),
            do_center_crop=config.get("do_center_crop", True),
            do_rescale=config.get("do_rescale", True),
            do_normalize=config.get("do_normalize", True),
        )

    @classmethod
    def from_pretrained(cls, path) -> VideoProcessor:
        """Read a model directory's ``video_preprocessor_config.json`` (what ``transformers`` 5 saves for a
        video processor) or ``preprocessor_config.json``, or the file itself. Fields the file leaves out take
        the defaults of the class it names, else of the one ``transformers`` loads from that file name
        (``AutoVideoProcessor``: TimesformerVideoProcessor; ``AutoImageProcessor``: VideoMAEImageProcessor)."""
        import os

        from .loading import PREPROCESSOR_NAME, PREPROCESSOR_NAMES, VIDEO_PREPROCESSOR_NAME, preprocessor_file

        file = path if os.path.isfile(path) else preprocessor_file(os.fspath(path))
        if file is None:
            raise FileNotFoundError(f"no {' or '.join(PREPROCESSOR_NAMES)} in {path}")
        processor = cls._read(file)
        image_file = os.path.join(os.path.dirname(file), PREPROCESSOR_NAME)
        if os.path.basename(file) == VIDEO_PREPROCESSOR_NAME and os.path.isfile(image_file):
            # save_pretrained writes both; an edit to the one model cards name would go unused, unsaid.
            try:
                image = cls._read(image_file).to_dict()
                ours = processor.to_dict()
                differ = ", ".join(sorted(k for k in ours if ours[k] != image[k]))
                problem = f"disagree on {differ}" if differ else None
            except (OSError, ValueError) as exc:
                problem = f"disagree ({PREPROCESSOR_NAME} is invalid: {exc})"
            if problem is not None:
                warnings.warn(
                    f"{file} and {PREPROCESSOR_NAME} beside it {problem}; using {VIDEO_PREPROCESSOR_NAME}, as "
                    "transformers 5 does (edit both, or remove one)",
                    stacklevel=2,
                )
        return processor

    @classmethod
    def _read(cls, file: str) -> VideoProcessor:
        """The processor of one config file, with the defaults its name implies (``from_pretrained``)."""
        import os

        from .configuration import read_json_object
        from .loading import VIDEO_PREPROCESSOR_NAME

        config = read_json_object(file)
        video = os.path.basename(file) == VIDEO_PREPROCESSOR_NAME
        try:
            return cls.from_dict(config, "TimesformerVideoProcessor" if video else "VideoMAEImageProcessor")
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{file}: {exc}") from None

    def _size_dict(self) -> dict:
        if self.resize_to is not None:
            return {"height": self.resize_to[0], "width": self.resize_to[1]}
        if self.fit_within is not None:
            return {"max_height": self.fit_within[0], "max_width": self.fit_within[1]}
        return {"shortest_edge": self.shortest_edge} | (
            {} if self.longest_edge is None else {"longest_edge": self.longest_edge}
        )

    def to_dict(self) -> dict:
        return {
            "image_processor_type": "VideoMAEImageProcessor",
            "do_resize": self.do_resize,
            "size": self._size_dict(),
            "resample": BILINEAR,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }

    def save_pretrained(self, directory) -> None:
        """Write ``preprocessor_config.json`` (as ``VideoMAEImageProcessor``, what ``transformers``'
        ``AutoImageProcessor`` reads) and ``video_preprocessor_config.json`` (as ``TimesformerVideoProcessor``,
        what its ``AutoVideoProcessor`` and ``from_pretrained`` read first), the same settings in both."""
        import json
        import os

        from .loading import PREPROCESSOR_NAME, VIDEO_PREPROCESSOR_NAME

        os.makedirs(directory, exist_ok=True)
        image = self.to_dict()
        video = {k: v for k, v in image.items() if k != "image_processor_type"}
        video["video_processor_type"] = "TimesformerVideoProcessor"
        for name, fields in ((PREPROCESSOR_NAME, image), (VIDEO_PREPROCESSOR_NAME, video)):
            with open(os.path.join(directory, name), "w") as f:
                json.dump(fields, f, indent=2)

    def output_size(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``(resize (h, w), crop (h, w))`` for frames of ``height x width``; a resize larger than
        ``MAX_RESIZED_PIXELS`` (an extreme aspect ratio) is refused."""
        if not self.do_resize:
            size = (height, width)
        elif self.resize_to is not None:
            size = self.resize_to
        elif self.fit_within is not None:
            size = fit_within_size(height, width, *self.fit_within)
        else:
            size = resize_output_size(height, width, self.shortest_edge, self.longest_edge)
        # (Frames kept at their size are bounded by read_video's max_frame_pixels instead.)
        if size != (height, width) and size[0] * size[1] > MAX_RESIZED_PIXELS:
            raise ValueError(
                f"frames of {height}x{width} would be resized to {size[0]}x{size[1]} (size "
                f"{self._size_dict()}), over {MAX_RESIZED_PIXELS:,} pixels: an aspect ratio this extreme is "
                "not supported"
            )
        crop = self.crop_size if self.do_center_crop else size
        return size, crop

    def preprocess(
        self,
        frames: torch.Tensor,
        dtype: torch.dtype = torch.float32,
        native: bool | None = None,
        box: tuple[int, int] | None = None,
    ):
        """One clip: uint8 ``(T, H, W, 3)`` -> ``(T, 3, crop_h, crop_w)``; ``box``: ``(top, left)`` of the
        crop in the resized frame (``view_boxes``), default the center crop."""
        if not isinstance(frames, torch.Tensor):
            frames = _as_tensor(frames)
        if frames.dim() != 4:
            raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got shape {tuple(frames.shape)}")
        size, crop = self.output_size(frames.shape[1], frames.shape[2])
        mean, std, rescale = self.normalization()
        return preprocess_frames(frames, size, crop, mean, std, rescale, dtype, box=box, native=native)

    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...], float]:
        """``(mean, std, rescale_factor)`` as applied (``do_normalize`` / ``do_rescale`` off: 0, 1, 1), e.g. for
        ``model.set_input_normalization``."""
        rescale = self.rescale_factor if self.do_rescale else 1.0
        if not self.do_normalize:
            return (0.0,) * 3, (1.0,) * 3, rescale
        return self.image_mean, self.image_std, rescale

    def view_boxes(self, height: int, width: int, crops: int = 1) -> list[tuple[int, int]]:
        """``(top, left)`` of each of ``crops`` spatial views (``crop_boxes``) of ``height x width`` frames."""
        size, crop = self.output_size(height, width)
        return crop_boxes(*size, *crop, crops)

    def resize_crops(self, frames: torch.Tensor, boxes: list[tuple[int, int] | None]) -> list[torch.Tensor]:
        """One view per box as uint8 frames ``(T, crop_h, crop_w, 3)``: resized once (antialiased bilinear, as
        ``preprocess``), rounded back to 0..255, then cropped. For a model that normalizes uint8 frames itself."""
        if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8 or frames.dim() != 4:
            raise ValueError(
                f"expected uint8 frames of shape (T, H, W, 3), got {getattr(frames, 'shape', frames)}"
            )
        size, (ch, cw) = self.output_size(frames.shape[1], frames.shape[2])
        x = frames.permute(0, 3, 1, 2)
        if size != tuple(x.shape[-2:]):
            x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)
        views = []
        for box in boxes:
            part, (top, left), (rows, cols) = _inside(size, (ch, cw), _box(size, (ch, cw), box))
            inside = x[:, :, top : top + part[0], left : left + part[1]].permute(0, 2, 3, 1)
            if part == (ch, cw):
                views.append(inside.contiguous())
                continue
            view = x.new_zeros(x.shape[0], ch, cw, 3)  # black where the crop is larger than the frame
            view[:, rows, cols] = inside
            views.append(view)
        return views

    def __call__(
        self,
        videos,
        return_tensors: str | None = None,
        *,
        dtype: torch.dtype = torch.float32,
        native: bool | None = None,
        **settings,
    ):
        """``pixel_values`` ``(batch, T, 3, crop_h, crop_w)`` for one video or a list of videos.

        Args:
            videos: uint8 RGB frames, as ``transformers``' video processors take them: one video as a
                ``(T, H, W, 3)`` or ``(T, 3, H, W)`` tensor or array, or a list of frames (PIL images, or
                ``(H, W, 3)`` / ``(3, H, W)`` arrays or tensors); several videos as a list of those or a 5-D
                tensor or array. All videos of a call must give the same shape.
            return_tensors: ``None`` returns the tensor itself; ``"pt"`` (or ``"np"``) returns a mapping
                ``{"pixel_values": ...}`` of torch tensors (numpy arrays), so that
                ``model(**processor(video, return_tensors="pt"))`` works as with ``transformers``.
            dtype: dtype of the pixel values.
            native: force (``True``) or avoid (``False``) the native op; default: when built.
            **settings: this call's values of the processor's settings (``size``, ``crop_size``,
                ``image_mean``, ``image_std``, ``rescale_factor``, ``do_resize``, ``do_center_crop``,
                ``do_rescale``, ``do_normalize``), as ``transformers`` takes them.
        """
        if return_tensors not in (None, "pt", "np"):
            raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {return_tensors!r}")
        if return_tensors == "np" and dtype == torch.bfloat16:
            raise ValueError("return_tensors='np' cannot hold bfloat16 (NumPy has no such dtype): pass 'pt'")
        processor = self
        # A setting of None is the processor's own, as in transformers.
        settings = {k: v for k, v in settings.items() if v is not None}
        if settings:
            unknown = sorted(set(settings) - _SETTINGS)
            if unknown:
                raise TypeError(
                    f"unknown processor setting(s) {unknown}; expected some of {sorted(_SETTINGS)}"
                )
            processor = type(self).from_dict({**self.to_dict(), **settings})
        out = [processor.preprocess(video, dtype, native) for video in _videos(videos)]
        shapes = {tuple(o.shape) for o in out}
        if len(shapes) > 1:
            raise ValueError(f"the videos of one call must give the same shape, got {sorted(shapes)}")
        pixel_values = torch.stack(out)
        if return_tensors is None:
            return pixel_values
        return BatchFeature(pixel_values=pixel_values if return_tensors == "pt" else pixel_values.numpy())

    def __repr__(self) -> str:
        return f"VideoProcessor({self.to_dict()})"


# The settings a call may override, by their preprocessor_config.json names.
_SETTINGS = frozenset(
    {"size", "crop_size", "image_mean", "image_std", "rescale_factor", "resample"}
    | {"do_resize", "do_center_crop", "do_rescale", "do_normalize"}
)


class BatchFeature(dict):
    """The processor's ``return_tensors`` output: a dict (``model(**features)``) whose keys are also
    attributes, with ``to(device or dtype)`` as ``transformers.BatchFeature`` (a dtype applies to floating
    tensors only)."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, *args, **kwargs) -> BatchFeature:
        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            if value.is_floating_point():
                return value.to(*args, **kwargs)
            # Only the device of an integer tensor changes, as transformers does.
            device = kwargs.get("device") or next((a for a in args if not isinstance(a, torch.dtype)), None)
            return value if device is None else value.to(device=device)

        return BatchFeature({k: move(v) for k, v in self.items()})


def _as_tensor(array) -> torch.Tensor:
    """``torch.as_tensor``, also for a NumPy view with negative strides (``frames[..., ::-1]``, BGR to RGB),
    which torch cannot share: copied."""
    strides = getattr(array, "strides", None)
    if not isinstance(array, torch.Tensor) and strides is not None and any(s < 0 for s in strides):
        import numpy as np

        array = np.ascontiguousarray(array)
    return torch.as_tensor(array)


def _frame(frame) -> torch.Tensor:
    """One frame as uint8 ``(H, W, 3)``: a PIL image (converted to RGB, transparency composited onto white as
    ``transformers``' ``convert_to_rgb`` does), or an ``(H, W, 3)`` / ``(3, H, W)`` array or tensor."""
    if hasattr(frame, "convert") and hasattr(frame, "getbands"):  # a PIL image, without importing PIL
        import numpy as np
        from PIL import Image

        if "A" in frame.getbands() or frame.info.get("transparency") is not None:
            rgba = frame.convert("RGBA")  # convert("RGB") would drop the alpha channel: colors under it show
            frame = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        frame = np.array(frame.convert("RGB"))
    frame = _as_tensor(frame)
    if frame.dim() == 3 and frame.shape[-1] != 3 and frame.shape[0] == 3:
        frame = frame.permute(1, 2, 0)
    if frame.dim() != 3 or frame.shape[-1] != 3:
        raise ValueError(
            f"expected a frame as a PIL image or an (H, W, 3) or (3, H, W) array, got shape {tuple(frame.shape)}"
        )
    return frame


def _video(video) -> torch.Tensor:
    """One video as uint8 ``(T, H, W, 3)``."""
    if isinstance(video, (list, tuple)):
        if not video:
            raise ValueError("expected a video with at least one frame, got an empty list")
        frames = [_frame(f) for f in video]
        sizes = sorted({tuple(f.shape[:2]) for f in frames})
        if len(sizes) > 1:
            raise ValueError(f"the frames of one video must share a size, got sizes (H, W) {sizes[:4]}")
        video = torch.stack(frames)
    else:
        video = _as_tensor(video)
        if video.dim() == 4 and video.shape[-1] != 3 and video.shape[1] == 3:
            video = video.permute(0, 2, 3, 1)
        if video.dim() != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"expected a video of shape (T, H, W, 3) or (T, 3, H, W), got shape {tuple(video.shape)}"
            )
    if video.dtype != torch.uint8:
        raise ValueError(
            f"expected uint8 frames (0..255, as decoded), got {str(video.dtype).removeprefix('torch.')}; "
            "convert with (frames * 255).round().to(torch.uint8) if they are floats in [0, 1]"
        )
    return video


def _is_frame(item) -> bool:
    if hasattr(item, "convert") and hasattr(item, "size"):
        return True
    return getattr(item, "ndim", None) == 3


def _videos(videos) -> list[torch.Tensor]:
    """``videos`` (see ``VideoProcessor.__call__``) as a list of uint8 ``(T, H, W, 3)`` tensors."""
    if isinstance(videos, (list, tuple)):
        if not videos:
            raise ValueError("expected a video or a list of videos, got an empty list")
        return [_video(videos)] if _is_frame(videos[0]) else [_video(v) for v in videos]
    ndim = getattr(videos, "ndim", None)
    if ndim == 5:
        return [_video(v) for v in videos]
    if ndim == 4:
        return [_video(videos)]
    raise ValueError(
        "expected a video (a (T, H, W, 3) tensor or array, or a list of frames) or a list of videos, got "
        + (f"shape {tuple(videos.shape)}" if ndim is not None else type(videos).__name__)
    )
