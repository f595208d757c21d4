"""Do exported models translate as the bundle does? (issue 23; added 2026-12, see docs/BENCHMARKS.md)

    .venv/bin/python bench/export_bench.py                      # runs/demo/model on its test split
    .venv/bin/python bench/export_bench.py --model runs/multi30k-en-de/model \\
        --src ../shared/data/multi30k/test_2016_flickr.en.gz --ref ../shared/data/multi30k/test_2016_flickr.de.gz

The bundle is exported with `mtcli export` to every target in TARGETS (CTranslate2 float32 and
int8, Hugging Face), and every system, the bundle itself included, translates the whole test split
through `mtcli translate` in its own process (an export's process never imports torch):
greedily (`--beam 1`), to count the sentences whose greedy translation is identical to the
bundle's, and with beam 5, for sacreBLEU against the references. Wall times of each
`mtcli translate` run (loading included) are recorded too, but this is not a speed benchmark
(bench/translate_bench.py is). Results: bench/results/export_<bundle's run name>.json.

Adding a target (the Hugging Face export): one entry in TARGETS, the name of the column, the
`mtcli export` arguments and the command that translates a file with the exported folder; e.g.
`"huggingface": Target(["--to", "huggingface"], hf_translate)` where hf_translate(export, src,
beam) returns the translations (a child running `AutoModelForSeq2SeqLM.generate`).
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from common import REPO, machine

from mtcli.files import write_text

BEAM = 5


def mtcli_translate(model: Path, src: Path, beam: int) -> list[str]:
    """`mtcli translate -m MODEL -i SRC --beam N` in a child process: its output lines."""
    out = subprocess.run([sys.executable, "-m", "mtcli", "translate", "-m", str(model), "-i", str(src),
                          "--beam", str(beam)], capture_output=True, text=True, cwd=REPO)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"mtcli translate -m {model} failed: {out.stderr.strip()}")
    return out.stdout.split("\n")[:-1]


def hf_translate(export: Path, src: Path, beam: int) -> list[str]:
    """The Hugging Face export through Transformers' `generate` (bench/hf_generate.py) in a child."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "hf_generate.py"), str(export), str(src), str(beam)],
                         capture_output=True, text=True, cwd=REPO)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"hf_generate {export} failed: {out.stderr.strip()[-500:]}")
    return out.stdout.split("\n")[:-1]


@dataclass(frozen=True)
class Target:
    """An export column: the `mtcli export` arguments and how the export translates a file."""

    export_args: list[str]
    translate: Callable[[Path, Path, int], list[str]] = mtcli_translate


TARGETS = {
    "ctranslate2": Target(["--to", "ctranslate2"]),
    "ctranslate2 int8": Target(["--to", "ctranslate2", "--quantization", "int8"]),
    "huggingface": Target(["--to", "huggingface"], hf_translate),
}


def export(bundle: Path, target: Target, out: Path) -> float:
    """`mtcli export BUNDLE ... -o OUT`; its wall seconds."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "mtcli", "export", str(bundle), *target.export_args, "-o", str(out)],
                          capture_output=True, text=True, cwd=REPO)  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"mtcli export {' '.join(target.export_args)} failed: {done.stderr.strip()}")
    return round(time.perf_counter() - start, 2)


def run_system(model: Path, translate: Callable, src: Path, refs: list[str]) -> dict:
    """Greedy and beam-5 translations of `src` by one system, timed, with the beam-5 sacreBLEU."""
    from sacrebleu.metrics import BLEU

    result: dict = {}
    for name, beam in (("greedy", 1), (f"beam{BEAM}", BEAM)):
        start = time.perf_counter()
        hyps = translate(model, src, beam)
        result[name] = {"seconds": round(time.perf_counter() - start, 2), "translations": hyps}
    metric = BLEU()
    bleu = metric.corpus_score(result[f"beam{BEAM}"]["translations"], [refs])
    result[f"beam{BEAM}"].update(bleu=round(bleu.score, 2), signature=str(metric.get_signature()))
    return result


def identical(a: list[str], b: list[str]) -> dict:
    """Exactly equal lines, and lines equal up to whitespace (mtcli's detokenizer keeps the spaces of
    lone "▁" pieces that Transformers' strips: the same tokens then read differently)."""
    same = sum(x == y for x, y in zip(a, b))
    loose = sum(x.split() == y.split() for x, y in zip(a, b))
    return {"identical": f"{same}/{len(a)}", "rate": round(same / len(a), 4),
            "identical_up_to_whitespace": f"{loose}/{len(a)}"}


def read_lines(path: Path) -> list[str]:
    with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def bench(bundle: Path, src: Path, ref: Path, targets: list[str], work: Path) -> dict:
    """Every system on the test split; the result document (translations left out)."""
    lines, refs = read_lines(src), read_lines(ref)
    plain = work / "src.txt"  # mtcli translate reads plain text
    plain.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    systems = {"mtcli": run_system(bundle, mtcli_translate, plain, refs)}
    exports = {}
    for name in targets:
        target = TARGETS[name]
        folder = work / name.replace(" ", "-")
        exports[name] = {"args": target.export_args, "seconds": export(bundle, target, folder)}
        systems[name] = run_system(folder, target.translate, plain, refs)
    base = systems["mtcli"]
    for name, result in systems.items():
        for kind in ("greedy", f"beam{BEAM}"):
            result[kind].update(identical(base[kind]["translations"], result[kind]["translations"]))
        print(f"{name:<20} greedy identical to mtcli {result['greedy']['identical']:>9} "
              f"({result['greedy']['identical_up_to_whitespace']} up to whitespace)   "
              f"beam-{BEAM} identical {result[f'beam{BEAM}']['identical']:>9}   "
              f"beam-{BEAM} BLEU {result[f'beam{BEAM}']['bleu']:6.2f}", flush=True)  # fmt: skip
    for result in systems.values():
        for kind in result.values():
            kind.pop("translations")
    return {"sentences": len(lines), "exports": exports, "systems": systems}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "runs" / "demo" / "model", help="an mtcli bundle")
    ap.add_argument("--src", type=Path, help="test sources (default: the run's data/test.src.txt)")
    ap.add_argument("--ref", type=Path, help="test references (default: the run's data/test.tgt.txt)")
    ap.add_argument("--targets", default=",".join(TARGETS), help=f"comma list of {', '.join(TARGETS)}")
    ap.add_argument("--out", type=Path, help="result JSON (default: bench/results/export_<run>.json)")
    args = ap.parse_args(argv)
    data = args.model.resolve().parent / "data"
    src, ref = args.src or data / "test.src.txt", args.ref or data / "test.tgt.txt"
    targets = [t for t in args.targets.split(",") if t]
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise SystemExit(f"--targets: unknown {unknown}; expected some of {list(TARGETS)}")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="mtcli-export-bench-") as tmp:
        result = bench(args.model, src, ref, targets, Path(tmp))
    import ctranslate2
    import transformers

    doc = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": " ".join([".venv/bin/python", "bench/export_bench.py", *(argv or sys.argv[1:])]),
           "machine": machine(nproc_command=True), "versions": {"ctranslate2": ctranslate2.__version__,
                                                                       "transformers": transformers.__version__},
           "bundle": str(args.model), "src": str(src), "ref": str(ref), **result,
           "seconds": round(time.time() - started, 1)}  # fmt: skip
    out = args.out or REPO / "bench" / "results" / f"export_{args.model.resolve().parent.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
