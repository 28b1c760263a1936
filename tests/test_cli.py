"""`python -m timesformer demo` and `info` run and report every backend."""

from __future__ import annotations

from timesformer.__main__ import main


def test_demo_small(capsys):
    # On the CPU the demo skips triton even under TRITON_INTERPRET=1 (the interpreter is for tests).
    assert main(["demo", "--preset", "small", "--repeats", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "eager" in out and "sdpa" in out and "triton  skipped" in out
    assert "rel. diff vs eager" in out


def test_info(capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "sdpa    yes" in out and "triton  no" in out
