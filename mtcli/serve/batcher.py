"""Dynamic batching: one worker thread per model pools the sentences of every waiting request.

Requests are submitted from the event loop and get an asyncio future back. The worker thread
waits for the first pending job, lingers a few milliseconds for more, takes jobs with the same
search settings up to the decode token budget, translates all their lines in one
`Translator.translate` call (which sorts them and packs token-budget batches) and resolves each
job's future with its own slice of the results. The event loop never runs the model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from mtcli.inference.params import with_search
from mtcli.serve.metrics import Metrics


class QueueFull(Exception):
    """The model's queue holds --queue-size requests already."""


@dataclass(eq=False)
class Job:
    """One request's lines for one model, with the future the event loop awaits."""

    lines: list[str]
    beam: int
    nbest: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    tokens: int = 0
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """The worker that owns one model's Translator and serves its queue."""

    def __init__(self, translator, pair: str, metrics: Metrics, queue_size: int, max_wait: float = 0.005,
                 pooling: bool = True):  # fmt: skip
        self.translator, self.pair, self.metrics = translator, pair, metrics
        self.queue_size, self.max_wait, self.pooling = queue_size, max_wait, pooling
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"mtcli-worker-{pair}", daemon=True)
        self._translators: dict[tuple[int, int], object] = {}

    def start(self) -> None:
        """Start the worker thread."""
        self.thread.start()

    def stop(self) -> None:
        """Let the worker finish the batch it is on and exit."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()

    def submit(self, lines: list[str], beam: int, nbest: int) -> Job:
        """Queue lines (from the event loop); raises QueueFull when the queue is at its bound."""
        loop = asyncio.get_running_loop()
        job = Job(lines, beam, nbest, loop.create_future(), loop)
        # Token counts decide how many jobs fit one pooled call; count them here, off the worker.
        job.tokens = sum(len(s) + 1 for s in self.translator.tok.encode_src(lines))
        with self.cond:
            if len(self.pending) >= self.queue_size:
                raise QueueFull
            self.pending.append(job)
            self.metrics.queue_depth.labels(self.pair).set(len(self.pending))
            self.cond.notify()
        return job

    def cancel(self, job: Job, reason: str) -> bool:
        """Drop a job that is still queued (client gone or timed out); False if it already runs."""
        with self.cond:
            try:
                self.pending.remove(job)
            except ValueError:
                return False
            self.metrics.queue_depth.labels(self.pair).set(len(self.pending))
        self.metrics.cancelled.labels(self.pair, reason).inc()
        return True

    def _take(self) -> list[Job] | None:
        """Block for work; return the jobs of one pooled call (None once stopping and idle)."""
        with self.cond:
            while not self.pending and not self.stopping:
                self.cond.wait()
            if not self.pending:
                return None
        if self.pooling and self.max_wait > 0:
            time.sleep(self.max_wait)  # let concurrent requests arrive and join this call
        with self.cond:
            first = self.pending.popleft()
            jobs, budget = [first], self.translator.max_tokens - first.tokens
            if self.pooling:
                for job in list(self.pending):
                    if (job.beam, job.nbest) == (first.beam, first.nbest) and job.tokens <= budget:
                        self.pending.remove(job)
                        jobs.append(job)
                        budget -= job.tokens
            self.metrics.queue_depth.labels(self.pair).set(len(self.pending))
        return jobs

    def _translator_for(self, beam: int, nbest: int):
        """The translator with this request's beam and n-best (the model is shared)."""
        key = (beam, nbest)
        if key not in self._translators:
            self._translators[key] = with_search(self.translator, beam, nbest)
        return self._translators[key]

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            self._serve(jobs)

    def _serve(self, jobs: list[Job]) -> None:
        """Translate the jobs' lines in one call and hand each job its own results."""
        lines = [line for job in jobs for line in job.lines]
        self.metrics.in_progress.labels(self.pair).set(len(lines))
        try:
            results = self._translator_for(jobs[0].beam, jobs[0].nbest).translate(lines)
        except Exception as exc:  # a model failure fails these requests, not the worker
            for job in jobs:
                job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
            return
        finally:
            self.metrics.in_progress.labels(self.pair).set(0)
        self.metrics.record_batch(self.pair, threading.current_thread().name, jobs, results)
        start = 0
        for job in jobs:
            part = results[start : start + len(job.lines)]
            start += len(job.lines)
            job.loop.call_soon_threadsafe(_resolve, job.future, part, None)


def _resolve(future: asyncio.Future, result, exc: BaseException | None) -> None:
    """Set a job's outcome on the event loop, unless its request has gone away meanwhile."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
