"""``timesformer classify``: labels per video, JSON lines, progress, order, and every error case, with a
random small model saved the way transformers saves one (plus a preprocessor_config.json)."""

from __future__ import annotations

import io
import json
import os
import sys

import pytest
import torch
from _videos import write_indexed_video
from conftest import fail_batches_of_several, randomize_

from timesformer import TimesformerConfig, TimesformerForVideoClassification
from timesformer.__main__ import main
from timesformer.preprocess import VideoProcessor
from timesformer.video import read_video

LABELS = ["walking", "running", "jumping", "sitting", "waving"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    config = TimesformerConfig(
        image_size=32,
        patch_size=8,
        num_frames=4,
        hidden_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=40,
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    model = randomize_(TimesformerForVideoClassification(config), seed=3)
    model.save_pretrained(path)
    VideoProcessor(
        shortest_edge=36, crop_size=(32, 32), image_mean=[0.45] * 3, image_std=[0.225] * 3
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    path = tmp_path_factory.mktemp("videos")
    out = []
    for k, (frames, h, w) in enumerate(
        [(40, 64, 96), (25, 96, 64), (9, 48, 48), (60, 72, 128), (33, 64, 64)]
    ):
        file = path / f"clip{k}.mp4"
        write_indexed_video(file, frames, h, w)
        out.append(str(file))
    return out


def _expected(model_dir, path, top_k=5):
    """The same pipeline by hand: read_video, the processor, the model, softmax, top-k."""
    model = TimesformerForVideoClassification.from_pretrained(model_dir, backend="sdpa").eval()
    frames = read_video(path, 4, 4, strategy="center")
    with torch.no_grad():
        probs = model(VideoProcessor.from_pretrained(model_dir)(frames)).logits.softmax(-1)[0]
    values, indices = probs.topk(top_k)
    return [(LABELS[i], v) for i, v in zip(indices.tolist(), values.tolist(), strict=True)]


def test_a_batch_the_model_fails_on_is_run_a_video_at_a_time(model_dir, videos, capsys, monkeypatch):
    """One forward takes every view of a batch: out of memory on it made every video of the batch an error."""
    fail_batches_of_several(monkeypatch)
    options = ["--json", "--top-k", "2", "--batch-size", "2", "--backend", "sdpa", "--no-progress"]
    assert main(["classify", *videos[:2], "--model", str(model_dir), *options]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    for obj, path in zip(lines, videos[:2], strict=True):
        expected = _expected(model_dir, path, 2)
        assert "error" not in obj and [x["label"] for x in obj["labels"]] == [n for n, _ in expected]


def test_json_lines_match_the_pipeline_by_hand(model_dir, videos, capsys):
    options = ["--json", "--top-k", "3", "--batch-size", "2", "--backend", "sdpa", "--workers", "3"]
    code = main(["classify", *videos, "--model", str(model_dir), *options, "--no-progress"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(videos)
    for line, path in zip(lines, videos, strict=True):  # one object per video, in the input order
        obj = json.loads(line)
        assert obj["video"] == path
        expected = _expected(model_dir, path, 3)
        assert [x["label"] for x in obj["labels"]] == [n for n, _ in expected]
        for x, (_, p) in zip(obj["labels"], expected, strict=True):
            assert x["probability"] == pytest.approx(p, abs=1e-5)
        assert set(obj["time_ms"]) == {"decode", "preprocess", "model"}


def test_text_output_and_timing(model_dir, videos, capsys):
    assert main(["classify", videos[0], "--model", str(model_dir), "--top-k", "2"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == videos[0] and len(lines) == 4 and lines[1].strip().endswith(tuple(LABELS))
    assert "time per video: decode" in lines[3] and "model" in lines[3]
    assert err == ""  # one video: no progress bar


def test_progress_bar_for_many_videos_on_a_terminal(model_dir, videos, capsys, monkeypatch):
    assert main(["classify", *videos, "--model", str(model_dir)]) == 0
    assert "videos" not in capsys.readouterr().err  # stderr is not a terminal here: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["classify", *videos, "--model", str(model_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{len(videos)}/{len(videos)} videos" in err and err.endswith("\n")


def test_results_and_errors_stream_in_order_below_the_bar(model_dir, videos, tmp_path, monkeypatch):
    """On a terminal the bar and the results shared lines ("[####...] 1/4 videos ... s0.mp4"); piped, the
    text results were not flushed, so an error line came out above the results before it."""

    class Terminal(io.StringIO):  # stdout and stderr on one terminal
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    monkeypatch.setattr(sys, "stderr", term)
    missing = str(tmp_path / "missing.mp4")
    args = [videos[0], missing, videos[1], videos[2]]
    assert main(["classify", *args, "--model", str(model_dir), "--top-k", "1", "--batch-size", "1"]) == 1
    # What the terminal shows: \r goes back to the line's start, \x1b[K erases the rest of it.
    screen = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in term.getvalue().split("\n")]
    bars = [line for line in screen if line.startswith("[")]
    assert bars and all(" videos, " in line for line in bars)
    rest = [line for line in screen if line and not line.startswith(("[", "  "))]
    assert rest[:4] == [videos[0], f"timesformer: error: {missing}: no such file", videos[1], videos[2]]
    assert rest[4].startswith("time per video")


def test_warnings_start_a_line_of_their_own_under_the_bar(model_dir, videos, monkeypatch):
    """A warning during the run ("the model failed on a batch") was printed at the end of the bar's line."""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    fail_batches_of_several(monkeypatch)
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["classify", *videos, "--model", str(model_dir), "--batch-size", "2"]) == 0
    screen = [line.rsplit("\r", 1)[-1].replace("\x1b[K", "") for line in term.getvalue().split("\n")]
    warned = [line for line in screen if "warning" in line]
    assert len(warned) == 2 and all(
        line.startswith("timesformer: warning: the model failed") for line in warned
    )


def test_strategy_and_seed_choose_the_frames_of_three_crops_and_are_refused_with_clips(
    model_dir, videos, capsys
):
    """With --crops 3 the strategy was ignored (center frames); with --clips K it still is, so it is refused."""
    from timesformer.classify import classify_videos, load_model
    from timesformer.evaluate import cut_views

    model, processor = load_model(str(model_dir), backend="sdpa")
    got = next(
        classify_videos([videos[0]], model, processor, strategy="uniform", crops=3, top_k=5, workers=0)
    )
    frames = read_video(videos[0], 4, 4, strategy="uniform")
    with torch.no_grad():
        views = cut_views(frames, processor, 4, 3, torch.float32, uint8=False)
        probs = model(views).logits.softmax(-1).mean(0)
    assert dict(got.labels) == pytest.approx({LABELS[i]: p for i, p in enumerate(probs.tolist())}, abs=1e-5)
    for option in (["--strategy", "uniform"], ["--seed", "0"]):
        assert main(["classify", videos[0], "--model", str(model_dir), "--clips", "2", *option]) == 2
        assert "--strategy and --seed choose the frames of one clip" in capsys.readouterr().err
    # --seed with a strategy it does not seed was ignored.
    for option, got in ([], "center (the default)"), (["--strategy", "uniform"], "uniform"):
        assert main(["classify", videos[0], "--model", str(model_dir), "--seed", "3", *option]) == 2
        assert f"--seed applies to --strategy random only, got strategy {got}" in capsys.readouterr().err
    assert (
        main(["classify", videos[0], "--model", str(model_dir), "--seed", "3", "--strategy", "random"]) == 0
    )


def test_a_closed_stderr_still_gives_the_results(model_dir, videos, tmp_path, monkeypatch, capsys):
    """``2>&-`` (sys.stderr is None): the progress bar's isatty() raised before any video, and an error line
    would have gone to stdout."""
    monkeypatch.setattr(sys, "stderr", None)
    missing = str(tmp_path / "missing.mp4")
    assert main(["classify", *videos[:3], missing, "--model", str(model_dir), "--json"]) == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["video"] for x in lines] == [*videos[:3], missing] and "error" in lines[3]


def test_bad_videos_fail_alone(model_dir, videos, tmp_path, capsys):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n" * 40)
    cut = tmp_path / "cut.mkv"
    write_indexed_video(tmp_path / "full.mkv", 90, 64, 96)
    data = (tmp_path / "full.mkv").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    missing = tmp_path / "missing.mp4"
    args = [videos[0], str(missing), str(text), videos[1], str(cut)]
    code = main(
        ["classify", *args, "--model", str(model_dir), "--json", "--no-progress", "--batch-size", "2"]
    )
    assert code == 1
    out, err = capsys.readouterr()
    results = [json.loads(line) for line in out.strip().splitlines()]
    assert [r["video"] for r in results] == args
    assert "labels" in results[0] and "labels" in results[3]
    errors = err.strip().splitlines()
    assert len(errors) == 3
    for line, path, reason in zip(
        errors,
        [missing, text, cut],
        ["no such file", "not a readable video file", "truncated video"],
        strict=True,
    ):
        assert line.startswith("timesformer: error: ") and str(path) in line and reason in line


def test_closing_the_results_early_stops_the_decoding_threads(model_dir, videos, monkeypatch):
    """Ctrl-C or a closed pipe ends the generator: the videos queued for decoding are not read and the one
    being read stops; the pool's exit waited for all of them (minutes with large files)."""
    import time

    from timesformer import video
    from timesformer.classify import classify_videos, load_model

    model, processor = load_model(str(model_dir), backend="sdpa")
    real, started, never_stopped = video.read_video, [], []

    def read_video(path, *args, **kwargs):
        started.append(path)
        if len(started) > 1:  # a long read: as slow as a large file, stopping as the real reads do
            stop = video._STOP.get()
            if stop is None or not stop.wait(timeout=20):
                never_stopped.append(path)  # (classify turns an exception here into an error line)
                raise RuntimeError("the read was never told to stop")
            raise video.ReadStopped
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video, "read_video", read_video)
    results = classify_videos(videos * 3, model, processor, batch_size=1, workers=1)
    assert next(results).error is None
    begin = time.monotonic()
    results.close()
    assert time.monotonic() - begin < 10
    assert len(started) <= 2  # the first video and at most the one being read, not the queue of 4
    assert never_stopped == []


def test_missing_model(tmp_path, videos, capsys):
    assert main(["classify", videos[0], "--model", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("timesformer: error: cannot load the model") and "\n" not in err


def test_bad_arguments(videos, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["classify", videos[0], "--batch-size", "0"])
    assert exc.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_sample_writes_a_clip_classify_can_read(tmp_path, model_dir, capsys):
    from timesformer.synthetic import LABELS as MOTIONS

    out = tmp_path / "sample.mp4"
    assert main(["sample", str(out), "--label", MOTIONS[1], "--seed", "3"]) == 0
    assert MOTIONS[1] in capsys.readouterr().out
    frames = read_video(out, 8, 4, strategy="center")
    assert frames.shape[0] == 8 and frames.dtype == torch.uint8 and frames.float().std() > 5
    assert main(["classify", str(out), "--model", str(model_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["video"] == str(out)
    for bad in ("flying", "99"):
        assert main(["sample", str(tmp_path / "x.mp4"), "--label", bad]) == 2
        assert capsys.readouterr().err.startswith("timesformer: error: ")


def test_sample_writes_a_local_file_whole_or_not_at_all(tmp_path, monkeypatch, capsys):
    """The name is a file name, not an FFmpeg URL (``file:x.mp4`` wrote ``x.mp4``, ``tcp:x.mp4`` tried the
    network); a failed write keeps the clip that was there, and leaves nothing beside it."""
    import errno

    from timesformer import synthetic

    monkeypatch.chdir(tmp_path)
    for name in ("file:a.mp4", "tcp:b.mp4"):
        assert main(["sample", name]) == 0
        assert read_video(tmp_path / name, 4, 2).shape[0] == 4
    before = (tmp_path / "tcp:b.mp4").read_bytes()
    real = synthetic._encode

    def encode_then_fill_the_disk(file, *args, **kwargs):
        real(file, *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(synthetic, "_encode", encode_then_fill_the_disk)
    capsys.readouterr()
    assert main(["sample", "tcp:b.mp4"]) == 1
    assert "cannot write tcp:b.mp4: No space left on device" in capsys.readouterr().err
    assert (tmp_path / "tcp:b.mp4").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["file:a.mp4", "tcp:b.mp4"]


def test_synthetic_clips_are_a_function_of_the_seed():
    from timesformer.synthetic import make_clip

    a, b = make_clip(2, seed=5, height=48, width=64), make_clip(2, seed=5, height=48, width=64)
    assert a.dtype == torch.uint8 and a.shape == (8, 48, 64, 3) and torch.equal(a, b)
    assert not torch.equal(a, make_clip(2, seed=6, height=48, width=64))


def test_no_bundled_model_says_what_to_do(videos, tmp_path, monkeypatch, capsys):
    import timesformer.classify

    monkeypatch.setattr(timesformer.classify, "bundled_model_dir", lambda: str(tmp_path))
    assert main(["classify", videos[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert "no bundled model" in err and "--model" in err and "\n" not in err


@pytest.mark.parametrize(
    "change, reason",
    [
        # A base checkpoint's config with no classes: the softmax of hidden features printed as labels.
        (dict(num_labels=0), "num_labels is 0: a classifier needs at least one class"),
        # Logits per frame: every video failed with "split_with_sizes expects ...".
        (dict(attention_type="space_only"), "attention_type 'space_only' gives one prediction per frame"),
    ],
)
def test_models_that_cannot_classify_clips_are_refused_at_load(
    model_dir, videos, tmp_path, capsys, change, reason
):
    config = TimesformerConfig.from_pretrained(model_dir)
    data = {**config.to_dict(), **change}
    if change.get("num_labels") == 0:
        data.pop("id2label"), data.pop("label2id")
    model = TimesformerForVideoClassification(TimesformerConfig.from_dict(data))
    model.save_pretrained(tmp_path)
    assert main(["classify", videos[0], "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("timesformer: error: cannot load the model") and reason in err


def test_a_base_checkpoint_without_a_head_is_refused_at_load(model_dir, videos, tmp_path, capsys):
    """It loaded with a fresh random head and a warning, then printed its noise as confident labels."""
    from timesformer.modeling import TimesformerModel

    config = TimesformerConfig.from_pretrained(model_dir)
    assert config.num_labels > 1  # (its classes named, as a base checkpoint's config may have them)
    TimesformerModel(config).save_pretrained(tmp_path)
    assert main(["classify", videos[0], "--model", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after loading's warning about the head)
    assert err.startswith("timesformer: error: cannot load the model")
    assert err.endswith(
        "a base checkpoint without classifier weights (classifier.bias, classifier.weight): it cannot classify "
        "before it is fine-tuned"
    )


def test_an_error_text_is_escaped_on_its_line(videos, monkeypatch, capsys):
    """An error's text comes from the decoder (FFmpeg's messages, a file's metadata): control characters in it
    reached the terminal, and a newline began a line that looked like a result."""
    import timesformer.video
    from timesformer.video import VideoError

    def failing(path, *args, **kwargs):
        raise VideoError(path, "bad\x1b[2J\n  99.99%  moving right")

    monkeypatch.setattr(timesformer.video, "read_video", failing)
    assert main(["classify", videos[0]]) == 1
    err = capsys.readouterr().err
    assert "\x1b" not in err and "\\x1b[2J\\n  99.99%  moving right" in err
    assert not any(line.startswith("  99.99%") for line in err.splitlines())


def test_names_the_terminal_cannot_show_are_escaped(model_dir, videos, tmp_path):
    """An ASCII stdout (a C locale without UTF-8 mode) and a non-ASCII file name or label: a traceback."""
    import shutil
    import subprocess

    video = tmp_path / "clé.mp4"
    shutil.copy(videos[0], video)
    env = dict(os.environ, PYTHONIOENCODING="ascii")
    command = [
        sys.executable,
        "-m",
        "timesformer",
        "classify",
        str(video),
        "--model",
        str(model_dir),
        "--top-k",
        "1",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(tmp_path / "cl\\xe9.mp4")
