"""The Ray Serve ingress's HTTP app: ``rr serve``'s auth, limits, error bodies and metrics around its routes.

Built once per ingress replica by :func:`create_ingress_app` (Serve calls it
through ``RoutedSearch.__serve_build_asgi_app__``), from ``rr serve``'s own
parts: :mod:`app.api.auth`'s dependencies, :mod:`app.api.body_limit`'s middleware (413
before anything parses), :mod:`app.api.error_handlers`' handlers (one error shape, 422 for
validation), :mod:`app.api.schemas`' request and response bodies (their limits
included) and :mod:`app.api.metrics`' request-counting middleware. Routes reach
the replica's :class:`~app.ray_serve.ingress.Ingress` through ``Depends``.

Served here: ``POST /search``, ``POST /admin/experts`` (JSON ``{"path"}``),
``DELETE /admin/experts/{name}``, ``/healthz``, ``/readyz``, ``/metrics``.
Embeddings, reranking (a search with ``rerank`` is a 501), listings, archive uploads and the console stay on
``rr serve``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.auth import SearchCaller, require_admin
from app.api.body_limit import BodySizeLimitMiddleware
from app.api.error_handlers import error_response, install_error_handlers
from app.api.keys import KeyStore
from app.api.metrics import MetricsMiddleware
from app.api.schemas import (
    AddExpertRequest,
    ExpertDetailOut,
    ExpertName,
    HealthOut,
    ReadyOut,
    RemovedOut,
    SearchRequest,
    SearchResponse,
    error_responses,
)
from app.errors import FeatureUnavailableError, PermissionDeniedError
from app.ray_serve.ingress import Ingress

__all__ = ["create_ingress_app"]


def get_ingress(request: Request) -> Ingress:
    return request.app.state.service


Serving = Annotated[Ingress, Depends(get_ingress)]

search_router = APIRouter(tags=["search"])
admin_router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])
ops_router = APIRouter(tags=["operations"])


@search_router.post(
    "/search",
    response_model=SearchResponse,
    responses=error_responses(401, 403, 404, 409, 413, 415, 422, 501, 503),
)
async def search(body: SearchRequest, ingress: Serving, caller: SearchCaller) -> SearchResponse:
    """``rr serve``'s search: each query routed on pilots and corpus votes, searched by a replica holding its expert."""
    if caller.experts is not None:  # refused, not widened: this ingress cannot route among some experts only
        raise PermissionDeniedError(
            f"key {caller.name!r} is limited to experts {sorted(caller.experts)}, and the Ray Serve ingress does not "
            "restrict routing: use `rr serve` for keys limited to experts"
        )
    return await ingress.search(body)


@admin_router.post(
    "/experts", status_code=201, response_model=ExpertDetailOut, responses=error_responses(401, 403, 409, 413, 415, 422)
)
async def add_expert(body: AddExpertRequest, ingress: Serving) -> ExpertDetailOut:
    """Publish the expert directory at `path` (under the data root) once a searcher replica has validated it.

    Every ingress replica routes to it from its next request on; searcher
    replicas load it when first asked. A replace's quality gate (`gate`) is `rr serve`'s only: 501 here.
    """
    if body.gate is not None or body.gate_margin is not None:
        raise FeatureUnavailableError(
            "a replace's quality gate (gate, gate_margin) runs in `rr serve` only; on Ray Serve, replace without one"
        )
    return await ingress.admin.add(body.path, replace=body.replace)


@admin_router.delete("/experts/{name}", response_model=RemovedOut, responses=error_responses(401, 403, 404, 422))
async def remove_expert(name: ExpertName, ingress: Serving) -> RemovedOut:
    """Unpublish at once. `unloaded`: the replica Serve sends the name to (one holding it) has unloaded it;
    other replicas holding it unload it at their next sweep (`registry_poll_s`)."""
    return await ingress.admin.remove(name)


@ops_router.get("/healthz", response_model=HealthOut)
async def healthz() -> HealthOut:
    """The replica is alive and its event loop answers."""
    return HealthOut()


@ops_router.get("/readyz", response_model=ReadyOut, responses=error_responses(503))
async def readyz(ingress: Serving) -> ReadyOut | JSONResponse:
    """Ready when the registry reads, every published expert's pilots load, and a searcher replica answers."""
    problem = await ingress.not_ready()
    if problem is not None:
        reason, details = problem
        headers = {"Retry-After": str(ingress.settings.retry_after_s)}
        return error_response(503, "not_ready", reason, details=details, headers=headers)
    return ReadyOut(experts=sorted(ingress.view().published.experts))


@ops_router.get("/metrics", response_class=Response)
async def metrics(ingress: Serving) -> Response:
    """Prometheus text format: requests and latency per route, queries per expert, searcher calls per expert."""
    return Response(ingress.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def create_ingress_app(ingress: Ingress) -> FastAPI:
    """The ingress replica's app around ``ingress`` (its settings give the keys and limits)."""
    settings = ingress.settings
    app = FastAPI(title="router-retriever on Ray Serve", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.service = ingress  # where app.api.error_handlers look for the settings, as in rr serve
    app.state.keys = KeyStore(settings)  # where app.api.auth looks for the keys (RR_KEYS_FILE read once here)
    install_error_handlers(app)
    for router in (search_router, admin_router, ops_router):
        app.include_router(router)
    app.add_middleware(
        BodySizeLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=settings.max_body_bytes,
        upload_routes=frozenset(),  # no archive uploads here
    )
    app.add_middleware(MetricsMiddleware, metrics=ingress.metrics)  # type: ignore[arg-type]  # outermost: counts 413s
    return app
