"""`mtcli serve` under load on 127.0.0.1, beside offline translation of the same sentences.

    python bench/serve_bench.py --model runs/multi30k-en-de/model [--clients 1,8,32,128]
        [--duration 20] [--limit 1000] [--modes continuous,pooled,off] [--soak 600] [--json FILE]

For each mode (`serve --batching MODE`: continuous batching, pooled calls, or off: one request
per model call) a fresh server is started; for each client count a load generator runs in its own
process (threads, one keep-alive connection each, one sentence per request, POST /translate),
bounded by --duration and by the request count, and reports sentences/s, p50/p95/p99 latency,
errors and its own CPU time (it shares the cores with the server). Offline: the same sentences
through the Translator in this process, as `mtcli translate -i` does (model load excluded); one
sentence at a time for the in-process single-sentence latency; and 32 at a time, the ceiling of
32 one-sentence clients without HTTP. --mixed: also 8 one-sentence clients beside one client
sending 32-line requests (does a short request wait behind a long one?). --soak S: S seconds at
32 clients in the first of --modes: errors, and the server's resident memory at rest before and
after and every 30 s under load (with the C heap's bytes in use and freed but kept, from
/metrics). --model may be a bundle or a CTranslate2 export.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from common import REPO, machine

DEFAULT_SRC = REPO.parent / "shared" / "data" / "multi30k" / "test_2016_flickr.en.gz"
MAX_REQUESTS_PER_CLIENT = 100_000  # a bound besides the duration


def read_sentences(path: Path, limit: int) -> list[str]:
    """The first `limit` non-empty lines of a (gzipped) text file."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()][:limit]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values, in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else float("nan")


# ----------------------------------------------------------------------------- the load generator


def load(url: str, sentences: list[str], clients: int, duration: float, pair: tuple[str, str], lines: int = 1) -> dict:
    """Run `clients` threads against url for `duration` seconds, each request `lines` sentences
    (q a string for one, a list for more); the latencies and counts."""
    import http.client
    from urllib.parse import urlsplit

    host, port = urlsplit(url).hostname, urlsplit(url).port
    latencies, errors, lock = [], [], threading.Lock()
    stop_at = time.perf_counter() + duration

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=120)
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if time.perf_counter() > stop_at:
                break
            first = (i + n * clients) * lines
            q = [sentences[(first + j) % len(sentences)] for j in range(lines)]
            body = json.dumps({"q": q[0] if lines == 1 else q, "source": pair[0], "target": pair[1]})
            start = time.perf_counter()
            try:
                conn.request("POST", "/translate", body, {"Content-Type": "application/json"})
                answer = conn.getresponse()
                answer.read()
                ok = answer.status == 200
            except OSError as exc:
                ok, answer = False, exc
                conn = http.client.HTTPConnection(host, port, timeout=120)
            with lock:
                (latencies.append(time.perf_counter() - start) if ok else errors.append(str(getattr(answer, "status", answer))))
        conn.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"clients": clients, "lines_per_request": lines, "requests": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors))[:5], "wall_s": round(wall, 2),
            "sentences_per_s": round(lines * len(latencies) / wall, 1),
            "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
            "p99_ms": round(percentile(latencies, 99), 1),
            "loadgen_cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}  # fmt: skip


def run_loadgen(url: str, src: Path, limit: int, clients: int, duration: float, pair: tuple[str, str],
                lines: int = 1) -> dict:  # fmt: skip
    """The load generator in its own process (so its CPU time is its own); its JSON line."""
    cmd = [sys.executable, __file__, "--loadgen", url, "--src", str(src), "--limit", str(limit),
           "--clients", str(clients), "--duration", str(duration), "--pair", "-".join(pair),
           "--lines", str(lines)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 300)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr}")
    return json.loads(out.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- server and offline


class Server:
    """`mtcli serve` on a free 127.0.0.1 port, started and waited for."""

    def __init__(self, model: Path, *args: str):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "mtcli", "serve", "-m", str(model), "--port", str(self.port),
               "--queue-size", "1024", *args]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.DEVNULL, env=os.environ.copy())
        self.health = self._wait()

    def _wait(self, limit: float = 300) -> dict:
        import urllib.request

        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    return json.loads(r.read())
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise SystemExit("the server did not get ready")

    def rss_mb(self) -> float:
        """The server's resident memory (VmRSS) in MiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024

    def heap_mb(self) -> tuple[float, float] | tuple[()]:
        """The C heap's (in use, freed but kept) MiB from /metrics; () where it reports none."""
        import urllib.request

        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        found = dict(re.findall(r'^mtcli_serve_heap_bytes\{kind="(\w+)"\} (\S+)$', text, re.M))
        return (round(float(found["in_use"]) / 2**20, 1), round(float(found["free"]) / 2**20, 1)) if found else ()

    def stop(self) -> int:
        """SIGTERM, wait, the exit status."""
        self.proc.terminate()
        return self.proc.wait(120)


def offline(model: Path, sentences: list[str], singles: int) -> dict:
    """Sentences/s of one Translator.translate call over all sentences (as `translate -i`), and
    the median latency of translating one sentence at a time in-process."""
    from mtcli.inference.translator import load_translator

    translator = load_translator(model)
    translator.translate(sentences[:8])  # warm-up, as the server's
    start = time.perf_counter()
    translator.translate(sentences)
    wall = time.perf_counter() - start
    one = []
    for s in sentences[:singles]:
        t0 = time.perf_counter()
        translator.translate([s])
        one.append(time.perf_counter() - t0)
    return {"sentences": len(sentences), "wall_s": round(wall, 2), "sentences_per_s": round(len(sentences) / wall, 1),
            "single_p50_ms": round(1000 * statistics.median(one), 1),
            "in_process_32": in_process_ceiling(translator, sentences, 32)}  # fmt: skip


def in_process_ceiling(translator, sentences: list[str], clients: int) -> dict:
    """What `clients` one-sentence requests at a time could get with no HTTP at all: sentences/s of
    `translate` calls of `clients` lines each (pooled batching at its best), and, for mtcli's own
    models, of a BeamStream kept at `clients` sentences (continuous batching at its best)."""
    start = time.perf_counter()
    for i in range(0, len(sentences), clients):
        translator.translate(sentences[i : i + clients])
    result = {"clients": clients, "calls_per_s": round(len(sentences) / (time.perf_counter() - start), 1)}
    if hasattr(translator, "prepare"):  # not a CTranslate2 export
        result["running_batch_per_s"] = round(running_batch(translator, sentences, clients), 1)
    return result


def running_batch(translator, sentences: list[str], clients: int) -> float:
    """Sentences/s of a BeamStream that `clients` sentences at a time join as others end."""
    from mtcli.inference.stream import BeamStream

    ids, _ = translator.prepare(sentences)
    stream, done, i = BeamStream(translator.model, translator.params, translator.device), 0, 0
    start = time.perf_counter()
    while done < len(ids):
        n = min(clients - len(stream), len(ids) - i)
        stream.add(ids[i : i + n], list(range(i, i + n)))
        i += n
        done += len(stream.step())
    return len(ids) / (time.perf_counter() - start)


def bench_mode(args, mode: str, pair: tuple[str, str]) -> list[dict]:
    """Every client count against a fresh server in one mode."""
    server = Server(args.model, "--batching", mode)
    rows = []
    try:
        for clients in args.clients:
            row = run_loadgen(server.url, args.src, args.limit, clients, args.duration, pair)
            rows.append({"mode": mode, **row})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        if args.mixed:  # one client sending 32-line requests beside 8 sending one sentence each
            bulk: dict = {}
            other = threading.Thread(target=lambda: bulk.update(
                run_loadgen(server.url, args.src, args.limit, 1, args.duration, pair, lines=32)))  # fmt: skip
            other.start()
            singles = run_loadgen(server.url, args.src, args.limit, 8, args.duration, pair)
            other.join()
            rows += [{"mode": mode, "mixed": True, **singles}, {"mode": mode, "mixed": True, **bulk}]
            print(json.dumps(rows[-2:]), file=sys.stderr, flush=True)
    finally:
        rows.append({"mode": mode, "exit_status": server.stop()})
    return rows


def soak(args, pair: tuple[str, str]) -> dict:
    """--soak seconds at 32 clients with the first of --modes: errors and resident memory growth.

    Growth is measured at rest, before and after: each time 3 s after the last request, once the
    worker has given the batches' memory back. Under load, memory is sampled every 30 s; its
    trend is the least-squares slope of those samples."""
    server = Server(args.model, "--batching", args.modes.split(",")[0])

    def sample(since: float) -> tuple:  # (s, RSS, C heap in use, C heap freed but kept), MiB
        return (round(time.monotonic() - since), round(server.rss_mb(), 1), *server.heap_mb())

    try:
        run_loadgen(server.url, args.src, args.limit, 32, min(30.0, args.soak), pair)  # settle allocations
        time.sleep(3)
        start, result = time.monotonic(), {}
        before = sample(start)
        loadgen = threading.Thread(target=lambda: result.update(run_loadgen(server.url, args.src, args.limit, 32,
                                                                            args.soak, pair)))  # fmt: skip
        loadgen.start()
        samples = []
        while loadgen.is_alive():
            loadgen.join(30)
            if loadgen.is_alive():
                samples.append(sample(start))
        time.sleep(3)
        after = sample(start)
    finally:
        server.stop()
    trend = statistics.linear_regression([s[0] for s in samples], [s[1] for s in samples]).slope if len(samples) > 1 else 0
    return {"soak_s": args.soak, **result, "rss_before_mb": before[1], "rss_after_mb": after[1],
            "rss_growth_pct": round(100 * (after[1] - before[1]) / before[1], 2), "at_rest": [before, after],
            "rss_samples": samples, "load_trend_mb_per_min": round(60 * trend, 2)}  # fmt: skip


def main() -> None:
    """Parse arguments; run the load generator (internal) or the whole benchmark."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "runs" / "multi30k-en-de" / "model")
    p.add_argument("--src", type=Path, default=DEFAULT_SRC)
    p.add_argument("--limit", type=int, default=1000, help="sentences of --src used")
    p.add_argument("--clients", default="1,8,32,128")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per client count")
    p.add_argument("--modes", default="continuous,pooled,off", help="serve --batching modes, comma-separated")
    p.add_argument("--soak", type=float, default=0.0, help="seconds of soak at 32 clients (0: none)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--threads", type=int, help="torch threads of the server and the offline run (OMP_NUM_THREADS)")
    p.add_argument("--loadgen", metavar="URL", help=argparse.SUPPRESS)
    p.add_argument("--mixed", action="store_true", help="also: 8 one-sentence clients beside one 32-line client")
    p.add_argument("--pair", default="", help=argparse.SUPPRESS)
    p.add_argument("--lines", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    sentences = read_sentences(args.src, args.limit)
    if args.loadgen:
        pair = tuple(args.pair.split("-"))
        print(json.dumps(load(args.loadgen, sentences, int(args.clients), args.duration, pair, args.lines)))
        return
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.threads:  # before torch is imported here, and inherited by the servers
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    from mtcli.serve.models import model_pair

    pair = model_pair(args.model)  # a bundle's or a CTranslate2 export's
    result = {"date": time.strftime("%Y-%m-%d"), "machine": machine(nproc_command=True), "model": str(args.model),
              "args": {k: str(v) for k, v in vars(args).items() if k not in ("loadgen", "pair", "lines")},
              "offline": offline(args.model, sentences, singles=min(50, len(sentences)))}  # fmt: skip
    print(json.dumps(result["offline"]), file=sys.stderr, flush=True)
    result["served"] = [row for mode in args.modes.split(",") for row in bench_mode(args, mode, pair)]
    if args.soak:
        result["soak"] = soak(args, pair)
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
