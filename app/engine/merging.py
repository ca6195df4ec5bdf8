"""One ranking from the hit lists of a query that went to several experts.

Every collection holds base-encoder vectors, so the experts' lists can be
merged as one index over those collections would rank them: ``score`` takes
each hit's raw dense cosine and raw BM25 score, min-max normalises each side
over the hits of *all* the query's lists together, mixes them with the list's
dense share (its hybrid weight; 1 for a dense list, 0 for a lexical one), and
subtracts ``gap_weight`` times the hit's expert's router-score gap to the top
expert. So a collection whose best documents match the query less well ranks
lower, and the router's belief is a prior on top: a confident router keeps its
top expert's hits in front, an unsure one lets the other collection in where
it matches better. Each list keeps its own order: its joint scores, sorted,
are dealt down it, so the merge decides how the lists interleave and never
reorders one (normalised over other lists' hits, a list's dense and BM25
scores would mix in other proportions than its own fusion's; measured
``ojoint`` in ``bench/merge_tuning.py``: nDCG@10 equal on pseudo queries,
+0.2 on scifact's train queries, docs/eval-2026-12-05/README.md). Each list must be searched :data:`MERGE_DEPTH` deep, so the
normalisation does not depend on the ``k`` a request asked for.

``rrf`` fuses by rank alone, which interleaves a wrong collection's hits with
the right one's whatever the router believed (measured: always fanning out to
two experts by RRF cost 15 nDCG points on the shared collections).

Normalising each list over its own candidates instead (every list's best hit
then scores about 1) was measured too and lost to this on real queries
(``bench/merge_tuning.py``, docs/eval-2026-12-03).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from app.engine.jobs import ExpertHit
from index import reciprocal_rank_fusion
from router import RouteDecision, RoutePolicy

__all__ = ["MERGE_DEPTH", "list_depth", "merge_expert_lists"]

#: How deep each fanned-out expert is searched for a score merge (then cut to the request's ``k``).
MERGE_DEPTH = 100


def list_depth(k: int, decision: RouteDecision, policy: RoutePolicy) -> int:
    """Hits to fetch from each expert of ``decision``: ``k``, or :data:`MERGE_DEPTH` when a score merge follows."""
    return max(k, MERGE_DEPTH) if len(decision.experts) > 1 and policy.merge == "score" else k


def merge_expert_lists(
    lists: Sequence[Sequence[ExpertHit]],
    weights: Sequence[float],
    decision: RouteDecision,
    policy: RoutePolicy,
    *,
    k: int,
) -> list[ExpertHit]:
    """Merge one query's per-expert lists; ``weights[i]`` is list i's dense share (1: dense only, 0: BM25 only).

    >>> hit = lambda e, i, d, l: ExpertHit(e, i, 0.0, "", "", dense_score=d, lexical_score=l)
    >>> d = RouteDecision(("a", "b"), "fanout", (("a", 1.0), ("b", 0.9)), 0.1)
    >>> lists = [[hit("a", "1", 0.8, 5.0), hit("a", "2", 0.5, None)], [hit("b", "1", 0.6, 9.0)]]
    >>> [(h.expert, h.id) for h in merge_expert_lists(lists, [0.5, 0.5], d, RoutePolicy(gap_weight=1.0), k=3)]
    [('b', '1'), ('a', '1'), ('a', '2')]
    """
    if len(lists) == 1:
        return list(lists[0])[:k]
    if policy.merge == "rrf":
        return reciprocal_rank_fusion(lists, limit=k, key=_expert_and_id)
    router_score = dict(decision.scores)
    top = decision.scores[0][1] if decision.scores else 0.0
    dense = _Scale([h.dense_score for hits in lists for h in hits])
    lexical = _Scale([h.lexical_score for hits in lists for h in hits])
    merged: list[tuple[float, int, int, ExpertHit]] = []
    for position, (hits, weight) in enumerate(zip(lists, weights, strict=True)):
        if not hits:
            continue
        penalty = policy.gap_weight * (top - router_score.get(hits[0].expert, top))
        scores = [weight * dense(hit.dense_score) + (1.0 - weight) * lexical(hit.lexical_score) for hit in hits]
        # The list keeps its own order (its expert's fusion, with its own weight and normalisation): its joint
        # scores, best first, are dealt down it, so the merge decides only how the lists interleave.
        for rank, (hit, score) in enumerate(zip(hits, sorted(scores, reverse=True), strict=True)):
            merged.append((score - penalty, position, rank, hit))
    merged.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [replace(hit, score=float(score)) for score, _, _, hit in merged[:k]]


class _Scale:
    """Min-max over the values present; a missing value (that side did not find the hit) maps to 0."""

    def __init__(self, values: Sequence[float | None]) -> None:
        present = [v for v in values if v is not None]
        self.low = min(present, default=0.0)
        self.span = max(present, default=0.0) - self.low

    def __call__(self, value: float | None) -> float:
        if value is None:
            return 0.0
        return 1.0 if self.span <= 1e-12 else (value - self.low) / self.span


def _expert_and_id(hit: ExpertHit) -> tuple[str, str]:
    return hit.expert, hit.id
