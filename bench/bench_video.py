"""CPU benchmarks of the video path (pytest-benchmark): decoding and preprocessing against what users run.

- decode: ``timesformer.video.read_video`` against the model cards' ``read_video_pyav`` (copied below as
  they publish it) on the same file and the same frame indices: 8 frames at sample rate 4 from a 10 s,
  30 fps, 640x360 H.264 clip, windows drawn with the cards' ``sample_frame_indices``, and 8 frames spread
  over the whole clip (evaluation's ``uniform``). Two encodings of the
  clip: a keyframe every 2 s (what phones and streaming sites write), and x264's default (keyframes at
  most 250 frames apart, so a 10 s clip has about two); and the first in an MPEG-TS (broadcast recordings).
- preprocess: ``timesformer.preprocess`` (the native op when built, and the pure-torch fallback) against
  ``transformers.VideoMAEImageProcessorPil`` on the same 8 decoded frames (-> 224^2, the TimeSformer
  checkpoints' mean and std).

Outputs are compared before timing. Run through the suite (``python -m bench``), or alone:

    pytest bench/bench_video.py --benchmark-json out.json
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

from timesformer.preprocess import VideoProcessor, native_available
from timesformer.video import read_video

MEAN, STD = [0.45] * 3, [0.225] * 3
SECONDS, FPS, HEIGHT, WIDTH = 10, 30, 360, 640
if os.environ.get("TIMESFORMER_BENCH_SHAPE") == "tiny":
    SECONDS, HEIGHT, WIDTH = 2, 72, 128


# ------------------------------------------------------------------ the model cards' code, as published


def read_video_pyav(container, indices):
    frames = []
    container.seek(0)
    start_index = indices[0]
    end_index = indices[-1]
    for i, frame in enumerate(container.decode(video=0)):
        if i > end_index:
            break
        if i >= start_index and i in indices:
            frames.append(frame)
    return np.stack([x.to_ndarray(format="rgb24") for x in frames])


def sample_frame_indices(clip_len, frame_sample_rate, seg_len, rng):
    converted_len = int(clip_len * frame_sample_rate)
    end_idx = rng.randint(converted_len, seg_len)
    start_idx = end_idx - converted_len
    indices = np.linspace(start_idx, end_idx, num=clip_len)
    indices = np.clip(indices, start_idx, end_idx - 1).astype(np.int64)
    return indices


# ------------------------------------------------------------------------------------------ inputs


def _render(i: int) -> np.ndarray:
    """A frame with texture and motion (a moving gradient, drifting blocks, noise): not trivially
    compressible, so the decoder does real work."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    rng = np.random.default_rng(i)
    img = np.stack(
        [
            127 + 100 * np.sin((x + 4 * i) / 37.0) * np.cos(y / 23.0),
            127 + 100 * np.sin((y - 3 * i) / 29.0),
            127 + 100 * np.cos((x + y + 5 * i) / 41.0),
        ],
        axis=-1,
    )
    for k in range(6):
        cy = int((HEIGHT * (k + 1) / 7 + 2 * i * (k % 3 - 1)) % (HEIGHT - 40))
        cx = int((WIDTH * (k + 1) / 7 + 3 * i * (1 - k % 2 * 2)) % (WIDTH - 40))
        img[cy : cy + 40, cx : cx + 40] = (k * 40) % 256
    img += rng.normal(0, 6, img.shape)
    return img.clip(0, 255).astype(np.uint8)


def clip_path(keyframe_interval: int | None, container: str = "mp4") -> str:
    """The benchmark clip, written once per machine (temp dir), with a keyframe every ``keyframe_interval``
    frames (None: x264's default), in an MP4 or an MPEG-TS (``container="ts"``)."""
    import av

    name = f"timesformer-bench-{SECONDS}s-{WIDTH}x{HEIGHT}-gop{keyframe_interval or 'default'}.{container}"
    path = os.path.join(tempfile.gettempdir(), name)
    if not os.path.exists(path):
        tmp = path + f".part.{container}"
        with av.open(tmp, "w") as container:
            stream = container.add_stream("libx264", rate=FPS)
            stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
            if keyframe_interval:
                stream.codec_context.gop_size = keyframe_interval
            for i in range(SECONDS * FPS):
                container.mux(stream.encode(av.VideoFrame.from_ndarray(_render(i), format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    return path


WINDOWS = [sample_frame_indices(8, 4, SECONDS * FPS, np.random.RandomState(k)).tolist() for k in range(8)]
# What evaluation takes (--strategy uniform, and each of --clips K): frames spread over the whole video.
UNIFORM = [np.linspace(0, SECONDS * FPS - 1, 8).round().astype(int).tolist()]
SAMPLINGS = {"8 frames at sample rate 4": WINDOWS, "8 uniform frames": UNIFORM}
ENCODINGS = {
    "keyframe every 2 s": (2 * FPS, "mp4"),
    "x264 default keyframes": (None, "mp4"),
    # MPEG-TS seeks land a keyframe late: read_video seeks again from the keyframe before.
    "keyframe every 2 s, MPEG-TS": (2 * FPS, "ts"),
}


@pytest.mark.parametrize("impl", ["ours", "reference"])
@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("sampling", list(SAMPLINGS))
def test_decode(benchmark, sampling, encoding, impl):
    import av

    path = clip_path(*ENCODINGS[encoding])

    def reference(indices):
        with av.open(path) as container:
            return read_video_pyav(container, indices)

    def ours(indices):
        return read_video(path, indices=indices).numpy()

    windows = SAMPLINGS[sampling]
    for w in windows[:3]:
        np.testing.assert_array_equal(ours(w), reference(w))
    state = {"k": 0}

    def step(fn):
        state["k"] += 1
        return fn(windows[state["k"] % len(windows)])

    frames = "8 frames" if sampling == "8 frames at sample rate 4" else sampling
    benchmark.group = f"decode {frames}, {SECONDS} s {WIDTH}x{HEIGHT} H.264 ({encoding})"
    benchmark.extra_info["role"] = impl
    benchmark(step, ours if impl == "ours" else reference)


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    return read_video(clip_path(2 * FPS), indices=WINDOWS[0])


@pytest.mark.parametrize("impl", ["native", "torch fallback", "reference"])
def test_preprocess(benchmark, frames, impl):
    import transformers

    reference = transformers.VideoMAEImageProcessorPil(image_mean=MEAN, image_std=STD)
    ours = VideoProcessor(image_mean=MEAN, image_std=STD)
    if impl == "native" and not native_available():
        pytest.skip("the native extension is not built")
    expected = reference(list(frames.numpy()), return_tensors="pt").pixel_values
    got = ours(frames, native=impl == "native")
    # PIL rounds the resized frame to 8 bits: one level of difference after normalization at most.
    assert (got - expected).abs().max() <= 1.01 / 255 / min(STD)
    group = f"preprocess 8 frames {WIDTH}x{HEIGHT} -> 224^2"
    if impl == "torch fallback":
        group += " (pure-torch fallback)"
    benchmark.group = group
    benchmark.extra_info["role"] = "reference" if impl == "reference" else "ours"
    if impl == "reference":
        benchmark(lambda: reference(list(frames.numpy()), return_tensors="pt").pixel_values)
    else:
        benchmark(ours, frames, native=impl == "native")


def test_preprocess_fallback_reference(benchmark, frames):
    """The PIL processor again, as the baseline of the fallback's group."""
    import transformers

    reference = transformers.VideoMAEImageProcessorPil(image_mean=MEAN, image_std=STD)
    benchmark.group = f"preprocess 8 frames {WIDTH}x{HEIGHT} -> 224^2 (pure-torch fallback)"
    benchmark.extra_info["role"] = "reference"
    benchmark(lambda: reference(list(frames.numpy()), return_tensors="pt").pixel_values)
