"""The ``timesformer`` command (also ``python -m timesformer``).

- ``classify VIDEO...``: top-k labels per video (default model: the bundled one, offline);
- ``evaluate DATA --output DIR``: accuracy and a confusion matrix over a labelled video set, resumable,
  across processes and machines under ``torchrun`` (``timesformer.evaluate``);
- ``sample OUT.mp4``: write a synthetic clip the bundled model knows (a real H.264 MP4);
- ``info``: versions, devices, which backends run here and why, whether the native extension is built;
- ``bench``: the benchmark suite (``python -m bench``) from a repository checkout;
- ``demo``: a randomly initialized model through every backend that runs here, agreement and time.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import platform
import signal
import statistics
import sys
import threading
import time
import warnings

import torch

from .backends import BACKEND_CHOICES
from .configuration import PRESETS
from .video import MAX_FRAME_PIXELS, MAX_NUM_FRAMES

# What `timesformer sample` writes: H.264 in these containers.
SAMPLE_EXTENSIONS = (".mp4", ".mkv", ".mov")


def _time(fn, device: torch.device, repeats: int) -> list[float]:
    from .classify import synchronize as _sync

    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation that failed (torch's CPU allocator raises a plain RuntimeError)."""
    return isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


def demo(args: argparse.Namespace) -> int:
    from .classify import resolve_device

    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        _error(str(exc))
        return 2
    try:
        return _demo(args, device)
    except Exception as exc:
        if not _out_of_memory(exc):
            raise
        frames = f" --frames {args.frames}" if args.frames else ""
        _error(
            f"not enough memory on {device} for --preset {args.preset} --batch-size {args.batch_size}{frames}: "
            f"{printable((str(exc).splitlines() or [type(exc).__name__])[-1])}"
        )
        return 2


def _demo(args: argparse.Namespace, device: torch.device) -> int:
    import timesformer

    dtype = getattr(torch, args.dtype)
    config = timesformer.TimesformerConfig(num_labels=400, **PRESETS[args.preset].fields)
    if args.frames is not None:
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
        f"{PRESETS[args.preset].title}: {model.num_parameters() / 1e6:.1f}M parameters, "
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
    from .preprocess import native_available, native_cuda_available

    if native_available():
        cuda = "with its CUDA kernel" if native_cuda_available() else "CPU only"
        print(f"native preprocessing extension: built ({cuda})")
    else:
        print("native preprocessing extension: not built (the pure-torch preprocessing runs instead)")
    try:
        import av

        print(f"PyAV {av.__version__} (video decoding)")
    except ImportError:
        print("PyAV not installed: video decoding (timesformer classify) needs it (pip install av)")
    from .assets import BUNDLED_MODEL

    print(
        f"bundled model: {BUNDLED_MODEL} ({'present' if (BUNDLED_MODEL / 'config.json').is_file() else 'missing'})"
    )
    return 0


def _error(message: str) -> None:
    if sys.stdout is not None and not sys.stdout.closed:
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()  # the results before it come first when both go to one place
    _say(f"error: {message}")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n``, ``\\x1b``): a file name or label can then not
    fake a result line or send terminal escape sequences."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(text))


def classify(args: argparse.Namespace) -> int:
    import json

    from .classify import classify_videos, load_model
    from .evaluate import Progress

    if args.clips > 1 and (args.strategy is not None or args.seed is not None):
        # Was ignored: --clips K takes K uniform clips, whatever the strategy.
        _error(
            "--strategy and --seed choose the frames of one clip; --clips K takes K uniform clips: use one"
        )
        return 2
    if args.seed is not None and args.strategy != "random":
        # Was ignored: center and uniform take the same frames whatever the seed.
        _error(
            f"--seed applies to --strategy random only, got strategy {args.strategy or 'center (the default)'}"
        )
        return 2
    dtype = getattr(torch, args.dtype)  # one of --dtype's choices
    try:
        # Model, backend, device and preprocessing are all checked here, before any video is decoded.
        model, processor = load_model(args.model, backend=args.backend, device=args.device, dtype=dtype)
    except Exception as exc:  # a bad setup: one line, exit 2
        _error(f"cannot load the model {args.model or '(bundled)'}: {printable(exc)}")
        return 2
    progress = Progress(len(args.videos), enabled=False if args.no_progress else None, min_total=4)
    failed = 0
    totals = {"decode": 0.0, "preprocess": 0.0, "model": 0.0}
    done = 0
    for pred in classify_videos(
        args.videos,
        model,
        processor,
        top_k=args.top_k,
        batch_size=args.batch_size,
        num_frames=args.num_frames,
        sample_rate=args.sample_rate,
        strategy=args.strategy or "center",
        seed=0 if args.seed is None else args.seed,
        workers=args.workers,
        clips=args.clips,
        crops=args.crops,
        max_frame_pixels=args.max_frame_pixels,
    ):
        progress.clear()  # a result never shares the bar's line; the bar is drawn again below it
        if pred.error is not None:
            failed += 1
            _error(f"{printable(pred.path)}: {printable(pred.error)}")
            if args.json:
                print(json.dumps(pred.to_json()), flush=True)
        else:
            done += 1
            totals["decode"] += pred.decode_ms
            totals["preprocess"] += pred.preprocess_ms
            totals["model"] += pred.model_ms
            if args.json:
                print(json.dumps(pred.to_json()), flush=True)
            else:
                lines = [printable(pred.path)]
                lines += [f"  {100 * p:6.2f}%  {printable(label)}" for label, p in pred.labels]
                print("\n".join(lines), flush=True)  # streamed, as each video is done
        progress.step()
    if done and not args.json:
        param = next(model.parameters())
        per = {k: v / done for k, v in totals.items()}
        print(
            f"time per video: decode {per['decode']:.1f} ms, preprocess {per['preprocess']:.1f} ms, "
            f"model {per['model']:.1f} ms ({done} video{'s' if done > 1 else ''}; backend {model.backend}, "
            f"{param.device.type}, {str(param.dtype).replace('torch.', '')})"
        )
    return 1 if failed else 0


def evaluate(args: argparse.Namespace) -> int:
    from .evaluate import _closes_its_process_group

    return _closes_its_process_group(_evaluate)(args)


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from .classify import load_model, resolve_device
    from .evaluate import (
        OutputError,
        RankError,
        RankLostError,
        WorkerError,
        default_device,
        evaluate,
        init_distributed,
        missing_message,
        percent,
        together,
    )

    dtype = getattr(torch, args.dtype)  # one of --dtype's choices
    try:
        # The ranks of a torchrun job join first, so that a device or model that fails on one machine stops
        # all.
        rank, _ = init_distributed()
    except ValueError as exc:  # torchrun's variables, set wrong by hand
        _error(printable(exc))
        return 2
    try:
        with together("load the model"), warnings.catch_warnings():
            if rank > 0:  # (the model's warnings are the same on every rank: rank 0 gives them)
                warnings.simplefilter("ignore")
            device = default_device(resolve_device(args.device) if args.device else None)
            model, processor = load_model(args.model, backend=args.backend, device=device, dtype=dtype)
    except RankError as exc:
        _error(printable(exc))
        return 2
    except Exception as exc:  # a bad setup: one line, exit 2
        _error(f"cannot load the model {args.model or '(bundled)'}: {printable(exc)}")
        return 2
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        try:
            metrics = evaluate(
                args.data,
                model,
                processor,
                args.output,
                clips=args.clips,
                crops=args.crops,
                batch_size=args.batch_size,
                workers=args.workers,
                num_frames=args.num_frames,
                sample_rate=args.sample_rate,
                top_k=args.top_k,
                resume=args.resume,
                limit=args.limit,
                max_frame_pixels=args.max_frame_pixels,
                # A local folder by its absolute path: a resumed run matches it however it is spelled.
                model_name=(
                    os.path.abspath(args.model)
                    if args.model and os.path.isdir(args.model)
                    else args.model or "(bundled) synthetic-motion"
                ),
                progress=False if args.no_progress else None,
            )
        except (OutputError, WorkerError, RankLostError) as exc:  # during the run: what was written is kept
            _error(printable(exc))
            return 1
        except (OSError, ValueError, RankError) as exc:  # the set-up
            _error(printable(exc))
            return 2
    if not metrics:  # a rank other than 0 of a torchrun job: rank 0 reports
        return 0
    summary = {k: v for k, v in metrics.items() if k not in ("confusion", "confusion_pairs", "per_class")}
    if args.json:
        print(json.dumps(summary))
    else:
        print(
            f"{metrics['num_scored']} of {metrics['num_videos']} videos scored ({metrics['num_errors']} errors): "
            f"top-1 {percent(metrics['top1'])}, top-5 {percent(metrics['top5'])}, mean class accuracy "
            f"{percent(metrics['mean_class_accuracy'])}; {metrics['videos_per_second']:.2f} videos/s; "
            f"results in {printable(args.output)}"
        )
    if metrics["num_errors"]:
        _error(
            f"{metrics['num_errors']} video(s) could not be evaluated: see the error lines of predictions.jsonl"
        )
    if metrics["num_missing"]:
        _error(missing_message(metrics, args.output))
        return 1
    return 0


def _given(text: str) -> str:
    """An argparse type: a non-empty string (an empty path would mean the current folder, an empty device the
    default one)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a value, got an empty string")
    return text


def _int_in(low: int, high: int):
    """An argparse type: an int from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high:,}, got {value}")
        return value

    return parse


_clips = _int_in(1, 64)
# Counts with a bound far past any use (top-k is capped at the labels, workers at the videos): a larger
# number gave an internal error ("Stop argument for islice() must be ... sys.maxsize").
_count = _int_in(1, 2**31)
_workers = _int_in(0, 2**16)


def _video_model_options(p: argparse.ArgumentParser, device_help: str) -> None:
    """The options ``classify`` and ``evaluate`` share: the model, where it runs, and the views."""
    p.add_argument(
        "--model", type=_given, default=None, help="model directory or hub id (default: the bundled model)"
    )
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    p.add_argument("--device", type=_given, default=None, help=device_help)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument(
        "--num-frames",
        type=_int_in(1, MAX_NUM_FRAMES),
        default=None,
        help="frames per clip (default: the model's)",
    )
    p.add_argument("--sample-rate", type=_int_in(1, 10000), default=4)
    p.add_argument("--clips", type=_clips, default=1, help="uniform temporal clips per video (default 1)")
    p.add_argument(
        "--crops", type=int, choices=[1, 3], default=1, help="spatial crops: 1 center, 3 along the long side"
    )
    p.add_argument(
        "--max-frame-pixels",
        type=_int_in(1, 2**40),
        default=MAX_FRAME_PIXELS,
        help=f"refuse videos with larger frames (default {MAX_FRAME_PIXELS:,} = 4096x4096)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def sample(args: argparse.Namespace) -> int:
    from .synthetic import LABELS, sample_clip

    label = args.label
    if not (label.isascii() and label.isdigit()):  # "²" is a digit to isdigit, not to int
        matches = [i for i, name in enumerate(LABELS) if name == label]
        if not matches:
            _error(
                f"unknown label {label!r}; expected an index 0-{len(LABELS) - 1} or one of: {', '.join(LABELS)}"
            )
            return 2
        label = matches[0]
    label = int(label)
    if not 0 <= label < len(LABELS):
        _error(f"label index {label} out of range 0-{len(LABELS) - 1}")
        return 2
    folder, ext = os.path.dirname(os.path.abspath(args.out)), os.path.splitext(args.out)[1].lower()
    if ext not in SAMPLE_EXTENSIONS:
        _error(
            f"{printable(args.out)}: expected a file name ending in {', '.join(SAMPLE_EXTENSIONS)} (H.264 video)"
        )
        return 2
    if not os.path.isdir(folder):
        _error(f"{printable(args.out)}: the folder {printable(folder)} does not exist")
        return 2
    try:
        sample_clip(args.out, label, seed=args.seed)
    except OSError as exc:
        _error(f"cannot write {printable(args.out)}: {exc.strerror or exc}")
        return 1
    print(f"wrote {printable(args.out)} (a synthetic clip: {LABELS[label]})")
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
    p.add_argument("--batch-size", type=_int_in(1, 4096), default=1)
    p.add_argument(
        "--frames", type=_int_in(1, 4096), default=None, help="frames per clip (default: the preset's)"
    )
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--device", type=_given, default=None, help="default: cuda if available, else cpu")
    p.add_argument("--repeats", type=_int_in(1, 1000), default=3)
    p.set_defaults(func=demo)
    p = sub.add_parser("info", help="versions and which backends run here")
    p.set_defaults(func=info)
    sub.add_parser("bench", help="the benchmark suite (python -m bench); its arguments pass through")
    p = sub.add_parser("classify", help="top-k labels of video files")
    p.add_argument("videos", type=_given, nargs="+", metavar="VIDEO")
    _video_model_options(p, device_help="default: cuda if available, else cpu")
    p.add_argument("--top-k", type=_count, default=5)
    p.add_argument("--batch-size", type=_count, default=4)
    p.add_argument(
        "--strategy",
        choices=["center", "uniform", "random"],
        default=None,
        help="which frames make the clip (default center; with --clips 1 only)",
    )
    p.add_argument(
        "--seed", type=_int_in(0, 2**32 - 1), default=None, help="seed of the random strategy (default 0)"
    )
    p.add_argument("--workers", type=_workers, default=2, help="decoding threads")
    p.add_argument("--json", action="store_true", help="one JSON object per video on stdout")
    p.set_defaults(func=classify)
    p = sub.add_parser(
        "evaluate",
        help="accuracy of a model on a labelled video set (multi-view, parallel decoding, resumable, torchrun)",
    )
    p.add_argument(
        "data",
        type=_given,
        metavar="DATA",
        help="a folder of class-named subfolders, or a 'path label' list file",
    )
    p.add_argument(
        "--output", type=_given, required=True, metavar="DIR", help="where predictions and metrics go"
    )
    _video_model_options(p, device_help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument(
        "--batch-size", type=_count, default=4, help="videos per forward (each with clips x crops views)"
    )
    p.add_argument(
        "--workers", type=_workers, default=None, help="decoding processes per rank (default: the cores)"
    )
    p.add_argument("--top-k", type=_count, default=5, help="labels kept per video in the predictions")
    p.add_argument("--resume", action="store_true", help="skip the videos already in DIR's predictions")
    p.add_argument("--limit", type=_count, default=None, help="only the first N videos (sorted by path)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=evaluate)
    p = sub.add_parser("sample", help="write a synthetic clip that the bundled model classifies")
    p.add_argument("out", type=_given, metavar="OUT.mp4")
    from .synthetic import LABELS

    classes = ", ".join(f"{i} {name!r}" for i, name in enumerate(LABELS))
    p.add_argument("--label", default="0", help=f"class index or name (default 0): {classes}")
    p.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0)
    p.set_defaults(func=sample)
    args = parser.parse_args(argv)
    if sys.stdout is None or sys.stdout.closed:
        _error("standard output is closed; nothing could be reported")
        return 2
    return _run(args.func, args)


class _OneLine(logging.Handler):
    """The package's log records (a newly initialized head, a skipped line of results) as the CLI's warnings."""

    def emit(self, record: logging.LogRecord) -> None:
        _say(f"{record.levelname.lower()}: {printable(record.getMessage())}")


def _say(text: str) -> None:
    """A ``timesformer: ...`` line on stderr, on a line of its own (an unfinished progress bar is erased first,
    and drawn again below it at its next step). Nothing where stderr is closed (``2>&-``)."""
    if sys.stderr is None:  # (print would write it to stdout)
        return
    from .evaluate import Progress

    Progress.clear_drawn()
    print(f"timesformer: {text}", file=sys.stderr)


def _run(func, args) -> int:
    """Run a command: Ctrl-C stops it cleanly (exit 130), a reader that goes away (``| head``) ends it
    quietly, and a standard output that cannot be written (full disk) is one error line, exit 1."""
    package_log, handler = logging.getLogger("timesformer"), _OneLine(logging.WARNING)
    package_log.addHandler(handler)
    sigint = None
    # A label or file name the terminal's encoding cannot show (an ASCII locale) is escaped, not a traceback;
    # the streams' own setting is back after the command (a program or notebook that called main()).
    streams = [(s, s.errors) for s in (sys.stdout, sys.stderr) if hasattr(s, "reconfigure")]
    for stream, _ in streams:
        # (A closed stream: the command says so when it writes.)
        with contextlib.suppress(OSError, ValueError):
            stream.reconfigure(errors="backslashreplace")
    try:
        with warnings.catch_warnings():
            # A warning is one line like the errors, not Python's "file:line: UserWarning: ..." pair of lines.
            warnings.showwarning = lambda message, *_a, **_k: _say(f"warning: {printable(message)}")
            code = func(args)
        sys.stdout.flush()
        return code
    except KeyboardInterrupt:
        # What the interrupted command held (evaluate's worker processes) is released as this block ends: a
        # second Ctrl-C then broke into that clean-up with a traceback. Ignored until it is done.
        if threading.current_thread() is threading.main_thread():
            sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        print(file=sys.stderr)
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # Nothing more can reach the reader; point stdout at /dev/null so that the flush at exit is quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # as a shell reports a process ended by SIGPIPE
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EIO, errno.EBADF, errno.EDQUOT, errno.EFBIG):
            _error(f"cannot write the output: {exc.strerror or exc}")
            return 1
        raise
    finally:
        package_log.removeHandler(handler)
        if sigint is not None:
            signal.signal(signal.SIGINT, sigint)
        for stream, errors in streams:
            with contextlib.suppress(OSError, ValueError):  # (a stream closed meanwhile)
                stream.reconfigure(errors=errors)


if __name__ == "__main__":
    sys.exit(main())
