"""Train the bundled model: a small divided space-time TimeSformer on synthetic motion clips (CPU, minutes).

    python scripts/train_synthetic_model.py                      # writes timesformer/assets/synthetic-motion/

The classes (``timesformer.synthetic.LABELS``) are four orderings of the same frames, so the label needs
the order of the frames: the script reports the held-out accuracy on ordered clips and on the same clips
with their frames shuffled (chance: 25 %). The training clips are rendered up front (``--pool``) at random
frame sizes and aspects, a share of them round-tripped through H.264, and preprocessed by the bundled
``VideoProcessor``: the frames ``read_video`` + the processor give the model at inference. Batches draw
from that pool, half of them mirrored left-right (which swaps the labels right <-> left).

Reproducible: everything is a function of ``--seed`` (pool chunk ``i`` is ``make_processed_dataset(seed=
seed * 1_000_003 + i)``, the model's initialization and the batches use ``--seed`` too); the held-out
sets use seeds the pool does not use (``EVAL_SEEDS``). Results can still differ in the last bits between
machines (thread counts, BLAS kernels).

Writes ``config.json`` (with ``id2label``), ``model.safetensors`` (float32), ``preprocessor_config.json``
and ``README.md`` (the model card, with the measured accuracies) into ``--out``.
"""

from __future__ import annotations

import argparse
import math
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from timesformer import TimesformerConfig, TimesformerForVideoClassification  # noqa: E402
from timesformer.assets import BUNDLED_MODEL  # noqa: E402
from timesformer.configuration import PRESETS  # noqa: E402
from timesformer.preprocess import VideoProcessor  # noqa: E402
from timesformer.synthetic import (  # noqa: E402
    LABELS,
    make_processed_dataset,
    sample_clip,
    shuffle_frames,
)
from timesformer.video import read_video  # noqa: E402

MODEL = dict(
    **PRESETS["synthetic-motion"].fields,  # 8 frames of 32 x 32: a 4 x 4 grid of 8 x 8 patches
    attention_type="divided_space_time",
    # Five times the reference's 0.02: at 0.02 the MLPs start almost linear and the model stays a function
    # of the *set* of frames (chance) for thousands of steps; see ``init_embeddings``.
    initializer_range=0.1,
)
CROP = MODEL["image_size"]  # the model input
# Amplitude of the initial time embeddings (sin/cos features of the frame index).
TIME_AMPLITUDE = 3.0
# Held-out data: seeds of another range than the training pool's (seed * 1_000_003).
EVAL_SEEDS = {"heldout": 7_000_000_001, "mp4": 7_000_000_002, "shuffle": 7_000_000_003}
# The tests' clips (tests/test_bundled_model.py) use yet another seed.
# Mirroring a clip left-right swaps "right" and "left": 0 <-> 1 and 2 <-> 3.
MIRRORED_LABEL = torch.tensor([1, 0, 3, 2])


def processor() -> VideoProcessor:
    # Shortest edge = crop: the model sees the whole central square of the frame, where the shapes move.
    return VideoProcessor(shortest_edge=CROP, crop_size=(CROP, CROP))


def _sincos(n: int, dim: int, temperature: float) -> torch.Tensor:
    """``(n, dim)`` sin/cos features of positions ``0..n-1`` (the transformer paper's, as MAE initializes)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    omega = temperature ** -(torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    return torch.cat([(pos * omega).sin(), (pos * omega).cos()], 1)


@torch.no_grad()
def init_embeddings(model: TimesformerForVideoClassification) -> None:
    """Start with position and time embeddings that tell patches and frames apart.

    The reference initializes the time embeddings to zero, which leaves the untrained model a function of
    the *set* of frames; the order enters only through products of content and time features, whose
    gradients are then tiny. With sin/cos time features of amplitude ``TIME_AMPLITUDE`` (and the larger
    ``initializer_range``, which makes the MLPs' GELUs curved from the start) the products are there at
    step 0 and training leaves chance after a few hundred steps. Training changes all of it freely.
    """
    cfg = model.config
    hidden = cfg.hidden_size
    emb = model.timesformer.embeddings
    gh, gw = cfg.grid_hw
    py, px = _sincos(gh, hidden // 2, 100.0), _sincos(gw, hidden // 2, 100.0)
    grid = torch.cat([py[:, None].expand(gh, gw, -1), px[None].expand(gh, gw, -1)], -1)
    emb.position_embeddings[0, 1:] = grid.reshape(gh * gw, hidden)
    emb.time_embeddings[0] = _sincos(cfg.num_frames, hidden, 10.0) * TIME_AMPLITUDE


def render_pool(n: int, seed: int, proc: VideoProcessor, mp4_fraction: float, chunk: int = 500):
    """The training clips: ``make_processed_dataset`` in chunks, stored as float16 (half the memory).

    Returns ``(pixel_values (n, T, 3, CROP, CROP) float16, labels (n,))``.
    """
    xs, ys = [], []
    for i, start in enumerate(range(0, n, chunk)):
        x, y, _ = make_processed_dataset(
            min(chunk, n - start),
            seed=seed * 1_000_003 + i,
            processor=proc,
            mp4_fraction=mp4_fraction,
            mp4_preset="veryfast",
        )
        xs.append(x.half())
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.inference_mode()
def accuracy(model, pixel_values: torch.Tensor, labels: torch.Tensor, batch: int = 64) -> float:
    preds = torch.cat(
        [model(pixel_values[i : i + batch]).logits.argmax(-1) for i in range(0, len(labels), batch)]
    )
    return float((preds == labels).float().mean())


def demo_files_accuracy(model, proc: VideoProcessor, per_label: int = 5) -> dict[str, float]:
    """Accuracy on real MP4 files as the README's command makes them (``sample_clip``: 32 frames, 320x240),
    read back with ``timesformer.video.read_video`` at sample rates 4 (the default) and 3."""
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for label in range(len(LABELS)):
            for k in range(per_label):
                path = os.path.join(tmp, f"{label}_{k}.mp4")
                sample_clip(path, label, seed=9_000 + 10 * label + k)
                paths.append((path, label))
        for rate in (4, 3):
            clips = [read_video(p, num_frames=8, sample_rate=rate, seed=i) for i, (p, _) in enumerate(paths)]
            x = torch.stack([proc.preprocess(c) for c in clips])
            results[f"sample_rate={rate}"] = accuracy(model, x, torch.tensor([y for _, y in paths]))
    return results


def write_model_card(out: pathlib.Path, r: dict) -> None:
    cfg = r["config"]
    rows = "\n".join(f"| {i} | {name} |" for i, name in enumerate(LABELS))
    demo_line = "\n".join(
        f"- real MP4 files from `sample_clip` (32 frames, 320x240), `read_video(..., {k})`: "
        f"**{v:.1%}** ({4 * r['demo_per_label']} files)"
        for k, v in r["demo"].items()
    )
    text = f"""# synthetic-motion: a tiny TimeSformer that needs the order of the frames

A divided space-time TimeSformer (`TimesformerForVideoClassification`, Hugging Face format) trained from
scratch on synthetic clips by `scripts/train_synthetic_model.py`. It ships inside the package
(`timesformer.assets.BUNDLED_MODEL`) so that `timesformer classify clip.mp4` works offline, and as a
model that *must* look at the order of the frames: it is a demo and a test fixture, not a model of real
videos.

## Task

Each clip shows one random dark asymmetric shape (an L, arrow, flag, T, S or scalene triangle; random
colour, size, rolling rotation) travelling horizontally over a random mid-tone textured background
(`timesformer/synthetic.py`). The four classes are four orderings of the same frames:

| id | label |
|----|-------|
{rows}

Classes 2 and 3 bounce at constant speed: out through the even positions, back through the odd ones.
The positions are drawn first, for every class alike, and everything else in a frame is independent of
the label: the *set* of frames has the same distribution in every class, so a frame-shuffled clip says
nothing about its label (chance: 25 %).

Make a demo clip and classify it:

```python
from timesformer.synthetic import sample_clip

sample_clip("clip.mp4", label=2)  # 32 frames at 8 fps, 320x240, "right then back left"
```

## Model

{cfg["num_hidden_layers"]} layers, hidden size {cfg["hidden_size"]}, {cfg["num_attention_heads"]} heads, MLP {cfg["intermediate_size"]}, patch {cfg["patch_size"]}, input
{cfg["num_frames"]} x 3 x {cfg["image_size"]} x {cfg["image_size"]} (a 4 x 4 patch grid): {r["params"] / 1e6:.2f} M parameters, float32 weights
({r["weights_bytes"] / 1e6:.2f} MB; {r["folder_bytes"] / 1e6:.2f} MB for the whole folder). Preprocessing (`preprocessor_config.json`):
resize the shortest edge to {CROP}, center crop {CROP}x{CROP}, ImageNet mean/std.

## Training

{r["steps"]} AdamW steps (peak lr {r["lr"]:g}, weight decay {r["weight_decay"]:g}, {r["warmup"]} warm-up steps, cosine
decay), batch {r["batch_size"]}, backend `sdpa`, drawn from a pool of {r["pool"]:,} rendered clips (half of each batch
mirrored left-right, which swaps the labels right and left): frame sizes from 96x96 to 240x320, landscape
and portrait, frame steps as `read_video` samples them at sample rates 1 to 4, {r["mp4_fraction"]:.0%} of them
round-tripped through H.264 (CRF 18), all through the processor above. Initialization: the reference's,
with `initializer_range` 0.1 instead of 0.02 and sin/cos position and time embeddings instead of random and
zero ones (with the reference's initialization the model stayed at chance: see `init_embeddings` in the
script). Seed {r["seed"]}. Command (run from the repository root):

```
{r["command"]}
```

Rendering the pool took {r["render_seconds"] / 60:.1f} min, training **{r["train_seconds"] / 60:.1f} min**, {r["total_seconds"] / 60:.1f} min in all
with evaluation, on {r["machine"]} ({r["threads"]} threads, torch {torch.__version__}).

## Evaluation (held-out seeds, varied frame sizes)

- ordered clips: **{r["acc_heldout"]:.1%}** ({r["n_heldout"]} clips rendered as the training data, no H.264)
- MP4 round-trip (x264 CRF 18, medium preset, as `write_video`): **{r["acc_mp4"]:.1%}** ({r["n_mp4"]} clips)
- all {r["n_heldout"] + r["n_mp4"]} together: **{r["acc_all"]:.1%}**
- the same {r["n_heldout"] + r["n_mp4"]} clips with their frames shuffled: **{r["acc_shuffled"]:.1%}** (chance: 25 %)
{demo_line}

## Limitations

Synthetic data only; for the bouncing classes the turn must be inside the sampled frames (with the demo
clips it is in the middle, and `read_video`'s default sample rate 4 covers all 32 frames).
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=BUNDLED_MODEL)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--pool", type=int, default=8000, help="training clips rendered up front")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--mp4-fraction", type=float, default=0.2)
    parser.add_argument("--eval-size", type=int, default=600, help="held-out clips without H.264")
    parser.add_argument("--eval-mp4-size", type=int, default=200, help="held-out clips through H.264")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log-every", type=int, default=100)
    args = parser.parse_args(argv)

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    proc = processor()
    x_pool, y_pool = render_pool(args.pool, args.seed, proc, args.mp4_fraction)
    render_seconds = time.perf_counter() - start
    print(f"rendered {args.pool} training clips in {render_seconds:.0f} s", flush=True)

    config = TimesformerConfig(**MODEL, id2label=dict(enumerate(LABELS)))
    model = TimesformerForVideoClassification(config, backend="sdpa")
    init_embeddings(model)
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.dim() >= 2 and "embeddings" not in n]
    no_decay = [p for n, p in named if not (p.dim() >= 2 and "embeddings" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    print(
        f"{model.num_parameters() / 1e6:.2f} M parameters; {args.steps} steps of {args.batch_size}",
        flush=True,
    )

    model.train()
    gen = torch.Generator().manual_seed(args.seed)
    loss_sum, correct, seen = 0.0, 0, 0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args.steps, args.lr, args.warmup)
        idx = torch.randint(0, len(y_pool), (args.batch_size,), generator=gen)
        x, y = x_pool[idx].float(), y_pool[idx]
        # Mirror half the clips (and swap their labels): twice the clips for free.
        mirror = torch.rand(args.batch_size, generator=gen) < 0.5
        x[mirror] = x[mirror].flip(-1)
        y = torch.where(mirror, MIRRORED_LABEL[y], y)
        logits = model(x).logits
        loss = F.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_sum += float(loss.detach()) * len(y)
        correct += int((logits.argmax(-1) == y).sum())
        seen += len(y)
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(
                f"step {step + 1:5d}  loss {loss_sum / seen:.4f}  train acc {correct / seen:.3f}  "
                f"lr {opt.param_groups[0]['lr']:.2e}  {time.perf_counter() - start:6.0f} s",
                flush=True,
            )
            loss_sum, correct, seen = 0.0, 0, 0
    train_seconds = time.perf_counter() - start - render_seconds

    model.eval()
    x_h, y_h, _ = make_processed_dataset(args.eval_size, seed=EVAL_SEEDS["heldout"], processor=proc)
    x_m, y_m, _ = make_processed_dataset(
        args.eval_mp4_size, seed=EVAL_SEEDS["mp4"], processor=proc, mp4_fraction=1.0
    )
    acc_heldout, acc_mp4 = accuracy(model, x_h, y_h), accuracy(model, x_m, y_m)
    x_all, y_all = torch.cat([x_h, x_m]), torch.cat([y_h, y_m])
    # Shuffling the preprocessed frames equals shuffling the decoded ones: preprocessing is per frame.
    x_shuf = shuffle_frames(x_all, seed=EVAL_SEEDS["shuffle"])
    demo_per_label = 5
    results = dict(
        config=config.to_dict(),
        params=model.num_parameters(),
        **{k: v for k, v in vars(args).items() if k != "out"},  # steps, batch_size, lr, seed, ...
        render_seconds=render_seconds,
        train_seconds=train_seconds,
        n_heldout=len(y_h),
        n_mp4=len(y_m),
        acc_heldout=acc_heldout,
        acc_mp4=acc_mp4,
        acc_all=(acc_heldout * len(y_h) + acc_mp4 * len(y_m)) / len(y_all),
        acc_shuffled=accuracy(model, x_shuf, y_all),
        demo=demo_files_accuracy(model, proc, demo_per_label),
        demo_per_label=demo_per_label,
        machine=f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} CPUs), {platform.system()}".replace(
            "  ", " "
        ),
        command=" ".join(
            ["python scripts/train_synthetic_model.py"]
            + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]
        ),
    )
    print(
        f"held-out accuracy {results['acc_heldout']:.4f} ({len(y_h)} clips), "
        f"mp4 round-trip {results['acc_mp4']:.4f} ({len(y_m)}), all {results['acc_all']:.4f} ({len(y_all)}), "
        f"frames shuffled {results['acc_shuffled']:.4f} ({len(y_all)}; chance {1 / len(LABELS):.2f})",
        flush=True,
    )
    print(f"demo MP4 files through read_video: {results['demo']}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    results["weights_bytes"] = (args.out / "model.safetensors").stat().st_size
    results["total_seconds"] = time.perf_counter() - start
    # The card counts itself at its final size: write it twice.
    results["folder_bytes"] = 0
    write_model_card(args.out, results)
    results["folder_bytes"] = sum(f.stat().st_size for f in args.out.iterdir() if f.is_file())
    write_model_card(args.out, results)
    print(
        f"wrote {args.out} ({results['folder_bytes'] / 1e6:.2f} MB) in {results['total_seconds'] / 60:.1f} min",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
