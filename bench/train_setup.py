"""train_bench's fixed work and how it is timed: the training settings every system uses, the
prepared Multi30k en-de data, and timed windows of updates on a shared machine (`run_windows`).

Nothing here imports torch or mtcli at import time.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from common import REPO, THREADS, cpu_ticks, machine_cores, other_cores, repo_cwd

RUN_DIR = REPO / "runs" / "base"
MAX_TOKENS, DROPOUT, SMOOTHING, LR, CLIP = 4000, 0.1, 0.1, 7e-4, 1.0
OTHER_MAX = 0.3  # cores other processes may use during a kept window


# ----------------------------------------------------------------------------- timing


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live children, from /proc."""
    tick, total = os.sysconf("SC_CLK_TCK"), 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1] is the parent pid
            total += int(fields[11]) + int(fields[12])
    return total / tick


def window_row(tokens: float, steps: int, seconds: float, own_cpu: float, machine: float) -> dict:
    """One timed window: tokens/s and how many cores other processes used meanwhile."""
    other = other_cores(machine, own_cpu, seconds)
    return {"tokens": round(tokens, 1), "steps": steps, "seconds": round(seconds, 3),
            "tok_s": round(tokens / seconds, 1), "other_cores": round(other, 2)}  # fmt: skip


class Windows:
    """Sorts a system's windows into warm-up, kept and set-aside ones; knows when to stop."""

    def __init__(self, warmup: int, want: int, max_windows: int):
        self.warmup, self.want, self.max_windows = warmup, want, max_windows
        self.rows: dict[str, list] = {"warmup": [], "kept": [], "set_aside": []}

    def add(self, row: dict) -> None:
        if len(self.rows["warmup"]) < self.warmup:
            kind = "warmup"
        else:
            kind = "set_aside" if row["other_cores"] > OTHER_MAX else "kept"
        self.rows[kind].append(row)
        print(f"    {kind:<9} {row['tok_s']:8.1f} tok/s  {row['steps']} steps {row['seconds']:6.1f} s  "
              f"other {row['other_cores']:.2f} cores", flush=True)  # fmt: skip

    def done(self) -> bool:
        timed = len(self.rows["kept"]) + len(self.rows["set_aside"])
        return len(self.rows["kept"]) >= self.want or timed >= self.max_windows

    def result(self) -> dict:
        kept = self.rows["kept"] or self.rows["set_aside"]  # all noisy: report them, flagged
        rates = [r["tok_s"] for r in kept]
        return {"median_tok_s": round(statistics.median(rates), 1), "repeats": rates,
                "all_noisy": not self.rows["kept"], **self.rows}  # fmt: skip


def run_windows(step, args, warmup: int) -> dict:
    """Call `step()` (-> target tokens of one update) window by window until enough are kept."""
    windows = Windows(warmup, args.windows, args.windows + args.extra)
    while not windows.done():
        tokens, t0, c0, p0 = 0.0, cpu_ticks(), time.process_time(), time.perf_counter()
        for _ in range(args.window_steps):
            tokens += step()
        seconds, own = time.perf_counter() - p0, time.process_time() - c0
        windows.add(window_row(tokens, args.window_steps, seconds, own, machine_cores(t0, cpu_ticks())))
    return windows.result()


def matmul_gflops(n: int = 2048, reps: int = 10) -> dict:
    """fp32 n x n matmul rate on THREADS threads (median of `reps` after warm-up)."""
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - t0)
    rates = [2 * n**3 / t / 1e9 for t in times]
    return {"median_gflops": round(statistics.median(rates), 1), "repeats": [round(r, 1) for r in rates]}


# ----------------------------------------------------------------------------- data


def base_config(overrides: list[str]):
    """configs/base.yaml with the benchmark's settings (4,000-token batches, 2 threads, CPU)."""
    from mtcli.config import load_config

    fixed = [f"run_dir={RUN_DIR}", f"train.max_tokens={MAX_TOKENS}", f"train.threads={THREADS}",
             "train.device=cpu", f"model.dropout={DROPOUT}", f"train.lr={LR}"]  # fmt: skip
    return load_config(REPO / "configs" / "base.yaml", fixed + overrides)


def prepare_data() -> dict:
    """`mtcli prepare configs/base.yaml` (reused when up to date); returns the manifest."""
    from mtcli.data.prepare import run_prepare

    with repo_cwd():
        return run_prepare(base_config([]))


def manifest() -> dict:
    return json.loads((RUN_DIR / "data" / "manifest.json").read_text())


def load_train():
    from mtcli.data.splits import load_pair

    return load_pair(RUN_DIR / "data", "train", manifest()["dtype"])


def random_batches(src, tgt, seed: int = 1) -> tuple[list, int]:
    """Random-order batches of B sentences, B the largest whose mean padded size fits MAX_TOKENS."""
    import numpy as np

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(src))
    longest = np.maximum(src.lengths, tgt.lengths)[order] + 1
    best = 1
    for size in range(8, 1024, 4):
        n = len(order) // size * size
        widths = longest[:n].reshape(-1, size).max(1)
        if widths.mean() * size > MAX_TOKENS:
            break
        best = size
    return [order[i : i + best] for i in range(0, len(order), best)], best


def collated(src, tgt, index_batches) -> list[dict]:
    from mtcli.data.batching import collate
    from mtcli.data.manifest import SPECIAL

    return [collate(src, tgt, idx, SPECIAL) for idx in index_batches]
