"""Translation speed of mtcli against Hugging Face `generate` and CTranslate2 (added 2026-11-24, 3aff71f).

    .venv/bin/python bench/translate_bench.py [--model runs/latest] [--budgets 2000,4000,8000]
    .venv/bin/python bench/translate_bench.py --real-only --model runs/latest   # part 2 only

Part 1, same work: random-initialised base-size models (d_model 256, 4 heads, FFN 1024, 3+3
layers, joint 8k vocabulary), the 1,000 English sentences of Multi30k test2016, beam 5, batches
of 32 sentences in input order, 2 threads, and every hypothesis forced to exactly 30 decoder
steps (minimum = maximum length), so every system runs the same number of decoder steps over the
same number of beams:

- mtcli: `beam_search` with min_len = max_len = 29 tokens, i.e. 29 tokens + the forced EOS, on
  the model `mtcli translate` uses on CPU (`mtcli.inference.translator.inference_model`: fused
  q/k/v projections, linears on pre-packed oneDNN weights); "mtcli no fast path" is the same
  search on plain `nn.Linear`s (as with MTCLI_FAST_LINEAR=0).
- HF: `MarianMTModel.generate` with min_new_tokens = max_new_tokens = 30 (30 tokens, no EOS).
- CTranslate2 fp32 / int8, converted from that Marian model, in a child process that never
  imports torch (min_decoding_length = max_decoding_length = 30).
- mtcli's best: its own `Translator` (length-sorted token-budget batches) under the same forced
  length: one pass per budget in --budgets, then 3 at the fastest; and "mtcli int8"
  (`mtcli.inference.fastpaths`, fixed batches and the best budget); "mtcli bf16" likewise with bfloat16
  linears (`decode.bf16`, only where the CPU has AVX512-BF16 or AMX).
- CTranslate2 through `mtcli translate`: that same mtcli model exported with `mtcli export --to
  ctranslate2` (float32 and int8) and translated by `mtcli.inference.ct2` in a child that never
  imports torch, with the best token budget of the mtcli rows (bench/translate_exports.py; 30
  decoder steps there too). --skip ct2export leaves these rows out.
- --skip nofast leaves out the "no fast path" row (and its token-budget twin).

Each system: one warm-up batch, then 3 timed passes over the 1,000 sentences; the median
sentences/s is reported, with every repeat, in bench/results/translate_speed.json. The machine
is shared: every pass first waits for idle cores, and a pass during which other processes used
more than 0.25 core is set aside and rerun (see `median_run` in bench/translate_setup.py).

Part 2 (only with --model PATH): real throughput of a trained mtcli bundle on test2016 with its
own decode settings at beam 5 and real output lengths, batches of 64 sentences in input order
and its token-budget batching (decode.max_tokens), plus int8 with token budgets and how many
translations int8 leaves identical, the same for bf16 (also with workers), and with --ref FILE
the sacreBLEU of every variant; median of 3 passes. --real-only runs just this part and
merges it into the existing --out file.

The SentencePiece model comes from `run_prepare(configs/base.yaml, run_dir=runs/bench-base)`
(reused when already prepared). --profile prints a cProfile of one mtcli pass instead.

The peers live in bench/translate_peers.py, part 2 in bench/translate_real.py, and the fixed
work, its timing and the mtcli models in bench/translate_setup.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from common import D_MODEL, FFN, HEADS, LAYERS, PAD, REPO, THREADS, VOCAB, machine
from translate_exports import EXPORT_ROWS, bench_exports, export_worker
from translate_peers import bench_peers, ct2_worker
from translate_real import real_part
from translate_setup import (
    BATCH,
    BEAM,
    REPEATS,
    RUN_DIR,
    STEPS,
    check_steps,
    fast_model,
    forced_params,
    log_system,
    median_run,
    mtcli_model,
    plain_model,
    read_lines,
    spm_data,
)

from mtcli.files import write_text

PEERS = ("hf generate", "ct2 fp32", "ct2 int8")


# ----------------------------------------------------------------------------- the mtcli systems


def bench_mtcli(model, batches, n: int, name: str = "mtcli", workers: int = 1) -> dict:
    """Fixed batches in input order; with workers > 1 they are searched `workers` at a time
    (`mtcli.inference.translator.parallel_map`, what decode.workers does), THREADS // workers
    threads each."""
    from mtcli.inference.search import beam_search
    from mtcli.inference.translator import parallel_map

    params = forced_params()
    steps: set[int] = set()

    def one_pass():
        for found in parallel_map(lambda src: beam_search(model, src, params), batches, workers):
            for hyps in found:
                steps.add(len(hyps[0].tokens) + 1)  # tokens + the EOS the last step produced

    beam_search(model, batches[0], params)  # warm-up
    result = median_run(one_pass, n)
    result["steps"] = check_steps(name, steps)
    return result


def bench_mtcli_budget(model, sp_dir: Path, lines: list[str], budget: int, repeats: int = REPEATS,
                       workers: int = 1) -> dict:  # fmt: skip
    """mtcli's own Translator: length-sorted token-budget batches, same forced length."""
    from mtcli.data.spm import Tokenizer
    from mtcli.inference.translator import Translator

    translator = Translator(model, Tokenizer(sp_dir), forced_params(), max_tokens=budget, workers=workers)
    steps: set[int] = set()

    def one_pass():
        for hyps in translator.translate(lines):
            steps.add(hyps[0]["tokens"] + 1)

    translator.translate(lines[:BATCH])  # warm-up
    result = median_run(one_pass, len(lines), repeats)
    result["steps"] = check_steps(f"mtcli budget {budget}", steps)
    parts = [part for line_parts in translator.encode(lines) for part in line_parts]  # a long line: several
    result["batches"] = sum(1 for _ in translator.batches(parts))
    return result


def profile_mtcli(model, batches) -> None:
    import cProfile
    import pstats

    from mtcli.inference.search import beam_search

    params = forced_params()
    model = fast_model(model)
    beam_search(model, batches[0], params)
    prof = cProfile.Profile()
    prof.enable()
    for src in batches:
        beam_search(model, src, params)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


def record(systems: dict, name: str, result: dict) -> None:
    systems[name] = result
    log_system(name, result)


def fixed_batch_systems(systems: dict, model, batches, n: int, skip: set[str], workers: int) -> dict:
    """mtcli on fixed batches: fast path (also with workers), no fast path, int8 and bf16 (each also
    with workers) into `systems`; returns the models timed, by row name."""
    from mtcli.inference.fastpaths import bf16_supported

    fast = fast_model(model)
    nets = {"mtcli": fast}
    record(systems, "mtcli", bench_mtcli(fast, batches, n))
    if workers > 1:
        record(systems, f"mtcli {workers} workers", bench_mtcli(fast, batches, n, f"mtcli {workers} workers", workers))
    if "nofast" not in skip:
        record(systems, "mtcli no fast path", bench_mtcli(plain_model(model), batches, n, "mtcli no fast path"))
    for kind in ("int8", "bf16"):
        if kind in skip or (kind == "bf16" and not bf16_supported()):
            continue
        net = nets[f"mtcli {kind}"] = fast_model(model, **{kind: True})
        record(systems, f"mtcli {kind}", bench_mtcli(net, batches, n, f"mtcli {kind}"))
        if workers > 1:
            name = f"mtcli {kind} {workers} workers"
            record(systems, name, bench_mtcli(net, batches, n, name, workers))
    return nets


def budget_systems(systems: dict, nets: dict, model, lines: list[str], budgets: list[int], skip: set[str],
                   workers: int) -> dict:  # fmt: skip
    """mtcli's own token-budget batching: one pass per budget to find the best, then the usual
    repeats there for every model; with workers its own scan and rows. Returns the scan."""
    sp_dir = REPO / RUN_DIR / "data"
    fast, scan = nets["mtcli"], {}
    for budget in budgets:
        scan[budget] = bench_mtcli_budget(fast, sp_dir, lines, budget, repeats=1)
        print(f"  scan: budget {budget:<6} {scan[budget]['median']:7.1f} sent/s "
              f"({scan[budget]['batches']} batches)", flush=True)  # fmt: skip
    best = max(scan, key=lambda b: scan[b]["median"])
    record(systems, f"mtcli budget {best}", bench_mtcli_budget(fast, sp_dir, lines, best))
    if "nofast" not in skip:
        record(systems, f"mtcli no fast path budget {best}", bench_mtcli_budget(model, sp_dir, lines, best))
    for label in ("mtcli int8", "mtcli bf16"):
        if label in nets:
            record(systems, f"{label} budget {best}", bench_mtcli_budget(nets[label], sp_dir, lines, best))
    if workers > 1:  # its own scan: W batches at once may want smaller ones
        wscan = {b: bench_mtcli_budget(fast, sp_dir, lines, b, 1, workers)["median"] for b in budgets}
        print(f"  scan with {workers} workers: {wscan}", flush=True)
        scan.update({f"{b} {workers} workers": {"median": v} for b, v in wscan.items()})
        wbest = max(wscan, key=wscan.get)
        for label, net in nets.items():
            name = f"{label} budget {wbest} {workers} workers"
            record(systems, name, bench_mtcli_budget(net, sp_dir, lines, wbest, workers=workers))
    return scan


# ----------------------------------------------------------------------------- results


def compare(systems: dict) -> tuple[dict, str | None]:
    """Every mtcli row's ratio to every peer timed, and the fastest fp32 token-budget row."""
    own = {k: v["median"] for k, v in systems.items() if k.startswith("mtcli budget")}  # fast path, fp32
    best_own = max(own, key=own.get) if own else None
    ratios = {}
    for peer in PEERS:
        if peer in systems:
            for mine in (m for m in systems if m.startswith("mtcli")):
                ratios[f"{mine} / {peer}"] = systems[mine]["median"] / systems[peer]["median"]
    return ratios, best_own


def print_table(systems: dict) -> None:
    print(f"\n{'system':<36} {'sent/s':>8}  {'vs HF':>6}  {'vs CT2 fp32':>11}  {'vs CT2 int8':>11}")
    for name, r in systems.items():
        cells = [f"{r['median'] / systems[peer]['median']:.2f}x" if peer in systems else "-" for peer in PEERS]
        print(f"{name:<36} {r['median']:8.1f}  {cells[0]:>6}  {cells[1]:>11}  {cells[2]:>11}")


def versions() -> dict:
    import ctranslate2
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "ctranslate2": ctranslate2.__version__}  # fmt: skip


def same_work(args, argv: list[str] | None, model, batches, pieces, lines: list[str], ids, skip: set[str]) -> dict:
    """Part 1: every system on the same fixed work; the result document."""
    found = versions()  # ctranslate2 and transformers imported before anything is timed
    load_before, systems, started = os.getloadavg(), {}, time.time()
    nets = fixed_batch_systems(systems, model, batches, len(lines), skip, args.workers)
    bench_peers(systems, batches, pieces, ids, skip, args.workers)
    scan = {}
    if "budget" not in skip:
        budgets = [int(b) for b in args.budgets.split(",")]
        scan = budget_systems(systems, nets, model, lines, budgets, skip, args.workers)
    if "ct2export" not in skip:
        one_worker = {b: r["median"] for b, r in scan.items() if isinstance(b, int)}  # budget -> sent/s
        bench_exports(systems, model, lines, max(one_worker, key=one_worker.get) if one_worker else 2000)
    ratios, best_own = compare(systems)
    for name, _ in EXPORT_ROWS:
        if name in systems and best_own:
            ratios[f"{best_own} / {name}"] = systems[best_own]["median"] / systems[name]["median"]
    print_table(systems)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/translate_bench.py", *(argv or sys.argv[1:])]),
        "machine": machine(nproc_command=True),
        "threads": THREADS,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "versions": found,
        "work": {"sentences": len(lines), "beam": BEAM, "batch_sentences": BATCH, "decoder_steps": STEPS,
                 "model": {"d_model": D_MODEL, "heads": HEADS, "ffn": FFN, "layers": f"{LAYERS}+{LAYERS}",
                           "vocab": VOCAB}, "repeats": REPEATS},  # fmt: skip
        "systems": systems,
        "ratios": ratios,
        "best_own_batching": best_own,
        "budget_scan": {str(b): r["median"] for b, r in scan.items()},
        "seconds": round(time.time() - started, 1),
    }


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="an mtcli bundle for the real-throughput part")
    ap.add_argument("--budgets", default="2000,4000,8000", help="token budgets for mtcli's own batching")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "translate_speed.json")
    ap.add_argument("--limit", type=int, default=0, help="only the first N sentences (quick checks)")
    ap.add_argument("--skip", default="",
                    help="comma list of systems to leave out: hf,ct2,ct2export,budget,int8,bf16,nofast")
    ap.add_argument("--ref", type=Path, help="references (plain or .gz) for the real part's sacreBLEU")
    ap.add_argument("--profile", action="store_true", help="cProfile one mtcli pass and exit")
    ap.add_argument("--real-only", action="store_true",
                    help="only the --model part; its result is merged into an existing --out file")  # fmt: skip
    ap.add_argument("--workers", type=int, default=2,
                    help="also time mtcli (decode.workers) and CTranslate2 (inter_threads) with this many "
                         "workers of THREADS // workers threads each; 1: leave these rows out")  # fmt: skip
    ap.add_argument("--ct2-worker", nargs="+", metavar="ARG", help=argparse.SUPPRESS)
    ap.add_argument("--ct2-export-worker", nargs=4, metavar="ARG", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def real(args, lines: list[str], skip: set[str], refs: list[str] | None) -> dict:
    """Part 2 on args.model."""
    return real_part(args.model, lines, "int8" not in skip, args.workers, "bf16" not in skip, refs)


def write_result(args, result: dict) -> None:
    """The result JSON at --out, except for --limit runs."""
    if not args.limit:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.out}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.ct2_worker:
        return ct2_worker(*args.ct2_worker)
    if args.ct2_export_worker:
        return export_worker(*args.ct2_export_worker)

    import torch

    torch.set_num_threads(THREADS)
    skip = set(filter(None, args.skip.split(",")))
    refs = read_lines(args.ref) if args.ref else None
    sp, pieces, lines, ids = spm_data()
    if args.limit:
        lines, ids = lines[: args.limit], ids[: args.limit]
    from mtcli.data.batching import pad_batch

    batches = [pad_batch(ids[i : i + BATCH], PAD) for i in range(0, len(lines), BATCH)]  # EOS already in ids
    model = mtcli_model()
    if args.profile:
        return profile_mtcli(model, batches)
    if args.real_only:
        if args.model is None:
            raise SystemExit("--real-only needs --model PATH")
        result = json.loads(args.out.read_text()) if args.out.is_file() else {}
        result["real"] = real(args, lines, skip, refs)
        return write_result(args, result)
    result = same_work(args, argv, model, batches, pieces, lines, ids, skip)
    if args.model is not None:
        result["real"] = real(args, lines, skip, refs)
    write_result(args, result)
    return None


if __name__ == "__main__":
    main()
