"""Copy-on-write snapshots with leases: old resources are released only after their last reader.

A writer publishes a whole new snapshot; readers take a *lease* on the one
that is current and keep using it, unchanged, however many swaps happen
meanwhile. What a swap drops (an expert's adapter, its open index files) is
*retired*: its release runs once no lease remains on any snapshot older than
the swap, in the thread that gives back the last such lease (or at once, when
there is none). So an unpublished expert disappears for new requests
immediately, and is torn down only when the requests that still hold it are
done.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Generic, TypeVar

from app.engine.loading import LoadedExpert
from index import Collection, CorpusUnion, SharedIdf
from router import Router

logger = logging.getLogger(__name__)

T = TypeVar("T")
Release = Callable[[], None]


@dataclass(eq=False)  # compared by identity
class _Retired:
    generation: int  # the first snapshot that no longer holds the resources
    releases: Sequence[Release]
    done: threading.Event


class SnapshotHolder(Generic[T]):
    """The current snapshot, leases on it and on older ones, and the releases waiting for them.

    >>> holder = SnapshotHolder({"a": 1})
    >>> with holder.lease() as snapshot:
    ...     done = holder.publish({}, releases=[lambda: None])
    ...     snapshot["a"], done.is_set()       # the lease still sees "a"; nothing released yet
    (1, False)
    >>> done.is_set()
    True
    """

    def __init__(self, initial: T) -> None:
        self._current = initial
        self._generation = 0
        self._leases: Counter[int] = Counter()  # generation -> readers holding it
        self._retired: list[_Retired] = []
        self._lock = threading.Lock()

    @property
    def current(self) -> T:
        """The current snapshot, without a lease: for reading metadata that outlives a release."""
        return self._current

    @property
    def in_flight(self) -> int:
        """Leases held right now, on any generation."""
        with self._lock:
            return sum(self._leases.values())

    @property
    def pending_releases(self) -> int:
        """Retired resource sets still waiting for readers to finish."""
        with self._lock:
            return len(self._retired)

    @contextmanager
    def lease(self) -> Iterator[T]:
        """Hold the current snapshot for the duration of the ``with`` block."""
        with self._lock:
            generation, snapshot = self._generation, self._current
            self._leases[generation] += 1
        try:
            yield snapshot
        finally:
            with self._lock:
                self._leases[generation] -= 1
                if not self._leases[generation]:
                    del self._leases[generation]
                due = self._take_due()
            _run(due)

    def publish(self, snapshot: T, *, releases: Sequence[Release] = ()) -> threading.Event:
        """Make ``snapshot`` current; run ``releases`` once no reader holds an older snapshot.

        Returns an event that is set when the releases have run (at once if
        nobody holds an older snapshot). Callers serialise their publishes.
        """
        with self._lock:
            self._generation += 1
            self._current = snapshot
            retired = _Retired(self._generation, list(releases), threading.Event())
            self._retired.append(retired)
            due = self._take_due()
        _run(due)
        return retired.done

    def _take_due(self) -> list[_Retired]:
        """Under the lock: remove and return the retired sets that no lease can still reach."""
        oldest = min(self._leases, default=None)
        due = [r for r in self._retired if oldest is None or oldest >= r.generation]
        if due:
            self._retired = [r for r in self._retired if r not in due]
        return due


def _run(due: list[_Retired]) -> None:
    for retired in due:
        for release in retired.releases:
            try:
                release()
            except Exception:  # one failed release must not leak the others
                logger.exception("releasing a retired resource failed")
        retired.done.set()


def routed_collections(experts: Mapping[str, LoadedExpert], router: Router) -> list[Collection]:
    """The published generations of the routed experts, in the router's order: what corpus votes search."""
    return [experts[name].collection for name in router.experts if name in experts]


def shared_idf_of(collections: Sequence[Collection]) -> SharedIdf:
    """Document frequencies over these collections' BM25 indexes (the router's BM25 votes compare on one IDF)."""
    return SharedIdf.over(c.lexical.document_frequencies() for c in collections if c.has_lexical)


@dataclass(frozen=True)
class Snapshot:
    """The published experts and the router over them: what the engine's holder publishes whole, each publish.

    ``union``: the routed collections' :class:`~index.CorpusUnion`, built after the publish by the
    engine's :class:`~app.engine.union_builder.UnionBuilder` and swapped in with the same experts;
    None until then (every collection is searched on its own: the same votes, slower).
    """

    experts: Mapping[str, LoadedExpert]
    router: Router
    union: CorpusUnion | None = None

    @cached_property
    def shared_idf(self) -> SharedIdf:
        """Document frequencies over the routed experts' BM25 indexes: the router's BM25 votes compare on one IDF.

        The union's, when it was scored with one (so that its BM25 matrix serves the votes); else computed on
        first use per snapshot (a merge or a publish makes a new one). Documents written since an expert's last
        merge are searched but not counted.
        """
        if self.union is not None and self.union.shared_idf is not None:
            return self.union.shared_idf
        return shared_idf_of(routed_collections(self.experts, self.router))
