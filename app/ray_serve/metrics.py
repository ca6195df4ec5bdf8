"""Prometheus metrics of one Ray Serve ingress replica, in a registry of its own.

The HTTP families and the routing families carry ``rr serve``'s names and
labels (``rr_http_requests``, ``rr_http_request_duration_seconds``,
``rr_routed_queries``, ``rr_router_margin``, ``rr_stage_duration_seconds``), so
one dashboard reads both; the HTTP ones are recorded by ``rr serve``'s own
:class:`~app.api.metrics.MetricsMiddleware`, which needs only ``requests`` and
``latency``. What only the ingress has: its calls to the searcher replicas,
per expert and kind (``search``, ``scores`` for the corpus votes). Serve's own
metrics (replicas, queueing, multiplexed loads and unloads per model id) are
on Ray's metrics port, not here.

Each ingress replica counts its own requests: scrape every replica (Ray's
service discovery file) or sum over them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from app.api.metrics import shared_families
from app.engine.jobs import SearchResult

__all__ = ["IngressMetrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class IngressMetrics:
    """Every metric the ingress exports. ``published`` and ``routable`` are read at scrape time."""

    def __init__(self, *, published: Callable[[], int], routable: Callable[[], int]) -> None:
        self.registry = r = CollectorRegistry()
        self.shared = shared_families(r)
        self.requests, self.latency = self.shared.requests, self.shared.latency
        self.routed, self.margin = self.shared.routed, self.shared.margin
        self.stage_seconds = Histogram(
            "rr_stage_duration_seconds",
            "Time per request stage (base, evidence, route, search).",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.expert_calls = Counter(
            "rr_searcher_calls",
            "Calls to the searcher replicas by expert, kind (search, scores) and outcome.",
            ["expert", "kind", "outcome"],
            registry=r,
        )
        self.expert_seconds = Histogram(
            "rr_searcher_call_duration_seconds",
            "Latency of the calls to the searcher replicas, by expert and kind.",
            ["expert", "kind"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        Gauge("rr_experts_published", "Experts published (in the registry).", registry=r).set_function(published)
        Gauge("rr_experts_routable", "Published experts the router can choose (with pilots).", registry=r).set_function(
            routable
        )

    def observe_call(self, expert: str, kind: str, seconds: float, *, ok: bool) -> None:
        self.expert_calls.labels(expert, kind, "ok" if ok else "error").inc()
        self.expert_seconds.labels(expert, kind).observe(seconds)

    def observe_search(self, results: Sequence[SearchResult], timings_ms: dict[str, float]) -> None:
        """Stage times of one request, and the routing decision of each of its queries."""
        for stage, ms in timings_ms.items():
            if stage.endswith("_ms") and stage != "total_ms":
                self.stage_seconds.labels(stage.removesuffix("_ms")).observe(ms / 1000)
        for result in results:
            self.shared.observe_decision(result.decision)

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)
