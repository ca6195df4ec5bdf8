"""Builds the routed collections' :class:`~index.CorpusUnion` in a thread of its own, after each publish.

A publish (an expert added, replaced, removed, rolled back or merged) makes a
snapshot without a union; its searches vote exactly as with one, searching
each collection on its own (:mod:`app.engine.votes`), only slower. The
builder then makes the union of that snapshot's collections, off the search
path and outside the engine's write lock, and the engine swaps in the same
snapshot with it. A burst of publishes (start-up loads every expert one by
one) gives one build: the builder waits until publishes have paused for
``settle`` seconds, and a build whose snapshot was replaced meanwhile is
dropped (the newer one asked for its own).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import threading
import time
import weakref
from collections.abc import Callable

from app.engine.snapshots import Snapshot, routed_collections, shared_idf_of
from app.engine.votes import RouteEvidence
from index import CorpusUnion

__all__ = ["UnionBuilder", "build_union", "return_free_memory"]

logger = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc
    except (OSError, AttributeError):
        return None


def return_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing).

    A union build allocates about as much again as the union in temporaries, and glibc keeps what they
    freed in each thread's heap: ten builds of 23-28 MiB unions left RSS 46-68 MiB higher, and with a trim
    after each, 24-29 MiB (the union itself).
    """
    if (trim := _malloc_trim()) is not None:
        trim(0)


def build_union(
    snapshot: Snapshot,
    evidence: RouteEvidence,
    *,
    shared_idf: bool,
    approximate_above: int | None = None,
    probes: int = 64,
    lexical_approximate_above: int | None = None,
) -> CorpusUnion:
    """The union of ``snapshot``'s routed collections for the corpus votes ``evidence`` takes.

    ``approximate_above``, ``probes``: a dense union of more vectors is an inverted file (near votes, cheaper);
    ``lexical_approximate_above``: a BM25 union of more documents keeps each stem's best postings only.

    Dense when the votes count documents, lexical when they count BM25 hits scored with one shared IDF
    (``shared_idf``; each collection's own IDF is searched collection by collection). The caller holds a
    lease on ``snapshot``, so that none of its collections is unloaded meanwhile.
    """
    dense = evidence in ("documents", "documents+bm25")
    lexical = evidence in ("bm25", "documents+bm25") and shared_idf
    collections = routed_collections(snapshot.experts, snapshot.router)
    shared = shared_idf_of(collections) if lexical else None
    union = CorpusUnion.build(
        collections,
        dense=dense,
        lexical=lexical,
        shared_idf=shared,
        approximate_above=approximate_above,
        probes=probes,
        lexical_approximate_above=lexical_approximate_above,
    )
    return_free_memory()  # the build's temporaries
    return union


class UnionBuilder:
    """Runs ``build`` (a bound method) in a daemon thread after :meth:`request`, once per burst of requests.

    The thread holds its owner weakly, and ends once the owner is gone.

    >>> builder = UnionBuilder(engine.refresh_union)  # doctest: +SKIP
    >>> builder.request()                              # after a publish; returns at once
    """

    def __init__(self, build: Callable[[], None], *, settle: float = 0.1, longest_wait: float = 2.0) -> None:
        self._build = weakref.WeakMethod(build)
        self._settle = settle
        self._longest_wait = longest_wait
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def request(self) -> None:
        """Ask for a build of the current snapshot's union (the thread starts on the first request)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="rr-corpus-union", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            if not self._wake.wait(5.0):
                if self._build() is None:
                    return  # the engine is gone
                continue
            self._wake.clear()
            deadline = time.monotonic() + self._longest_wait
            while time.monotonic() < deadline and self._wake.wait(self._settle):
                self._wake.clear()  # another publish: wait for the burst to end
            build = self._build()
            if build is None:
                return  # the engine is gone
            try:
                build()
            except Exception:  # the votes stay exact without the union; the next publish tries again
                logger.exception("the routed collections' union could not be built; corpus votes search each one")
            del build
