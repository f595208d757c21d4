"""fairseq's translation quality at equal wall-clock training budgets, beside mtcli's (added 2026-11-24, d2eb72b).

    bash bench/setup_fairseq.sh                                           # once: fairseq's own venv
    python bench/fairseq_quality.py train runs/multi30k-en-de --minutes 120
    python bench/fairseq_quality.py evaluate runs/multi30k-en-de --budgets 30,60,120 --average 2

`train` runs fairseq-train on the mtcli run's own prepared data (the same SentencePiece pieces of
RUN/data, binarized by fairseq-preprocess with the same 8k joint vocabulary) with the run's model
and optimizer settings read from RUN/config.yaml: same size, pre-LN, tied embeddings, dropout,
label smoothing, Adam (0.9, 0.98, eps 1e-9), lr, warmup and inverse-sqrt decay, token budget,
clipping, seed; fp32 on 2 threads, no validation during training. It stops after --minutes of
fairseq's own training time (`--stop-time-hours`) and keeps a checkpoint every --save-every updates.

`evaluate` does for fairseq what bench/quality_budgets.py does for mtcli: for each budget B it
averages the last --average checkpoints whose training time (fairseq's `previous_training_time`)
is within B, translates the run's valid and test sources with fairseq-generate (beam 5, the
length penalty chosen on valid among --lenpens), detokenizes (`--post-process sentencepiece`) and
scores with `mtcli score` against the same references. Results: bench/results/quality/<run>-fairseq.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from common import REPO, last_within
from fairseq_peer import FAIRSEQ_VENV, fairseq_bin, fairseq_data
from quality_budgets import choose_lenpen, score_file, write_json

sys.path.insert(0, str(REPO))

THREADS = 2
# fairseq 0.12 loads its own checkpoints with torch.load's default, which torch >= 2.6 made
# weights_only=True; these are checkpoints this script wrote, so full unpickling is safe here.
ENV = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1",
       "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # fmt: skip

# Run inside fairseq's venv (its checkpoints pickle omegaconf configs, which mtcli's venv lacks).
# They load with weights_only=True, allowing only the omegaconf and numpy classes a fairseq
# checkpoint holds: a crafted checkpoint cannot run code here; an unexpected class is an error.
SAFE_LOAD = """
import collections, typing, numpy, torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode
numpy_core = getattr(numpy, "_core", None) or numpy.core  # numpy 2 renamed it
torch.serialization.add_safe_globals([DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any,
                                      dict, list, int, collections.defaultdict, numpy.dtype,
                                      numpy_core.multiarray.scalar])
def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)
"""
CKPT_INFO = SAFE_LOAD + """
import json, sys
for path in sys.argv[1:]:
    state = load(path)
    print(json.dumps({"path": path, "training_s": state["extra_state"]["previous_training_time"],
                      "updates": state["optimizer_history"][-1]["num_updates"]}))
"""
AVERAGE = SAFE_LOAD + """
import sys
paths, out = sys.argv[1:-1], sys.argv[-1]
states = [load(p) for p in paths]
avg = {k: sum(s["model"][k].double() for s in states).div(len(states)).to(v.dtype)
       for k, v in states[-1]["model"].items()}
result = states[-1]
result["model"] = avg
result["last_optimizer_state"] = None
torch.save(result, out)
"""


def load_run(run_dir: Path):
    from mtcli.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    return cfg, manifest["src_lang"], manifest["tgt_lang"]


def train_command(run_dir: Path, minutes: float, save_every: int) -> list[str]:
    cfg, src, tgt = load_run(run_dir)
    m, t = cfg.model, cfg.train
    if m.norm not in ("pre", "post") or m.norm_type != "layernorm" or not m.tie_embeddings:
        raise SystemExit("fairseq comparison needs norm pre/post, norm_type layernorm and tied embeddings")
    if t.schedule != "inverse_sqrt" or t.optimizer != "adam" or t.update_freq != 1:
        raise SystemExit("fairseq comparison needs train.schedule inverse_sqrt, optimizer adam, update_freq 1")
    size = ["--encoder-embed-dim", str(m.d_model), "--encoder-ffn-embed-dim", str(m.d_ff),
            "--encoder-attention-heads", str(m.n_heads), "--encoder-layers", str(m.encoder_layers),
            "--decoder-embed-dim", str(m.d_model), "--decoder-ffn-embed-dim", str(m.d_ff),
            "--decoder-attention-heads", str(m.n_heads), "--decoder-layers", str(m.decoder_layers)]  # fmt: skip
    pre = ["--encoder-normalize-before", "--decoder-normalize-before"] if m.norm == "pre" else []
    save_dir = run_dir / "fairseq" / "checkpoints"
    return [
        fairseq_bin("fairseq-train"), str(fairseq_data(run_dir, ("train", "valid", "test"))), "--cpu",
        "--task", "translation", "-s", src, "-t", tgt, "--arch", "transformer", *size, *pre,
        "--share-all-embeddings", "--activation-fn", m.activation,
        "--dropout", str(m.dropout), "--activation-dropout", str(m.dropout),
        "--attention-dropout", str(m.attention_dropout),
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(t.label_smoothing),
        "--optimizer", "adam", "--adam-betas", str(tuple(t.betas)), "--adam-eps", "1e-9",
        "--weight-decay", str(t.weight_decay), "--clip-norm", str(t.clip_norm),
        "--lr", str(t.lr), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", str(t.warmup_steps),
        "--max-tokens", str(t.max_tokens), "--seed", str(t.seed), "--num-workers", "0",
        "--stop-time-hours", str(minutes / 60), "--disable-validation",
        "--save-dir", str(save_dir), "--save-interval-updates", str(save_every),
        "--keep-interval-updates", "-1", "--no-epoch-checkpoints",
        "--log-format", "json", "--log-interval", "50",
    ]  # fmt: skip


def train(args) -> None:
    cmd = train_command(args.run_dir, args.minutes, args.save_every)
    save_dir = args.run_dir / "fairseq" / "checkpoints"
    if any(save_dir.glob("*.pt")):
        if not args.restart:  # fairseq-train would silently resume from checkpoint_last.pt
            raise SystemExit(f"{save_dir} holds checkpoints: pass --restart to delete them and train anew")
        for old in save_dir.glob("*.pt"):
            old.unlink()
    log = args.run_dir / "fairseq" / "train.log"
    (args.run_dir / "fairseq" / "command.txt").write_text(shlex.join(cmd) + "\n")
    print(shlex.join(cmd), flush=True)
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=REPO, env=ENV, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"fairseq-train failed (exit {code}); see {log}")
    print(f"done; log in {log}")


def fairseq_python(script: str, *argv: str) -> str:
    out = subprocess.run([str(FAIRSEQ_VENV / "bin" / "python"), "-c", script, *argv], capture_output=True,
                         text=True, env=ENV)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"fairseq venv python failed: {out.stderr.strip().splitlines()[-1:]}")
    return out.stdout


def tokens_seen(log: Path) -> dict[int, int]:
    """Target tokens seen by update count, from fairseq's json train_inner lines (wpb x updates)."""
    seen, total, last = {}, 0.0, 0
    for line in log.read_text().splitlines():
        if "| train_inner |" in line:
            row = json.loads(line[line.index("{") :])
            updates = int(row["num_updates"])
            total += float(row["wpb"]) * (updates - last)
            last = updates
            seen[updates] = round(total)
    return seen


def generate(bin_dir: Path, ckpt: Path, split: str, lenpen: float, args, log: list[str]) -> tuple[list[str], dict]:
    """Detokenized translations of `split` in input order, and fairseq's own timing of the search."""
    src, tgt = args.langs
    cmd = [fairseq_bin("fairseq-generate"), str(bin_dir), "--cpu", "--task", "translation", "-s", src, "-t", tgt,
           "--path", str(ckpt), "--gen-subset", split, "--beam", "5", "--lenpen", str(lenpen),
           "--batch-size", "64", "--post-process", "sentencepiece", "--nbest", "1", "--max-len-b", str(args.max_len_b),
           # fairseq 0.12.3 silently left out the last len % 8 sentences with the default multiple of 8
           "--required-batch-size-multiple", "1"]  # fmt: skip
    log.append(shlex.join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV)
    if out.returncode != 0:
        raise SystemExit(f"fairseq-generate failed: {out.stderr.strip().splitlines()[-3:]}")
    hyps = {}
    for line in out.stdout.splitlines():
        if line.startswith("D-"):
            tag, _score, *text = line.split("\t")
            hyps[int(tag[2:])] = text[0] if text else ""
    found = re.search(r"Translated [\d,]+ sentences .* in ([\d.]+)s \(([\d.]+) sentences/s", out.stderr)
    speed = {"generate_s": float(found.group(1)), "sentences_per_s": float(found.group(2))} if found else {}
    expected = sum(1 for _ in (args.run_dir / "data" / f"{split}.src.txt").open(encoding="utf-8"))
    if sorted(hyps) != list(range(expected)):
        raise SystemExit(f"fairseq-generate translated {len(hyps)} of the {expected} {split} sentences")
    return [hyps[i] for i in range(expected)], speed


def translate_and_score(bin_dir: Path, ckpt: Path, work: Path, args, log: list[str], split: str, lenpen: float):
    hyps, speed = generate(bin_dir, ckpt, split, lenpen, args, log)
    hyp = work / f"{split}-lp{lenpen:g}.hyp"
    hyp.write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    return {**score_file(hyp, args.run_dir / "data" / f"{split}.tgt.txt", log), **speed}


def evaluate(args) -> None:
    run_dir = args.run_dir
    fs = run_dir / "fairseq"
    bin_dir = fairseq_data(run_dir, ("train", "valid", "test"))
    # every --save-every updates, and checkpoint_last.pt where the time limit stopped training
    paths = sorted((fs / "checkpoints").glob("checkpoint_*.pt"))
    if not paths:
        raise SystemExit(f"{fs / 'checkpoints'}: no checkpoints; run `train` first")
    info = {}
    for line in fairseq_python(CKPT_INFO, *map(str, paths)).splitlines():
        row = json.loads(line)
        info.setdefault(row["updates"], row)  # checkpoint_last.pt may repeat an interval checkpoint
    info = sorted(info.values(), key=lambda r: r["updates"])
    seen = tokens_seen(fs / "train.log")
    results = []
    for minutes in (float(b) for b in args.budgets.split(",")):
        chosen = last_within(info, lambda i: i["training_s"], minutes, args.average)
        if not chosen:
            print(f"{minutes:g} min: no checkpoint yet", flush=True)
            continue
        work = fs / "budgets" / f"{minutes:g}m"
        work.mkdir(parents=True, exist_ok=True)
        avg = work / "average.pt"
        fairseq_python(AVERAGE, *(c["path"] for c in chosen), str(avg))
        updates = chosen[-1]["updates"]
        log: list[str] = []
        chosen_lp = choose_lenpen(partial(translate_and_score, bin_dir, avg, work, args, log), args.lenpens)
        near = max((u for u in seen if u <= updates), default=None)
        row = {"budget_min": minutes, "updates": updates, "training_s": round(chosen[-1]["training_s"], 1),
               "tokens_approx": seen.get(near), "averaged": [Path(c["path"]).name for c in chosen],
               **chosen_lp, "commands": log}  # fmt: skip
        results.append(row)
        print(f"{minutes:5g} min  update {updates:6d}  {row['training_s'] / 60:6.1f} min  lenpen {row['lenpen']:g}  "
              f"valid BLEU {row['valid']['bleu']:5.2f}  test BLEU {row['test']['bleu']:5.2f}  "
              f"chrF {row['test']['chrf']:5.2f}",
              flush=True)  # fmt: skip
    out = args.out or REPO / "bench" / "results" / "quality" / f"{run_dir.name}-fairseq.json"
    version = fairseq_python("import fairseq, torch; print(fairseq.__version__, torch.__version__)").split()
    doc = {"run": os.path.relpath(run_dir, REPO), "fairseq": version[0], "torch": version[-1],
           "train_command": (fs / "command.txt").read_text().strip() if (fs / "command.txt").exists() else None,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
           "budgets": results}  # fmt: skip
    write_json(out, doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="fairseq-train for --minutes on the run's prepared data")
    tr.add_argument("run_dir", type=Path)
    tr.add_argument("--minutes", type=float, default=120.0)
    tr.add_argument("--save-every", type=int, default=250, help="updates between checkpoints")
    tr.add_argument("--restart", action="store_true", help="delete earlier fairseq checkpoints of this run")
    ev = sub.add_parser("evaluate", help="BLEU/chrF of averaged checkpoints at each budget")
    ev.add_argument("run_dir", type=Path)
    ev.add_argument("--budgets", default="30,60,120", help="minutes of training time, comma-separated")
    ev.add_argument("--average", type=int, default=2, help="checkpoints averaged per budget")
    ev.add_argument("--lenpens", type=lambda v: [float(x) for x in v.split(",")], default=[1.0],
                    help="fairseq length penalties tried on valid (the best is used for test)")
    ev.add_argument("--max-len-b", type=int, default=200, help="fairseq-generate's (smoke tests: small)")
    ev.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    args.run_dir = args.run_dir.resolve()
    args.langs = load_run(args.run_dir)[1:]
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
