"""Serving on Ray Serve: routed search where each replica holds only the experts it is asked for.

Two deployments (the optional ``[ray]`` extra):

- ``RoutedSearch``, the HTTP ingress (FastAPI, the service's own ``SearchRequest``
  / ``SearchResponse`` schemas and error bodies): embeds the queries with the
  base encoder and routes them on the experts' pilots (all it needs: the base
  model and a few kB of pilots per expert), then sends each expert's queries to
  ``ExpertSearcher`` with the expert's name as Serve's multiplexed model id.
- ``ExpertSearcher``: replicas that load experts with ``@serve.multiplexed``.
  Serve sends a request for expert X to a replica that already holds X when
  one exists, and each replica keeps at most ``max_experts`` loaded, unloading
  the least recently used (which removes it from the replica's engine once its
  last search is done). A replica searches with the same
  :class:`~app.engine.SearchEngine` as ``rr serve``, the expert named, so the
  hits are the single-process service's.

What differs from ``rr serve``: the router uses pilot votes only
(``RR_ROUTER_EVIDENCE`` is ignored: corpus votes would need every collection
in the ingress, which is what multiplexing avoids), there is no base-encoder
fallback (``route.min_score``) and no micro-batcher (Serve batches replicas,
not requests). Admin routes and embeddings stay on ``rr serve``.

Run it with ``serve run app.ray_serve:app_builder max_experts=8 searchers=4``
(settings from the ``RR_*`` environment), or build it in Python with
:func:`build_app` and ``serve.run``.
"""

# No ``from __future__ import annotations``: serve.ingress re-wraps the route methods, and FastAPI then
# cannot resolve string annotations (the body would be read as a query parameter).
import asyncio
import logging
import threading
import time
from collections import defaultdict
from operator import attrgetter
from pathlib import Path

from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle

from app.engine import SearchEngine
from app.errors import InvalidRequestError, PayloadTooLargeError, install_error_handlers
from app.jobs import ExpertHit, SearchResult
from app.loading import load_expert, open_encoder
from app.output import result_dict
from app.registry import RegistryFile
from app.retrieval import RetrievalOptions, requested_retrieval
from app.schemas import BatchOut, SearchRequest, SearchResponse
from app.settings import Settings
from experts import ExpertDir, UnknownExpertError, list_expert_dirs
from index import reciprocal_rank_fusion
from router import NoExpertsError, RouteDecision, RoutePolicy, Router, check_pilots, forced_decision

__all__ = ["app_builder", "build_app", "published_experts"]

logger = logging.getLogger(__name__)


def published_experts(root: Path) -> dict[str, Path]:
    """Name -> directory of every published expert: the registry's list, else every expert under ``root``."""
    registry = RegistryFile(root)
    entries = registry.read()
    if entries is None:
        return {d.path.name: d.path for d in list_expert_dirs(root)}
    return {entry.name: registry.resolve(entry) for entry in entries}


class _HeldExpert:
    """What ``serve.multiplexed`` caches: one expert in its own engine, on the replica's shared encoder.

    Serve calls ``__del__`` when it evicts the expert (LRU); the engine is
    closed (adapter and index files released) once the searches using it are
    done. A search that finds it already closed returns None and loads it again.
    """

    def __init__(self, engine: SearchEngine, name: str, holding: "dict[str, _HeldExpert]") -> None:
        self.engine, self.name, self._holding = engine, name, holding
        self._users, self._evicted, self._closed = 0, False, False
        self._lock = threading.Lock()
        holding[name] = self

    def search(self, queries: list[str], k: int, retrieval: RetrievalOptions | None) -> list[SearchResult] | None:
        with self._lock:
            if self._closed:
                return None
            self._users += 1
        try:
            return self.engine.search(queries, k=k, expert=self.name, retrieval=retrieval).results
        finally:
            with self._lock:
                self._users -= 1
                close = self._evicted and self._users == 0 and not self._closed
                self._closed = self._closed or close
            if close:
                self.engine.close()

    def __del__(self) -> None:  # Serve's eviction (and, harmlessly, garbage collection)
        with self._lock:
            if self._evicted:
                return
            self._evicted = True
            close = self._users == 0
            self._closed = self._closed or close
        if self._holding.get(self.name) is self:
            del self._holding[self.name]
        if close:
            self.engine.close()
        logger.info("replica unloaded expert %r (LRU)", self.name)


def _expert_searcher(max_experts: int) -> type:
    """The searcher class, its multiplexing bound to ``max_experts`` (a decorator argument)."""

    class ExpertSearcher:
        def __init__(self, settings: Settings) -> None:
            self.settings = settings
            self.encoder = open_encoder(settings)
            self.holding: dict[str, _HeldExpert] = {}

        @serve.multiplexed(max_num_models_per_replica=max_experts)
        async def expert(self, name: str) -> _HeldExpert:
            directory = published_experts(self.settings.data_dir).get(name)
            if directory is None:
                raise UnknownExpertError(f"Expert {name!r} not found. Published experts: {sorted(published_experts(self.settings.data_dir))}")
            loaded = await asyncio.to_thread(
                load_expert, directory, self.encoder, verify_checksums=self.settings.verify_checksums
            )
            engine = SearchEngine(self.encoder, **self.settings.engine_options())  # type: ignore[arg-type]
            engine.add(loaded)
            logger.info("replica loaded expert %r", name)
            return _HeldExpert(engine, name, self.holding)

        async def search(self, queries: list[str], k: int, retrieval: RetrievalOptions | None) -> list[SearchResult]:
            """Search the expert named by the request's multiplexed model id."""
            name = serve.get_multiplexed_model_id()
            while True:
                held = await self.expert(name)
                results = await asyncio.to_thread(held.search, queries, k, retrieval)
                if results is not None:  # None: evicted between loading and searching; load it again
                    return results

        def held(self) -> list[str]:
            """The experts this replica holds now (for tests and operators)."""
            return sorted(self.holding)

    return ExpertSearcher


api = FastAPI(title="router-retriever on Ray Serve", version="0.1.0")
install_error_handlers(api)


@serve.ingress(api)
class RoutedSearch:
    """Routes each query on the pilots, then asks the searcher replicas holding its expert."""

    def __init__(self, searcher: DeploymentHandle, settings: Settings) -> None:
        self.settings = settings
        self.searcher = searcher
        self.encoder = open_encoder(settings)
        router = Router({}, aggregate=settings.router_aggregate, neighbours=settings.router_neighbours)
        self.experts = published_experts(settings.data_dir)
        for name, path in self.experts.items():
            directory = ExpertDir(path)
            manifest = directory.read_manifest()
            if manifest.pilots is not None:
                router = router.with_expert(name, check_pilots(directory.read_pilots(manifest), dim=self.encoder.dim, name=name))
        self.router = router

    def _decisions(self, body: SearchRequest, texts: list[str]) -> list[RouteDecision]:
        if body.expert is not None:
            if body.expert not in self.experts:
                raise UnknownExpertError(f"Expert {body.expert!r} not found. Published experts: {sorted(self.experts)}")
            return [forced_decision(body.expert)] * len(texts)
        if body.route.min_score is not None:
            raise InvalidRequestError("route.min_score (base-encoder fallback) is not served on Ray Serve; use `rr serve`")
        if not len(self.router):
            raise NoExpertsError("no experts to route to: add an expert with pilots first, or name one with `expert`")
        base = self.encoder.embed(texts, max_length=self.settings.query_max_length)
        policy = RoutePolicy(top_k=body.route.top_k, fanout_margin=body.route.fanout_margin)
        return self.router.route(base, policy=policy)

    @api.post("/search", response_model=SearchResponse)
    async def search(self, body: SearchRequest) -> SearchResponse:
        """The service's ``POST /search``, routed in this replica, searched by the replicas holding the expert."""
        started = time.perf_counter()
        texts = body.texts
        if len(texts) > self.settings.max_queries:
            raise PayloadTooLargeError(f"{len(texts)} queries in one request; the limit is {self.settings.max_queries}")
        decisions = await asyncio.to_thread(self._decisions, body, texts)
        retrieval = requested_retrieval(mode=body.mode, fusion=body.fusion, weight=body.hybrid_weight)
        rows_of: dict[str, list[int]] = defaultdict(list)
        for row, decision in enumerate(decisions):
            for name in decision.experts:
                rows_of[name].append(row)
        names = list(rows_of)
        answers = await asyncio.gather(
            *(
                self.searcher.options(multiplexed_model_id=name).search.remote([texts[r] for r in rows_of[name]], body.k, retrieval)
                for name in names
            )
        )
        found: dict[tuple[int, str], SearchResult] = {}
        for name, results in zip(names, answers, strict=True):
            for row, result in zip(rows_of[name], results, strict=True):
                found[row, name] = result
        out = []
        for row, decision in enumerate(decisions):
            lists: list[list[ExpertHit]] = [found[row, name].hits for name in decision.experts]
            hits = lists[0] if len(lists) == 1 else reciprocal_rank_fusion(lists, limit=body.k, key=attrgetter("expert", "id"))
            first = found[row, decision.experts[0]]
            out.append({**result_dict(SearchResult(texts[row], hits, decision, first.mode)), "expert": decision.experts[0]})
        timings = {"total_ms": round((time.perf_counter() - started) * 1000, 3)}
        return SearchResponse.model_validate({"results": out, "timings_ms": timings, "batch": BatchOut(requests=1, queries=len(texts))})

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}


def build_app(
    settings: Settings,
    *,
    max_experts: int = 4,
    searchers: int = 1,
    searcher_cpus: float = 1.0,
    searcher_gpus: float = 0.0,
    ingress_replicas: int = 1,
    ingress_cpus: float = 1.0,
) -> serve.Application:
    """The Serve application: ``ingress_replicas`` routers in front of ``searchers`` expert replicas.

    Size ``max_experts`` to what one replica's memory holds (an expert costs its
    adapter, a few MB, plus its index: ~1.6 kB per document for a flat MiniLM
    index, plus the BM25 index and the SQLite pages it touches), and
    ``searchers`` to the experts x traffic you serve: about (experts in use) /
    ``max_experts`` replicas, more for hot experts.
    """
    if max_experts < 1 or searchers < 1 or ingress_replicas < 1:
        raise ValueError(f"max_experts, searchers and ingress_replicas must be >= 1, got {max_experts}, {searchers}, {ingress_replicas}")
    searcher = serve.deployment(
        _expert_searcher(max_experts), name="ExpertSearcher", num_replicas=searchers,
        ray_actor_options={"num_cpus": searcher_cpus, "num_gpus": searcher_gpus},
    ).bind(settings)  # fmt: skip
    ingress = serve.deployment(
        RoutedSearch, name="RoutedSearch", num_replicas=ingress_replicas, ray_actor_options={"num_cpus": ingress_cpus}
    )
    return ingress.bind(searcher, settings)


def app_builder(args: dict[str, str]) -> serve.Application:
    """For ``serve run app.ray_serve:app_builder max_experts=8 searchers=4 searcher_cpus=2``; settings from ``RR_*``."""
    known = {"max_experts": int, "searchers": int, "searcher_cpus": float, "searcher_gpus": float,
             "ingress_replicas": int, "ingress_cpus": float}  # fmt: skip
    unknown = sorted(set(args) - set(known))
    if unknown:
        raise ValueError(f"Unknown argument(s) {unknown}. Valid arguments are: {', '.join(sorted(known))}")
    return build_app(Settings(), **{key: known[key](value) for key, value in args.items()})  # type: ignore[arg-type]
