"""``POST /v1/embeddings``: OpenAI-compatible embeddings from the base encoder or an expert's adapter."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import APIRouter

from app.api.auth import Caller, EmbedCaller
from app.api.schemas import error_responses
from app.api.schemas_openai import EmbeddingOut, EmbeddingsRequest, EmbeddingsResponse, UsageOut
from app.api.state import Runtime, Serving
from app.engine.engine import AUTO_MODEL, BASE_MODEL, RESERVED_NAMES, EmbedJob, EmbedResult
from app.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedInputError
from experts import UnknownExpertError

router = APIRouter(tags=["embeddings"])

_ERRORS = error_responses(400, 401, 403, 404, 409, 413, 415, 422, 429, 503)

#: Why token ids are refused, and the client settings that send text instead.
TOKEN_IDS_MESSAGE = (
    "input holds token ids, but this server takes text: it tokenizes with its own encoder's tokenizer, "
    "which is not the client's (tiktoken). Send strings. LangChain's OpenAIEmbeddings sends token ids by "
    "default: create it with check_embedding_ctx_length=False."
)


def _encode(vector: np.ndarray, encoding: str) -> list[float] | str:
    if encoding == "base64":  # what the OpenAI SDK asks for by default: little-endian float32
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    return vector.tolist()


def _check(body: EmbeddingsRequest, runtime: Runtime, caller: Caller) -> list[str]:
    """The request's texts, once everything about it that can be checked before the model runs is valid."""
    if body.holds_token_ids:
        raise UnsupportedInputError(TOKEN_IDS_MESSAGE)
    texts = body.texts
    limit = runtime.settings.max_embedding_inputs
    if len(texts) > limit:
        raise PayloadTooLargeError(
            f"{len(texts)} inputs in one request; the limit is {limit} (RR_MAX_EMBEDDING_INPUTS)"
        )
    engine = runtime.engine
    if body.dimensions is not None and body.dimensions != engine.encoder.dim:
        raise InvalidRequestError(
            f"dimensions={body.dimensions} is not available: this encoder gives {engine.encoder.dim}-dimensional vectors"
        )
    if body.model not in RESERVED_NAMES:
        caller.check_expert(body.model)
        runtime.publisher.check_servable(body.model)
    if body.model not in RESERVED_NAMES and body.model not in engine.experts:
        raise UnknownExpertError(
            f"Model {body.model!r} not found. Valid models: {[*sorted(RESERVED_NAMES), *caller.visible(engine.experts)]}"
        )
    return texts


def _answered_by(model: str, results: list[EmbedResult]) -> str:
    """The response's ``model``: what was asked for, or for ``auto`` the one model every input went to."""
    if model != AUTO_MODEL:
        return model
    used = {expert for result in results for expert in result.adapters_of}
    if len(used) != 1:
        return AUTO_MODEL
    (only,) = used
    return only or BASE_MODEL


@router.post("/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS)
async def embeddings(body: EmbeddingsRequest, runtime: Serving, caller: EmbedCaller) -> EmbeddingsResponse:
    """Embed `input` with `model`: an expert's adapter, `base` (no adapter), or `auto` (routed per input).

    With query-side experts (the default) the adapter changes only queries:
    `input_type: document` returns the base vector, which is what the expert's
    index holds. A large request (over RR_EMBEDDING_TURN_INPUTS inputs) is
    embedded that many inputs at a time, each turn queued like any request, and
    its forward passes let those of searches go first, so a search waits for at
    most one of its passes, not for all of it. `usage` counts the tokens the
    encoder read. A key limited to some experts may name only those, and `auto` routes among them alone.
    """
    texts = _check(body, runtime, caller)
    turn = runtime.settings.embedding_turn_inputs
    bulk = len(texts) > turn
    results: list[EmbedResult] = []
    for start in range(0, len(texts), turn):
        job = EmbedJob(
            tuple(texts[start : start + turn]),
            model=body.model,
            input_type=body.input_type,
            bulk=bulk,
            allowed_experts=caller.experts,
        )
        result, _ = await runtime.embeddings.submit(job)
        results.append(result)
    rows = [(vector, expert) for result in results for vector, expert in zip(result.vectors, result.adapters_of)]
    data = [
        EmbeddingOut(index=i, embedding=_encode(vector, body.encoding_format), expert=expert)
        for i, (vector, expert) in enumerate(rows)
    ]
    tokens = sum(sum(result.tokens or ()) for result in results)
    return EmbeddingsResponse(
        data=data,
        model=_answered_by(body.model, results),
        usage=UsageOut(prompt_tokens=tokens, total_tokens=tokens),
    )
