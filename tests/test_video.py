"""timesformer.video: exact frames from real files the tests write with av (several codecs, containers,
sizes, frame rates, variable frame rate, clips shorter than the request), sampling, and every error case."""

from __future__ import annotations

import av
import numpy as np
import pytest
import torch
from _videos import index_frame, read_index, write_indexed_video

from timesformer import video
from timesformer.video import VideoError, read_video, sample_frame_indices, video_info


def _indices(frames: torch.Tensor) -> list[int]:
    return [read_index(f) for f in frames.numpy()]


@pytest.mark.parametrize(
    "codec,ext,height,width,fps",
    [
        ("libx264", "mp4", 96, 160, 30),  # landscape, H.264
        ("libx264", "mkv", 160, 96, 25),  # portrait; Matroska reports no frame count
        ("mpeg4", "mp4", 120, 120, 8),
        ("libvpx-vp9", "webm", 64, 200, 30),  # no frame count either
        ("mjpeg", "avi", 72, 130, 12),  # every frame a keyframe
    ],
)
def test_exact_frames_round_trip(tmp_path, codec, ext, height, width, fps):
    path = tmp_path / f"clip.{ext}"
    write_indexed_video(path, 75, height, width, fps=fps, codec=codec)
    assert video.video_info(path)["frames"] == 75
    wanted = [3, 40, 40, 12, 74, 0]  # unsorted, repeated, first and last frame
    frames = read_video(path, indices=wanted)
    assert frames.dtype == torch.uint8 and frames.shape == (6, height, width, 3)
    assert _indices(frames) == wanted
    for strategy in ("center", "uniform"):
        expected = sample_frame_indices(8, 4, 75, strategy)
        assert _indices(read_video(path, 8, 4, strategy=strategy)) == expected
    got = _indices(read_video(path, 8, 4, strategy="random", seed=7))
    assert got == sample_frame_indices(8, 4, 75, "random", np.random.default_rng(7))


def test_pixels_match_a_full_decode(tmp_path):
    """Seeking must not change a frame: the frames equal those of decoding everything from the start."""
    path = tmp_path / "clip.mp4"
    write_indexed_video(path, 60, 96, 128, gop=10)
    with av.open(str(path)) as c:
        everything = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    wanted = [33, 47, 59]
    got = read_video(path, indices=wanted).numpy()
    for g, i in zip(got, wanted, strict=True):
        np.testing.assert_array_equal(g, everything[i])


@pytest.mark.parametrize("container, codec", [("mp4", "libx264"), ("mkv", "libx264"), ("webm", "libvpx")])
def test_variable_frame_rate(tmp_path, container, codec):
    """MKV and WebM record a duration, not a frame count: a complete file with irregular gaps must not look
    truncated next to its nominal rate."""
    path = tmp_path / f"vfr.{container}"
    write_indexed_video(path, 50, 96, 160, codec=codec, vfr=True, gop=10)
    wanted = [0, 1, 2, 3, 25, 26, 49]
    assert _indices(read_video(path, indices=wanted)) == wanted
    assert _indices(read_video(path, 8, 2, strategy="center")) == sample_frame_indices(8, 2, 50, "center")


def _timed_video(path, stamps_ms: list[int], last_duration_ms: int | None = None) -> None:
    """Index frames at the given presentation times (1/1000 time base); optionally a long last frame."""
    import fractions

    codec = "libvpx" if str(path).endswith(".webm") else "libx264"
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, 1000)
        packets = []
        for i, t in enumerate(stamps_ms):
            frame = av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")
            frame.pts, frame.time_base = t, fractions.Fraction(1, 1000)
            packets += stream.encode(frame)
        packets += stream.encode()
        for packet in packets:
            if last_duration_ms is not None and packet.pts == stamps_ms[-1]:
                packet.duration = last_duration_ms
            out.mux(packet)


@pytest.mark.parametrize("container", ["mkv", "webm"])
def test_complete_files_with_a_start_offset_or_a_long_last_frame_are_not_truncated(tmp_path, container):
    """Matroska's duration may be the absolute end time, and a last frame may last far longer than the nominal
    frame: the completeness check must read neither as a cut."""
    offset = tmp_path / f"offset.{container}"
    _timed_video(offset, [10_000 + 40 * i for i in range(60)])
    assert _indices(read_video(offset, indices=[0, 59])) == [0, 59]
    slideshow = tmp_path / f"slideshow.{container}"
    _timed_video(slideshow, [1000 * i for i in range(10)], last_duration_ms=60_000)
    assert _indices(read_video(slideshow, indices=[0, 9])) == [0, 9]
    cut = tmp_path / f"cut.{container}"
    _timed_video(offset.with_name("whole." + container), [40 * i for i in range(90)])
    data = offset.with_name("whole." + container).read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="truncated video"):
        read_video(cut, indices=[0])


def test_a_raw_stream_without_timestamps_is_read_by_counting(tmp_path):
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(40):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")))
        out.mux(stream.encode())
    assert video_info(path)["frames"] == 40
    assert _indices(read_video(path, indices=[39, 0, 17, 17])) == [39, 0, 17, 17]
    assert _indices(read_video(path, 8, 4, strategy="center")) == sample_frame_indices(8, 4, 40, "center")
    with pytest.raises(VideoError, match="96x64 pixels are over the limit"):
        read_video(path, indices=[0], max_frame_pixels=96 * 63)
    with pytest.raises(VideoError, match="96x64 pixels are over the limit"):
        video_info(path, max_frame_pixels=96 * 63)


def test_short_clip_samples_what_exists_then_repeats(tmp_path):
    path = tmp_path / "short.mp4"
    write_indexed_video(path, 10, 64, 96)
    for strategy in ("random", "center"):
        assert _indices(read_video(path, 8, 4, strategy=strategy, seed=0)) == [0, 4, 8, 8, 8, 8, 8, 8]
    assert _indices(read_video(path, 8, 4, strategy="uniform")) == [0, 1, 3, 4, 5, 6, 8, 9]
    tiny = tmp_path / "three.mp4"
    write_indexed_video(tiny, 3, 64, 96)
    assert _indices(read_video(tiny, 8, 1, strategy="uniform")) == [0, 0, 0, 1, 1, 2, 2, 2]


class _CountingContainer:
    """An av container whose decode() counts the frames it yields."""

    def __init__(self, real, counter):
        self._real, self._counter = real, counter

    def __getattr__(self, name):
        return getattr(self._real, name)

    def decode(self, *args, **kwargs):
        for frame in self._real.decode(*args, **kwargs):
            self._counter.append(frame.pts)
            yield frame


def test_decodes_only_from_the_keyframe_before_to_the_last_frame(tmp_path, monkeypatch):
    path = tmp_path / "long.mp4"
    write_indexed_video(path, 300, 64, 96, gop=30)
    decoded: list = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: _CountingContainer(real_open(*a, **k), decoded))
    wanted = list(range(250, 282, 4))
    assert _indices(read_video(path, indices=wanted)) == wanted
    # read_video_pyav decodes 279 frames here. Seeking starts at the last keyframe at or before frame 250
    # (keyframes at most 30 apart) and stopping at frame 278 leaves at most 30 + 28 frames, plus the
    # decoder's look-ahead.
    assert len(decoded) <= 30 + 29 + 8, len(decoded)


def test_sampling_rules():
    # The model cards' sample_frame_indices for a given window end.
    for total in (32, 33, 100, 301):
        for seed in range(5):
            got = sample_frame_indices(8, 4, total, "random", np.random.default_rng(seed))
            end = got[0] + 32
            expected = np.clip(np.linspace(end - 32, end, num=8), end - 32, end - 1).astype(np.int64).tolist()
            assert got == expected and got[0] >= 0 and got[-1] < total
    # The window ends before the last frame (numpy's high is exclusive): one video a frame longer than the
    # window has one window; another seed's draw, pinned.
    for seed in range(20):
        assert sample_frame_indices(8, 4, 33, "random", np.random.default_rng(seed))[0] == 0
    end = int(np.random.default_rng(3).integers(32, 100))
    assert sample_frame_indices(8, 4, 100, "random", np.random.default_rng(3))[0] == end - 32
    assert sample_frame_indices(8, 4, 100, "center") == [34, 38, 43, 47, 52, 56, 61, 65]
    assert sample_frame_indices(8, 4, 101, "center")[0] == 34  # an odd gap rounds down, as the model cards
    assert sample_frame_indices(4, 4, 100, "uniform") == [12, 37, 62, 87]
    assert sample_frame_indices(1, 1, 1, "center") == [0]
    with pytest.raises(ValueError, match="strategy"):
        sample_frame_indices(8, 4, 100, "middle")
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(8, 4, 0)
    with pytest.raises(ValueError, match=">= 1"):
        sample_frame_indices(0, 4, 100)


def test_bad_explicit_indices(tmp_path):
    path = tmp_path / "clip.mp4"
    write_indexed_video(path, 20, 64, 96)
    with pytest.raises(ValueError, match=r"in \[0, 20\)"):
        read_video(path, indices=[3, 20])
    # A float was truncated (2.7 read as frame 2) and a string taken digit by digit ("12" as frames 1, 2).
    with pytest.raises(TypeError, match=r"integer frame numbers, got \[1, 2.7\]"):
        read_video(path, indices=[1, 2.7])
    with pytest.raises(TypeError, match="got a string '12'"):
        read_video(path, indices="12")
    with pytest.raises(TypeError, match="integer frame numbers"):
        read_video(path, indices=lambda total: [total / 2])
    for seed in (-1, 2.5, "7"):
        with pytest.raises(ValueError, match=f"seed must be a non-negative int or None, got {seed!r}"):
            read_video(path, seed=seed)
    drawn = np.random.default_rng(0).integers(0, 100)  # a NumPy integer is a seed
    assert torch.equal(read_video(path, seed=drawn), read_video(path, seed=int(drawn)))
    # NumPy and tensor integers are frame numbers.
    expected = read_video(path, indices=[4, 1])
    assert torch.equal(read_video(path, indices=np.array([4, 1])), expected)
    assert torch.equal(read_video(path, indices=torch.tensor([4, 1])), expected)


def _audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.ones((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        c.mux(s.encode(frame))
        c.mux(s.encode())


def _still(path):
    with av.open(str(path), "w", format="image2", options={"update": "1"}) as c:
        s = c.add_stream("png" if str(path).endswith(".png") else "mjpeg", rate=1)
        s.width, s.height, s.pix_fmt = 96, 64, "rgb24" if str(path).endswith(".png") else "yuvj420p"
        c.mux(s.encode(av.VideoFrame.from_ndarray(index_frame(1, 64, 96), format="rgb24")))
        c.mux(s.encode())


def _no_frames(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width = s.height = 64
        s.pix_fmt = "yuv420p"
        c.start_encoding()


def _sound_beside_an_empty_video_track(path):
    with av.open(str(path), "w") as c:
        video_track = c.add_stream("libx264", rate=30)
        video_track.width = video_track.height = 64
        video_track.pix_fmt = "yuv420p"
        sound = c.add_stream("aac", rate=8000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.ones((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 8000, i * 1024
            c.mux(sound.encode(frame))
        c.mux(sound.encode())


@pytest.mark.parametrize(
    "make,name,reason",
    [
        (None, "missing.mp4", "no such file"),
        (_sound_beside_an_empty_video_track, "silent.mkv", "has no frames (zero-length video)"),
        (lambda p: p.write_text("not a video\n" * 40), "notes.mp4", "not a readable video file"),
        (_audio_only, "sound.wav", "has no video stream"),
        # A one-frame "video" to FFmpeg: a thumbnail beside the videos was classified as eight equal frames.
        (_still, "thumb.png", "is a still image (png), not a video"),
        (_still, "thumb.jpg", "is a still image (jpeg), not a video"),
        (_no_frames, "empty.mkv", "not a readable video file"),
        (_no_frames, "empty.mp4", "has no video stream"),
        ("truncate-mp4", "cut.mp4", "not a readable video file"),
        ("truncate-mkv", "cut.mkv", "truncated video"),
        ("garble", "garbled.mp4", "corrupt or truncated"),
    ],
)
def test_errors_name_the_file_and_the_reason(tmp_path, make, name, reason):
    path = tmp_path / name
    if isinstance(make, str):
        source = tmp_path / ("source" + path.suffix)
        write_indexed_video(source, 90, 96, 160)
        data = bytearray(source.read_bytes())
        if make.startswith("truncate"):
            data = data[: len(data) // 2]
        else:  # overwrite a run of bytes in the middle of the frame data
            for k in range(len(data) // 3, len(data) // 3 + 2000):
                data[k] = (data[k] * 37 + 11) % 256
        path.write_bytes(bytes(data))
    elif make is not None:
        make(path)
    with pytest.raises(VideoError) as exc:
        read_video(path, 8, 4, strategy="center")
    assert str(path) in str(exc.value) and reason in str(exc.value)
    assert "\n" not in str(exc.value)
    if make != "garble":  # (its damage is in frames video_info does not decode)
        # video_info gave 0 frames, or the count of a file cut short, where read_video refuses the file.
        with pytest.raises(VideoError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            video_info(path)


def test_directory_is_not_a_video(tmp_path):
    with pytest.raises(VideoError, match="directory"):
        read_video(tmp_path)


def test_a_name_with_a_nul_character_is_an_error_of_that_video(tmp_path):
    """(It was a ValueError from os.stat: classify caught it, but not as the video's own error.)"""
    with pytest.raises(VideoError, match="is not a file name \\(it holds a NUL character\\)"):
        read_video(str(tmp_path / "a\0b.mp4"))


def test_index_frames_decode_back():
    for i in (0, 1, 513, 1023):
        assert read_index(index_frame(i, 48, 80)) == i


def _read_in_child(path: str) -> None:
    read_video(path, indices=[0, 5])


def test_a_process_forked_after_decoding_still_decodes(tmp_path):
    """DataLoader workers are forked from a process that may have decoded before (the Python API, a
    notebook). PyAV 19's process-wide frame converter deadlocks in such a child; read_video has its own."""
    import gc
    import multiprocessing

    path = tmp_path / "clip.mp4"
    write_indexed_video(path, 12, 64, 96)
    read_video(path, indices=[0, 5])  # the parent decodes and converts first
    # Decoders of earlier tests' errors, kept alive by pytest.raises' reference cycles until a collection,
    # still run FFmpeg's frame threads: a child forked beside them hung in its first demux (in this file
    # after test_config's collection, not alone). A decoder an exception keeps is not what this test is about.
    gc.collect()
    child = multiprocessing.get_context("fork").Process(target=_read_in_child, args=(str(path),))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0, "the forked reader hung or failed"


# --------------------------------------------------------------------------- files as cutters and muxers write them
def _h264_packets(frames: int, height: int = 64, width: int = 96, gop: int = 12, start: int = 0):
    """Packets of ``frames`` index frames from ``start`` on (B-frames on), to mux with timestamps of the test's
    choosing."""
    import fractions

    codec = av.CodecContext.create("libx264", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "yuv420p"
    codec.time_base, codec.framerate, codec.gop_size = fractions.Fraction(1, 25), 25, gop
    packets = []
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(index_frame(start + i, height, width), format="rgb24").reformat(
            format="yuv420p"
        )
        frame.pts, frame.time_base = i, codec.time_base
        packets += codec.encode(frame)
    return codec, packets + codec.encode(None)


def _mux(path, codec, packets, *, time_base, restamp, format=None) -> None:
    """``restamp(packet)`` sets the packet's timestamps (in ``time_base``), or returns False to drop it."""
    with av.open(str(path), "w", format=format) as out:
        stream = out.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = codec.width, codec.height, codec.pix_fmt
        stream.codec_context.extradata = codec.extradata
        stream.time_base = time_base
        for packet in packets:
            if restamp(packet) is False:
                continue
            packet.time_base, packet.stream = time_base, stream
            out.mux(packet)


def _full_decode(path) -> list[int]:
    with av.open(str(path)) as c:
        return [read_index(f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def test_frames_an_mp4_edit_list_cuts_are_not_frames(tmp_path):
    """A stream copy cut (``ffmpeg -ss 1 -c copy``) keeps the GOP's leading packets and hides them with an
    edit list: the decoder returns no frame for them, so frame 0 is the first one shown. Counted, they made
    frame i the frame i+3 and filled the gap by counting, so clips ran backwards ([5, 3, 4, ...])."""
    import fractions

    path = tmp_path / "cut.mp4"
    codec, packets = _h264_packets(40)

    def shift(packet):  # 3 frames before time 0: the muxer writes an edit list starting at frame 3
        packet.pts, packet.dts = packet.pts - 3, packet.dts - 3

    _mux(path, codec, packets, time_base=fractions.Fraction(1, 25), restamp=shift)
    shown = _full_decode(path)
    assert shown[0] == 3 and len(shown) == 37  # what the test relies on: an edit list the decoder applies
    assert video_info(path)["frames"] == 37
    fallbacks, sequentially = [], video._decode_sequentially
    video._decode_sequentially = lambda *a: fallbacks.append(1) or sequentially(*a)
    try:
        assert _indices(read_video(path, indices=[0, 1, 2, 3, 36])) == [shown[i] for i in (0, 1, 2, 3, 36)]
    finally:
        video._decode_sequentially = sequentially
    # The cut hides the first keyframe: frames before the next one still come from a seek (they waited for a
    # keyframe the index does not have, then the whole file was decoded from its start: 3.6x slower).
    assert not fallbacks
    for strategy in ("center", "uniform"):
        expected = [shown[i] for i in sample_frame_indices(8, 1, 37, strategy)]
        assert _indices(read_video(path, 8, 1, strategy=strategy)) == expected


def test_mpeg_ts_whose_timestamps_wrap(tmp_path):
    """MPEG-TS timestamps are 33 bits: a stream that starts just before the wrap begins below 0 once FFmpeg
    unwraps it. A seek there lands past the first frame, and counting from a seek to time 0 started
    mid-stream: clips came back out of order ([42, 18, 23, ...])."""
    import fractions

    path = tmp_path / "wrap.ts"
    codec, packets = _h264_packets(60)
    start = 2**33 - 90_000  # one second before the wrap, in the 90 kHz clock

    def restamp(packet):
        packet.pts, packet.dts = packet.pts * 3600 + start, packet.dts * 3600 + start

    _mux(path, codec, packets, time_base=fractions.Fraction(1, 90_000), restamp=restamp, format="mpegts")
    shown = _full_decode(path)
    assert shown == list(range(60))
    assert _indices(read_video(path, indices=list(range(8)))) == list(range(8))
    for strategy in ("center", "uniform"):
        assert _indices(read_video(path, 8, 4, strategy=strategy)) == sample_frame_indices(8, 4, 60, strategy)


def test_an_mpeg_ts_whose_clock_goes_back_is_read_in_playback_order(tmp_path):
    """Two recordings joined (``cat a.ts b.ts``) where the second's clock restarts below the first's end: the
    frames, ordered by timestamp, are not the order they play in. Frame 120 came back as frame 109 (seeks by
    timestamp); the decoding timestamps going back now send the read to counting frames from the start."""
    import fractions

    parts = []
    for k, offset in enumerate((0, 50 * 3600 + 1800)):  # the second starts 10 frames before the first ends
        part = tmp_path / f"part{k}.ts"
        codec, packets = _h264_packets(60, start=60 * k)

        def restamp(packet, offset=offset):
            packet.pts, packet.dts = (
                packet.pts * 3600 + offset + 126_000,
                packet.dts * 3600 + offset + 126_000,
            )

        _mux(part, codec, packets, time_base=fractions.Fraction(1, 90_000), restamp=restamp, format="mpegts")
        parts.append(part.read_bytes())
    path = tmp_path / "joined.ts"
    path.write_bytes(b"".join(parts))
    assert _full_decode(path) == list(range(120))  # what the test relies on: played in file order
    assert video_info(path)["frames"] == 120
    for wanted in ([10, 70, 100, 119], [70], [55], [65], [119, 0]):
        assert _indices(read_video(path, indices=wanted)) == wanted, wanted


@pytest.mark.parametrize(("format", "ticks"), [("mpegts", 3600), ("matroska", 40)])
def test_one_frame_with_a_wrong_timestamp_does_not_stand_for_the_frames_after_it(tmp_path, format, ticks):
    """Frame 20's timestamp 1000 frames late (one bit error in a broadcast capture) numbered it as the last
    frame: it was taken for every wanted frame from 20 on, with no error ([.., 19, 20, 20, 20, ...])."""
    import fractions

    path = tmp_path / f"glitch.{format}"
    codec, packets = _h264_packets(40)

    def restamp(packet):
        late = 1000 if packet.pts == 20 else 0
        packet.pts, packet.dts = (packet.pts + late) * ticks + 126_000, packet.dts * ticks + 126_000

    _mux(path, codec, packets, time_base=fractions.Fraction(1, 25 * ticks), restamp=restamp, format=format)
    assert _full_decode(path) == list(range(40))  # what the test relies on: the decoder plays them in order
    assert video_info(path)["frames"] == 40
    assert _indices(read_video(path, indices=list(range(40)))) == list(range(40))
    # Frames numbered as they play (counted: a read that sees the timestamps go back), or by timestamp (a
    # seek that never meets frame 20); never one frame for several.
    by_timestamp = [*range(20), *range(21, 40), 20]
    for wanted in ([21, 22, 23, 24], [19, 20, 21], [39], [0, 39], sample_frame_indices(8, 4, 40, "center")):
        got = _indices(read_video(path, indices=wanted))
        assert got in (wanted, [by_timestamp[i] for i in wanted]), (wanted, got)


def test_a_read_that_takes_too_long_is_an_error_of_its_video(tmp_path, monkeypatch):
    """A few KB can hold minutes of decoding (one 4096x4096 keyframe, then 30,000 empty frames): such a file
    held classify and evaluate for as long. The clock here advances one second per packet or frame read."""
    import itertools
    import types

    path = tmp_path / "long.mp4"
    write_indexed_video(path, 60, 32, 64, gop=60)  # one keyframe: the last frame is decoded from the first
    ticks = itertools.count()
    monkeypatch.setattr(video, "time", types.SimpleNamespace(monotonic=lambda: float(next(ticks))))
    for read in (lambda **k: read_video(path, indices=[59], **k), lambda **k: video_info(path, **k)):
        with pytest.raises(VideoError, match=r"long.mp4: took over 30 s to read \(max_seconds\): far more"):
            read(max_seconds=30)
        read(max_seconds=1000)
        read(max_seconds=None)
    for bad in (0, -1, True, "30"):
        with pytest.raises(ValueError, match="max_seconds must be a positive number of seconds or None"):
            read_video(path, indices=[0], max_seconds=bad)


def test_a_read_stops_once_its_stop_event_is_set(tmp_path):
    """classify's decoding threads read under ``stop_reads_on``: once its generator is closed (Ctrl-C, a closed
    pipe), a read stops at its next packet or frame instead of holding the exit for the whole video."""
    import threading

    path = tmp_path / "clip.mp4"
    write_indexed_video(path, 30, 32, 48)
    event = threading.Event()
    with video.stop_reads_on(event):
        assert _indices(read_video(path, indices=[3, 29])) == [3, 29]  # not set: reads as usual
        event.set()
        for read in (lambda: read_video(path, indices=[29]), lambda: video_info(path)):
            with pytest.raises(video.ReadStopped):
                read()
    assert _indices(read_video(path, indices=[29])) == [29]  # outside the block: the event is not looked at


def test_a_complete_flv_with_a_wrong_duration_is_not_truncated(tmp_path):
    """FFmpeg's FLV muxer, given a raw H.264 stream copied as is (``add_stream_from_template``), records 1334 s
    for 1.3 s of frames: the whole file was refused as truncated, though every frame decodes."""
    import fractions
    import io

    raw = io.BytesIO()
    with av.open(raw, "w", format="h264") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 48, "yuv420p"
        for i in range(40):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(i, 48, 96), format="rgb24")))
        out.mux(stream.encode())
    raw.seek(0)
    path = tmp_path / "copy.flv"
    with av.open(raw, format="h264") as src, av.open(str(path), "w") as dst:
        copy = dst.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(video=0) if p.size):
            packet.stream, packet.time_base, packet.pts, packet.dts = copy, fractions.Fraction(1, 30), k, k
            dst.mux(packet)
    with av.open(str(path)) as c:
        assert c.duration / 1e6 > 100  # what the test relies on: the muxer's duration
    assert _full_decode(path) == list(range(40))
    assert _indices(read_video(path, 8, 4, strategy="uniform")) == sample_frame_indices(8, 4, 40, "uniform")


def test_mpeg_ts_packets_without_timestamps_are_frames(tmp_path):
    """MPEG-TS may leave a packet's timestamps out. The index skipped such packets: 50 frames of 60, and
    clips with uneven gaps."""
    import fractions

    path = tmp_path / "unstamped.ts"
    codec, packets = _h264_packets(60, gop=30)
    count = iter(range(len(packets)))

    def restamp(packet):
        packet.pts, packet.dts = packet.pts * 3600 + 126_000, packet.dts * 3600 + 126_000
        if next(count) % 5 == 3 and not packet.is_keyframe:
            packet.pts = None

    _mux(path, codec, packets, time_base=fractions.Fraction(1, 90_000), restamp=restamp, format="mpegts")
    with av.open(str(path)) as c:
        assert any(
            p.pts is None and p.dts is None for p in c.demux(video=0) if p.size
        )  # what the test relies on
    assert _full_decode(path) == list(range(60))
    assert video_info(path)["frames"] == 60
    assert _indices(read_video(path, indices=list(range(12)))) == list(range(12))
    assert _indices(read_video(path, 8, 4, strategy="center")) == sample_frame_indices(8, 4, 60, "center")


@pytest.mark.parametrize(
    "ext, video_codec, audio_codec", [("mkv", "libx264", "aac"), ("webm", "libvpx", "libopus")]
)
def test_a_cut_matroska_file_with_sound_is_truncated(tmp_path, ext, video_codec, audio_codec):
    """Matroska has no per-stream duration and its container duration covers the sound too: the check used
    neither, so a file cut in half read as a complete, shorter video. FFmpeg writes each track's duration
    as a tag."""
    whole = tmp_path / f"whole.{ext}"
    rate = 48_000
    with av.open(str(whole), "w") as out:
        video_stream = out.add_stream(video_codec, rate=25)
        video_stream.width, video_stream.height, video_stream.pix_fmt = 96, 64, "yuv420p"
        audio_stream = out.add_stream(audio_codec, rate=rate)
        samples = np.random.default_rng(0).uniform(-0.1, 0.1, (1, rate // 25)).astype(np.float32)
        for i in range(75):
            out.mux(video_stream.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")))
            sound = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            sound.sample_rate, sound.pts = rate, i * (rate // 25)
            out.mux(audio_stream.encode(sound))
        out.mux(video_stream.encode())
        out.mux(audio_stream.encode())
    assert _indices(read_video(whole, indices=[0, 74])) == [0, 74]
    cut = tmp_path / f"cut.{ext}"
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match=r"truncated video \(its header announces 3.00 s"):
        read_video(cut, indices=[0])


def test_the_moving_track_is_read_not_a_still_one_before_it(tmp_path):
    """A file may carry a one-frame track (a cover image) before the video: FFmpeg's choice of track is the
    video, where the first track gave eight copies of the still."""
    path = tmp_path / "cover.mkv"
    with av.open(str(path), "w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 96, 64, "yuvj420p"
        moving = out.add_stream("libx264", rate=25)
        moving.width, moving.height, moving.pix_fmt = 96, 64, "yuv420p"
        out.mux(cover.encode(av.VideoFrame.from_ndarray(index_frame(1000, 64, 96), format="rgb24")))
        out.mux(cover.encode())
        for i in range(40):
            out.mux(moving.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")))
        out.mux(moving.encode())
    assert video_info(path)["frames"] == 40 and video_info(path)["codec"] == "h264"
    assert _indices(read_video(path, 8, 4, strategy="center")) == sample_frame_indices(8, 4, 40, "center")


def _anti_transpose(img: np.ndarray) -> np.ndarray:
    return img[::-1, ::-1].swapaxes(0, 1)


@pytest.mark.parametrize(
    "degrees, hflip, vflip, shown",
    [
        (90, False, False, lambda f: np.rot90(f, 1)),  # counterclockwise, as FFmpeg's transpose=cclock
        (-90, False, False, lambda f: np.rot90(f, -1)),  # transpose=clock
        (180, False, False, lambda f: np.rot90(f, 2)),
        (0, True, False, lambda f: f[:, ::-1]),  # mirrored: hflip (it reads as a 180 degree rotation)
        (0, False, True, lambda f: f[::-1]),  # vflip
        (90, True, False, _anti_transpose),  # a quarter turn, then mirrored: transpose=clock_flip
    ],
)
def test_frames_are_shown_as_the_display_matrix_says(tmp_path, degrees, hflip, vflip, shown):
    """A phone's portrait video is stored sideways with a display matrix (a rotation, counterclockwise as
    av_display_rotation_get reads it, and mirroring): frames come as FFmpeg's autorotate shows them. Mirrored
    matrices came back turned by 180 degrees or not at all."""
    path = tmp_path / "turned.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("this PyAV cannot write a display matrix (PyAV >= 18 can)")
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        for i in range(20):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")))
        out.mux(stream.encode())
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).side_data.get("DISPLAYMATRIX") is not None  # what the test relies on
    frames = read_video(path, indices=[5, 11]).numpy()
    for got, i in zip(frames, (5, 11), strict=True):
        expected = shown(index_frame(i, 64, 96))
        assert got.shape == expected.shape and got.flags["C_CONTIGUOUS"]
        assert np.abs(got.astype(int) - expected).mean() < 4  # the codec's loss; a wrong turn is ~90
    info = video_info(path)  # the size read_video returns (it was the stored 64x96 before)
    assert (info["height"], info["width"]) == frames.shape[1:3] and info["frames"] == 20


def test_a_cut_that_hides_most_of_a_group_of_frames_is_not_truncated(tmp_path):
    """An MP4 header counts the samples an edit list hides: a cut in the middle of a long group of frames
    (x264 puts keyframes up to 250 frames apart) was refused as truncated."""
    import fractions

    path = tmp_path / "cut.mp4"
    codec, packets = _h264_packets(60, gop=60)

    def shift(packet):  # 30 frames before time 0
        packet.pts, packet.dts = packet.pts - 30, packet.dts - 30

    _mux(path, codec, packets, time_base=fractions.Fraction(1, 25), restamp=shift)
    shown = _full_decode(path)
    assert shown[0] == 30 and len(shown) == 30  # what the test relies on
    assert _indices(read_video(path, indices=[0, 29])) == [30, 59]


def test_sound_with_a_cover_image_is_not_a_video(tmp_path):
    """An MP3's cover art is a one-frame video track: the only one, it was read as eight equal frames."""
    path = tmp_path / "song.mp3"
    with av.open(str(path), "w") as out:
        sound = out.add_stream("libmp3lame", rate=44100)
        cover = out.add_stream("png", rate=1)
        cover.width, cover.height, cover.pix_fmt = 96, 64, "rgb24"
        cover.disposition = av.stream.Disposition.attached_pic
        out.mux(cover.encode(av.VideoFrame.from_ndarray(index_frame(3, 64, 96), format="rgb24")))
        out.mux(cover.encode())
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 44100, i * 1152
            out.mux(sound.encode(frame))
        out.mux(sound.encode())
    with av.open(str(path)) as c:  # what the test relies on: the cover is the only video track
        assert [s.disposition & av.stream.Disposition.attached_pic for s in c.streams.video] == [
            av.stream.Disposition.attached_pic
        ]
    with pytest.raises(VideoError, match="has no video stream \\(only a cover image\\)"):
        read_video(path, 8, 4)


@pytest.mark.parametrize(
    "ext, format, time_base, scale",
    [
        ("mkv", None, 1000, 40),  # the seek lands on a later keyframe
        ("mp4", None, 25, 1),  # no keyframe before the first frames: the seek fails
        ("ts", "mpegts", 90_000, 3600),  # the seek lands past the frame
    ],
)
def test_a_file_that_starts_mid_gop_keeps_its_frame_numbers(tmp_path, ext, format, time_base, scale):
    """A capture, or a cut, that starts after a keyframe: its first packets refer to frames before the start and
    never decode. The index numbered frames by their packets and the fallback by the frames the decoder gave, so
    frames came shifted ([21] for frame 5, [16] for frame 6), and a seek with no keyframe before the frame made
    a playable file "corrupt". Frame i is now the i-th packet's frame whichever way it is read, and one that
    does not decode is the next one that does."""
    import fractions

    path = tmp_path / f"midgop.{ext}"
    codec, packets = _h264_packets(48, gop=12)
    order, kept = iter(range(len(packets))), []
    offset = 126_000 if ext == "ts" else 0  # MPEG-TS timestamps start above 0

    def cut(packet):  # the first 4 packets in decode order
        if next(order) < 4:
            return False
        kept.append(packet.pts)
        packet.pts, packet.dts = packet.pts * scale + offset, packet.dts * scale + offset

    _mux(path, codec, packets, time_base=fractions.Fraction(1, time_base), restamp=cut, format=format)
    sources = sorted(kept)  # frame i of the file is index frame sources[i]
    shown = _full_decode(path)
    # What the test relies on: the first frames never decode.
    assert shown[0] > sources[1] and len(shown) < len(sources)
    total = len(sources)
    assert video_info(path)["frames"] == total
    expected = [min(s for s in shown if s >= sources[i]) for i in range(total)]
    for wanted in ([0], [1], [2], [5], [6], list(range(0, total, 3)), [total - 1, 0]):
        assert _indices(read_video(path, indices=wanted)) == [expected[i] for i in wanted], wanted
    for strategy in ("center", "uniform"):
        got = _indices(read_video(path, 8, 4, strategy=strategy))
        assert got == [expected[i] for i in sample_frame_indices(8, 4, total, strategy)]


@pytest.mark.parametrize("junk", ["trailing zeros", "a zeroed gap"])
def test_mpeg_ts_with_junk_bytes_is_read(tmp_path, junk):
    """A complete MPEG-TS with a run of junk bytes (a capture's zero padding, a zeroed gap on 188-byte packets):
    the demuxer asks to retry (EAGAIN) while it resyncs, or a seek fails, and the file was refused as corrupt."""
    clean = tmp_path / "clean.ts"
    write_indexed_video(clean, 60, 64, 96)
    data = clean.read_bytes()
    half = len(data) // 2 // 188 * 188
    path = tmp_path / "junk.ts"
    if junk == "trailing zeros":
        path.write_bytes(data + b"\0" * 200_000)
    else:
        path.write_bytes(data[:half] + b"\0" * (188 * 600) + data[half:])
    assert video_info(path)["frames"] == 60
    assert _indices(read_video(path, indices=[0, 29, 30, 31, 59])) == [0, 29, 30, 31, 59]
    assert _indices(read_video(path, 8, 4, strategy="center")) == sample_frame_indices(8, 4, 60, "center")


def _one_frame(path, codec: str, pix_fmt: str, format: str, options=None) -> None:
    with av.open(str(path), "w", format=format, options=options or {}) as out:
        stream = out.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = 64, 64, pix_fmt
        out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(5, 64, 64), format="rgb24")))
        out.mux(stream.encode())


@pytest.mark.parametrize(
    "name, codec, pix_fmt, format, options, kind",
    [
        (
            "photo.avif",
            "libsvtav1",
            "yuv420p",
            "avif",
            None,
            "avif",
        ),  # an image item, read by the MP4 demuxer
        (
            "photo.heic",
            "libx264",
            "yuv420p",
            "mp4",
            {"brand": "heic"},
            "heic",
        ),  # HEIC's brand (no HEIF muxer)
        ("thumb.gif", "gif", "rgb8", "gif", None, "gif"),
    ],
)
def test_still_images_read_by_video_demuxers_are_not_videos(
    tmp_path, name, codec, pix_fmt, format, options, kind
):
    """AVIF and HEIC photos come through FFmpeg's MP4 demuxer, a GIF through its own: a one-frame file of them
    was classified as eight equal frames, where a PNG was refused."""
    if codec not in av.codecs_available:
        pytest.skip(f"this FFmpeg has no {codec} encoder")
    path = tmp_path / name
    _one_frame(path, codec, pix_fmt, format, options)
    for read in (lambda: read_video(path, 8, 4), lambda: video_info(path)):
        with pytest.raises(VideoError, match=rf"is a still image \({kind}\), not a video"):
            read()


@pytest.mark.parametrize("codec, frames", [("libwebp_anim", 5), ("libwebp", 1)])
def test_an_animated_webp_is_not_called_a_still_image(tmp_path, codec, frames):
    """FFmpeg reads WebP as a still image and decodes no frame of an animation: a 5-frame WebP was called "a
    still image (webp)"."""
    path = tmp_path / "clip.webp"
    with av.open(str(path), "w", format="webp") as c:
        s = c.add_stream(codec, rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        rng = np.random.default_rng(frames)
        for _ in range(frames):
            pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            c.mux(s.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        c.mux(s.encode())
    message = (
        r"is an animated WebP, which FFmpeg's WebP reader cannot decode" if frames > 1 else "still image"
    )
    with pytest.raises(VideoError, match=message):
        read_video(path, 2, 1)


def test_a_one_frame_video_is_a_video(tmp_path):
    path = tmp_path / "one.mp4"
    _one_frame(path, "libx264", "yuv420p", "mp4")
    assert _indices(read_video(path, 4, 1)) == [5, 5, 5, 5]
    assert video_info(path)["frames"] == 1


def test_frames_that_share_a_timestamp_are_told_apart_by_their_order(tmp_path):
    """A muxer that rounds, or a broken encoder, can give two frames one timestamp: the frame asked for came
    back as the other one ([9] for frame 10), depending on which other frames were asked for."""
    import fractions

    source, path = tmp_path / "source.mkv", tmp_path / "dup.mkv"
    write_indexed_video(source, 40, 64, 96, codec="mjpeg", gop=1)
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(src.streams.video[0]) if p.size):
            packet.stream, packet.time_base = stream, fractions.Fraction(1, 30)
            packet.pts, packet.dts, packet.duration = (k if k < 10 else k - 1), None, 1  # 9 and 10 share one
            out.mux(packet)
    with av.open(str(path)) as c:  # what the test relies on
        stamps = [p.pts for p in c.demux(video=0) if p.size]
        assert stamps[9] == stamps[10] and len(set(stamps)) == 39
    for wanted in ([10], [9], [10, 9], [0, 10, 20], [11]):
        assert _indices(read_video(path, indices=wanted)) == wanted
    assert _indices(read_video(path, 8, 4, strategy="center")) == sample_frame_indices(8, 4, 40, "center")


def test_avi_with_b_frames_is_read_in_presentation_order(tmp_path):
    """AVI stores no presentation timestamps: with B-frames, FFmpeg's stand-ins are in decode order, and frames
    numbered by them came out of order ([0, 8, 13, 24, 49] for [0, 7, 13, 25, 49]). Timestamps that go backwards
    are not the frames' order: the frames are counted."""
    path = tmp_path / "b-frames.avi"
    write_indexed_video(path, 50, 64, 96)
    with av.open(str(path)) as c:  # what the test relies on: timestamps out of presentation order
        stamps = [f.pts for f in c.decode(video=0)]
        assert stamps != sorted(stamps)
    assert _full_decode(path) == list(range(50))
    wanted = [0, 7, 13, 25, 49]
    assert _indices(read_video(path, indices=wanted)) == wanted
    for strategy in ("center", "uniform"):
        assert _indices(read_video(path, 8, 4, strategy=strategy)) == sample_frame_indices(8, 4, 50, strategy)


@pytest.mark.parametrize("suffix", ["mp4", "mkv"])
def test_tags_that_are_not_utf8_are_no_reason_to_refuse_a_video(tmp_path, suffix):
    """A title in Latin-1 (older cameras and tools; a damaged byte does the same): PyAV decoded every tag as
    UTF-8 and the playable file raised UnicodeDecodeError."""
    path = tmp_path / f"latin1.{suffix}"
    with av.open(str(path), "w", metadata_encoding="latin-1") as out:
        out.metadata["title"] = "Café"
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.metadata["title"] = "Caméra"
        for i in range(20):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(index_frame(i, 64, 96), format="rgb24")))
        out.mux(stream.encode())
    assert video_info(path)["frames"] == 20
    assert _indices(read_video(path, indices=[0, 7, 19])) == [0, 7, 19]


def test_a_track_of_a_codec_ffmpeg_lacks_is_named(tmp_path):
    clean = tmp_path / "clean.mkv"
    write_indexed_video(clean, 12, 64, 96)
    data = clean.read_bytes()
    assert data.count(b"V_MPEG4/ISO/AVC") == 1
    path = tmp_path / "unknown.mkv"
    path.write_bytes(data.replace(b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ"))
    for read in (video_info, read_video):
        with pytest.raises(VideoError, match="codec is not one this FFmpeg build decodes"):
            read(path)


def test_an_mpeg_ts_packet_of_an_unknown_pid_is_read_past(tmp_path):
    """One corrupt bit in a packet header moves a packet to a PID the header does not list: FFmpeg adds a
    stream mid-file, PyAV raised IndexError for its packet and the whole video was lost."""
    clean = tmp_path / "clean.ts"
    write_indexed_video(clean, 60, 64, 96)
    data = bytearray(clean.read_bytes())
    video_pid_starts = [i for i in range(0, len(data), 188) if data[i : i + 3] == b"\x47\x41\x00"]
    moved = video_pid_starts[len(video_pid_starts) * 3 // 4]  # a frame's first packet, late in the file
    data[moved + 1] = 0x49  # PID 0x100 -> 0x900
    path = tmp_path / "moved.ts"
    path.write_bytes(bytes(data))
    frames = video_info(path)["frames"]
    assert frames == 59  # the moved packet's frame has no start any more
    got = _indices(read_video(path, indices=[0, 1, 2]))
    assert got == [0, 1, 2]
    assert read_video(path, 8, 4, strategy="uniform").shape == (8, 64, 96, 3)


def test_junk_past_the_retry_bound_is_named(tmp_path, monkeypatch):
    """Past MAX_READ_RETRIES the error said only EAGAIN's "Resource temporarily unavailable"."""
    clean = tmp_path / "clean.ts"
    write_indexed_video(clean, 30, 64, 96)
    path = tmp_path / "padded.ts"
    path.write_bytes(clean.read_bytes() + b"\0" * 4_000_000)
    monkeypatch.setattr(video, "MAX_READ_RETRIES", 3)
    with pytest.raises(VideoError, match="no video packet in 3 reads in a row: hundreds of MB of junk bytes"):
        read_video(path, 8)


@pytest.mark.parametrize("suffix", ["mp4", "mkv", "mov", "ts"])
def test_frames_far_apart_cost_a_seek_each_not_the_frames_between(tmp_path, monkeypatch, suffix):
    """uniform and several clips decoded every frame from the first sampled one to the last (one seek): 240
    frames here for frames 3 and 230. Each run of frames without a keyframe between them is now a seek. An
    MPEG-TS seek lands one keyframe past the one asked for (with B-frames): a seek to the keyframe before is
    tried, where MPEG-TS was decoded from its start."""
    path = tmp_path / f"long.{suffix}"
    write_indexed_video(path, 240, 64, 96, gop=12)
    decoded, fallbacks = [], []
    indexed, sequentially = video._Numbering.indexed, video._decode_sequentially
    monkeypatch.setattr(
        video._Numbering, "indexed", lambda self, stamp: decoded.append(stamp) or indexed(self, stamp)
    )
    monkeypatch.setattr(video, "_decode_sequentially", lambda *a: fallbacks.append(1) or sequentially(*a))
    for wanted in ([3, 230], [230, 3, 3, 120, 121, 122], sample_frame_indices(8, 4, 240, "uniform")):
        decoded.clear()
        assert _indices(read_video(path, indices=wanted)) == list(wanted)
        # Each run decodes from its keyframe (at most 11 frames before it) to its last frame, plus the frames
        # a decoder with B-frames holds back, and for MPEG-TS those of the seeks that landed past the run.
        container, _, index = video._indexed(path, 64 * 96)
        container.close()
        runs = video._runs(sorted(set(wanted)), index.keyframes)
        assert len(decoded) <= sum(r[-1] - r[0] + 12 + 4 + 4 * (suffix == "ts") for r in runs), (
            wanted,
            len(decoded),
        )
    assert not fallbacks
    assert video._runs([3, 5, 12, 13, 40], [0, 12, 24, 36]) == [[3, 5], [12, 13], [40]]
    assert video._runs([3, 5, 11], []) == [[3, 5, 11]]
