"""Embeddings for ``/v1/embeddings``: texts embedded with the base encoder, a named expert's adapter or the routed one's.

Jobs asking for the same model, input type and priority share one encoder
pass over one snapshot; :meth:`~app.engine.engine.SearchEngine.embed_jobs`
leases that snapshot and calls :func:`embed_batch`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.engine.batch_run import unknown_expert
from app.engine.jobs import AUTO_MODEL, BASE_MODEL, EmbedJob, EmbedResult, InputType, not_allowed
from app.engine.loading import LoadedExpert
from app.engine.snapshots import Snapshot
from app.errors import PermissionDeniedError
from experts import UnknownExpertError
from router import NoExpertsError

if TYPE_CHECKING:
    from app.engine.engine import SearchEngine


def embed_batch(engine: SearchEngine, snapshot: Snapshot, jobs: Sequence[EmbedJob]) -> list[EmbedResult | Exception]:
    """One outcome per job, in order; a job that cannot run (an unknown or forbidden expert) gets its exception."""
    outcomes: list[EmbedResult | Exception | None] = [None] * len(jobs)
    groups: dict[tuple[str, InputType, bool, frozenset[str] | None], list[int]] = defaultdict(list)
    for position, job in enumerate(jobs):
        groups[job.model, job.input_type, job.bulk, job.allowed_experts].append(position)
    for (model, input_type, bulk, allowed), positions in groups.items():
        texts = [text for p in positions for text in jobs[p].texts]
        try:
            result = embed_texts(engine, snapshot, texts, model, input_type, bulk=bulk, allowed=allowed)
        except (UnknownExpertError, NoExpertsError, PermissionDeniedError) as exc:
            for p in positions:
                outcomes[p] = exc
            continue
        start = 0
        for p in positions:
            end = start + len(jobs[p].texts)
            decisions = result.decisions[start:end] if result.decisions is not None else None
            tokens = result.tokens[start:end] if result.tokens is not None else None
            outcomes[p] = EmbedResult(result.vectors[start:end], result.adapters_of[start:end], decisions, tokens)
            start = end
    return outcomes  # type: ignore[return-value]


def embed_texts(
    engine: SearchEngine,
    snapshot: Snapshot,
    texts: list[str],
    model: str,
    input_type: InputType,
    *,
    bulk: bool = False,
    allowed: frozenset[str] | None = None,
) -> EmbedResult:
    """One encoder pass over ``texts`` for ``model``: ``base``, ``auto`` (each text routed) or an expert's name."""
    encoder = engine.encoder
    max_length = engine.query_max_length if input_type == "query" else None
    limit = encoder.max_length if max_length is None else min(max_length, encoder.max_length)
    tokens = [min(count, limit) for count in encoder.token_counts(texts)]
    if model == BASE_MODEL:
        vectors = encoder.embed(texts, max_length=max_length, bulk=bulk)
        return EmbedResult(vectors, [None] * len(texts), tokens=tokens)
    decisions = None
    if model == AUTO_MODEL:
        base = encoder.embed(texts, max_length=engine.query_max_length, cache=True, bulk=bulk)
        decisions = engine.decide(snapshot, base, texts, engine.policy, only=allowed)
        names = [decision.experts[0] for decision in decisions]
    else:
        if allowed is not None and model not in allowed:
            raise not_allowed(model, allowed)
        if model not in snapshot.experts:
            raise unknown_expert(snapshot, model)
        names = [model] * len(texts)
    adapters = [_adapter_for(snapshot.experts[name], input_type) for name in names]
    vectors = encoder.embed(texts, expert=adapters, max_length=max_length, bulk=bulk)
    return EmbedResult(
        vectors, [name if adapter else None for name, adapter in zip(names, adapters)], decisions, tokens
    )


def _adapter_for(expert: LoadedExpert, input_type: InputType) -> str | None:
    """Documents are embedded as the expert's index holds them (``AdapterInfo.embeds_documents``)."""
    if input_type == "document" and not expert.manifest.adapter.embeds_documents:
        return None
    return expert.adapter
