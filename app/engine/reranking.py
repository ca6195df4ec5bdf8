"""Reranking: a cross-encoder rescores what search found, and its scores put the hits in a new order.

Routed search (bi-encoder + BM25, fused) is cheap enough to look at every
document; the cross-encoder (:class:`experts.CrossEncoder`) reads the query and
a document together, which ranks far better and costs one transformer pass per
pair. So it only sees a query's best candidates: ``/search`` with ``rerank``
retrieves ``max(k, top_n)`` hits, scores each against its query here, and keeps
the best ``k``. ``/v1/rerank`` scores a client's own documents the same way.

Both go through the service's rerank micro-batcher as :class:`RerankJob` objects:
:func:`rerank_jobs` runs the pairs of every job it is given in shared passes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from app.engine.jobs import ExpertHit, SearchResult
from app.settings import Settings
from experts import CrossEncoder, PairScores

logger = logging.getLogger(__name__)

#: What a client is told when it asks for reranking from a server that has no reranker.
RERANKING_OFF = (
    "reranking is off on this server: set RR_RERANKER to a cross-encoder: a Hugging Face model id or a local path, "
    "and restart (for example RR_RERANKER=cross-encoder/ms-marco-MiniLM-L-6-v2)"
)


@dataclass(frozen=True)
class RerankJob:
    """One request's rerankings: (query, documents) groups; ``/v1/rerank`` sends one, a reranked ``/search`` one per query.

    >>> RerankJob((("lift of a swept wing", ("Swept wings.", "A compiler.")),)).size
    2
    """

    groups: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", tuple((query, tuple(docs)) for query, docs in self.groups))

    @property
    def size(self) -> int:
        """Pairs to score: what the micro-batcher counts against its batch and queue limits."""
        return sum(len(docs) for _, docs in self.groups)


def open_reranker(settings: Settings) -> CrossEncoder | None:
    """The cross-encoder ``RR_RERANKER`` names (on the settings' device), or None when reranking is off."""
    if settings.reranker is None:
        return None
    return CrossEncoder(
        settings.reranker,
        max_length=settings.reranker_max_length,
        batch_tokens=settings.batch_tokens,  # the encoder's length bucketing, for the same reason (CPU caches)
        device=settings.device,
    )


def rerank_jobs(reranker: CrossEncoder, jobs: Sequence[RerankJob]) -> list[list[PairScores]]:
    """Score every job's groups in shared passes; one list of :class:`~experts.PairScores` per job, in order."""
    scored = reranker.score_many([group for job in jobs for group in job.groups])
    out, start = [], 0
    for job in jobs:
        out.append(scored[start : start + len(job.groups)])
        start += len(job.groups)
    return out


def ranked(scores: np.ndarray, top_n: int | None = None) -> np.ndarray:
    """Positions of ``scores`` (n,), best first, at most ``top_n``; equal scores keep their given order."""
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return order if top_n is None else order[:top_n]


def passage(hit: ExpertHit) -> str:
    """What the cross-encoder reads of a hit: its title and text (the model truncates it to its token limit)."""
    return " ".join(part for part in (hit.title, hit.text) if part)


def rerank_hits(hits: Sequence[ExpertHit], scores: np.ndarray, *, k: int) -> list[ExpertHit]:
    """The ``k`` best ``hits`` by ``scores`` (one per hit), each carrying its ``rerank_score``.

    ``score`` keeps the retrieval score, so a client sees both orders.
    """
    if len(scores) != len(hits):
        raise ValueError(f"{len(scores)} scores for {len(hits)} hits; give one score per hit")
    return [replace(hits[i], rerank_score=float(scores[i])) for i in ranked(scores, k)]


def rerank_results(results: Sequence[SearchResult], scored: Sequence[PairScores], *, k: int) -> list[SearchResult]:
    """Each query's result with its hits in rerank order, cut to ``k``; ``scored`` in the order of ``results``."""
    return [replace(result, hits=rerank_hits(result.hits, s.scores, k=k)) for result, s in zip(results, scored)]


def search_rerank_job(results: Sequence[SearchResult]) -> RerankJob:
    """The rerankings of a search's results: each query against its hits' passages."""
    return RerankJob(tuple((result.query, tuple(passage(hit) for hit in result.hits)) for result in results))
