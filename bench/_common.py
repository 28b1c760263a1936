"""What every benchmark records about the run: versions, commit and date (imported by the bench scripts)."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import time

import torch


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict:
    """torch, timesformer and Python versions, the git commit and the UTC date of this run."""
    import timesformer

    return {
        "torch": torch.__version__,
        "timesformer": timesformer.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (folders created); nothing when ``path`` is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


class Timer:
    """Median milliseconds: CUDA events (``triton.testing.do_bench``) on a GPU, wall clock for smoke runs."""

    def __init__(self, device: torch.device, smoke: bool):
        self.device, self.smoke = device, smoke
        self.l2 = 0
        if device.type == "cuda":
            self.l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)

    def sets(self, make, nbytes: int) -> list:
        """Enough independent input sets that cycling through them spans twice the L2 cache."""
        count = 1 if self.smoke else max(1, -(-2 * self.l2 // max(nbytes, 1)))
        return [make(i) for i in range(min(count, 64))]

    def median_ms(self, fn, inputs: list) -> float:
        state = {"i": 0}

        def step():
            fn(inputs[state["i"] % len(inputs)])
            state["i"] += 1

        if self.smoke:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                step()
                times.append((time.perf_counter() - start) * 1e3)
            return statistics.median(times)
        import triton.testing

        return triton.testing.do_bench(step, warmup=25, rep=200, return_mode="median")

    def copy_gbps(self) -> float:
        """Device-to-device copy rate, bytes read plus bytes written."""
        n = (2 * 2**30 if not self.smoke else 2**20) // 2
        src = torch.randn(n, device=self.device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        ms = self.median_ms(lambda _: dst.copy_(src), [None])
        return 2 * src.numel() * src.element_size() / ms / 1e6


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``|a - b| / |b|`` by norm, in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def kernel_bench_setup(description: str, argv: list[str] | None, base: dict, smoke: dict):
    """The kernel benchmarks' shared command line: ``(args, device, shape, batches)``, or ``None`` (after
    saying why) when there is no GPU and no ``--smoke``. ``--smoke`` runs in Triton's CPU interpreter."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes on the CPU interpreter; no speed claims"
    )
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        return args, torch.device("cpu"), smoke, [1, 2]
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark measures GPU kernels (use --smoke to check the script)")
        return None
    return args, torch.device("cuda"), base, args.batches


def kernel_bench_record(name: str, args, device: torch.device, shape: dict) -> dict:
    """The header of a kernel benchmark's JSON: what ran, where, with which versions and timing method."""
    import triton

    return {
        "benchmark": name,
        "shape": {**shape, "dtype": args.dtype},
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else "cpu (interpreter smoke run)",
        "triton": triton.__version__,
        **provenance(),
        "timing": "wall clock, 3 runs (smoke)"
        if args.smoke
        else "triton.testing.do_bench median, CUDA events",
    }
