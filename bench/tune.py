"""Launch-configuration variants of the Triton kernels, timed side by side at TimeSformer-base shapes.

    python -m bench.tune                                  # every kernel's candidates, bf16, batch 32 (GPU)
    python -m bench.tune --kernels temporal qkv_s --batch 8
    python -m bench.tune --compile-check                  # no GPU: compile every candidate for sm_90 and
                                                          # report registers, spills, shared memory
    python -m bench.tune --smoke                          # tiny shapes in the interpreter: checks the script
    ncu --clock-control none -k regex:_kernel python -m bench.tune --profile   # each kernel once, profiled

Each kernel module picks its tiles in ``_launch_config`` (fixed, not autotuned: ``timesformer/kernels``'s
docstring says why). Here that function is replaced by one returning a candidate: the default with some
fields overridden. For each kernel of ``bench_attention`` and ``bench_fusion`` and each candidate of its
family, the output is checked against float32 math (outputs allocated NaN-filled, so a tile that leaves
rows unwritten fails instead of passing on memory a previous candidate wrote), then timed with CUDA events
(``triton.testing.do_bench`` median, inputs rotated past twice the L2). The first candidate is the current
default; the table gives every candidate's time relative to it, next to the baseline path's time (and, for
the GEMMs, the bare cuBLAS product's).

METHOD.md's loop: predict what a candidate should change, run this, keep the winner in the module's
``_launch_config`` (and ``make gpu-compile`` must still find no spill), and record it in bench/NOTES.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from unittest import mock

import torch

from bench import bench_attention, bench_fusion
from bench._common import (
    Timer,
    deadline_in,
    error_status,
    no_tf32,
    out_of_time,
    rel_err,
    write_json,
    write_text,
    wrong_answer,
)

# kernel family -> the module whose _launch_config is replaced
MODULES = {
    "temporal": "timesformer.kernels.temporal_attention",
    "attention": "timesformer.kernels.attention",
    "linear": "timesformer.kernels.linear",
    "patch_embed": "timesformer.kernels.patch_embed",
}

# Candidates for 16-bit inputs, each an override of the default (the first, {}). Few on purpose: each is a
# compile (about a second on the device) and a timing, and a call has minutes. bench/NOTES.md gives the
# predictions they test.
CANDIDATES: dict[str, list[dict]] = {
    # Memory-bound, one tile per program (no K loop): rows per program and warps. Default 4 patches x 16
    # padded frames (64 rows), 4 warps.
    "temporal": [
        {},
        {"BLOCK_P": 8},  # 128 rows: fewer, longer programs, more bytes in flight each
        {"BLOCK_P": 8, "num_warps": 8},
        {"BLOCK_P": 2},  # 32 rows: twice the programs (batch 1: 784 programs on 132 SMs)
        {"num_warps": 2},
    ],
    # Online softmax over 197 keys (spatial) or 1569 (joint), head size 64. Default 64 x 64, 4 warps, 2 stages.
    "attention": [
        {},
        {"BLOCK_M": 128, "num_warps": 8},  # the FlashAttention-2 Hopper tile: q read once per 128 rows
        {"num_stages": 3},
        {"BLOCK_N": 32},
        {"BLOCK_M": 32, "num_warps": 2},  # spatial: 7 query blocks of 197 rows instead of 4, less padding
    ],
    # GEMM tiles. Default 128 x 128 x 64, 8 warps, 3 stages, GROUP_M 8.
    "linear": [
        {},
        {"num_stages": 4},
        # Not here: 128 x 256 with 8 warps and 128 x 128 with 4 spill in the GELU and residual epilogues on
        # sm_90 (4-160 B per thread, Triton 3.6 and 3.9: --compile-check).
        {"BLOCK_M": 64, "BLOCK_N": 256, "num_warps": 8},  # the same accumulator share, a wider B tile
        {"BLOCK_M": 64, "num_warps": 4},  # 2x the programs: N = 768 products at small batch
        # A and W tiles by TMA instead of cp.async: one instruction per tile, no address arithmetic in the
        # loop (130 registers instead of 173 in the residual products on sm_90), zero fill instead of masks.
        # qkv_t keeps pointer loads for A (x[:, 1:] of several clips is not one row stride).
        {"TMA": True},
        # ... and a persistent grid whose flattened tile loop overlaps a tile's epilogue with the next
        # tile's loads: at K = 768 (12 steps of 64) the epilogue and pipeline fill are a large share.
        {"TMA": True, "PERSISTENT": True, "FLATTEN": True},
    ],
    # Implicit-GEMM patch embedding (K = 768 gathered pixels). Default 128 x 128 x 64, 8 warps, 3 stages.
    "patch_embed": [
        {},
        {"num_stages": 4},
        {"BLOCK_M": 64, "num_warps": 4},
        {"BLOCK_K": 32, "num_stages": 4},
    ],
}


# Candidates for one kernel only, after its family's.
KERNEL_CANDIDATES: dict[str, list[dict]] = {
    # The residual products compile to 173 registers, one 8-warp block per SM; capped at 128 they keep
    # their pointer loads without a spill on sm_90 and two blocks share an SM, one's epilogue overlapping
    # the other's main loop (the other GEMMs spill at 128: 24-116 B per thread).
    kernel: [{"maxnreg": 128}]
    for kernel in ("out_t (folded) + residual", "out_s + residual", "fc2 + residual")
}


def candidates(kernel: str) -> list[dict]:
    """The launch-configuration overrides tried for ``kernel``, the default (``{}``) first."""
    return CANDIDATES[family(kernel)] + KERNEL_CANDIDATES.get(kernel, [])


def family(kernel: str) -> str:
    """The candidate family of a benchmark kernel's name."""
    if kernel == "temporal":
        return "temporal"
    if kernel in ("spatial", "joint"):
        return "attention"
    if kernel == "patch embedding":
        return "patch_embed"
    return "linear"


def describe(overrides: dict) -> str:
    return "default" if not overrides else " ".join(f"{k}={v}" for k, v in overrides.items())


@contextlib.contextmanager
def launch_config(kernel_family: str, overrides: dict):
    """Within the block, the family's kernels launch with the default configuration updated by
    ``overrides``."""
    module = importlib.import_module(MODULES[kernel_family])
    default = module._launch_config

    def patched(*args, **kwargs):
        return {**default(*args, **kwargs), **overrides}

    with mock.patch.object(module, "_launch_config", patched):
        yield


@contextlib.contextmanager
def poisoned_outputs():
    """``torch.empty`` gives NaN-filled floating-point tensors within the block (the ops allocate their
    outputs with it): a candidate that leaves part of its output unwritten fails the check instead of passing
    on a right answer that an earlier candidate left in the allocator's reused block."""
    real = torch.empty

    def empty(*args, **kwargs):
        out = real(*args, **kwargs)
        return out.fill_(float("nan")) if out.is_floating_point() else out

    with mock.patch.object(torch, "empty", empty):
        yield


# ------------------------------------------------------------------------------------------- the cases


def all_cases(shape_attention: dict, shape_fusion: dict, batch: int, dtype, device) -> dict:
    """kernel -> dict(make, ours, baseline, exact, bare_make, bare, flops, bytes): the attention kernels
    (baseline: the reference path) and the fused products (baseline: unfused torch), as the benchmarks
    build them."""
    gen = torch.Generator(device=device).manual_seed(batch)
    out = {}
    d = shape_attention["heads"] * shape_attention["head_dim"]
    elt = torch.tensor([], dtype=dtype).element_size()
    for name, case in bench_attention.cases(shape_attention, batch, dtype, device, gen).items():
        num_seq, seqlen = case["seq"]
        out[name] = dict(
            make=case["make"],
            ours=case["ours"],
            baseline=case["ref"],
            exact=lambda x, ref=case["ref"]: ref(x.float()),
            flops=4.0 * num_seq * shape_attention["heads"] * seqlen * seqlen * shape_attention["head_dim"],
            bytes=batch * case["rows"] * 4 * d * elt,
            attention=name,
        )
    for name, case in bench_fusion.cases(shape_fusion, batch, dtype, device, gen).items():
        out[name] = dict(
            make=case["make"],
            ours=case["fused"],
            baseline=case["unfused"],
            exact=case["exact"],
            bare_make=case["bare_make"],
            bare=case["bare"],
            flops=case["flops"],
        )
    return out


def _errors(case: dict, x, exact) -> tuple[float, float]:
    """(ours, baseline) relative errors against ``exact``, each on its own copy of ``x``, ours with its
    outputs poisoned."""
    with poisoned_outputs():
        got = case["ours"](bench_fusion.clone(x))
    ref = case["baseline"](bench_fusion.clone(x))
    if "attention" in case:
        return bench_attention.errors(case["attention"], got, ref, exact)
    return rel_err(got, exact), rel_err(ref, exact)


def _nbytes(x) -> int:
    return sum(t.numel() * t.element_size() for t in (x if isinstance(x, tuple) else (x,)))


def tune(
    kernels,
    batch: int,
    dtype,
    device,
    timer,
    smoke: bool,
    deadline=None,
    profile: bool = False,
    log=print,
    on_row=None,
) -> list[dict]:
    """One row per (kernel, candidate): its status, error, time and time relative to the default, each passed
    to ``on_row`` when done. ``profile``: the default candidate only, checked (one launch) and not timed, nor
    the baselines: for a profiler."""
    shapes = (
        (bench_attention.SMOKE, bench_fusion.SMOKE) if smoke else (bench_attention.BASE, bench_fusion.BASE)
    )
    cases = all_cases(*shapes, batch, dtype, device)
    rows = []

    def done(row: dict) -> None:
        rows.append(row)
        log(_line(row))
        if on_row is not None:
            on_row(row)

    for kernel in kernels:
        tried = [{}] if profile else candidates(kernel)
        base = dict(kernel=kernel, batch=batch, status="ok", ms=None, baseline_ms=None, bare_product_ms=None)
        if out_of_time(deadline):
            for overrides in tried:
                done(
                    dict(
                        base,
                        candidate=describe(overrides),
                        overrides=overrides,
                        status="skipped: out of time",
                    )
                )
            continue
        case = cases[kernel]
        # The check's input stays untouched (each check runs on copies): timing the in-place residual ops
        # changes their inputs.
        probe = case["make"](0)
        with no_tf32():
            exact = case["exact"](bench_fusion.clone(probe))
        inputs = [] if profile else timer.sets(case["make"], _nbytes(probe))
        if not profile:
            base["baseline_ms"] = timer.median_ms(case["baseline"], inputs)
            if "bare" in case:
                base["bare_product_ms"] = timer.median_ms(
                    case["bare"], timer.sets(case["bare_make"], _nbytes(probe))
                )
        default_ms = None
        for overrides in tried:
            row = dict(base, candidate=describe(overrides), overrides=overrides)
            if out_of_time(deadline):
                row["status"] = "skipped: out of time"
                done(row)
                continue
            try:
                with launch_config(family(kernel), overrides):
                    err, ref_err = _errors(case, probe, exact)
                    row.update(rel_err=err, baseline_rel_err=ref_err)
                    # NaN fails too: an element the candidate left unwritten.
                    row["status"] = wrong_answer(err, ref_err, "baseline") or "ok"
                    if row["status"] == "ok" and not profile:
                        row["ms"] = timer.median_ms(case["ours"], inputs)
            except Exception as exc:  # a candidate that does not compile or launch is a result, not an end
                row["status"] = error_status(exc)
            if row["ms"] is not None:
                default_ms = default_ms or (row["ms"] if not overrides else None)
                row["vs_default"] = default_ms / row["ms"] if default_ms else None
                row["tflops"] = case["flops"] / row["ms"] / 1e9
                if "bytes" in case:
                    row["gbps"] = case["bytes"] / row["ms"] / 1e6
            done(row)
    return rows


def _line(row: dict) -> str:
    head = f"{row['kernel']:26s} B={row['batch']:<3d} {row['candidate']:34s}"
    if row["ms"] is None:
        error = (
            f" (error {row['rel_err']:.1e}, baseline {row['baseline_rel_err']:.1e})"
            if "rel_err" in row
            else ""
        )
        return f"{head} {row['status']}{error}"
    speed = (
        f"{row['gbps']:7.0f} GB/s"
        if "gbps" in row and row["kernel"] == "temporal"
        else f"{row['tflops']:7.1f} TFLOP/s"
    )
    vs = f"{row['vs_default']:.2f}x default" if row.get("vs_default") else ""
    bare = f" | bare {row['bare_product_ms']:.3f} ms" if row.get("bare_product_ms") else ""
    return f"{head} {row['ms']:8.3f} ms | {speed} | {vs} | baseline {row['baseline_ms']:.3f} ms{bare}"


def markdown(rows: list[dict], header: str) -> str:
    lines = [f"# Launch-configuration candidates: {header}", "",
             "| kernel | batch | candidate | ms | vs default | TFLOP/s | GB/s | baseline ms | bare product ms | status |",
             "|---|--:|---|--:|--:|--:|--:|--:|--:|---|"]  # fmt: skip

    def f(v, spec):
        return "" if v is None else format(v, spec)

    for r in rows:
        lines.append(
            f"| {r['kernel']} | {r['batch']} | {r['candidate']} | {f(r['ms'], '.3f')} | {f(r.get('vs_default'), '.2f')} | "
            f"{f(r.get('tflops'), '.1f')} | {f(r.get('gbps'), '.0f')} | {f(r['baseline_ms'], '.3f')} | "
            f"{f(r.get('bare_product_ms'), '.3f')} | {r['status']} |"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ compile check (no GPU)


def compile_check(kernels, arch: int = 90, log=print) -> list[dict]:
    """Every candidate of ``kernels`` compiled for ``arch`` on this machine (``tools.gpu_compile``): registers,
    spills, shared memory, blocks per SM, tensor-core instructions and findings, one row per compile."""
    from tools import gpu_compile as gc

    shapes = (bench_attention.BASE, bench_fusion.BASE)
    with gc.record_launches() as recorder:
        # Batch 2: the specializations of a real batch (no size equal to 1), at a small allocation.
        cases = all_cases(*shapes, 2, torch.bfloat16, torch.device("cpu"))
        for kernel in kernels:
            case = cases[kernel]
            x = case["make"](0)
            for overrides in candidates(kernel):
                recorder.case = f"{kernel} | {describe(overrides)}"
                with launch_config(family(kernel), overrides):
                    case["ours"](x)
    jobs = gc.plan(recorder.launches, (arch,))
    results = gc.compile_all(jobs, log=log)
    rows = []
    for job, result in zip(jobs, results, strict=True):
        for label in job.cases:
            kernel, candidate = label.split(" | ")
            rows.append(dict(kernel=kernel, candidate=candidate, arch=arch, findings=gc.findings(job, result),
                             **{k: result.get(k) for k in ("regs", "spill_stores", "shared", "blocks_per_sm",
                                                           "limiter", "tensor_cores", "error")}))  # fmt: skip
    for r in rows:
        verdict = "; ".join(r["findings"]) or "ok"
        log(f"{r['kernel']:26s} {r['candidate']:34s} sm_{arch} {r['regs'] or '-':>4} regs "
            f"{(r['shared'] or 0) / 1024:5.0f} KiB {r['blocks_per_sm'] or '-'} blk/SM ({r['limiter']}) "
            f"{r['tensor_cores'] or ''} {verdict}")  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ main

# Command-line names (no spaces: they pass through shell variables) -> the benchmarks' kernel names.
KERNELS = {
    "temporal": "temporal",
    "spatial": "spatial",
    "joint": "joint",
    "qkv_t": "LN_t -> qkv_t",
    "qkv_s": "LN_1 -> qkv_s",
    "fc1": "LN_2 -> fc1 + GELU",
    "out_t": "out_t (folded) + residual",
    "out_s": "out_s + residual",
    "fc2": "fc2 + residual",
    "patch_embed": "patch embedding",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", choices=list(KERNELS), default=list(KERNELS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="start no candidate after this many seconds"
    )
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes in the CPU interpreter; no speed claims"
    )
    parser.add_argument(
        "--compile-check", action="store_true", help="no GPU: compile the candidates for sm_90"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the candidates to time, run nothing")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="each kernel's default configuration once (its check), nothing timed: run it under ncu",
    )
    parser.add_argument("--json", default=None, help="write the rows here")
    parser.add_argument("--markdown", default=None, help="write a table here")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    args.kernels = [KERNELS[k] for k in args.kernels]
    if args.dry_run:
        for kernel in args.kernels:
            listed = ", ".join(describe(o) for o in candidates(kernel))
            print(f"{kernel} (batch {args.batch}, {args.dtype}): {listed}")
        return 0

    if args.compile_check:
        rows = compile_check(args.kernels)
        write_json(args.json, {"mode": "compile check, sm_90", "rows": rows})
        return int(any(r["findings"] for r in rows))
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, batch = torch.device("cpu"), min(args.batch, 2)
    elif torch.cuda.is_available():
        device, batch = torch.device("cuda"), args.batch
    else:
        print("no CUDA device: this times GPU kernels (--smoke checks the script, --compile-check the tiles)")
        return 1
    from bench._common import device_info, provenance

    deadline = deadline_in(args.budget_s)
    timer = Timer(device, smoke=args.smoke)
    info = device_info(device)
    record = {"device": info, **provenance(), "dtype": args.dtype, "smoke": args.smoke, "rows": []}
    header = f"{info['name']}, {args.dtype}, batch {batch}, commit {record['commit']}"

    def save(row: dict) -> None:  # after every row: a call cut short keeps what ran
        record["rows"].append(row)
        write_json(args.json, record)
        if args.markdown:
            write_text(args.markdown, markdown(record["rows"], header))

    rows = tune(args.kernels, batch, getattr(torch, args.dtype), device, timer, args.smoke, deadline,
                args.profile, on_row=save)  # fmt: skip
    return int(any(r["status"].startswith("failed") for r in rows))


if __name__ == "__main__":
    sys.exit(main())
