"""The benchmark suite without a GPU: argument handling, the CPU suite end to end on a tiny config, failure
reporting, the largest-batch search, report writing from GPU-shaped rows, and the kernel scripts' smoke runs.
No speed is asserted anywhere here."""

from __future__ import annotations

import json
import pathlib
import time

import pytest
import torch

from bench import e2e, report, suite


def test_defaults_follow_the_device():
    cpu = suite.parse_args([], cuda_available=False)
    assert (cpu.device, cpu.configs, cpu.batches, cpu.dtypes) == ("cpu", ["base"], [1], ["float32"])
    assert cpu.impls == [e2e.EAGER, "timesformer sdpa"] and not cpu.largest_batch
    gpu = suite.parse_args([], cuda_available=True)
    assert (gpu.device, gpu.configs, gpu.batches) == ("cuda", ["base", "hr", "large"], [1, 8, 32])
    assert gpu.dtypes == ["bfloat16", "float16"] and gpu.impls == list(e2e.IMPLEMENTATIONS)
    assert gpu.largest_batch and gpu.graphs_batches == [1] and gpu.compile_mode == "default"
    quick = suite.parse_args(["--quick"], cuda_available=True)
    assert (quick.configs, quick.batches, quick.dtypes, quick.largest_batch) == (
        ["base"],
        [1, 32],
        ["bfloat16"],
        False,
    )
    chosen = suite.parse_args(
        ["--configs", "hr", "--batches", "2", "3", "--impls", "timesformer triton", "--no-largest-batch"],
        cuda_available=True,
    )
    assert (chosen.configs, chosen.batches, chosen.impls, chosen.largest_batch) == (
        ["hr"],
        [2, 3],
        ["timesformer triton"],
        False,
    )


@pytest.mark.parametrize(
    "argv,cuda,message",
    [
        (["--dtypes", "bfloat16"], False, "float32 only"),
        (["--device", "cuda"], False, "no CUDA device"),
        (["--batches", "0"], True, "batch sizes must be >= 1"),
        (["--impls", "onnxruntime"], True, "invalid choice"),
        (["--configs", "huge"], True, "invalid choice"),
    ],
)
def test_bad_arguments_are_named(argv, cuda, message, capsys):
    with pytest.raises(SystemExit) as exc:
        suite.parse_args(argv, cuda_available=cuda)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def _run_tiny(tmp_path, *extra):
    code = suite.main(
        [
            "--configs",
            "tiny",
            "--rounds",
            "2",
            "--no-kernels",
            "--no-evaluate",
            "--out",
            str(tmp_path),
            "--stem",
            "run",
            *extra,
        ]
    )
    result = json.loads((tmp_path / "run.json").read_text())
    return code, result


def test_cpu_suite_end_to_end(tmp_path):
    code, result = _run_tiny(tmp_path)
    assert code == 0
    assert result["device"]["type"] == "cpu" and result["commit"] and result["versions"]["torch"]
    assert result["peak_tflops"]["float32"] > 0
    rows = {r["impl"]: r for r in result["e2e"]}
    assert set(rows) == {e2e.EAGER, "timesformer sdpa"}
    for r in rows.values():
        assert r["status"] == "ok" and r["median_ms"] > 0 and len(r["all_ms"]) == 2
        assert r["rel_err_vs_fp32_eager"] <= 1e-4
        assert r["flops"] > 0 and r["tflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e9)
        assert r["clips_per_s"] == pytest.approx(1e3 / r["median_ms"])
    assert rows["timesformer sdpa"]["speedup_vs_eager"] == rows["timesformer sdpa"]["paired_speedup_vs_eager"]
    assert rows[e2e.EAGER]["speedup_vs_eager"] is None
    md = (tmp_path / "run.md").read_text()
    assert result["device"]["name"] in md and "| timesformer sdpa |" in md
    assert (tmp_path / "run.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["outputs"] == {"json": "run.json", "png": "run.png", "md": "run.md"}


def test_a_wrong_answer_is_reported_not_timed(tmp_path, monkeypatch):
    real_build = e2e.build

    def build(impl, *args):
        fn = real_build(impl, *args)
        return (lambda x: fn(x) * 1.01) if impl == "timesformer sdpa" else fn

    monkeypatch.setattr(e2e, "build", build)
    code, result = _run_tiny(tmp_path)
    assert code == 2
    bad = next(r for r in result["e2e"] if r["impl"] == "timesformer sdpa")
    assert bad["status"].startswith("failed: wrong output") and bad["median_ms"] is None
    assert bad["clips_per_s"] is None and bad["speedup_vs_eager"] is None
    assert "failed: wrong output" in (tmp_path / "run.md").read_text()


def test_triton_rows_are_skipped_with_the_reason_on_cpu(tmp_path):
    code, result = _run_tiny(tmp_path, "--impls", e2e.EAGER, "timesformer triton")
    assert code == 0
    row = next(r for r in result["e2e"] if r["impl"] == "timesformer triton")
    assert row["status"] == "skipped: needs a CUDA GPU" and row["median_ms"] is None


def test_largest_batch_search(monkeypatch):
    calls = []

    def build(impl, name, opts):
        def fn(x):
            calls.append(x.shape[0])
            if x.shape[0] > 8:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return x

        return fn

    monkeypatch.setattr(e2e, "build", build)
    monkeypatch.setattr(e2e, "unavailable", lambda impl, device: None)
    opts = e2e.Options(dtype=torch.float32, device=torch.device("cpu"))
    assert e2e.largest_batch("tiny", opts, start=2, limit=64, log=lambda s: None) == 8
    assert calls == [4, 8, 16]
    assert e2e.largest_batch("tiny", opts, start=8, limit=64, log=lambda s: None) is None


def _gpu_result() -> dict:
    """Rows shaped like a GPU run's (numbers made up for the test, never written to bench/results)."""

    def row(impl, batch, ms, mem, status="ok"):
        return {
            "config": "base",
            "model": e2e.CONFIGS["base"].title,
            "dtype": "bfloat16",
            "batch": batch,
            "impl": impl,
            "status": status,
            "median_ms": ms if status == "ok" else None,
            "peak_mem_gib": mem,
            "rel_err_vs_fp32_eager": 1e-3,
            "flops": 369.1e9 * batch,
        }

    return {
        "command": "python -m bench",
        "mode": "full",
        "date": "2026-01-01T00:00:00+00:00",
        "commit": "abc1234",
        "device": {"type": "cuda", "name": "Test GPU", "driver": "1.0", "cuda": "12.8"},
        "versions": {"torch": "x", "triton": "y", "transformers": "z", "timesformer": "0.1.0"},
        "peak_tflops": {"bfloat16": 800.0},
        "copy_gbps": 3000.0,
        "e2e": [
            row(e2e.EAGER, 32, 100.0, 20.0),
            row(e2e.COMPILE, 32, 60.0, 12.0),
            row(report.TRITON, 32, 30.0, 10.0),
            row(report.GRAPHS, 1, 1.2, 1.0),
            row("timesformer sdpa + compile", 32, None, None, status="out of memory"),
        ],
        "kernels": [
            {
                "kernel": "temporal attention",
                "batch": 32,
                "dtype": "bfloat16",
                "ms": 0.1,
                "baseline": "reference path",
                "baseline_ms": 0.3,
                "speedup": 3.0,
                "achieved": 2400.0,
                "unit": "GB/s",
                "roofline": "copy rate",
                "fraction_of_roofline": 0.8,
            }
        ],
    }


def test_report_from_gpu_rows(tmp_path):
    result = _gpu_result()
    report.derive(result)
    triton = next(r for r in result["e2e"] if r["impl"] == report.TRITON)
    assert triton["speedup_vs_eager"] == pytest.approx(100 / 30)
    assert triton["speedup_vs_compile"] == pytest.approx(2.0)
    assert triton["tflops"] == pytest.approx(369.1 * 32 / 30)
    assert triton["fraction_of_peak"] == pytest.approx(369.1 * 32 / 30 / 800)
    assert triton["clips_per_s"] == pytest.approx(32 / 0.030)
    met = {t["target"]: t["met"] for t in result["targets"]}
    assert met == {
        "base bf16 batch 32: triton vs transformers eager": True,
        "base bf16 batch 32: triton vs transformers + compile": True,
        "base bf16 batch 32: model FLOPs / measured bf16 matrix peak": False,  # 49%
        "base bf16 batch 32: peak memory, triton / transformers eager": True,
        "base bf16 batch 1: triton + CUDA graphs, ms per clip": True,
        "temporal attention, batch 32: share of the measured copy rate": True,  # 80%
        "temporal attention, batch 32: vs the reference path": True,  # 3x
    }
    paths = report.write_all(result, str(tmp_path), "gpu")
    md = pathlib.Path(paths["md"]).read_text()
    assert "Test GPU" in md and "driver 1.0" in md and "2026-01-01" in md and "bfloat16 800 TFLOP/s" in md
    assert "| out of memory |" in md and "80% of copy rate" in md and "| **no** |" in md
    assert pathlib.Path(paths["png"]).read_bytes()[:4] == b"\x89PNG"
    assert json.loads(pathlib.Path(paths["json"]).read_text())["targets"] == result["targets"]


def test_flop_count_of_the_rows_is_the_package_count():
    from timesformer.flops import count_flops

    assert suite._flops("base", 32).total == count_flops(e2e.hf_config("base"), 32).total
    assert round(suite._flops("base", 1).total / 1e9, 1) == 369.1


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cpu_microbenchmarks_run_through_pytest_benchmark(monkeypatch):
    monkeypatch.setenv("TIMESFORMER_BENCH_SHAPE", "tiny")
    result = {"kernels": []}
    args = suite.parse_args(["--quick"], cuda_available=False)
    assert suite.run_cpu_kernels(args, result) == 0
    names = {k["kernel"] for k in result["kernels"]}
    assert {"temporal attention", "spatial attention", "joint attention", "frame normalization"} <= names
    assert {n for n in names if n.startswith("decode 8 frames")} == {
        "decode 8 frames, 2 s 128x72 H.264 (keyframe every 2 s)",
        "decode 8 frames, 2 s 128x72 H.264 (x264 default keyframes)",
        "decode 8 frames, 2 s 128x72 H.264 (keyframe every 2 s, MPEG-TS)",
    }
    assert "preprocess 8 frames 128x72 -> 224^2 (pure-torch fallback)" in names
    assert all(k["ms"] > 0 and k["baseline_ms"] > 0 for k in result["kernels"])


def test_timesformer_bench_hands_over(capsys):
    from timesformer.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    assert "python -m bench" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_attention_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from bench import bench_attention

    out = tmp_path / "attention.json"
    assert bench_attention.main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and "smoke" in result["timing"]
    assert {(r["kernel"], r["batch"]) for r in result["results"]} == {
        (k, b) for k in ("temporal", "spatial", "joint") for b in (1, 2)
    }
    assert all(r["accuracy_rule_met"] for r in result["results"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_fusion_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from bench import bench_fusion

    out = tmp_path / "fusion.json"
    assert bench_fusion.main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ops = {r["op"] for r in result["results"]}
    assert "patch embedding" in ops and "LN_2 -> fc1 + GELU" in ops and len(ops) == 7
    assert all(
        r["relative_error_vs_fp32"] <= 4 * r["unfused_relative_error_vs_fp32"] + 1e-6
        for r in result["results"]
    )


def _fake_cuda_bookkeeping(monkeypatch):
    """torch.cuda's synchronization and memory queries faked (3 GiB held, 5 GiB peak), each timing 1.5 ms; a
    timer that makes two input sets."""
    for name in ("synchronize", "reset_peak_memory_stats", "empty_cache"):
        monkeypatch.setattr(torch.cuda, name, lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a: 5 * 2**30)
    monkeypatch.setattr(e2e, "_cuda_median_ms", lambda fn, inputs, reps: 1.5)

    class FakeTimer:
        def sets(self, make, nbytes):
            return [make(i) for i in range(2)]

    return FakeTimer()


def test_gpu_path_control_flow_on_cpu(monkeypatch):
    """``run_gpu`` with the CUDA calls faked: building, checking, memory and timing bookkeeping, skips."""
    timer = _fake_cuda_bookkeeping(monkeypatch)
    opts = e2e.Options(dtype=torch.float32, device=torch.device("cpu"), graphs_batches=(1,))
    impls = [e2e.EAGER, "timesformer sdpa", "timesformer triton + graphs"]
    rows = e2e.run_gpu("tiny", impls, [1, 2], opts, timer, log=lambda s: None)
    got = {(r["impl"], r["batch"]): r for r in rows}
    assert set(got) == {
        (e2e.EAGER, 1),
        (e2e.EAGER, 2),
        ("timesformer sdpa", 1),
        ("timesformer sdpa", 2),
        ("timesformer triton + graphs", 1),  # graphs: batch 1 only
    }
    assert got[("timesformer triton + graphs", 1)]["status"] == "skipped: needs a CUDA GPU"
    for impl in (e2e.EAGER, "timesformer sdpa"):
        for batch in (1, 2):
            r = got[(impl, batch)]
            assert r["status"] == "ok" and r["median_ms"] == 1.5 and r["rel_err_vs_fp32_eager"] <= 1e-4
            assert r["peak_mem_gib"] < 5 and r["resident_gib"] < 3  # the inputs are not counted


def test_evaluate_pipeline_rows_and_report():
    from bench import bench_evaluate

    rows = bench_evaluate.run("cpu", workers=[1, 2], videos=4)
    assert [r["workers"] for r in rows] == [1, 2]
    for r in rows:
        assert r["videos"] == 4 and r["top1"] == 1.0 and r["videos_per_s"] > 0
        assert set(r["ms_per_video"]) == {"decode", "preprocess", "model"} and r["ms_per_video"]["decode"] > 0
    md = "\n".join(bench_evaluate.markdown(rows))
    assert "| decode workers | videos/s |" in md and md.count("\n| ") >= 3


def test_gpu_rows_batch_first_saved_as_they_finish_and_a_failure_does_not_stop_the_run(monkeypatch):
    """A GPU call has a hard time limit: rows come batch by batch in the order given, each handed to
    ``on_row`` when it is done, and one implementation's exception becomes its row's status."""
    timer = _fake_cuda_bookkeeping(monkeypatch)
    real_build = e2e.build

    def build(impl, name, opts):
        if impl == "timesformer sdpa":
            raise RuntimeError("no kernel image is available\nsecond line")
        return real_build(e2e.EAGER if impl == e2e.COMPILE else impl, name, opts)  # no inductor on the CPU

    monkeypatch.setattr(e2e, "build", build)
    opts = e2e.Options(dtype=torch.float32, device=torch.device("cpu"))
    seen = []
    impls = [e2e.EAGER, e2e.COMPILE, "timesformer sdpa"]
    rows = e2e.run_gpu("tiny", impls, [3, 1], opts, timer, log=lambda s: None, on_row=seen.append)
    # The compiled baselines last: each batch size is a compile of its own.
    assert seen == rows and [(r["batch"], r["impl"]) for r in rows] == [
        (3, e2e.EAGER),
        (3, "timesformer sdpa"),
        (1, e2e.EAGER),
        (1, "timesformer sdpa"),
        (3, e2e.COMPILE),
        (1, e2e.COMPILE),
    ]
    for r in rows:
        if r["impl"] != "timesformer sdpa":
            assert r["status"] == "ok" and r["median_ms"] == 1.5
        else:
            assert r["status"] == "failed: RuntimeError: no kernel image is available"
            assert r["median_ms"] is None and "Traceback" in r["traceback"]


def test_gpu_rows_past_the_deadline_are_skipped(monkeypatch):
    timer = _fake_cuda_bookkeeping(monkeypatch)
    opts = e2e.Options(dtype=torch.float32, device=torch.device("cpu"), deadline=time.monotonic() - 1)
    rows = e2e.run_gpu("tiny", [e2e.EAGER], [2], opts, timer, log=lambda s: None)
    assert [r["status"] for r in rows] == ["skipped: out of time (the run's time budget)"]


def test_kernel_targets_from_gpu_rows():
    result = _gpu_result()
    common = {"batch": 32, "dtype": "bfloat16", "status": "ok", "baseline": "reference path"}
    result["kernels"] += [
        {**common, "kernel": "spatial attention", "ms": 0.2, "baseline_ms": 0.5, "speedup": 2.5},
        {
            **common,
            "kernel": "LN_1 -> qkv_s",
            "ms": 0.30,
            "baseline_ms": 0.33,
            "speedup": 1.1,
            "bare_product_ms": 0.25,
        },
        {**common, "kernel": "patch embedding", "ms": 0.1, "baseline_ms": 0.3, "speedup": 3.0},
        {**common, "kernel": "fc2 + residual", "ms": None, "status": "failed: wrong output", "speedup": None},
    ]
    report.derive(result)
    got = {t["target"]: (round(t["value"], 3), t["met"]) for t in result["targets"]}
    assert got["temporal attention, batch 32: share of the measured copy rate"] == (0.8, True)
    assert got["temporal attention, batch 32: vs the reference path"] == (3.0, True)
    assert got["spatial attention, batch 32: vs the reference path"] == (2.5, True)
    assert got["LN_1 -> qkv_s, batch 32: time / bare cuBLAS product"] == (1.2, False)
    assert got["LN_1 -> qkv_s, batch 32: vs the unfused sequence"] == (1.1, False)
    assert got["patch embedding, batch 32: vs the reference path"] == (3.0, True)
    assert not any(t.startswith("fc2") for t in got)  # a failed row answers no target
    assert "| fc2 + residual | 32 |  |" in report.markdown(result)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tune_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from bench import tune

    # A candidate that cannot compile (a non-power-of-two tile) is a failed row; the others still run.
    monkeypatch.setitem(tune.CANDIDATES, "temporal", [{}, {"BLOCK_P": 3}, {"BLOCK_P": 2}])
    out, md = tmp_path / "tune.json", tmp_path / "tune.md"
    # An in-place op (its timing changes its inputs) and a LayerNorm product.
    argv = ["--smoke", "--kernels", "temporal", "fc2", "--json", str(out), "--markdown", str(md)]
    assert tune.main(argv) == 1  # the failed candidate
    rows = json.loads(out.read_text())["rows"]
    assert [(r["kernel"], r["candidate"]) for r in rows[:3]] == [
        ("temporal", "default"),
        ("temporal", "BLOCK_P=3"),
        ("temporal", "BLOCK_P=2"),
    ]
    assert rows[1]["status"].startswith("failed: ") and rows[1]["ms"] is None
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == len(rows) - 1 == 2 + len(tune.candidates("fc2 + residual"))
    # Every check on untouched inputs: the baseline's own error is rounding, not a stale reference.
    assert all(r["rel_err"] <= 4 * r["baseline_rel_err"] + 1e-6 and r["ms"] > 0 for r in ok)
    assert all(r["baseline_rel_err"] < 1e-2 for r in ok)
    assert rows[0]["vs_default"] == 1.0
    assert "| temporal | 2 | BLOCK_P=2 |" in md.read_text()


def test_tune_poisons_the_outputs_the_ops_allocate():
    from bench import tune

    with tune.poisoned_outputs():
        assert torch.empty(5).isnan().all() and torch.empty(3, dtype=torch.int32).shape == (3,)
    assert torch.empty(0).numel() == 0


def test_tune_overrides_only_within_the_block():
    from bench import tune
    from timesformer.kernels import linear

    default = linear._launch_config(4096, torch.bfloat16)
    with tune.launch_config("linear", {"BLOCK_N": 256, "num_stages": 2}):
        assert linear._launch_config(4096, torch.bfloat16) == {**default, "BLOCK_N": 256, "num_stages": 2}
    assert linear._launch_config(4096, torch.bfloat16) == default
    assert {tune.family(k) for k in tune.KERNELS.values()} == set(tune.MODULES) == set(tune.CANDIDATES)


def test_run_gpu_script_rehearsal(tmp_path):
    """bench/run_gpu.sh's plumbing without a GPU: stages, the per-stage limit, files under $OUT, the summary."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    env = dict(
        os.environ, REHEARSAL="1", STAGES="env tests suite nonsense", OUT=str(tmp_path), PYTHON=sys.executable
    )
    done = subprocess.run(
        ["bash", str(root / "bench" / "run_gpu.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr  # the unknown stage
    assert {p.name for p in tmp_path.iterdir()} == {"log.txt", "tests.txt", "run.json", "run.md", "run.png"}
    summary = done.stdout.split("===== summary =====")[1]
    # The tests stage collects its files (running them on a CPU outlasted its limit, made for a GPU).
    assert "env    exit 0" in summary and "tests  exit 0" in summary and "suite  exit 0" in summary
    assert " tests collected" in (tmp_path / "tests.txt").read_text()
    assert "unknown stage nonsense" in done.stdout
    result = json.loads((tmp_path / "run.json").read_text())
    assert {r["status"] for r in result["e2e"]} == {"ok"} and len(result["e2e"]) == 4
    assert "torch" in (tmp_path / "log.txt").read_text()


def test_readme_gpu_table_from_a_run(tmp_path):
    result = _gpu_result()
    run = tmp_path / "bench" / "results" / "test-gpu" / "run.json"
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps(result))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_BEGIN}\nold text\n{report.README_END}\nafter\n")
    assert report.main([str(run), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old text" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("\nafter\n")
    section = text.split(report.README_BEGIN)[1].split(report.README_END)[0]
    assert "Test GPU" in section and "bfloat16 800 TFLOP/s" in section and "copy rate 3000 GB/s" in section
    assert "[JSON](bench/results/test-gpu/run.json)" in section
    # triton at batch 32: 30 ms, 1067 clips/s, 3.33x eager, 2.00x compiled, 49.2% of the peak, 10 GiB
    assert "| timesformer triton | 30.00 | 1066.7 | 3.33 | 2.00 | 49.2 | 10.00 |" in section
    assert "| timesformer sdpa + compile | out of memory |" in section
    assert "| **no** |" in section  # the 55%-of-peak target
    # Run again: the section is replaced, not added.
    assert report.main([str(run), "--readme", str(readme)]) == 0
    assert readme.read_text().count("| timesformer triton | 30.00 |") == 1


def test_readme_refuses_a_cpu_run_or_missing_markers(tmp_path):
    result = _gpu_result()
    run = tmp_path / "run.json"
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    run.write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="expected one"):
        report.main([str(run), "--readme", str(readme)])
    run.write_text(json.dumps({**result, "device": {"type": "cpu", "name": "a CPU", "cores": 2}}))
    with pytest.raises(SystemExit, match="not a GPU run"):
        report.main([str(run), "--readme", str(readme)])
    assert readme.read_text() == "no markers\n"


def test_compiled_and_graph_rows_only_at_their_batches():
    opts = e2e.Options(
        dtype=torch.float32, device=torch.device("cpu"), graphs_batches=(1,), compile_batches=(32,)
    )
    wanted = {(impl, b) for impl in e2e.IMPLEMENTATIONS for b in (32, 1) if e2e._wanted(impl, b, opts)}
    assert wanted == {
        (e2e.EAGER, 32),
        (e2e.EAGER, 1),
        (e2e.COMPILE, 32),
        ("timesformer sdpa", 32),
        ("timesformer sdpa", 1),
        ("timesformer sdpa + compile", 32),
        ("timesformer triton", 32),
        ("timesformer triton", 1),
        ("timesformer triton + graphs", 1),
    }
    args = suite.parse_args(["--compile-batches", "32", "--batches", "32", "1"], cuda_available=True)
    assert args.compile_batches == [32]
    assert suite.parse_args([], cuda_available=True).compile_batches is None


def test_run_gpu_script_checks_its_gpu_arguments_without_a_gpu(tmp_path):
    """DRY_RUN=1: the suite's and tune's arguments of a GPU call, parsed as on the GPU machine (a typo there
    would cost a device call); quoted names keep their spaces."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent

    def run(**env):
        env = dict(
            os.environ, STAGES="suite tune", DRY_RUN="1", OUT=str(tmp_path), PYTHON=sys.executable, **env
        )
        done = subprocess.run(
            ["bash", str(root / "bench" / "run_gpu.sh")], env=env, capture_output=True, text=True, timeout=300
        )
        return done.returncode, done.stdout

    code, out = run(
        SUITE_ARGS='--configs hr --impls "timesformer triton" "transformers eager"', TUNE_ARGS="--kernels fc2"
    )
    assert "impls: ['timesformer triton', 'transformers eager']" in out and "dtypes: ['bfloat16']" in out
    assert "compile_batches: [32]" in out and "batches: [32, 1, 8]" in out
    assert "fc2 + residual (batch 32, bfloat16): default, num_stages=4" in out
    summary = out.split("===== summary =====")[1]
    assert code == 0 and "suite  exit 0" in summary and "tune   exit 0" in summary
    code, out = run(SUITE_ARGS="--configs nonsense", TUNE_ARGS="--kernels nonsense")
    summary = out.split("===== summary =====")[1]
    assert code == 1 and "suite  exit 2" in summary and "tune   exit 2" in summary


def test_run_gpu_ncu_stage_plumbing(tmp_path):
    """The ncu stage with a stand-in for ncu that runs the program it is given: tune's profile mode (each
    kernel's default configuration once, checked, nothing timed) in the interpreter."""
    import os
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parent.parent
    fake = tmp_path / "ncu"
    # Everything up to the log file's name is ncu's; the rest is the program.
    fake.write_text(
        '#!/usr/bin/env bash\nwhile [ "$1" != --log-file ]; do shift; done\necho csv > "$2"\nshift 2\nexec "$@"\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = dict(os.environ, STAGES="ncu", NCU=str(fake), OUT=str(out), PYTHON=sys.executable,
               TUNE_ARGS="--smoke --kernels temporal qkv_s", TRITON_INTERPRET="1")  # fmt: skip
    done = subprocess.run(
        ["bash", str(root / "bench" / "run_gpu.sh")], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "ncu.csv").read_text() == "csv\n"
    lines = [line for line in done.stdout.splitlines() if " B=2 " in line]
    assert len(lines) == 2 and all("default" in line and " ok (error " in line for line in lines)


def test_16_bit_rows_are_judged_against_eager_at_that_dtype(monkeypatch):
    """In bf16, transformers eager is itself ~1e-2 from float32 eager: it is the baseline (any finite answer),
    and the others may be twice as far."""
    timer = _fake_cuda_bookkeeping(monkeypatch)
    opts = e2e.Options(dtype=torch.bfloat16, device=torch.device("cpu"))
    eager, sdpa = e2e.run_gpu("small", [e2e.EAGER, "timesformer sdpa"], [2], opts, timer, log=lambda s: None)
    assert eager["status"] == "ok" and eager["rel_err_vs_fp32_eager"] > 2e-3, eager
    assert sdpa["status"] == "ok" and sdpa["rel_err_vs_fp32_eager"] <= 2 * eager["rel_err_vs_fp32_eager"]
    assert e2e.error_bound(e2e.EAGER, torch.bfloat16, None) == float("inf")
    assert e2e.error_bound("timesformer triton", torch.bfloat16, None) == 5e-2
    assert e2e.error_bound("timesformer triton", torch.float32, 1e-2) == 1e-4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_kernel_benchmark_that_raises_is_a_failed_row_and_the_rest_run(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from bench import bench_attention
    from bench._common import Timer

    real_cases = bench_attention.cases

    def cases(*args):
        out = real_cases(*args)

        def boom(x):
            raise RuntimeError("triton.runtime.errors.OutOfResources: out of resource: shared memory\nmore")

        out["spatial"] = dict(out["spatial"], ours=boom)
        return out

    monkeypatch.setattr(bench_attention, "cases", cases)
    rows, seen = [], []
    device = torch.device("cpu")
    bench_attention.run([1], bench_attention.SMOKE, torch.float16, device, Timer(device, smoke=True), rows,
                        on_row=seen.append)  # fmt: skip
    assert seen == rows and [(r["kernel"], r["status"]) for r in rows] == [
        ("temporal", "ok"),
        (
            "spatial",
            "failed: RuntimeError: triton.runtime.errors.OutOfResources: out of resource: shared memory",
        ),
        ("joint", "ok"),
    ]
    assert "Traceback" in rows[1]["traceback"] and rows[2]["ms"]["triton"] > 0
