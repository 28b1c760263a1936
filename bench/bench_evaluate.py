"""End-to-end video evaluation throughput (``timesformer evaluate``): videos/s by decode workers, and the time
per video split into decoding, preprocessing and the model.

The videos are 4-second 320x240 H.264 clips of the bundled model's classes (``timesformer sample``), the
model the bundled one, so the run measures the input pipeline: on a GPU the model's share is small, on the CPU
the tiny model still leaves decoding the largest part.

    python -m bench.bench_evaluate [--videos 16] [--workers 1 2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def make_videos(root: Path, count: int) -> Path:
    from timesformer.synthetic import LABELS, sample_clip

    for i in range(count):
        label = i % len(LABELS)
        folder = root / LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        sample_clip(folder / f"clip{i:03d}.mp4", label, seed=1000 + i)
    return root


def run(device: str | torch.device = "cpu", workers: list[int] | None = None, videos: int = 16) -> list[dict]:
    """One row per worker count: videos/s (wall time of the evaluation, model loaded) and ms per video."""
    from timesformer.classify import load_model
    from timesformer.evaluate import cpu_cores, default_workers, evaluate

    device = torch.device(device)
    workers = workers or sorted({1, 2} if device.type == "cpu" else {default_workers()})
    model, processor = load_model(device=device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = make_videos(Path(tmp) / "videos", videos)
        for n in workers:
            metrics = evaluate(
                data, model, processor, Path(tmp) / f"out-{n}", workers=n, batch_size=4, progress=False
            )
            rows.append(
                {
                    "workers": n,
                    "videos": metrics["num_videos"],
                    "top1": metrics["top1"],
                    "videos_per_s": metrics["videos_per_second"],
                    "wall_s": metrics["wall_time_s"],
                    "ms_per_video": metrics["time_per_video_ms"],
                    "backend": metrics["backend"],
                    "device": metrics["device"],
                    "cores": cpu_cores(),
                }
            )
    return rows


def markdown(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = [
        "## Video evaluation pipeline (`timesformer evaluate`)",
        "",
        f"{rows[0]['videos']} clips of 4 s at 320x240 (H.264), the bundled model on {rows[0]['device']} "
        f"({rows[0]['backend']}), {rows[0]['cores']} cores. Decode and preprocess run in the DataLoader's "
        "worker processes, in parallel with each other and with the model: their per-video times add up to more "
        "than the wall time per video when workers overlap.",
        "",
        "| decode workers | videos/s | decode ms/video | preprocess ms/video | model ms/video | top-1 |",
        "|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        ms = r["ms_per_video"]
        lines.append(
            f"| {r['workers']} | {r['videos_per_s']:.2f} | {ms['decode']:.1f} | {ms['preprocess']:.1f} | "
            f"{ms['model']:.1f} | {100 * r['top1']:.0f}% |"
        )
    return [*lines, ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.bench_evaluate", description=" ".join(__doc__.split("\n\n")[0].split())
    )
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = run(args.device, args.workers, args.videos)
    print("\n".join(markdown(rows)))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
