"""Every launch of the ``triton`` backend compiles for sm_80 and sm_90 without spills (``tools/gpu_compile.py``).

The sweep runs in a subprocess: it needs the kernels compiled, not interpreted, and this test session sets
``TRITON_INTERPRET=1`` (conftest) before any kernel module is imported. The unit tests below check the
tool's own rules on made-up compiler output, so that a broken parser cannot pass the sweep silently.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools import gpu_compile as gc

ROOT = Path(__file__).resolve().parent.parent

PTXAS_LOG = """ptxas info    : Compiling entry function '_attention_fwd_kernel' for 'sm_80'
ptxas info    : Function properties for _attention_fwd_kernel
    48 bytes stack frame, 32 bytes spill stores, 28 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 448 bytes cmem[0]
"""


def test_ptxas_log_is_read():
    assert gc._parse_ptxas(PTXAS_LOG) == dict(regs=255, spill_stores=32, spill_loads=28, stack=48)
    with pytest.raises(RuntimeError, match="could not read the ptxas log"):
        gc._parse_ptxas("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n")


def test_tensor_core_instructions_are_counted_from_sass():
    sass = """
        /*0410*/                   HMMA.16816.F32.BF16 R24, R4, R16, R24 ;
        /*0420*/                   HMMA.16816.F32.BF16 R28, R4, R18, R28 ;
        /*0500*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], R24, gsb0 ;
        /*0510*/                   FFMA R3, R2, R5, R3 ;
    """
    assert gc.tensor_core_count(sass) == {"HMMA": 2, "HGMMA": 1}
    assert gc.tensor_core_count("FFMA R3, R2, R5, R3 ;\nFMUL R1, R2, R3 ;") == {}


@pytest.mark.parametrize(
    "arch,regs,warps,shared,expected",
    [
        (90, 128, 4, 40 * 1024, (4, "regs")),  # 128 regs x 128 threads: 4 blocks of the 64K-register file
        (80, 64, 4, 100 * 1024, (1, "smem")),  # 101 KiB per block: one fits in 164 KiB
        (90, 24, 4, 0, (16, "threads")),  # 2048 threads / 128
        (80, 255, 8, 64 * 1024, (1, "regs")),
    ],
)
def test_occupancy(arch, regs, warps, shared, expected):
    assert gc.occupancy(arch, regs, warps, shared) == expected


def _job(dtype_kind: str, precision: str, arch: int = 80) -> gc.Job:
    kernel = type(
        "Kernel",
        (),
        dict(
            params=[type("P", (), {"name": n}) for n in ("Q", "stride", "DOT_PRECISION", "BLOCK_M")],
            fn=type("F", (), {"__name__": "_attention_fwd_kernel"}),
        ),
    )

    spec = [[dtype_kind, "D"], ["i32", "D"], ["constexpr", precision], ["constexpr", 64]]
    return gc.Job(gc.Launch(kernel, (), {}, "case"), arch, "key", spec, ["case"])


def _result(**changes) -> dict:
    result = dict(regs=128, spill_stores=0, spill_loads=0, stack=0, shared=40 * 1024, num_warps=4,
                  num_stages=2, has_dot=True, tensor_cores={"HMMA": 64}, blocks_per_sm=3, limiter="regs")  # fmt: skip
    result.update(changes)
    return result


def test_findings_fail_on_spills_shared_memory_missing_tensor_cores_and_errors():
    bf16, tf32, ieee = _job("*bf16", "tf32"), _job("*fp32", "tf32"), _job("*fp32", "ieee")
    assert gc.findings(bf16, _result()) == []
    assert gc.findings(bf16, _result(spill_stores=4, spill_loads=4)) == [
        "spills 4 B stored / 4 B loaded per thread"
    ]
    assert gc.findings(bf16, _result(shared=200 * 1024)) == [
        "shared memory 204800 B over the 166912 B per-block limit"
    ]
    assert gc.findings(_job("*bf16", "tf32", 90), _result(shared=200 * 1024)) == []  # sm_90: 227 KiB
    assert gc.findings(bf16, _result(tensor_cores={})) == ["a bf16 dot without tensor-core instructions"]
    assert gc.findings(tf32, _result(tensor_cores={})) == ["a fp32/tf32 dot without tensor-core instructions"]
    assert gc.findings(ieee, _result(tensor_cores={})) == []  # full-precision products run on FMA units
    assert gc.findings(bf16, dict(error="CompilationError: at 12:4")) == [
        "compile error: CompilationError: at 12:4"
    ]


def test_sweep_covers_what_the_issue_names():
    labels = [case.label for case in gc.sweep()]
    cases = gc.sweep()
    for attention in ("divided", "joint", "space"):
        for dtype in ("bf16", "fp16", "fp32"):
            for batch in (1, 8):
                assert f"base {attention} {dtype} b{batch}" in labels
                assert f"base {attention} {dtype} b{batch} u8" in labels
    assert {"L 96x224 bf16", "HR 16x448 bf16", "T=160 bf16", "int64 T=160 bf16"} <= set(labels)
    head_dims = {
        c.config["hidden_size"] // c.config["num_attention_heads"] for c in cases if "hidden_size" in c.config
    }
    assert head_dims == {32, 64, 80, 96, 128}
    assert any(c.int64 for c in cases) and any(c.tf32 for c in cases)


@pytest.mark.slow
def test_every_launch_compiles_for_sm80_and_sm90_without_spills():
    """The sweep with the Triton this environment installs (CI runs it with Triton 3.6.0 as well)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.gpu_compile"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    print(proc.stdout[-20000:])
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-4000:]
    assert " 0 findings" in proc.stdout
