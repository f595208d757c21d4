"""Training throughput of mtcli against fairseq, Hugging Face Marian and a textbook loop (added 2026-11-24, 78877ba).

    .venv/bin/python bench/train_bench.py                 # all systems -> bench/results/train_speed.json
    .venv/bin/python bench/train_bench.py --profile 4     # torch.profiler table of mtcli's step
    .venv/bin/python bench/train_bench.py --systems mtcli-baseline,mtcli --baseline DIR   # DIR/mtcli vs this

Every system trains the base size (d_model 256, 4 heads, FFN 1024, 3+3 layers, joint 8k
SentencePiece vocabulary of `configs/base.yaml`, dropout 0.1, label smoothing 0.1, Adam, clip 1.0)
in fp32 on 2 threads, on the Multi30k en-de training pairs prepared by `mtcli prepare
configs/base.yaml` (runs/base/data), with a 4,000-token budget (count x longest side incl. EOS):

- mtcli: `Trainer.update`, the code `mtcli train` runs per update (batching.py batches, collate,
  forward, label-smoothed loss, backward, clipping, fused Adam); also with `train.compile: true`.
- fairseq: `fairseq-train --cpu --max-tokens 4000` in its own virtualenv (bench/.venvs/fairseq),
  on data binarized by fairseq-preprocess from the same SentencePiece pieces.
- hf: `MarianMTModel` of the same size in a plain loop (torch.optim.Adam), on mtcli's batches.
- reference: nn.Embedding + nn.Transformer + nn.Linear (tied) in a plain loop, on random-order
  batches of a fixed sentence count padded to the batch maximum.
- mtcli-baseline (only when asked): mtcli's step imported from another tree (--baseline DIR).

fairseq's virtualenv comes from bench/setup_fairseq.sh; transformers from the `bench` extra.

Each system runs in its own child process (peak RSS from os.wait4). After warm-up windows, it
runs timed windows of --window-steps updates; a window during which other processes kept more
than 0.3 core busy (machine-wide /proc/stat minus the system's own CPU time) is set aside, and the
median non-padding target tokens/s of the kept windows is reported. MFU is 6 x P x tokens/s over
the fp32 2048x2048 matmul rate measured in the same run, P = mtcli's parameter count.

The settings, data and timed windows live in bench/train_setup.py, the in-process systems in
bench/train_systems.py, fairseq in bench/fairseq_peer.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from common import PAD, REPO, THREADS, VOCAB, machine, wait_for_quiet
from fairseq_peer import FAIRSEQ_VENV, run_fairseq
from train_setup import (
    CLIP,
    DROPOUT,
    LR,
    MAX_TOKENS,
    OTHER_MAX,
    SMOOTHING,
    base_config,
    manifest,
    matmul_gflops,
    prepare_data,
)
from train_systems import run_worker

from mtcli.files import write_text

SYSTEMS = ("mtcli", "fairseq", "hf", "reference", "mtcli-compile")
EXTRA = ("mtcli-baseline",)  # mtcli imported from --baseline DIR (e.g. an older checkout's tree)
QUIET_LIMIT_S, QUIET_THRESHOLD = 120.0, 0.3  # before each system: at most 2 min, under 0.3 core


# ----------------------------------------------------------------------------- children


def spawn_worker(name: str, args) -> dict:
    """Run one system in a child; adds its wall time and peak RSS."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = Path(f.name)
    cmd = [sys.executable, __file__, "--worker", name, "--result", str(out), *window_args(args)]
    env = dict(os.environ)
    if name == "mtcli-baseline":
        env["PYTHONPATH"] = str(args.baseline)  # its mtcli package shadows the checkout's
    start = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=REPO, env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{name} worker failed (exit {child.returncode})")
    result = json.loads(out.read_text())
    out.unlink()
    result.update(wall_s=round(time.perf_counter() - start, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1))
    return result


def window_args(args) -> list[str]:
    return ["--warmup", str(args.warmup), "--windows", str(args.windows), "--extra", str(args.extra),
            "--window-steps", str(args.window_steps)]  # fmt: skip


# ----------------------------------------------------------------------------- profile and results


def profile_mtcli(steps: int) -> None:
    """torch.profiler table (self CPU time) of mtcli's Trainer.update, plus page faults per step."""
    import resource

    from torch.profiler import ProfilerActivity, profile

    from mtcli.data.batching import token_batches
    from mtcli.data.manifest import Manifest
    from mtcli.training.distributed import Dist
    from mtcli.training.trainer import Trainer

    cfg = base_config([])
    trainer = Trainer(cfg, Manifest.from_dict(manifest()), Dist.setup("cpu", THREADS))
    batches = token_batches(trainer.train_src.lengths, trainer.train_tgt.lengths, MAX_TOKENS, 1, 1)
    for b in batches[:3]:
        trainer.update([b])
    faults, t0, tokens = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), 0
    for b in batches[3 : 3 + steps]:
        tokens += trainer.update([b])["ntokens"]
    seconds = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    print(f"unprofiled: {tokens / seconds:.1f} tok/s, {faults / steps:.0f} minor page faults per update")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches[3 + steps : 3 + 2 * steps]:
            trainer.update([b])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))


def versions() -> dict:
    import torch
    import transformers

    fairseq_v = ["missing", ""]
    if (FAIRSEQ_VENV / "bin" / "python").exists():  # bench/setup_fairseq.sh makes it
        out = subprocess.run([str(FAIRSEQ_VENV / "bin" / "python"), "-c",
                              "import fairseq, torch; print(fairseq.__version__, torch.__version__)"],
                             capture_output=True, text=True)  # fmt: skip
        fairseq_v = out.stdout.split() if out.returncode == 0 else fairseq_v
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "fairseq": fairseq_v[0], "fairseq_torch": fairseq_v[-1]}  # fmt: skip


def summarize(systems: dict, gflops: float, params: int) -> dict:
    """Ratios vs fairseq and MFU for every system."""
    base = systems.get("fairseq", {}).get("median_tok_s")
    out = {}
    for name, r in systems.items():
        rate = r["median_tok_s"]
        out[name] = {"tok_s": rate, "vs_fairseq": round(rate / base, 3) if base else None,
                     "mfu": round(6 * params * rate / (gflops * 1e9), 4), "peak_rss_mb": r["peak_rss_mb"]}  # fmt: skip
    return out


def settings(args) -> dict:
    return {"threads": THREADS, "max_tokens": MAX_TOKENS, "dropout": DROPOUT, "label_smoothing": SMOOTHING,
            "lr": LR, "clip_norm": CLIP, "warmup_windows": args.warmup, "windows": args.windows,
            "extra_windows": args.extra, "window_steps": args.window_steps, "other_cores_max": OTHER_MAX}  # fmt: skip


def report(summary: dict, matmul: list, params: int) -> None:
    print(f"\nmatmul fp32 2048x2048 (before, after): {[m['median_gflops'] for m in matmul]} GFLOP/s; "
          f"MFU = 6 x {params:,} x tok/s / matmul rate")  # fmt: skip
    print(f"{'system':<15} {'tok/s':>8} {'vs fairseq':>10} {'MFU':>6} {'peak RSS':>9}")
    for name, s in summary.items():
        ratio = f"{s['vs_fairseq']:.2f}" if s["vs_fairseq"] else "-"
        print(f"{name:<15} {s['tok_s']:8.1f} {ratio:>10} {s['mfu']:6.1%} {s['peak_rss_mb']:7.0f} MB")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma list of {SYSTEMS + EXTRA}")
    ap.add_argument("--baseline", type=Path, help="directory holding another mtcli package (mtcli-baseline)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up windows (compile gets one more)")
    ap.add_argument("--windows", type=int, default=5, help="timed windows to keep")
    ap.add_argument("--extra", type=int, default=3, help="extra windows allowed for set-aside ones")
    ap.add_argument("--window-steps", type=int, default=8, help="updates per window")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "train_speed.json")
    ap.add_argument("--profile", type=int, default=0, metavar="STEPS", help="profile mtcli's step and exit")
    ap.add_argument("--worker", choices=SYSTEMS + EXTRA, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def run_systems(names: list[str], args) -> dict:
    """Each system in turn, once the cores are idle (fairseq-train or a worker child)."""
    systems = {}
    for name in names:
        waited = round(wait_for_quiet(limit=QUIET_LIMIT_S, threshold=QUIET_THRESHOLD), 1)
        print(f"{name} (waited {waited} s for idle cores):", flush=True)
        systems[name] = run_fairseq(args) if name == "fairseq" else spawn_worker(name, args)
        systems[name]["waited_s"] = waited
        print(f"  {name}: {systems[name]['median_tok_s']} tok/s, repeats {systems[name]['repeats']}, "
              f"peak RSS {systems[name]['peak_rss_mb']} MB", flush=True)  # fmt: skip
    return systems


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    import torch

    torch.set_num_threads(THREADS)
    prepare_data()
    if args.profile:
        return profile_mtcli(args.profile)
    names = [s for s in args.systems.split(",") if s]
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    load_before = os.getloadavg()
    matmul = [matmul_gflops()]
    print(f"matmul fp32 2048x2048: {matmul[0]['median_gflops']} GFLOP/s", flush=True)
    systems = run_systems(names, args)
    matmul.append(matmul_gflops())
    gflops = statistics.median(m["median_gflops"] for m in matmul)
    from mtcli.data.manifest import Vocab
    from mtcli.model.transformer import build_model

    vocab = Vocab(VOCAB, VOCAB, joint=True, pad_id=PAD)
    params = sum(p.numel() for p in build_model(base_config([]).model, vocab).parameters())
    summary = summarize(systems, gflops, params)
    report(summary, matmul, params)
    result = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(memory=True), "versions": versions(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "settings": settings(args), "matmul": matmul,
              "matmul_gflops": gflops, "mfu_params": params, "summary": summary, "systems": systems}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return None


if __name__ == "__main__":
    main()
