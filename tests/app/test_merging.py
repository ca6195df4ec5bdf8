"""Merging a fanned-out query's lists: by score with the router's gap as a prior, or by rank."""

from __future__ import annotations

import pytest

from app.engine.jobs import ExpertHit
from app.engine.merging import merge_expert_lists
from router import RouteDecision, RoutePolicy


def hits(expert: str, *scores: float) -> list[ExpertHit]:
    return [ExpertHit(expert, f"{expert}{i}", s, "", "") for i, s in enumerate(scores)]


def decision(**scores: float) -> RouteDecision:
    ranked = tuple(sorted(scores.items(), key=lambda item: -item[1]))
    return RouteDecision(tuple(scores), "fanout", ranked, ranked[0][1] - ranked[1][1])


def ids(merged: list[ExpertHit]) -> list[str]:
    return [hit.id for hit in merged]


def test_a_confident_router_keeps_the_top_experts_order_and_an_unsure_one_interleaves() -> None:
    lists = [hits("a", 0.9, 0.6, 0.4), hits("b", 0.99, 0.7)]
    confident = merge_expert_lists(lists, ["hybrid"] * 2, decision(a=2.0, b=1.0), RoutePolicy(gap_weight=1.0), k=5)
    assert ids(confident) == ["a0", "a1", "a2", "b0", "b1"]
    unsure = merge_expert_lists(lists, ["hybrid"] * 2, decision(a=1.05, b=1.0), RoutePolicy(gap_weight=1.0), k=5)
    assert ids(unsure) == ["b0", "a0", "b1", "a1", "a2"]
    assert unsure[0].score == pytest.approx(0.99 - 0.05)  # the merged score is what ranked it


def test_gap_weight_zero_ignores_the_router_and_k_cuts_the_list() -> None:
    lists = [hits("a", 0.5), hits("b", 0.9, 0.8)]
    merged = merge_expert_lists(lists, ["hybrid"] * 2, decision(a=3.0, b=0.0), RoutePolicy(gap_weight=0.0), k=2)
    assert ids(merged) == ["b0", "b1"]


def test_lexical_lists_are_normalised_before_merging_since_bm25_has_no_common_scale() -> None:
    lists = [hits("a", 30.0, 15.0, 0.0), hits("b", 3.0, 1.5)]
    merged = merge_expert_lists(lists, ["lexical"] * 2, decision(a=1.0, b=1.0), RoutePolicy(), k=5)
    assert [round(hit.score, 3) for hit in merged] == [1.0, 1.0, 0.5, 0.0, 0.0]


def test_rrf_stays_available_and_one_list_passes_through() -> None:
    lists = [hits("a", 0.9, 0.1), hits("b", 0.2)]
    rrf = merge_expert_lists(lists, ["hybrid"] * 2, decision(a=2.0, b=0.0), RoutePolicy(merge="rrf"), k=3)
    assert ids(rrf) == ["a0", "b0", "a1"]  # ranks only: the router's confidence is ignored
    single = merge_expert_lists([hits("a", 0.9, 0.1)], ["dense"], decision(a=1.0, b=0.0), RoutePolicy(), k=1)
    assert ids(single) == ["a0"]
