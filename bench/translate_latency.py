"""End-to-end latency of one short translation: process start to exit (added 2026-11-24, faf14df).

    .venv/bin/python bench/translate_latency.py [--model runs/latest] [--repeats 9]

Times, as separate processes: `python -c "import torch"` (the floor every torch program pays),
`mtcli --help`, and `mtcli translate -m MODEL "I love you"` with the CPU fast path, without it
(MTCLI_FAST_LINEAR=0) and with --int8. Each command runs once to warm the page cache, then the
commands take turns for --repeats rounds; the median, min and max wall time are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import REPO

BIN = Path(sys.executable).parent


def commands(model: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """Name -> (argv, extra environment)."""
    translate = [str(BIN / "mtcli"), "translate", "-m", model]
    return {
        "python -c 'import torch'": ([sys.executable, "-c", "import torch"], {}),
        "mtcli --help": ([str(BIN / "mtcli"), "--help"], {}),
        "mtcli translate 'I love you'": ([*translate, "I love you"], {}),
        "  same, MTCLI_FAST_LINEAR=0": ([*translate, "I love you"], {"MTCLI_FAST_LINEAR": "0"}),
        "  same, --int8": ([*translate, "--int8", "I love you"], {}),
    }


def run(argv: list[str], extra: dict[str, str]) -> tuple[float, str]:
    """Wall seconds from spawn to exit, and the first line of stdout."""
    start = time.perf_counter()
    out = subprocess.run(argv, env={**os.environ, **extra}, capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr}")
    return seconds, (out.stdout.splitlines() or [""])[0]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(REPO / "runs" / "latest"), help="an mtcli bundle")
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args(argv)
    cmds = commands(args.model)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    first: dict[str, str] = {}
    for cmd, extra in cmds.values():  # warm-up: page cache, .pyc files
        run(cmd, extra)
    for _ in range(args.repeats):
        for name, (cmd, extra) in cmds.items():
            seconds, first[name] = run(cmd, extra)
            times[name].append(seconds)
    for name, t in times.items():
        ms = [x * 1000 for x in t]
        print(f"{name:30} median {statistics.median(ms):6.0f} ms  min {min(ms):6.0f}  max {max(ms):6.0f}"
              f"  n={len(ms)}  stdout: {first[name][:40]!r}")  # fmt: skip


if __name__ == "__main__":
    main()
