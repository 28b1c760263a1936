"""What every benchmark records about the run: versions, commit and date (imported by the bench scripts)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

import torch


def commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance() -> dict:
    """torch, timesformer and Python versions, the git commit and the UTC date of this run."""
    import timesformer

    return {
        "torch": torch.__version__,
        "timesformer": timesformer.__version__,
        "python": platform.python_version(),
        "commit": commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_json(path: str | None, result: dict) -> None:
    """Write ``result`` to ``path`` (folders created); nothing when ``path`` is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(result, f, indent=2)
