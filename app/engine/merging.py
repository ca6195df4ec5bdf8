"""One ranking from the hit lists of a query that went to several experts.

Every collection holds base-encoder vectors and each list's hybrid score is
already on one scale (dense and BM25 min-max normalised over that list's
candidates, so in [0, 1]), so lists can be merged by score, with the router's
belief as a prior: ``score`` subtracts from each hit ``gap_weight`` times its
expert's router-score gap to the top expert. A confident router (large gaps)
keeps the top expert's list in front; an unsure one (small gaps) lets the
second collection's best hits in where they score higher. ``rrf`` fuses by
rank alone, which interleaves a wrong collection's hits with the right one's
whatever the router believed (measured: always fanning out to two experts
by RRF cost 15 nDCG points on the shared collections).

BM25 scores are on no common scale (they grow with query length and differ
by collection), so a lexical-only list is min-max normalised over its own hits
before the prior applies; dense cosines of one encoder family are compared as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from app.engine.jobs import ExpertHit
from index import reciprocal_rank_fusion
from router import RouteDecision, RoutePolicy

__all__ = ["merge_expert_lists"]


def merge_expert_lists(
    lists: Sequence[Sequence[ExpertHit]],
    modes: Sequence[str],
    decision: RouteDecision,
    policy: RoutePolicy,
    *,
    k: int,
) -> list[ExpertHit]:
    """Merge one query's per-expert lists (``decision.experts`` order, ``modes[i]`` the search mode of list i).

    >>> hit = lambda e, i, s: ExpertHit(e, i, s, "", "")
    >>> d = RouteDecision(("a", "b"), "fanout", (("a", 1.0), ("b", 0.9)), 0.1)
    >>> lists = [[hit("a", "1", 0.8), hit("a", "2", 0.5)], [hit("b", "1", 0.95)]]
    >>> [(h.expert, h.id) for h in merge_expert_lists(lists, ["hybrid"] * 2, d, RoutePolicy(gap_weight=1.0), k=3)]
    [('b', '1'), ('a', '1'), ('a', '2')]
    """
    if len(lists) == 1:
        return list(lists[0])[:k]
    if policy.merge == "rrf":
        return reciprocal_rank_fusion(lists, limit=k, key=_expert_and_id)
    router_score = dict(decision.scores)
    top = decision.scores[0][1] if decision.scores else 0.0
    merged: list[tuple[float, int, int, ExpertHit]] = []
    for position, (hits, mode) in enumerate(zip(lists, modes, strict=True)):
        if not hits:
            continue
        scores = [hit.score for hit in hits]
        if mode == "lexical":
            low, high = min(scores), max(scores)
            scores = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
        penalty = policy.gap_weight * (top - router_score.get(hits[0].expert, top))
        merged.extend((s - penalty, position, rank, hit) for rank, (s, hit) in enumerate(zip(scores, hits)))
    merged.sort(key=lambda item: (-item[0], item[1], item[2]))
    return [replace(hit, score=float(score)) for score, _, _, hit in merged[:k]]


def _expert_and_id(hit: ExpertHit) -> tuple[str, str]:
    return hit.expert, hit.id
