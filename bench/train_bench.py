"""Training throughput of mtcli against fairseq, Hugging Face Marian and a textbook loop (issue 4).

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
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUN_DIR = REPO / "runs" / "base"
FAIRSEQ_VENV = REPO / "bench" / ".venvs" / "fairseq"
PAD, UNK, BOS, EOS = 0, 1, 2, 3
VOCAB, D_MODEL, HEADS, FFN, LAYERS = 8000, 256, 4, 1024, 3
THREADS, MAX_TOKENS, DROPOUT, SMOOTHING, LR, CLIP = 2, 4000, 0.1, 0.1, 7e-4, 1.0
OTHER_MAX = 0.3  # cores other processes may use during a kept window
SYSTEMS = ("mtcli", "fairseq", "hf", "reference", "mtcli-compile")
EXTRA = ("mtcli-baseline",)  # mtcli imported from --baseline DIR (e.g. an older checkout's tree)


# ----------------------------------------------------------------------------- timing helpers


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return sum(fields) - fields[3] - fields[4], sum(fields)  # minus idle and iowait


def machine_cores(t0: tuple[int, int], t1: tuple[int, int]) -> float:
    """Cores the whole machine kept busy between two cpu_ticks() readings."""
    return (t1[0] - t0[0]) / max(t1[1] - t0[1], 1) * (os.cpu_count() or 1)


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


def wait_for_quiet(limit: float = 120.0, threshold: float = 0.3) -> float:
    """Wait (up to `limit` s) until other jobs leave the cores idle; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        t0 = cpu_ticks()
        time.sleep(1.0)
        if machine_cores(t0, cpu_ticks()) < threshold:
            break
    return round(time.perf_counter() - start, 1)


def window_row(tokens: float, steps: int, seconds: float, own_cpu: float, machine: float) -> dict:
    """One timed window: tokens/s and how many cores other processes used meanwhile."""
    other = max(0.0, machine - own_cpu / seconds)
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
    from mtcli.prepare import run_prepare

    cwd = os.getcwd()
    os.chdir(REPO)  # MTCLI_DATA defaults to ../shared/data relative to the checkout
    try:
        return run_prepare(base_config([]))
    finally:
        os.chdir(cwd)


def load_train():
    from mtcli.dataset import load_pair

    manifest = json.loads((RUN_DIR / "data" / "manifest.json").read_text())
    return load_pair(RUN_DIR / "data", "train", manifest["dtype"])


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


# ----------------------------------------------------------------------------- in-process systems


def worker_mtcli(args, compile_: bool) -> dict:
    """mtcli's Trainer.update on its own token batches (epoch 1, seed 1)."""
    from mtcli.batching import token_batches
    from mtcli.distributed import Dist
    from mtcli.train import Trainer

    cfg = base_config([f"train.compile={str(compile_).lower()}"])
    manifest = json.loads((RUN_DIR / "data" / "manifest.json").read_text())
    trainer = Trainer(cfg, manifest, Dist.setup("cpu", THREADS))
    batches = token_batches(trainer.train_src.lengths, trainer.train_tgt.lengths, MAX_TOKENS, cfg.train.seed, 1)
    feed = iter(batches * 2)

    def step() -> float:
        row = trainer.update([next(feed)])
        return row["ntokens"]

    warmup = args.warmup + (1 if compile_ else 0)  # compiling (and recompiling) needs longer
    result = run_windows(step, args, warmup)
    result["params"] = sum(p.numel() for p in trainer.model.parameters())
    result["mean_batch_target_tokens"] = round(sum(_tgt_tokens(trainer, b) for b in batches) / len(batches), 1)
    return result


def _tgt_tokens(trainer, idx) -> int:
    return int(sum(trainer.train_tgt.lengths[i] + 1 for i in idx))


def plain_loop(model, forward, batches) -> tuple:
    """A textbook training step over pre-collated batches: mean label-smoothed CE, Adam, clip."""
    import torch
    import torch.nn.functional as F

    opt = torch.optim.Adam(model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-9)
    feed = iter(batches * 2)
    model.train()

    def step() -> float:
        b = next(feed)
        logits = forward(b["src"], b["tgt_in"])
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), b["tgt_out"].reshape(-1),
                               ignore_index=PAD, label_smoothing=SMOOTHING)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        return float(b["ntokens"])

    return step


def collated(src, tgt, index_batches) -> list[dict]:
    from mtcli.batching import collate
    from mtcli.dataset import SPECIAL

    return [collate(src, tgt, idx, SPECIAL) for idx in index_batches]


def worker_hf(args) -> dict:
    """MarianMTModel of the base size on mtcli's batches (same padded tensors)."""
    import torch
    from transformers import MarianConfig, MarianMTModel

    from mtcli.batching import token_batches

    torch.manual_seed(1)
    config = MarianConfig(
        vocab_size=VOCAB, d_model=D_MODEL, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
        decoder_ffn_dim=FFN, max_position_embeddings=512, pad_token_id=PAD, eos_token_id=EOS,
        decoder_start_token_id=BOS, share_encoder_decoder_embeddings=True, scale_embedding=True,
        activation_function="relu", dropout=DROPOUT, attention_dropout=0.0, activation_dropout=DROPOUT,
    )  # fmt: skip
    model = MarianMTModel(config)
    src, tgt = load_train()
    n = (args.warmup + args.windows + args.extra) * args.window_steps
    batches = collated(src, tgt, token_batches(src.lengths, tgt.lengths, MAX_TOKENS, 1, 1)[:n])

    def forward(s, t):
        return model(input_ids=s, attention_mask=s.ne(PAD), decoder_input_ids=t).logits

    result = run_windows(plain_loop(model, forward, batches), args, args.warmup)
    result["params"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result["attn_implementation"] = model.config._attn_implementation
    return result


def reference_model():
    """nn.Embedding (x sqrt(D)) + sinusoidal positions + nn.Transformer (pre-LN) + tied nn.Linear."""
    import torch
    from torch import nn

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D_MODEL, padding_idx=PAD)
            nn.init.normal_(self.embed.weight, std=D_MODEL**-0.5)
            pos = torch.arange(1024.0)[:, None] * torch.exp(torch.arange(0, D_MODEL, 2) * (-math.log(1e4) / D_MODEL))
            self.register_buffer("pos", torch.stack([pos.sin(), pos.cos()], -1).flatten(1))
            self.transformer = nn.Transformer(D_MODEL, HEADS, LAYERS, LAYERS, FFN, DROPOUT,
                                              batch_first=True, norm_first=True)  # fmt: skip
            self.out = nn.Linear(D_MODEL, VOCAB, bias=False)
            self.out.weight = self.embed.weight
            self.drop = nn.Dropout(DROPOUT)

        def embed_at(self, ids):
            return self.drop(self.embed(ids) * D_MODEL**0.5 + self.pos[: ids.size(1)])

        def forward(self, src, tgt):
            causal = torch.ones(tgt.size(1), tgt.size(1), dtype=torch.bool).triu(1)
            h = self.transformer(self.embed_at(src), self.embed_at(tgt), tgt_mask=causal,
                                 src_key_padding_mask=src.eq(PAD), tgt_key_padding_mask=tgt.eq(PAD),
                                 memory_key_padding_mask=src.eq(PAD), tgt_is_causal=True)  # fmt: skip
            return self.out(h)

    return Reference()


def worker_reference(args) -> dict:
    import torch

    torch.manual_seed(1)
    model = reference_model()
    src, tgt = load_train()
    index_batches, size = random_batches(src, tgt)
    n = (args.warmup + args.windows + args.extra) * args.window_steps
    batches = collated(src, tgt, index_batches[:n])
    result = run_windows(plain_loop(model, model, batches), args, args.warmup)
    result["params"] = sum(p.numel() for p in model.parameters())
    result["sentences_per_batch"] = size
    result["padded_tokens_mean"] = round(statistics.mean(
        b["src"].size(0) * max(b["src"].size(1), b["tgt_out"].size(1)) for b in batches), 1)  # fmt: skip
    return result


def run_worker(args) -> None:
    """Child process: one in-process system; writes its result JSON."""
    import torch

    torch.set_num_threads(THREADS)
    name = args.worker
    if name in ("mtcli", "mtcli-compile", "mtcli-baseline"):
        result = worker_mtcli(args, compile_=name == "mtcli-compile")
    elif name == "hf":
        result = worker_hf(args)
    else:
        result = worker_reference(args)
    result["torch_threads"] = torch.get_num_threads()
    result["mtcli_from"] = str(Path(sys.modules["mtcli"].__file__).parent)
    Path(args.result).write_text(json.dumps(result))


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


# ----------------------------------------------------------------------------- fairseq


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

    from mtcli.dataset import load_pair

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


# ----------------------------------------------------------------------------- profile and main


def profile_mtcli(steps: int) -> None:
    """torch.profiler table (self CPU time) of mtcli's Trainer.update, plus page faults per step."""
    import resource

    from torch.profiler import ProfilerActivity, profile

    from mtcli.batching import token_batches
    from mtcli.distributed import Dist
    from mtcli.train import Trainer

    cfg = base_config([])
    manifest = json.loads((RUN_DIR / "data" / "manifest.json").read_text())
    trainer = Trainer(cfg, manifest, Dist.setup("cpu", THREADS))
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


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    return {"nproc": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}  # fmt: skip


def versions() -> dict:
    import torch
    import transformers

    out = subprocess.run([str(FAIRSEQ_VENV / "bin" / "python"), "-c",
                          "import fairseq, torch; print(fairseq.__version__, torch.__version__)"],
                         capture_output=True, text=True)  # fmt: skip
    fairseq_v = out.stdout.split() if out.returncode == 0 else ["missing", ""]
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


def main(argv: list[str] | None = None) -> None:
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
    args = ap.parse_args(argv)
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
    systems = {}
    for name in names:
        waited = wait_for_quiet()
        print(f"{name} (waited {waited} s for idle cores):", flush=True)
        systems[name] = run_fairseq(args) if name == "fairseq" else spawn_worker(name, args)
        systems[name]["waited_s"] = waited
        print(f"  {name}: {systems[name]['median_tok_s']} tok/s, repeats {systems[name]['repeats']}, "
              f"peak RSS {systems[name]['peak_rss_mb']} MB", flush=True)  # fmt: skip
    matmul.append(matmul_gflops())
    gflops = statistics.median(m["median_gflops"] for m in matmul)
    from mtcli.model import build_model

    params = sum(p.numel() for p in build_model(base_config([]).model, VOCAB, VOCAB, True).parameters())
    summary = summarize(systems, gflops, params)
    report(summary, matmul, params)
    result = {"started": started, "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "versions": versions(), "load_average_before": load_before,
              "load_average_after": os.getloadavg(), "settings": settings(args), "matmul": matmul,
              "matmul_gflops": gflops, "mfu_params": params, "summary": summary, "systems": systems}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return None


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


if __name__ == "__main__":
    main()
