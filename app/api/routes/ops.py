"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics``, ``/metrics/summary``. None needs a key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.error_handlers import error_response
from app.api.metrics_summary import summarize
from app.api.schemas import HealthOut, MetricsSummaryOut, ReadyOut, error_responses
from app.api.state import Service

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The process is alive and its event loop answers (nothing else is checked)."""
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, response_model_exclude_none=True, responses=error_responses(503))
async def readyz(service: Service) -> ReadyOut | JSONResponse:
    """Ready when the base encoder and every published expert are loaded; else 503 with the reason.

    While `rr demo` builds experts in the background it is ready once the first one serves, and
    `building` says what the others are doing.

    The 503's details say which experts are up (`experts`, serving) and which
    published ones are not (`failed`, name to reason), so an operator sees at
    once what one broken expert costs.
    """
    reason = service.not_ready_reason()
    if reason is not None or service.runtime is None:
        details: dict[str, object] = {"phase": service.phase}
        if service.runtime is not None:
            details["experts"] = sorted(service.runtime.engine.experts)
            details["failed"] = dict(sorted(service.runtime.publisher.failed.items()))
        if service.building:
            details["building"] = dict(sorted(service.building.items()))
        return error_response(
            503,
            "not_ready",
            reason or "starting",
            details=details,
            headers={"Retry-After": str(service.settings.retry_after_s)},
        )
    building = dict(sorted(service.building.items())) or None
    return ReadyOut(experts=sorted(service.runtime.engine.experts), building=building)


@router.get("/metrics", response_class=Response)
async def metrics(service: Service) -> Response:
    """Prometheus text format: requests, latency, batch sizes, queue depth, routing, index sizes."""
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/summary", response_model=MetricsSummaryOut)
async def metrics_summary(service: Service) -> MetricsSummaryOut:
    """The main figures of `/metrics` as JSON, for people: requests, p50/p95 latency per route, queries per expert."""
    return summarize(service.metrics)
