"""ModelLock: passes share the cores (one at a time by default), changes run alone, bulk callers step aside."""

from __future__ import annotations

import threading
import time

import pytest

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


def test_two_working_callers_on_two_cores_run_their_passes_at_once_on_one_thread_each() -> None:
    lock = ModelLock(capacity=lambda: 2)
    both_working, both_inside = threading.Barrier(2, timeout=10), threading.Barrier(2, timeout=10)
    granted: list[int] = []

    def caller() -> None:
        with lock.working():
            both_working.wait()
            with lock.hold() as threads:
                granted.append(threads)
                both_inside.wait()  # broken (and the test failed) unless both passes run at once

    callers = [threading.Thread(target=caller) for _ in range(2)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(timeout=30)
    assert granted == [1, 1] and lock.running == 0


def test_a_caller_alone_gets_every_core_and_the_next_pass_waits_for_it() -> None:
    lock = ModelLock(capacity=lambda: 2)
    inside, release = threading.Event(), threading.Event()
    granted: dict[str, int] = {}

    def first() -> None:
        with lock.working(), lock.hold() as threads:
            granted["first"] = threads
            inside.set()
            release.wait(10)

    def second() -> None:
        with lock.working(), lock.hold() as threads:
            granted["second"] = threads

    one = threading.Thread(target=first)
    one.start()
    inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    wait_until(lambda: lock.interactive_waiting == 1)  # every core is taken: it waits
    assert "second" not in granted
    release.set()
    one.join(10)
    two.join(10)
    assert granted == {"first": 2, "second": 2}


def test_a_change_waits_for_the_running_passes_and_holds_new_ones_back() -> None:
    lock = ModelLock(capacity=lambda: 2)
    order: list[str] = []
    inside, release = threading.Event(), threading.Event()

    def running_pass() -> None:
        with lock.hold():
            inside.set()
            release.wait(10)
            order.append("pass")

    def change() -> None:
        with lock.changing():
            order.append("change")

    def later_pass() -> None:
        with lock.hold():
            order.append("later pass")

    first = threading.Thread(target=running_pass)
    first.start()
    inside.wait(10)
    changer = threading.Thread(target=change)
    changer.start()
    wait_until(lambda: lock._changes_waiting == 1)
    later = threading.Thread(target=later_pass)
    later.start()
    wait_until(lambda: lock.interactive_waiting == 1)  # a core is free, but the change goes first
    release.set()
    for thread in (first, changer, later):
        thread.join(10)
    assert order == ["pass", "change", "later pass"]


def test_a_pass_on_the_bulk_copy_waits_for_no_one_and_leaves_one_pass_beside_it() -> None:
    lock = ModelLock(capacity=lambda: 2)
    with lock.hold() as shared:  # a search's pass holds every core
        assert shared == 2
        copy_pass: list[int] = []
        worker = threading.Thread(target=lambda: copy_pass.extend(_beside(lock)))
        worker.start()
        worker.join(10)
        assert copy_pass == [1]  # ran beside it, on the one thread that is counted at least
    inside, release = threading.Event(), threading.Event()

    def copy_running() -> None:
        with lock.beside():
            inside.set()
            release.wait(10)

    worker = threading.Thread(target=copy_running)
    worker.start()
    inside.wait(10)
    with lock.hold() as search:  # a bulk pass on the copy holds every core: a search still runs, on one thread
        assert search == 1
    release.set()
    worker.join(10)


def _beside(lock: ModelLock) -> list[int]:
    with lock.beside() as threads:
        return [threads]


def test_a_thread_in_a_pass_cannot_change_the_model() -> None:
    lock = ModelLock()
    with lock.hold():
        with pytest.raises(RuntimeError, match="cannot change the model"):
            with lock.changing():
                pass
    with lock.changing(), lock.hold():  # a change may run passes itself
        assert lock.running == 1
