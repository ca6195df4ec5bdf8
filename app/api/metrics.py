"""Prometheus metrics of one app instance: its own registry, never the process-global one.

Request counts and latencies are recorded by :class:`MetricsMiddleware` with
the route *template* as label (``/experts/{name}``), so label cardinality stays
bounded whatever clients send; ``rr_requests_by_key_total`` adds the caller's
key name (the names come from the settings and the key file: bounded too). Index sizes are read from the engine at scrape
time, so an unpublished expert's series disappear with it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.access_log import KEY_NAME
from app.api.keys import ANONYMOUS, KEY_NAME_STATE
from app.engine.engine import BatchResult
from app.engine.loading import LoadedExpert
from app.engine.shadow_compare import Comparison
from experts import ThreadChoice
from router import RouteDecision

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_MARGIN_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
_OVERLAP_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0)


class _ExpertCollector(Collector):
    """Published experts and their index sizes, read when Prometheus scrapes."""

    def __init__(self, experts: Callable[[], Mapping[str, LoadedExpert]]) -> None:
        self._experts = experts

    def collect(self) -> Iterator[Metric]:
        experts = self._experts()
        published = GaugeMetricFamily("rr_experts_published", "Experts published (serving).")
        published.add_metric([], len(experts))
        documents = GaugeMetricFamily(
            "rr_index_documents", "Documents in each published expert's index.", labels=["expert", "index"]
        )
        delta = GaugeMetricFamily(
            "rr_live_delta_documents", "Documents upserted since the expert's last merge.", labels=["expert"]
        )
        tombstones = GaugeMetricFamily(
            "rr_live_tombstones",
            "Rows of the published index deleted or replaced since the last merge.",
            labels=["expert"],
        )
        merging = GaugeMetricFamily(
            "rr_live_merging", "1 while a background merge of the expert runs.", labels=["expert"]
        )
        for name, expert in sorted(experts.items()):
            state = expert.documents.state()
            documents.add_metric([name, expert.collection.info.factory], state.documents)
            delta.add_metric([name], state.delta_documents)
            tombstones.add_metric([name], state.tombstones)
            merging.add_metric([name], int(state.merging))
        yield published
        yield documents
        yield delta
        yield tombstones
        yield merging


@dataclass(frozen=True)
class SharedFamilies:
    """The families ``rr serve`` and the Ray Serve ingress both export, under the same names, so one dashboard reads both."""

    requests: Counter
    latency: Histogram
    routed: Counter
    margin: Histogram
    by_key: Counter

    def observe_decision(self, decision: RouteDecision) -> None:
        """One query's routing: the expert that answered (first searched) and the mode; its margin when finite."""
        expert = decision.experts[0] if decision.experts else "none"
        self.routed.labels(expert, decision.mode).inc()
        if math.isfinite(decision.margin):
            self.margin.labels(expert).observe(decision.margin)


def shared_families(registry: CollectorRegistry) -> SharedFamilies:
    """Register the HTTP and routing families in ``registry``."""
    return SharedFamilies(
        requests=Counter(
            "rr_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=registry,
        ),
        latency=Histogram(
            "rr_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        ),
        routed=Counter(
            "rr_routed_queries",
            "Queries by the expert that answered and the routing mode.",
            ["expert", "mode"],
            registry=registry,
        ),
        margin=Histogram(
            "rr_router_margin",
            "Router top-1 minus top-2 score, by the chosen expert.",
            ["expert"],
            buckets=_MARGIN_BUCKETS,
            registry=registry,
        ),
        by_key=Counter(
            "rr_requests_by_key",
            "HTTP requests by API key name (anonymous without a key, unknown for a key not known), route and status.",
            ["key", "route", "status"],
            registry=registry,
        ),
    )


class ShadowMetrics:
    """The shadows' figures by expert: what :class:`app.engine.shadow.Shadows` reports to its observer."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.queries = Counter(
            "rr_shadow_queries",
            "Queries also searched with the expert's shadow candidate.",
            ["expert"],
            registry=registry,
        )
        self.differing = Counter(
            "rr_shadow_differing_queries",
            "Shadowed queries whose top 10 differs between the serving version and the candidate.",
            ["expert"],
            registry=registry,
        )
        self.overlap = Histogram(
            "rr_shadow_top10_overlap",
            "Overlap of the serving version's and the candidate's top 10 (1: the same documents).",
            ["expert"],
            buckets=_OVERLAP_BUCKETS,
            registry=registry,
        )
        self.drops = Counter(
            "rr_shadow_dropped_queries",
            "Queries drawn for a shadow but dropped: its queue was full.",
            ["expert"],
            registry=registry,
        )

    def shadowed(self, expert: str, comparison: Comparison) -> None:
        self.queries.labels(expert).inc()
        self.overlap.labels(expert).observe(comparison.overlap)
        if comparison.differs:
            self.differing.labels(expert).inc()

    def dropped(self, expert: str, count: int) -> None:
        self.drops.labels(expert).inc(count)


class Metrics:
    """Every metric the service exports, registered in a registry of its own."""

    def __init__(
        self,
        experts: Callable[[], Mapping[str, LoadedExpert]],
        threads: Callable[[], ThreadChoice | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.shared = shared_families(r)
        self.requests, self.latency = self.shared.requests, self.shared.latency
        self.routed, self.margin = self.shared.routed, self.shared.margin
        self.batch_requests = Histogram(
            "rr_batch_requests",
            "Requests answered together in one micro-batch.",
            ["kind"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_queries = Histogram(
            "rr_batch_queries", "Queries (texts) in one micro-batch.", ["kind"], buckets=_SIZE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rr_queue_depth", "Queries waiting for the model.", ["kind"], registry=r)
        self.rejected = Counter(
            "rr_rejected_requests", "Requests refused with 429 because the queue was full.", ["kind"], registry=r
        )
        self.stage_seconds = Histogram(
            "rr_stage_duration_seconds",
            "Time per micro-batch stage (queue, base, route, expert, search, rerank).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.shadows = ShadowMetrics(r)
        self.registry.register(_ExpertCollector(experts))
        Gauge(
            "rr_torch_threads",
            "Torch threads the last forward pass ran with (RR_TORCH_THREADS=auto; 0 when set by number).",
            registry=r,
        ).set_function(lambda: getattr(threads(), "last", 0))
        Gauge(
            "rr_host_other_load_cores",
            "Cores other processes kept busy at the last reading (RR_TORCH_THREADS=auto; 0 when set by number).",
            registry=r,
        ).set_function(lambda: getattr(threads(), "others_load", 0.0))

    def observe_search_batch(self, outcomes: Sequence[object]) -> None:
        """Stage times once per micro-batch; the routing decision of every query answered in it."""
        answered = [outcome for outcome in outcomes if isinstance(outcome, BatchResult)]
        if not answered:
            return
        for stage in ("base", "route", "expert", "search"):
            self.stage_seconds.labels(stage).observe(answered[0].timings_ms.get(f"{stage}_ms", 0.0) / 1000)
        for batch in answered:
            for result in batch.results:
                self.shared.observe_decision(result.decision)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it, labelled by the route that matched (or ``unmatched``)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_and_record(message: Message) -> None:
            if message["type"] != "http.response.start":
                await send(message)
                return
            status["code"] = message["status"]
            token = KEY_NAME.set(_key_label(scope))  # uvicorn writes its access line inside this send
            try:
                await send(message)
            finally:
                KEY_NAME.reset(token)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = _route_label(scope)
            method = scope.get("method", "")
            self.metrics.requests.labels(route, method, str(status["code"])).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
            self.metrics.shared.by_key.labels(_key_label(scope), route, str(status["code"])).inc()


def _key_label(scope: Mapping[str, Any]) -> str:
    """The key name the auth dependency left in the request's state; ``anonymous`` where none ran (probes)."""
    return str((scope.get("state") or {}).get(KEY_NAME_STATE, ANONYMOUS))


def _route_label(scope: Mapping[str, Any]) -> str:
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"
