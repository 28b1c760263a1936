"""Command line: ``python -m timesformer demo`` and ``python -m timesformer info``.

``demo`` builds a randomly initialized model, runs one clip-shaped input through every backend that runs
on the chosen device, and prints each backend's agreement with ``eager`` and its median time.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import torch

PRESETS = {
    # TimeSformer-base, 8 x 224^2 (the K400 / SSv2 checkpoints' shape).
    "base": dict(),
    # A small model with the same token layout, for a quick look.
    "small": dict(
        hidden_size=192, num_attention_heads=3, intermediate_size=768, num_hidden_layers=4, image_size=112
    ),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def demo(args: argparse.Namespace) -> int:
    import timesformer

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    config = timesformer.TimesformerConfig(num_labels=400, **PRESETS[args.preset])
    if args.frames:
        config.num_frames = args.frames
    torch.manual_seed(0)
    model = (
        timesformer.TimesformerForVideoClassification(config, backend="eager")
        .to(device=device, dtype=dtype)
        .eval()
    )
    size = config.image_hw
    x = torch.randn(
        args.batch_size, config.num_frames, config.num_channels, *size, device=device, dtype=dtype
    )
    print(
        f"TimeSformer-{args.preset}: {model.num_parameters() / 1e6:.1f}M parameters, "
        f"input {tuple(x.shape)} {args.dtype} on {device}"
    )

    statuses = timesformer.available_backends(device, config.head_dim, dtype)
    results = {}
    reference = None
    with torch.inference_mode():
        for name, info in statuses.items():
            if name == "triton" and device.type == "cpu":
                info = info._replace(available=False, reason="on the CPU only in Triton's slow interpreter")
            if not info.available:
                print(f"  {name:7s} skipped: {info.reason}")
                continue
            model.set_backend(name)
            logits = model(x).logits.float()  # also the warm-up
            times = _time(lambda: model(x), device, args.repeats)
            if reference is None:
                reference = logits
            err = float((logits - reference).norm() / reference.norm())
            results[name] = statistics.median(times)
            top = logits[0].topk(3).indices.tolist()
            print(
                f"  {name:7s} median {results[name] * 1e3:9.1f} ms  rel. diff vs eager {err:.1e}  "
                f"top-3 classes of clip 0: {top}"
            )
    if "eager" in results:
        for name, t in results.items():
            if name != "eager":
                print(f"  {name} is {results['eager'] / t:.2f}x eager on this machine")
    return 0


def info(_: argparse.Namespace) -> int:
    import timesformer

    print(
        f"timesformer {timesformer.__version__}, torch {torch.__version__}, Python {platform.python_version()}"
    )
    try:
        import triton

        print(f"triton {triton.__version__}")
    except ImportError:
        print("triton not installed")
    devices = ["cpu"] + (
        [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    for dev in devices:
        label = torch.cuda.get_device_name(dev) if dev.startswith("cuda") else platform.processor() or "cpu"
        print(f"{dev} ({label}):")
        for name, status in timesformer.available_backends(dev).items():
            print(f"  {name:7s} {'yes' if status.available else 'no '}  {status.reason}")
    return 0


def bench(suite_args: list[str]) -> int:
    """Hand over to the benchmark suite (``python -m bench``), which lives in the repository, not the wheel."""
    import importlib.util
    import pathlib

    if importlib.util.find_spec("bench") is None:
        # An editable install or a source checkout: the repository root is the package's parent.
        root = pathlib.Path(__file__).resolve().parents[1]
        if (root / "bench" / "suite.py").is_file():
            sys.path.insert(0, str(root))
    try:
        from bench.suite import main as suite_main
    except ImportError:
        print(
            "timesformer bench: the benchmark suite is not here; it lives in the repository's bench/ folder "
            "(git clone, then `python -m bench` from the checkout)",
            file=sys.stderr,
        )
        return 2
    return suite_main(suite_args)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every other argument is the suite's (argparse would claim --help)
        return bench(argv[1:])
    parser = argparse.ArgumentParser(prog="timesformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run a random model through every available backend")
    p.add_argument("--preset", choices=sorted(PRESETS), default="base")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: the preset's 8)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="versions and which backends run here")
    p.set_defaults(func=info)
    sub.add_parser("bench", help="the benchmark suite (python -m bench); its arguments pass through")
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
