"""``POST /v1/embeddings``: OpenAI-compatible embeddings from the base encoder or an expert's adapter."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter, Depends

from app.api.auth import require_search
from app.api.schemas import EmbeddingOut, EmbeddingsRequest, EmbeddingsResponse, UsageOut, error_responses
from app.api.state import Serving
from app.engine.engine import RESERVED_NAMES, EmbedJob
from app.errors import InvalidRequestError, PayloadTooLargeError
from experts import UnknownExpertError

router = APIRouter(tags=["embeddings"])

_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422, 429, 503)


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the OpenAI SDK asks for by default: little-endian float32
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


@router.post(
    "/v1/embeddings", response_model=EmbeddingsResponse, dependencies=[Depends(require_search)], responses=_ERRORS
)
async def embeddings(body: EmbeddingsRequest, runtime: Serving) -> EmbeddingsResponse:
    """Embed `input` with `model`: an expert's adapter, `base` (no adapter), or `auto` (routed per input).

    With query-side experts (the default) the adapter changes only queries:
    `input_type: document` returns the base vector, which is what the expert's
    index holds. `usage` counts are 0: token counts are not reported yet.
    """
    engine = runtime.engine
    texts = body.texts
    limit = runtime.settings.max_queries
    if len(texts) > limit:
        raise PayloadTooLargeError(f"{len(texts)} inputs in one request; the limit is {limit} (RR_MAX_QUERIES)")
    if body.dimensions is not None and body.dimensions != engine.encoder.dim:
        raise InvalidRequestError(
            f"dimensions={body.dimensions} is not available: this encoder gives {engine.encoder.dim}-dimensional vectors"
        )
    if body.model not in RESERVED_NAMES:
        runtime.publisher.check_servable(body.model)
    if body.model not in RESERVED_NAMES and body.model not in engine.experts:
        raise UnknownExpertError(
            f"Model {body.model!r} not found. Valid models: {[*sorted(RESERVED_NAMES), *sorted(engine.experts)]}"
        )
    result, _ = await runtime.embeddings.submit(EmbedJob(tuple(texts), model=body.model, input_type=body.input_type))
    data = [
        EmbeddingOut(index=i, embedding=_encode(vector, body.encoding_format), expert=expert)
        for i, (vector, expert) in enumerate(zip(result.vectors, result.adapters_of))
    ]
    return EmbeddingsResponse(data=data, model=body.model, usage=UsageOut(prompt_tokens=0, total_tokens=0))
