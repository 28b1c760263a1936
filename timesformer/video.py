"""Video decoding with PyAV: the frames a clip classifier needs, and only those.

``read_video(path, num_frames=8, sample_rate=4)`` returns uint8 ``(T, H, W, 3)`` RGB frames. Compared
with the model cards' ``read_video_pyav`` (decode every frame from the start up to the last index), it:

- indexes the stream first by demuxing packets (no decoding): the exact frame count and each frame's
  presentation timestamp, whether or not the container reports a count, and for variable frame rates;
- seeks to the keyframe before the first sampled frame instead of decoding from frame 0, again wherever a
  keyframe lies between two sampled frames (frames far apart cost a seek each), and stops after the last
  one;
- lets the decoder use its threads (``thread_type="AUTO"``), and converts only the sampled frames to RGB.

Frame ``i`` is the ``i``-th frame in presentation order, as in ``read_video_pyav``'s enumeration (frames
an MP4 edit list cuts are not frames), whichever way it is read (a seek, or decoding from the start where a
seek cannot be trusted); a frame that does not decode (the first frames of a capture or a cut that starts
between keyframes, which refer to frames before it) is the next one that does, where ``read_video_pyav``
would shift every frame after it. Frames come as a player shows them: turned and mirrored by the
stream's display matrix (a phone's portrait video is stored sideways), which ``read_video_pyav`` ignores; the
video track is the one FFmpeg picks, never a cover image.
"""

from __future__ import annotations

import bisect
import contextlib
import contextvars
import itertools
import math
import operator
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch

STRATEGIES = ("random", "center", "uniform")


class VideoError(RuntimeError):
    """A video that cannot be read: missing, not a video, corrupt, without a video stream or frames."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def sample_frame_indices(
    num_frames: int,
    sample_rate: int,
    total: int,
    strategy: str = "random",
    rng: np.random.Generator | None = None,
) -> list[int]:
    """Frame indices of one clip.

    Args:
        num_frames: frames to return (``T``).
        sample_rate: spacing of the frames inside a window of ``num_frames * sample_rate`` frames.
        total: frames in the video.
        strategy:
            ``"random"``: the model cards' ``sample_frame_indices``: a window ending at a random frame,
            ``num_frames`` indices spread evenly over it (``np.linspace``, clipped, truncated);
            ``"center"``: the same window placed in the middle of the video (deterministic, for evaluation);
            ``"uniform"``: ``num_frames`` indices spread over the whole video, one at the center of each of
            ``num_frames`` equal segments (deterministic; ignores ``sample_rate``).
        rng: random generator for ``"random"`` (default: a fresh unseeded one).

    A video shorter than the window (``total < num_frames * sample_rate``) gives every ``sample_rate``-th
    frame that exists, from frame 0, then repeats the last of them up to ``num_frames`` (for every strategy
    except ``"uniform"``, which repeats frames only when ``total < num_frames``).
    """
    num_frames, sample_rate = _integer(num_frames, "num_frames"), _integer(sample_rate, "sample_rate")
    if num_frames < 1 or sample_rate < 1:
        raise ValueError(f"num_frames and sample_rate must be >= 1, got {num_frames} and {sample_rate}")
    if total < 1:
        raise ValueError(f"the video has no frames (total={total})")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "uniform":
        return [min(int((i + 0.5) * total / num_frames), total - 1) for i in range(num_frames)]
    window = num_frames * sample_rate
    if total < window:
        picked = list(range(0, total, sample_rate))[:num_frames]
        return picked + [picked[-1]] * (num_frames - len(picked))
    if strategy == "random":
        rng = np.random.default_rng() if rng is None else rng
        # np.random.randint(window, total) in the model cards: high is exclusive; a video of exactly
        # `window` frames has one possible window.
        end = int(rng.integers(window, total)) if total > window else window
    else:
        end = (total - window) // 2 + window
    start = end - window
    indices = np.linspace(start, end, num=num_frames)
    return np.clip(indices, start, end - 1).astype(np.int64).tolist()


def _integer(value, name: str) -> int:
    """``value`` as an int: Python's or NumPy's; a float (``nan`` turned a limit off), a bool or a string is
    refused, naming the argument."""
    try:
        if not isinstance(value, bool):
            return operator.index(value)
    except TypeError:
        pass
    raise TypeError(f"{name} must be an integer, got {value!r:.50} ({type(value).__name__})")


# Limits checked before decoding: a frame larger than MAX_FRAME_PIXELS (a 16000x16000 header in a few KB of
# file would take minutes and gigabytes), more than MAX_NUM_FRAMES frames per call. Both are keyword
# arguments of read_video (and options of the command line) for the rare video that needs more.
MAX_FRAME_PIXELS = 4096 * 4096
MAX_NUM_FRAMES = 1024

# Seconds FFmpeg may wait in one open or read call before giving up.
IO_TIMEOUT_S = 60.0
# Seconds one read_video or video_info call may take, checked at each packet and frame: a few KB can hold
# minutes of decoding (one 4096x4096 keyframe, then 30,000 empty frames, all decoded to reach the last ones),
# and one such file must not hold a dataset's evaluation for that long. A keyword argument of both.
MAX_READ_SECONDS = 600.0
# The time.monotonic() past which the current call gives up: per thread, as classify's decoding threads each
# read their own video.
_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)
# Set (``stop_reads_on``) by a caller that may give up its reads: classify's decoding threads, whose results
# nobody reads once its generator is closed or interrupted (Ctrl-C, a closed pipe). A read stops at its next
# packet or frame; without it, shutting the threads down waited for every queued video (up to
# MAX_READ_SECONDS each).
_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("stop", default=None)

# Reads in a row that may ask to be retried (EAGAIN) before the file is taken for corrupt. The MPEG-TS demuxer
# asks while it resyncs over junk bytes (a capture's zero padding, a zeroed gap), each time past up to 64 KB more
# of them, where ffmpeg's own read loop reads on: this is over 600 MB of junk in one run.
MAX_READ_RETRIES = 10_000
# Keyframes further back tried where a seek lands past the frames asked for (MPEG-TS lands one past).
SEEK_BACKOFF = 2
_BEFORE_START = -(1 << 40)  # a seek target below any timestamp of a real file: its start (or an error: AVI)

# The HEIF family's brands (ISO/IEC 23008-12: AVIF, HEIC and their image sequences), which FFmpeg reads with its
# MP4 demuxer: a file of one frame with one of them as its major brand is a photo.
_STILL_BRANDS = frozenset(
    {"avif", "avis", "heic", "heix", "heim", "heis", "hevc", "hevx", "hevm", "hevs", "mif1", "mif2", "msf1"}
)
# Demuxers of animated image formats (GIF, APNG, JPEG XL): a file of one frame in them is a still image.
_ANIMATED_IMAGE_FORMATS = ("gif", "apng", "jpegxl_anim")


def _open(path):
    """Open a local regular file with FFmpeg's ``file:`` protocol, never a URL, device or pipe.

    A path string goes to FFmpeg as ``file:`` + its resolved absolute path, so that names shaped like
    protocols (``http:/host/x.mp4``, ``pipe:0``, ``concat:a|b``) are only ever file names; FIFOs, devices and
    other non-regular files are refused before anything opens them (a FIFO would block forever).
    """
    import stat

    import av

    if not isinstance(path, (str, os.PathLike)):
        raise VideoError(path, f"expected a file path, got {type(path).__name__}")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise VideoError(path, "no such file") from None
    except ValueError:  # "embedded null byte": no file has such a name
        raise VideoError(path, "is not a file name (it holds a NUL character)") from None
    except OSError as exc:
        raise VideoError(path, f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise VideoError(path, "is a directory, not a video file")
    if not stat.S_ISREG(info.st_mode):
        raise VideoError(path, "is not a regular file (a FIFO, device or socket); expected a video file")
    if not os.access(path, os.R_OK):
        raise VideoError(path, "cannot be read (permission denied)")
    try:
        # Tags that are not UTF-8 (Latin-1 titles of older tools, a damaged byte) must not make a playable file
        # unreadable: nothing here depends on their text.
        container = av.open("file:" + os.path.realpath(path), timeout=IO_TIMEOUT_S, metadata_errors="replace")
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a readable video file ({exc.strerror or type(exc).__name__})") from exc
    if not container.streams.video:
        container.close()
        raise VideoError(path, "has no video stream")
    if all(_is_cover(s) for s in container.streams.video):
        container.close()
        raise VideoError(path, "has no video stream (only a cover image)")
    if all(s.codec_context is None for s in container.streams.video if not _is_cover(s)):
        container.close()
        raise VideoError(path, "its video codec is not one this FFmpeg build decodes")
    kind = container.format.name
    if kind == "image2" or kind.endswith("_pipe"):  # FFmpeg's still-image readers (png_pipe, jpeg_pipe, ...)
        container.close()
        if kind == "webp_pipe" and _animated_webp(path):
            raise VideoError(
                path,
                "is an animated WebP, which FFmpeg's WebP reader cannot decode: convert it to a video (MP4)",
            )
        raise VideoError(path, f"is a still image ({kind.removesuffix('_pipe')}), not a video")
    return container


def _animated_webp(path) -> bool:
    """Whether a WebP file sets the animation flag of its extended header (``RIFF....WEBPVP8X``, flags byte
    0x02): FFmpeg reads it as a still image and decodes no frame of it."""
    try:
        with open(path, "rb") as f:
            head = f.read(21)
    except OSError:  # (removed since it was opened: the still-image error stands)
        return False
    return len(head) == 21 and head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and bool(head[20] & 0x02)


def _still_image(container, total: int) -> str | None:
    """The kind of still image a file of ``total`` frames is (``"avif"``, ``"gif"``, ...), ``None`` for a video.

    ``_open`` refuses FFmpeg's still-image readers by name; these formats come through the demuxers of videos
    (MP4's for AVIF and HEIC, animations' for GIF and APNG) and are told apart by one frame: a one-frame video
    in an ordinary container (MP4 with a video brand, Matroska, ...) is still a video."""
    if total != 1:
        return None
    kind = container.format.name
    if kind in _ANIMATED_IMAGE_FORMATS:
        return kind.removesuffix("_anim")
    if "mp4" in kind.split(","):  # "mov,mp4,m4a,3gp,3g2,mj2"
        brand = str(container.metadata.get("major_brand") or "").strip().lower()
        if brand in _STILL_BRANDS:
            return brand
    return None


class _TooSlow(Exception):
    """The read took longer than its limit (``MAX_READ_SECONDS``): ``_within`` says so for its video."""


class ReadStopped(Exception):
    """The read was given up because the event of ``stop_reads_on`` was set."""


@contextlib.contextmanager
def stop_reads_on(event: threading.Event):
    """The reads of this thread inside the block raise ``ReadStopped`` at their next packet or frame once
    ``event`` is set (another thread sets it)."""
    token = _STOP.set(event)
    try:
        yield
    finally:
        _STOP.reset(token)


@contextlib.contextmanager
def _within(max_seconds: float | None, path):
    """The reads of the block (``_retrying``) given up after ``max_seconds`` (``None``: no limit), as a
    ``VideoError`` of ``path``."""
    if max_seconds is not None and (
        isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not max_seconds > 0
    ):
        raise ValueError(f"max_seconds must be a positive number of seconds or None, got {max_seconds!r}")
    token = _DEADLINE.set(None if max_seconds is None else time.monotonic() + max_seconds)
    try:
        yield
    except _TooSlow:
        raise VideoError(
            path,
            f"took over {max_seconds:g} s to read (max_seconds): far more frames to decode than its size "
            "suggests, or a file that stalls the demuxer",
        ) from None
    finally:
        _DEADLINE.reset(token)


def _retrying(read: Callable[[], Iterator]) -> Iterator:
    """The items of ``read()`` (``container.demux`` or ``container.decode``), read on where FFmpeg asks to retry
    (EAGAIN, ``BlockingIOError``): the MPEG-TS demuxer does while it resyncs over junk bytes, and each retry
    starts where the last read stopped (a fresh ``read()`` goes on from there; the decoder keeps its state).
    PyAV's ``IndexError`` ends the reading: its demuxer raises it in its end-of-file flush for a stream that
    appeared after the header (an MPEG-TS PID first seen mid-file, as one corrupt bit in a packet header
    makes), after the track being read, which the header has, was flushed (a fresh read would flush it
    again). At most ``MAX_READ_RETRIES`` retries in a row, then the error is raised."""
    import av

    retries = 0
    deadline, stop = _DEADLINE.get(), _STOP.get()
    while True:
        try:
            for item in read():
                retries = 0
                if deadline is not None and time.monotonic() > deadline:
                    raise _TooSlow
                if stop is not None and stop.is_set():
                    raise ReadStopped
                yield item
            return
        except IndexError:
            return
        except av.error.BlockingIOError:
            retries += 1
            if retries > MAX_READ_RETRIES:
                raise


def _is_cover(stream) -> bool:
    """A cover image (``attached_pic``: one still frame, which MP4, MKV, MOV and MP3 files may carry)."""
    from av.stream import Disposition

    return bool(stream.disposition & Disposition.attached_pic)


def _video_stream(container):
    """The video track to read: FFmpeg's choice (``av_find_best_stream``, as a player makes it), never a cover
    image nor a track of a codec FFmpeg cannot decode (``_open`` refuses a file that has only those)."""

    def readable(stream) -> bool:
        return not _is_cover(stream) and stream.codec_context is not None

    best = container.streams.best("video") if hasattr(container.streams, "best") else None  # PyAV >= 13
    if best is not None and readable(best):
        return best
    return next(s for s in container.streams.video if readable(s))


def _corrupt(path, exc) -> VideoError:
    import av

    if isinstance(exc, av.error.BlockingIOError):  # _retrying gave up: EAGAIN's own words say nothing here
        reason = f"no video packet in {MAX_READ_RETRIES:,} reads in a row: hundreds of MB of junk bytes"
    else:
        reason = exc.strerror or type(exc).__name__
    return VideoError(path, f"corrupt or truncated video ({reason})")


def _frame_index(container, stream, path) -> tuple[list[int] | None, list[int], int, int, bool]:
    """``(pts, keys, end, hidden, ordered)``: the presentation timestamps of every frame, sorted (frame ``i``
    has the ``i``-th smallest), those of the keyframes, where the last packet ends (its pts plus its duration,
    where the file records one), how many packets an edit list hides (decoded, but no frames), and whether
    the decoding timestamps never go back (``False``: joined recordings whose clock restarts, an MPEG-TS
    discontinuity, where sorted timestamps are not the frames' order).
    ``pts`` is ``None`` for a video with packets without timestamps (a raw elementary stream: .h264, .hevc;
    some MPEG-TS), whose frames ``_frame_count`` counts by decoding."""
    import av

    pts, keys = [], []
    end = hidden = 0
    unstamped, ordered, last_dts = False, True, None
    try:
        for packet in _retrying(lambda: container.demux(stream)):
            if packet.size == 0:  # the demuxer's flush packet
                continue
            # Cut by an edit list (an MP4 cut without re-encoding): decoded, but no frame comes of it.
            if packet.is_discard:
                hidden += 1
                continue
            if packet.dts is not None:
                ordered = ordered and (last_dts is None or packet.dts >= last_dts)
                last_dts = packet.dts
            stamp = packet.pts if packet.pts is not None else packet.dts
            if stamp is None:
                unstamped = True  # legal in MPEG-TS: the index would leave this frame out
            else:
                pts.append(stamp)
                if packet.is_keyframe:
                    keys.append(stamp)
                end = max(end, stamp + (packet.duration or 0))
    except av.error.FFmpegError as exc:
        raise _corrupt(path, exc) from exc
    if unstamped:
        return None, [], 0, 0, ordered
    pts.sort()
    keys.sort()
    return pts, keys, end, hidden, ordered


def _frame_count(container, stream, max_frame_pixels: int, path) -> tuple[int, tuple[int, int] | None]:
    """The frames of a freshly opened video without timestamps, by decoding it (a packet need not be one
    frame), each held to ``max_frame_pixels``, and the first one's ``(width, height)`` (a raw stream has no
    header: FFmpeg's probe may have read a later size)."""
    import av

    count, first = 0, None
    try:
        for frame in _retrying(lambda: container.decode(stream)):
            _check_pixels(frame, max_frame_pixels, path)
            count += 1
            first = first or (frame.width, frame.height)
    except av.error.FFmpegError as exc:
        raise _corrupt(path, exc) from exc
    return count, first


def _duration_tag(stream) -> float | None:
    """Seconds of Matroska's (and WebM's) per-track ``DURATION`` tag, ``HH:MM:SS.fraction``, which FFmpeg
    writes where the format has no per-stream duration; ``None`` without one or for one that does not parse."""
    text = stream.metadata.get("DURATION") or stream.metadata.get("duration")
    if not isinstance(text, str):
        return None
    parts = text.strip().split(":")
    try:
        if len(parts) != 3:
            return None
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + float(parts[2])
    except ValueError:
        return None
    return seconds if 0 < seconds < float("inf") else None


def _check_complete(container, stream, pts: list[int], end: int, hidden: int, path) -> None:
    """A file cut short still demuxes (the packets before the cut): compare with what its header announces,
    a frame count where it has one (MP4), else a duration (the stream's, Matroska's track tag, or the
    container's for a file with no other stream) against where the last packet ends (so that a
    variable frame rate, whose nominal rate says nothing about the count, is not taken for a cut). Lenient
    where the reading is ambiguous: the end is measured both from the stream's start and from time 0 (a
    container's duration may be either), and only a file short by both counts is refused."""
    total = len(pts)
    announced = float(stream.frames or 0)
    # An MP4 edit list (a cut without re-encoding) leaves the cut samples in the header's count, and the
    # demuxer drops those it does not need: its duration (the edit's) is compared instead.
    if announced and not hidden:
        if total < 0.9 * announced - 2:
            raise VideoError(
                path,
                f"truncated video (its header announces {announced:.0f} frames, {total} are in the file)",
            )
        return
    if stream.time_base is None:
        return
    seconds = None
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif (tagged := _duration_tag(stream)) is not None:
        seconds = tagged
    elif container.duration is not None and len(container.streams) == 1 and container.format.name != "flv":
        # The container's duration covers all streams: only trusted when video is the only one. Not FLV's: a
        # hint (onMetaData, or the last tag's time), which FFmpeg's own muxer gets wrong for a stream copy
        # from a raw H.264 stream (1334 s announced for 1.3 s of frames).
        seconds = container.duration / 1e6
    if not seconds:
        return
    start = stream.start_time if stream.start_time is not None else pts[0]
    frame = 1 / float(stream.average_rate) if stream.average_rate else 0.0
    # Without recorded packet durations the last frame is taken to last one nominal frame.
    last = float(end * stream.time_base) + (frame if end == pts[-1] else 0.0)
    reached = last - float(start * stream.time_base)
    if max(reached, last) < 0.9 * seconds - 2 * frame:
        raise VideoError(
            path,
            f"truncated video (its header announces {seconds:.2f} s, the frames in the file reach {reached:.2f} s)",
        )


class _Index(NamedTuple):
    pts: list[int] | None  # every frame's timestamp, sorted; None for a video without timestamps
    keyframes: list[int]  # the numbers of the keyframes (empty without timestamps)
    total: int  # frames
    ordered: bool  # decoding timestamps never go back: the sorted timestamps are the frames' order
    size: tuple[int, int]  # (width, height) of the first frames, as the header gives it (0 where unknown)


def _indexed(path, max_frame_pixels: int):
    """``(container, stream, index)`` of a checked video (``_Index``), the container open and placed anywhere:
    its frames within ``max_frame_pixels``, not a still image, not cut short (``_check_complete``), with at
    least one frame."""
    max_frame_pixels = _integer(max_frame_pixels, "max_frame_pixels")
    if max_frame_pixels < 1:
        raise ValueError(f"max_frame_pixels must be >= 1, got {max_frame_pixels}")
    container = _open(path)
    try:
        stream = _video_stream(container)
        width, height = stream.codec_context.width or 0, stream.codec_context.height or 0
        if width * height > max_frame_pixels:
            raise VideoError(
                path,
                f"frames of {width}x{height} pixels are over the limit of {max_frame_pixels:,} pixels "
                "(max_frame_pixels, --max-frame-pixels)",
            )
        stream.thread_type = "AUTO"  # frame and slice threads: the decoder's own parallelism
        pts_index, keys, end, hidden, ordered = _frame_index(container, stream, path)
        if pts_index is None:
            # Packets without timestamps (a raw elementary stream: .h264, .hevc): its frames are counted by
            # decoding it from a fresh open, and taken by counting from another (read_video).
            container.close()
            container = _open(path)
            stream = _video_stream(container)
            total, first = _frame_count(container, stream, max_frame_pixels, path)
            width, height = first or (width, height)
        else:
            total = len(pts_index)
        if (kind := _still_image(container, total)) is not None:
            raise VideoError(path, f"is a still image ({kind}), not a video")
        if pts_index is not None and total:
            _check_complete(container, stream, pts_index, end, hidden, path)
        if total == 0:
            raise VideoError(path, "has no frames (zero-length video)")
    except BaseException:
        container.close()
        raise
    keyframes = [] if pts_index is None else sorted({bisect.bisect_left(pts_index, k) for k in keys})
    return container, stream, _Index(pts_index, keyframes, total, ordered, (width, height))


def read_video(
    path: str | os.PathLike,
    num_frames: int = 8,
    sample_rate: int = 4,
    *,
    strategy: str = "random",
    seed: int | None = None,
    indices: Sequence[int] | Callable[[int], Sequence[int]] | None = None,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_num_frames: int = MAX_NUM_FRAMES,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    max_seconds: float | None = MAX_READ_SECONDS,
) -> torch.Tensor:
    """Decode the sampled frames of a video.

    Args:
        path: a video file.
        num_frames: frames to return.
        sample_rate: spacing of the frames (see ``sample_frame_indices``).
        strategy: ``"random"`` (the model cards' sampling), ``"center"`` or ``"uniform"``.
        seed: seed of the ``"random"`` strategy (None: unseeded).
        indices: explicit frame indices (sorted or not; repeats allowed) instead of a strategy, or a function
            of the video's frame count that returns them (one pass over the file, where ``video_info`` first
            would index its packets twice).
        max_frame_pixels: refuse a video whose frames have more pixels (width x height, read from the stream
            before decoding; default 4096 x 4096).
        max_num_frames: refuse to return more frames than this (default 1024).
        transform: a function of one uint8 ``(height, width, 3)`` frame, called on each wanted frame as soon as
            it is decoded (once per distinct frame, and again where a read starts over: a file whose seeks
            cannot be trusted), whose results are returned in the frames' place: to preprocess frames without
            holding them all at full resolution.
        max_seconds: give up on a video whose reading takes longer (default 600; ``None``: no limit), checked
            at each packet and frame (one blocking FFmpeg call is bounded by ``IO_TIMEOUT_S`` instead).

    Returns:
        uint8 ``(num_frames, height, width, 3)`` RGB frames (``len(indices)`` frames when given), of
        ``video_info``'s size: frames of another size (a stream whose size changes midway) are scaled to it.
        With ``transform``, its results stacked: ``(num_frames, *result_shape)``.

    Raises:
        VideoError: missing file, not a video (a still image: PNG, JPEG, a one-frame GIF, an AVIF or HEIC photo),
            no video stream, no frames, corrupt or truncated data.
    """

    def check_count(count: int, name: str) -> None:
        if not 1 <= count <= max_num_frames:
            raise ValueError(f"{name} must be 1 to {max_num_frames}, got {count}")

    max_num_frames = _integer(max_num_frames, "max_num_frames")
    if indices is None:
        num_frames = _integer(num_frames, "num_frames")
        check_count(num_frames, "num_frames")
        sample_rate = _integer(sample_rate, "sample_rate")
        if sample_rate < 1:
            raise ValueError(f"sample_rate must be >= 1, got {sample_rate}")
        if seed is not None:
            try:
                number = operator.index(seed)  # NumPy's integers too (a seed drawn from a generator)
            except TypeError:
                number = -1
            if number < 0 or isinstance(seed, bool):
                raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")
            seed = number
    elif not callable(indices):
        indices = _frame_numbers(indices)
        check_count(len(indices), "len(indices)")
    with _within(max_seconds, path):
        container, stream, index = _indexed(path, max_frame_pixels)
        pts_index, total = index.pts, index.total
        try:
            if indices is None:
                rng = np.random.default_rng(seed)
                indices = sample_frame_indices(num_frames, sample_rate, total, strategy, rng)
            else:
                if callable(indices):  # chosen from the frame count, found by this one pass over the packets
                    indices = _frame_numbers(indices(total))
                    check_count(len(indices), "len(indices)")
                bad = [i for i in indices if not 0 <= i < total]
                if bad or not indices:
                    raise ValueError(
                        f"frame indices must be in [0, {total}) for {path}, got {bad or indices}"
                    )
            wanted = sorted(set(indices))

            def converter() -> _ToRGB:  # one per pass: the shapes seen are those of the frames returned
                # (The header's size, as the first open read it: a raw stream, counted by decoding, has the
                # last frame's on its stream now.)
                return _ToRGB(max_frame_pixels, path, size=index.size, transform=transform)

            to_rgb = converter()
            frames: dict[int, torch.Tensor] = {}
            # Frames that share a timestamp (a broken muxer's) are told apart by their order from the start only:
            # a seek may land between them.
            if pts_index is not None and len(set(pts_index)) == total and index.ordered:
                frames = _decode_by_pts(container, stream, index, wanted, to_rgb, path)
            if len(frames) < len(wanted):
                # No timestamps, duplicate ones, decoded timestamps that match no packet, a seek that fails (no
                # keyframe before the frame: a file that starts mid-GOP) or lands past the first frame (MPEG-TS):
                # the whole clip is taken from the start of a fresh open, numbered as the seek numbers it, so that
                # all its frames have one numbering (a seek to time 0 is not the start where timestamps begin
                # below 0).
                # Timestamps, then counting where they come out of order; counting alone where the clock goes back.
                for numbered_by in (pts_index, None) if index.ordered else (None,):
                    container.close()
                    container = _open(path)
                    stream = _video_stream(container)
                    stream.thread_type = "AUTO"
                    to_rgb = converter()
                    taken = _decode_sequentially(container, stream, numbered_by, wanted, to_rgb)
                    if taken is not None:
                        frames = taken
                        break
            missing = [i for i in wanted if i not in frames]
            if missing:
                got = bisect.bisect_left(wanted, missing[0])
                raise VideoError(
                    path,
                    f"corrupt or truncated video (frame {missing[0]} of {total} could not be decoded; {got} were)",
                )
        finally:
            container.close()
    shapes = sorted(to_rgb.shapes)
    if len(shapes) > 1:  # sizes are one (``_ToRGB``): a display matrix that turns some frames only
        (h0, w0), (h1, w1) = shapes[0], shapes[-1]
        raise VideoError(
            path, f"the display rotation changes within the video ({w0}x{h0} and {w1}x{h1} frames)"
        )
    return torch.stack([frames[i] for i in indices])


def _frame_numbers(indices) -> list[int]:
    """``indices`` as ints: Python's, NumPy's or 0-d integer tensors; a float (``2.7`` was read as frame 2) or a
    string (``"12"`` was frames 1 and 2) is refused."""
    if isinstance(indices, (str, bytes)):
        raise TypeError(f"indices must be a sequence of frame numbers, got a string {indices!r:.50}")
    try:
        return [operator.index(i) for i in indices]
    except TypeError:
        raise TypeError(f"indices must be integer frame numbers, got {list(indices)[:8]!r:.200}") from None


def _decode_by_pts(container, stream, index: _Index, wanted: list[int], to_rgb: _ToRGB, path):
    """Frames ``wanted`` (sorted) of a video whose index holds no timestamp twice: for each run of them with
    no keyframe in between (``_runs``), one seek to the keyframe at or before its first frame, then decoding
    up to its last, each frame numbered by its timestamp (``_Numbering``). So frames far apart (``uniform``,
    several clips) cost a seek each, not the decoding of everything between them. Incomplete where that
    numbering does not hold, for the caller to decode from the start: a seek that fails or still lands past
    the run's first frame from ``SEEK_BACKOFF`` keyframes before it, a decoded timestamp that matches no
    packet or comes out of order."""
    frames: dict[int, torch.Tensor] = {}
    keys = set(index.keyframes)
    for run in _runs(wanted, index.keyframes):
        key = bisect.bisect_right(index.keyframes, run[0]) - 1
        # FFmpeg's MPEG-TS seek lands on the first keyframe whose decoding timestamp is at or after the time
        # asked, past the keyframe asked for where its frames are reordered (its DTS below its PTS): where a
        # seek lands past the run, one to the keyframe before is tried, and so on, then one before every
        # timestamp (the file's start) where that reaches the first keyframe.
        tried = range(key, max(key - 1 - SEEK_BACKOFF, -1), -1)
        targets = [index.pts[index.keyframes[k]] for k in tried] + ([_BEFORE_START] if 0 in tried else [])
        for target in targets or [index.pts[run[0]]]:
            # Before the first indexed keyframe (an MP4 cut without re-encoding hides its first one), frames
            # count from the seek, as the index has no keyframe to wait for.
            taken = _decode_run(container, stream, index.pts, keys, key < 0, target, run, to_rgb, path)
            if taken is not None:
                break
        if not taken:
            return frames
        frames.update(taken)
        if len(taken) < len(run):
            break
    return frames


def _runs(wanted: list[int], keyframes: list[int]) -> list[list[int]]:
    """``wanted`` (sorted frame numbers) cut where a keyframe lies after one wanted frame and at or before the
    next: decoding from that keyframe skips every frame between them."""
    runs = [[wanted[0]]]
    for before, frame in itertools.pairwise(wanted):
        key = bisect.bisect_right(keyframes, frame) - 1  # the last keyframe at or before the frame
        if key >= 0 and keyframes[key] > before:
            runs.append([frame])
        else:
            runs[-1].append(frame)
    return runs


def _decode_run(
    container,
    stream,
    pts_index: list[int],
    keys: set[int],
    keyed: bool,
    target: int,
    run: list[int],
    to_rgb: _ToRGB,
    path,
) -> dict[int, torch.Tensor] | None:
    """The frames ``run`` (sorted), decoded from a seek to the keyframe at or before timestamp ``target``;
    ``None`` where the seek landed past the run's first frame or at the end (or that frame does not decode,
    which the caller tells apart by decoding from the start), ``{}`` where the numbering cannot be trusted."""
    import av

    # A fresh numbering per seek: leading frames of an open GOP, decoded after a seek, may come with
    # timestamps below those of the run before.
    numbering, taken = _Numbering(pts_index), _Taken(run, to_rgb)
    # ``keyed``: a keyframe decoded since the seek (frames before it may be ones a decoder made up), or none
    # to wait for.
    try:
        container.seek(target, stream=stream, backward=True, any_frame=False)
    except av.error.FFmpegError:
        return {}  # no keyframe at or before the frame (a file that starts mid-GOP), or no seek here
    try:
        for frame in _retrying(lambda: container.decode(stream)):
            number = numbering.indexed(frame.pts)
            if number is None or numbering.backwards:
                return {}  # a timestamp that matches no packet, or not in order: only counting tells
            keyed = keyed or number in keys
            if not keyed:
                continue  # leading frames of an open GOP, or a seek that landed between keyframes
            if not taken.frames and number > run[0]:
                return None
            if taken.add(number, frame):
                break
    except av.error.FFmpegError as exc:
        raise _corrupt(path, exc) from exc
    return taken.frames or None  # nothing: the seek landed at the end (past the last keyframe's frames)


class _Numbering:
    """The number of each decoded frame, in presentation order: the position of its timestamp in the index
    (frame ``i`` has the ``i``-th smallest; frames that share one take its positions in the order they come),
    else, for a frame whose timestamp is not there (no index: a raw stream; timestamps that wrap), one more
    than the frame before it. Frames that do not decode (the first packets of a file that starts mid-GOP,
    which refer to frames before its start) leave their numbers out, where counting would shift the frames
    after them. ``backwards`` tells that a timestamp came lower than one before it: the decoder gives frames
    in presentation order, so the timestamps are not the frames' (AVI stores none, and FFmpeg's stand-ins are
    in decode order), and only counting numbers the frames."""

    def __init__(self, pts_index: list[int] | None) -> None:
        self.pts_index = pts_index or []
        self.seen: dict[int, int] = {}  # frames so far with each timestamp
        self.last = -1
        self.latest: int | None = None
        self.backwards = False

    def indexed(self, stamp: int | None) -> int | None:
        """The frame's number by its timestamp, ``None`` when the index does not hold it."""
        if stamp is None:
            return None
        if self.latest is not None and stamp < self.latest:
            self.backwards = True
        self.latest = stamp if self.latest is None else max(self.latest, stamp)
        first = bisect.bisect_left(self.pts_index, stamp)
        if first == len(self.pts_index) or self.pts_index[first] != stamp:
            return None
        k = self.seen.get(stamp, 0)
        self.seen[stamp] = k + 1
        return min(first + k, bisect.bisect_right(self.pts_index, stamp) - 1)

    def __call__(self, stamp: int | None) -> int:
        number = self.indexed(stamp)
        self.last = self.last + 1 if number is None else number
        return self.last


class _Taken:
    """The wanted frames (sorted numbers) out of decoded frames in presentation order. A frame that never
    decodes is the next one that does (what a player shows there: nothing new until then), so that a file
    which starts mid-GOP, or drops a frame, keeps its frame count and every frame its number. A wanted frame
    after the last one that decodes stays missing: the caller's "corrupt or truncated" error."""

    def __init__(self, wanted: list[int], to_rgb: _ToRGB) -> None:
        self.wanted, self.to_rgb = wanted, to_rgb
        self.frames: dict[int, torch.Tensor] = {}
        self.k = 0
        self.previous: int | None = None

    def add(self, number: int, frame) -> bool:
        """Take the frame numbered ``number`` for itself and the wanted frames before it that did not come;
        ``True`` once every wanted frame is taken, by a frame that follows the one before it. A frame numbered
        past a gap may carry a wrong timestamp (one bit error in a broadcast capture: frame 20 numbered as the
        last), which only the next frame, numbered back, shows: the caller decodes on to it, so that one
        frame does not stand silently for all the frames after it."""
        wanted, k = self.wanted, self.k
        jumped = self.previous is not None and number > self.previous + 1
        self.previous = number
        if k < len(wanted) and wanted[k] <= number:
            rgb = self.to_rgb(frame)
            while k < len(wanted) and wanted[k] <= number:
                self.frames[wanted[k]] = rgb
                k += 1
            self.k = k
        return k == len(wanted) and not jumped


def _check_pixels(frame, max_frame_pixels: int, path) -> None:
    # The header's size is checked before decoding; a stream may still switch to larger frames midway.
    if frame.width * frame.height > max_frame_pixels:
        raise VideoError(
            path,
            f"a frame of {frame.width}x{frame.height} pixels is over the limit of {max_frame_pixels:,} "
            "pixels (max_frame_pixels, --max-frame-pixels)",
        )


class _ToRGB:
    """Decoded frames to ``(H, W, 3)`` uint8 arrays, each held to ``max_frame_pixels`` first, and scaled to
    ``size`` (the stream header's ``(width, height)``: its first frames') where a frame's size differs, as
    FFmpeg's command line scales a stream whose size changes midway (joined recordings, adaptive streams) to
    its first frame's (``-autoscale``, on by default; bicubic, its default scaler). Without ``size`` (a header
    that gives none), the first frame converted sets it.

    With a reformatter of its own: ``frame.to_ndarray(format=...)`` goes through one that PyAV 19 keeps for
    the whole process, whose conversion threads do not survive a fork, so a DataLoader worker forked after
    its parent had decoded deadlocks in it.

    Frames come as ``(H, W, 3)`` tensors, or ``transform``'s (``read_video``'s) results of them; ``shapes``
    holds the ``(H, W)`` of every frame converted (turned as displayed)."""

    def __init__(
        self,
        max_frame_pixels: int,
        path,
        size: tuple[int, int] | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        from av.video.reformatter import VideoReformatter

        self.reformatter = VideoReformatter()
        self.max_frame_pixels, self.path = max_frame_pixels, path
        self.size = size if size and size[0] > 0 and size[1] > 0 else None
        self.transform = transform
        self.shapes: set[tuple[int, int]] = set()

    def __call__(self, frame) -> torch.Tensor:
        _check_pixels(frame, self.max_frame_pixels, self.path)
        if self.size is None:
            self.size = (frame.width, frame.height)
        width, height = self.size
        if (frame.width, frame.height) == self.size:
            rgb = self.reformatter.reformat(frame, format="rgb24").to_ndarray()
        else:
            rgb = self.reformatter.reformat(
                frame, width=width, height=height, format="rgb24", interpolation="BICUBIC"
            ).to_ndarray()
        rgb = torch.from_numpy(np.ascontiguousarray(_as_displayed(rgb, _display_matrix(frame))))
        self.shapes.add(tuple(rgb.shape[:2]))
        return rgb if self.transform is None else self.transform(rgb)


def _display_matrix(frame) -> np.ndarray | None:
    """The frame's display matrix (9 int32, 16.16 fixed point), ``None`` without one."""
    try:
        data = frame.side_data.get("DISPLAYMATRIX")
    except (AttributeError, KeyError, TypeError, ValueError):  # an older PyAV
        return None
    return None if data is None else np.frombuffer(bytes(data), np.int32)


def _as_displayed(rgb: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """``rgb`` turned and mirrored as FFmpeg's autorotate shows it (fftools' ``get_rotation`` and the
    transpose / hflip / vflip it picks): a phone's portrait video is stored sideways. Angles other than quarter
    turns (which FFmpeg rotates by, inside the frame's own size) are left as stored."""
    if matrix is None or len(matrix) != 9:
        return rgb
    a, b, c, d = (float(matrix[i]) / 65536 for i in (0, 1, 3, 4))
    sa, sb = math.hypot(a, c), math.hypot(b, d)
    if sa == 0 or sb == 0:
        return rgb
    theta = float(round(math.degrees(math.atan2(b / sb, a / sa))))  # -av_display_rotation_get, rounded
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        return rgb.swapaxes(0, 1) if c > 0 else np.rot90(rgb, -1)  # transpose=cclock_flip, or clock
    if abs(theta - 270) < 1:
        return rgb[::-1, ::-1].swapaxes(0, 1) if c < 0 else np.rot90(rgb, 1)  # clock_flip, or cclock
    if abs(theta - 180) < 1:
        return rgb[:: -1 if d < 0 else 1, :: -1 if a < 0 else 1]  # vflip, hflip
    if abs(theta) < 1 and d < 0:
        return rgb[::-1]
    return rgb


def _displayed_size(path, height: int, width: int) -> tuple[int, int]:
    """``(height, width)`` turned as the first frame's display matrix turns frames (a quarter turn swaps them);
    as stored when no frame decodes."""
    import av

    try:
        with _open(path) as container:
            stream = _video_stream(container)
            frame = next(_retrying(lambda: container.decode(stream)), None)
    except (av.error.FFmpegError, VideoError):
        return height, width
    if frame is None:
        return height, width
    # A strided view with no channels stands in for the frame: turning it costs nothing.
    shape = _as_displayed(np.empty((height, width, 0), np.uint8), _display_matrix(frame)).shape
    return shape[0], shape[1]


def _decode_sequentially(
    container, stream, pts_index: list[int] | None, wanted: list[int], to_rgb: _ToRGB
) -> dict[int, torch.Tensor] | None:
    """The slow, safe way, from the start of a freshly opened ``container``: for streams without timestamps,
    with duplicate ones, whose timestamps do not match their packets or do not seek. Frames are numbered as
    ``_decode_by_pts`` numbers them, by their timestamps' places in ``pts_index`` (counted where a timestamp
    is not there), so that frame ``i`` is the same frame whichever way it is read; ``None`` as soon as the
    timestamps turn out not to be in presentation order, for the caller to count frames instead
    (``pts_index=None``)."""
    import av

    numbering, taken = _Numbering(pts_index), _Taken(wanted, to_rgb)
    try:
        for frame in _retrying(lambda: container.decode(stream)):
            number = numbering(frame.pts)
            if pts_index is not None and numbering.backwards:
                return None
            if taken.add(number, frame):
                break
    except av.error.FFmpegError:
        pass  # the caller reports the frames that are still missing
    return taken.frames


def video_info(
    path: str | os.PathLike,
    max_frame_pixels: int = MAX_FRAME_PIXELS,
    max_seconds: float | None = MAX_READ_SECONDS,
) -> dict:
    """Frame count (exact, from the packet index), size (as ``read_video`` returns frames: turned as the first
    frame's display matrix says), average frame rate and codec of a video, with ``read_video``'s checks (the
    pixel limit ``max_frame_pixels``, the time limit ``max_seconds``, still images, files cut short, no frames),
    so that frame numbers chosen from it are ones ``read_video`` takes.

    Raises:
        VideoError: as ``read_video``.
    """
    with _within(max_seconds, path):
        container, stream, index = _indexed(path, max_frame_pixels)
        try:
            rate = stream.average_rate
            # (Within max_frame_pixels: _indexed checked the stored size.)
            height, width = _displayed_size(path, index.size[1], index.size[0])
            return {
                "frames": index.total,
                "height": height,
                "width": width,
                "fps": float(rate) if rate else None,
                "codec": stream.codec_context.name,
            }
        finally:
            container.close()
