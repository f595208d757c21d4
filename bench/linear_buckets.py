"""Offline speed and heap growth of one bundle, in this process: run it with
MTCLI_LINEAR_BUCKETS=0 and =1, alternating, to measure PackedLinear's row buckets
(docs/BENCHMARKS.md, "Row buckets"). Prints one JSON line.

    python bench/linear_buckets.py MODEL [--src FILE] [--limit N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench  # noqa: E402

from mtcli.inference.translator import load_translator  # noqa: E402
from mtcli.serve.heap import heap_bytes  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "shared/data/multi30k/test_2016_flickr.en.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--src", type=Path, default=SRC)
    parser.add_argument("--limit", type=int, default=1000)
    args = parser.parse_args()
    with gzip.open(args.src, "rt", encoding="utf-8") if args.src.suffix == ".gz" else open(args.src) as f:
        lines = [line.strip() for line in f][: args.limit]
    translator = load_translator(args.model)
    translator.translate(lines[:8])  # warm-up, as the server's
    heap0 = heap_bytes()
    start = time.perf_counter()
    translator.translate(lines)
    full = time.perf_counter() - start
    one = []
    for s in lines[:50]:
        t0 = time.perf_counter()
        translator.translate([s])
        one.append(time.perf_counter() - t0)
    ceiling = serve_bench.in_process_ceiling(translator, lines, 32)
    heap1 = heap_bytes()
    print(json.dumps({
        "buckets": os.environ.get("MTCLI_LINEAR_BUCKETS", "1"), "sentences_per_s": round(len(lines) / full, 1),
        "single_p50_ms": round(1000 * statistics.median(one), 1),
        **{f"in32_{k}": v for k, v in ceiling.items() if k != "clients"},
        "heap_growth_mb": None if heap0 is None else round((heap1["in_use"] - heap0["in_use"]) / 1e6, 1),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
