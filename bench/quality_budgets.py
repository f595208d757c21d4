"""Translation quality at equal wall-clock training budgets, from one training run (added 2026-11-24, 397c090).

Train once with every checkpoint kept (`train.keep_last` large enough, or hard links taken while it
trains, as in docs/BENCHMARKS.md). For each budget B (minutes of training time as the trainer counts
it, evaluation excluded) this script averages the last `--average` checkpoints saved within B,
translates the run's valid and test sources with the config's decode settings (or, with
`--lenpens`, each length penalty on valid and the best of them on test) through
`mtcli translate`, and scores them with `mtcli score` (sacreBLEU BLEU and chrF, default settings).
With an inverse-sqrt or constant schedule nothing in training depends on the total budget, so the
checkpoint at 30 minutes of a 2-hour run is the one a 30-minute run (same seed) would have written;
other schedules are refused.

    python bench/quality_budgets.py runs/multi30k-en-de --checkpoints runs/multi30k-en-de/snap \\
        --budgets 30,60,120 --average 2

Writes bench/results/quality/<run name>.json (budget, step, training seconds, target tokens, the
exact commands, BLEU/chrF with signatures) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from common import REPO, last_within

from mtcli.files import write_text

sys.path.insert(0, str(REPO))


def checkpoints_with_time(ckpt_dir: Path) -> list[tuple[Path, dict]]:
    """(path, trainer state) of every step_*.pt, by step."""
    import torch

    out = []
    for path in sorted(ckpt_dir.glob("step_*.pt")):
        # mmap: only the small trainer state is read, not the ~90 MB of weights and optimizer moments
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)["state"]
        out.append((path, {k: state[k] for k in ("step", "elapsed", "tokens", "epoch")}))
    return out


def run(cmd: list[str], log: list[str]) -> str:
    log.append(shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def score_file(hyp: Path, ref: Path, log: list[str]) -> dict:
    """sacreBLEU BLEU and chrF (default settings) of a detokenized hypothesis file, via `mtcli score`."""
    cmd = [sys.executable, "-m", "mtcli", "score", str(hyp), str(ref), "--json"]
    scores = json.loads(run(cmd, log))["scores"]
    return {"bleu": round(scores["bleu"]["score"], 2), "chrf": round(scores["chrf"]["score"], 2),
            "bleu_signature": scores["bleu"]["signature"], "chrf_signature": scores["chrf"]["signature"]}  # fmt: skip


def write_json(out: Path, doc: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


def choose_lenpen(evaluate_split, lenpens: list[float]) -> dict:
    """Length penalty chosen on valid: `evaluate_split(split=, lenpen=)` runs each on valid, the best on test."""
    tried = {lp: evaluate_split(split="valid", lenpen=lp) for lp in lenpens}
    best = max(tried, key=lambda lp: tried[lp]["bleu"])
    return {"valid_by_lenpen": {f"{lp:g}": r for lp, r in tried.items()}, "lenpen": best,
            "valid": tried[best], "test": evaluate_split(split="test", lenpen=best)}  # fmt: skip


def evaluate(bundle: Path, data: Path, split: str, work: Path, log: list[str], lenpen: float | None = None) -> dict:
    hyp = work / (f"{split}.hyp" if lenpen is None else f"{split}-lp{lenpen:g}.hyp")
    started = time.time()
    lp = [] if lenpen is None else ["--set", f"decode.length_penalty={lenpen}"]
    run([sys.executable, "-m", "mtcli", "translate", "-m", str(bundle), "-i", str(data / f"{split}.src.txt"),
         "-o", str(hyp), *lp], log)  # fmt: skip
    seconds = time.time() - started
    return {**score_file(hyp, data / f"{split}.tgt.txt", log), "translate_s": round(seconds, 1)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--checkpoints", type=Path, help="folder of step_*.pt (default RUN/checkpoints)")
    ap.add_argument("--budgets", default="30,60,120", help="minutes of training time, comma-separated")
    ap.add_argument("--average", type=int, default=2, help="checkpoints averaged per budget")
    ap.add_argument("--lenpens", type=lambda v: [float(x) for x in v.split(",")], default=None,
                    help="length penalties tried on valid (the best is used for test); default: the config's")
    ap.add_argument("--out", type=Path, help="result JSON (default bench/results/quality/<run>.json)")
    return ap.parse_args(argv)


def check_schedule(cfg, budgets: list[float]) -> None:
    """Refuse a schedule whose learning rate depends on the run's length, unless only asked for
    the run's own time budget."""
    own = cfg.train.max_time if not cfg.train.max_steps else None
    if cfg.train.schedule not in ("inverse_sqrt", "constant") and (not own or min(budgets) * 60 < own):
        # A decay to zero at the run's own end: an earlier checkpoint is not what a shorter budget gives.
        raise SystemExit(f"train.schedule={cfg.train.schedule} depends on the run's length: run each budget"
                         + (f" (this run answers only --budgets {own / 60:g})" if own else ""))


def budget_row(run_dir: Path, ckpts: list[tuple[Path, dict]], minutes: float, args) -> dict | None:
    """Average, translate and score the last checkpoints within `minutes`; None if there is none."""
    from mtcli.training.checkpoints import average_checkpoints

    chosen = last_within(ckpts, lambda c: c[1]["elapsed"], minutes, args.average)
    if not chosen:
        print(f"{minutes:g} min: no checkpoint saved yet", flush=True)
        return None
    work = run_dir / "budgets" / f"{minutes:g}m"
    log: list[str] = []
    bundle = work / "model"
    average_checkpoints([p for p, _ in chosen], run_dir / "data", bundle)
    row = {"budget_min": minutes, **chosen[-1][1], "averaged": [p.name for p, _ in chosen]}
    if args.lenpens:
        row.update(choose_lenpen(partial(evaluate, bundle, run_dir / "data", work=work, log=log), args.lenpens))
    else:  # the bundle's own decode settings
        for split in ("valid", "test"):
            row[split] = evaluate(bundle, run_dir / "data", split, work, log)
    row["commands"] = log
    print(f"{minutes:5g} min  step {row['step']:6d}  {row['elapsed'] / 60:6.1f} min  "
          f"{row['tokens']:12,d} tgt tokens  lp {row.get('lenpen', 'config')}  valid BLEU {row['valid']['bleu']:5.2f}  "
          f"test BLEU {row['test']['bleu']:5.2f}  chrF {row['test']['chrf']:5.2f}", flush=True)  # fmt: skip
    return row


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)

    from mtcli.config import config_from_dict
    from mtcli.training.checkpoints import load_checkpoint

    run_dir = args.run_dir.resolve()
    ckpts = checkpoints_with_time(args.checkpoints or run_dir / "checkpoints")
    if not ckpts:
        raise SystemExit(f"{args.checkpoints or run_dir / 'checkpoints'}: no step_*.pt checkpoints")
    cfg = config_from_dict(load_checkpoint(ckpts[-1][0])["config"], str(ckpts[-1][0]))
    budgets = [float(b) for b in args.budgets.split(",")]
    check_schedule(cfg, budgets)
    results = [row for minutes in budgets if (row := budget_row(run_dir, ckpts, minutes, args)) is not None]
    out = args.out or REPO / "bench" / "results" / "quality" / f"{run_dir.name}.json"
    doc = {"run": str(os.path.relpath(run_dir, REPO)), "config": cfg.model_dump(mode="json"),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
           "budgets": results}  # fmt: skip
    write_json(out, doc)


if __name__ == "__main__":
    main()
