"""Prometheus metrics of one server: requests, latency, batches, queue depth, sentences and tokens.

Each app gets its own registry, so several apps in one process (tests) count separately.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from mtcli.serve.heap import heap_bytes

disable_created_metrics()  # the *_created series double the output and say nothing a scraper needs

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The server's counters, gauges and histograms in their own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("mtcli_serve_requests", "HTTP requests by route and status",
                                ["route", "status"], registry=r)  # fmt: skip
        self.latency = Histogram("mtcli_serve_request_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.batch_requests = Histogram("mtcli_serve_batch_requests",
                                        "Requests in one model call (a pooled batch, or a step of the running one)",
                                        ["pair"], buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.batch_sentences = Histogram("mtcli_serve_batch_sentences",
                                         "Sentences in one model call (a pooled batch, or a step of the running one)",
                                         ["pair"], buckets=SIZE_BUCKETS, registry=r)  # fmt: skip
        self.batches = Counter("mtcli_serve_batches", "Model calls by the thread that ran them",
                               ["pair", "thread"], registry=r)  # fmt: skip
        self.queue_depth = Gauge("mtcli_serve_queue_depth", "Requests waiting for the model", ["pair"], registry=r)
        self.in_progress = Gauge("mtcli_serve_sentences_in_progress", "Sentences the model is translating now",
                                 ["pair"], registry=r)  # fmt: skip
        self.sentences = Counter("mtcli_serve_sentences", "Sentences translated", ["pair"], registry=r)
        self.tokens = Counter("mtcli_serve_tokens", "Tokens translated (side: src or tgt)", ["pair", "side"],
                              registry=r)  # fmt: skip
        self.heap = Gauge("mtcli_serve_heap_bytes", "The process's C heap: bytes in use, and freed but kept (glibc)",
                          ["kind"], registry=r)  # fmt: skip
        if heap_bytes() is not None:
            for kind in ("in_use", "free"):
                self.heap.labels(kind).set_function(lambda kind=kind: heap_bytes()[kind])
        self.cancelled = Counter("mtcli_serve_cancelled", "Queued requests dropped before translation",
                                 ["pair", "reason"], registry=r)  # fmt: skip

    def record_batch(self, pair: str, thread: str, jobs: list, results: list[list[dict]]) -> None:
        """Count one pooled model call and its results (called from the worker thread;
        prometheus_client locks)."""
        self.record_call(pair, thread, len(jobs), len(results))
        self.record_done(pair, jobs, results)

    def record_call(self, pair: str, thread: str, requests: int, sentences: int) -> None:
        """Count one model call (a pooled batch, or one step of the running batch) by its size."""
        self.batches.labels(pair, thread).inc()
        self.batch_requests.labels(pair).observe(requests)
        self.batch_sentences.labels(pair).observe(sentences)

    def record_done(self, pair: str, jobs: list, results: list[list[dict]]) -> None:
        """Count the sentences and tokens of finished requests."""
        self.sentences.labels(pair).inc(len(results))
        self.tokens.labels(pair, "src").inc(sum(job.tokens for job in jobs))
        self.tokens.labels(pair, "tgt").inc(sum(hyps[0]["tokens"] for hyps in results if hyps))

    def observe(self, route: str, status: int, seconds: float) -> None:
        """Count one finished HTTP request."""
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)
