"""The benchmark suite: one command that runs what fits the device it finds.

    python -m bench                 # GPU: the full suite; CPU: the short one (a few minutes on 2 cores)
    python -m bench --quick         # fewer configs, batch sizes and repetitions
    python -m bench --configs base --batches 1 32 --dtypes bfloat16 --impls "timesformer triton" "transformers eager"

On a GPU: TimeSformer-base, -HR and -L end to end (batch 1, 8, 32, and for HR and L the largest
power-of-two batch this package's triton backend fits), bf16 and fp16, every implementation of
``bench.e2e``; then the kernel microbenchmarks (``bench.bench_attention``, ``bench.bench_fusion``) with
each kernel's fraction of its roofline (the copy rate or the matrix peak, both measured in the same run).

On a CPU: TimeSformer-base, float32, batch 1, ``transformers`` eager against this package's ``sdpa``
backend in alternating rounds; then the CPU microbenchmarks of ``bench.bench_cpu_ops`` (pytest-benchmark).

Every run writes ``<date>-<mode>.json``, ``.md`` and ``.png`` under ``bench/results/<device>/`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile

import torch

from bench import e2e, report
from bench._common import Timer, commit, deadline_in, device_info, device_slug, versions

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv: list[str] | None, cuda_available: bool | None = None) -> argparse.Namespace:
    """The command line, with defaults filled in for the device (``--device``, else CUDA when present)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when present")
    parser.add_argument("--configs", nargs="+", choices=list(e2e.CONFIGS), default=None)
    parser.add_argument("--batches", nargs="+", type=int, default=None)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=None)
    parser.add_argument("--impls", nargs="+", choices=list(e2e.IMPLEMENTATIONS), default=None, metavar="IMPL")
    parser.add_argument("--quick", action="store_true", help="fewer configs, batches and repetitions")
    parser.add_argument("--no-e2e", dest="e2e", action="store_false", help="skip the end-to-end part")
    parser.add_argument("--no-kernels", dest="kernels", action="store_false", help="skip the microbenchmarks")
    parser.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="skip the video evaluation pipeline (timesformer evaluate: videos/s by decode workers)",
    )
    parser.add_argument(
        "--largest-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run HR and L at the largest power-of-two batch that fits (GPU default: on)",
    )
    parser.add_argument("--max-batch", type=int, default=512, help="upper limit of that search")
    parser.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
        help="torch.compile mode of the compiled baselines (default: torch.compile's default)",
    )
    parser.add_argument(
        "--graphs-batches", nargs="+", type=int, default=[1], help="batches run with CUDA graphs"
    )
    parser.add_argument(
        "--compile-batches",
        nargs="+",
        type=int,
        default=None,
        help="batches at which the torch.compile implementations run (default: all; each is a compile)",
    )
    parser.add_argument("--reps", type=int, default=None, help="GPU: timed calls per row (at most)")
    parser.add_argument("--rounds", type=int, default=None, help="CPU: alternating timed rounds")
    parser.add_argument(
        "--e2e-budget-s",
        type=float,
        default=None,
        help="seconds after which the end-to-end part starts no further row (those left are reported as "
        "skipped); for a call with a hard time limit",
    )
    parser.add_argument(
        "--kernels-budget-s", type=float, default=None, help="the same for the kernel microbenchmarks"
    )
    parser.add_argument("--out", default=None, help="output folder (default: bench/results/<device>/)")
    parser.add_argument("--stem", default=None, help="output file name without extension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check the arguments as on a GPU machine and print what would run; run nothing",
    )
    args = parser.parse_args(argv)

    if cuda_available is None:
        cuda_available = args.dry_run or torch.cuda.is_available()
    if args.device is None:
        args.device = "cuda" if cuda_available else "cpu"
    if args.device == "cuda" and not cuda_available:
        parser.error("--device cuda: no CUDA device is available here")
    gpu = args.device == "cuda"
    if args.configs is None:
        args.configs = ["base"] if (args.quick or not gpu) else ["base", "hr", "large"]
    if args.batches is None:
        args.batches = [1] if not gpu else [1, 32] if args.quick else [1, 8, 32]
    if args.dtypes is None:
        args.dtypes = ["float32"] if not gpu else ["bfloat16"] if args.quick else ["bfloat16", "float16"]
    if args.impls is None:
        args.impls = list(e2e.IMPLEMENTATIONS) if gpu else [e2e.EAGER, "timesformer sdpa"]
    if args.largest_batch is None:
        args.largest_batch = gpu and not args.quick
    if args.reps is None:
        args.reps = 10 if args.quick else 30
    if args.rounds is None:
        args.rounds = 3 if args.quick else 7
    given = args.batches + args.graphs_batches + (args.compile_batches or [])
    if any(b < 1 for b in given):
        parser.error(f"batch sizes must be >= 1, got {given}")
    if not gpu:
        half = [d for d in args.dtypes if d != "float32"]
        if half:
            parser.error(f"--dtypes {' '.join(half)}: the CPU suite runs float32 only")
    return args


def _flops(config: str, batch: int):
    from timesformer.flops import count_flops

    # One count for every implementation (the algebra's, whole last layer): TFLOP/s compares like with like.
    return count_flops(e2e.hf_config(config), batch)


def run_e2e(args, device: torch.device, timer: Timer | None, result: dict, save=lambda: None) -> None:
    """The end-to-end rows, appended to ``result["e2e"]`` as they finish (``save`` is called after each)."""
    deadline = deadline_in(args.e2e_budget_s)
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        opts = e2e.Options(
            dtype=dtype,
            device=device,
            compile_mode=args.compile_mode,
            reps=args.reps,
            rounds=args.rounds,
            graphs_batches=tuple(args.graphs_batches),
            compile_batches=None if args.compile_batches is None else tuple(args.compile_batches),
            seed=args.seed,
            deadline=deadline,
        )
        for config in args.configs:
            batches = list(args.batches)
            if args.largest_batch and config in ("hr", "large"):
                best = e2e.largest_batch(config, opts, max(batches), args.max_batch)
                if best:
                    batches.append(best)

            def add(row: dict, config: str = config) -> None:
                row["flops"] = _flops(config, row["batch"]).total
                result["e2e"].append(row)
                save()

            if device.type == "cuda":
                e2e.run_gpu(config, args.impls, batches, opts, timer, on_row=add)
            else:
                for row in e2e.run_cpu(config, args.impls, batches, opts):
                    add(row)


def run_gpu_kernels(args, device: torch.device, timer: Timer, result: dict, save=lambda: None) -> None:
    """The attention and fusion microbenchmarks at base shapes in bf16, each row appended to
    ``result["kernels"]`` as it finishes (``save`` is called after each)."""
    from bench import bench_attention, bench_fusion

    dtype = torch.bfloat16
    batches = [32] if args.quick else [32, 1, 8]  # the targets are at batch 32: first, in case time runs out
    deadline = deadline_in(args.kernels_budget_s)
    peak = result["peak_tflops"].get("bfloat16") or timer.matmul_tflops(dtype)

    def add(entry: dict, r: dict, ms_key: str) -> None:
        ms = r.get("ms")
        entry.update(batch=r["batch"], dtype="bfloat16", status=r["status"], detail=r)
        entry.setdefault("ms", ms[ms_key] if ms else None)
        entry.setdefault("baseline_ms", None)
        for key in ("speedup", "achieved", "unit", "roofline", "fraction_of_roofline"):
            entry.setdefault(key, None)
        result["kernels"].append(entry)
        save()

    def attention_row(r: dict) -> None:
        memory_bound = r["kernel"] == "temporal"
        entry = {"kernel": f"{r['kernel']} attention", "baseline": "reference path (permute/cat + SDPA)"}
        if r["status"] == "ok":
            entry.update(
                baseline_ms=r["ms"]["reference path"],
                speedup=r["speedup_vs_reference_path"],
                achieved=r["gbps"] if memory_bound else r["tflops"]["triton"],
                unit="GB/s" if memory_bound else "TFLOP/s",
                roofline="copy rate" if memory_bound else "matrix peak",
                fraction_of_roofline=r["fraction_of_copy_rate"]
                if memory_bound
                else r["tflops"]["triton"] / peak,
            )
        add(entry, r, "triton")

    def fusion_row(r: dict) -> None:
        entry = {"kernel": r["op"], "baseline": "unfused torch"}
        if r["status"] == "ok":
            entry.update(
                baseline_ms=r["ms"]["unfused torch"],
                speedup=r["speedup_vs_unfused"],
                bare_product_ms=r["ms"]["bare product"],
                achieved=r["tflops"]["fused"],
                unit="TFLOP/s",
                roofline="matrix peak",
                fraction_of_roofline=r["tflops"]["fused"] / peak,
            )
        add(entry, r, "fused")

    result["copy_gbps"] = bench_attention.run(
        batches, bench_attention.BASE, dtype, device, timer, [], deadline, attention_row
    )
    save()
    bench_fusion.run(batches, bench_fusion.BASE, dtype, device, timer, [], deadline, fusion_row)


def run_cpu_kernels(args, result: dict) -> int:
    """The pytest-benchmark files (ops, video decoding and preprocessing), their JSON turned into kernel rows
    (ours against the reference's path)."""
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "cpu_ops.json")
        rounds = ["--benchmark-min-rounds=3", "--benchmark-max-time=0.2"] if args.quick else []
        # A separate process: pytest's and the plugin's state stay out of this one (and out of a test
        # session that runs the suite).
        # A pytest of its own: none of a calling pytest's state (an xdist worker's PYTEST_XDIST_* variables
        # make pytest-benchmark disable itself).
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")},
            "PYTHONPATH": os.pathsep.join(
                filter(None, [os.path.dirname(here), os.environ.get("PYTHONPATH")])
            ),
        }
        code = subprocess.call(
            [
                sys.executable,
                "-m",
                "pytest",
                os.path.join(here, "bench_cpu_ops.py"),
                os.path.join(here, "bench_video.py"),
                "-q",
                "-p",
                "no:cacheprovider",
                "--benchmark-only",
                f"--benchmark-json={path}",
                "--benchmark-columns=median,iqr,rounds",
                *rounds,
            ],
            env=env,
        )
        if code != 0:
            return int(code)
        with open(path) as f:
            data = json.load(f)
    groups: dict[str, dict] = {}
    for b in data["benchmarks"]:
        groups.setdefault(b["group"], {})[b["extra_info"]["role"]] = b["stats"]["median"] * 1e3
    for name, ms in groups.items():
        if "ours" not in ms or "reference" not in ms:  # e.g. the native op's group without the extension
            continue
        result["kernels"].append(
            {
                "kernel": name,
                "batch": 1,
                "dtype": "float32",
                "status": "ok",
                "ms": ms["ours"],
                "baseline": "reference path",
                "baseline_ms": ms["reference"],
                "speedup": ms["reference"] / ms["ours"],
                "achieved": None,
                "unit": None,
                "roofline": None,
                "fraction_of_roofline": None,
            }
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        for key, value in vars(args).items():
            print(f"{key}: {value}")
        return 0
    device = torch.device(args.device)
    now = datetime.datetime.now(datetime.timezone.utc)
    mode = "quick" if args.quick else "full"
    out_dir = args.out or os.path.join(RESULTS, device_slug(device))
    stem = args.stem or f"{now.strftime('%Y%m%d-%H%M')}-{mode}"
    result = {
        "suite": "timesformer bench",
        "command": "python -m bench "
        + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)),
        "mode": mode,
        "date": now.isoformat(timespec="seconds"),
        "commit": commit(),
        "device": device_info(device),
        "versions": versions(),
        "args": {k: v for k, v in vars(args).items()},
        "compile_mode": args.compile_mode,
        "peak_tflops": {},
        "e2e": [],
        "kernels": [],
    }
    print(f"device: {result['device']['name']} · commit {result['commit']} · {mode} suite")

    def save() -> None:
        """Everything so far, written again (JSON and Markdown; the plot at the end): a run that is cut
        short still leaves its rows."""
        report.derive(result)
        report.write_all(result, out_dir, stem, plot_png=False)

    timer = Timer(device, smoke=False) if device.type == "cuda" else None
    if device.type == "cuda":
        for name in sorted({*args.dtypes, "bfloat16"} - {"float32"}):
            result["peak_tflops"][name] = timer.matmul_tflops(DTYPES[name])
    else:
        result["peak_tflops"]["float32"] = Timer(device, smoke=False).matmul_tflops(torch.float32)
    print(
        "matrix peak (measured): "
        + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in result["peak_tflops"].items())
    )
    save()
    status = 0
    if args.e2e:
        run_e2e(args, device, timer, result, save)
    if args.kernels:
        if device.type == "cuda":
            run_gpu_kernels(args, device, timer, result, save)
        else:
            status = run_cpu_kernels(args, result)
    if args.evaluate and importlib.util.find_spec("av") is None:
        print("video evaluation pipeline skipped: PyAV (av) is not installed")
    elif args.evaluate:
        from . import bench_evaluate

        result["evaluate"] = bench_evaluate.run(device, videos=8 if args.quick else 16)
    report.derive(result)
    paths = report.write_all(result, out_dir, stem)
    print(report.markdown(result))
    print("wrote " + ", ".join(paths.values()))
    if any(r.get("status", "ok").startswith("failed") for r in result["e2e"] + result["kernels"]):
        status = status or 2
    return status
