"""The bundled model (``timesformer/assets/synthetic-motion/``): its files, its accuracy on held-out synthetic
clips with every backend that runs on the CPU, chance on frame-shuffled clips, and the README's command.

The clips are rendered with a seed that neither the training pool nor the training script's held-out sets
use (``scripts/train_synthetic_model.py``).
"""

from __future__ import annotations

import json

import pytest
import torch

from timesformer import TimesformerForVideoClassification
from timesformer.__main__ import main
from timesformer.assets import BUNDLED_MODEL
from timesformer.preprocess import VideoProcessor
from timesformer.synthetic import LABELS, make_processed_dataset, sample_clip, shuffle_frames

TEST_SEED = 8_000_000_001
N_CLIPS = 48


@pytest.fixture(scope="module")
def heldout():
    """48 clips at random frame sizes and aspects, a quarter of them through H.264."""
    processor = VideoProcessor.from_pretrained(BUNDLED_MODEL)
    x, y, is_mp4 = make_processed_dataset(N_CLIPS, seed=TEST_SEED, processor=processor, mp4_fraction=0.25)
    assert is_mp4.any() and not is_mp4.all()
    return x, y


def test_files_config_and_size():
    names = {p.name for p in BUNDLED_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    total = sum(p.stat().st_size for p in BUNDLED_MODEL.iterdir() if p.is_file())
    assert total <= 10 * 2**20, f"bundled model is {total / 2**20:.1f} MiB, the budget is 10 MiB"
    config = json.loads((BUNDLED_MODEL / "config.json").read_text())
    assert config["attention_type"] == "divided_space_time"
    assert [config["id2label"][str(i)] for i in range(len(LABELS))] == LABELS
    model = TimesformerForVideoClassification.from_pretrained(BUNDLED_MODEL, backend="eager")
    assert model.config.id2label == dict(enumerate(LABELS))
    processor = VideoProcessor.from_pretrained(BUNDLED_MODEL)
    assert processor.crop_size == (model.config.image_size, model.config.image_size)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_heldout_accuracy_and_shuffled_chance(backend, heldout):
    x, y = heldout
    model = TimesformerForVideoClassification.from_pretrained(BUNDLED_MODEL, backend=backend).eval()
    with torch.inference_mode():
        ordered = model(x).logits.argmax(-1)
        shuffled = model(shuffle_frames(x, seed=TEST_SEED)).logits.argmax(-1)
    accuracy = float((ordered == y).float().mean())
    shuffled_accuracy = float((shuffled == y).float().mean())
    assert accuracy >= 0.9, f"{backend}: held-out accuracy {accuracy:.3f}"
    # Chance is 1/4: a model that read the set of frames rather than their order would stay high here.
    assert shuffled_accuracy <= 0.5, f"{backend}: frame-shuffled accuracy {shuffled_accuracy:.3f}"


def test_heldout_accuracy_triton(heldout):
    """The Triton kernels (in the interpreter on a CPU: slow, so 8 clips) give the labels and logits of sdpa."""
    pytest.importorskip("triton")
    x, y = heldout
    picks = torch.cat([torch.nonzero(y == label)[:2, 0] for label in range(len(LABELS))])
    x, y = x[picks], y[picks]
    triton_model = TimesformerForVideoClassification.from_pretrained(BUNDLED_MODEL, backend="triton").eval()
    sdpa_model = TimesformerForVideoClassification.from_pretrained(BUNDLED_MODEL, backend="sdpa").eval()
    with torch.inference_mode():
        logits, expected = triton_model(x).logits, sdpa_model(x).logits
    assert float((logits.argmax(-1) == y).float().mean()) >= 7 / 8
    assert torch.equal(logits.argmax(-1), expected.argmax(-1))
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_readme_command_classifies_a_real_mp4(tmp_path, capsys):
    """``timesformer sample`` writes an MP4 through av; ``timesformer classify`` (no --model) labels it."""
    paths = []
    for label in range(len(LABELS)):
        path = tmp_path / f"clip{label}.mp4"
        sample_clip(path, label, seed=100 + label)
        paths.append(str(path))
    assert main(["classify", *paths, "--json", "--no-progress", "--top-k", "1"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["video"] for line in lines] == paths
    top = [line["labels"][0]["label"] for line in lines]
    assert top == LABELS


def test_training_script_smoke(tmp_path):
    """The script that made the bundled model runs end to end (a few steps; says nothing about accuracy)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "train_synthetic_model.py"
    spec = importlib.util.spec_from_file_location("train_synthetic_model", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "model"
    args = ["--out", str(out), "--steps", "2", "--pool", "8", "--batch-size", "4", "--warmup", "1"]
    threads = torch.get_num_threads()
    try:
        assert script.main([*args, "--eval-size", "4", "--eval-mp4-size", "4", "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)  # the script sets the process-wide count
    model = TimesformerForVideoClassification.from_pretrained(out, backend="sdpa")
    assert model.config.id2label == dict(enumerate(LABELS))
    assert VideoProcessor.from_pretrained(out).crop_size == (script.CROP, script.CROP)
    card = (out / "README.md").read_text()
    assert "--steps 2" in card and "frames shuffled" in card
