"""What every benchmark shares: versions, commit and date of the run, the device, timing and peak rates."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import subprocess
import time
import traceback

import torch


def commit() -> str:
    """The short hash of HEAD; ``TIMESFORMER_COMMIT`` where it is set (a copied working tree without .git, as
    on a lent GPU machine, is told its commit that way)."""
    if os.environ.get("TIMESFORMER_COMMIT"):
        return os.environ["TIMESFORMER_COMMIT"]
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


def device_slug(device: torch.device) -> str:
    """The folder name of a device's results: ``nvidia-h200``, ``cpu``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-").lower()
    return "cpu"


def device_info(device: torch.device) -> dict:
    """Name, driver and size of the device the run used."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        driver = "unknown"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            driver = subprocess.run(
                [
                    "nvidia-smi",
                    "--query-gpu=driver_version",
                    "--format=csv,noheader",
                    f"--id={device.index or 0}",
                ],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        return {
            "type": "cuda",
            "name": torch.cuda.get_device_name(device),
            "driver": driver,
            "cuda": torch.version.cuda,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
        }
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model
            )
    except OSError:
        pass
    return {"type": "cpu", "name": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def versions() -> dict:
    """Versions of everything a result depends on (None where a package is not installed)."""
    import importlib.metadata

    out = {"torch": torch.__version__, "python": platform.python_version()}
    for dist in ("triton", "transformers"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    import timesformer  # on the path without being installed, as on a lent GPU machine

    out["timesformer"] = timesformer.__version__
    return out


def write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` whole or not at all (a temporary file renamed over it: a run killed while
    it saves leaves the previous version, never half a file); folders are created."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (as ``write_text``; values JSON lacks, e.g. dtypes, as strings); nothing
    when ``path`` is None."""
    if path:
        write_text(path, json.dumps(result, indent=2, default=str))


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

    def matmul_tflops(self, dtype: torch.dtype) -> float:
        """The device's matrix rate for ``dtype`` as torch reaches it: a large square product (8192^3 on a
        GPU, 2048^3 on a CPU, 256^3 in smoke runs), median TFLOP/s."""
        n = 256 if self.smoke else 8192 if self.device.type == "cuda" else 2048
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        b = torch.randn(n, n, device=self.device, dtype=dtype)
        if self.device.type == "cuda":
            ms = self.median_ms(lambda _: torch.mm(a, b), [None])
        else:
            torch.mm(a, b)  # warm-up: thread pool, first-touch of the output
            times = []
            for _ in range(5):
                start = time.perf_counter()
                torch.mm(a, b)
                times.append((time.perf_counter() - start) * 1e3)
            ms = statistics.median(times)
        return 2.0 * n**3 / ms / 1e9

    def copy_gbps(self) -> float:
        """Device-to-device copy rate, bytes read plus bytes written."""
        n = (2 * 2**30 if not self.smoke else 2**20) // 2
        src = torch.randn(n, device=self.device, dtype=torch.bfloat16)
        dst = torch.empty_like(src)
        ms = self.median_ms(lambda _: dst.copy_(src), [None])
        return 2 * src.numel() * src.element_size() / ms / 1e6


@contextlib.contextmanager
def no_tf32():
    """Full-precision float32 products within the block, for references: cuDNN convolutions (a patch
    embedding) default to TF32 on NVIDIA GPUs, matrix products may have been switched to it."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def deadline_in(seconds: float | None) -> float | None:
    """The ``time.monotonic()`` deadline ``seconds`` from now (None: no limit), for ``out_of_time``."""
    return None if seconds is None else time.monotonic() + seconds


def out_of_time(deadline: float | None) -> bool:
    """Whether ``time.monotonic()`` has passed ``deadline`` (None: no limit). A call on a lent GPU has a hard
    time limit: the benchmarks stop starting rows at their deadline, so what ran is kept and reported."""
    return deadline is not None and time.monotonic() > deadline


def error_status(exc: BaseException) -> str:
    """The ``failed`` status of a row whose code raised: the exception's type and first line."""
    first_line = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"failed: {type(exc).__name__}: {first_line}"


def measured_row(label: str, fields: dict, measure, describe, out_rows: list, on_row=None) -> dict:
    """One benchmark row: ``fields`` updated with what ``measure()`` returns (a ``status`` among it), or with a
    ``failed`` status and the traceback when it raises (one kernel's failure must not cost the rest of a GPU
    run); printed after ``label`` (``describe(row)`` when it is ok), appended to ``out_rows``, passed to
    ``on_row``."""
    row = dict(fields)
    try:
        row.update(measure())
    except Exception as exc:
        row.update(status=error_status(exc), traceback=traceback.format_exc())
    print(f"{label} {describe(row) if row['status'] == 'ok' else row['status']}")
    out_rows.append(row)
    if on_row is not None:
        on_row(row)
    return row


def wrong_answer(err: float, baseline_err: float, baseline: str) -> str | None:
    """The ``failed`` status of an output whose error against float32 math is over 4x the baseline path's
    (NaN included), or None when it passes. The kernel benchmarks never time a wrong answer; this is a sanity
    check (the tests enforce the accuracy rule, 2x)."""
    if err <= 4 * baseline_err + 1e-6:
        return None
    return f"failed: wrong output (error {err:.2e}, {baseline} {baseline_err:.2e}); not timed"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative error ``|a - b| / |b|`` by norm, computed in float64 (the tests use this one too)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


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
