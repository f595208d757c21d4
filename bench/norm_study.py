"""The residual/normalization study of docs/NORMS.md, reproducible in one command.

    python bench/norm_study.py gradients      # 1. per-layer gradient norms at init, 6+6 and 12+12
    python bench/norm_study.py warmup         # 2. post/pre/deepnorm with and without warmup
    python bench/norm_study.py depth          # 3. a narrow deep model; post vs pre vs deepnorm vs no residual
    python bench/norm_study.py rmsnorm        # 4. LayerNorm vs RMSNorm throughput and quality
    python bench/norm_study.py report         # tables + figures from the recorded JSON

Each experiment trains with `mtcli train` on Multi30k en-de (configs/base.yaml, 2048-token batches,
runs two at a time with one thread each) under the same
wall-clock budget per run (`--minutes`), writes raw results as JSON under bench/results/norms/,
and the figures are drawn from those JSON files only. Runs go to runs/norms/<name>.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from common import REPO

from mtcli.analysis.plot import plot_rows, read_metrics
from mtcli.files import write_text

RESULTS = REPO / "bench" / "results" / "norms"
FIGURES = REPO / "docs" / "figures"
BASE = REPO / "configs" / "base.yaml"
MTCLI = [sys.executable, "-m", "mtcli"]
# Two runs at a time with one thread each: on 2 cores this avoids the thread stalls of one
# 2-thread process sharing its cores, and every run of an experiment gets the same resources.
PARALLEL, THREADS, MAX_TOKENS = 2, 1, 2048


def train_all(jobs: list[tuple[str, list[str]]], minutes: float, name: str) -> list[dict]:
    """Run (name, sets) jobs PARALLEL at a time under the same budget; save results as they end."""
    with ThreadPoolExecutor(PARALLEL) as pool:
        results = list(pool.map(lambda job: train(job[0], minutes, job[1]), jobs))
    save(name, results)
    return results


def train(name: str, minutes: float, sets: list[str]) -> dict:
    """Train one run from scratch under a time budget; return its final metrics."""
    run = REPO / "runs" / "norms" / name
    cmd = MTCLI + ["train", str(BASE), "--restart", "--set", f"run_dir={run}", "--set", f"train.max_time={minutes}m",
                   "--set", "train.eval_every=100", "--set", "train.save_every=100000", "--set", "train.log_every=25",
                   "--set", "train.eval_max_sentences=300", "--set", "train.average_last=1",
                   "--set", f"train.threads={THREADS}", "--set", f"train.max_tokens={MAX_TOKENS}"]  # fmt: skip
    for s in sets:
        cmd += ["--set", s]
    began = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    rows = read_metrics(run)
    train_rows = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "valid_loss" in r]
    return {
        "name": name, "sets": sets, "minutes": minutes, "exit": proc.returncode, "wall_s": round(time.time() - began, 1),
        "steps": max((r["step"] for r in rows), default=0),
        "final_loss": train_rows[-1]["loss"] if train_rows else None,
        "best_valid_bleu": max((r.get("valid_bleu", 0) for r in evals), default=None),
        "final_valid_loss": evals[-1]["valid_loss"] if evals else None,
        "tokens_per_s": _median([r["tokens_per_s"] for r in train_rows[1:]]),
        "diverged": proc.returncode != 0 and "not finite" in proc.stderr,
        "stderr_tail": proc.stderr[-400:], "run_dir": str(run.relative_to(REPO)),
        "curve": rows,  # every metrics.jsonl row: the figures are drawn from this JSON alone
    }  # fmt: skip


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else None


def save(name: str, data) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_text(RESULTS / f"{name}.json", json.dumps(data, indent=2))
    print(json.dumps(data, indent=2)[:3000])


def exp_gradients(args) -> None:
    out = RESULTS / "gradients.json"
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = MTCLI + ["gradients", str(BASE), "--norm", "post,pre,deepnorm", "--layers", "6,12", "--batches", "4",
                   "--json", str(out), "--set", "model.dropout=0.1"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, check=True)


def exp_warmup(args) -> None:
    # A constant learning rate after warmup, so that "no warmup" differs from "warmup" only in the
    # first steps (inverse-sqrt decay from step 1 would also lower every later learning rate).
    jobs = [(f"warmup-{norm}-w{warmup}", [f"model.norm={norm}", f"train.warmup_steps={warmup}", f"train.lr={args.lr}",
                                          "train.schedule=constant"])
            for norm in ("post", "pre", "deepnorm") for warmup in (args.warmup, 0)]  # fmt: skip
    train_all(jobs, args.minutes, "warmup")


def exp_depth(args) -> None:
    narrow = ["model.d_model=128", "model.n_heads=4", "model.d_ff=512", f"model.encoder_layers={args.layers}",
              f"model.decoder_layers={args.layers}", f"train.warmup_steps={args.warmup}", f"train.lr={args.lr}"]  # fmt: skip
    variants = [("post", []), ("pre", []), ("deepnorm", []), ("pre-noresidual", ["model.residual=false"])]
    jobs = [(f"depth{args.layers}-{name}", [*narrow, f"model.norm={name.split('-')[0]}", *extra])
            for name, extra in variants]  # fmt: skip
    train_all(jobs, args.minutes, f"depth{args.layers}")


def exp_rmsnorm(args) -> None:
    jobs = [(f"normtype-{t}", [f"model.norm_type={t}", f"train.warmup_steps={args.warmup}", f"train.lr={args.lr}"])
            for t in ("layernorm", "rmsnorm")]  # fmt: skip
    train_all(jobs, args.minutes, "rmsnorm")


def report(args) -> None:
    """Draw figures and print tables from the JSON results."""
    import matplotlib

    matplotlib.use("Agg")
    FIGURES.mkdir(parents=True, exist_ok=True)
    grads = RESULTS / "gradients.json"
    if grads.exists():
        from mtcli.analysis.gradients import plot_gradients

        plot_gradients(json.loads(grads.read_text()), FIGURES / "norm-gradients.png")
    for name in ("warmup", f"depth{args.layers}", "rmsnorm"):
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        runs = json.loads(path.read_text())
        if any("curve" not in r for r in runs):  # results recorded before curves were kept
            for r in runs:
                r.setdefault("curve", read_metrics(REPO / r["run_dir"]))
            write_text(path, json.dumps(runs, indent=2))
        plot_rows([(r["name"], r["curve"]) for r in runs], FIGURES / f"norm-{name}.png")
        print(f"\n{name}\n\n" + table(runs))


def table(runs: list[dict]) -> str:
    """A markdown table of an experiment's runs."""
    lines = ["| run | steps | final train loss | last valid loss | best valid BLEU | tokens/s | exit |",
             "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in runs:
        last_eval = [row for row in r["curve"] if "valid_loss" in row]
        valid_loss = f"{last_eval[-1]['valid_loss']:.3f}" if last_eval else "-"
        loss = f"{r['final_loss']:.3f}" if r["final_loss"] is not None else "-"
        exit_note = "diverged" if r["diverged"] else r["exit"]
        lines.append(f"| {r['name']} | {r['steps']} | {loss} | {valid_loss} | {r['best_valid_bleu']} "
                     f"| {r['tokens_per_s'] or 0:.0f} | {exit_note} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=["gradients", "warmup", "depth", "rmsnorm", "report"])
    parser.add_argument("--minutes", type=float, default=6.0, help="wall-clock training budget per run")
    parser.add_argument("--layers", type=int, default=12, help="depth of the narrow model (depth experiment)")
    parser.add_argument("--warmup", type=int, default=60, help="warmup steps of the runs that warm up")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    args = parser.parse_args()
    {"gradients": exp_gradients, "warmup": exp_warmup, "depth": exp_depth, "rmsnorm": exp_rmsnorm,
     "report": report}[args.experiment](args)  # fmt: skip


if __name__ == "__main__":
    main()
