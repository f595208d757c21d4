"""Domain adaptation, measured: the Tatoeba demo model fine-tuned on Multi30k en->fr vs training
from scratch with the shipped Multi30k config, each for 10 and then 30 minutes (one run resumed).

    python bench/finetune_bench.py [--init runs/demo/model] [--budgets 10,30] [--out FILE]

Every run goes through the `mtcli` command line, one at a time. Scores are sacreBLEU on
Multi30k test2016 (beam search with each bundle's decode settings) and, for the initial and the
fine-tuned models, on the Tatoeba test split of the initial run (what adaptation costs on the old
domain). A run already at a budget is not trained again, so the script can be rerun after a stop.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, machine

from mtcli.files import write_text

DATA = REPO.parent / "shared" / "data"
FINETUNE = REPO / "configs" / "finetune-demo-to-multi30k-en-fr.yaml"
SCRATCH = REPO / "configs" / "multi30k-en-fr.yaml"


def mtcli(*args: str) -> subprocess.CompletedProcess:
    """Run `mtcli ARGS` from the repository; stop the bench on failure."""
    cmd = [sys.executable, "-m", "mtcli", *args]
    print("$ mtcli " + " ".join(args), flush=True)
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): {' '.join(args)}\n{done.stderr[-2000:]}")
    return done


def plain(path: Path, work: Path) -> Path:
    """A gzipped corpus file as plain text (for `score --src`)."""
    out = work / path.name.removesuffix(".gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        write_text(out, f.read())
    return out


def bleu(bundle: Path, src: Path, ref: Path) -> dict:
    """BLEU and chrF of a bundle's translations of `src` against `ref`."""
    out = mtcli("score", "--model", str(bundle), "--src", str(src), str(ref), "--json")
    scores = json.loads(out.stdout)["scores"]
    return {k: round(scores[k]["score"], 2) for k in ("bleu", "chrf")}


def train(config: Path, run_dir: Path, minutes: int, extra: list[str]) -> dict:
    """Train (or resume) `config` up to `minutes` of training time; its step count and wall time."""
    began = time.time()
    mtcli("train", str(config), "--set", f"run_dir={run_dir}", "--set", f"train.max_time={minutes}m", *extra)
    state = json.loads((run_dir / "model" / "metadata.json").read_text())
    return {"minutes": minutes, "step": state["step"], "wall_s": round(time.time() - began)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", type=Path, default=REPO / "runs" / "demo" / "model")
    p.add_argument("--budgets", default="10,30")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "finetune.json")
    args = p.parse_args()
    work = REPO / "runs" / "finetune-bench"
    work.mkdir(parents=True, exist_ok=True)
    m30k = (plain(DATA / "multi30k" / "test_2016_flickr.en.gz", work),
            plain(DATA / "multi30k" / "test_2016_flickr.fr.gz", work))  # fmt: skip
    init_data = args.init.parent / "data"
    tatoeba = (init_data / "test.src.txt", init_data / "test.tgt.txt")
    result = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "init": str(args.init), "initial": {"multi30k": bleu(args.init, *m30k), "tatoeba": bleu(args.init, *tatoeba)},
              "finetune": [], "scratch": []}  # fmt: skip
    print(json.dumps(result["initial"]), flush=True)
    for minutes in (int(b) for b in args.budgets.split(",")):
        ft = train(FINETUNE, work / "finetune", minutes, ["--set", f"train.init_from={args.init}"])
        ft.update(multi30k=bleu(work / "finetune" / "model", *m30k), tatoeba=bleu(work / "finetune" / "model", *tatoeba))
        result["finetune"].append(ft)
        scratch = train(SCRATCH, work / "scratch", minutes, [])
        scratch["multi30k"] = bleu(work / "scratch" / "model", *m30k)
        result["scratch"].append(scratch)
        print(json.dumps({"finetune": ft, "scratch": scratch}), flush=True)
        write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
