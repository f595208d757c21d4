"""Dynamic batching: one worker thread per model pools the sentences of every waiting request.

Requests are submitted from the event loop and get an asyncio future back; the event loop never
runs the model. The worker serves one of two ways:

- **Continuous batching** (mtcli's own models, beam search): the worker keeps one running batch,
  a `BeamStream`. Between two decoding steps it takes the requests that have arrived (with the
  running batch's search settings, within the decode token budget) and puts their sentences
  into it; a sentence leaves the batch the step it ends, and a request is answered as soon as
  its last sentence has. No sentence waits for the longest one of a batch, and no request waits
  for the batch before it to end.
- **Pooled calls** (CTranslate2 exports, which batch in C++, and sampling): the worker waits for
  the first request, lingers a few milliseconds for more, and translates the lines of all
  requests with the same search settings, up to the token budget, in one `translate` call.

Requests with other search settings wait until the running batch has drained (first come,
first served: the batch takes no request from behind one it cannot take).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from mtcli.errors import MtcliError
from mtcli.inference.params import with_search
from mtcli.inference.translator import Translator
from mtcli.serve.heap import HeapTrim
from mtcli.serve.metrics import Metrics

BATCHING = ("continuous", "pooled", "off")


def check_batching(mode: str) -> None:
    """A one-line error unless `mode` is one of BATCHING (--batching)."""
    if mode not in BATCHING:
        raise MtcliError(f"--batching {mode}: choose one of {', '.join(BATCHING)}")


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
    # Continuous batching: the source parts of the lines, the line of each, their hypotheses.
    parts: list[list[int]] = field(default_factory=list)
    owner: list[int] = field(default_factory=list)
    hyps: list = field(default_factory=list)
    left: int = 0


class Batcher:
    """The worker that owns one model's Translator and serves its queue."""

    def __init__(self, translator, pair: str, metrics: Metrics, queue_size: int, max_wait: float = 0.005,
                 batching: str = "continuous"):  # fmt: skip
        self.translator, self.pair, self.metrics = translator, pair, metrics
        check_batching(batching)
        self.queue_size, self.max_wait, self.pooling = queue_size, max_wait, batching != "off"
        self.pending: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"mtcli-worker-{pair}", daemon=True)
        self._translators: dict[tuple[int, int], object] = {}
        self.streaming = batching == "continuous" and isinstance(translator, Translator) and not translator.params.sampling
        self.stream = None  # the running BeamStream (continuous batching)
        self.stream_search: tuple[int, int] | None = None  # its (beam, nbest)
        self.waiting: deque[tuple[Job, int]] = deque()  # taken parts not yet in the stream
        self.trim = HeapTrim()

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
        if not self._wait_for_work():
            return None
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

    def _wait_for_work(self) -> bool:
        """Block until a job is pending (False once stopping and idle), then linger a few
        milliseconds so that concurrent requests join the first call."""
        with self.cond:
            while not self.pending and not self.stopping:
                if not self.cond.wait(timeout=1.0):
                    self.trim.idle()  # a second without work: give the batches' memory back
            if not self.pending:
                return False
        if self.pooling and self.max_wait > 0:
            time.sleep(self.max_wait)
        return True

    def _translator_for(self, beam: int, nbest: int):
        """The translator with this request's beam and n-best (the model is shared)."""
        key = (beam, nbest)
        if key not in self._translators:
            self._translators[key] = with_search(self.translator, beam, nbest)
        return self._translators[key]

    def _call(self, fn):
        """Run the model: a pooled call or one step of the running batch (the one place it runs)."""
        return fn()

    def _run(self) -> None:
        if self.streaming:
            return self._run_stream()
        while (jobs := self._take()) is not None:
            self._serve(jobs)
            self.trim.maybe()

    def _serve(self, jobs: list[Job]) -> None:
        """Translate the jobs' lines in one call and hand each job its own results."""
        lines = [line for job in jobs for line in job.lines]
        self.metrics.in_progress.labels(self.pair).set(len(lines))
        translator = self._translator_for(jobs[0].beam, jobs[0].nbest)
        try:
            results = self._call(lambda: translator.translate(lines))
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

    # ------------------------------------------------------------------ continuous batching

    def _run_stream(self) -> None:
        """Step the running batch, taking new requests in between, until stopped and idle."""
        while True:
            idle = not self.waiting and (self.stream is None or not len(self.stream))
            if idle and not self._wait_for_work():
                return
            for job in self._take_more():
                self._start(job)
            self._fill()
            if self.stream is not None and len(self.stream):
                self._step()
            self.trim.maybe()

    def _take_more(self) -> list[Job]:
        """The pending jobs, from the front, that the running batch can take now: those with its
        search settings (any, when it is empty), within the token budget; none while parts of a
        taken job still wait; with pooling off, one job and only into an empty batch."""
        running = self.stream is not None and len(self.stream) > 0
        if self.waiting or (running and not self.pooling):
            return []
        used = self.stream.source_tokens if running else 0
        jobs: list[Job] = []
        with self.cond:
            while self.pending:
                job = self.pending[0]
                search = (job.beam, job.nbest)
                if running or jobs:
                    if search != self.stream_search or used + job.tokens > self.translator.max_tokens:
                        break
                elif search != self.stream_search or self.stream is None:
                    from mtcli.inference.stream import BeamStream

                    t = self._translator_for(*search)
                    self.stream, self.stream_search = BeamStream(t.model, t.params, t.device), search
                jobs.append(self.pending.popleft())
                used += job.tokens
                if not self.pooling:
                    break
            self.metrics.queue_depth.labels(self.pair).set(len(self.pending))
        return jobs

    def _start(self, job: Job) -> None:
        """Split a taken job's lines into the parts the model reads; they wait to join the batch."""
        try:
            job.parts, job.owner = self.translator.prepare(job.lines)
        except Exception as exc:
            job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
            return
        job.hyps, job.left = [None] * len(job.parts), len(job.parts)
        if not job.parts:  # only empty lines
            self._finish(job)
        self.waiting.extend((job, i) for i in range(len(job.parts)))

    def _fill(self) -> None:
        """Move waiting parts into the running batch while its token budget allows (at least one
        part into an empty batch, however long)."""
        if not self.waiting:
            return
        stream, seqs, keys = self.stream, [], []
        used = stream.source_tokens
        while self.waiting:
            job, i = self.waiting[0]
            size = len(job.parts[i]) + 1
            if (len(stream) or seqs) and used + size > self.translator.max_tokens:
                break
            self.waiting.popleft()
            seqs.append(job.parts[i])
            keys.append((job, i))
            used += size
        try:
            stream.add(seqs, keys)
        except Exception as exc:
            self._fail(exc, [job for job, _ in keys])

    def _step(self) -> None:
        """One decoding step of the running batch; answer the requests whose last part ended."""
        stream = self.stream
        self.metrics.in_progress.labels(self.pair).set(len(stream))
        jobs = {job for job, _ in stream.keys}
        try:
            ended = self._call(stream.step)
        except Exception as exc:  # a model failure fails the requests in the batch, not the worker
            self._fail(exc, list(jobs) + [job for job, _ in self.waiting])
            return
        self.metrics.record_call(self.pair, threading.current_thread().name, len(jobs), len(stream) + len(ended))
        for (job, i), hyps in ended:
            job.hyps[i] = hyps
            job.left -= 1
            if job.left == 0:
                self._finish(job)
        if not len(stream):
            self.metrics.in_progress.labels(self.pair).set(0)

    def _finish(self, job: Job) -> None:
        """Answer a job whose parts have all ended."""
        results = self._translator_for(job.beam, job.nbest).finish(len(job.lines), job.owner, job.hyps)
        self.metrics.record_done(self.pair, [job], results)
        job.loop.call_soon_threadsafe(_resolve, job.future, results, None)

    def _fail(self, exc: Exception, jobs: list[Job]) -> None:
        """Fail these requests and start over with an empty batch."""
        for job in set(jobs):
            job.loop.call_soon_threadsafe(_resolve, job.future, None, exc)
        self.waiting.clear()
        self.stream, self.stream_search = None, None
        self.metrics.in_progress.labels(self.pair).set(0)


def _resolve(future: asyncio.Future, result, exc: BaseException | None) -> None:
    """Set a job's outcome on the event loop, unless its request has gone away meanwhile."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
