"""The ``ExpertSearcher`` deployment: replicas that hold experts by Ray Serve's model multiplexing.

The multiplexed model id is the expert's name. ``@serve.multiplexed`` loads
an expert the first time a replica is asked for it, keeps at most
``max_experts`` per replica and unloads the least recently used; Serve's
router sends a request for expert X to a replica that already holds X when one
exists. Each held expert searches with its own :class:`~app.engine.engine.SearchEngine`
(the one ``rr serve`` runs) on the replica's one base encoder, so its hits are
the single-process service's.

What Serve caches under a name is a slot (:class:`_HeldExpert`) rather than
the expert itself, because the name's meaning can change while Serve holds
it: an admin may unpublish the expert (the slot unloads it; Serve's cache
cannot be told to drop an entry) or replace it with another version (the slot
loads the new one). Each call checks the registry (one ``stat``), and a
background sweep unloads what is no longer published even if nobody asks.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

import numpy as np
from ray import serve

from app.engine.engine import SearchEngine, SearchJob, SearchResult
from app.engine.loading import LoadedExpert, load_expert, open_encoder, unload_expert
from app.engine.retrieval import RetrievalOptions
from app.ray_serve.published import PublishedExpert, PublishedSet
from app.ray_serve.vote_idf import TermStatistics, term_statistics, vote_scores
from app.settings import Settings
from experts import Encoder, UnknownExpertError
from index import FilterExpr, SharedIdf
from router import RoutePolicy

__all__ = ["expert_searcher_class"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: A policy whose ``min_score`` no router score reaches: the engine's own fallback (base vector, no adapter).
_BASE_ENCODER_POLICY = RoutePolicy(min_score=math.inf)


class _Evicted(Exception):
    """The slot was evicted by Serve between being handed out and being used: load it again."""


class _HeldExpert:
    """One expert slot of a replica: an engine holding the expert at most, and the registry entry it came from.

    Uses (searches, evidence) count themselves in; changes of the engine
    (Serve's eviction, an unpublish, a replace) wait until no use is running,
    so a collection is never closed under a search.
    """

    def __init__(
        self, name: str, engine: SearchEngine, entry: PublishedExpert, holding: dict[str, _HeldExpert]
    ) -> None:
        self.name, self.engine, self._holding = name, engine, holding
        #: The registry entry the held expert was loaded from; None once retired.
        self.entry: PublishedExpert | None = entry
        self._users, self.evicted = 0, False
        self._idle = threading.Condition()
        holding[name] = self

    def enter(self) -> None:
        """Count a use in; call it with no ``await`` after getting the slot from Serve, so no eviction comes between."""
        with self._idle:
            if self.evicted:
                raise _Evicted(self.name)
            self._users += 1

    def leave(self) -> None:
        with self._idle:
            self._users -= 1
            self._idle.notify_all()

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._idle:
            self._idle.wait_for(lambda: self._users == 0)
            yield

    def expert(self) -> LoadedExpert:
        """The loaded expert (inside a use); an unpublished slot has none."""
        loaded = self.engine.experts.get(self.name)
        if loaded is None:
            raise UnknownExpertError(f"Expert {self.name!r} is no longer published")
        return loaded

    def reload(self, entry: PublishedExpert, loaded: LoadedExpert) -> None:
        """Hold ``loaded`` (the expert's new version) instead of what the slot holds."""
        with self._exclusive():
            if self.evicted:
                unload_expert(loaded, self.engine.encoder)
                return
            self.engine.add(loaded)  # the old version, if any, is unloaded at once: nothing uses it
            self.entry = entry

    def retire(self) -> None:
        """Unload the expert (unpublished or replaced); the slot stays in Serve's cache, empty, until evicted."""
        with self._exclusive():
            self.entry = None
            if self.name in self.engine.experts:
                self.engine.remove(self.name)
                logger.info("replica unloaded expert %r (no longer published as it was)", self.name)

    def __del__(self) -> None:  # Serve's LRU eviction (and, harmlessly, garbage collection)
        with self._exclusive():
            if self.evicted:
                return
            self.evicted = True
            self.engine.close()
        if self._holding.get(self.name) is self:
            del self._holding[self.name]
        logger.info("replica unloaded expert %r (LRU)", self.name)


def expert_searcher_class(max_experts: int, registry_poll_s: float) -> type:
    """The searcher class, its multiplexing bound to ``max_experts`` (a decorator argument)."""

    class ExpertSearcher:
        def __init__(self, settings: Settings) -> None:
            self.settings = settings
            self.encoder: Encoder = open_encoder(settings)
            self.published = PublishedSet(settings.data_dir)
            self.holding: dict[str, _HeldExpert] = {}
            # One expert per engine: no corpus votes to take (the ingress takes them across experts).
            self._engine_config = replace(settings.engine_config(), evidence="none")
            self._stop = threading.Event()
            threading.Thread(target=self._sweep_loop, name="rr-registry-sweep", daemon=True).start()

        def _load(self, entry: PublishedExpert) -> LoadedExpert:
            return load_expert(entry.path, self.encoder, verify_checksums=self.settings.verify_checksums)

        def _entry(self, name: str) -> PublishedExpert:
            entry = self.published.current().experts.get(name)
            if entry is None:
                held = self.holding.get(name)
                if held is not None:
                    held.retire()
                published = sorted(self.published.current().experts)
                raise UnknownExpertError(f"Expert {name!r} not found. Published experts: {published}")
            return entry

        @serve.multiplexed(max_num_models_per_replica=max_experts)
        async def expert(self, name: str) -> _HeldExpert:
            entry = await asyncio.to_thread(self._entry, name)
            loaded = await asyncio.to_thread(self._load, entry)
            engine = SearchEngine(self.encoder, self._engine_config)
            engine.add(loaded)
            logger.info("replica loaded expert %r v%d", name, entry.version)
            return _HeldExpert(name, engine, entry, self.holding)

        async def _use(self, work: Callable[[_HeldExpert], T]) -> T:
            """Run ``work`` on the slot of the request's expert (its multiplexed model id), current as published."""
            name = serve.get_multiplexed_model_id()
            while True:
                entry = await asyncio.to_thread(self._entry, name)
                held = await self.expert(name)
                if held.entry != entry:  # replaced (or unpublished and published again) since it was loaded
                    loaded = await asyncio.to_thread(self._load, entry)
                    await asyncio.to_thread(held.reload, entry, loaded)
                    continue
                try:
                    held.enter()  # no await since getting it: Serve cannot have evicted it in between
                except _Evicted:
                    continue
                try:
                    return await asyncio.to_thread(work, held)
                finally:
                    held.leave()

        async def search(
            self,
            queries: list[str],
            k: int,
            retrieval: RetrievalOptions | None,
            base_encoder: bool = False,
            filter: FilterExpr | None = None,
        ) -> list[SearchResult]:
            """Search the request's expert; ``base_encoder``: with the base query vector (a ``min_score`` fallback)."""

            def run(held: _HeldExpert) -> list[SearchResult]:
                if not base_encoder:
                    return held.engine.search(
                        queries, k=k, expert=held.name, retrieval=retrieval, filter=filter
                    ).results
                job = SearchJob(tuple(queries), k=k, policy=_BASE_ENCODER_POLICY, retrieval=retrieval, filter=filter)
                (outcome,) = held.engine.search_jobs([job])
                if isinstance(outcome, Exception):
                    raise outcome
                return outcome.results

            return await self._use(run)

        async def scores(
            self,
            base: np.ndarray,
            texts: list[str],
            depth: int,
            kinds: tuple[str, ...],
            shared_idf: SharedIdf | None = None,
        ) -> dict[str, np.ndarray]:
            """The request's expert's top-``depth`` scores for the corpus votes (see :func:`~app.ray_serve.vote_idf.vote_scores`)."""
            return await self._use(
                lambda held: vote_scores(held.expert().view(), base, texts, depth, kinds, shared_idf)
            )

        async def term_statistics(self) -> TermStatistics:
            """The request's expert's BM25 statistics (see :func:`~app.ray_serve.vote_idf.term_statistics`)."""
            return await self._use(lambda held: term_statistics(held.expert().collection))

        def check(self, path: str) -> dict[str, object]:
            """Validate the expert at ``path`` as ``rr serve``'s admin does (load it, every checksum), then unload it.

            Run before the ingress publishes an expert: it proves the searchers'
            node can read it, which the ingress's own node does not show.
            """
            loaded = load_expert(Path(path), self.encoder, verify_checksums=True)
            try:
                return {"name": loaded.name, "documents": len(loaded.documents), "routable": loaded.routable}
            finally:
                unload_expert(loaded, self.encoder)

        def held(self) -> list[str]:
            """The experts this replica holds loaded now (for tests and operators)."""
            return sorted(name for name, held in self.holding.items() if name in held.engine.experts)

        def sweep(self) -> list[str]:
            """Unload every held expert that is no longer published as it was loaded; returns what is held then."""
            experts = self.published.current().experts
            for name, held in list(self.holding.items()):
                if held.entry is not None and held.entry != experts.get(name):
                    held.retire()
            return self.held()

        def _sweep_loop(self) -> None:
            while not self._stop.wait(registry_poll_s):
                try:
                    self.sweep()
                except Exception:  # a registry being rewritten badly must not stop the sweeps
                    logger.exception("registry sweep failed")

        def __del__(self) -> None:
            self._stop.set()

    return ExpertSearcher
