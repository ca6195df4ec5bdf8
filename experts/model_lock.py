"""One forward pass at a time on the shared model, with interactive callers ahead of bulk ones.

Which adapter a pass uses is state of the one shared model, so passes (and
adapter changes) never overlap. A plain lock would also serialise *whole
calls*: a search arriving while a 2048-input embeddings request runs would
wait for all of it. So callers take the lock per pass, and a **bulk** caller
(a large embeddings request, a document write) steps aside between its
passes while an interactive one (a search) waits: the search waits for at
most one bulk pass, not for the whole request. A bulk pass of 512 padded
tokens takes about 100 ms on one CPU thread, so the service's encoder also
keeps a copy of the base model for bulk base passes (``Encoder(bulk_copy=True)``),
which then do not take this lock at all (docs/benchmarks.md, section 20).

Bulk work is not starved under a steady stream of searches: a bulk caller
that has waited ``patience_s`` goes next, ahead of interactive callers that
arrive meanwhile, so it gets at least one pass per ``patience_s``.

Re-entrant for the thread that holds it, like the ``RLock`` it replaces.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


class ModelLock:
    """``with lock.hold(bulk=False): ...`` around each forward pass or change of the model's adapters."""

    def __init__(self, *, patience_s: float = 0.2) -> None:
        self.patience_s = patience_s
        self._state = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._interactive_waiting = 0
        self._bulk_overdue = 0  # bulk callers past their patience: they go before new interactive ones

    @property
    def interactive_waiting(self) -> int:
        """Interactive callers waiting now (read without the lock: for metrics and tests)."""
        return self._interactive_waiting

    @contextmanager
    def hold(self, *, bulk: bool = False) -> Iterator[None]:
        me = threading.get_ident()
        with self._state:
            if self._owner == me:
                self._depth += 1
            elif bulk:
                self._wait_bulk()
                self._owner, self._depth = me, 1
            else:
                self._interactive_waiting += 1
                try:
                    while self._owner is not None or self._bulk_overdue:
                        self._state.wait()
                finally:
                    self._interactive_waiting -= 1
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._state:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._state.notify_all()

    def _wait_bulk(self) -> None:
        """Wait (holding ``_state``) until the lock is free and no interactive caller waits, or patience ran out."""
        deadline = time.monotonic() + self.patience_s
        overdue = False
        try:
            while self._owner is not None or (self._interactive_waiting and not overdue):
                remaining = deadline - time.monotonic()
                if not overdue and remaining <= 0:
                    overdue = True
                    self._bulk_overdue += 1
                    continue
                self._state.wait(None if overdue else remaining)
        finally:
            if overdue:
                self._bulk_overdue -= 1
