"""Micro-batching: requests that arrive within a few milliseconds are answered by one model pass.

``submit`` puts a job in a bounded queue and awaits its result. One collector
task takes the queue's oldest job, waits until ``max_wait_s`` after that job
arrived (or until ``max_batch`` texts are waiting), and hands everything it
took to ``run`` in a worker thread, so the event loop keeps serving (probes,
metrics, new requests) while the model works. The workers are the batcher's
own threads, always the same ones: every OS thread that runs torch gets its
own OpenMP team, and asyncio's shared pool would spread passes over many.

Up to ``in_flight`` batches run at once, each on its own worker. Their
forward passes share the cores (``experts.model_lock``): on two cores, two
batches' passes run at once on one thread each, or one batch's routing and
index searches (numpy, FAISS, BM25) run beside the other's pass. With one
batch in flight a routed search left the second core idle under load. While
the batches run, the next one gathers. When the queue already holds
``max_queue`` texts a new job is refused with
:class:`~app.errors.OverloadedError` (429 + ``Retry-After``) instead of
waiting ever longer.

The window is adaptive: after a batch that answered a single request
(sequential traffic: one client, or a quiet moment), a lone waiting job is
run at once, since nobody is likely to join it and the wait would be pure
latency (5 ms of a 40 ms one-client search); as soon as a batch answers
several requests the window is back. Under load the model is never idle:
requests pile up while a batch runs, and the next batch takes them at once
either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from app.api.metrics import Metrics
from app.errors import NotReadyError, OverloadedError

logger = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")


@dataclass(eq=False)
class _Waiting(Generic[Job]):
    job: Job
    size: int
    enqueued: float
    future: asyncio.Future = field(repr=False)


class MicroBatcher(Generic[Job, Result]):
    """Gathers concurrent jobs into batches for ``run`` (called in worker threads, at most ``in_flight`` batches at once).

    ``run`` takes a list of jobs and returns one outcome per job, in order: a
    result, or an exception that belongs to that job alone.

    >>> batcher = MicroBatcher(engine.search_jobs, size=lambda job: len(job.queries), kind="search",
    ...                        max_wait_s=0.005, max_batch=128, max_queue=1024)
    >>> await batcher.start()
    >>> result, queue_ms = await batcher.submit(SearchJob(("lift of a swept wing",)))
    """

    def __init__(
        self,
        run: Callable[[list[Job]], Sequence[Result | Exception]],
        *,
        size: Callable[[Job], int],
        kind: str,
        max_wait_s: float,
        max_batch: int,
        max_queue: int,
        retry_after_s: int = 1,
        metrics: Metrics | None = None,
        in_flight: int = 1,
    ) -> None:
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self._run = run
        self.in_flight = in_flight
        self._size = size
        self.kind = kind
        self.max_wait_s = max_wait_s
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self._metrics = metrics
        self._queue: deque[_Waiting[Job]] = deque()
        self._queued = 0  # texts waiting (not yet taken into a batch)
        self._wakeup = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._worker: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None  # one per batch that may run at once
        self._running: set[asyncio.Task[None]] = set()
        self._last_batch_requests = 1  # see the module docstring: 1 = sequential traffic, no gathering window

    @property
    def depth(self) -> int:
        """Texts waiting for the model."""
        return self._queued

    async def start(self) -> None:
        self._worker = ThreadPoolExecutor(max_workers=self.in_flight, thread_name_prefix=f"rr-{self.kind}")
        self._slots = asyncio.Semaphore(self.in_flight)
        self._task = asyncio.create_task(self._collect(), name=f"micro-batcher-{self.kind}")

    async def stop(self) -> None:
        """Finish the batches in progress; refuse whatever still waits (503)."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)
        while self._queue:
            waiting = self._queue.popleft()
            if not waiting.future.done():
                waiting.future.set_exception(NotReadyError(f"the {self.kind} queue is shutting down"))
        self._queued = 0
        self._gauge()
        if self._worker is not None:
            self._worker.shutdown(wait=False)

    async def submit(self, job: Job) -> tuple[Result, float]:
        """Queue ``job`` and wait for its outcome; returns (result, milliseconds spent queued)."""
        if self._closing or self._task is None:
            state = "is shutting down" if self._closing else "has not started yet"
            raise NotReadyError(f"the {self.kind} queue {state}", retry_after=self.retry_after_s)
        size = self._size(job)
        if self._queued and self._queued + size > self.max_queue:
            if self._metrics is not None:
                self._metrics.rejected.labels(self.kind).inc()
            raise OverloadedError(
                f"{self._queued} {self.kind} texts are already waiting (limit {self.max_queue}); retry shortly",
                retry_after=self.retry_after_s,
            )
        loop = asyncio.get_running_loop()
        waiting = _Waiting(job, size, loop.time(), loop.create_future())
        self._queue.append(waiting)
        self._queued += size
        self._gauge()
        self._wakeup.set()
        result, started = await waiting.future
        return result, round((started - waiting.enqueued) * 1000, 3)

    # ------------------------------------------------------------------ the collector
    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            window = self.max_wait_s if self._last_batch_requests > 1 or len(self._queue) > 1 else 0.0
            deadline = self._queue[0].enqueued + window
            while True:  # the gathering window, counted from the oldest waiting job
                self._wakeup.clear()
                remaining = deadline - loop.time()
                if self._closing or self._queued >= self.max_batch or remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            assert self._slots is not None
            await self._slots.acquire()  # a worker is free; what waited meanwhile joins this batch
            batch = self._take()
            if not batch:
                self._slots.release()
                continue
            self._last_batch_requests = len(batch)
            task = asyncio.create_task(self._answer(batch, loop.time()))
            self._running.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slots is not None
        self._slots.release()

    def _take(self) -> list[_Waiting[Job]]:
        """The oldest jobs up to ``max_batch`` texts (always at least one), skipping cancelled ones."""
        batch: list[_Waiting[Job]] = []
        taken = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # the client went away
                self._queue.popleft()
                self._queued -= head.size
                continue
            if batch and taken + head.size > self.max_batch:
                break
            self._queue.popleft()
            self._queued -= head.size
            taken += head.size
            batch.append(head)
        self._gauge()
        return batch

    async def _answer(self, batch: list[_Waiting[Job]], started: float) -> None:
        if self._metrics is not None:
            self._metrics.batch_requests.labels(self.kind).observe(len(batch))
            self._metrics.batch_queries.labels(self.kind).observe(sum(w.size for w in batch))
            for waiting in batch:
                self._metrics.stage_seconds.labels("queue").observe(started - waiting.enqueued)
        try:
            loop = asyncio.get_running_loop()
            outcomes = await loop.run_in_executor(self._worker, self._run, [w.job for w in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"batch runner returned {len(outcomes)} outcomes for {len(batch)} jobs")
        except Exception as exc:  # a failure of the whole batch belongs to every job in it
            logger.exception("a %s batch of %d jobs failed", self.kind, len(batch))
            outcomes = [exc] * len(batch)
        for waiting, outcome in zip(batch, outcomes):
            if waiting.future.done():
                continue
            if isinstance(outcome, Exception):
                waiting.future.set_exception(outcome)
            else:
                waiting.future.set_result((outcome, started))

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.queue_depth.labels(self.kind).set(self._queued)
