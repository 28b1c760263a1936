"""Hostile files and settings: the checkpoint loader reads nothing outside the model directory, ``read_video``
opens only local regular files, and bad setups fail before any work with an error that names the problem."""

from __future__ import annotations

import json
import os
import re
import threading

import pytest
import torch
from _videos import write_indexed_video
from conftest import randomize_, small_config_kwargs
from safetensors.torch import load_file, save_file

from timesformer import CheckpointError, TimesformerConfig, TimesformerForVideoClassification
from timesformer.video import VideoError, read_video, video_info

# ------------------------------------------------------------------------------ checkpoint shards


@pytest.fixture
def sharded(tmp_path):
    """A small checkpoint split into two shards with an index: ``(directory, state, index dict)``."""
    model = randomize_(TimesformerForVideoClassification(TimesformerConfig(**small_config_kwargs(seed=3))), 3)
    directory = tmp_path / "model"
    model.save_pretrained(directory)
    state = load_file(directory / "model.safetensors")
    os.remove(directory / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, ks in shards.items():
        save_file({k: state[k] for k in ks}, directory / name)
    index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory, state, index


def _write_index(directory, index):
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))


@pytest.mark.parametrize(
    "escape", ["../elsewhere/x.safetensors", "/etc/passwd", "/proc/self/environ", "a/../../x"]
)
def test_shard_names_outside_the_directory_are_refused(sharded, escape):
    directory, _, index = sharded
    (directory.parent / "elsewhere").mkdir(exist_ok=True)
    save_file({"x": torch.zeros(1)}, directory.parent / "elsewhere" / "x.safetensors")
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = escape
    _write_index(directory, index)
    with pytest.raises(CheckpointError, match=r"is outside the model directory"):
        TimesformerForVideoClassification.from_pretrained(directory)


@pytest.mark.parametrize("name", ["config.json", "preprocessor_config.json"])
def test_json_files_symlinked_outside_the_directory_are_refused(sharded, tmp_path, name):
    """They were read, and their values quoted in errors (``got {'api_key': ...}``)."""
    from timesformer.classify import load_model

    directory, _, _ = sharded
    secret = tmp_path / "credentials.json"
    secret.write_text(json.dumps({"api_key": "s3cr3t"}))
    if (directory / name).exists():
        os.remove(directory / name)
    os.symlink(secret, directory / name)
    with pytest.raises(CheckpointError, match=rf"{name} resolves \(through a symlink\) outside") as info:
        load_model(str(directory), backend="sdpa", device="cpu")
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("config.json", b'{"image_size": \xff}', "not a valid JSON config file (UnicodeDecodeError"),
        ("config.json", b"[" * 100000, "not a valid JSON config file (RecursionError"),
        ("config.json", b'{"hidden_size": ' + b"9" * 5000 + b"}", "not a valid JSON config file (ValueError"),
        ("model.safetensors.index.json", b"[" * 100000, "not a valid shard index (RecursionError"),
        ("preprocessor_config.json", b"\xff\xfe", "not a valid JSON file (UnicodeDecodeError"),
        ("preprocessor_config.json", b'{"resample": []}', "resample must be a PIL filter number"),
        ("preprocessor_config.json", b'{"size": null}', "expected size with 'shortest_edge'"),
    ],
)
def test_json_files_that_do_not_parse_name_the_file(sharded, name, content, message):
    from timesformer.classify import load_model

    directory, _, _ = sharded
    (directory / name).write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        load_model(str(directory), backend="sdpa", device="cpu")
    assert name in str(info.value) or "preprocessor config" in str(info.value)


@pytest.mark.parametrize(
    "name", ["config.json", "model.safetensors.index.json", "preprocessor_config.json", "adapter_config.json"]
)
def test_json_files_over_the_size_limit_are_refused_unread(sharded, monkeypatch, name):
    """A hostile or corrupt JSON file of gigabytes was read into memory whole."""
    from timesformer.classify import load_model
    from timesformer.configuration import MAX_JSON_BYTES

    directory, _, _ = sharded
    with open(directory / name, "r+b" if (directory / name).exists() else "wb") as f:
        f.truncate(MAX_JSON_BYTES + 1)  # sparse: nothing is written, and nothing may be read
    reads, load = [], json.load
    monkeypatch.setattr(
        "json.load", lambda f, *a, **k: reads.append(os.path.basename(f.name)) or load(f, *a, **k)
    )
    with pytest.raises(ValueError, match=rf"{re.escape(name)}: {MAX_JSON_BYTES + 1:,} bytes, over the"):
        load_model(str(directory), backend="sdpa", device="cpu")
    assert name not in reads


def test_a_shard_symlinked_outside_the_directory_is_refused(sharded, tmp_path):
    directory, _, _ = sharded
    outside = tmp_path / "outside.safetensors"
    os.replace(directory / "model-00002-of-00002.safetensors", outside)
    os.symlink(outside, directory / "model-00002-of-00002.safetensors")
    with pytest.raises(CheckpointError, match=r"resolves \(through a symlink\) outside the model directory"):
        TimesformerForVideoClassification.from_pretrained(directory)
    # A hub snapshot's files link into the repository's blob store: that is allowed.
    repo = tmp_path / "models--x--y"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "abc123"
    os.makedirs(snapshot)
    for f in directory.iterdir():
        target = repo / "blobs" / f.name
        os.replace(os.path.realpath(f), target)
        os.symlink(target, snapshot / f.name)
    TimesformerForVideoClassification.from_pretrained(snapshot)


@pytest.mark.parametrize(
    "weight_map,message",
    [
        ([1, 2], "weight_map must be a non-empty object"),
        ({}, "weight_map must be a non-empty object"),
        ({"a": 3}, "shard names must be non-empty strings, got 3"),
        ({"a": ""}, "shard names must be non-empty strings"),
    ],
)
def test_a_malformed_index_is_a_checkpoint_error(sharded, weight_map, message):
    directory, _, index = sharded
    index["weight_map"] = weight_map
    _write_index(directory, index)
    with pytest.raises(CheckpointError, match=message):
        TimesformerForVideoClassification.from_pretrained(directory)


def test_keys_come_from_the_shard_the_index_names(sharded):
    directory, state, index = sharded
    # Shard 1 also carries a wrong copy of a key the index assigns to shard 2: it must not override it.
    key = next(k for k, n in index["weight_map"].items() if n.startswith("model-00002"))
    shard1 = directory / "model-00001-of-00002.safetensors"
    tensors = load_file(shard1)
    tensors[key] = torch.full_like(state[key], 1e6)
    save_file(tensors, shard1)
    model = TimesformerForVideoClassification.from_pretrained(directory)
    assert torch.equal(model.state_dict()[key], state[key])
    # A key its shard lacks is named.
    index["weight_map"][key] = "model-00001-of-00002.safetensors"
    del tensors[key]
    save_file(tensors, shard1)
    _write_index(directory, index)
    with pytest.raises(
        CheckpointError, match=r"1 key\(s\) assigned to model-00001-of-00002.safetensors are not in it"
    ):
        TimesformerForVideoClassification.from_pretrained(directory)


# ----------------------------------------------------------------------------------- video paths


@pytest.fixture
def clip(tmp_path):
    path = tmp_path / "clip.mp4"
    write_indexed_video(path, 12, 32, 48, gop=4)
    return path


@pytest.mark.parametrize("name", ["http:/127.0.0.1:9/x.mp4", "pipe:0", "concat:a.mp4|b.mp4", "file:x.mp4"])
def test_paths_shaped_like_protocols_are_local_files(clip, tmp_path, monkeypatch, name):
    """FFmpeg would send an HTTP request, read stdin or concatenate: the file of that name is read instead."""
    monkeypatch.chdir(tmp_path)
    os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
    os.link(clip, name)
    frames = read_video(name, 4, 2, strategy="center")
    assert torch.equal(frames, read_video(clip, 4, 2, strategy="center"))


def _returns_within(fn, seconds: float):
    result = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    return result


def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "video.mp4"
    os.mkfifo(fifo)
    result = _returns_within(lambda: read_video(fifo, 4, 2), 20)
    assert isinstance(result.get("error"), VideoError)
    assert "not a regular file" in str(result["error"])


def test_devices_and_non_paths_are_refused():
    with pytest.raises(VideoError, match="not a regular file"):
        read_video("/dev/zero", 4, 2)
    with pytest.raises(VideoError, match="expected a file path, got int"):
        read_video(0, 4, 2)


# ----------------------------------------------------------------------------------- model limits


@pytest.mark.parametrize("safe_serialization", [True, False])
def test_a_model_folder_whose_name_is_not_utf8_saves_and_loads(tmp_path, safe_serialization):
    """safetensors takes only UTF-8 paths: such a folder (a Latin-1 name) could not be loaded, and the error
    called its intact weights file "corrupt or truncated"."""
    directory = os.fsdecode(os.path.join(os.fsencode(tmp_path), b"mod\xe8le"))
    model = randomize_(TimesformerForVideoClassification(TimesformerConfig(**small_config_kwargs())), seed=3)
    model.save_pretrained(directory, safe_serialization=safe_serialization)
    loaded = TimesformerForVideoClassification.from_pretrained(directory)
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert loaded.state_dict().keys() == expected.keys()


def test_a_config_that_does_not_fit_the_weights_fails_before_building_the_model(sharded, monkeypatch):
    import timesformer.modeling as modeling

    directory, _, _ = sharded
    config = json.loads((directory / "config.json").read_text())
    config["intermediate_size"] = 100_000  # within the bounds, far from the checkpoint's
    (directory / "config.json").write_text(json.dumps(config))
    built = []
    real_init = modeling.TimesformerForVideoClassification.__init__

    def init(self, *args, **kwargs):
        built.append(torch.empty(0).device.type)  # the default device in force: "meta" for the skeleton
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(modeling.TimesformerForVideoClassification, "__init__", init)
    with pytest.raises(CheckpointError, match=r"intermediate.dense.weight: checkpoint has shape"):
        TimesformerForVideoClassification.from_pretrained(directory)
    assert built == ["meta"]  # only the storage-less skeleton was built


@pytest.mark.parametrize("dtype", ["float8_e4m3fn", torch.int8, "complex64"])
def test_dtypes_without_kernels_are_refused_at_load(sharded, dtype):
    directory, _, _ = sharded
    with pytest.raises(ValueError, match=r"dtype must be one of float32, float16, bfloat16, float64"):
        TimesformerForVideoClassification.from_pretrained(directory, dtype=dtype)


def test_the_prepared_weight_cache_is_bounded():
    from torch import nn

    from timesformer.weight_cache import MAX_ENTRIES_PER_MODULE, cached_weights

    module, weight = nn.Linear(3, 3), torch.randn(3)
    for frames in range(5 * MAX_ENTRIES_PER_MODULE):  # e.g. one table per clip length seen
        cached_weights(module, f"table_{frames}", (weight,), lambda w, n=frames: (w * n,))
    cache = module.__dict__["_weight_cache"]
    assert len(cache) == MAX_ENTRIES_PER_MODULE
    assert f"table_{5 * MAX_ENTRIES_PER_MODULE - 1}" in cache and "table_0" not in cache
    # A recently used entry stays.
    cached_weights(module, f"table_{4 * MAX_ENTRIES_PER_MODULE}", (weight,), lambda w: (w,))
    cached_weights(module, "new", (weight,), lambda w: (w,))
    assert f"table_{4 * MAX_ENTRIES_PER_MODULE}" in cache


# ---------------------------------------------------------------------------------- video limits


def _png_header_only(path, width: int, height: int) -> None:
    """A few hundred bytes that announce a ``width x height`` animated PNG (a video to FFmpeg; named like an
    MP4)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    animation = chunk(b"acTL", struct.pack(">II", 1, 0))  # one frame, looping
    frame = chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, width, height, 0, 0, 1, 25, 0, 0))
    body = zlib.compress(b"\0" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + animation
        + frame
        + chunk(b"IDAT", body)
        + chunk(b"IEND", b"")
    )


def test_huge_frames_are_refused_before_decoding(tmp_path, clip):
    bomb = tmp_path / "bomb.mp4"
    _png_header_only(bomb, 16000, 16000)
    result = _returns_within(lambda: read_video(bomb, 1, 1), 20)
    assert isinstance(result.get("error"), VideoError), result
    assert "16000x16000 pixels are over the limit of 16,777,216 pixels" in str(result["error"])
    with pytest.raises(VideoError, match=r"48x32 pixels are over the limit of 1,000 pixels"):
        read_video(clip, 4, 2, max_frame_pixels=1000)
    assert read_video(clip, 4, 2, max_frame_pixels=48 * 32).shape == (4, 32, 48, 3)


def _size_switching_video(path, sizes: list[tuple[int, int, int]]) -> None:
    """An H.264 stream whose frame size changes midway (one encoder per ``(width, height, frames)`` run, no
    B-frames, streams concatenated, remuxed into mp4 with one timestamp per frame)."""
    import fractions
    import io

    import av
    import numpy as np

    raw = io.BytesIO()
    for width, height, count in sizes:
        part = io.BytesIO()
        with av.open(part, "w", format="h264") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.codec_context.max_b_frames = 0  # decode order is presentation order: the timestamps below
            for i in range(count):
                # Grey 40 * i on the left half, 100 levels more on the right (i counted per run).
                pixels = np.full((height, width, 3), 40 * i % 256, dtype=np.uint8)
                pixels[:, width // 2 :] = (40 * i + 100) % 256
                out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
            out.mux(stream.encode())
        raw.write(part.getvalue())
    if str(path).endswith(".h264"):  # the raw stream itself: no timestamps, frames counted by decoding
        path.write_bytes(raw.getvalue())
        return
    raw.seek(0)
    with av.open(raw, format="h264") as src, av.open(str(path), "w") as dst:
        stream = dst.add_stream_from_template(src.streams.video[0])
        for k, packet in enumerate(p for p in src.demux(src.streams.video[0]) if p.size):
            packet.stream, packet.time_base, packet.pts, packet.dts = stream, fractions.Fraction(1, 30), k, k
            dst.mux(packet)


def test_a_stream_that_grows_its_frames_midway_is_held_to_the_limit(tmp_path):
    """The header's size is checked before decoding; every decoded frame is checked too."""
    path = tmp_path / "switch.mp4"
    _size_switching_video(path, [(64, 48, 2), (320, 240, 6)])
    with pytest.raises(VideoError, match=r"a frame of 320x240 pixels is over the limit of 3,072 pixels"):
        read_video(path, indices=[0, 4], max_frame_pixels=64 * 48)
    assert read_video(path, indices=[0, 1], max_frame_pixels=64 * 48).shape == (2, 48, 64, 3)


@pytest.mark.parametrize("suffix", ["mp4", "h264"])
@pytest.mark.parametrize("indices", [[0, 4], [3, 5], [7, 1, 6], list(range(8))])
def test_frames_of_a_size_change_midway_are_scaled_to_the_first_size(tmp_path, indices, suffix):
    """As FFmpeg's command line does (``-autoscale``): every frame at the header's (first frames') size,
    ``video_info``'s, whichever frames are read, through a seek or from the start. (A raw stream, counted by
    decoding it, came at its last frame's size.)"""
    path = tmp_path / f"switch.{suffix}"
    _size_switching_video(path, [(64, 48, 3), (320, 240, 5)])
    info = video_info(path)
    assert (info["width"], info["height"], info["frames"]) == (64, 48, 8)
    frames = read_video(path, indices=indices)
    assert frames.shape == (len(indices), 48, 64, 3)
    for frame, i in zip(frames, indices, strict=True):
        k = i if i < 3 else i - 3  # the frame's place in its run
        # The whole frame, scaled (a crop would be one grey): its left and right quarters, away from the edge
        # that encoding and scaling blur.
        left, right = (frame[:, s].double().mean().item() for s in (slice(0, 16), slice(48, 64)))
        assert abs(left - 40 * k % 256) < 6 and abs(right - (40 * k + 100) % 256) < 6, (i, left, right)


def test_a_display_rotation_that_changes_midway_is_an_error(clip, monkeypatch):
    """Frames turned by a display matrix that only some frames carry cannot make one tensor: said so."""
    import numpy as np

    import timesformer.video as video

    quarter_turn = np.array([0, 65536, 0, -65536, 0, 0, 0, 0, 1 << 30], np.int32)
    monkeypatch.setattr(video, "_display_matrix", lambda frame: quarter_turn if frame.pts >= 2 else None)
    with pytest.raises(
        VideoError, match=r"the display rotation changes within the video \(48x32 and 32x48 frames\)"
    ):
        read_video(clip, indices=[0, 3])
    assert read_video(clip, indices=[3, 4]).shape == (2, 48, 32, 3)


def test_frame_counts_are_bounded(clip):
    with pytest.raises(ValueError, match=r"num_frames must be 1 to 1024, got 100000"):
        read_video(clip, 100_000, 1)
    with pytest.raises(ValueError, match=r"num_frames must be 1 to 1024, got 0"):
        read_video(clip, 0, 1)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sample_rate": float("nan")}, "sample_rate must be an integer, got nan (float)"),  # an IndexError
        ({"sample_rate": 2.5}, "sample_rate must be an integer, got 2.5"),  # taken as is
        ({"num_frames": 2.5}, "num_frames must be an integer, got 2.5"),
        ({"num_frames": True}, "num_frames must be an integer, got True (bool)"),  # one frame
        ({"max_frame_pixels": float("nan")}, "max_frame_pixels must be an integer, got nan"),  # no limit
        ({"max_num_frames": "8"}, "max_num_frames must be an integer, got '8' (str)"),
    ],
)
def test_numbers_that_are_not_integers_are_refused(clip, kwargs, message):
    import numpy as np

    with pytest.raises(TypeError, match=re.escape(message)):
        read_video(clip, **{"num_frames": 4, "sample_rate": 2, "strategy": "center", **kwargs})
    with pytest.raises(ValueError, match=r"sample_rate must be >= 1, got 0"):
        read_video(clip, 4, 0)
    assert read_video(clip, np.int64(4), np.int32(2), max_frame_pixels=np.int64(48 * 32)).shape == (
        4,
        32,
        48,
        3,
    )


# ------------------------------------------------------------------------------ the command line

import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-m", "timesformer", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        **kwargs,
    )


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory) -> Path:
    from timesformer.synthetic import sample_clip

    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    sample_clip(path, 1, seed=5, height=48, width=64)
    return path


@pytest.fixture
def model_dir(tmp_path) -> Path:
    from timesformer.assets import BUNDLED_MODEL

    directory = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, directory)
    return directory


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _one_error_line(proc, message: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_bad_setups_fail_before_decoding_with_one_line(model_dir, demo_clip):
    missing = "no-such-video.mp4"  # a setup error must come first, not this video's
    _one_error_line(_cli("classify", missing, "--backend", "triton"), "backend 'triton' cannot run on cpu")
    _one_error_line(_cli("classify", missing, "--device", "cuda"), "CUDA is not available")
    _one_error_line(_cli("classify", missing, "--device", "tpu:0"), "is not a device name")
    _one_error_line(_cli("classify", missing, "--device", "meta"), "device meta: expected cpu or cuda")
    preprocessor = model_dir / "preprocessor_config.json"
    _edit_json(preprocessor, crop_size={"height": 36, "width": 36})
    _one_error_line(
        _cli("classify", missing, "--model", model_dir),
        "crop_size 36x36 is not a multiple of the model's patch size 8x8",
    )
    _edit_json(preprocessor, crop_size={"height": 32, "width": 32}, do_center_crop=False)
    _one_error_line(_cli("classify", missing, "--model", model_dir), "do_center_crop is false")
    _edit_json(preprocessor, do_center_crop=True, image_std=[0.2, -0.1, 0.2])
    _one_error_line(_cli("classify", missing, "--model", model_dir), "image_std must be positive and finite")
    # Positive and finite, but out of float32's range once applied: every video was "not finite".
    _edit_json(preprocessor, image_std=[1e-45, 0.2, 0.2])
    _one_error_line(_cli("classify", missing, "--model", model_dir), "out of the range a model takes")
    # A crop no model can run in reasonable time (it asked for 25 GB per video).
    _edit_json(preprocessor, image_std=[0.2, 0.2, 0.2], size={"shortest_edge": 16384}, crop_size=16384)
    _one_error_line(
        _cli("classify", missing, "--model", model_dir), "crops over 4,194,304 pixels (2048x2048) are not"
    )
    # Within the pixels, but so many patches (attention costs their square) that a video took hours.
    _edit_json(preprocessor, size={"shortest_edge": 36}, crop_size=1032)
    _one_error_line(
        _cli("classify", missing, "--model", model_dir),
        "crop_size 1032x1032 is 129x129 patches of 8x8 per frame; at most 16,384 are supported",
    )
    # A resize that would refuse every 16:9 video.
    _edit_json(preprocessor, size={"shortest_edge": 2048}, crop_size=32)
    _one_error_line(
        _cli("classify", missing, "--model", model_dir), "would resize a 16:9 video over 4,194,304 pixels"
    )
    _edit_json(preprocessor, size={"shortest_edge": 36}, crop_size=32)
    _edit_json(preprocessor, image_std=[0.2, 0.2, 0.2], rescale_factor=0)
    _one_error_line(
        _cli("classify", missing, "--model", model_dir), "rescale_factor must be positive and finite"
    )
    preprocessor.write_text("{ not json")
    _one_error_line(
        _cli("classify", missing, "--model", model_dir), "preprocessor_config.json: not a valid JSON file"
    )
    _one_error_line(
        _cli("evaluate", demo_clip.parent, "--output", model_dir.parent / "o", "--model", model_dir),
        "preprocessor_config.json: not a valid JSON file",
    )
    _edit_json(model_dir / "config.json", id2label={"0": "a", "x": "b", "2": "c", "3": "d"})
    _one_error_line(
        _cli("classify", missing, "--model", model_dir), "id2label keys must be class indices 0..n-1, got 'x'"
    )


def test_settings_that_work_once_understood(model_dir, demo_clip):
    # return_dict false in config.json, and a scalar image_std (one value for every channel).
    _edit_json(model_dir / "config.json", return_dict=False)
    _edit_json(model_dir / "preprocessor_config.json", image_std=0.225)
    proc = _cli("classify", demo_clip, "--model", model_dir)
    assert proc.returncode == 0 and "%" in proc.stdout, proc.stderr


def test_nan_output_is_an_error_for_that_video(model_dir, demo_clip):
    from safetensors.torch import load_file, save_file

    weights = load_file(model_dir / "model.safetensors")
    key = next(k for k in weights if k.endswith("classifier.weight"))
    weights[key][0, 0] = float("nan")
    save_file(weights, model_dir / "model.safetensors")
    proc = _cli("classify", demo_clip, "--model", model_dir, "--json")
    assert proc.returncode == 1
    record = json.loads(proc.stdout, parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON"))
    assert "not finite" in record["error"]
    proc = _cli("classify", demo_clip, "--model", model_dir)
    assert "nan%" not in proc.stdout and "not finite" in proc.stderr


def test_names_and_labels_are_escaped_in_text_output(model_dir, demo_clip, tmp_path):
    tricky = tmp_path / "a\n  99.99%  moving right\nb.mp4"
    shutil.copy(demo_clip, tricky)
    _edit_json(model_dir / "config.json",
               id2label={"0": "moving right", "1": "\x1b[2Jleft", "2": "r", "3": "l"},
               label2id={"moving right": 0, "\x1b[2Jleft": 1, "r": 2, "l": 3})  # fmt: skip
    proc = _cli("classify", tricky, "--model", model_dir)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == str(tricky).replace("\n", "\\n")
    assert "\x1b" not in proc.stdout and "\\x1b[2Jleft" in proc.stdout
    assert not any(line.startswith("  99.99%") for line in lines)


def test_sigint_stops_cleanly_with_complete_lines(demo_clip, tmp_path):
    videos = []
    for i in range(40):
        videos.append(tmp_path / f"v{i:02d}.mp4")
        os.link(demo_clip, videos[-1])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # SIGINT at its default: a test run started in the background of a script inherits it ignored (bash),
    # and Python then installs no KeyboardInterrupt handler.
    proc = subprocess.Popen([sys.executable, "-m", "timesformer", "classify", *map(str, videos), "--json",
                             "--batch-size", "1", "--workers", "1"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # fmt: skip
    first = proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    rest, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    lines = [first, *rest.splitlines(keepends=True)]
    assert len(lines) < 40 and all(line.endswith("\n") and json.loads(line) for line in lines)


@pytest.mark.parametrize("command", [["info"], ["classify", "CLIP", "CLIP", "CLIP", "CLIP", "--top-k", "4"]])
def test_a_reader_that_goes_away_gets_no_traceback(demo_clip, command):
    command = [str(demo_clip) if c == "CLIP" else c for c in command]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.Popen([sys.executable, "-m", "timesformer", *command], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr


def test_closed_or_full_stdout_is_an_error(demo_clip):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Started with stdout closed (`timesformer info >&-`): Python has no sys.stdout.
    closed = subprocess.run([sys.executable, "-m", "timesformer", "info"], cwd=ROOT, env=env,
                            preexec_fn=lambda: os.close(1), stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert closed.returncode == 2 and "standard output is closed" in closed.stderr
    # Closed while running: the first write fails.
    code = "import os, sys; os.close(1); from timesformer.__main__ import main; sys.exit(main(['info']))"
    closed = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    assert closed.returncode == 1 and "cannot write the output: Bad file descriptor" in closed.stderr
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "timesformer", "classify", str(demo_clip)], cwd=ROOT, env=env,
                              stdout=full, stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert (
        proc.returncode == 1 and "No space left on device" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_sample_and_demo_refuse_bad_arguments(tmp_path):
    _one_error_line(_cli("sample", tmp_path / "missing" / "x.mp4"), "does not exist")
    _one_error_line(_cli("sample", tmp_path / "x.gif"), "expected a file name ending in .mp4, .mkv, .mov")
    # A digit to str.isdigit that int() refuses: int()'s traceback before.
    _one_error_line(_cli("sample", tmp_path / "x.mp4", "--label", "\u00b2"), "unknown label '\u00b2'")
    for args, message in [
        (["--repeats", "0"], "--repeats: must be 1 to 1,000, got 0"),
        (["--frames", "-1"], "--frames: must be 1 to 4,096, got -1"),
        (["--frames", "0"], "--frames: must be 1 to 4,096, got 0"),
    ]:
        proc = _cli("demo", *args)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    _one_error_line(_cli("demo", "--device", "cuda"), "CUDA is not available")
    # Each bound alone is fine, together 10 TB: one line, not the allocator's traceback.
    _one_error_line(
        _cli("demo", "--batch-size", "4096", "--frames", "4096"),
        "not enough memory on cpu for --preset base --batch-size 4096 --frames 4096",
    )
    proc = _cli("classify", "x.mp4", "--num-frames", "0")
    assert proc.returncode == 2 and "--num-frames: must be 1 to 1,024, got 0" in proc.stderr
    # A negative seed failed on every video with numpy's words, not naming --seed.
    proc = _cli("classify", "x.mp4", "--strategy", "random", "--seed", "-1")
    assert proc.returncode == 2 and "--seed: must be 0 to 4,294,967,295, got -1" in proc.stderr


def test_no_progress_bar_when_stderr_is_not_a_terminal(demo_clip, tmp_path):
    videos = [tmp_path / f"v{i}.mp4" for i in range(5)]
    for v in videos:
        os.link(demo_clip, v)
    (tmp_path / "bad.mp4").write_bytes(b"x")
    proc = _cli("classify", *videos, tmp_path / "bad.mp4")
    assert proc.returncode == 1
    assert "[#" not in proc.stderr and proc.stderr.strip().startswith("timesformer: error:"), proc.stderr


def test_setups_that_ran_unsaid_are_warned_about_or_refused(model_dir, demo_clip):
    """Ran without a word: a preprocessor_config.json edit that video_preprocessor_config.json beside it
    outvoted, and 224x224 crops (the defaults, without a preprocessor config) for a 32x32 model, about 50x the
    compute; a 1-channel model failed on every video after decoding it, then exited 0."""
    from timesformer.preprocess import VideoProcessor

    image = model_dir / "preprocessor_config.json"
    VideoProcessor.from_pretrained(image).save_pretrained(model_dir)  # writes both files
    _edit_json(image, image_mean=[0.5, 0.5, 0.5])
    proc = _cli("classify", demo_clip, "--model", model_dir, "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    warning = (
        "timesformer: warning: " + str(model_dir / "video_preprocessor_config.json") + " and "
        "preprocessor_config.json beside it disagree on image_mean; using video_preprocessor_config.json"
    )
    assert proc.stderr.startswith(warning) and len(proc.stderr.splitlines()) == 1, proc.stderr
    image.unlink()
    (model_dir / "video_preprocessor_config.json").unlink()
    proc = _cli("classify", demo_clip, "--model", model_dir, "--top-k", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith(
        "timesformer: warning: the default preprocessing (no preprocessor config): crops of 224x224 for a model "
        "of image_size 32x32: its position embeddings are interpolated to 28x28 patches"
    ), proc.stderr
    gray = TimesformerConfig.from_pretrained(model_dir)
    gray.num_channels = 1
    TimesformerForVideoClassification(gray).save_pretrained(model_dir)
    _one_error_line(
        _cli("classify", demo_clip, "--model", model_dir),
        "the model takes 1-channel frames; videos are decoded to RGB (3 channels)",
    )


@pytest.mark.parametrize(
    "mean,std,rescale,message",
    [
        ((float("nan"), 0.4, 0.4), 0.2, 1 / 255, r"image_mean must be finite numbers"),
        (0.45, (0.2, float("inf"), 0.2), 1 / 255, r"image_std must be finite numbers"),
        (0.45, (0.2, -0.2, 0.2), 1 / 255, r"image_std must be positive"),
        (0.45, 0.2, 0.0, r"rescale_factor must be a positive finite number, got 0.0"),
        # Positive and finite, but every normalized pixel overflowed float32 (every video "not finite").
        (0.45, (0.2, 1e-45, 0.2), 1 / 255, r"out of the range a model takes"),
        (0.45, 0.2, 1e308, r"out of the range a model takes"),
        # Finite in float32, but past what the model's LayerNorm squares without overflow.
        (0.45, 0.2, 1e20, r"values up to 65504"),
        (0.0, 1e-3, 1.0, r"values up to 65504"),
        # A JSON object's keys were taken for the values: {"1": 0, ...} became (1, 2, 3).
        ({"1": 0.4, "2": 0.4, "3": 0.4}, 0.2, 1 / 255, r"image_mean must be 3 numbers"),
        (0.45, {0.2, 0.3, 0.25}, 1 / 255, r"image_std must be 3 numbers"),
    ],
)
def test_input_normalization_must_be_finite(mean, std, rescale, message):
    model = TimesformerForVideoClassification(TimesformerConfig(**small_config_kwargs(seed=1)))
    with pytest.raises(ValueError, match=message):
        model.set_input_normalization(mean, std, rescale)


def test_the_processor_checks_the_normalization_it_applies():
    """The bound holds for the values applied: a std that ``do_normalize: false`` leaves unused is no reason
    to refuse the config, and ``do_rescale: false`` (0..255 pixels) is checked as applied."""
    from timesformer.preprocess import VideoProcessor

    VideoProcessor(do_normalize=False, image_std=[1e-9] * 3)
    with pytest.raises(ValueError, match="values up to 65504"):
        VideoProcessor(image_std=[1e-9] * 3)
    VideoProcessor(image_mean=0.0, image_std=0.01)  # 0..100 applied
    with pytest.raises(ValueError, match="values up to 65504"):
        VideoProcessor(do_rescale=False, image_mean=0.0, image_std=0.001)  # 0..255000 applied


def test_demo_out_of_memory_without_a_message_is_one_line(monkeypatch, capsys):
    """Python's allocator raises MemoryError with no text: the message took its last line (IndexError)."""
    from timesformer import __main__ as cli

    def out_of_memory(args, device):
        raise MemoryError

    monkeypatch.setattr(cli, "_demo", out_of_memory)
    assert cli.main(["demo", "--batch-size", "64"]) == 2
    assert capsys.readouterr().err.strip() == (
        "timesformer: error: not enough memory on cpu for --preset base --batch-size 64: MemoryError"
    )
