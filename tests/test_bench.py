"""The benchmark scripts run (tiny shapes, CPU): they must not rot where no GPU is at hand to run them."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import pytest

BENCH = pathlib.Path(__file__).resolve().parents[1] / "bench"


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # as when the script runs: its folder is on sys.path
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_attention_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "attention.json"
    assert _load("bench_attention", monkeypatch).main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["device"].startswith("cpu") and "smoke" in result["timing"]
    assert {(r["kernel"], r["batch"]) for r in result["results"]} == {
        (k, b) for k in ("temporal", "spatial", "joint") for b in (1, 2)
    }
    assert all(r["accuracy_rule_met"] for r in result["results"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bench_fusion_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    out = tmp_path / "fusion.json"
    assert _load("bench_fusion", monkeypatch).main(["--smoke", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    ops = {r["op"] for r in result["results"]}
    assert "patch embedding" in ops and "LN_2 -> fc1 + GELU" in ops and len(ops) == 7
    assert all(
        r["relative_error_vs_fp32"] <= 4 * r["unfused_relative_error_vs_fp32"] + 1e-6
        for r in result["results"]
    )
