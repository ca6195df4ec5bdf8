"""ModelLock: one holder at a time, re-entrant, and bulk callers step aside for interactive ones."""

from __future__ import annotations

import threading
import time

from experts.model_lock import ModelLock


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_one_holder_at_a_time_and_reentrant() -> None:
    lock = ModelLock()
    inside, peak = 0, 0
    guard = threading.Lock()

    def work(bulk: bool) -> None:
        nonlocal inside, peak
        for _ in range(200):
            with lock.hold(bulk=bulk), lock.hold(bulk=bulk):  # re-entered by its holder
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert peak == 1 and inside == 0


def test_a_waiting_interactive_caller_goes_before_the_next_bulk_pass() -> None:
    lock = ModelLock()
    order: list[str] = []
    bulk_holds = threading.Event()
    release_bulk = threading.Event()

    def bulk() -> None:
        for i in range(3):  # three passes, taking the lock for each
            with lock.hold(bulk=True):
                order.append(f"bulk-{i}")
                if i == 0:
                    bulk_holds.set()
                    release_bulk.wait(10)

    def interactive() -> None:
        with lock.hold():
            order.append("interactive")

    worker = threading.Thread(target=bulk)
    worker.start()
    bulk_holds.wait(10)
    search = threading.Thread(target=interactive)
    search.start()
    wait_until(lambda: lock.interactive_waiting == 1)
    release_bulk.set()
    worker.join(10)
    search.join(10)
    assert order == ["bulk-0", "interactive", "bulk-1", "bulk-2"]


def test_bulk_callers_share_the_lock_when_nobody_interactive_waits() -> None:
    lock = ModelLock()
    passes = {"a": 0, "b": 0}

    def bulk(name: str) -> None:
        for _ in range(50):
            with lock.hold(bulk=True):
                passes[name] += 1

    threads = [threading.Thread(target=bulk, args=(name,)) for name in passes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert passes == {"a": 50, "b": 50} and lock.interactive_waiting == 0


def test_bulk_work_is_not_starved_by_a_steady_stream_of_interactive_callers() -> None:
    lock = ModelLock(patience_s=0.05)
    stop = threading.Event()
    bulk_passes = []

    def interactive() -> None:
        while not stop.is_set():
            with lock.hold():
                time.sleep(0.002)

    streams = [threading.Thread(target=interactive) for _ in range(3)]  # always one waiting
    for stream in streams:
        stream.start()
    started = time.monotonic()
    for _ in range(5):
        with lock.hold(bulk=True):
            bulk_passes.append(time.monotonic() - started)
    stop.set()
    for stream in streams:
        stream.join(timeout=10)
    assert len(bulk_passes) == 5 and bulk_passes[-1] < 5.0, bulk_passes
