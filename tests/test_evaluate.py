"""``timesformer evaluate``: data layouts, views, results that survive a kill, and torchrun across processes.

The videos are clips of the bundled model's synthetic classes (``timesformer sample``), written as MP4 files;
the bundled model classifies them all correctly, so any lost, doubled or mixed-up video shows in the numbers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import fail_batches_of_several

from timesformer.evaluate import (
    PREDICTIONS,
    clip_indices,
    clip_starts,
    load_samples,
    read_predictions,
)
from timesformer.preprocess import crop_boxes
from timesformer.synthetic import LABELS, sample_clip
from timesformer.video import sample_frame_indices

ROOT = Path(__file__).resolve().parent.parent
LABEL2ID = {name: i for i, name in enumerate(LABELS)}


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """4 classes x 2 clips in class-named folders, plus one file that is not a video (9 in all)."""
    root = tmp_path_factory.mktemp("videos")
    for label, name in enumerate(LABELS):
        (root / name).mkdir()
        for k in range(2):
            sample_clip(root / name / f"clip{k}.mp4", label, seed=100 + 10 * k + label, height=72, width=96)
    (root / LABELS[1] / "broken.mp4").write_bytes(b"this is not a video")
    return root


def _cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "timesformer", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def _evaluate_args(videos: Path, out: Path, *extra: str) -> list[str]:
    """``timesformer evaluate`` one video per batch, decoding in the main process: many small steps to kill."""
    return ["timesformer", "evaluate", str(videos), "--output", str(out), "--workers", "0", "--batch-size", "1",
            *extra]  # fmt: skip


def _metrics(out: Path) -> dict:
    metrics = json.loads((out / "metrics.json").read_text())
    # What differs between runs of the same evaluation: timing and how the work was split.
    for key in ("wall_time_s", "videos_per_second", "time_per_video_ms", "videos_evaluated", "world_size"):
        metrics.pop(key)
    return metrics


def _paths(out: Path) -> list[str]:
    return [r["path"] for r in read_predictions(out / PREDICTIONS)]


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory) -> Path:
    """One uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("reference")
    _cli("evaluate", str(videos), "--output", str(out), "--workers", "2", "--batch-size", "3")
    return out


# ------------------------------------------------------------------------------------------ data


def test_folder_layout(videos):
    samples = load_samples(videos, LABEL2ID, 4)
    assert len(samples) == 9 and [s.path for s in samples] == sorted(s.path for s in samples)
    assert {(Path(s.path).parent.name, s.label) for s in samples} == {(n, i) for n, i in LABEL2ID.items()}


def test_files_beside_the_class_folders_are_named_in_a_warning(videos, tmp_path):
    """A flat or mixed layout: the videos at DATA's top level were left out without a word ("1 of 1 videos
    scored, 100%")."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(videos, data)
    for name in ("a.mp4", "b.mp4", "c.MKV", "d.webm"):
        shutil.copy(next((data / LABELS[0]).iterdir()), data / name)
    for name in ("README", "LICENSE", "classes.txt", "labels.pbtxt"):  # not named as videos
        (data / name).write_text("x")
    with pytest.warns(
        UserWarning,
        match=r"4 file\(s\) beside the class folders are not evaluated .*'a.mp4', 'b.mp4', 'c.MKV', ...$",
    ):
        assert len(load_samples(data, LABEL2ID, 4)) == 9


def test_list_file_separators_relative_paths_names_and_indices(tmp_path):
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "list.txt"
    listing.write_text("# comment\n\na.mp4 moving left\nb.mp4\t2\n/abs/c.mp4,moving right\n d e.mp4 , 3\n")
    samples = load_samples(listing, LABEL2ID, 4)
    assert len(samples) == 4 and [s.path for s in samples] == sorted(s.path for s in samples)
    by_name = {Path(s.path).name: s for s in samples}
    assert by_name["a.mp4"].path == str(tmp_path / "sub" / "a.mp4")  # relative to the list's folder
    assert by_name["c.mp4"].path == "/abs/c.mp4" and by_name["c.mp4"].label == 0
    assert by_name["b.mp4"].label == 2 and by_name["d e.mp4"].label == 3


def test_bad_data_gives_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_samples(tmp_path / "missing", LABEL2ID, 4)
    with pytest.raises(ValueError, match="no videos; expected class-named subfolders"):
        load_samples(tmp_path, LABEL2ID, 4)
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nb.mp4\n")
    with pytest.raises(ValueError, match=r"line 2: expected 'path label'"):
        load_samples(listing, LABEL2ID, 4)
    listing.write_text("a.mp4 7\n")
    with pytest.raises(ValueError, match=r"line 1: label index 7 is out of range 0-3"):
        load_samples(listing, LABEL2ID, 4)
    listing.write_text("a.mp4 jumping\nb.mp4 swimming\nc.mp4 jumping\n")
    with pytest.raises(
        ValueError, match=r"2 label name\(s\) are not class names of the model: 'jumping' \(line 1\)"
    ):
        load_samples(listing, LABEL2ID, 4)
    with pytest.raises(ValueError, match=r"or an index 0-3$"):  # other names of a class count no class
        load_samples(listing, {**LABEL2ID, "another name": 1}, 4)
    listing.write_text("")
    with pytest.raises(ValueError, match="the list file has no videos"):
        load_samples(listing, LABEL2ID, 4)
    (tmp_path / "swimming").mkdir()
    (tmp_path / "swimming" / "x.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match=r"'swimming' \(folder "):
        load_samples(tmp_path, LABEL2ID, 4)


def test_duplicates_warn_and_count_once(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4 0\nb.mp4 1\na.mp4 moving right\nsub/../a.mp4 0\n./b.mp4 1\n")
    with pytest.warns(UserWarning, match="3 duplicate path"):
        samples = load_samples(listing, LABEL2ID, 4)
    assert [s.path for s in samples] == [str(tmp_path / "a.mp4"), str(tmp_path / "b.mp4")]
    listing.write_text("a.mp4 0\na.mp4 1\n")
    with warnings.catch_warnings(), pytest.raises(ValueError, match="listed with two labels"):
        warnings.simplefilter("ignore")
        load_samples(listing, LABEL2ID, 4)


# ----------------------------------------------------------------------------------------- views


def test_temporal_clips_are_uniform_and_spatial_crops_follow_the_long_side():
    assert clip_starts(100, 32, 1) == [34]
    assert clip_starts(100, 32, 3) == [0, 34, 68]
    assert clip_starts(20, 32, 3) == [0, 0, 0]
    assert clip_starts(100, 32, 4) == [0, 23, 45, 68]  # rounded, not floored
    assert clip_indices(100, 8, 4, 3) == [
        [0, 4, 9, 13, 18, 22, 27, 31],
        [34, 38, 43, 47, 52, 56, 61, 65],
        [68, 72, 77, 81, 86, 90, 95, 99],
    ]
    for total in (32, 33, 99, 100, 101, 301):  # one clip is the "center" strategy's
        assert clip_indices(total, 8, 4, 1) == [sample_frame_indices(8, 4, total, "center")]
    assert clip_indices(10, 8, 4, 2) == [[0, 4, 8, 8, 8, 8, 8, 8]] * 2  # short video: the last frame repeats
    assert crop_boxes(224, 298, 224, 224, 1) == [(0, 37)]
    assert crop_boxes(224, 298, 224, 224, 3) == [(0, 0), (0, 37), (0, 74)]  # left, center, right
    assert crop_boxes(298, 224, 224, 224, 3) == [(0, 0), (37, 0), (74, 0)]  # top, center, bottom
    assert crop_boxes(256, 256, 224, 224, 3) == [(16, 0), (16, 16), (16, 32)]  # square: left to right
    with pytest.raises(ValueError, match="crops must be 1 or 3, got 2"):
        crop_boxes(224, 298, 224, 224, 2)


@pytest.fixture(scope="module")
def big_frames(tmp_path_factory) -> Path:
    """48 frames of 240x320, 11 MB decoded, for views of 3 clips x 8 frames cut to 20 px."""
    from _videos import write_indexed_video

    path = tmp_path_factory.mktemp("big") / "big.mp4"
    write_indexed_video(path, 48, 240, 320, gop=5)
    return path


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize(("uint8", "dtype"), [(False, "float32"), (False, "bfloat16"), (True, "uint8")])
@pytest.mark.parametrize("crops", [1, 3])
def test_views_cut_as_frames_decode_are_those_cut_after(big_frames, monkeypatch, native, uint8, dtype, crops):
    import torch

    from timesformer import preprocess
    from timesformer.evaluate import cut_views, decode_views, read_views

    if not native:
        monkeypatch.setattr(preprocess, "native_available", lambda: False)
    elif not preprocess.native_available():
        pytest.fail("the native extension is not built (make install builds it)")
    processor = preprocess.VideoProcessor(shortest_edge=23, crop_size=(20, 17), image_mean=[0.3, 0.5, 0.7])
    dtype = getattr(torch, dtype)
    got, cut_ms = read_views(str(big_frames), processor, 8, 2, 3, crops, dtype, uint8)
    frames = decode_views(str(big_frames), 8, 2, 3)
    want = cut_views(frames, processor, 8, crops, dtype, uint8)
    assert got.shape == want.shape == ((3 * crops, 8, 20, 17, 3) if uint8 else (3 * crops, 8, 3, 20, 17))
    assert got.dtype == want.dtype and got.is_contiguous() and torch.equal(got, want) and cut_ms > 0


def test_views_are_cut_without_holding_the_decoded_frames(big_frames, monkeypatch):
    """Every clip's frames were held at full resolution until cut (1080p, --clips 64: 3 GB and more)."""
    import tracemalloc

    import torch

    from timesformer import video
    from timesformer.evaluate import decode_views, read_views, views_frame_indices
    from timesformer.preprocess import VideoProcessor

    # Each decoded frame as a NumPy copy, which tracemalloc traces (PyAV's own buffers it does not).
    displayed = video._as_displayed
    monkeypatch.setattr(video, "_as_displayed", lambda rgb, matrix: displayed(rgb, matrix).copy())
    processor = VideoProcessor(shortest_edge=20, crop_size=(20, 20))
    peaks = []
    for read in (
        lambda: read_views(str(big_frames), processor, 8, 2, 6, 1, torch.float32, False)[0],
        lambda: decode_views(str(big_frames), 8, 2, 6),  # (the instrument sees frames that are held)
    ):
        tracemalloc.start()
        try:
            read()
            peaks.append(tracemalloc.get_traced_memory()[1] / (240 * 320 * 3))
        finally:
            tracemalloc.stop()
    held = len(set(views_frame_indices(48, 8, 2, 6)))  # (32 distinct frames, all held by decode_views)
    assert peaks[0] < 4 < held <= peaks[1], f"decoded frames held at once: {peaks}"


def test_a_frame_that_cannot_be_cut_is_an_error_of_its_video(big_frames):
    import torch

    from timesformer.evaluate import read_views
    from timesformer.preprocess import VideoProcessor
    from timesformer.video import VideoError

    processor = VideoProcessor(resize_to=(5000, 5000))  # over the resize limit
    with pytest.raises(VideoError, match=r"could not be preprocessed \(ValueError: frames of 240x320 would"):
        read_views(str(big_frames), processor, 8, 2, 2, 1, torch.float32, False)


# ------------------------------------------------------------------------------------- the runs


def test_single_process_run_scores_every_video_once(videos, reference):
    metrics = json.loads((reference / "metrics.json").read_text())
    assert metrics["num_videos"] == 9 and metrics["num_scored"] == 8 and metrics["num_errors"] == 1
    assert metrics["top1"] == 1.0 and metrics["top5"] == 1.0 and metrics["mean_class_accuracy"] == 1.0
    assert metrics["views"] == {
        "clips": 1,
        "crops": 1,
        "num_frames": 8,
        "sample_rate": 4,
        "aggregation": "mean of the views' softmax probabilities",
    }
    assert set(metrics["per_class"]) == set(LABELS)
    paths = _paths(reference)
    assert sorted(paths) == paths and len(set(paths)) == 9
    errors = [r for r in read_predictions(reference / PREDICTIONS) if "error" in r]
    assert (
        len(errors) == 1
        and errors[0]["path"].endswith("broken.mp4")
        and "not a readable video" in errors[0]["error"]
    )
    assert (reference / "metrics.md").read_text().startswith("# Evaluation")
    assert (reference / "confusion.png").read_bytes()[:4] == b"\x89PNG"


def test_multi_view_and_uint8_frames(videos, tmp_path):
    from timesformer.classify import load_model
    from timesformer.evaluate import evaluate

    model, processor = load_model(backend="sdpa", device="cpu")
    metrics = evaluate(videos, model, processor, tmp_path / "a", clips=2, crops=1, workers=0, limit=4)
    assert metrics["num_videos"] == 4 and metrics["views"]["clips"] == 2
    # Frames as uint8 (resized and cropped, normalized inside the model): the same decisions.
    metrics_u8 = evaluate(
        videos, model, processor, tmp_path / "b", clips=2, workers=0, limit=4, uint8_frames=True
    )
    assert metrics_u8["top1"] == metrics["top1"] == 1.0
    probs = [r["top"][0]["probability"] for r in read_predictions(tmp_path / "a" / PREDICTIONS) if "top" in r]
    probs_u8 = [
        r["top"][0]["probability"] for r in read_predictions(tmp_path / "b" / PREDICTIONS) if "top" in r
    ]
    assert max(abs(a - b) for a, b in zip(probs, probs_u8, strict=True)) < 1e-2
    # Workers that only decode, the views cut where the model is (CUDA in practice): the same numbers.
    evaluate(videos, model, processor, tmp_path / "c", clips=2, workers=1, limit=4, device_preprocess=True)
    assert (tmp_path / "c" / PREDICTIONS).read_text().count('"top"') == 3  # the 4th is broken.mp4
    by_path = {r["path"]: r.get("top") for r in read_predictions(tmp_path / "c" / PREDICTIONS)}
    assert by_path == {r["path"]: r.get("top") for r in read_predictions(tmp_path / "a" / PREDICTIONS)}


def test_existing_results_are_not_overwritten_without_resume(videos, reference):
    proc = _cli("evaluate", str(videos), "--output", str(reference), check=False)
    assert proc.returncode == 2 and "already holds predictions of 9 videos; pass --resume" in proc.stderr


def test_argument_errors():
    for args, message in [
        (["--clips", "0"], "--clips: must be 1 to 64, got 0"),
        (["--crops", "2"], "--crops: invalid choice: 2"),
        (["--workers", "-1"], "--workers: must be 0 to 65,536, got -1"),
        (["--batch-size", str(2**70)], "--batch-size: must be 1 to 2,147,483,648"),
        (["--limit", "0"], "--limit: must be 1 to"),
    ]:
        proc = _cli("evaluate", "DATA", "--output", "OUT", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    # An empty path was the current folder (its videos evaluated, its results written there), an empty device
    # the default one.
    for args, name in [(["", "--output", "OUT"], "DATA"), (["DATA", "--output", ""], "--output"),
                       (["DATA", "--output", "OUT", "--device", ""], "--device")]:  # fmt: skip
        proc = _cli("evaluate", *args, check=False)
        assert proc.returncode == 2, proc.stderr
        assert f"argument {name}: expected a value, got an empty string" in proc.stderr, proc.stderr


def test_torn_last_line_is_redone_on_resume(videos, reference, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    lines = (reference / PREDICTIONS).read_text().splitlines()
    # A run killed after 4 results, in the middle of writing the fifth.
    (out / PREDICTIONS).write_text("\n".join(lines[:4]) + "\n" + lines[4][:25])
    _cli("evaluate", str(videos), "--output", str(out), "--resume", "--workers", "1")
    assert _paths(out) == _paths(reference)
    assert _metrics(out) == _metrics(reference)
    # The 5 without a complete line, and broken.mp4 (among the first 4): error lines are tried again.
    assert json.loads((out / "metrics.json").read_text())["videos_evaluated"] == 6


def test_sigkill_at_any_moment_then_resume_loses_nothing(videos, reference, tmp_path):
    """SIGKILL the command as soon as its first results are on disk, then resume (twice if it finished)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", *_evaluate_args(videos, out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if (out / PREDICTIONS).exists() and (out / PREDICTIONS).stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert (
        proc.returncode == -signal.SIGKILL
    )  # killed mid-run (9 one-video batches take far longer than 10 ms)
    assert not (out / "metrics.json").exists() and len(_paths(out)) < 9
    _cli("evaluate", str(videos), "--output", str(out), "--resume", "--workers", "1")
    assert _paths(out) == _paths(reference)
    assert _metrics(out) == _metrics(reference)


# -------------------------------------------------------------------------------------- torchrun


def _torchrun(videos: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           *_evaluate_args(videos, out, "--no-progress", *extra)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_torchrun_gives_the_models_warnings_once(videos, tmp_path):
    """Every rank loads the model and reads DIR: its preprocessing warning and a line that is not a prediction
    came once per rank."""
    import shutil

    from timesformer.assets import BUNDLED_MODEL
    from timesformer.preprocess import VideoProcessor

    model = tmp_path / "model"
    shutil.copytree(BUNDLED_MODEL, model)
    VideoProcessor.from_pretrained(model).save_pretrained(model)
    image = model / "preprocessor_config.json"
    image.write_text(json.dumps({**json.loads(image.read_text()), "image_std": [0.5, 0.5, 0.5]}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / PREDICTIONS).write_text('{"note": "added by hand"}\n')
    proc = _torchrun(videos, tmp_path / "out", "--model", str(model), "--limit", "2", "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert stderr.count("disagree on image_std") == 1, stderr
    # (A log record is a warning line of the CLI's too, not a bare message.)
    assert stderr.count("timesformer: warning: ") == 2, stderr
    assert stderr.count(": skipping a line that is not a prediction") == 1, stderr
    assert "timesformer: warning: " + str(tmp_path / "out" / PREDICTIONS) + ": skipping a line" in stderr


def _rank_pids(parent: int) -> dict[int, int]:
    """``{rank: pid}`` of torchrun's worker processes (read from their environment)."""
    pids = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            env = dict(
                item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item
            )
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            pids[int(env["RANK"])] = int(entry.name)
    return pids


@pytest.mark.slow
def test_torchrun_two_ranks_match_one_process_and_survive_a_killed_rank(videos, reference, tmp_path):
    out = tmp_path / "two"
    loose = videos / "loose.mp4"  # beside the class folders: named once, by rank 0 (by every rank before)
    loose.write_bytes(b"x")
    try:
        proc = _torchrun(videos, out)
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        loose.unlink()
    assert proc.returncode == 0, stdout + stderr
    assert stderr.count("beside the class folders are not evaluated") == 1, stderr
    assert _paths(out) == _paths(reference)  # every video exactly once, in order
    assert _metrics(out) == _metrics(reference)
    assert json.loads((out / "metrics.json").read_text())["world_size"] == 2
    assert not list(out.glob("predictions.part-*"))  # merged

    # Kill rank 1 as soon as it has written a result; torchrun then stops the job. Resume with torchrun.
    out = tmp_path / "killed"
    proc = _torchrun(videos, out)
    part = out / "predictions.part-00001.jsonl"
    deadline = time.monotonic() + 300
    killed = False
    pid = None
    # Rank 1's process first (a slow /proc scan), then the kill as soon as its first line is written: looked up
    # after the line, the pid came too late on a loaded machine, after rank 1 had finished its share and the
    # job its metrics.
    while pid is None and time.monotonic() < deadline and proc.poll() is None:
        pid = _rank_pids(proc.pid).get(1)
        time.sleep(0.01)
    while pid is not None and time.monotonic() < deadline and proc.poll() is None:
        if part.exists() and part.stat().st_size > 0:
            os.kill(pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.001)
    stdout, stderr = proc.communicate(timeout=300)
    assert killed and proc.returncode != 0, stdout + stderr
    assert not (out / "metrics.json").exists()
    proc = _torchrun(videos, out, "--resume")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert _paths(out) == _paths(reference)
    assert _metrics(out) == _metrics(reference)


def test_classify_takes_the_same_views(videos):
    clip = videos / LABELS[2] / "clip0.mp4"
    out = _cli("classify", str(clip), "--clips", "3", "--crops", "3", "--json", "--top-k", "4").stdout
    labels = json.loads(out)["labels"]
    assert abs(sum(x["probability"] for x in labels) - 1) < 1e-4  # a mean of softmaxes is a distribution
    out = _cli("classify", str(clip), "--clips", "2", "--json").stdout
    assert json.loads(out)["labels"][0]["label"] == LABELS[2]
    proc = _cli("classify", str(clip), "--crops", "2", check=False)
    assert proc.returncode == 2 and "--crops: invalid choice: 2" in proc.stderr


# --------------------------------------------------------------------------- resume, settings, failures


@pytest.fixture(scope="module")
def bundled():
    from timesformer.classify import load_model

    return load_model(backend="sdpa", device="cpu")


def test_resume_matches_videos_however_data_is_spelled(videos, bundled, tmp_path, monkeypatch):
    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    monkeypatch.chdir(videos.parent)
    evaluate(videos.name, model, processor, out, workers=0, limit=3)  # DATA relative to the folder above
    monkeypatch.chdir(tmp_path)
    metrics = evaluate(videos, model, processor, out, workers=0, limit=5, resume=True)
    # The 2 new ones, and broken.mp4 (among the first 3): error lines are tried again.
    assert metrics["videos_evaluated"] == 3 and metrics["num_missing"] == 0 and metrics["num_videos"] == 5
    paths = _paths(out)
    assert len(paths) == len(set(paths)) == 5 and all(os.path.isabs(p) for p in paths)


def test_resume_refuses_other_settings(videos, bundled, tmp_path):
    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=2)
    with pytest.raises(ValueError, match=r"other settings: num_frames 4 \(was 8\), clips 2 \(was 1\)"):
        evaluate(videos, model, processor, out, workers=0, limit=4, resume=True, num_frames=4, clips=2)
    assert len(_paths(out)) == 2  # nothing was added
    # Settings recorded before any prediction was written bind nothing.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "settings.json").write_text(json.dumps({"num_frames": 2}))
    evaluate(videos, model, processor, fresh, workers=0, limit=1)
    assert json.loads((fresh / "settings.json").read_text())["num_frames"] == 8


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sample_rate=2), "sample_rate 2 (was 4)"),
        (dict(crops=3), "crops 3 (was 1)"),
        (dict(top_k=2), "top_k 2 (was 4)"),  # (5 of the 4 classes)
        (dict(max_frame_pixels=10**6), "max_frame_pixels 1000000 (was 16777216)"),
    ],
)
def test_resume_refuses_each_other_setting(videos, bundled, tmp_path, change, message):
    from timesformer.evaluate import SETTINGS, evaluate

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=1, model_name="m")
    recorded = json.loads((out / SETTINGS).read_text())
    assert {k for k in recorded if not k.startswith("preprocessing ")} == {
        "model", "model weights", "dtype", "num_frames", "sample_rate", "clips", "crops", "top_k",
        "max_frame_pixels",
    }  # fmt: skip
    with pytest.raises(ValueError, match=f"other settings: {re.escape(message)}"):
        evaluate(videos, model, processor, out, workers=0, limit=2, resume=True, model_name="m", **change)
    assert len(_paths(out)) == 1


def test_top5_accuracy_does_not_depend_on_top_k(videos, bundled, tmp_path):
    from timesformer.evaluate import evaluate

    model, processor = bundled
    one = evaluate(videos, model, processor, tmp_path / "k1", workers=0, limit=4, top_k=1)
    five = evaluate(videos, model, processor, tmp_path / "k5", workers=0, limit=4, top_k=5)
    assert one["top5"] == five["top5"] == 1.0 and one["top1"] == five["top1"]
    assert all(len(r["top"]) == 1 for r in read_predictions(tmp_path / "k1" / PREDICTIONS) if "top" in r)


def test_list_files_with_a_byte_order_mark_and_data_that_is_a_video(videos, tmp_path):
    first = sorted((videos / LABELS[0]).iterdir())[0]
    listing = tmp_path / "list.csv"
    listing.write_bytes("\ufeff".encode() + f"{first},{LABELS[0]}\n".encode())
    assert [s.path for s in load_samples(listing, LABEL2ID, 4)] == [str(first)]
    with pytest.raises(ValueError, match="expected a folder of class-named subfolders or a list file"):
        load_samples(first, LABEL2ID, 4)
    # Special files as DATA: a FIFO blocked forever, /dev/zero read until memory ran out.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for special in (fifo, Path("/dev/zero")):
        with pytest.raises(ValueError, match="got a special file"):
            load_samples(special, LABEL2ID, 4)


def test_broken_links_fifos_and_linked_folders_are_not_silently_dropped(videos, bundled, tmp_path):
    from timesformer.evaluate import evaluate

    data = tmp_path / "data"
    for name in LABELS[:2]:
        (data / name).mkdir(parents=True)
    clip = sorted((videos / LABELS[0]).iterdir())[0]
    (data / LABELS[0] / "ok.mp4").symlink_to(clip)
    (data / LABELS[0] / "gone.mp4").symlink_to(tmp_path / "missing.mp4")
    os.mkfifo(data / LABELS[0] / "fifo.mp4")
    (data / LABELS[1] / "linked").symlink_to(videos / LABELS[1], target_is_directory=True)
    (data / LABELS[1] / "loop").symlink_to(data / LABELS[1], target_is_directory=True)
    names = sorted(Path(s.path).name for s in load_samples(data, LABEL2ID, 4))
    assert names == ["broken.mp4", "clip0.mp4", "clip1.mp4", "fifo.mp4", "gone.mp4", "ok.mp4"]
    model, processor = bundled
    metrics = evaluate(data, model, processor, tmp_path / "out", workers=0)
    errors = {
        Path(r["path"]).name: r["error"]
        for r in read_predictions(tmp_path / "out" / PREDICTIONS)
        if "error" in r
    }
    assert (
        metrics["num_videos"] == 6
        and metrics["num_scored"] == 3
        and set(errors) == {"broken.mp4", "fifo.mp4", "gone.mp4"}
    )


def test_a_full_disk_is_an_output_error_that_keeps_the_lines(videos, bundled, tmp_path, monkeypatch):
    import errno

    from timesformer import evaluate as ev

    model, processor = bundled
    out = tmp_path / "out"
    calls = []
    real_fsync = os.fsync

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(ev.os, "fsync", fsync)
    with pytest.raises(ev.OutputError, match=r"cannot write .*predictions.jsonl: No space left on device"):
        ev.evaluate(videos, model, processor, out, workers=0, batch_size=1, limit=5)
    monkeypatch.setattr(ev.os, "fsync", real_fsync)
    assert len(_paths(out)) >= 2
    assert ev.evaluate(videos, model, processor, out, workers=0, limit=5, resume=True)["num_missing"] == 0


def test_a_dead_worker_names_the_videos_it_may_have_been_reading(videos, bundled, tmp_path, monkeypatch):
    from timesformer import evaluate as ev

    class DyingLoader:
        def __init__(self, dataset, batch_size, num_workers, **kwargs):
            self.dataset, self.batch_size, self.num_workers = dataset, batch_size, num_workers

        def __iter__(self):
            yield ev._collate([self.dataset[i] for i in range(self.batch_size)])
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")

    monkeypatch.setattr(ev.torch.utils.data, "DataLoader", DyingLoader)
    model, processor = bundled
    with pytest.raises(
        ev.WorkerError, match=r"a decoding worker died .*pid\(s\) 4242.* run again with --resume"
    ):
        ev.evaluate(videos, model, processor, tmp_path / "out", workers=1, batch_size=1, limit=4)
    assert len(_paths(tmp_path / "out")) == 1


def test_a_video_a_worker_dies_on_is_an_error_line_and_the_run_goes_on(
    videos, bundled, reference, tmp_path, monkeypatch, caplog
):
    """A video that crashed the decoder stopped every run, --resume included, at the same place."""
    from timesformer import evaluate as ev

    deadly = str(videos / LABELS[2] / "clip0.mp4")
    read_views = ev.read_views

    def crashing(path, *args):  # (the DataLoader's workers are forked: they see this function)
        if path == deadly:
            os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does; a crash is SIGSEGV
        return read_views(path, *args)

    monkeypatch.setattr(ev, "read_views", crashing)
    model, processor = bundled
    with caplog.at_level("WARNING", logger="timesformer"):
        metrics = ev.evaluate(videos, model, processor, tmp_path / "out", workers=2, batch_size=2)
    assert metrics["num_videos"] == 9 and metrics["num_missing"] == 0
    lines = {r["path"]: r for r in read_predictions(tmp_path / "out" / PREDICTIONS)}
    want = {r["path"]: r for r in read_predictions(reference / PREDICTIONS)}
    assert lines[deadly]["error"].startswith("the decoding worker died reading it (DataLoader worker (pid")

    def untimed(records: dict) -> dict:
        return {p: {k: v for k, v in r.items() if k != "time_ms"} for p, r in records.items() if p != deadly}

    assert untimed(lines) == untimed(want) and len(lines) == len(want)
    (warned,) = [m for m in caplog.messages if "worker died" in m]
    assert warned.startswith(f"a decoding worker died while reading {deadly} (DataLoader worker (pid")
    assert warned.endswith("; it is an error line and the run goes on")
    # Workers that keep dying stop the run, keeping its lines.
    monkeypatch.setattr(ev, "MAX_WORKER_DEATHS", 0)
    with pytest.raises(
        ev.WorkerError, match=f"decoding workers died 1 times .* the last while reading {deadly}"
    ):
        ev.evaluate(videos, model, processor, tmp_path / "again", workers=1, batch_size=1)


_CRASHING_RUN = """
import os, signal, sys
from timesformer import evaluate as ev
from timesformer.classify import load_model

read_views = ev.read_views

def crashing(path, *args):
    if path in sys.argv[1].split(","):
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder crash (SIGSEGV), the OOM killer
    return read_views(path, *args)

ev.read_views = crashing
model, processor = load_model(backend="sdpa", device="cpu")
name = "(bundled) synthetic-motion"  # the command line's
ev.evaluate(sys.argv[2], model, processor, sys.argv[3], workers=0, batch_size=2, resume=True, model_name=name)
"""


def test_videos_that_crash_the_process_decoding_them_are_error_lines_after_two_runs(
    videos, bundled, reference, tmp_path
):
    """With --workers 0 a decoder crash ends the run itself, and every --resume ended at the same video. A
    video is tried again once (a run killed from outside while it decoded a video is no crash:
    test_sigkill_at_any_moment_then_resume_loses_nothing), then left to worker processes."""
    from timesformer import evaluate as ev

    deadly = [s.path for s in load_samples(videos, LABEL2ID, 4)[5::2][:2]]  # (after 2 batches of 2)
    out = tmp_path / "out"

    def crashing_run() -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-c", _CRASHING_RUN, ",".join(deadly), str(videos), str(out)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)

    def markers() -> dict[str, str]:
        return {p.name: p.read_text() for p in out.glob(ev.READING + "*")}

    first, second = (ev._marker(out, p).name for p in deadly)
    assert crashing_run().returncode == -signal.SIGKILL
    assert 0 < len(_paths(out)) < 9 and markers() == {first: f"1\n{deadly[0]}"}
    (out / (ev.READING + "x")).write_text(f"1\n{_paths(out)[0]}")  # a marker of a video done since: goes
    again = crashing_run()
    assert again.returncode == -signal.SIGKILL and markers() == {first: f"2\n{deadly[0]}"}
    assert f"1 run(s) ended while reading {deadly[0]} (a decoder crash" in again.stderr
    assert "it is tried again, and it is an error line if the run ends there again" in again.stderr
    # The next runs do not try it (it would end them too), and the same for the second.
    assert crashing_run().returncode == -signal.SIGKILL
    assert crashing_run().returncode == -signal.SIGKILL
    assert markers() == {first: f"2\n{deadly[0]}", second: f"2\n{deadly[1]}"}
    last = crashing_run()
    assert last.returncode == 0, last.stderr
    assert f"2 run(s) ended while reading {deadly[1]} (a decoder crash" in last.stderr
    lines = {r["path"]: r for r in read_predictions(out / PREDICTIONS)}
    want = {r["path"]: r for r in read_predictions(reference / PREDICTIONS)}
    for path in deadly:
        assert lines[path]["error"].startswith(
            "2 or more runs ended while reading it (a decoder crash, or out"
        )

    def untimed(records: dict) -> dict:
        return {
            p: {k: v for k, v in r.items() if k != "time_ms"} for p, r in records.items() if p not in deadly
        }

    assert untimed(lines) == untimed(want) and len(lines) == len(want)
    assert len(markers()) == 2
    # A run with worker processes tries them again (a worker's crash does not end it): done, no markers.
    model, processor = bundled
    name = "(bundled) synthetic-motion"
    with pytest.warns(UserWarning, match=r"2 run\(s\) ended while reading .*: it is tried again$") as warned:
        ev.evaluate(videos, model, processor, out, workers=1, resume=True, model_name=name)
    assert len(warned) == 2
    assert _metrics(out) == _metrics(reference) and not markers()


def test_sigterm_while_decoding_in_process_leaves_no_marker(videos, bundled, tmp_path, monkeypatch):
    """torchrun stops a job's other ranks with SIGTERM, which ran no ``finally``: each left a marker that
    blamed its innocent video for a crash."""
    from timesformer import evaluate as ev

    def terminated(*args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # (the handler runs at the next bytecode)

    monkeypatch.setattr(ev, "read_views", terminated)
    samples = ev.load_samples(videos, LABEL2ID, 4)
    dataset = ev.VideoViews(samples, bundled[1], num_frames=2)
    dataset.markers = tmp_path
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as stopped:
        dataset[0]
    assert stopped.value.code == 128 + signal.SIGTERM
    assert not list(tmp_path.iterdir()) and signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("error, code", [("OutputError", 1), ("WorkerError", 1), ("FileExistsError", 2)])
def test_exit_codes_tell_a_failed_run_from_a_bad_setup(videos, tmp_path, monkeypatch, capsys, error, code):
    from timesformer import __main__ as cli
    from timesformer import evaluate as ev

    exc = getattr(ev, error, None) or FileExistsError

    def failing(*args, **kwargs):
        raise exc(f"the {error}")

    monkeypatch.setattr(ev, "evaluate", failing)
    assert cli.main(["evaluate", str(videos), "--output", str(tmp_path)]) == code
    assert f"the {error}" in capsys.readouterr().err


def test_resume_of_a_run_that_recorded_relative_paths(videos, bundled, tmp_path, monkeypatch):
    """Runs before paths were recorded absolute wrote DATA as typed: their lines still count once."""
    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=2)
    monkeypatch.chdir(videos.parent)
    lines = (out / PREDICTIONS).read_text().splitlines()
    relative = [json.loads(line) for line in lines]
    for record in relative:
        record["path"] = os.path.relpath(record["path"])
    (out / PREDICTIONS).write_text("".join(json.dumps(r) + "\n" for r in relative))
    metrics = evaluate(videos, model, processor, out, workers=0, limit=3, resume=True)
    assert metrics["videos_evaluated"] == 1
    paths = _paths(out)
    assert len(paths) == len(set(paths)) == 3 and all(os.path.isabs(p) for p in paths)


# Two ranks of a gloo group (torchrun's environment variables), each running one scenario of the checks that
# keep the ranks of a job together; each prints what it raised.
_RANK_SCRIPT = """
import os
import sys
from pathlib import Path

import torch

from timesformer import evaluate as ev
from timesformer.evaluate import Sample

scenario, tmp = sys.argv[1], Path(sys.argv[2])
rank, world = ev.init_distributed()
samples = [Sample("/v/a.mp4", 0), Sample("/v/b.mp4", 1)]
try:
    if scenario == "setup":
        with ev.together("set up"):
            if rank == 1:
                raise FileNotFoundError("DATA /data/k400: no such file or folder")
    elif scenario == "interrupt":
        with ev.together("set up"):
            if rank == 1:
                raise KeyboardInterrupt
    elif scenario == "dies":
        if rank == 1:  # its machine lost while the others set up
            print("gone", flush=True)
            os._exit(0)
        with ev.together("set up"):
            pass
    else:
        out = tmp / (f"local{rank}" if scenario == "folder" else "shared")
        out.mkdir(exist_ok=True)
        token = None
        if rank == 0:
            token = "t0"
            (out / ev.JOB_MARK).write_text(token)
        torch.distributed.barrier()
        if scenario == "data" and rank == 1:
            samples.append(Sample("/v/c.mp4", 0))  # a dataset still syncing on this machine
        # The model's folder at another path on each machine is fine: its weights' digest is compared.
        settings = {"model": f"/models/{rank}", "top_k": 5, "clips": 1}
        if scenario == "settings" and rank == 1:
            settings["top_k"] = 1  # another command line on this machine
        ev._check_same_work(out, samples, set(), token, settings)
    print("ok")
except BaseException as exc:
    print(type(exc).__name__, exc)
finally:
    torch.distributed.destroy_process_group()
"""


def _as_ranks(*commands: list[str], timeout: int = 120) -> list[tuple[int, str, str]]:
    """Each command as one rank of a job (as on one machine each), with its exit status, stdout and stderr."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank, command in enumerate(commands):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": str(len(commands)), "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}  # fmt: skip
        procs.append(
            subprocess.Popen(
                [sys.executable, *command],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [proc.communicate(timeout=timeout) for proc in procs]
    return [(proc.returncode, *output) for proc, output in zip(procs, outputs, strict=True)]


def _two_ranks(scenario: str, tmp_path: Path) -> list[str]:
    results = []
    for code, stdout, stderr in _as_ranks(*[["-c", _RANK_SCRIPT, scenario, str(tmp_path)]] * 2):
        assert code == 0, stderr
        results.append(stdout.strip())
    return results


def test_machines_that_hold_the_model_at_other_paths_resume(videos, tmp_path):
    """The first run allowed it (the weights' digest is compared), and --resume refused it: rank 1's model path
    was compared with the one rank 0 recorded."""
    import shutil

    from timesformer.assets import BUNDLED_MODEL

    for name in ("a", "b"):
        shutil.copytree(BUNDLED_MODEL, tmp_path / name)
    out = tmp_path / "out"
    for extra in (["--limit", "2"], ["--limit", "4", "--resume"]):
        ranks = _as_ranks(
            *[["-m", *_evaluate_args(videos, out, "--no-progress", "--model", str(tmp_path / m), *extra)]
              for m in ("a", "b")],
            timeout=300,
        )  # fmt: skip
        assert [code for code, _, _ in ranks] == [0, 0], ranks
    assert len(_paths(out)) == 4


@pytest.mark.parametrize(
    "scenario, expected",
    [
        ("same", ["ok", "ok"]),
        (
            "setup",
            [
                r"RankError rank 1 of 2 \(host .*\) could not set up: FileNotFoundError: DATA /data/k400: no such",
                r"FileNotFoundError DATA /data/k400: no such file or folder",
            ],
        ),
        ("interrupt", [r"RankError rank 1 of 2 \(host .*\) could not set up: KeyboardInterrupt", "KeyboardInterrupt"]),
        ("folder", [r"RankError rank 1 of 2 \(host .*\) does not see rank 0's files in DIR .*local1: under torchrun, DIR must be one folder every machine shares"] * 2),
        ("data", [r"RankError rank 1 of 2 \(host .*\) lists 3 videos \(0 done\) where rank 0 lists 2 \(0 done\)"] * 2),
        ("settings", [r"RankError rank 1 of 2 \(host .*\) evaluates with other settings than rank 0: top_k 1 \(rank 0: 5\); every rank must run the same command"] * 2),
        ("dies", [r"RankError another rank of the job died during set-up \(.*by peer", "gone"]),
    ],
)  # fmt: skip
def test_ranks_fail_together_and_refuse_to_split_different_work(tmp_path, scenario, expected):
    """Without these checks: a set-up error on one machine left the others waiting 2 hours; a DIR that is not
    shared, or a DATA listing that differs, gave metrics over part of the set and exit 0; other settings on
    one machine mixed its predictions into the results; a rank dying in set-up was a gloo traceback."""
    import re

    results = _two_ranks(scenario, tmp_path)
    for result, pattern in zip(results, expected, strict=True):
        assert re.fullmatch(pattern + ".*", result), results


def test_a_full_disk_at_close_is_still_an_output_error(videos, tmp_path, monkeypatch, capsys):
    """A write that fails in flush leaves its bytes buffered: closing the file fails again, and that too is
    the one-line OutputError (exit 1), not a bare OSError (exit 2)."""
    import errno

    from timesformer import __main__ as cli
    from timesformer import evaluate as ev

    class FullDisk:
        def __init__(self, path, mode):
            self.pending = ""

        def write(self, text):
            self.pending += text

        def flush(self):
            if self.pending:
                raise OSError(errno.ENOSPC, "No space left on device")

        close = flush

        def fileno(self):
            return 0

    monkeypatch.setattr(ev, "open", FullDisk, raising=False)
    assert cli.main(["evaluate", str(videos), "--output", str(tmp_path / "out"), "--workers", "0",
                     "--limit", "2", "--no-progress"]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "cannot write" in err and "predictions.jsonl: No space left on device" in err and "--resume" in err


def test_videos_without_a_line_fail_the_command(videos, tmp_path, monkeypatch, capsys):
    from timesformer import __main__ as cli
    from timesformer import evaluate as ev

    real = ev.merge_predictions
    monkeypatch.setattr(ev, "merge_predictions", lambda *args, **kwargs: real(*args, **kwargs)[1:])
    assert cli.main(["evaluate", str(videos), "--output", str(tmp_path / "out"), "--workers", "0",
                     "--limit", "3", "--no-progress"]) == 1  # fmt: skip
    assert "1 of 3 videos have no line in" in capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["num_missing"] == 1


@pytest.mark.slow
def test_two_machines_stop_together_when_one_cannot_set_up(videos, tmp_path):
    """Two torchrun launches as two machines (static rendezvous on this host); the second one's DATA is
    missing. Both stop within seconds, each naming the cause (before, the first waited up to 2 hours)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for node, data in enumerate([videos, tmp_path / "not-synced-yet"]):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--master-addr", "127.0.0.1", "--master-port", str(port), "--node-rank", str(node), "-m",
               "timesformer", "evaluate", str(data), "--output", str(tmp_path / "out"), "--workers", "0",
               "--no-progress"]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs.append(
            subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    errors = [proc.communicate(timeout=240)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [1, 1], errors
    assert (
        "timesformer: error: rank 1 of 2 (host " in errors[0] and "not-synced-yet: no such file" in errors[0]
    )
    assert "timesformer: error: DATA " in errors[1] and "not-synced-yet: no such file" in errors[1]


@pytest.mark.parametrize(
    "env, message",
    [
        ({"RANK": "3"}, "RANK=3, WORLD_SIZE=1, LOCAL_RANK=0 do not describe a torchrun job"),
        ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK=-1, WORLD_SIZE=2"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0"),
        (
            {"RANK": "abc"},
            "environment variable RANK must be an integer (set by torchrun) below 2**31, got 'abc'",
        ),
        ({"RANK": "0_0"}, "environment variable RANK must be an integer"),  # int() reads these
        ({"RANK": "\u0661"}, "environment variable RANK must be an integer"),
        (
            {"WORLD_SIZE": "9" * 23},
            "environment variable WORLD_SIZE must be an integer (set by torchrun) below",
        ),
        ({"WORLD_SIZE": ""}, "environment variable WORLD_SIZE must be an integer"),
    ],
)
def test_stray_torchrun_variables_are_refused(videos, tmp_path, monkeypatch, capsys, env, message):
    """``RANK=3`` alone made the run score a quarter of the videos, write no metrics and exit 0."""
    from timesformer import __main__ as cli

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["evaluate", str(videos), "--output", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_lines_that_are_not_predictions_are_redone_on_resume(videos, bundled, tmp_path, caplog):
    """Hand-edited or foreign lines with a path gave tracebacks, some only after the whole run (metrics)."""
    from timesformer.evaluate import evaluate, load_samples

    model, processor = bundled
    first = load_samples(videos, model.config.label2id, model.config.num_labels)[0].path
    out = tmp_path / "out"
    out.mkdir()
    bad = [
        {"path": 5},
        {"path": first, "label_id": 1, "top": []},
        {"path": first, "label_id": "x", "top": [{"label_id": 1}]},
        {"path": first, "label_id": 99, "top": [{"label_id": 1}]},  # more labels than the model has
        {"path": first, "label_id": -1, "top": [{"label_id": -1}], "correct_top5": True},
        {"path": first, "label_id": 1},
    ]
    # Lines json cannot take: a byte that is not UTF-8 (stopped --resume with a bare UnicodeDecodeError) and
    # nesting past Python's stack (a RecursionError traceback).
    unreadable = [b'{"path": "caf\xe9.mp4", "label": 1}', b"[" * 100_000]
    (out / PREDICTIONS).write_bytes(
        "".join(json.dumps(r) + "\n" for r in bad).encode() + b"".join(line + b"\n" for line in unreadable)
    )
    with caplog.at_level("WARNING", logger="timesformer"):
        metrics = evaluate(videos, model, processor, out, workers=0, limit=3, resume=True)
    assert (metrics["num_videos"], metrics["num_missing"], metrics["videos_evaluated"]) == (3, 0, 3)
    messages = [r.getMessage() for r in caplog.records]
    # Once each (not again before appending and at the merge).
    assert sum("skipping a line that is not a prediction" in m for m in messages) == len(bad)
    assert sum("skipping a line that is not JSON" in m for m in messages) == len(unreadable)
    assert _paths(out)[0] == first and len(_paths(out)) == 3


def test_lines_of_another_model_are_not_overwritten(videos, bundled, tmp_path):
    """A folder whose lines were all foreign (another model's labels, edited by hand) counted as empty: the run
    went ahead without --resume, compared no settings, and its merge deleted every earlier line."""
    from timesformer.evaluate import SETTINGS, evaluate

    model, processor = bundled
    out = tmp_path / "out"
    out.mkdir()
    lines = [
        {"path": str(videos / "a.mp4"), "label_id": 9, "top": [{"label_id": 9}]},  # a 10-class model's
        {"id": 1, "pred": "cat"},
    ]
    text = "".join(json.dumps(r) + "\n" for r in lines)
    (out / PREDICTIONS).write_text(text)
    (out / SETTINGS).write_text(json.dumps({"model weights": "0123", "num_frames": 8}))
    with pytest.raises(FileExistsError, match="already holds lines that are not predictions of this model"):
        evaluate(videos, model, processor, out, workers=0, limit=2)
    with pytest.raises(ValueError, match=r"other settings: model weights"):
        evaluate(videos, model, processor, out, workers=0, limit=2, resume=True)
    assert (out / PREDICTIONS).read_text() == text


def test_a_torn_first_line_alone_is_no_result(videos, bundled, tmp_path):
    """A run killed while writing its first line left a line without its newline: the next run (without
    --resume) was refused, the folder said to hold "lines that are not predictions of this model"."""
    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=1)
    line = (out / PREDICTIONS).read_bytes()
    (out / PREDICTIONS).write_bytes(line[:30])
    metrics = evaluate(videos, model, processor, out, workers=0, limit=1)
    (again,) = (out / PREDICTIONS).read_text().splitlines()
    first, again = json.loads(line), json.loads(again)
    assert metrics["videos_evaluated"] == 1 and (again["path"], again["top"]) == (first["path"], first["top"])


def test_repair_cuts_only_a_torn_line(tmp_path, caplog):
    """A complete line that is not a prediction is skipped but kept; only a line without its newline (a write
    cut short) is cut off before appending, with a warning (a hand edit that dropped the last newline looks the
    same, and was cut without a word)."""
    path = tmp_path / PREDICTIONS
    good = json.dumps({"path": "/v/a.mp4", "label": "x", "label_id": 0, "error": "could not be read"})
    foreign = json.dumps({"path": "/v/b.mp4", "note": "added by hand"})
    path.write_text(f"{good}\n{foreign}\n")
    assert [r["path"] for r in read_predictions(path, repair=True)] == ["/v/a.mp4"]
    assert path.read_text() == f"{good}\n{foreign}\n"
    assert "cutting an incomplete last line" not in caplog.text
    path.write_text(f"{good}\n{foreign}\n{good[:10]}")
    read_predictions(path, repair=True, warn=False)
    assert path.read_text() == f"{good}\n{foreign}\n"
    assert "cutting an incomplete last line (no newline: a write cut short)" in caplog.text


def _holder(out: Path, hold: str) -> subprocess.Popen:
    """Another process that holds ``out`` by ``hold`` (an expression of ``ev`` and ``out``) for a minute, once
    it has (a descriptor: not ``None``)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pathlib import Path; from timesformer import evaluate as ev; import sys, time; "
         f"out = Path(sys.argv[1]); print({hold} is not None, flush=True); time.sleep(60)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout.readline().strip() == "True"
    return proc


def test_a_second_run_into_a_folder_in_use_is_refused(videos, bundled, tmp_path):
    """Its merge would replace the file the first run appends to (those lines lost). The hold is a kernel lock,
    so a run killed with SIGKILL never blocks the next one (a pid check failed on container restarts)."""
    from timesformer import evaluate as ev

    model, processor = bundled
    out = tmp_path / "out"
    out.mkdir()
    holder = _holder(out, "ev._lock(out)")
    try:
        with pytest.raises(
            FileExistsError, match=rf"in use by another evaluate run \(process {holder.pid} on host"
        ):
            ev.evaluate(videos, model, processor, out, workers=0, limit=2)
    finally:
        holder.kill()
        holder.wait()
    assert ev.evaluate(videos, model, processor, out, workers=0, limit=2)["num_missing"] == 0
    assert (out / ev.LOCK).read_text() == ""  # released: it names no one


def test_a_folder_is_in_use_while_any_rank_of_its_job_runs(videos, bundled, tmp_path):
    """Only rank 0 held DIR: after it died, a --resume ran beside the surviving ranks, and its merge deleted
    the part files they were appending to."""
    from timesformer import evaluate as ev

    model, processor = bundled
    out = tmp_path / "out"
    out.mkdir()
    rank0 = ev._lock(out)  # this process, as rank 0: then rank 1 of the same job takes its byte
    rank1 = _holder(out, "ev._hold_rank(out, 1)")
    try:
        ev._unlock(rank0)  # rank 0 dies
        with pytest.raises(
            FileExistsError, match=r"in use by another evaluate run \(.*or a rank of its torchrun"
        ):
            ev.evaluate(videos, model, processor, out, workers=0, limit=2, resume=True)
    finally:
        rank1.kill()
        rank1.wait()
    assert ev.evaluate(videos, model, processor, out, workers=0, limit=2, resume=True)["num_missing"] == 0


def test_a_stray_local_world_size_is_named(monkeypatch):
    from timesformer.evaluate import default_workers

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="environment variable LOCAL_WORLD_SIZE must be an integer"):
        default_workers()


def test_each_local_rank_takes_its_own_gpu_for_plain_cuda(monkeypatch):
    """``--device cuda`` under torchrun put every rank on GPU 0 (no GPU here: CUDA's answers are stood in)."""
    import torch

    from timesformer.evaluate import default_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    for name, value in {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(name, value)
    cuda1 = torch.device("cuda", 1)
    assert default_device() == default_device(torch.device("cuda")) == cuda1
    assert default_device(torch.device("cuda", 3)) == torch.device("cuda", 3)  # as asked
    assert default_device(torch.device("cpu")) == torch.device("cpu")


# --------------------------------------------------------------------------- what a dataset folder may hold


def test_folders_that_cannot_be_listed_or_count_twice_are_errors(videos, tmp_path, monkeypatch):
    """Videos must not silently drop out of (or double in) the count: an unreadable folder was skipped, a
    class folder that is a broken link ignored, and one folder linked under two classes scored under both."""
    from timesformer import evaluate as ev

    data = tmp_path / "data"
    (data / LABELS[0] / "more").mkdir(parents=True)
    (data / LABELS[0] / "a.mp4").write_bytes(b"x")
    (data / LABELS[0] / "more" / "b.mp4").write_bytes(b"x")
    assert len(load_samples(data, LABEL2ID, 4)) == 2
    real_scandir = os.scandir

    def scandir(path="."):  # as for a folder of another user, mode 700 (this test may run as root)
        if os.fspath(path).endswith("more"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(ev.os, "scandir", scandir)
    with pytest.raises(
        ValueError, match=r"cannot list .*more \(Permission denied\); its videos would be missing"
    ):
        load_samples(data, LABEL2ID, 4)
    monkeypatch.undo()

    (data / LABELS[1]).symlink_to(tmp_path / "not there", target_is_directory=True)
    with pytest.raises(ValueError, match=rf"class folder .*{LABELS[1]} is a broken link; expected a folder"):
        load_samples(data, LABEL2ID, 4)
    (data / LABELS[1]).unlink()
    (data / "notes.txt").symlink_to(tmp_path / "gone.txt")  # not a class folder: ignored as any loose file
    assert len(load_samples(data, LABEL2ID, 4)) == 2
    (data / LABELS[1]).symlink_to(data / LABELS[0], target_is_directory=True)
    with pytest.raises(
        ValueError, match=r"which class folder '.+' holds too \(a link\): its videos would count under both"
    ):
        load_samples(data, LABEL2ID, 4)


def test_an_output_folder_inside_data_is_not_read_as_videos(videos, bundled, tmp_path):
    """Resumed, the reports of an output folder inside a class folder were scored as that class's videos."""
    import shutil

    from timesformer.evaluate import evaluate

    data = tmp_path / "data"
    shutil.copytree(videos, data)
    out = data / LABELS[0] / "eval"
    model, processor = bundled
    evaluate(data, model, processor, out, workers=0, limit=4)
    assert (out / "confusion.png").exists()
    metrics = evaluate(data, model, processor, out, workers=0, resume=True)
    assert metrics["num_videos"] == 9 and metrics["num_errors"] == 1  # broken.mp4 alone
    assert not any(p.startswith(str(out)) for p in _paths(out))


def test_list_lines_keep_their_paths_as_written(tmp_path):
    """Space separated, a path kept its words but not its spaces (``my  video.mp4`` became ``my video.mp4``);
    a comma anywhere made the line comma separated (``a,b.mp4 0``)."""
    listing = tmp_path / "list.txt"
    listing.write_text(
        f'sp ace/my  video.mp4 1\nsp ace/a,b.mp4 {LABELS[2]}\n"quoted, name.mp4",0\nplain.mp4,3\n'
    )
    got = {Path(s.path).relative_to(tmp_path).as_posix(): s.label for s in load_samples(listing, LABEL2ID, 4)}
    assert got == {
        "sp ace/my  video.mp4": 1,
        "sp ace/a,b.mp4": 2,
        "quoted, name.mp4": 0,
        "plain.mp4": 3,
    }
    listing.write_text("v.mp4,3,1\n")  # three columns: not a path with a comma, an error as before
    with pytest.raises(ValueError, match="line 1: expected 'path label'"):
        load_samples(listing, LABEL2ID, 4)


def test_list_lines_break_only_at_line_breaks_and_numeric_class_names_warn(tmp_path, recwarn):
    """str.splitlines broke a line at U+2028 (and \\x0b, \\x85, ...), legal in a file name: the run stopped
    on half a path. Class names that are other classes' indices silently took precedence over indices."""
    listing = tmp_path / "list.txt"
    listing.write_bytes("take\u2028two.mp4 1\r\nform\x0cfeed.mp4 2\rlast.mp4 0\n".encode())
    got = {Path(s.path).name: s.label for s in load_samples(listing, LABEL2ID, 4)}
    assert got == {"take\u2028two.mp4": 1, "form\x0cfeed.mp4": 2, "last.mp4": 0}
    assert not recwarn.list
    numeric = {"1": 0, "2": 1, "3": 2, "0": 3}
    listing.write_text("a.mp4 0\nb.mp4 3\nc.mp4 0\n")
    with pytest.warns(
        UserWarning,
        match=r"'0' \(first on line 1\) is class 3, not class 0, '3' \(first on line 2\) is class 2",
    ):
        got = {Path(s.path).name: s.label for s in load_samples(listing, numeric, 4)}
    assert got == {"a.mp4": 3, "b.mp4": 2, "c.mp4": 3}  # the names, as before
    ratings = {str(r): r - 1 for r in range(1, 6)}  # "5" is no index of 5 classes: the list holds names
    listing.write_text("a.mp4 1\nb.mp4 5\n")
    assert {Path(s.path).name: s.label for s in load_samples(listing, ratings, 5)} == {"a.mp4": 0, "b.mp4": 4}
    assert not recwarn.list


def test_sample_rate_is_checked(videos, bundled, tmp_path):
    from timesformer.evaluate import evaluate

    model, processor = bundled
    for rate in (0, -4):
        with pytest.raises(ValueError, match=f"sample_rate must be >= 1, got {rate}"):
            evaluate(videos, model, processor, tmp_path / "out", workers=0, sample_rate=rate)


def test_many_labels_give_the_confusion_as_pairs(monkeypatch):
    """A dense confusion matrix is quadratic in the labels: 16,000 labels ran out of memory writing it."""
    from timesformer import evaluate as ev
    from timesformer.evaluate import Sample, compute_metrics

    id2label = {i: f"c{i}" for i in range(3)}
    samples = [Sample(f"/v/{i}.mp4", i % 3) for i in range(5)]
    records = [
        {
            "path": s.path,
            "label_id": s.label,
            "top": [{"label_id": (s.label + (i == 4)) % 3}],
            "correct_top5": True,
        }
        for i, s in enumerate(samples)
    ]
    dense = compute_metrics(records, samples, id2label)
    assert dense["confusion"] == [[2, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert dense["confusion_pairs"] == [[0, 0, 2], [1, 1, 1], [1, 2, 1], [2, 2, 1]]
    monkeypatch.setattr(ev, "MAX_DENSE_CONFUSION", 2)
    sparse = compute_metrics(records, samples, id2label)
    assert sparse["confusion"] is None and sparse["confusion_pairs"] == dense["confusion_pairs"]


def test_a_batch_the_model_fails_on_is_run_a_video_at_a_time_and_errors_are_redone(
    videos, bundled, tmp_path, monkeypatch
):
    """One forward takes every view of a batch: out of memory on it made all its videos error lines, and
    --resume (with memory to spare) never tried them again."""
    from timesformer import classify as cl
    from timesformer import evaluate as ev

    model, processor = bundled
    real = cl.score_views
    fail_batches_of_several(monkeypatch)
    out = tmp_path / "out"
    metrics = ev.evaluate(videos, model, processor, out, workers=0, batch_size=3, limit=6)
    assert (metrics["num_scored"], metrics["top1"]) == (5, 1.0)  # broken.mp4 is the one error

    def never(model_, views, device):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(cl, "score_views", never)
    failed = tmp_path / "failed"
    metrics = ev.evaluate(videos, model, processor, failed, workers=0, batch_size=3, limit=6)
    assert metrics["num_scored"] == 0
    monkeypatch.setattr(cl, "score_views", real)
    metrics = ev.evaluate(videos, model, processor, failed, workers=0, limit=6, resume=True)
    assert (metrics["num_scored"], metrics["num_errors"], metrics["top1"]) == (5, 1, 1.0)
    paths = _paths(failed)
    assert len(paths) == len(set(paths)) == 6


def test_resume_after_a_label_is_corrected_redoes_its_videos(videos, bundled, tmp_path):
    """Lines were matched by path only: a resumed run kept the old labels of a corrected list file."""
    from timesformer.evaluate import evaluate

    model, processor = bundled
    clips = [sorted((videos / name).glob("clip*.mp4")) for name in LABELS]
    wrong, right = tmp_path / "wrong.txt", tmp_path / "right.txt"
    wrong.write_text("".join(f"{c[0]} {(i + 1) % 4}\n{c[1]} {i}\n" for i, c in enumerate(clips)))
    right.write_text("".join(f"{c[0]} {i}\n{c[1]} {i}\n" for i, c in enumerate(clips)))
    out = tmp_path / "out"
    assert evaluate(wrong, model, processor, out, workers=0)["top1"] == 0.5
    metrics = evaluate(right, model, processor, out, workers=0, resume=True)
    assert (metrics["top1"], metrics["videos_evaluated"]) == (1.0, 4)
    records = read_predictions(out / PREDICTIONS)
    assert len(records) == 8 and all(r["correct"] for r in records)


def test_resume_refuses_other_settings_when_none_of_its_videos_are_done(videos, bundled, tmp_path):
    """The settings check compared only when a video of this run's DATA was done: a run on other videos (or
    one whose lines were all errors) took new settings and rewrote settings.json."""
    from timesformer.evaluate import evaluate

    model, processor = bundled
    clips = sorted(videos.glob("*/clip*.mp4"))
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    first.write_text(f"{clips[0]} {LABELS.index(clips[0].parent.name)}\n")
    second.write_text(f"{clips[1]} {LABELS.index(clips[1].parent.name)}\n")
    out = tmp_path / "out"
    evaluate(first, model, processor, out, workers=0)
    with pytest.raises(ValueError, match=r"other settings: num_frames 4 \(was 8\)"):
        evaluate(second, model, processor, out, workers=0, resume=True, num_frames=4)


def test_merge_keeps_the_line_with_the_current_label_wherever_it_is(tmp_path):
    """A part file left by a killed torchrun job may hold a video's line with its old label after the line a
    resumed run wrote: the line with the label in DATA is kept, not the last one."""
    from timesformer.evaluate import Sample, merge_predictions

    out = tmp_path / "out"
    out.mkdir()
    now = {"path": "/v/x.mp4", "label": "c0", "label_id": 0, "error": "could not be read"}
    old = {"path": "/v/x.mp4", "label": "c1", "label_id": 1, "top": [{"label_id": 1}], "correct_top5": True}
    (out / PREDICTIONS).write_text(json.dumps(now) + "\n")
    (out / "predictions.part-00001.jsonl").write_text(json.dumps(old) + "\n")
    assert merge_predictions(out, [Sample("/v/x.mp4", 0)]) == [now]


def test_resume_refuses_other_preprocessing(videos, bundled, tmp_path):
    """The preprocessing was not among the settings: a model folder given another preprocessor config between
    two runs mixed two normalizations in one predictions.jsonl."""

    from timesformer.evaluate import evaluate
    from timesformer.preprocess import VideoProcessor

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=2)
    other = VideoProcessor.from_dict({**processor.to_dict(), "image_mean": [0.0, 0.0, 0.0]})
    with pytest.raises(
        ValueError, match=r"other settings: preprocessing image_mean \[0.0, 0.0, 0.0\] \(was \["
    ):
        evaluate(videos, model, other, out, workers=0, limit=4, resume=True)
    # A settings.json of an older version, without the preprocessing, is not compared on it.
    settings = json.loads((out / "settings.json").read_text())
    (out / "settings.json").write_text(json.dumps({k: v for k, v in settings.items() if " " not in k}))
    assert evaluate(videos, model, processor, out, workers=0, limit=4, resume=True)["num_missing"] == 0


def test_resume_refuses_weights_changed_under_the_same_name(videos, bundled, tmp_path):
    """A checkpoint overwritten in place (retrained into one folder, the bundled model of a newer release)
    has the same name: resumed, half the predictions were the old model's and half the new one's."""
    import copy

    import torch

    from timesformer.evaluate import evaluate, weights_digest

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=2, model_name="checkpoints/latest")
    changed = copy.deepcopy(model)
    with torch.no_grad():
        changed.classifier.weight.copy_(changed.classifier.weight.flip(0))
    assert weights_digest(changed) != weights_digest(model)
    assert weights_digest(copy.deepcopy(model).to(torch.float32)) == weights_digest(model)
    with pytest.raises(
        ValueError, match=r"other settings: model weights '[0-9a-f]{32}' \(was '[0-9a-f]{32}'\)"
    ):
        evaluate(videos, changed, processor, out, workers=0, resume=True, model_name="checkpoints/latest")
    metrics = evaluate(videos, model, processor, out, workers=0, resume=True, model_name="checkpoints/latest")
    assert metrics["num_videos"] == 9 and metrics["videos_evaluated"] == 7


def test_class_names_that_repeat_or_hold_markup_keep_every_class_and_the_plot(tmp_path):
    """Two indices named alike (ImageNet's two "crane") overwrote each other in per_class; a name with "$"
    (matplotlib's math) failed the whole command after the metrics were written."""
    from timesformer.evaluate import Sample, class_names, compute_metrics, write_reports

    assert set(class_names({0: "crane", 1: "crane", 2: "crane (1)"}).values()) == {
        "crane (0)",
        "crane (1) (1)",
        "crane (1)",
    }  # a class's own name is not taken by another's
    id2label = {0: "crane", 1: "pay $_$ tip", 2: "crane", 3: "a|b"}
    samples = [Sample(f"/v/{i}.mp4", i % 4) for i in range(6)]
    records = [
        {"path": s.path, "label_id": s.label, "top": [{"label_id": s.label}], "correct_top5": True}
        for s in samples
    ]
    metrics = compute_metrics(records, samples, id2label)
    assert metrics["per_class"] == {
        "crane (0)": {"videos": 2, "top1": 1.0},
        "pay $_$ tip": {"videos": 2, "top1": 1.0},
        "crane (2)": {"videos": 1, "top1": 1.0},
        "a|b": {"videos": 1, "top1": 1.0},
    }
    metrics.update(
        views={"clips": 1, "crops": 1, "num_frames": 8, "sample_rate": 4},
        model="m", backend="sdpa", device="cpu", dtype="float32", world_size=1, videos_evaluated=6,
        wall_time_s=1.0, videos_per_second=6.0, time_per_video_ms={},
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_reports(tmp_path, metrics, id2label)
    assert (tmp_path / "confusion.png").stat().st_size > 0
    assert "| a\\|b | 1 | 100.00% |" in (tmp_path / "metrics.md").read_text()


def test_list_files_comments_tabs_and_links_keep_paths_as_written(tmp_path):
    """A file named ``#1 take.mp4`` was dropped as a comment without a word; a tab-separated path lost its
    quotes (CSV rules); a list file reached through a link read its paths relative to the link's target."""
    (tmp_path / "#1 take.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text(
        f'#1 take.mp4 0\n"best" clip.mp4\t1\n# a comment\n#{"x" * 300}.mp4 0\n'
    )
    with pytest.warns(UserWarning, match=r"line 1: skipped as a comment .* write its path as ./#1 take.mp4"):
        samples = load_samples(tmp_path / "list.txt", LABEL2ID, 4)
    assert [Path(s.path).name for s in samples] == ['"best" clip.mp4']
    (tmp_path / "list.txt").write_text("./#1 take.mp4 0\n")
    assert [Path(s.path).name for s in load_samples(tmp_path / "list.txt", LABEL2ID, 4)] == ["#1 take.mp4"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "real.txt").write_text("vids/a.mp4 0\n")
    (tmp_path / "link.txt").symlink_to(tmp_path / "lists" / "real.txt")
    assert load_samples(tmp_path / "link.txt", LABEL2ID, 4)[0].path == str(tmp_path / "vids" / "a.mp4")


def test_an_output_that_is_a_class_folder_or_a_file_is_refused(videos, bundled, tmp_path):
    import shutil

    from timesformer.evaluate import evaluate

    model, processor = bundled
    data = tmp_path / "data"
    shutil.copytree(videos, data)
    with pytest.raises(
        ValueError, match=rf"is DATA's class folder '{LABELS[1]}': its videos would be left out"
    ):
        evaluate(data, model, processor, data / LABELS[1], workers=0)
    # Not there yet: the run was accepted, and its --resume refused (under torchrun, whether rank 0 had made
    # it when another rank listed DATA).
    with pytest.raises(ValueError, match=r"DIR .*eval would be one of DATA's class folders \('eval'\)"):
        evaluate(data, model, processor, data / "eval", workers=0)
    assert not (data / "eval").exists()
    # A hidden name is no class folder, before and after it exists.
    for _ in range(2):
        assert (
            evaluate(data, model, processor, data / ".eval", workers=0, limit=1, resume=True)["num_videos"]
            == 1
        )
    (tmp_path / "afile").write_text("x")
    with pytest.raises(
        ValueError, match=r"--output .*afile: expected a folder \(or a new name\), got a file"
    ):
        evaluate(data, model, processor, tmp_path / "afile", workers=0)


def test_a_resume_with_nothing_left_reports_no_times(videos, bundled, tmp_path):
    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    first = evaluate(videos, model, processor, out, workers=0, limit=2)
    assert all(v > 0 for v in first["time_per_video_ms"].values())
    again = evaluate(videos, model, processor, out, workers=0, limit=2, resume=True)
    assert again["videos_evaluated"] == 0 and set(again["time_per_video_ms"].values()) == {None}


_DYING_RANK = """
import os
import sys

from timesformer import __main__ as cli
from timesformer import evaluate as ev

if os.environ["RANK"] == "1":  # a machine lost during the run
    ev._score = lambda *args, **kwargs: os._exit(9)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_rank_that_dies_during_the_run_is_one_line_on_the_others(videos, tmp_path):
    """Across machines the survivors are not killed by their launcher: rank 0 finished its share, then printed
    thirty lines of gloo traceback. It says what happened in one line (exit 1), and --resume completes."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
               "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "OMP_NUM_THREADS": "1",
               "TORCHELASTIC_RUN_ID": "one-job-on-two-machines"}  # fmt: skip
        args = ["evaluate", str(videos), "--output", str(out), "--workers", "0", "--no-progress"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _DYING_RANK, *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [proc.communicate(timeout=240) for proc in procs]
    assert [proc.returncode for proc in procs] == [1, 9], results
    err = results[0][1].strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("timesformer: error: rank 0: another rank of the job died before the end (")
    assert (
        "by peer" in err
    )  # gloo's "Connection closed by peer" or "Read error ...: Connection reset by peer"
    assert err.endswith("this rank's 5 lines are kept: run again with --resume")
    proc = _cli("evaluate", str(videos), "--output", str(out), "--workers", "0", "--resume", "--json")
    metrics = json.loads(
        proc.stdout
    )  # rank 1's 4 videos, and broken.mp4 if rank 0 had it (errors are redone)
    assert (
        metrics["videos_evaluated"] in (4, 5) and metrics["num_missing"] == 0 and len(set(_paths(out))) == 9
    )


def test_a_label2id_that_disagrees_with_id2label_is_not_used(videos, bundled, tmp_path, reference):
    """A config.json whose label2id swaps two classes scored every video of them wrong (0% where all were
    right); one that points past the classes wrote lines no run reads back, so --resume never finished. The
    names predictions carry (id2label's) decide; each bad entry is named in a warning."""
    import copy

    from timesformer.evaluate import class_ids, evaluate

    model, processor = bundled
    model = copy.deepcopy(model)
    swapped = dict(LABEL2ID, **{LABELS[0]: 1, LABELS[1]: 0})
    with pytest.warns(UserWarning, match="disagrees with its id2label"):
        assert class_ids(model.config.id2label, swapped) == LABEL2ID
    model.config.label2id = dict(swapped, **{LABELS[2]: 7, "another name": 3})
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as caught:
        metrics = evaluate(videos, model, processor, out, workers=0)
    said = " | ".join(str(w.message) for w in caught)
    assert f"label2id[{LABELS[0]!r}] = 1 disagrees with its id2label (class 1 is {LABELS[1]!r}" in said
    assert f"label2id[{LABELS[2]!r}] = 7 is not one of its 4 classes: ignored" in said
    assert "another name" not in said
    ours, theirs = _metrics(out), _metrics(reference)
    assert ours.pop("model") != theirs.pop("model")  # named by its folder here, "(bundled)" by the command
    assert ours == theirs and metrics["top1"] == 1.0


def test_results_files_that_are_not_files_or_objects_are_refused(videos, bundled, tmp_path):
    """A FIFO named predictions.jsonl made the run wait forever; a settings.json of 5 was a TypeError
    traceback, and one of [] let a resume with other settings through."""
    import threading

    from timesformer.evaluate import evaluate

    model, processor = bundled
    out = tmp_path / "out"
    evaluate(videos, model, processor, out, workers=0, limit=1)
    for content in ("5", "[]", '"x"'):
        (out / "settings.json").write_text(content)
        with pytest.raises(
            ValueError, match=r"settings.json is unreadable \(expected a JSON object of settings"
        ):
            evaluate(videos, model, processor, out, workers=0, limit=2, resume=True, num_frames=4)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / PREDICTIONS)
    result = {}

    def run():
        try:
            evaluate(videos, model, processor, fifo, workers=0, limit=1, resume=True)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "evaluate waits on the FIFO"
    assert "expected a file of results, got not a regular file (a FIFO" in str(result.get("error")), result


# ------------------------------------------------------------------------------- records and metrics


def _line(path: str, label: int, predicted: list[int] | None = None, error: str | None = None) -> dict:
    record = {"path": path, "label": LABELS[label], "label_id": label}
    if error is not None:
        return {**record, "error": error}
    top = [{"label": LABELS[i], "label_id": i, "probability": 0.1} for i in predicted]
    return {**record, "top": top, "correct": predicted[0] == label}


def test_top5_is_counted_from_the_five_best_whatever_top_k(monkeypatch):
    """A video whose label ranks third is a top-5 hit with top_k 1 (the test over the bundled model, every
    video right, could not tell)."""
    from timesformer import evaluate as ev

    probs = torch.tensor([0.4, 0.3, 0.05, 0.25])  # label 2 ranks fourth of four, label 3 third
    monkeypatch.setattr(ev, "score_each", lambda model, views, device: [(probs, 1.0, None)] * len(views))
    item = {"path": "/v", "views": None, "error": None, "decode_ms": 1.0, "preprocess_ms": 1.0}
    totals = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
    (record,) = ev._score([{**item, "label": 3}], None, "cpu", dict(enumerate(LABELS)), 1, totals)
    assert [t["label_id"] for t in record["top"]] == [0] and record["correct_top5"] is True
    assert not record["correct"]


def test_mean_class_accuracy_weighs_each_class_once():
    from timesformer.evaluate import Sample, compute_metrics

    lines = [_line(f"/a{i}", 0, [0, 1]) for i in range(3)] + [_line("/b", 1, [0, 1])]
    samples = [Sample(r["path"], r["label_id"]) for r in lines]
    metrics = compute_metrics(lines, samples, dict(enumerate(LABELS)))
    assert metrics["top1"] == 0.75 and metrics["mean_class_accuracy"] == 0.5  # (1 + 0) / 2, not 3 / 4
    assert metrics["top5"] == 1.0 and metrics["confusion_pairs"] == [[0, 0, 3], [1, 0, 1]]


def test_merge_keeps_the_last_of_equal_lines(tmp_path):
    """Of two lines that stand alike (two error lines of a video tried twice), the newer one."""
    from timesformer.evaluate import Sample, merge_predictions

    older, newer = _line("/v", 1, error="could not be read"), _line("/v", 1, error="model forward failed")
    done = [_line("/w", 2, [2]), _line("/w", 2, [3])]
    (tmp_path / PREDICTIONS).write_text(
        "".join(json.dumps(r) + "\n" for r in [older, done[0], newer, done[1]])
    )
    merged = merge_predictions(tmp_path, [Sample("/v", 1), Sample("/w", 2)])
    assert merged == [newer, done[1]]


def test_a_label_index_of_the_models_range_only_is_a_prediction():
    from timesformer.evaluate import is_prediction

    assert is_prediction(_line("/v", 3, [0]), num_labels=4)
    assert not is_prediction(_line("/v", 3, [0]), num_labels=3)  # the label past the classes
    assert not is_prediction({**_line("/v", 0, [0]), "top": [{"label_id": 4}]}, num_labels=4)


def test_files_in_dir_are_never_written_through_a_link(tmp_path):
    """DIR's lock file is truncated and written, and each result file is written to ``NAME.tmp`` first: a link
    placed at either name had its target emptied or overwritten."""
    from timesformer import evaluate as ev

    victim = tmp_path / "victim.txt"
    victim.write_text("important data")
    output = tmp_path / "out"
    output.mkdir()
    (output / ev.LOCK).symlink_to(victim)
    with pytest.raises(
        ValueError, match=r"\.evaluate-lock: expected evaluate's lock file, got a symbolic link"
    ):
        ev._lock(output)
    (output / ev.LOCK).unlink()
    os.mkfifo(output / ev.LOCK)
    with pytest.raises(
        ValueError, match=r"\.evaluate-lock: expected evaluate's lock file, got something else"
    ):
        ev._lock(output)
    (output / ev.LOCK).unlink()

    (output / "metrics.json.tmp").symlink_to(victim)
    ev._replace_file(output / "metrics.json", b"{}\n")
    assert victim.read_text() == "important data"
    assert (output / "metrics.json").read_bytes() == b"{}\n" and not (output / "metrics.json").is_symlink()
    assert not os.path.lexists(output / "metrics.json.tmp")


def test_a_result_file_is_replaced_whole_or_not_at_all(tmp_path):
    """A write that fails part way (a full disk) names its file and leaves the old contents; confusion.png and
    metrics.md were written in place (a failure left an empty PNG), and the error named metrics.json."""
    import errno

    from timesformer import evaluate as ev

    path = tmp_path / "confusion.png"
    path.write_bytes(b"the previous plot")

    def chunks():
        yield b"half a plot"
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(ev.OutputError, match=r"cannot write .*confusion\.png: No space left on device"):
        ev._replace_file(path, chunks())
    assert path.read_bytes() == b"the previous plot"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png"]


def test_settings_that_cannot_be_written_are_a_bad_setup(tmp_path, monkeypatch):
    """settings.json is written before any video: its failure is the setup's plain OSError (exit 2), not an
    OutputError of the run (exit 1, advice to --resume)."""
    import errno

    from timesformer import evaluate as ev

    def full(_fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ev.os, "fsync", full)
    with pytest.raises(OSError, match="No space left on device") as caught:
        ev._check_settings(tmp_path, {"model": "m"}, compare=False, write=True)
    assert not isinstance(caught.value, ev.OutputError)
    assert list(tmp_path.iterdir()) == []
