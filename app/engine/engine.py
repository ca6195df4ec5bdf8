"""Routed search over the loaded experts, for one query, one request or a micro-batch of requests.

The engine holds the encoder, the search settings and the experts; what one
micro-batch goes through (base pass, corpus votes, router, adapter pass,
searches with filters, fusion) is :class:`app.engine.batch_run.BatchRun`; what a batch of
embedding jobs goes through is :func:`app.engine.embedding.embed_batch`.

The set of experts is an immutable snapshot held by a
:class:`~app.engine.snapshots.SnapshotHolder`: ``add``/``remove`` publish a new one,
a search leases the current one for its whole batch, and an expert that is
removed or replaced is unloaded only when the last search holding it is done.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np

from app.engine.batch_run import BatchRun, unknown_expert
from app.engine.config import EngineConfig, LongQueries
from app.engine.embedding import embed_batch
from app.engine.failures import ExpertFailures
from app.engine.jobs import (
    AUTO_MODEL,
    BASE_MODEL,
    RESERVED_NAMES,
    BatchResult,
    EmbedJob,
    EmbedResult,
    ExpertHit,
    InputType,
    SearchJob,
    SearchResult,
    check_queries,
)
from app.engine.loading import LoadedExpert, load_expert, unload_expert
from app.engine.retrieval import RetrievalOptions
from app.engine.shadow import Shadows
from app.engine.snapshots import Snapshot, SnapshotHolder
from app.engine.union_builder import UnionBuilder, build_union
from app.engine.votes import RouteEvidence, corpus_votes
from app.errors import ExpertUnavailableError
from experts import Encoder, Manifest, list_expert_dirs
from index import FilterExpr, SharedIdf
from router import RouteDecision, RoutePolicy, Router

logger = logging.getLogger(__name__)

# Re-exported: callers have always imported the engine's inputs and outputs from here.
__all__ = [
    "AUTO_MODEL",
    "BASE_MODEL",
    "RESERVED_NAMES",
    "BatchResult",
    "EmbedJob",
    "EmbedResult",
    "ExpertHit",
    "SearchEngine",
    "SearchJob",
    "SearchResult",
]


class SearchEngine:
    """Holds the encoder and a snapshot of loaded experts; thread-safe.

    >>> engine = SearchEngine.open(Path("data/experts"), Encoder())
    >>> engine.search(["lift of a swept wing"], k=5).results[0].decision.experts
    ('cranfield',)
    """

    def __init__(self, encoder: Encoder, config: EngineConfig | None = None, *, take_out_broken: bool = False) -> None:
        """``take_out_broken``: when an expert's files fail during a search, take it out of service (the service:
        it is unloaded and recorded failed, later requests naming it get a 503); False (a one-shot CLI): only
        the searches that touched it fail, with the index's error."""
        config = config or EngineConfig()
        self.config = config
        self.encoder = encoder
        # The config's fields the batch stages read, kept as attributes of their own.
        self.query_max_length = config.query_max_length
        self.long_queries: LongQueries = config.long_queries
        self.evidence: RouteEvidence = config.evidence
        self.vote_depth = config.vote_depth
        self.vote_rule = config.vote_rule
        self.vote_idf = config.vote_idf
        self.vote_exact_max, self.vote_probes = config.vote_exact_max, config.vote_probes
        self.vote_lexical_exact_max = config.vote_lexical_exact_max
        self.retrieval = config.retrieval
        self.policy = config.policy
        empty = Snapshot(
            {}, Router({}, aggregate=config.aggregate, neighbours=config.neighbours, search=config.pilot_search)
        )
        self._holder: SnapshotHolder[Snapshot] = SnapshotHolder(empty)
        self._write_lock = threading.Lock()
        self._document_locks: dict[str, threading.Lock] = {}
        #: The experts that are not serving and why: written here (and by the publisher at start-up), read by all.
        self.failures = ExpertFailures()
        self.take_out_broken = take_out_broken
        #: Builds each new snapshot's corpus union in a thread of its own, after the publish.
        self._unions = UnionBuilder(self.refresh_union)
        #: Candidate versions searched beside serving ones, off the answers' path (POST /admin/experts/{name}/shadow).
        self.shadows = Shadows(encoder, retrieval=config.retrieval, max_length=config.query_max_length)

    @classmethod
    def open(
        cls, root: Path, encoder: Encoder, config: EngineConfig | None = None, *, verify_checksums: bool = True
    ) -> SearchEngine:
        """Load every expert under ``root``; a broken one is reported in ``failures.unavailable``, the rest serve."""
        engine = cls(encoder, config)
        for directory in list_expert_dirs(root):
            try:
                engine.add(load_expert(directory, encoder, verify_checksums=verify_checksums))
            except Exception as exc:  # one bad expert must not stop the others
                logger.error("expert %s is unavailable: %s", directory.path.name, exc)
                engine.failures.mark_unavailable(directory.path.name, str(exc))
        engine.refresh_union()  # now, once for all of them: a one-shot command searches at once
        return engine

    # ------------------------------------------------------------------ experts
    @property
    def experts(self) -> Mapping[str, LoadedExpert]:
        """The published experts (for listings; a search leases its own snapshot)."""
        return self._holder.current.experts

    @property
    def router(self) -> Router:
        """The current router (immutable; a search leases its own snapshot)."""
        return self._holder.current.router

    @property
    def in_flight(self) -> int:
        """Searches holding a snapshot right now."""
        return self._holder.in_flight

    def add(self, expert: LoadedExpert) -> threading.Event:
        """Publish a loaded expert (replacing one of the same name) with one snapshot swap.

        A replaced expert is unloaded once the searches still holding it finish;
        the returned event is set then.
        """
        with self._write_lock:
            old = self._holder.current
            router = old.router.without_expert(expert.name) if expert.name in old.router.experts else old.router
            if expert.pilots is not None:
                router = router.with_expert(expert.name, expert.pilots)
            replaced = old.experts.get(expert.name)
            releases = [partial(unload_expert, replaced, self.encoder)] if replaced is not None else []
            done = self._publish({**old.experts, expert.name: expert}, router, releases)
            self.failures.clear(expert.name)
        expert.documents.on_merged = self._merged  # no cycle: the engine holds experts only through snapshots
        return done

    def _merged(self, documents: object, manifest: Manifest) -> None:
        """A merge published a new manifest version of a loaded expert: show it, without reloading anything.

        The live collection already searches the merged generation; only the
        manifest the listing shows (version, index directory, count) changes.
        """
        with self._write_lock:
            old = self._holder.current
            current = next((e for e in old.experts.values() if e.documents is documents), None)
            if current is None:
                return  # removed or replaced meanwhile
            refreshed = replace(current, manifest=manifest)
            self._publish({**old.experts, current.name: refreshed}, old.router)

    def remove(self, name: str) -> threading.Event:
        """Unpublish an expert at once; it is unloaded when the searches holding it finish (event set then)."""
        with self._write_lock:
            return self._unpublish(name)

    def _unpublish(self, name: str) -> threading.Event:
        """:meth:`remove`'s swap; the caller holds ``_write_lock``."""
        old = self._holder.current
        expert = self._require(old, name)
        router = old.router.without_expert(name) if name in old.router.experts else old.router
        remaining = {key: value for key, value in old.experts.items() if key != name}
        return self._publish(remaining, router, [partial(unload_expert, expert, self.encoder)])

    def broken(self, expert: LoadedExpert, exc: Exception) -> Exception:
        """An expert's files failed during a search: what the searches that touched it get.

        With ``take_out_broken`` the expert is taken out of service, as if it had
        failed at start-up: it stays published, is unloaded (once its searches
        finish) and recorded failed, so ``/readyz`` and ``GET /experts`` say why
        and routing skips it; it is done in a thread of its own, so the search
        that found the fault does not wait for an admin change in progress.
        """
        logger.error("expert %r cannot be searched: %s", expert.name, exc)
        if not self.take_out_broken:
            return exc
        reason = f"its files failed while searching: {exc}"
        threading.Thread(
            target=self._take_out, args=(expert, reason), name=f"rr-take-out-{expert.name}", daemon=True
        ).start()
        return ExpertUnavailableError(
            f"expert {expert.name!r} is published but cannot be searched: {reason}; it is out of service until an "
            "admin publishes it again (POST /admin/experts with replace)",
            details={"expert": expert.name},
        )

    def _take_out(self, expert: LoadedExpert, reason: str) -> None:
        with self._write_lock:  # checked and removed in one step: a replacement published meanwhile stays
            current = self._holder.current.experts.get(expert.name)
            if current is None or current.documents is not expert.documents:
                return  # already taken out, replaced or removed
            self.failures.mark_failed(expert.name, reason)
            self._unpublish(expert.name)
        logger.error("expert %r taken out of service: %s", expert.name, reason)

    def document_lock(self, name: str) -> threading.Lock:
        """Serialises the document writes of expert ``name`` with each other and with its replacement.

        Writers to different experts never wait on each other; searches never take it.
        """
        with self._write_lock:
            return self._document_locks.setdefault(name, threading.Lock())

    def close(self) -> None:
        """Unpublish everything; each expert is unloaded once nothing holds it."""
        with self._write_lock:
            old = self._holder.current
            releases = [partial(unload_expert, expert, self.encoder) for expert in old.experts.values()]
            empty = Router(
                {}, aggregate=old.router.aggregate, neighbours=old.router.neighbours, search=old.router.search
            )
            self._holder.publish(Snapshot({}, empty), releases=releases)
        self.shadows.close()

    def _publish(
        self, experts: Mapping[str, LoadedExpert], router: Router, releases: Sequence[Callable[[], None]] = ()
    ) -> threading.Event:
        """Publish the next snapshot (the caller holds ``_write_lock``); its corpus union follows in the builder."""
        done = self._holder.publish(Snapshot(experts, router), releases=releases)
        self.shadows.retire(experts)  # a shadow ends with the version it shadows
        if self.evidence != "none":
            self._unions.request()
        return done

    def refresh_union(self) -> None:
        """Give the current snapshot the union of its routed collections when it lacks one (the builder's work).

        Built while holding a lease (so no collection of it is unloaded meanwhile) and outside the write lock
        (publishes do not wait for it); swapped in, with the same experts, only if nothing was published since.
        """
        if self.evidence == "none" or self._holder.current.union is not None:
            return
        with self._holder.lease() as snapshot:
            union = build_union(
                snapshot,
                self.evidence,
                shared_idf=self.vote_idf == "shared",
                approximate_above=self.vote_exact_max,
                probes=self.vote_probes,
                lexical_approximate_above=self.vote_lexical_exact_max,
            )
        with self._write_lock:
            if self._holder.current is snapshot:
                self._holder.publish(Snapshot(snapshot.experts, snapshot.router, union))

    @staticmethod
    def _require(snapshot: Snapshot, name: str) -> LoadedExpert:
        try:
            return snapshot.experts[name]
        except KeyError:
            raise unknown_expert(snapshot, name) from None

    # ------------------------------------------------------------------ search
    def route(self, queries: Sequence[str], *, policy: RoutePolicy | None = None) -> list[RouteDecision]:
        """Routing decisions only (no search): the decisions :meth:`search` makes for these queries.

        Pilot scores plus the same corpus votes a search adds (``evidence``,
        ``vote_depth``, one live view per expert, taken as a search batch takes
        them), so ``rr route`` and the demo's routing report show what
        ``/search`` does, not a pilots-only guess.

        >>> engine.route(["lift of a swept wing"])[0].experts  # doctest: +SKIP
        ('cranfield',)
        """
        check_queries(queries)
        with self._holder.lease() as snapshot:
            base = self.encoder.embed(queries, max_length=self.query_max_length, cache=True)
            return self.decide(snapshot, base, list(queries), policy or self.policy)

    def decide(
        self,
        snapshot: Snapshot,
        base: np.ndarray,
        texts: list[str],
        policy: RoutePolicy,
        *,
        only: frozenset[str] | None = None,
    ) -> list[RouteDecision]:
        """The router's decisions on pilot scores plus this engine's corpus votes, as a search batch makes them.

        ``only``: route among these experts alone, with votes from their collections alone.
        """
        router = snapshot.router
        votes = None
        if self.evidence != "none" and len(texts):
            views = [snapshot.experts[name].view() for name in router.routable(only)]
            votes = corpus_votes(
                views,
                base,
                texts,
                evidence=self.evidence,
                depth=self.vote_depth,
                shared_idf=self.shared_idf(snapshot),
                union=snapshot.union,
                rule=self.vote_rule,
            )
        return router.route(base, policy=policy, evidence=votes, only=only)

    def shared_idf(self, snapshot: Snapshot) -> SharedIdf | None:
        """What BM25 votes are scored with: the routed collections' shared IDF, or None for each its own."""
        return snapshot.shared_idf if self.vote_idf == "shared" and "bm25" in self.evidence else None

    def search(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        expert: str | None = None,
        policy: RoutePolicy | None = None,
        retrieval: RetrievalOptions | None = None,
        filter: FilterExpr | None = None,
    ) -> BatchResult:
        """Search a batch of queries, each routed on its own (or all sent to ``expert``); ``policy`` None: the engine's."""
        check_queries(queries)
        job = SearchJob(tuple(queries), k=k, expert=expert, policy=policy, retrieval=retrieval, filter=filter)
        (outcome,) = self.search_jobs([job])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def search_jobs(self, jobs: Sequence[SearchJob]) -> list[BatchResult | Exception]:
        """Answer several requests in one pass of each stage; one outcome per job, in order.

        A job that cannot run (an unknown expert, nothing to route to) gets its
        exception as its outcome; the others are answered as usual.
        """
        # One consistent view for the whole batch; the encoder's passes meanwhile leave this batch's routing and
        # index searches a core (experts.model_lock).
        with self._holder.lease() as snapshot, self.encoder.working():
            return BatchRun(self, snapshot, jobs).run()

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: Sequence[str], *, model: str = BASE_MODEL, input_type: InputType = "query") -> EmbedResult:
        """Embed texts with the base encoder, a named expert's adapter, or the routed expert's (``auto``)."""
        (outcome,) = self.embed_jobs([EmbedJob(tuple(texts), model=model, input_type=input_type)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def embed_jobs(self, jobs: Sequence[EmbedJob]) -> list[EmbedResult | Exception]:
        """One outcome per job; jobs asking for the same model, input type and priority share one pass."""
        with self._holder.lease() as snapshot:
            return embed_batch(self, snapshot, jobs)
