"""End-to-end inference: this package's backends against what users run today, on one model config.

Implementations (``IMPLEMENTATIONS``), all loading the same random weights:

- ``transformers eager``: ``transformers.TimesformerForVideoClassification`` as it loads by default;
- ``transformers + compile``: the same model under ``torch.compile`` (``mode`` from the command line,
  ``dynamic=False``: one graph per batch size, as a serving user would run it);
- ``timesformer sdpa``, ``timesformer sdpa + compile``: this package's SDPA backend, bare and compiled;
- ``timesformer triton``: the fused kernels (GPU);
- ``timesformer triton + graphs``: the same under CUDA graph replay (``model.cuda_graphs()``; batch 1 by
  default, where launch overhead dominates).

Before anything is timed, every implementation's logits are compared with ``transformers`` eager in
float32 on the same (dtype-rounded) input: a wrong answer is reported as failed and not timed. On a GPU each
implementation is built alone (so its peak memory is its own: weights, caches and activations) and timed
with CUDA events, median of many calls after warm-up. On a CPU the implementations run in alternating
rounds (drifts in machine load hit all of them) and each speedup is the median of the per-round ratios.
"""

from __future__ import annotations

import copy
import functools
import gc
import math
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bench._common import error_status, no_tf32, out_of_time, rel_err
from timesformer.configuration import PRESETS, TimesformerConfig

# The model shapes (timesformer.configuration.PRESETS: the published checkpoints' and small ones); the
# weights are random.
CONFIGS = PRESETS
NUM_LABELS = 400

EAGER = "transformers eager"
COMPILE = "transformers + compile"
IMPLEMENTATIONS = (
    EAGER,
    COMPILE,
    "timesformer sdpa",
    "timesformer sdpa + compile",
    "timesformer triton",
    "timesformer triton + graphs",
)
COMPILED = (COMPILE, "timesformer sdpa + compile")  # under torch.compile: a compile per batch size


@dataclass
class Options:
    dtype: torch.dtype
    device: torch.device
    compile_mode: str = "default"
    # Timing: GPU calls per measurement (at most; fewer when a call is slow), CPU alternating rounds.
    reps: int = 30
    rounds: int = 5
    graphs_batches: tuple[int, ...] = (1,)
    # Batches at which the torch.compile implementations run (None: all). Each batch size is a compile of
    # its own (dynamic=False), tens of seconds on a GPU: a short call may ask for the targets' batch only.
    compile_batches: tuple[int, ...] | None = None
    seed: int = 0
    # time.monotonic() after which no further row starts (a GPU call has a hard time limit: rows not run are
    # reported as skipped, and what ran is kept); None: no limit.
    deadline: float | None = None

    def out_of_time(self) -> bool:
        return out_of_time(self.deadline)


def hf_config(name: str):
    import transformers

    fields = CONFIGS[name].fields
    return transformers.TimesformerConfig(num_labels=NUM_LABELS, **fields)


@functools.lru_cache(maxsize=1)
def random_model(name: str, seed: int):
    """The float32 ``transformers`` model of config ``name`` with random weights, on the CPU: every parameter,
    including the zero-initialized time embedding and the LayerNorms, perturbed from its initialization.
    Built once per (config, seed), since initializing a model is the slow part; each implementation copies it."""
    import transformers

    torch.manual_seed(seed)
    model = transformers.TimesformerForVideoClassification(hf_config(name))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)
    return model.eval()


def _hf_model(name: str, opts: Options, dtype: torch.dtype):
    return copy.deepcopy(random_model(name, opts.seed)).to(opts.device, dtype).eval()


def _ours(name: str, opts: Options, backend: str):
    import timesformer

    model = timesformer.from_hf(random_model(name, opts.seed), backend=backend)
    return model.to(opts.device, opts.dtype).eval()


def _compiled(model, opts: Options):
    return torch.compile(
        model, mode=None if opts.compile_mode == "default" else opts.compile_mode, dynamic=False
    )


def build(impl: str, name: str, opts: Options) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``pixel_values -> logits`` for one implementation, with ``random_model(name, opts.seed)``'s
    weights."""
    if impl == EAGER:
        model = _hf_model(name, opts, opts.dtype)
        return lambda x: model(pixel_values=x).logits
    if impl == COMPILE:
        model = _compiled(_hf_model(name, opts, opts.dtype), opts)
        return lambda x: model(pixel_values=x).logits
    if impl == "timesformer sdpa":
        model = _ours(name, opts, "sdpa")
        return lambda x: model(x).logits
    if impl == "timesformer sdpa + compile":
        model = _compiled(_ours(name, opts, "sdpa"), opts)
        return lambda x: model(x).logits
    if impl == "timesformer triton":
        model = _ours(name, opts, "triton")
        return lambda x: model(x).logits
    if impl == "timesformer triton + graphs":
        runner = _ours(name, opts, "triton").cuda_graphs()
        return lambda x: runner(x).logits
    raise ValueError(f"unknown implementation {impl!r}; expected one of {', '.join(IMPLEMENTATIONS)}")


def unavailable(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` cannot run on ``device`` (None when it can)."""
    if "triton" in impl:
        if device.type != "cuda":
            return "needs a CUDA GPU"
        from timesformer import available_backends

        info = available_backends(device)["triton"]
        if not info.available:
            return info.reason
    return None


def clip(name: str, batch: int, seed: int) -> torch.Tensor:
    """A random float32 ``(batch, T, 3, H, W)`` clip on the CPU."""
    cfg = TimesformerConfig(**CONFIGS[name].fields)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, cfg.num_frames, cfg.num_channels, *cfg.image_hw, generator=gen)


def error_bound(impl: str, dtype: torch.dtype, eager_err: float | None) -> float:
    """Largest relative error of the logits (against float32 eager) that counts as a right answer.

    ``transformers`` eager at the run's dtype is the baseline itself: any finite answer. Others: 1e-4 in
    float32 (the model rule of the fusion issue); in 16-bit, twice eager's own error at that dtype, or 5e-2
    where eager did not run (a 16-bit forward of TimeSformer-base lands near 1e-2)."""
    if impl == EAGER:
        return math.inf
    if dtype == torch.float32:
        return 1e-4
    return 2.0 * max(eager_err, 1e-3) if eager_err is not None else 5e-2


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def reference_logits(name: str, batches, opts: Options) -> dict[int, torch.Tensor | None]:
    """float32 ``transformers`` eager logits of each batch's clip (rounded to the run's dtype first), on the
    CPU; None where even the reference does not fit."""
    ref_opts = Options(dtype=torch.float32, device=opts.device, seed=opts.seed)
    model = _hf_model(name, ref_opts, torch.float32)
    out: dict[int, torch.Tensor | None] = {}
    with torch.inference_mode(), no_tf32():
        for batch in batches:
            x = clip(name, batch, opts.seed + batch).to(opts.dtype).float().to(opts.device)
            try:
                out[batch] = model(pixel_values=x).logits.float().cpu()
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                out[batch] = None
            del x
    del model
    _free(opts.device)
    return out


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _row(name: str, impl: str, batch: int, opts: Options, **fields) -> dict:
    row = {
        "config": name,
        "model": CONFIGS[name].title,
        "dtype": str(opts.dtype).replace("torch.", ""),
        "batch": batch,
        "impl": impl,
        "status": "ok",
        "median_ms": None,
        "rel_err_vs_fp32_eager": None,
        "peak_mem_gib": None,
    }
    row.update(fields)
    return row


def _check(fn, x, expected, bound) -> tuple[float, str]:
    got = fn(x)
    err = rel_err(got.float().cpu(), expected)
    if not (math.isfinite(err) and err <= bound):
        return err, f"failed: wrong output (relative error {err:.2e} > {bound:.1e}); not timed"
    return err, "ok"


def _wanted(impl: str, batch: int, opts: Options) -> bool:
    if impl == "timesformer triton + graphs":
        return batch in opts.graphs_batches
    if impl in COMPILED:
        return opts.compile_batches is None or batch in opts.compile_batches
    return True


def run_gpu(name: str, impls, batches, opts: Options, timer, log=print, on_row=None) -> list[dict]:
    """Every implementation alone on the GPU: build, check, warm up, time (CUDA events), peak memory.

    Batch by batch, in the order given, and the torch.compile baselines after all the others (each batch size
    is a compile of tens of seconds on a GPU): a run cut short (``opts.deadline``, or a killed process that
    saved each row through ``on_row``) keeps whole comparisons at the batches that matter most. An
    implementation that raises is reported as failed, with the error, and the run goes on to the next one."""
    expected = reference_logits(name, batches, opts)
    plan = [(b, i) for b in batches for i in impls if i not in COMPILED]
    plan += [(b, i) for b in batches for i in impls if i in COMPILED]
    eager_err: dict[int, float] = {}
    rows = []
    for batch, impl in plan:
        if not _wanted(impl, batch, opts):
            continue
        row = _row(name, impl, batch, opts)
        reason = unavailable(impl, opts.device)
        if reason:
            row["status"] = f"skipped: {reason}"
        elif expected[batch] is None:
            row["status"] = "skipped: the float32 reference does not fit"
        elif opts.out_of_time():
            row["status"] = "skipped: out of time (the run's time budget)"
        else:
            bound = error_bound(impl, opts.dtype, eager_err.get(batch))
            _measure_gpu(row, opts, timer, expected[batch], bound)
            if impl == EAGER and row["rel_err_vs_fp32_eager"] is not None:
                eager_err[batch] = row["rel_err_vs_fp32_eager"]
            if impl in COMPILED:
                torch._dynamo.reset()
        rows.append(row)
        log(_describe(row))
        if on_row is not None:
            on_row(row)
    return rows


def _measure_gpu(row: dict, opts: Options, timer, expected: torch.Tensor, bound: float) -> None:
    """Fill in one row: its implementation built alone, checked against ``expected``, then timed."""
    name, batch = row["config"], row["batch"]
    fn = None
    try:
        _free(opts.device)
        fn = build(row["impl"], name, opts)
        with torch.inference_mode():

            def make(i):
                return clip(name, batch, opts.seed + batch + 1000 * i).to(opts.device, opts.dtype)

            first = clip(name, batch, opts.seed + batch).to(opts.device, opts.dtype)
            row["rel_err_vs_fp32_eager"], row["status"] = _check(fn, first, expected, bound)
            if row["status"] != "ok":
                return
            inputs = [first, *timer.sets(make, first.numel() * first.element_size())[1:]]
            for x in inputs[:3]:  # warm-up: compilation, autotuning, graph capture, caches
                fn(x)
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(inputs[0])
            torch.cuda.synchronize()
            # Everything this implementation holds (weights, caches) plus its transient peak; the inputs are
            # not counted.
            inputs_bytes = sum(t.numel() * t.element_size() for t in inputs)
            peak = torch.cuda.max_memory_allocated()
            if row["impl"] == "timesformer triton + graphs":
                # A graph's activations live in its private pool, which the allocated counts leave out once
                # the capture is done (a replay allocates nothing): the reserved bytes hold it.
                peak = max(peak, torch.cuda.memory_reserved())
                row["peak_mem_basis"] = "reserved bytes (the graph's private pool included)"
            row["peak_mem_gib"] = (peak - inputs_bytes) / 2**30
            row["resident_gib"] = (base - inputs_bytes) / 2**30
            row["median_ms"] = _cuda_median_ms(fn, inputs, opts.reps)
    except Exception as exc:  # one implementation's failure must not cost the rest of a GPU run
        if _is_oom(exc):
            row["status"] = "out of memory"
        else:
            row["status"] = error_status(exc)
            row["traceback"] = traceback.format_exc()
            print(row["traceback"], file=sys.stderr)
    finally:
        del fn
        _free(opts.device)


def _cuda_median_ms(fn, inputs, reps: int) -> float:
    """Median of per-call CUDA-event times, rotating the inputs; fewer calls when one is slow (~3 s)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for i in range(reps):
        start.record()
        fn(inputs[i % len(inputs)])
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        if sum(times) > 3000 and len(times) >= 5:
            break
    return statistics.median(times)


def run_cpu(name: str, impls, batches, opts: Options, log=print) -> list[dict]:
    """All implementations built at once, checked, then timed in alternating rounds (wall clock)."""
    expected = reference_logits(name, batches, opts)
    rows = []
    fns = {}
    for impl in impls:
        reason = unavailable(impl, opts.device)
        if reason:
            rows += [
                _row(name, impl, b, opts, status=f"skipped: {reason}")
                for b in batches
                if _wanted(impl, b, opts)
            ]
        else:
            fns[impl] = build(impl, name, opts)
    for batch in batches:
        x = clip(name, batch, opts.seed + batch).to(opts.dtype)
        live: dict[str, dict] = {}
        eager_err = None
        with torch.inference_mode():
            for impl, fn in fns.items():
                if not _wanted(impl, batch, opts):
                    continue
                bound = error_bound(impl, opts.dtype, eager_err)
                err, status = _check(fn, x, expected[batch], bound)  # also the warm-up
                if impl == EAGER:
                    eager_err = err
                row = _row(name, impl, batch, opts, status=status, rel_err_vs_fp32_eager=err)
                rows.append(row)
                if status == "ok":
                    live[impl] = row
                    fn(x)  # second warm-up: compiled code runs its first real call here
            times: dict[str, list[float]] = {impl: [] for impl in live}
            for _ in range(opts.rounds):
                for impl in live:
                    start = time.perf_counter()
                    fns[impl](x)
                    times[impl].append((time.perf_counter() - start) * 1e3)
        for impl, row in live.items():
            row["median_ms"] = statistics.median(times[impl])
            row["all_ms"] = [round(t, 2) for t in times[impl]]
            for base in (EAGER, COMPILE):
                if base in times and impl != base:
                    ratios = [b / t for b, t in zip(times[base], times[impl], strict=True)]
                    key = "paired_speedup_vs_eager" if base == EAGER else "paired_speedup_vs_compile"
                    row[key] = statistics.median(ratios)
            log(_describe(row))
    return rows


def _describe(row: dict) -> str:
    head = f"{row['model']} {row['dtype']} B={row['batch']:<3d} {row['impl']:28s}"
    if row["status"] != "ok":
        return f"{head} {row['status']}"
    mem = f" | peak {row['peak_mem_gib']:.2f} GiB" if row.get("peak_mem_gib") is not None else ""
    return f"{head} {row['median_ms']:10.2f} ms | err {row['rel_err_vs_fp32_eager']:.1e}{mem}"


def largest_batch(name: str, opts: Options, start: int, limit: int, log=print) -> int | None:
    """The largest power-of-two batch above ``start`` (at most ``limit``) at which this package's triton
    backend runs a forward without running out of memory; None if even ``2 * start`` does not fit."""
    if unavailable("timesformer triton", opts.device):
        return None
    fn = build("timesformer triton", name, opts)
    best, batch = None, 2 * start
    while batch <= limit:
        try:
            with torch.inference_mode():
                fn(clip(name, batch, 0).to(opts.device, opts.dtype))
                if opts.device.type == "cuda":
                    torch.cuda.synchronize()
        except RuntimeError as exc:
            if not _is_oom(exc):
                raise
            break
        finally:
            _free(opts.device)
        best, batch = batch, 2 * batch
    log(f"{CONFIGS[name].title}: largest power-of-two batch that fits (triton): {best}")
    del fn
    _free(opts.device)
    return best
