"""Routed search over the loaded experts, for one query or a batch.

Flow of a batch: one base-encoder pass → router → one mixed-adapter pass for
the rows that need an adapter → one FAISS search per expert → documents →
fusion for fanned-out rows. The set of experts is an immutable snapshot that
``add``/``remove`` replace whole, so a search in flight keeps a consistent
view while experts change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.loading import LoadedExpert, load_expert, unload_expert
from experts import Encoder, UnknownExpertError, list_expert_dirs
from index import Hit, reciprocal_rank_fusion
from router import RouteDecision, RoutePolicy, Router, forced_decision

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExpertHit:
    """A hit and the expert (collection) it came from: ids are unique only within a collection."""

    expert: str
    id: str
    score: float
    title: str
    text: str
    metadata: dict[str, object] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, expert: str, hit: Hit) -> ExpertHit:
        return cls(expert, hit.id, hit.score, hit.title, hit.text, hit.metadata)


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query, and the routing decision that produced them."""

    query: str
    hits: list[ExpertHit]
    decision: RouteDecision


@dataclass(frozen=True)
class BatchResult:
    results: list[SearchResult]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Snapshot:
    experts: Mapping[str, LoadedExpert]
    router: Router


class SearchEngine:
    """Holds the encoder and a snapshot of loaded experts; thread-safe.

    >>> engine = SearchEngine.open(Path("data/experts"), Encoder())
    >>> engine.search(["lift of a swept wing"], k=5).results[0].decision.experts
    ('cranfield',)
    """

    def __init__(self, encoder: Encoder, *, query_max_length: int = 64, aggregate: str = "max") -> None:
        self.encoder = encoder
        self.query_max_length = query_max_length
        self._aggregate = aggregate
        self._snapshot = _Snapshot({}, Router({}, aggregate=aggregate))
        self._write_lock = threading.Lock()
        #: Experts found on disk that could not be loaded, with the reason.
        self.unavailable: dict[str, str] = {}

    @classmethod
    def open(cls, root: Path, encoder: Encoder, *, verify_checksums: bool = True, **options: object) -> SearchEngine:
        """Load every expert under ``root``; a broken one is reported in ``unavailable``, the rest serve."""
        engine = cls(encoder, **options)  # type: ignore[arg-type]
        for directory in list_expert_dirs(root):
            try:
                engine.add(load_expert(directory, encoder, verify_checksums=verify_checksums))
            except Exception as exc:  # one bad expert must not stop the others
                logger.error("expert %s is unavailable: %s", directory.path.name, exc)
                engine.unavailable[directory.path.name] = str(exc)
        return engine

    # ------------------------------------------------------------------ experts
    @property
    def experts(self) -> Mapping[str, LoadedExpert]:
        return self._snapshot.experts

    def add(self, expert: LoadedExpert) -> None:
        """Publish a loaded expert (replacing one of the same name) with one snapshot swap."""
        with self._write_lock:
            old = self._snapshot
            experts = {**old.experts, expert.name: expert}
            router = old.router.without_expert(expert.name) if expert.name in old.router.experts else old.router
            if expert.pilots is not None:
                router = router.with_expert(expert.name, expert.pilots)
            self._snapshot = _Snapshot(experts, router)
            self.unavailable.pop(expert.name, None)
            replaced = old.experts.get(expert.name)
        if replaced is not None:
            unload_expert(replaced, self.encoder)

    def remove(self, name: str) -> None:
        """Unpublish and unload an expert."""
        with self._write_lock:
            old = self._snapshot
            self._require(old, name)
            router = old.router.without_expert(name) if name in old.router.experts else old.router
            self._snapshot = _Snapshot({k: v for k, v in old.experts.items() if k != name}, router)
        unload_expert(old.experts[name], self.encoder)

    def close(self) -> None:
        for name in list(self.experts):
            self.remove(name)

    @staticmethod
    def _require(snapshot: _Snapshot, name: str) -> LoadedExpert:
        try:
            return snapshot.experts[name]
        except KeyError:
            raise UnknownExpertError(
                f"Expert {name!r} not found. Published experts: {sorted(snapshot.experts)}"
            ) from None

    # ------------------------------------------------------------------ search
    def route(self, queries: Sequence[str], *, policy: RoutePolicy = RoutePolicy()) -> list[RouteDecision]:
        """Routing decisions only (no search): what ``rr route`` shows."""
        _check_queries(queries)
        base = self.encoder.embed(queries, max_length=self.query_max_length)
        return self._snapshot.router.route(base, policy=policy)

    def search(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        expert: str | None = None,
        policy: RoutePolicy = RoutePolicy(),
    ) -> BatchResult:
        """Search a batch of queries, each routed on its own (or all sent to ``expert``)."""
        _check_queries(queries)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        snapshot = self._snapshot  # one consistent view for the whole batch
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        if expert is not None:
            self._require(snapshot, expert)
            decisions = [forced_decision(expert)] * len(queries)
            base = None
        else:
            base = self.encoder.embed(queries, max_length=self.query_max_length)
            timings["base_ms"] = _elapsed(clock)
            clock = time.perf_counter()
            decisions = snapshot.router.route(base, policy=policy)
            timings["route_ms"] = _elapsed(clock)
            clock = time.perf_counter()

        # (row, expert) pairs to search, and the query vector each one uses.
        jobs = [(row, name) for row, decision in enumerate(decisions) for name in decision.experts]
        adapter_of = {
            (row, name): snapshot.experts[name].adapter if decisions[row].use_adapters else None for row, name in jobs
        }
        vectors = self._query_vectors(queries, jobs, adapter_of, base)
        timings["expert_ms"] = _elapsed(clock)
        clock = time.perf_counter()

        by_expert: dict[str, list[int]] = defaultdict(list)
        for position, (_, name) in enumerate(jobs):
            by_expert[name].append(position)
        hits_of: dict[int, list[ExpertHit]] = {}
        for name, positions in by_expert.items():
            found = snapshot.experts[name].collection.search(vectors[positions], k)
            hits_of.update((p, [ExpertHit.of(name, hit) for hit in hits]) for p, hits in zip(positions, found))
        timings["search_ms"] = _elapsed(clock)

        results = []
        for row, decision in enumerate(decisions):
            lists = [hits_of[p] for p, (r, _) in enumerate(jobs) if r == row]
            hits = lists[0] if len(lists) == 1 else reciprocal_rank_fusion(lists, limit=k, key=_expert_and_id)
            results.append(SearchResult(queries[row], hits, decision))
        return BatchResult(results, timings)

    def _query_vectors(
        self,
        queries: Sequence[str],
        jobs: list[tuple[int, str]],
        adapter_of: dict[tuple[int, str], str | None],
        base: np.ndarray | None,
    ) -> np.ndarray:
        """One vector per job: the base vector, or one mixed-adapter pass for all adapter rows."""
        need_pass = [i for i, job in enumerate(jobs) if adapter_of[job] is not None or base is None]
        vectors = np.empty((len(jobs), self.encoder.dim), dtype=np.float32)
        if base is not None:
            vectors[:] = base[[row for row, _ in jobs]]
        if need_pass:
            texts = [queries[jobs[i][0]] for i in need_pass]
            names = [adapter_of[jobs[i]] for i in need_pass]
            vectors[need_pass] = self.encoder.embed(texts, expert=names, max_length=self.query_max_length)
        return vectors


def _expert_and_id(hit: ExpertHit) -> tuple[str, str]:
    return hit.expert, hit.id


def _check_queries(queries: Sequence[str]) -> None:
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError("queries must be a list of strings")
    for position, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query {position} is empty: every query needs some text")


def _elapsed(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
