"""``POST /v1/rerank`` (and ``/v2/rerank``): a cross-encoder scores a client's documents against a query.

The body and answer are the shape Cohere's and Jina's rerank APIs share, so
their clients (and LangChain's, LlamaIndex's rerankers built on them) work
against ``rr serve`` unchanged; Cohere's v2 clients post to ``/v2/rerank``.
Requests are gathered by the rerank micro-batcher, so concurrent rerankings
run in shared passes of the model.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Depends

from app.api.auth import require_search
from app.api.batching import MicroBatcher
from app.api.schemas import error_responses
from app.api.schemas_rerank import (
    RerankDocumentOut,
    RerankRequest,
    RerankResponse,
    RerankResultOut,
    RerankUsageOut,
)
from app.api.state import Runtime, Serving
from app.engine.reranking import RERANKING_OFF, RerankJob, ranked
from app.errors import FeatureUnavailableError, PayloadTooLargeError, UnknownModelError
from experts import PairScores

router = APIRouter(tags=["rerank"])

_ERRORS = error_responses(401, 403, 404, 413, 415, 422, 429, 501, 503)
#: What ``model`` may say besides the reranker's own id.
DEFAULT_MODEL = "default"


def reranks_of(runtime: Runtime) -> MicroBatcher[RerankJob, list[PairScores]]:
    """The rerank micro-batcher; 501 saying how to turn reranking on when the server has none."""
    if runtime.reranks is None:
        raise FeatureUnavailableError(RERANKING_OFF)
    return runtime.reranks


def reranker_id(runtime: Runtime) -> str:
    """The reranker's public name: RR_RERANKER as the operator wrote it."""
    return runtime.settings.reranker or ""


def rerank_models(runtime: Runtime) -> list[str]:
    """What ``model`` may name: ``default``, RR_RERANKER as written, and as resolved (a local path made absolute)."""
    resolved = [runtime.reranker.model_id] if runtime.reranker is not None else []
    return sorted({DEFAULT_MODEL, reranker_id(runtime), *resolved})


@router.post("/v1/rerank", response_model=RerankResponse, dependencies=[Depends(require_search)], responses=_ERRORS)
@router.post("/v2/rerank", response_model=RerankResponse, dependencies=[Depends(require_search)], responses=_ERRORS)
async def rerank(body: RerankRequest, runtime: Serving) -> RerankResponse:
    """Score each document against `query` with the cross-encoder; the best `top_n` (all by default), best first.

    `relevance_score` is in [0, 1]; `index` is the document's position in the
    request. `/v2/rerank` is the same route (Cohere's v2 clients post there).
    501 when the server runs without a reranker (RR_RERANKER unset).
    """
    reranks = reranks_of(runtime)
    if body.model is not None and body.model not in rerank_models(runtime):
        raise UnknownModelError(f"Model {body.model!r} not found. Valid rerank models: {rerank_models(runtime)}")
    texts = body.texts
    limit = runtime.settings.max_rerank_documents
    if len(texts) > limit:
        raise PayloadTooLargeError(
            f"{len(texts)} documents in one request; the limit is {limit} (RR_MAX_RERANK_DOCUMENTS)"
        )
    (scored,), _ = await reranks.submit(RerankJob(((body.query, tuple(texts)),)))
    results = [
        RerankResultOut(
            index=int(i),
            relevance_score=float(scored.scores[i]),
            document=RerankDocumentOut(text=texts[i]) if body.return_documents else None,
        )
        for i in ranked(scored.scores, body.top_n)
    ]
    return RerankResponse(
        id=str(uuid.uuid4()),
        model=reranker_id(runtime),
        results=results,
        usage=RerankUsageOut(total_tokens=scored.tokens),
    )
