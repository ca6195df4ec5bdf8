"""Merging a fanned-out query's lists: by jointly normalised scores with the router's gap as a prior, or by rank."""

from __future__ import annotations

import pytest

from app.engine.jobs import ExpertHit
from app.engine.merging import merge_expert_lists
from app.engine.retrieval import Retrieval
from router import RouteDecision, RoutePolicy


def hits(expert: str, *scores: tuple[float | None, float | None]) -> list[ExpertHit]:
    return [
        ExpertHit(expert, f"{expert}{i}", 0.0, "", "", dense_score=dense, lexical_score=lexical)
        for i, (dense, lexical) in enumerate(scores)
    ]


def decision(**scores: float) -> RouteDecision:
    ranked = tuple(sorted(scores.items(), key=lambda item: -item[1]))
    return RouteDecision(tuple(scores), "fanout", ranked, ranked[0][1] - ranked[1][1])


def ids(merged: list[ExpertHit]) -> list[str]:
    return [hit.id for hit in merged]


def test_scores_are_normalised_over_every_list_together_so_the_better_matching_collection_leads() -> None:
    # b's best hit matches better on both sides than a's best: one index over both collections would rank it first.
    lists = [hits("a", (0.6, 4.0), (0.5, 2.0)), hits("b", (0.8, 8.0), (0.4, 1.0))]
    merged = merge_expert_lists(lists, [0.5, 0.5], decision(a=1.0, b=1.0), RoutePolicy(gap_weight=0.0), k=4)
    assert ids(merged) == ["b0", "a0", "a1", "b1"]
    assert merged[0].score == pytest.approx(1.0) and merged[-1].score == pytest.approx(0.0)


def test_each_list_keeps_its_own_order_and_the_merge_only_interleaves() -> None:
    # a's own fusion ranked a0 (dense-led) over a1 (BM25-led). Over both lists' hits, BM25 spans more than dense, so
    # the joint scores would put a1 first; a0 takes the best of a's joint scores instead, and a's order stands.
    lists = [hits("a", (0.9, 1.0), (0.6, 9.0)), hits("b", (0.5, 2.0), (0.55, 0.5))]
    merged = merge_expert_lists(lists, [0.5, 0.5], decision(a=1.0, b=1.0), RoutePolicy(gap_weight=0.0), k=4)
    assert [hit.id for hit in merged if hit.expert == "a"] == ["a0", "a1"]
    assert [hit.id for hit in merged if hit.expert == "b"] == ["b0", "b1"]
    joint = {"a0": 0.5 * 1.0 + 0.5 * 0.0588, "a1": 0.5 * 0.25 + 0.5 * 1.0}  # dense over 0.5-0.9, BM25 over 0.5-9
    assert merged[0].id == "a0" and merged[0].score == pytest.approx(max(joint.values()), abs=1e-3)
    assert [h.score for h in merged] == sorted((h.score for h in merged), reverse=True)


def test_a_confident_router_keeps_its_top_expert_in_front_and_an_unsure_one_interleaves() -> None:
    lists = [hits("a", (0.6, 4.0), (0.5, 2.0)), hits("b", (0.8, 8.0))]
    confident = merge_expert_lists(lists, [0.5, 0.5], decision(a=2.5, b=0.5), RoutePolicy(gap_weight=1.0), k=3)
    assert ids(confident) == ["a0", "a1", "b0"]
    unsure = merge_expert_lists(lists, [0.5, 0.5], decision(a=1.1, b=1.0), RoutePolicy(gap_weight=1.0), k=3)
    assert ids(unsure) == ["b0", "a0", "a1"]
    assert unsure[0].score == pytest.approx(1.0 - 0.1)  # the merged score is what ranked it


def test_a_side_that_did_not_find_a_hit_adds_nothing_and_dense_lists_use_only_their_cosine() -> None:
    lists = [hits("a", (0.9, None)), hits("b", (0.5, 3.0))]
    merged = merge_expert_lists(lists, [1.0, 0.5], decision(a=1.0, b=1.0), RoutePolicy(gap_weight=0.0), k=2)
    assert ids(merged) == ["a0", "b0"] and [h.score for h in merged] == pytest.approx([1.0, 0.5])


def test_rrf_stays_available_and_one_list_passes_through() -> None:
    lists = [hits("a", (0.9, 1.0), (0.1, 0.5)), hits("b", (0.2, 0.1))]
    rrf = merge_expert_lists(lists, [0.5, 0.5], decision(a=2.0, b=0.0), RoutePolicy(merge="rrf"), k=3)
    assert ids(rrf) == ["a0", "b0", "a1"]  # ranks only: the router's confidence is ignored
    single = merge_expert_lists(
        [hits("a", (0.9, None), (0.1, None))], [1.0], decision(a=1.0, b=0.0), RoutePolicy(), k=1
    )
    assert ids(single) == ["a0"]


def test_a_lists_dense_share_follows_its_mode_and_fusion() -> None:
    assert Retrieval(mode="dense").dense_share == 1.0 and Retrieval(mode="lexical").dense_share == 0.0
    assert Retrieval(mode="hybrid", weight=0.7).dense_share == 0.7
    assert Retrieval(mode="hybrid", fusion="rrf", weight=0.7).dense_share == 0.5
