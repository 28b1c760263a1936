"""Compile every Triton launch of the ``triton`` backend for sm_80 and sm_90 on a machine without a GPU.

    python -m tools.gpu_compile                 # the sweep below, a table, exit status 1 on a finding
    python -m tools.gpu_compile --quick         # TimeSformer-base in bf16 only
    python -m tools.gpu_compile --json out.json

How (DESIGN.md section 6):

1. **Capture.** Real model forwards run on the CPU with ``JITFunction.run`` replaced by a recorder: each
   launch's kernel, arguments and options are kept and nothing executes (the outputs stay uninitialized,
   which is fine: no launch depends on a value another one computed). So every launch the backend makes
   is covered, including ones added later, without a hand-kept list.
2. **Specialize** each launch as Triton's launcher would on the GPU: the same binder
   (``create_function_from_signature``) with a CUDA backend turns ints equal to 1 into constants and marks
   ints and pointers divisible by 16. Launches with the same kernel, specialization and options are one
   compile.
3. **Compile** for ``sm_80`` and ``sm_90a`` (``triton.compile`` with a ``GPUTarget``), read the ``ptxas -v``
   log (registers, spills), the kernel's shared memory and its SASS (``cuobjdump -sass``: tensor-core
   instructions), and work out blocks per SM and what limits it.

It fails (exit status 1) on a compile error, any spill, shared memory over the per-block limit, or a dot
meant for tensor cores (16-bit inputs, or tf32 products) compiled without tensor-core instructions.

Results are cached in ``.cache/gpu-compile/`` by (kernel source and its dependencies, Triton version,
architecture, specialization, options): a repeat run only compiles what changed. Run it with the Triton
under test on ``PYTHONPATH`` to check another version (``make gpu-compile-3.6``).

The kernels must be compiled, not interpreted: run this without ``TRITON_INTERPRET=1`` (it refuses to
run with it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

import torch

from timesformer.configuration import PRESETS

ARCHS = (80, 90)
CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache" / "gpu-compile"


# ------------------------------------------------------------------------------------ the sweep


@dataclasses.dataclass(frozen=True)
class Case:
    """One model forward whose launches are captured."""

    label: str
    config: dict
    dtype: torch.dtype = torch.bfloat16
    batch: int = 1
    uint8: bool = False  # uint8 frames (normalization folded into the patch embedding)
    tf32: bool = False  # TF32 allowed (fp32 products on tensor cores)
    int64: bool = False  # every kernel forced onto its int64-offset variant
    layers: int = 2  # a full layer and the classifier's CLS-only last layer


_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def sweep(quick: bool = False) -> list[Case]:
    """The forwards the issue names: base per attention type, dtype, input kind and batch; L and HR; head
    sizes 32-128; the int64-offset variants; T above the temporal kernel's one-tile limit."""
    cases = []
    attention_types = ("divided_space_time", "joint_space_time", "space_only")
    dtypes = (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16, torch.float32)
    for attention in attention_types:
        for dtype in dtypes:
            for uint8 in (False, True):
                for batch in (1,) if quick else (1, 8):
                    label = f"base {attention.split('_')[0]} {_NAMES[dtype]} b{batch}" + " u8" * uint8
                    cases.append(Case(label, dict(attention_type=attention), dtype, batch, uint8))
        if not quick:
            cases.append(Case(f"base {attention.split('_')[0]} fp32+tf32 b8", dict(attention_type=attention),
                              torch.float32, 8, tf32=True))  # fmt: skip
    if quick:
        return cases
    for dtype in dtypes:
        name = _NAMES[dtype]
        cases.append(Case(f"L 96x224 {name}", PRESETS["large"].fields, dtype))
        cases.append(Case(f"HR 16x448 {name}", PRESETS["hr"].fields, dtype))
        cases.append(Case(f"T=160 {name}", dict(num_frames=160, image_size=64), dtype))
        for head_dim in (32, 64, 80, 96, 128):
            for attention in attention_types:
                cases.append(
                    Case(
                        f"dh={head_dim} {attention.split('_')[0]} {name}",
                        dict(attention_type=attention, hidden_size=12 * head_dim, num_attention_heads=12,
                             intermediate_size=48 * head_dim, image_size=112),
                        dtype,
                    )
                )  # fmt: skip
        for attention in attention_types:
            cases.append(Case(f"int64 {attention.split('_')[0]} {name}", dict(attention_type=attention, image_size=112),
                              dtype, uint8=True, int64=True))  # fmt: skip
        cases.append(Case(f"int64 T=160 {name}", dict(num_frames=160, image_size=64), dtype, int64=True))
    cases.append(Case("L 96x224 fp32+tf32", PRESETS["large"].fields, torch.float32, tf32=True))
    # 17-32 frames: the temporal kernel's largest one-tile frame block (32), at the largest head size.
    wide = dict(
        num_frames=24, hidden_size=12 * 128, num_attention_heads=12, intermediate_size=48 * 128, image_size=64
    )
    cases.append(Case("T=24 dh=128 bf16", wide, torch.bfloat16))
    cases.append(Case("T=24 dh=128 fp32+tf32", wide, torch.float32, tf32=True))
    return cases


# ------------------------------------------------------------------------------------- capture


@dataclasses.dataclass
class Launch:
    kernel: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict
    case: str


class Recorder:
    def __init__(self) -> None:
        self.launches: list[Launch] = []
        self.case = ""


@contextlib.contextmanager
def record_launches() -> Iterator[Recorder]:
    """Within the block, ``kernel[grid](...)`` records the launch instead of running it; the triton backend
    is available on the CPU (head size and dtype rules still apply)."""
    from triton.runtime.jit import JITFunction

    import timesformer.backends as backends
    from timesformer.kernels import _common

    recorder = Recorder()

    def run(self, *args, grid, warmup, **kwargs):
        recorder.launches.append(Launch(self, args, kwargs, recorder.case))

    def status(device, head_dim, dtype):
        reason = (_common.head_dim_reason(head_dim) if head_dim is not None else None) or (
            _common.dtype_reason(dtype) if dtype is not None else None
        )
        return backends.BackendInfo(reason is None, reason or "recording launches")

    # The triton backend's availability check, in the backend table: every launch may run (no GPU here).
    triton_entry = backends.BACKENDS["triton"]._replace(status=status)
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(JITFunction, "run", run))
        stack.enter_context(mock.patch.dict(backends.BACKENDS, triton=triton_entry))
        # The launchers refuse CPU tensors outside the interpreter; recorded launches never run.
        for module in _kernel_modules():
            stack.enter_context(mock.patch.object(module, "on_device", lambda x: contextlib.nullcontext()))
        yield recorder


def _kernel_modules() -> tuple:
    from timesformer.kernels import attention, linear, patch_embed, temporal_attention

    return attention, linear, patch_embed, temporal_attention


@contextlib.contextmanager
def _forced_int64():
    with contextlib.ExitStack() as stack:
        for module in _kernel_modules():
            stack.enter_context(mock.patch.object(module, "needs_int64", lambda *_: True))
        yield


@contextlib.contextmanager
def _tf32(allowed: bool):
    matmul = torch.backends.cuda.matmul
    saved = matmul.allow_tf32
    matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        matmul.allow_tf32 = saved


def capture(cases: list[Case], log=print) -> list[Launch]:
    """Run each case's forward with launches recorded; returns them all."""
    import timesformer

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: the kernels must be compiled, not interpreted")
    with record_launches() as recorder:
        launches = recorder.launches
        for case in cases:
            recorder.case = case.label
            config = timesformer.TimesformerConfig(
                num_labels=400, num_hidden_layers=case.layers, **case.config
            )
            torch.manual_seed(0)
            model = timesformer.TimesformerForVideoClassification(config, backend="triton")
            model = model.to(case.dtype).eval()
            height, width = config.image_hw
            if case.uint8:
                model.set_input_normalization([0.45, 0.45, 0.45], [0.225, 0.225, 0.225])
                pixels = torch.empty(case.batch, config.num_frames, height, width, 3, dtype=torch.uint8)
            else:
                pixels = torch.empty(case.batch, config.num_frames, 3, height, width, dtype=case.dtype)
            before = len(launches)
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.inference_mode())
                stack.enter_context(_tf32(case.tf32))
                if case.int64:
                    stack.enter_context(_forced_int64())
                model(pixels)
            log(f"  captured {len(launches) - before:3d} launches: {case.label}")
    return launches


def uncovered(launches: list[Launch]) -> list[str]:
    """The ``@triton.jit`` kernels of ``timesformer.kernels`` that no captured launch ran: a kernel the sweep
    misses is a kernel nobody compiled."""
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    import timesformer.kernels as package

    launched = {launch.kernel.fn.__qualname__ for launch in launches}
    kernels = set()
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, value in vars(module).items():
            if (
                isinstance(value, JITFunction)
                and name.endswith("_kernel")
                and value.__module__ == module.__name__
            ):
                kernels.add(name)
    return sorted(kernels - launched)


# ------------------------------------------------------------------------------------- compile


def _dtype_name(value) -> str:
    return str(value).removeprefix("torch.")


@dataclasses.dataclass
class Job:
    """One compile: a kernel with one specialization and options, for one architecture."""

    launch: Launch
    arch: int
    key: str
    spec: list
    cases: list[str] = dataclasses.field(default_factory=list)


def _binder(kernel, arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    return backend, create_function_from_signature(kernel.signature, kernel.params, backend)


def plan(launches: list[Launch], archs=ARCHS) -> list[Job]:
    """Unique compiles: launches grouped by (kernel source, specialization, options) per architecture."""
    import triton

    jobs: dict[str, Job] = {}
    binders = {}
    for launch in launches:
        kernel = launch.kernel
        for arch in archs:
            if (id(kernel), arch) not in binders:
                binders[id(kernel), arch] = _binder(kernel, arch)
            _, binder = binders[id(kernel), arch]
            _, spec, options = binder(*launch.args, **launch.kwargs, debug=False)
            spec = [[kind, value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)]
                    for kind, value in spec]  # fmt: skip
            ident = json.dumps([kernel.fn.__qualname__, kernel.cache_key, triton.__version__, arch, spec,
                                sorted((k, repr(v)) for k, v in options.items())])  # fmt: skip
            key = hashlib.sha256(ident.encode()).hexdigest()[:20]
            job = jobs.setdefault(key, Job(launch, arch, key, spec))
            if launch.case not in job.cases:
                job.cases.append(launch.case)
    return list(jobs.values())


# Per-SM limits by architecture (CUDA programming guide, compute capabilities 8.0 and 9.0).
LIMITS = {
    80: dict(regs=65536, smem_sm=167936, smem_block=166912, threads=2048, blocks=32),
    90: dict(regs=65536, smem_sm=233472, smem_block=232448, threads=2048, blocks=32),
}
TENSOR_CORE_OPS = ("HMMA", "HGMMA", "IMMA", "QGMMA")


def occupancy(arch: int, regs: int, num_warps: int, shared: int) -> tuple[int, str]:
    """Resident blocks per SM and the resource that limits it (registers are allocated per warp in units of
    256, a quarter of the SM's file per scheduler; 1 KiB of shared memory per block is reserved)."""
    lim = LIMITS[arch]
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    warps_by_regs = (lim["regs"] // 4 // per_warp) * 4
    by = {
        "regs": warps_by_regs // num_warps,
        "smem": lim["smem_sm"] // (-(-(shared + 1024) // 128) * 128),
        "threads": lim["threads"] // (32 * num_warps),
        "blocks": lim["blocks"],
    }
    limiter = min(by, key=by.get)
    return by[limiter], limiter


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _parse_ptxas(log: str) -> dict:
    regs = re.search(r"Used (\d+) registers", log)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    stack = re.search(r"(\d+) bytes stack frame", log)
    if not regs or not spill:
        raise RuntimeError(f"could not read the ptxas log:\n{log}")
    return dict(
        regs=int(regs.group(1)),
        spill_stores=int(spill.group(1)),
        spill_loads=int(spill.group(2)),
        stack=int(stack.group(1)) if stack else 0,
    )


def tensor_core_count(sass: str) -> dict[str, int]:
    """How many of each tensor-core opcode the SASS holds."""
    counts = {}
    for op in TENSOR_CORE_OPS:
        n = len(re.findall(rf"\b{op}\.", sass))
        if n:
            counts[op] = n
    return counts


def compile_job(job: Job) -> dict:
    """Compile one job; a dict of what was measured (``error`` set where the compile failed)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    launch = job.launch
    kernel = launch.kernel
    backend, binder = _binder(kernel, job.arch)
    kwargs = dict(launch.kwargs, debug=False)
    bound, spec, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec, options)
    knobs.nvidia.dump_ptxas_log = True
    knobs.compilation.always_compile = True  # the ptxas log is printed only by a real compile
    log = io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(kernel, signature, constexprs, attrs),
                target=GPUTarget("cuda", job.arch, 32),
                options=options.__dict__,
            )
    except Exception as exc:  # a compile error is a finding, reported with its message
        return dict(error=f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
    seconds = time.perf_counter() - start
    result = _parse_ptxas(log.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass = subprocess.run(
            [_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True, check=True
        ).stdout
    result.update(
        shared=int(compiled.metadata.shared),
        num_warps=int(compiled.metadata.num_warps),
        num_stages=int(compiled.metadata.num_stages),
        has_dot="tt.dot" in compiled.asm["ttir"],
        tensor_cores=tensor_core_count(sass),
        seconds=round(seconds, 2),
    )
    result["blocks_per_sm"], result["limiter"] = occupancy(
        job.arch, result["regs"], result["num_warps"], result["shared"]
    )
    return result


_JOBS: list[Job] = []


def _compile_index(i: int) -> dict:
    return compile_job(_JOBS[i])


def compile_all(jobs: list[Job], workers: int | None = None, use_cache: bool = True, log=print) -> list[dict]:
    """Compile every job (cached results reused, the rest on ``workers`` processes); one dict per job."""
    import triton

    cache_file = CACHE_DIR / f"triton-{triton.__version__}.json"
    cache = {}
    if use_cache and cache_file.exists():
        with contextlib.suppress(json.JSONDecodeError):
            cache = json.loads(cache_file.read_text())
    results: list[dict | None] = [cache.get(job.key) for job in jobs]
    todo = [i for i, r in enumerate(results) if r is None]
    log(f"  {len(jobs)} compiles, {len(jobs) - len(todo)} cached, {len(todo)} to do")
    global _JOBS
    _JOBS = jobs
    workers = workers or min(len(todo), os.cpu_count() or 1) or 1
    start = time.perf_counter()
    if workers > 1 and len(todo) > 1:
        import multiprocessing

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            for done, (i, result) in enumerate(zip(todo, pool.map(_compile_index, todo), strict=True), 1):
                results[i] = result
                if done % 20 == 0:
                    log(f"  {done}/{len(todo)} compiled ({time.perf_counter() - start:.0f} s)")
    else:
        for i in todo:
            results[i] = compile_job(jobs[i])
    if todo and use_cache:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        cache.update({jobs[i].key: results[i] for i in todo if "error" not in results[i]})
        tmp = cache_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache))
        tmp.replace(cache_file)
    return results  # type: ignore[return-value]


# -------------------------------------------------------------------------------------- report


def _constexprs(job: Job) -> dict:
    names = [p.name for p in job.launch.kernel.params]
    return {name: value for name, (kind, value) in zip(names, job.spec, strict=True) if kind == "constexpr"}


def describe(job: Job) -> dict:
    """What a reader needs to tell two rows apart: the kernel, its dtype and its tile constants."""
    consts = _constexprs(job)
    pointer = next(kind for kind, _ in job.spec if kind.startswith("*") and kind != "*u8")
    dtype = pointer.lstrip("*")
    precision = consts.get("DOT_PRECISION")
    if dtype == "fp32" and precision:
        dtype += f"/{precision}"
    skip = {"DOT_PRECISION", "INTERPRET"}
    tiles = " ".join(
        f"{k.removeprefix('BLOCK_')}={int(v) if isinstance(v, bool) else v}"
        for k, v in consts.items()
        if k not in skip and (k.startswith("BLOCK") or v is True)
    )
    return dict(
        kernel=job.launch.kernel.fn.__name__.strip("_").removesuffix("_kernel"), dtype=dtype, tiles=tiles
    )


def findings(job: Job, result: dict) -> list[str]:
    """Why this compile fails the check (empty when it passes)."""
    if "error" in result:
        return [f"compile error: {result['error']}"]
    out = []
    if result["spill_stores"] or result["spill_loads"]:
        out.append(f"spills {result['spill_stores']} B stored / {result['spill_loads']} B loaded per thread")
    limit = LIMITS[job.arch]["smem_block"]
    if result["shared"] > limit:
        out.append(f"shared memory {result['shared']} B over the {limit} B per-block limit")
    dtype = describe(job)["dtype"]
    wants_tensor_cores = dtype in ("bf16", "fp16") or dtype == "fp32/tf32"
    if result["has_dot"] and wants_tensor_cores and not result["tensor_cores"]:
        out.append(f"a {dtype} dot without tensor-core instructions")
    return out


def table(jobs: list[Job], results: list[dict]) -> str:
    """One row per (kernel, architecture, dtype, tiles, warps, stages); compiles that differ only in the
    launcher's specializations (divisibility, ints equal to 1) share a row with their ranges."""
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        d, r = describe(job), results[i]
        key = (d["kernel"], job.arch, d["dtype"], d["tiles"], r.get("num_warps", 0), r.get("num_stages", 0))
        groups.setdefault(key, []).append(i)

    def span(values) -> str:
        lo, hi = min(values), max(values)
        return str(lo) if lo == hi else f"{lo}-{hi}"

    header = ("kernel", "sm", "dtype", "tiles", "w", "s", "regs", "spill B", "smem KiB", "tensor cores",
              "blk/SM", "n", "cases")  # fmt: skip
    rows = []
    for key in sorted(groups, key=lambda k: tuple(map(str, k))):
        kernel, arch, dtype, tiles, warps, stages = key
        members = groups[key]
        ok = [results[i] for i in members if "error" not in results[i]]
        cases = sorted({c for i in members for c in jobs[i].cases})
        label = cases[0] + (f" +{len(cases) - 1}" if len(cases) > 1 else "")
        if len(ok) < len(members):
            rows.append(
                (kernel, str(arch), dtype, tiles, "", "", "ERROR", "", "", "", "", str(len(members)), label)
            )
            continue
        spill = max(r["spill_stores"] + r["spill_loads"] for r in ok)
        tc = sorted({" ".join(f"{k}x{v}" for k, v in r["tensor_cores"].items()) or
                     ("none" if r["has_dot"] else "-") for r in ok})  # fmt: skip
        blocks = min(ok, key=lambda r: r["blocks_per_sm"])
        limit = LIMITS[arch]["smem_block"] / 1024
        rows.append((kernel, str(arch), dtype, tiles, str(warps), str(stages), span([r["regs"] for r in ok]),
                     str(spill), f"{max(r['shared'] for r in ok) / 1024:.0f}/{limit:.0f}", ",".join(tc),
                     f"{blocks['blocks_per_sm']} {blocks['limiter']}", str(len(members)), label))  # fmt: skip
    widths = [max(len(h), *(len(row[c]) for row in rows)) if rows else len(h) for c, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.gpu_compile", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="TimeSformer-base in bf16 only")
    parser.add_argument("--arch", type=int, action="append", choices=ARCHS, help="default: 80 and 90")
    parser.add_argument("--workers", type=int, default=None, help="compile processes (default: the cores)")
    parser.add_argument("--no-cache", action="store_true", help="compile everything again")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    import warnings

    import triton

    # Triton 3.9 warns once per process that its fp-fusion default will change; the kernels keep the
    # default (fused multiply-adds) on every version.
    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")
    print(f"Triton {triton.__version__}, torch {torch.__version__}: capturing the triton backend's launches")
    start = time.perf_counter()
    launches = capture(sweep(args.quick))
    missed = [] if args.quick else uncovered(launches)
    jobs = plan(launches, tuple(args.arch or ARCHS))
    print(f"{len(launches)} launches -> {len(jobs)} unique compiles ({time.perf_counter() - start:.0f} s)")
    results = compile_all(jobs, args.workers, use_cache=not args.no_cache)
    print(table(jobs, results))
    bad = [(job, f) for job, r in zip(jobs, results, strict=True) for f in findings(job, r)]
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        records = [dict(describe(j), arch=j.arch, cases=j.cases, findings=findings(j, r), **r)
                   for j, r in zip(jobs, results, strict=True)]  # fmt: skip
        args.json.write_text(json.dumps(dict(triton=triton.__version__, torch=torch.__version__,
                                             compiles=records), indent=1))  # fmt: skip
    print(f"\n{len(jobs)} compiles, {len(bad) + len(missed)} findings, {time.perf_counter() - start:.0f} s")
    for job, finding in bad:
        d = describe(job)
        print(f"  FAIL {d['kernel']} sm_{job.arch} {d['dtype']} {d['tiles']} ({job.cases[0]}): {finding}")
    for name in missed:
        print(f"  FAIL {name}: no forward of the sweep launches it (add a case to tools/gpu_compile.sweep)")
    return 1 if bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
