"""fairseq as a peer, in its own virtualenv (bench/.venvs/fairseq, from bench/setup_fairseq.sh): its
binaries, an mtcli run's own prepared data binarized for it, and train_bench's training-speed run
(fairseq_quality uses the first two).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

from common import D_MODEL, FFN, HEADS, LAYERS, REPO, THREADS, cpu_ticks, machine_cores
from train_setup import (
    CLIP,
    DROPOUT,
    LR,
    MAX_TOKENS,
    RUN_DIR,
    SMOOTHING,
    Windows,
    tree_cpu_seconds,
    window_row,
)

FAIRSEQ_VENV = REPO / "bench" / ".venvs" / "fairseq"


def fairseq_bin(name: str) -> str:
    path = FAIRSEQ_VENV / "bin" / name
    if not path.exists():
        raise SystemExit(f"{path} missing: build the fairseq virtualenv (see docs/BENCHMARKS.md)")
    return str(path)


def fairseq_data(run_dir: Path = RUN_DIR, splits: tuple[str, ...] = ("train", "valid")) -> Path:
    """fairseq-preprocess of an mtcli run's own split ids, written back as SentencePiece pieces.

    The dictionary lists the pieces in SentencePiece order after fairseq's four specials, so the
    piece with SentencePiece id i >= 4 has fairseq id i too, and the vocabulary stays the same.
    Written once to RUN/fairseq/bin (the run's joint vocabulary is required).
    """
    import sentencepiece as spm

    from mtcli.data.splits import load_pair

    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    src, tgt = manifest["src_lang"], manifest["tgt_lang"]
    if not manifest["vocab"]["joint"]:
        raise SystemExit(f"{run_dir}: fairseq comparison needs a joint vocabulary (tokenizer.joint: true)")
    work = run_dir / "fairseq"
    dest = work / "bin"
    if all((dest / f"{split}.{src}-{tgt}.{tgt}.bin").exists() for split in splits):
        return dest
    work.mkdir(parents=True, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=str(run_dir / "data" / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    (work / "dict.txt").write_text("".join(f"{p} 1\n" for p in pieces[4:]), encoding="utf-8")
    for split in splits:
        for side, lang in zip(load_pair(run_dir / "data", split, manifest["dtype"]), (src, tgt)):
            lines = (" ".join(pieces[t] for t in side[i]) + "\n" for i in range(len(side)))
            (work / f"{split}.{lang}").write_text("".join(lines), encoding="utf-8")
    prefixes = [arg for split in splits for arg in (f"--{split}pref", str(work / split))]
    subprocess.run([fairseq_bin("fairseq-preprocess"), "--source-lang", src, "--target-lang", tgt, *prefixes,
                    "--destdir", str(dest), "--srcdict", str(work / "dict.txt"),
                    "--joined-dictionary", "--workers", "1"], check=True, cwd=work)  # fmt: skip
    return dest


def fairseq_command(data: Path, args, updates: int) -> list[str]:
    """fairseq-train at the base size, pre-LN, with mtcli's optimizer settings; no validation/saving."""
    size = ["--encoder-embed-dim", str(D_MODEL), "--encoder-ffn-embed-dim", str(FFN),
            "--encoder-attention-heads", str(HEADS), "--encoder-layers", str(LAYERS),
            "--decoder-embed-dim", str(D_MODEL), "--decoder-ffn-embed-dim", str(FFN),
            "--decoder-attention-heads", str(HEADS), "--decoder-layers", str(LAYERS)]  # fmt: skip
    return [
        fairseq_bin("fairseq-train"), str(data), "--cpu", "--task", "translation", "-s", "en", "-t", "de",
        "--arch", "transformer", *size, "--share-all-embeddings",
        "--encoder-normalize-before", "--decoder-normalize-before",
        "--dropout", str(DROPOUT), "--activation-dropout", str(DROPOUT), "--attention-dropout", "0.0",
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(SMOOTHING),
        "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-9", "--clip-norm", str(CLIP),
        "--lr", str(LR), "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
        "--max-tokens", str(MAX_TOKENS), "--max-update", str(updates), "--seed", "1",
        "--log-format", "json", "--log-interval", str(args.window_steps),
        "--disable-validation", "--no-save",
    ]  # fmt: skip


def run_fairseq(args) -> dict:
    """fairseq-train in a child: each train_inner log line closes one window of updates."""
    data = fairseq_data()
    updates = (args.warmup + args.windows + args.extra + 1) * args.window_steps
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS), "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    child = subprocess.Popen(fairseq_command(data, args, updates), cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    windows = Windows(args.warmup, args.windows, args.windows + args.extra)
    info, log_tail = {}, []
    last = (time.perf_counter(), cpu_ticks(), tree_cpu_seconds(child.pid))
    for line in child.stdout:
        log_tail = (log_tail + [line])[-30:]
        if "num. shared model params" in line:
            info["params_line"] = line.split("|")[-1].strip()
        if "| train_inner |" not in line:
            continue
        now = (time.perf_counter(), cpu_ticks(), tree_cpu_seconds(child.pid))
        row = json.loads(line[line.index("{") :])
        seconds, own = now[0] - last[0], now[2] - last[2]
        window = window_row(float(row["wpb"]) * args.window_steps, args.window_steps, seconds, own,
                            machine_cores(last[1], now[1]))  # fmt: skip
        windows.add({**window, "fairseq_wps": float(row["wps"])})
        last = now
        if windows.done():
            child.terminate()  # enough windows: no need to run the rest
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if not windows.rows["kept"] and not windows.rows["set_aside"]:
        raise SystemExit("fairseq-train produced no timed window:\n" + "".join(log_tail))
    result = windows.result()
    result["fairseq_wps_median"] = statistics.median(
        r["fairseq_wps"] for r in (windows.rows["kept"] or windows.rows["set_aside"]))  # fmt: skip
    result.update(info, wall_s=round(time.perf_counter() - start, 1), peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
                  command=" ".join(fairseq_command(data, args, updates)[1:]))  # fmt: skip
    return result
