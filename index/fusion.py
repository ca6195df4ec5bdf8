"""Fusing ranked lists: one collection's dense and lexical candidates, and hit lists by rank.

Dense cosine scores and BM25 scores live on different scales, and the scale
of BM25 moves with query length, so they are never added raw.
:func:`fuse_dense_lexical` fuses one collection's two candidate lists by one of two rules:

- ``weighted`` (the default): min-max normalise each query's list over its own
  candidates, then ``weight * dense + (1 - weight) * lexical``; a document
  missing from one list gets 0 from that side. On our five collections this
  beat RRF a little (``../shared/DESIGN.md``: base hybrid .532 average).
- ``rrf``: reciprocal rank fusion, ``sum 1 / (RRF_K + rank)``; no weight, no scale.

It works on the (nq, k) score and row-id arrays both searches return (-1
pads), so it needs no documents; every fused hit keeps its two raw scores,
because a user tuning a system wants to see why a document ranked where it did.

:func:`reciprocal_rank_fusion` fuses lists of hits (any frozen dataclass with
a ``score``) by rank alone, with the same constant: for lists whose scores are
on no common scale (a fan-out's ``merge=rrf``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from operator import attrgetter
from typing import Any, Literal, TypeVar

import numpy as np

from index.errors import InvalidParameterError

FusionMethod = Literal["weighted", "rrf"]
FUSION_METHODS: tuple[FusionMethod, ...] = ("weighted", "rrf")
#: The RRF constant of Cormack et al. (2009), for both fusions.
RRF_K = 60
#: Anything ranked: a frozen dataclass with a ``score`` field (``Hit``, or a caller's own hit type).
RankedT = TypeVar("RankedT", bound=Any)

__all__ = ["FUSION_METHODS", "RRF_K", "FusionMethod", "Fused", "fuse_dense_lexical", "reciprocal_rank_fusion"]


@dataclass(frozen=True)
class Fused:
    """(nq, k) arrays: fused score and row id (-1 pads), and each hit's raw dense / lexical score (NaN: not in that list)."""

    scores: np.ndarray
    ids: np.ndarray
    dense: np.ndarray
    lexical: np.ndarray


def _normalised(scores: np.ndarray) -> np.ndarray:
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 1e-12:
        return np.ones_like(scores)  # one candidate, or all equal: every one is the best there is
    return (scores - low) / (high - low)


def _valid(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = (ids >= 0) & np.isfinite(scores)
    return scores[keep].astype(np.float64), ids[keep]


def fuse_dense_lexical(
    dense: tuple[np.ndarray, np.ndarray],
    lexical: tuple[np.ndarray, np.ndarray],
    *,
    k: int,
    method: FusionMethod = "weighted",
    weight: float = 0.5,
) -> Fused:
    """Fuse per query the dense ``(scores, ids)`` and lexical ``(scores, ids)`` candidates; keep the top ``k``.

    ``weight`` is the dense share with ``weighted`` (1.0: dense only, 0.0:
    lexical only) and is ignored by ``rrf``. Ties are broken by row id, so the
    result is deterministic.

    >>> d = (np.array([[0.9, 0.85, 0.5]]), np.array([[1, 2, 4]]))
    >>> l = (np.array([[7.0, 3.0]]), np.array([[2, 3]]))
    >>> fuse_dense_lexical(d, l, k=3).ids.tolist()
    [[2, 1, 3]]
    """
    if method not in FUSION_METHODS:
        raise InvalidParameterError(f"Invalid fusion {method!r}. Valid fusions are: {', '.join(FUSION_METHODS)}")
    if not 0.0 <= weight <= 1.0:
        raise InvalidParameterError(f"weight must be between 0 and 1, got {weight}")
    if k < 1:
        raise InvalidParameterError(f"k must be >= 1, got {k}")
    dense_scores, dense_ids = (np.atleast_2d(np.asarray(a)) for a in dense)
    lexical_scores, lexical_ids = (np.atleast_2d(np.asarray(a)) for a in lexical)
    if len(dense_ids) != len(lexical_ids):
        raise InvalidParameterError(f"dense and lexical lists cover {len(dense_ids)} and {len(lexical_ids)} queries")
    n = len(dense_ids)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_dense = np.full((n, k), np.nan, dtype=np.float32)
    out_lexical = np.full((n, k), np.nan, dtype=np.float32)
    for row in range(n):
        d_scores, d_ids = _valid(dense_scores[row], dense_ids[row])
        l_scores, l_ids = _valid(lexical_scores[row], lexical_ids[row])
        fused: dict[int, float] = {}
        if method == "weighted":
            parts = (
                (d_ids, _normalised(d_scores) * weight if len(d_ids) else d_scores),
                (l_ids, _normalised(l_scores) * (1.0 - weight) if len(l_ids) else l_scores),
            )
        else:
            parts = (
                (d_ids, 1.0 / (RRF_K + np.arange(1, len(d_ids) + 1))),
                (l_ids, 1.0 / (RRF_K + np.arange(1, len(l_ids) + 1))),
            )
        for ids, contributions in parts:
            for row_id, value in zip(ids.tolist(), contributions.tolist()):
                fused[row_id] = fused.get(row_id, 0.0) + value
        ranked = sorted(fused.items(), key=lambda item: (-item[1], item[0]))[:k]
        if not ranked:
            continue
        raw_dense = dict(zip(d_ids.tolist(), d_scores.tolist()))
        raw_lexical = dict(zip(l_ids.tolist(), l_scores.tolist()))
        for column, (row_id, score) in enumerate(ranked):
            out_ids[row, column], out_scores[row, column] = row_id, score
            out_dense[row, column] = raw_dense.get(row_id, np.nan)
            out_lexical[row, column] = raw_lexical.get(row_id, np.nan)
    return Fused(out_scores, out_ids, out_dense, out_lexical)


def reciprocal_rank_fusion(
    result_lists: Sequence[Sequence[RankedT]],
    *,
    k: int = RRF_K,
    limit: int,
    key: Callable[[RankedT], Hashable] = attrgetter("id"),
) -> list[RankedT]:
    """Fuse ranked lists: each hit scores ``sum over lists of 1 / (k + rank)``, rank 1-based.

    A hit's identity is ``key(hit)``, by default its ``id``: the same document
    found in two lists (say by two experts over the same collection) merges
    into one hit whose score adds both contributions; lists from different
    collections pass a key that includes the collection. Within one list only a document's first
    (best) occurrence counts. The returned hits carry the fused score; their
    title, text and metadata come from the document's best-ranked occurrence
    (the earliest list wins a tie). Ties in fused score are broken by best rank,
    then by first appearance, so the output is deterministic.

    ``k`` = :data:`RRF_K` (60) is the constant of Cormack et al. (2009); larger values flatten
    the advantage of top ranks.

    >>> a = [Hit("d1", 0.9, "", "x"), Hit("d2", 0.8, "", "y")]
    >>> b = [Hit("d2", 12.0, "", "y"), Hit("d3", 11.0, "", "z")]
    >>> [h.id for h in reciprocal_rank_fusion([a, b], limit=3)]
    ['d2', 'd1', 'd3']
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidParameterError(f"k must be a non-negative integer (60 is customary), got {k!r}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise InvalidParameterError(f"limit must be a positive integer, got {limit!r}")

    scores: dict[Hashable, float] = {}
    best: dict[Hashable, tuple[int, int, RankedT]] = {}  # key -> (best rank, first-seen order, representative)
    for hits in result_lists:
        seen: set[Hashable] = set()
        for rank, hit in enumerate(hits, start=1):
            identity = key(hit)
            if identity in seen:
                continue
            seen.add(identity)
            scores[identity] = scores.get(identity, 0.0) + 1.0 / (k + rank)
            previous = best.get(identity)
            if previous is None:
                best[identity] = (rank, len(best), hit)
            elif rank < previous[0]:
                best[identity] = (rank, previous[1], hit)

    order = sorted(scores, key=lambda doc_id: (-scores[doc_id], best[doc_id][0], best[doc_id][1]))
    return [replace(best[doc_id][2], score=scores[doc_id]) for doc_id in order[:limit]]
