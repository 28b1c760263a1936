"""End-to-end CPU benchmark: this package's ``sdpa`` backend against ``transformers`` eager.

TimeSformer-base (8 x 224^2, float32, batch 1 by default), random weights shared by both models. The
outputs are compared before anything is timed; then the two implementations run in alternating pairs
(so drifts in machine load hit both), and the script reports the median time of each and the median of
the per-pair ratios.

    python bench/bench_e2e_cpu.py [--pairs 7] [--batch-size 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch
from _common import provenance, write_json  # bench/, on sys.path when a script here runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--pairs", type=int, default=7, help="timed (reference, ours) pairs after one warm-up"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)

    import transformers

    import timesformer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf_config = transformers.TimesformerConfig(
        num_frames=args.frames, image_size=args.image_size, num_labels=400
    )
    reference = transformers.TimesformerForVideoClassification(hf_config).eval()
    with torch.no_grad():  # random values everywhere, including the zero-initialized time embedding
        for p in reference.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ours = timesformer.from_hf(reference, backend="sdpa").eval()
    x = torch.randn(args.batch_size, args.frames, 3, args.image_size, args.image_size)

    runners = {
        "transformers eager": lambda: reference(pixel_values=x).logits,
        "timesformer sdpa": lambda: ours(x).logits,
    }
    with torch.inference_mode():
        expected = runners["transformers eager"]()
        got = runners["timesformer sdpa"]()  # also the warm-up of both
        rel = float((got - expected).norm() / expected.norm())
        if not rel <= 1e-5:
            print(f"FAILED: outputs differ (relative error {rel:.2e}); not timing a wrong answer")
            return 1
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(args.pairs):
            for name, fn in runners.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    ratios = [a / b for a, b in zip(times["transformers eager"], times["timesformer sdpa"], strict=True)]
    result = {
        "benchmark": "e2e_cpu",
        "model": f"TimeSformer-base {args.frames}x{args.image_size}^2, float32, batch {args.batch_size}",
        "device": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        **provenance(),
        "relative_error_vs_transformers": rel,
        "median_ms": {name: statistics.median(t) * 1e3 for name, t in times.items()},
        "all_ms": {name: [round(v * 1e3, 2) for v in t] for name, t in times.items()},
        "median_paired_speedup": statistics.median(ratios),
    }
    print(result["model"], f"on {result['device']} ({result['torch_threads']} torch threads)")
    print(f"outputs agree: relative error {rel:.2e}")
    for name, ms in result["median_ms"].items():
        print(f"  {name:20s} median {ms:9.1f} ms")
    print(f"  speedup (median of {args.pairs} alternating pairs): {result['median_paired_speedup']:.3f}x")
    write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
