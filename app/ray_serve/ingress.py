"""What one Ray Serve ingress replica does for ``POST /search``: embed, route, and ask the searcher replicas.

The flow of a request, beside ``rr serve``'s (:mod:`app.engine.engine`):

1. one base-encoder pass over its queries (the router's input);
2. the corpus votes (``RR_ROUTER_EVIDENCE``, ``documents+bm25`` by default):
   the ingress holds no collection, so it asks the searcher holding each
   routable expert for that expert's top-``RR_ROUTER_VOTE_DEPTH`` dense scores
   (with the base vectors) and BM25 scores (one call per expert, all at once)
   and merges them with :func:`router.expert_list_votes`, as the engine does over
   its own collections; BM25 is scored with the routed experts' pooled IDF
   (``RR_ROUTER_VOTE_IDF=shared``, :mod:`app.ray_serve.vote_idf`); the decisions are ``rr serve``'s;
3. the router, with the request's policy (``top_k``, ``fanout_margin``,
   ``min_score``);
4. per (expert, adapter or base vector), one call to the searcher replicas
   with the expert's name as multiplexed model id; a ``fallback`` row is
   searched with the base vector, as the engine does;
5. reciprocal rank fusion for fanned-out rows, and ``rr serve``'s response.

The published set and the router follow the registry file
(:class:`~app.ray_serve.published.PublishedSet`): pilots are re-read only for experts
whose entry changed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from ray.exceptions import RayTaskError
from ray.serve.handle import DeploymentHandle

from app.api.schemas import SearchRequest, SearchResponse
from app.engine.engine import SearchEngine
from app.engine.jobs import ExpertHit, SearchResult
from app.engine.loading import open_encoder
from app.engine.merging import list_depth, merge_expert_lists
from app.engine.retrieval import RetrievalOptions, requested_retrieval
from app.errors import ExpertUnavailableError, FeatureUnavailableError, PayloadTooLargeError, ServiceError
from app.publishing.publisher import ExpertPublisher
from app.ray_serve.admin import IngressAdmin
from app.ray_serve.metrics import IngressMetrics
from app.ray_serve.published import Published, PublishedExpert, PublishedSet
from app.ray_serve.vote_idf import VoteIdf
from app.settings import Settings
from experts import ExpertDir, ExpertError, UnknownExpertError
from index import FilterExpr, IndexStoreError, InvalidFilterError, NoLexicalIndexError, SharedIdf
from router import (
    NoExpertsError,
    PilotGroups,
    RouteDecision,
    RoutePolicy,
    Router,
    RouterError,
    check_pilots,
    expert_list_votes,
    forced_decision,
)

__all__ = ["Ingress", "RoutingView"]

logger = logging.getLogger(__name__)

#: Errors a searcher replica raises that mean the same on the ingress (the rest: the expert is unavailable).
_PASSED_THROUGH = (UnknownExpertError, NoLexicalIndexError, NoExpertsError, InvalidFilterError, ServiceError)
#: What a replica raises when an expert's files are broken: it is taken out of service until published again.
_BROKEN_FILES = (ExpertError, IndexStoreError, RouterError, OSError)


@dataclass(frozen=True)
class RoutingView:
    """The published set and the router built from it; ``failed``: published experts whose pilots could not be read."""

    published: Published
    router: Router
    failed: dict[str, str] = field(default_factory=dict)


def _elapsed(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


def _cause(exc: BaseException) -> BaseException:
    """The replica's own exception inside Ray's wrapper."""
    cause = getattr(exc, "cause", None) if isinstance(exc, RayTaskError) else None
    return cause if isinstance(cause, BaseException) else exc


class Ingress:
    """One ingress replica's state: settings, base encoder, routing view, searcher handle, metrics."""

    def __init__(self, settings: Settings, searcher: DeploymentHandle) -> None:
        self.settings = settings
        self.searcher = searcher
        self.encoder = open_encoder(settings)
        self.published = PublishedSet(settings.data_dir)
        self.vote_idf = VoteIdf()
        self._lock = threading.Lock()
        self._pilots: dict[PublishedExpert, np.ndarray | None] = {}
        #: Published experts whose files failed on a searcher replica, by the entry that failed, with the reason.
        self._broken: dict[PublishedExpert, str] = {}
        self._pilot_groups: dict[str, PilotGroups] = {}
        self._view = self._build(self.published.current())
        self.metrics = IngressMetrics(
            published=lambda: len(self._view.published.experts), routable=lambda: len(self._view.router)
        )
        # An empty engine: the publisher is there for rr serve's path rules only (IngressAdmin publishes).
        paths = ExpertPublisher(SearchEngine(self.encoder), settings.data_dir, keep_versions=settings.keep_versions)
        self.admin = IngressAdmin(self.published, paths, check=self._check, sweep=self._sweep)

    # ------------------------------------------------------------------ routing view
    def view(self) -> RoutingView:
        """The routing view for the registry as it is now (rebuilt when the registry changed)."""
        published = self.published.current()
        with self._lock:
            if published.signature != self._view.published.signature:
                self._view = self._build(published)
            return self._view

    def _build(self, published: Published) -> RoutingView:
        """The router over the published experts with pilots; pilots are read only for new or changed entries."""
        routable: dict[str, np.ndarray] = {}
        failed: dict[str, str] = {}
        pilots_of: dict[PublishedExpert, np.ndarray | None] = {}
        for name, entry in sorted(published.experts.items()):
            if entry in self._broken:
                failed[name] = self._broken[entry]
                continue
            try:
                pilots = self._pilots[entry] if entry in self._pilots else self._read_pilots(entry)
            except (ExpertError, RouterError, OSError, ValueError) as exc:
                logger.error("published expert %r cannot be routed to: %s", name, exc)
                failed[name] = str(exc)
                continue
            pilots_of[entry] = pilots
            if pilots is not None:
                routable[name] = pilots
        self._pilots = pilots_of
        config = self.settings.engine_config()
        router = Router(
            routable,
            aggregate=config.aggregate,
            neighbours=config.neighbours,
            search=config.pilot_search,
            groups=self._pilot_groups,  # the last router's: only new pilots are grouped
        )
        self._pilot_groups = router.groups
        return RoutingView(published, router, failed)

    def _read_pilots(self, entry: PublishedExpert) -> np.ndarray | None:
        directory = ExpertDir(entry.path)
        manifest = directory.read_manifest()
        if manifest.pilots is None:
            return None
        return check_pilots(directory.read_pilots(manifest), dim=self.encoder.dim, name=entry.name)

    # ------------------------------------------------------------------ search
    async def search(self, body: SearchRequest) -> SearchResponse:
        """``rr serve``'s ``POST /search``: routed here, searched by the replicas holding each expert."""
        started = time.perf_counter()
        if body.rerank is not None:  # refused, not ignored: the client would take routed order for reranked order
            raise FeatureUnavailableError(
                "reranking is served by `rr serve` only: this is the Ray Serve ingress, which holds no cross-encoder; "
                "send the search without `rerank`, or to `rr serve` with RR_RERANKER set"
            )
        texts = body.texts
        limit = self.settings.max_queries
        if len(texts) > limit:
            raise PayloadTooLargeError(f"{len(texts)} queries in one request; the limit is {limit} (RR_MAX_QUERIES)")
        view = await asyncio.to_thread(self.view)
        timings: dict[str, float] = {}
        if body.expert is not None:
            if body.expert not in view.published.experts:
                published = sorted(view.published.experts)
                raise UnknownExpertError(f"Expert {body.expert!r} not found. Published experts: {published}")
            if body.expert in view.failed:
                raise ExpertUnavailableError(
                    f"expert {body.expert!r} is published but out of service: {view.failed[body.expert]}; "
                    "an admin can fix its files and publish it again with replace",
                    details={"expert": body.expert},
                )
            decisions = [forced_decision(body.expert)] * len(texts)
        else:
            decisions = await self._route(view, texts, body, timings)
        clock = time.perf_counter()
        retrieval = requested_retrieval(mode=body.mode, fusion=body.fusion, weight=body.hybrid_weight)
        results = await self._search(texts, decisions, body.k, retrieval, body.filter, self._policy(body))
        timings["search_ms"] = _elapsed(clock)
        timings["total_ms"] = _elapsed(started)
        self.metrics.observe_search(results, timings)
        return SearchResponse.of(results, timings_ms=timings, requests=1, queries=len(texts))

    async def _route(
        self, view: RoutingView, texts: list[str], body: SearchRequest, timings: dict[str, float]
    ) -> list[RouteDecision]:
        if not len(view.router):
            raise NoExpertsError("no experts to route to: add an expert with pilots first, or name one with `expert`")
        clock = time.perf_counter()
        max_length = self.settings.query_max_length
        base = await asyncio.to_thread(self.encoder.embed, texts, max_length=max_length, cache=True)
        timings["base_ms"] = _elapsed(clock)
        clock = time.perf_counter()
        evidence = await self._evidence(view, base, texts)
        timings["evidence_ms"] = _elapsed(clock)
        clock = time.perf_counter()
        decisions = view.router.route(base, policy=self._policy(body), evidence=evidence)
        timings["route_ms"] = _elapsed(clock)
        return decisions

    def _policy(self, body: SearchRequest) -> RoutePolicy:
        """The request's routing over the service's default, as ``rr serve`` takes it."""
        return body.route.policy(self.settings.route_policy())

    async def _evidence(self, view: RoutingView, base: np.ndarray, texts: list[str]) -> np.ndarray | None:
        """(n, E) corpus votes, columns in the router's order, as ``SearchEngine`` takes them; None when off."""
        evidence = self.settings.router_evidence
        if evidence == "none":
            return None
        experts = view.router.experts
        kinds = tuple(evidence.split("+"))
        depth = self.settings.router_vote_depth
        shared = None
        if "bm25" in kinds and self.settings.router_vote_idf == "shared":
            shared = await self._vote_idf(view, texts)
        answers = await asyncio.gather(
            *(self._call(name, "scores", base, texts, depth, kinds, shared) for name in experts)
        )
        votes = np.zeros((len(texts), len(experts)), dtype=np.float32)
        rule = self.settings.router_vote_rule
        for kind in kinds:
            scores = [answer[kind] for answer in answers]
            votes += expert_list_votes(
                scores, depth=depth, rule=rule, kind="dense" if kind == "documents" else "lexical"
            )
        return votes

    async def _vote_idf(self, view: RoutingView, texts: list[str]) -> SharedIdf:
        """The routed experts' pooled IDF for these queries' stems; statistics asked once per published version."""
        keys = [(name, view.published.experts[name]) for name in view.router.experts]
        missing = self.vote_idf.missing(keys)
        if missing:
            found = await asyncio.gather(*(self._call(name, "term_statistics") for name, _ in missing))
            for key, statistics in zip(missing, found, strict=True):
                self.vote_idf.remember(key, statistics)
            self.vote_idf.forget_all_but(keys)
        return self.vote_idf.for_queries(keys, texts)

    async def _search(
        self,
        texts: list[str],
        decisions: list[RouteDecision],
        k: int,
        retrieval: RetrievalOptions | None,
        filter: FilterExpr | None,
        policy: RoutePolicy,
    ) -> list[SearchResult]:
        rows_of: dict[tuple[str, bool], list[int]] = defaultdict(list)  # (expert, base vector) -> rows
        for row, decision in enumerate(decisions):
            for name in decision.experts:
                rows_of[name, not decision.use_adapters].append(row)
        groups = list(rows_of.items())
        # One depth for the request's calls: a score merge's MERGE_DEPTH if any row merges; the rest are cut back to k.
        depth = max(list_depth(k, decision, policy) for decision in decisions)
        answers = await asyncio.gather(
            *(
                self._call(name, "search", [texts[r] for r in rows], depth, retrieval, base, filter)
                for (name, base), rows in groups
            )
        )
        found: dict[tuple[int, str], SearchResult] = {}
        for ((name, _), rows), results in zip(groups, answers, strict=True):
            for row, result in zip(rows, results, strict=True):
                found[row, name] = result
        # A list's dense share in a score merge: the request's fusion over the settings' (a replica's per-expert
        # tuned weight is not known here, unlike in rr serve), in the mode the list was searched in.
        default = self.settings.engine_config().retrieval
        fusion = retrieval.over(default) if retrieval is not None else default
        out = []
        for row, decision in enumerate(decisions):
            lists: list[list[ExpertHit]] = [found[row, name].hits for name in decision.experts]
            shares = [replace(fusion, mode=found[row, name].mode).dense_share for name in decision.experts]
            hits = merge_expert_lists(lists, shares, decision, policy, k=k)
            first = found[row, decision.experts[0]]
            counts = [found[row, name].matched for name in decision.experts]
            matched = None if all(count is None for count in counts) else sum(count or 0 for count in counts)
            out.append(replace(first, query=texts[row], hits=hits, decision=decision, matched=matched))
        return out

    async def _call(self, expert: str, method: str, *args: Any) -> Any:
        """One call to the searcher replicas for ``expert``, timed and counted; their errors as the service's."""
        started = time.perf_counter()
        ok = False
        try:
            handle = self.searcher.options(multiplexed_model_id=expert)
            result = await getattr(handle, method).remote(*args)
            ok = True
            return result
        except Exception as exc:
            cause = _cause(exc)
            if isinstance(cause, _PASSED_THROUGH):
                raise cause from None
            reason = f"a searcher replica could not serve it: {type(cause).__name__}: {cause}"
            logger.error("expert %r (%s): %s", expert, method, reason)
            if isinstance(cause, _BROKEN_FILES):
                self._take_out_of_service(expert, reason)
            raise ExpertUnavailableError(
                f"expert {expert!r} is published but {reason}", details={"expert": expert}
            ) from None
        finally:
            self.metrics.observe_call(expert, method, time.perf_counter() - started, ok=ok)

    async def _check(self, path: str) -> dict[str, Any]:
        try:
            return await self.searcher.check.remote(path)
        except Exception as exc:
            raise _cause(exc) from None

    async def _sweep(self, name: str) -> list[str]:
        """Ask the replica Serve sends ``name`` to (one holding it, if any) to unload what is unpublished."""
        try:
            return await self.searcher.options(multiplexed_model_id=name).sweep.remote()
        except Exception as exc:
            raise _cause(exc) from None

    def _take_out_of_service(self, name: str, reason: str) -> None:
        """Route without ``name`` until it is published again (a new registry entry), as ``rr serve`` does.

        Without this, with corpus votes on, one broken expert would fail every
        routed request (each asks every expert). ``/readyz`` reports it.
        """
        with self._lock:
            entry = self._view.published.experts.get(name)
            if entry is None:
                return
            self._broken = {**self._broken, entry: reason}
            self._view = self._build(self._view.published)

    # ------------------------------------------------------------------ readiness
    async def not_ready(self) -> tuple[str, dict[str, Any]] | None:
        """None when the registry, every published expert's pilots and a searcher replica answer; else why not."""
        view = await asyncio.to_thread(self.view)
        details: dict[str, Any] = {"experts": sorted(set(view.published.experts) - set(view.failed))}
        if view.failed:
            details["failed"] = dict(sorted(view.failed.items()))
            reasons = "; ".join(f"{name}: {reason}" for name, reason in sorted(view.failed.items()))
            return f"published experts cannot be routed to: {reasons}", details
        try:
            await asyncio.wait_for(self.searcher.held.remote(), timeout=5)
        except Exception as exc:  # noqa: BLE001  (a timeout, or no replica up)
            return f"no searcher replica answered: {type(exc).__name__}: {exc}", details
        return None
