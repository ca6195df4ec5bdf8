"""Forward passes share the model and the cores; adapter changes hold it alone; interactive callers go first.

A pass only reads the model's weights, and which adapters it uses (and the
layer it resumes from) is state of its own thread (:mod:`experts.lora`,
:mod:`experts.layer_resume`), so several passes may run at once on the one
model. What they share is the cores. Two passes at once on one thread each
did 17-44% more passes a second than one pass at a time on two threads
(docs/benchmarks.md, section 26), but one pass alone is faster on every core.
So the lock admits a pass while a core is free (``capacity()``: the cores
the encoder may use now) and **grants it threads**: the free cores, split
among the callers that work beside it (:meth:`ModelLock.working`: a search
batch between its passes runs its routing and index searches on a core too).
One caller alone gets every core; two callers at once get one each.

Adding or removing an adapter changes the model's hooks, so it holds the lock
alone (:meth:`ModelLock.changing`): it waits for the running passes, and new
passes wait for it.

Interactive callers go first. A **bulk** caller (a large embeddings request,
a document write) takes the lock per pass and steps aside while an
interactive one (a search) waits: the search waits for at most the bulk
passes already running, not for the whole request. The service's encoder
also keeps a copy of the base model for bulk base passes
(``Encoder(bulk_copy=True)``); those take no turn at all, but count the
cores they use (:meth:`ModelLock.beside`), so the passes beside them get fewer
threads (docs/benchmarks.md, section 20).

Bulk work is not starved under a steady stream of searches: a bulk caller
that has waited ``patience_s`` goes next, ahead of interactive callers that
arrive meanwhile, so it gets at least one pass per ``patience_s``.

Re-entrant for a thread that holds it (a pass, or a change).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class ModelLock:
    """``with lock.hold(bulk=False) as threads: ...`` around each forward pass; ``with lock.changing():`` around a change.

    ``capacity``: how many cores passes may use now, at least 1 (read as each
    pass is admitted). The default, 1, runs one pass at a time.
    """

    def __init__(self, *, patience_s: float = 0.2, capacity: Callable[[], int] = lambda: 1) -> None:
        self.patience_s = patience_s
        self._capacity = capacity
        self._state = threading.Condition(threading.Lock())
        self._passes: dict[int, list[int]] = {}  # thread -> [depth, threads granted, on the shared model] of its pass
        self._in_use = 0  # threads granted to running passes, beside ones included
        self._shared = 0  # passes running on the shared model
        self._changer: int | None = None  # the thread changing the model
        self._change_depth = 0
        self._changes_waiting = 0
        self._callers: dict[int, int] = {}  # thread -> depth of its ``working()`` scopes
        self._interactive_waiting = 0
        self._bulk_overdue = 0  # bulk callers past their patience: they go before new interactive ones

    @property
    def interactive_waiting(self) -> int:
        """Interactive callers waiting now (read without the lock: for metrics and tests)."""
        return self._interactive_waiting

    @property
    def running(self) -> int:
        """Passes running now, beside ones included (read without the lock: for tests)."""
        return len(self._passes)

    @contextmanager
    def working(self) -> Iterator[None]:
        """Around a caller's work between its passes (a search batch): passes beside it leave it a core."""
        me = threading.get_ident()
        with self._state:
            self._callers[me] = self._callers.get(me, 0) + 1
        try:
            yield
        finally:
            with self._state:
                self._callers[me] -= 1
                if not self._callers[me]:
                    del self._callers[me]

    @contextmanager
    def hold(self, *, bulk: bool = False) -> Iterator[int]:
        """One forward pass on the shared model; yields the threads it may use."""
        me = threading.get_ident()
        with self._state:
            if me in self._passes or self._changer == me:  # re-entered
                held = self._passes.setdefault(me, [0, 0, 0])
                held[0] += 1
            else:
                self._wait_turn(bulk)
                held = self._admit(me, shared=True)
        try:
            yield max(1, held[1])
        finally:
            self._release(me)

    @contextmanager
    def beside(self) -> Iterator[int]:
        """A pass on another copy of the model: it waits for no one, and the threads it is granted count as used."""
        me = threading.get_ident()
        with self._state:
            held = self._admit(me, shared=False)
        try:
            yield held[1]
        finally:
            self._release(me)

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Around a change of the model (adding or removing an adapter): no pass runs meanwhile."""
        me = threading.get_ident()
        with self._state:
            if me in self._passes and self._changer != me:
                raise RuntimeError("a thread running a forward pass cannot change the model")
            if self._changer != me:
                self._changes_waiting += 1
                try:
                    while self._changer is not None or self._passes:
                        self._state.wait()
                finally:
                    self._changes_waiting -= 1
                self._changer = me
            self._change_depth += 1
        try:
            yield
        finally:
            with self._state:
                self._change_depth -= 1
                if not self._change_depth:
                    self._changer = None
                    self._state.notify_all()

    def _admit(self, me: int, *, shared: bool) -> list[int]:
        """Start ``me``'s pass (holding ``_state``): the free cores, split among the callers working beside it."""
        free = max(1, self._capacity() - self._in_use)
        others = sum(1 for caller in self._callers if caller != me and caller not in self._passes)
        held = self._passes[me] = [1, max(1, free // (1 + others)), int(shared)]
        self._in_use += held[1]
        self._shared += held[2]
        return held

    def _release(self, me: int) -> None:
        with self._state:
            held = self._passes[me]
            held[0] -= 1
            if held[0] == 0:
                del self._passes[me]
                self._in_use -= held[1]
                self._shared -= held[2]
                self._state.notify_all()

    def _may_start(self) -> bool:
        """Whether a pass may start now (holding ``_state``): no change runs or waits, and a core is free.

        One pass on the shared model may always run beside passes on the bulk copy (with one thread),
        so a search never waits for a bulk pass there.
        """
        if self._changer is not None or self._changes_waiting:
            return False
        return not self._shared or self._in_use < self._capacity()

    def _wait_turn(self, bulk: bool) -> None:
        """Wait (holding ``_state``) until this pass may start, interactive callers first."""
        if not bulk:
            self._interactive_waiting += 1
            try:
                while not self._may_start() or self._bulk_overdue:
                    self._state.wait()
            finally:
                self._interactive_waiting -= 1
            return
        deadline = time.monotonic() + self.patience_s
        overdue = False
        try:
            while not self._may_start() or (self._interactive_waiting and not overdue):
                remaining = deadline - time.monotonic()
                if not overdue and remaining <= 0:
                    overdue = True
                    self._bulk_overdue += 1
                    continue
                self._state.wait(None if overdue else remaining)
        finally:
            if overdue:
                self._bulk_overdue -= 1
