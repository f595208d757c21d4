"""Time and peak memory of `mtcli prepare` on the shipped corpora and on generated big corpora.

    .venv/bin/python bench/prepare_bench.py [--scales 1,4,12,24] [--out bench/prepare_results.json]

Each case runs `python -m mtcli prepare CONFIG --force` in a child process; wall time is measured
around it and peak RSS comes from that child's own rusage (os.wait4). Cases:

- tatoeba-en-fr: configs/tatoeba-en-fr.yaml (164k pairs, valid/test carved, joint unigram 8k)
- multi30k-en-de: configs/multi30k-en-de.yaml (29k train pairs, own valid/test)
- scale-xK: Tatoeba repeated K times into /tmp (K x 164k pairs), `dedup: false` so nothing
  collapses, SentencePiece sampling 500k sentences; peak RSS against pairs gives MB per million.

Work files go to /tmp/mtcli-bench; corpora are read from $MTCLI_DATA (default ../shared/data).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from common import REPO

from mtcli.files import write_text

WORK = Path("/tmp/mtcli-bench")
SAMPLE = 500_000  # tokenizer.input_sentence_size of the scaling runs
DATA = Path(os.environ.get("MTCLI_DATA", REPO.parent / "shared" / "data")).resolve()


def run_prepare(config: Path, overrides: list[str]) -> dict:
    """Run prepare in a child; returns wall seconds, the child's peak RSS and its manifest."""
    args = [sys.executable, "-m", "mtcli", "prepare", str(config), "--force"]
    for item in overrides:
        args += ["--set", item]
    env = {**os.environ, "MTCLI_DATA": str(DATA)}
    start = time.perf_counter()
    child = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare failed for {config}:\n{stderr.decode()[-2000:]}")
    run_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("run_dir="))
    manifest = json.loads((Path(run_dir) / "data" / "manifest.json").read_text())
    peak_kb = usage.ru_maxrss  # kilobytes on Linux
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak_kb / 1024, 1), "manifest": manifest}


def summarize(name: str, result: dict) -> dict:
    """The numbers worth keeping from one run."""
    m = result["manifest"]
    return {
        "case": name,
        "wall_s": result["wall_s"],
        "peak_rss_mb": result["peak_rss_mb"],
        "pairs_read": m["splits"]["train"]["read"],
        "pairs": {split: s["pairs"] for split, s in m["splits"].items()},
        "filters": m["filters"]["train"],
        "vocab": m["vocab"]["src_size"],
        "phase_s": m["seconds"],
        "phase_rss_mb": m["rss_mb"],
    }


def repeated_tatoeba(times: int) -> Path:
    """Tatoeba en-fr repeated `times` times as a plain TSV in /tmp (written once, reused)."""
    path = WORK / f"tatoeba-x{times}.tsv"
    if not path.exists():
        body = gzip.decompress((DATA / "tatoeba-en-fr/eng-fra.tsv.gz").read_bytes())
        with open(f"{path}.part", "wb") as f:
            for _ in range(times):
                f.write(body)
        os.replace(f"{path}.part", path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", default="1,4,12,24", help="Tatoeba repeats for the scaling runs")
    parser.add_argument("--out", default=str(REPO / "bench" / "prepare_results.json"))
    parser.add_argument("--refit", action="store_true", help="only recompute slopes in --out")
    args = parser.parse_args()
    if args.refit:
        return write_report(json.loads(Path(args.out).read_text()), Path(args.out))
    WORK.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()  # the machine may be shared: timings are only as quiet as it
    results = []
    for name, config in (("tatoeba-en-fr", "configs/tatoeba-en-fr.yaml"),
                         ("multi30k-en-de", "configs/multi30k-en-de.yaml")):  # fmt: skip
        out = run_prepare(REPO / config, [f"run_dir={WORK / name}"])
        results.append(summarize(name, out))
        print(json.dumps(results[-1]), flush=True)
    for k in [int(x) for x in args.scales.split(",") if x]:
        path = repeated_tatoeba(k)
        overrides = [
            f"run_dir={WORK / f'scale-x{k}'}", f"data.train.path={path}",
            "data.filters.dedup=false", f"tokenizer.input_sentence_size={SAMPLE}",
        ]  # fmt: skip
        out = run_prepare(REPO / "configs/tatoeba-en-fr.yaml", overrides)
        results.append(summarize(f"scale-x{k}", out))
        print(json.dumps(results[-1]), flush=True)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},  # fmt: skip
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "results": results,
    }
    write_report(report, Path(args.out))


def memory_slopes(results: list[dict]) -> dict:
    """MB of RSS per million pairs (least squares) over the scaling runs whose SentencePiece
    sample is capped (2 sentences a pair >= SAMPLE), so that the cap does not mask growth."""
    capped = [r for r in results if r["case"].startswith("scale-") and 2 * r["pairs_read"] >= SAMPLE]
    if len(capped) < 2:
        return {}
    millions = np.array([r["pairs_read"] / 1e6 for r in capped])
    series = {
        "peak": [r["peak_rss_mb"] for r in capped],
        "read": [r["phase_rss_mb"]["read"] for r in capped],
        "encode": [r["phase_rss_mb"]["encode"] for r in capped],
        "encode_growth": [r["phase_rss_mb"]["encode"] - r["phase_rss_mb"]["encode_start"]
                          for r in capped],
    }  # fmt: skip
    out = {"fit_cases": [r["case"] for r in capped]}
    for key, values in series.items():
        slope, intercept = np.polyfit(millions, np.array(values), 1)
        out[f"{key}_rss_mb_per_million_pairs"] = round(float(slope), 2)
        out[f"{key}_rss_mb_intercept"] = round(float(intercept), 1)
    return out


def write_report(report: dict, path: Path) -> None:
    """Add the memory slopes, write the JSON and print the summary."""
    report["memory"] = memory_slopes(report["results"])
    write_text(path, json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=2))


if __name__ == "__main__":
    main()
