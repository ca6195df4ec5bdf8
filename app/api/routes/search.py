"""``POST /search``: routed search, answered through the micro-batcher; reranked by the cross-encoder on request."""

from __future__ import annotations

import time

from fastapi import APIRouter

from app.api.auth import SearchCaller
from app.api.routes.rerank import reranks_of
from app.api.schemas import SearchRequest, SearchResponse, error_responses
from app.api.state import Runtime, Serving
from app.engine.engine import BatchResult, SearchJob, SearchResult
from app.engine.reranking import rerank_results, search_rerank_job
from app.engine.retrieval import requested_retrieval
from app.errors import PayloadTooLargeError

router = APIRouter(tags=["search"])

_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422, 429, 501, 503)


@router.post("/search", response_model=SearchResponse, responses=_ERRORS)
async def search(body: SearchRequest, runtime: Serving, caller: SearchCaller) -> SearchResponse:
    """Search one query or a list; each query is routed on its own unless `expert` names one.

    Concurrent requests are gathered for a few milliseconds and answered
    together (one base pass, one router call, one expert pass, one FAISS and one
    BM25 search per expert); `batch` says how many were answered with this one.
    `mode` chooses dense, lexical or hybrid search inside the chosen expert.
    `rerank` rescores each query's best `top_n` candidates with the cross-encoder
    (501 when the server has none) and returns the best `k` by its score.
    A key limited to some experts may name only those, and is routed among them alone.
    """
    started = time.perf_counter()
    texts = body.texts
    limit = runtime.settings.max_queries
    if len(texts) > limit:
        raise PayloadTooLargeError(f"{len(texts)} queries in one request; the limit is {limit} (RR_MAX_QUERIES)")
    depth = _candidates(body, runtime, len(texts))
    if body.expert is not None:
        caller.check_expert(body.expert)
        runtime.publisher.check_servable(body.expert)
    policy = body.route.policy(runtime.settings.route_policy())
    retrieval = requested_retrieval(mode=body.mode, fusion=body.fusion, weight=body.hybrid_weight)
    job = SearchJob(
        tuple(texts),
        k=depth,
        expert=body.expert,
        policy=policy,
        retrieval=retrieval,
        filter=body.filter,
        allowed_experts=caller.experts,
    )
    batch, queue_ms = await runtime.searches.submit(job)
    timings = {"queue_ms": queue_ms, **batch.timings_ms}
    results = batch.results if body.rerank is None else await _reranked(batch, body.k, runtime, timings)
    timings["total_ms"] = round((time.perf_counter() - started) * 1000, 3)
    return SearchResponse.of(results, timings_ms=timings, requests=batch.batch_requests, queries=batch.batch_queries)


def _candidates(body: SearchRequest, runtime: Runtime, queries: int) -> int:
    """Hits to retrieve per query: ``k``, or with ``rerank`` ``max(k, top_n)`` within RR_MAX_RERANK_DOCUMENTS."""
    if body.rerank is None:
        return body.k
    reranks_of(runtime)  # 501 before any work when the server has no reranker
    depth = max(body.k, body.rerank.top_n)
    limit = runtime.settings.max_rerank_documents
    if queries * depth > limit:
        raise PayloadTooLargeError(
            f"{queries} queries x {depth} candidates = {queries * depth} documents to rerank; the limit is {limit} "
            "(RR_MAX_RERANK_DOCUMENTS): lower rerank.top_n or k, or send fewer queries"
        )
    return depth


async def _reranked(batch: BatchResult, k: int, runtime: Runtime, timings: dict[str, float]) -> list[SearchResult]:
    """The batch's results reranked by the cross-encoder and cut to ``k``; ``rerank_ms`` (its queue wait included)."""
    clock = time.perf_counter()
    scored, _ = await reranks_of(runtime).submit(search_rerank_job(batch.results))
    timings["rerank_ms"] = round((time.perf_counter() - clock) * 1000, 3)
    return rerank_results(batch.results, scored, k=k)
