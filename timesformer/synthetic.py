"""Synthetic motion clips whose label needs the ORDER of the frames (the bundled model's training data).

Each clip shows one random dark asymmetric shape (an "L", an arrow, a flag, a "T", an "S", a scalene
triangle; random colour and size) travelling horizontally across most of a random mid-tone textured
background. The four classes (``LABELS``) are four *orderings of the same frames*:

====  =========================  ============================================================
 id    label                      positions visited, in frame order (``q_0 < ... < q_7``)
====  =========================  ============================================================
 0     moving right               ``q_0 q_1 q_2 q_3 q_4 q_5 q_6 q_7``
 1     moving left                ``q_7 q_6 q_5 q_4 q_3 q_2 q_1 q_0``
 2     right then back left       ``q_0 q_2 q_4 q_6 q_7 q_5 q_3 q_1`` (or its reverse)
 3     left then back right       the mirror image of class 2: ``q_7 q_5 q_3 q_1 q_0 q_2 q_4 q_6``
====  =========================  ============================================================

Classes 2 and 3 are a bounce at constant speed (twice the speed of classes 0 and 1): the way out visits
the even positions, the way back the odd ones. The positions ``q_i`` are drawn first, for every class
alike; the label only picks the order in which the frames show them. Everything else about a frame
(the shape's rotation and height, which follow from its horizontal position ``q``, the background, the
per-frame noise, drawn i.i.d. per frame) does not depend on the label either. So the
*set* of frames of a clip has the same distribution for all four classes: a frame-shuffled clip carries
no information about its label, and any classifier is at chance (1/4) on shuffled clips, while on ordered
clips the label is plain to see. (The shape rotates as it moves, "rolling" by an angle proportional to
the distance travelled, with a random sign and rate: a nuisance, not a cue.)

Why not "direction of travel x sense of rotation" as labels: with both moving and turning at constant
rates, each frame pairs a position with an angle, and the set of pairs already shows whether the angle
grows with the position or shrinks; that tells {right+clockwise, left+counter-clockwise} from
{right+counter-clockwise, left+clockwise}, so shuffled clips could still be classified at 50 %, not 25 %.
Any two independent monotone motions have this flaw; orderings of one set of frames do not.

The frames a model sees at inference come from ``timesformer.video.read_video``: ``num_frames`` frames
spaced about ``sample_rate`` apart (``np.linspace`` truncated to ints: steps of 4 and 5 for rate 4). The
positions ``q_i`` therefore follow those sample times for a random rate in 1..``max_sample_rate``, so the
small unevenness of the steps is part of the training data. The shape always stays inside the central
square of the frame, the part a shortest-edge resize + square center crop keeps, whatever the aspect.

Frame-shuffled H.264 clips: the first frame is an I-frame, encoded a little differently from the rest;
at the quality ``write_video`` uses (CRF 18) that difference is tiny and carries no label by itself.

Rendering is vectorized over frames and pixels with torch: about 1 to 3 ms per clip at 120x160.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

LABELS: list[str] = [
    "moving right",
    "moving left",
    "right then back left",
    "left then back right",
]

# Shapes in a local frame where the shape fits in the unit disk: unions of convex polygons, vertices
# counter-clockwise (y down, as in images: "counter-clockwise" here is clockwise on screen; only
# consistency matters). None is symmetric under a rotation or a reflection.
_SHAPES: dict[str, list[list[tuple[float, float]]]] = {
    "L": [
        [(-0.75, -0.9), (-0.75, 0.9), (-0.3, 0.9), (-0.3, -0.9)],
        [(-0.3, 0.45), (-0.3, 0.9), (0.75, 0.9), (0.75, 0.45)],
    ],
    "arrow": [
        [(-0.95, -0.22), (-0.95, 0.22), (0.15, 0.22), (0.15, -0.22)],
        [(0.15, -0.7), (0.15, 0.7), (0.95, 0.0)],
    ],
    "flag": [
        [(-0.7, -0.95), (-0.7, 0.95), (-0.45, 0.95), (-0.45, -0.95)],
        [(-0.45, -0.95), (-0.45, 0.05), (0.85, -0.45)],
    ],
    "T": [
        [(-0.9, -0.9), (-0.9, -0.45), (0.9, -0.45), (0.9, -0.9)],
        [(-0.22, -0.45), (-0.22, 0.9), (0.22, 0.9), (0.22, -0.45)],
        [(0.22, 0.45), (0.22, 0.9), (0.6, 0.9), (0.6, 0.45)],  # a foot: without it the T is symmetric
    ],
    "S": [
        [(-0.1, -0.8), (-0.1, -0.05), (0.9, -0.05), (0.9, -0.8)],
        [(-0.9, 0.05), (-0.9, 0.8), (0.1, 0.8), (0.1, 0.05)],
        [(-0.1, -0.05), (-0.1, 0.05), (0.1, 0.05), (0.1, -0.05)],
    ],
    "triangle": [
        [(-0.9, -0.6), (-0.5, 0.8), (0.95, 0.1)],
    ],
}
SHAPES: tuple[str, ...] = tuple(_SHAPES)
# The moving shape: size and distance travelled as fractions of the central square's side, vertical arc,
# roll (radians per radius travelled), probability of a light shape instead of a dark one. The bundled
# model was trained with these: large, dark shapes crossing most of the frame. (With light and dark
# shapes alike, a small model did not leave chance in the training budget: the sign of the contrast
# must then be undone before the motion can be read.)
_MOTION = dict(radius=(0.12, 0.18), span=(0.55, 0.8), hop=0.06, roll=0.3, light=0.0)


def _half_planes(poly: Sequence[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Outward unit normals ``(E, 2)`` and offsets ``(E,)`` of a convex polygon: inside iff n.p - d <= 0."""
    v = torch.tensor(poly, dtype=torch.float32)
    e = v.roll(-1, 0) - v
    n = torch.stack((e[:, 1], -e[:, 0]), 1)
    n = n / n.norm(dim=1, keepdim=True)
    d = (n * v).sum(1)
    centroid = v.mean(0)
    # Orientation-proof: flip the normals that point inwards.
    flip = (n @ centroid - d) > 0
    n[flip], d[flip] = -n[flip], -d[flip]
    return n, d


_PLANES = {name: [_half_planes(p) for p in polys] for name, polys in _SHAPES.items()}


class _Rng:
    """Scalar draws from one seeded ``torch.Generator`` (the whole clip is a function of the seed)."""

    def __init__(self, seed: int | None):
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item())
        self.gen = torch.Generator().manual_seed(int(seed))

    def uniform(self, a: float = 0.0, b: float = 1.0) -> float:
        return a + (b - a) * float(torch.rand((), generator=self.gen))

    def integer(self, a: int, b: int) -> int:
        """Uniform in ``[a, b]`` (both included)."""
        return int(torch.randint(a, b + 1, (), generator=self.gen))

    def coin(self, p: float = 0.5) -> bool:
        return self.uniform() < p

    def choice(self, items: Sequence):
        return items[self.integer(0, len(items) - 1)]


def frame_order(label: int, num_frames: int, flip: bool = False) -> list[int]:
    """Which of the sorted positions ``q_0 < ... < q_{T-1}`` each frame shows, for class ``label``.

    ``flip`` picks the other of the two bounces of classes 2 and 3 (the time-reversed one, which is also
    "out then back"); classes 0 and 1 ignore it. Every result is a permutation of ``range(num_frames)``.
    """
    if label not in range(len(LABELS)):
        raise ValueError(f"label must be in 0..{len(LABELS) - 1}, got {label!r}")
    idx = list(range(num_frames))
    if label == 0:
        return idx
    if label == 1:
        return idx[::-1]
    out_and_back = idx[0::2] + idx[1::2][::-1]
    if flip:
        out_and_back = out_and_back[::-1]
    if label == 2:
        return out_and_back
    return [num_frames - 1 - i for i in out_and_back]


def _sample_times(num_frames: int, rate: int) -> torch.Tensor:
    """Normalized times in [0, 1] of ``read_video``'s frames for ``sample_rate=rate`` (truncated linspace)."""
    if num_frames == 1:
        return torch.zeros(1)
    window = num_frames * rate
    t = torch.linspace(0, window, num_frames, dtype=torch.float64).clamp(max=window - 1).floor()
    return ((t - t[0]) / (t[-1] - t[0])).float()


def _coverage(
    shape: str, cx: torch.Tensor, cy: torch.Tensor, angle: torch.Tensor, radius: float, xs, ys
) -> torch.Tensor:
    """Anti-aliased coverage ``(N, h, w)`` in [0, 1] of ``shape`` at ``N`` poses over a pixel grid.

    ``cx, cy, angle``: ``(N,)`` centre (pixels) and rotation (radians); ``xs (w,)``, ``ys (h,)``: pixel
    centres. The distance to a convex polygon is approximated by its largest half-plane distance (exact
    along the edges, where anti-aliasing needs it).
    """
    dx = xs.view(1, 1, -1) - cx.view(-1, 1, 1)
    dy = ys.view(1, -1, 1) - cy.view(-1, 1, 1)
    c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    lx, ly = (c * dx + s * dy) / radius, (-s * dx + c * dy) / radius
    sdf = None
    for normals, offsets in _PLANES[shape]:
        poly = None
        for (nx, ny), off in zip(normals.tolist(), offsets.tolist(), strict=True):
            plane = lx * nx + ly * ny - off
            poly = plane if poly is None else torch.maximum(poly, plane)
        sdf = poly if sdf is None else torch.minimum(sdf, poly)
    return (0.5 - sdf * radius).clamp(0.0, 1.0)


def _luminance(rgb: torch.Tensor) -> float:
    return float(rgb @ torch.tensor([0.299, 0.587, 0.114]))


def _colour(rng: _Rng, low: float, high: float, lum_low: float, lum_high: float) -> torch.Tensor:
    """A random RGB colour, channels in ``[low, high]``, luminance in ``[lum_low, lum_high]``."""
    for _ in range(100):
        colour = torch.tensor([rng.uniform(low, high) for _ in range(3)])
        if lum_low <= _luminance(colour) <= lum_high:
            return colour
    return torch.full((3,), (lum_low + lum_high) / 2)


def make_clip(
    label: int,
    *,
    num_frames: int = 8,
    height: int = 120,
    width: int = 160,
    seed: int | None = None,
    max_sample_rate: int = 4,
    return_info: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Render one clip of class ``label`` (see the module docstring).

    Args:
        label: class index into ``LABELS``.
        num_frames, height, width: clip size (any size of at least 16x16).
        seed: the clip is a deterministic function of ``(label, num_frames, height, width, seed,
            max_sample_rate)``; None draws a seed from torch's global generator.
        max_sample_rate: the positions follow the frame times ``read_video`` samples at a random
            ``sample_rate`` in ``1..max_sample_rate`` (1: evenly spaced, as in a continuous video).
        return_info: also return where the moving shape is (training targets).

    Returns:
        uint8 ``(num_frames, height, width, 3)`` RGB frames; with ``return_info``, ``(frames, info)`` where
        ``info`` has ``"cx"``, ``"cy"`` (``(T,)`` float, the shape's centre in pixels) and ``"alpha"``
        (``(T, H, W)`` float, the moving shape's coverage of each pixel).
    """
    if num_frames < 1 or height < 16 or width < 16:
        raise ValueError(
            f"need num_frames >= 1 and a frame of at least 16x16, got {num_frames}x{height}x{width}"
        )
    if max_sample_rate < 1:
        raise ValueError(f"max_sample_rate must be >= 1, got {max_sample_rate}")
    rng = _Rng(seed)
    order = frame_order(label, num_frames, flip=rng.coin())
    side = min(height, width)
    top, left = (height - side) / 2, (width - side) / 2  # the central square that a center crop keeps

    # Background: a mid-tone base colour, a smooth random texture, a gradient. The shape is darker than
    # any of it (below), so a single frame shows where it is; its motion needs the order.
    base = _colour(rng, 40, 220, 85, 170)
    grid = rng.integer(2, 8)
    texture = torch.randn(1, 3, grid, grid, generator=rng.gen) * rng.uniform(3, 16)
    texture = F.interpolate(texture, size=(height, width), mode="bicubic", align_corners=False)[0]
    ramp = (
        torch.linspace(-1, 1, width).view(1, 1, -1)
        if rng.coin()
        else torch.linspace(-1, 1, height).view(1, -1, 1)
    )
    gradient = torch.randn(3, 1, 1, generator=rng.gen) * rng.uniform(0, 8) * ramp
    background = (base.view(3, 1, 1) + texture + gradient).permute(1, 2, 0)  # (H, W, 3)
    xs = torch.arange(width, dtype=torch.float32) + 0.5
    ys = torch.arange(height, dtype=torch.float32) + 0.5

    # The moving shape: every pose parameter below is drawn independently of the label.
    shape = rng.choice(SHAPES)
    radius = side * rng.uniform(*_MOTION["radius"])
    margin = side * 0.03 + 1.0
    span = min(side * rng.uniform(*_MOTION["span"]), side - 2 * (margin + radius))  # stays in the square
    x_lo = left + margin + radius + rng.uniform(0, max(side - span - 2 * (margin + radius), 0.0))
    # A vertical arc over the path: the height is a function of x.
    hop = side * rng.uniform(-_MOTION["hop"], _MOTION["hop"])
    y_room = max(side - 2 * (margin + radius) - abs(hop), 0.0)
    y0 = top + margin + radius + max(hop, 0.0) + rng.uniform(0, y_room)
    roll = rng.uniform(-_MOTION["roll"], _MOTION["roll"])  # radians turned per radius travelled
    angle0 = rng.uniform(0, 2 * math.pi)
    u = _sample_times(num_frames, rng.integer(1, max_sample_rate))  # sorted positions along the path
    u = u[torch.tensor(order)]
    cx = x_lo + span * u
    cy = y0 - hop * torch.sin(math.pi * u)
    angle = angle0 + roll * span * u / radius

    dark = rng.coin(1 - _MOTION["light"])
    colour = _colour(rng, 0, 70, 0, 40) if dark else _colour(rng, 185, 255, 215, 255)
    # Render only the band of rows and columns the shape can reach.
    r0, r1 = max(int(y0 - abs(hop) - radius) - 2, 0), min(int(y0 + abs(hop) + radius) + 3, height)
    c0, c1 = max(int(x_lo - radius) - 2, 0), min(int(x_lo + span + radius) + 3, width)
    alpha = _coverage(shape, cx, cy, angle, radius, xs[c0:c1], ys[r0:r1])[..., None]  # (T, h, w, 1)
    frames = background.expand(num_frames, height, width, 3).clone()
    frames[:, r0:r1, c0:c1] = frames[:, r0:r1, c0:c1] * (1 - alpha) + colour * alpha

    sigma = rng.uniform(0, 4)  # sensor noise, independent per frame (luminance only: a third of the cost)
    if sigma > 0.5:
        frames += (torch.rand(num_frames, height, width, 1, generator=rng.gen) - 0.5) * (sigma * 12**0.5)
    frames = frames.round_().clamp_(0, 255).to(torch.uint8)
    if not return_info:
        return frames
    full = torch.zeros(num_frames, height, width)
    full[:, r0:r1, c0:c1] = alpha[..., 0]
    return frames, {"cx": cx, "cy": cy, "alpha": full}


def make_dataset(n: int, *, seed: int, **clip_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` clips, classes balanced (``n // K`` or one more each) and shuffled; a function of ``seed``.

    Returns:
        ``(clips, labels)``: uint8 ``(n, T, H, W, 3)`` and int64 ``(n,)``.
    """
    labels, seeds = _labels_and_seeds(n, seed)
    if n == 0:
        t, h, w = (
            clip_kwargs.get("num_frames", 8),
            clip_kwargs.get("height", 120),
            clip_kwargs.get("width", 160),
        )
        return torch.empty(0, t, h, w, 3, dtype=torch.uint8), labels
    clips = torch.stack(
        [make_clip(int(y), seed=s, **clip_kwargs) for y, s in zip(labels, seeds, strict=True)]
    )
    return clips, labels


def _labels_and_seeds(n: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    gen = torch.Generator().manual_seed(int(seed))
    labels = (torch.arange(n) % len(LABELS))[torch.randperm(n, generator=gen)].to(torch.int64)
    seeds = torch.randint(0, 2**62, (n,), generator=gen).tolist()
    return labels, seeds


def random_frame_size(gen: torch.Generator, min_side: int = 96, max_short: int = 240, max_long: int = 320):
    """A random even ``(height, width)``: short side in ``[min_side, max_short]``, long side up to twice
    that (at most ``max_long``), portrait for about a third of the draws."""
    short = 2 * int(torch.randint(min_side // 2, max_short // 2 + 1, (), generator=gen))
    long_max = min(max_long, 2 * short)
    long = 2 * int(torch.randint(short // 2, long_max // 2 + 1, (), generator=gen))
    portrait = bool(torch.rand((), generator=gen) < 1 / 3)
    return (long, short) if portrait else (short, long)


def make_processed_dataset(
    n: int,
    *,
    seed: int,
    processor,
    num_frames: int = 8,
    mp4_fraction: float = 0.0,
    max_sample_rate: int = 4,
    min_side: int = 96,
    max_short: int = 240,
    max_long: int = 320,
    mp4_preset: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` clips rendered at random sizes and aspects, optionally through H.264, then preprocessed: what
    a model sees of a real video (``read_video`` frames through its ``VideoProcessor``).

    Args:
        n, seed: as ``make_dataset`` (balanced classes; a deterministic function of the arguments).
        processor: a ``timesformer.preprocess.VideoProcessor`` (the model's).
        mp4_fraction: the share of clips round-tripped through an H.264 MP4 (``roundtrip``), drawn
            at random per clip; ``mp4_preset``: its x264 preset.
        min_side, max_short, max_long: frame sizes, see ``random_frame_size``.

    Returns:
        ``(pixel_values, labels, is_mp4)``: float32 ``(n, T, 3, crop_h, crop_w)``, int64 ``(n,)``,
        bool ``(n,)``.
    """
    labels, seeds = _labels_and_seeds(n, seed)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    out, is_mp4 = [], []
    for y, s in zip(labels.tolist(), seeds, strict=True):
        h, w = random_frame_size(gen, min_side, max_short, max_long)
        frames = make_clip(
            y, num_frames=num_frames, height=h, width=w, seed=s, max_sample_rate=max_sample_rate
        )
        mp4 = bool(torch.rand((), generator=gen) < mp4_fraction)
        if mp4:
            frames = roundtrip(frames, preset=mp4_preset)
        out.append(processor.preprocess(frames))
        is_mp4.append(mp4)
    if not out:
        ch, cw = processor.crop_size
        return torch.empty(0, num_frames, 3, ch, cw), labels, torch.zeros(0, dtype=torch.bool)
    return torch.stack(out), labels, torch.tensor(is_mp4)


def shuffle_frames(clips: torch.Tensor, seed: int) -> torch.Tensor:
    """Each clip of ``(N, T, ...)`` with its frames in an independent random order."""
    gen = torch.Generator().manual_seed(int(seed))
    perms = torch.stack([torch.randperm(clips.shape[1], generator=gen) for _ in range(clips.shape[0])])
    index = perms.view(*perms.shape, *([1] * (clips.dim() - 2))).expand_as(clips)
    return clips.gather(1, index)


# ----------------------------------------------------------------------------------------- video files

# Pixel formats whose chroma planes are subsampled horizontally (and vertically for 4:2:0): the encoders
# need an even width (and height).
_SUBSAMPLED = ("420", "422", "411", "410", "nv12", "nv21", "nv16", "nv20")
_CRF_CODECS = ("libx264", "libx264rgb", "libx265", "libvpx-vp9", "libvpx", "libaom-av1", "libsvtav1")


def _encode(
    file, frames: torch.Tensor, fps: int, codec: str, pix_fmt: str | None, crf: int, fmt=None, preset=None
) -> None:
    import av
    import numpy as np

    frames = torch.as_tensor(frames)
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(
            f"expected uint8 frames of shape (T, H, W, 3), got {tuple(frames.shape)} {frames.dtype}"
        )
    with av.open(file, mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        if pix_fmt is None:
            formats = [f.name for f in (stream.codec_context.codec.video_formats or ())]
            pix_fmt = "yuv420p" if "yuv420p" in formats or not formats else formats[0]
        if any(tag in pix_fmt for tag in _SUBSAMPLED):
            # Repeat the last row / column: a subsampled chroma plane needs even sizes.
            pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
            if pad_h or pad_w:
                frames = F.pad(frames.permute(0, 3, 1, 2).float(), (0, pad_w, 0, pad_h), mode="replicate")
                frames = frames.permute(0, 2, 3, 1).to(torch.uint8)
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        stream.pix_fmt = pix_fmt
        if codec in _CRF_CODECS:
            # Constant quality: small, fast shapes survive (the default bitrate of some encoders smears them).
            stream.options = {"crf": str(crf), **({"b": "0"} if codec.startswith("libvpx") else {})}
            if preset is not None:
                stream.options = {**stream.options, "preset": preset}
        else:
            stream.bit_rate = 8_000_000
        array = np.ascontiguousarray(frames.numpy())
        for frame in array:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def write_video(
    path: str | os.PathLike,
    frames: torch.Tensor,
    *,
    fps: int = 8,
    codec: str = "libx264",
    pix_fmt: str | None = None,
    crf: int = 18,
) -> None:
    """Write uint8 ``(T, H, W, 3)`` RGB frames as a video file; the container follows the extension.

    Args:
        path: e.g. ``clip.mp4`` (H.264 in MP4 by default), ``clip.mkv``, ``clip.webm`` (with ``codec=
            "libvpx-vp9"``), ``clip.avi`` (with ``codec="mpeg4"`` or ``"mjpeg"``).
        fps: frame rate.
        codec: an ffmpeg encoder name known to PyAV.
        pix_fmt: the encoder's pixel format; default ``yuv420p`` where the encoder takes it (what every
            player decodes), else the encoder's first format. With a chroma-subsampled format (4:2:0, 4:2:2)
            an odd height or width is padded by repeating the last row or column, so the file is then one
            pixel taller or wider than the frames.
        crf: constant-quality factor of the encoders that have one (x264, x265, VP8/9, AV1; lower is
            better): 18 is visually lossless for these clips; other encoders get a high bitrate instead.

    ``path`` is a local file, whatever it reads like to FFmpeg (``tcp:x.mp4``, ``pipe:1.mp4``), written whole
    or not at all: the clip is encoded into a new hidden file beside it, which then replaces ``path`` (a full
    disk left a partial file at ``path``, in place of a good clip that was there).
    """
    import secrets

    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}{os.path.splitext(name)[1]}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666))
    try:
        _encode("file:" + tmp, frames, fps, codec, pix_fmt, crf)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def roundtrip(
    frames: torch.Tensor, *, codec: str = "libx264", crf: int = 18, fps: int = 8, preset: str | None = None
) -> torch.Tensor:
    """``frames`` after encoding them as an MP4 in memory and decoding them again (uint8 ``(T, H, W, 3)``,
    padded to even sizes as ``write_video`` pads them). ``preset``: the x264 speed preset (default: the
    encoder's, ``medium``, as ``write_video``; ``"veryfast"`` halves the time, for training data)."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    _encode(buffer, frames, fps, codec, None, crf, fmt="mp4", preset=preset)
    buffer.seek(0)
    with av.open(buffer, mode="r", format="mp4") as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return torch.from_numpy(np.stack(decoded))


def sample_clip(
    path: str | os.PathLike,
    label: int = 0,
    *,
    seed: int = 0,
    num_frames: int = 32,
    fps: int = 8,
    height: int = 240,
    width: int = 320,
    codec: str = "libx264",
) -> torch.Tensor:
    """Render a demo clip of class ``label`` and write it to ``path`` (see ``write_video``).

    The default is 4 seconds: 32 frames at 8 fps with evenly spaced times, the motion spread over the
    whole clip (classes 2 and 3 turn back in the middle), so that ``read_video(path, 8, sample_rate=4)``
    sees the whole movement. Returns the frames written, uint8 ``(num_frames, height, width, 3)``.
    """
    frames = make_clip(label, num_frames=num_frames, height=height, width=width, seed=seed, max_sample_rate=1)
    write_video(path, frames, fps=fps, codec=codec)
    return frames
