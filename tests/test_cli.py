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


def test_a_second_ctrl_c_does_not_break_into_the_clean_up(capsys):
    """What an interrupted command held is released as ``_run`` handles the interrupt (evaluate's DataLoader
    joins its workers then): a second Ctrl-C there printed a traceback. SIGINT is ignored until it is done,
    then handled as before."""
    import signal

    from timesformer.__main__ import _run

    seen = []

    class Held:  # stands for the DataLoader iterator in the interrupted command's frame
        def __del__(self):
            seen.append(signal.getsignal(signal.SIGINT))

    def command(_args):
        held = Held()  # noqa: F841 (freed with the interrupted frame)
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGINT)
    assert _run(command, None) == 130
    assert seen == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is before
    assert "interrupted" in capsys.readouterr().err


def test_the_streams_error_handling_is_restored_after_a_command():
    import sys

    from timesformer.__main__ import _run

    before = sys.stdout.errors, sys.stderr.errors
    seen = []
    assert _run(lambda _args: seen.append(sys.stdout.errors) or 0, None) == 0
    assert seen == ["backslashreplace"]
    assert (sys.stdout.errors, sys.stderr.errors) == before
