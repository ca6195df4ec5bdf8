"""Reciprocal rank fusion of ranked hit lists.

Used when a query fans out to several experts (or, later, dense + lexical):
scores from different collections or models are not on one scale, ranks are.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import replace
from operator import attrgetter
from typing import Any, TypeVar

from index.errors import InvalidParameterError

#: Anything ranked: a frozen dataclass with a ``score`` field (``Hit``, or a caller's own hit type).
RankedT = TypeVar("RankedT", bound=Any)

__all__ = ["reciprocal_rank_fusion"]


def reciprocal_rank_fusion(
    result_lists: Sequence[Sequence[RankedT]],
    *,
    k: int = 60,
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

    ``k`` = 60 is the constant of Cormack et al. (2009); larger values flatten
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
