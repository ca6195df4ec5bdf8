"""The micro-batcher on its own, with a recording runner: gathering, limits, per-job errors, shutdown.

No timing is relied on: the gathering window is made very long, so a batch
fires because it is full, and blocking runners are released by events.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.api.batching import MicroBatcher
from app.errors import NotReadyError, OverloadedError


def recording_runner(
    calls: list[list[str]], *, gate: threading.Event | None = None, entered: threading.Event | None = None
):
    def run(jobs: list[str]) -> list[str | Exception]:
        calls.append(list(jobs))
        if entered is not None:
            entered.set()
        if gate is not None:
            gate.wait(timeout=60)
        return [ValueError(f"bad job {job}") if job.startswith("bad") else job.upper() for job in jobs]

    return run


def make(run, **options) -> MicroBatcher[str, str]:
    defaults = {"size": lambda job: 1, "kind": "test", "max_wait_s": 60.0, "max_batch": 4, "max_queue": 100}
    return MicroBatcher(run, **{**defaults, **options})


async def until(condition, *, steps: int = 5000) -> None:
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("condition never became true")


def test_concurrent_jobs_are_answered_by_one_run() -> None:
    calls: list[list[str]] = []

    async def scenario() -> list[tuple[str, float]]:
        batcher = make(recording_runner(calls))
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(job) for job in ["a", "b", "c", "d"]))
        finally:
            await batcher.stop()

    outcomes = asyncio.run(scenario())
    assert calls == [["a", "b", "c", "d"]]  # the window is 60 s: it fired because it was full
    assert [result for result, _ in outcomes] == ["A", "B", "C", "D"]
    assert all(queued_ms >= 0 for _, queued_ms in outcomes)


def test_a_batch_never_exceeds_max_batch_texts_and_one_big_job_still_runs() -> None:
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = make(recording_runner(calls), size=len, max_batch=4, max_wait_s=0.0)
        await batcher.start()
        try:
            await asyncio.gather(*(batcher.submit(job) for job in ["aa", "bb", "cc", "dddddd"]))
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert [job for call in calls for job in call] == ["aa", "bb", "cc", "dddddd"]
    assert all(sum(map(len, call)) <= 4 or len(call) == 1 for call in calls)


def test_a_full_queue_answers_overloaded_with_retry_after_and_recovers() -> None:
    calls: list[list[str]] = []
    gate, entered = threading.Event(), threading.Event()

    async def scenario() -> None:
        batcher = make(
            recording_runner(calls, gate=gate, entered=entered),
            max_batch=1,
            max_queue=2,
            max_wait_s=0.0,
            retry_after_s=3,
        )
        await batcher.start()
        first = asyncio.create_task(batcher.submit("first"))
        await until(entered.is_set)  # "first" is running (blocked in the worker thread)
        waiting = [asyncio.create_task(batcher.submit(job)) for job in ("second", "third")]
        await until(lambda: batcher.depth == 2)
        with pytest.raises(OverloadedError) as refused:
            await batcher.submit("fourth")
        assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "3"}
        gate.set()
        assert [(await task)[0] for task in (first, *waiting)] == ["FIRST", "SECOND", "THIRD"]
        assert (await batcher.submit("fifth"))[0] == "FIFTH"  # room again
        await batcher.stop()

    asyncio.run(scenario())


def test_an_error_belongs_to_its_job_and_a_failed_run_to_every_job() -> None:
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = make(recording_runner(calls), max_batch=2)
        await batcher.start()
        good, bad = await asyncio.gather(batcher.submit("good"), batcher.submit("bad1"), return_exceptions=True)
        assert good[0] == "GOOD" and isinstance(bad, ValueError) and "bad job bad1" in str(bad)
        await batcher.stop()

        def explode(jobs: list[str]) -> list[str]:
            raise RuntimeError("model crashed")

        broken = make(explode, max_batch=2)
        await broken.start()
        outcomes = await asyncio.gather(broken.submit("x"), broken.submit("y"), return_exceptions=True)
        assert all(isinstance(o, RuntimeError) and "model crashed" in str(o) for o in outcomes)
        await broken.stop()

    asyncio.run(scenario())
    assert calls == [["good", "bad1"]]


def test_after_stop_new_jobs_are_refused_with_503() -> None:
    async def scenario() -> None:
        batcher = make(recording_runner([]))
        with pytest.raises(NotReadyError):
            await batcher.submit("too early")
        await batcher.start()
        await batcher.stop()
        with pytest.raises(NotReadyError, match="shutting down"):
            await batcher.submit("too late")

    asyncio.run(scenario())


def test_the_window_opens_only_once_requests_arrive_together() -> None:
    """Sequential traffic is never held for the (here 60 s) window; concurrent traffic is gathered again."""
    calls: list[list[str]] = []

    async def scenario() -> None:
        batcher = make(recording_runner(calls), max_batch=3)
        await batcher.start()
        try:
            for job in ["a", "b", "c"]:  # one at a time: each runs at once, alone
                assert (await batcher.submit(job))[0] == job.upper()
            await asyncio.gather(*(batcher.submit(job) for job in ["d", "e", "f"]))  # arrive together: one batch
            lone = asyncio.ensure_future(batcher.submit("g"))  # after a batch of three the window is open again
            await asyncio.sleep(0.2)
            assert not lone.done() and calls[-1] == ["d", "e", "f"]
            await asyncio.gather(lone, batcher.submit("h"), batcher.submit("i"))  # filled up: it fires
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert calls == [["a"], ["b"], ["c"], ["d", "e", "f"], ["g", "h", "i"]]


def test_batches_in_flight_run_at_once_each_on_its_own_worker_thread() -> None:
    both = threading.Barrier(2, timeout=30)  # passes only when two batches run at the same time
    threads: set[str] = set()

    def run(jobs: list[str]) -> list[str]:
        threads.add(threading.current_thread().name)
        both.wait()
        return [job.upper() for job in jobs]

    async def scenario() -> list[str]:
        batcher = make(run, max_batch=1, max_wait_s=0.0, in_flight=2)
        await batcher.start()
        try:
            return [result for result, _ in await asyncio.gather(batcher.submit("a"), batcher.submit("b"))]
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == ["A", "B"]
    assert len(threads) == 2 and all(name.startswith("rr-test") for name in threads)


def test_with_every_worker_busy_the_next_batch_gathers_until_one_is_free() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def run(jobs: list[str]) -> list[str]:
        calls.append(list(jobs))
        if jobs[0] in ("a", "b"):
            gate.wait(timeout=60)
        return [job.upper() for job in jobs]

    async def scenario() -> None:
        batcher = make(run, max_batch=4, max_wait_s=0.0, in_flight=2)
        await batcher.start()
        running = [asyncio.create_task(batcher.submit("a"))]
        await until(lambda: len(calls) == 1)
        running.append(asyncio.create_task(batcher.submit("b")))
        await until(lambda: len(calls) == 2)  # two batches in flight, both blocked
        later = [asyncio.create_task(batcher.submit(job)) for job in ("c", "d", "e")]
        await until(lambda: batcher.depth == 3)
        await asyncio.sleep(0.05)
        assert len(calls) == 2  # no third batch while both workers are busy
        gate.set()
        assert [(await task)[0] for task in (*running, *later)] == ["A", "B", "C", "D", "E"]
        await batcher.stop()

    asyncio.run(scenario())
    assert calls[:2] == [["a"], ["b"]] and calls[2:] == [["c", "d", "e"]]


def test_in_flight_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="in_flight must be >= 1"):
        make(recording_runner([]), in_flight=0)
