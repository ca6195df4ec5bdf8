"""``POST /search``: routed search, answered through the micro-batcher."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends

from app.api.auth import require_search
from app.api.schemas import SearchRequest, SearchResponse, error_responses
from app.api.state import Serving
from app.engine.engine import SearchJob
from app.engine.retrieval import requested_retrieval
from app.errors import PayloadTooLargeError

router = APIRouter(tags=["search"])

_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422, 429, 503)


@router.post("/search", response_model=SearchResponse, dependencies=[Depends(require_search)], responses=_ERRORS)
async def search(body: SearchRequest, runtime: Serving) -> SearchResponse:
    """Search one query or a list; each query is routed on its own unless `expert` names one.

    Concurrent requests are gathered for a few milliseconds and answered
    together (one base pass, one router call, one expert pass, one FAISS and one
    BM25 search per expert); `batch` says how many were answered with this one.
    `mode` chooses dense, lexical or hybrid search inside the chosen expert.
    """
    started = time.perf_counter()
    texts = body.texts
    limit = runtime.settings.max_queries
    if len(texts) > limit:
        raise PayloadTooLargeError(f"{len(texts)} queries in one request; the limit is {limit} (RR_MAX_QUERIES)")
    if body.expert is not None:
        runtime.publisher.check_servable(body.expert)
    policy = body.route.policy(runtime.settings.route_policy())
    retrieval = requested_retrieval(mode=body.mode, fusion=body.fusion, weight=body.hybrid_weight)
    job = SearchJob(tuple(texts), k=body.k, expert=body.expert, policy=policy, retrieval=retrieval, filter=body.filter)
    batch, queue_ms = await runtime.searches.submit(job)
    timings = {"queue_ms": queue_ms, **batch.timings_ms, "total_ms": round((time.perf_counter() - started) * 1000, 3)}
    return SearchResponse.of(
        batch.results, timings_ms=timings, requests=batch.batch_requests, queries=batch.batch_queries
    )
