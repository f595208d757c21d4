"""Paths and helpers for tests that run the `mtcli` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
DATA = Path(os.environ.get("MTCLI_DATA", REPO.parent / "shared" / "data")).resolve()


def cli(*args, cwd=REPO, timeout=300, input=None):
    """Run `python -m mtcli ARGS` and return the CompletedProcess (text mode)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "mtcli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=timeout, input=input)  # fmt: skip


def rows(run: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of every metrics.jsonl row of a run that has `key`."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r[key]) for r in map(json.loads, lines) if key in r]
