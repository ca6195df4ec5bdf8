"""RouterRetriever's pilots (Algorithm 1) on hand-made arrays: winners, ties, one pilot per (source, expert)."""

from __future__ import annotations

import numpy as np
import pytest

from router import PilotError, Router, assigned_pilots, best_experts


def test_each_expert_gets_the_mean_of_the_queries_it_wins_per_source() -> None:
    embeddings = np.array([[1, 0, 0], [3, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 3]], dtype=np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [1.0, 0.0], [0.0, 0.5]])
    sources = ["s1", "s1", "s1", "s2", "s2"]
    pilots = assigned_pilots(embeddings, scores, sources, ["a", "b"])
    # a wins queries 0, 1 (source s1) and 3 (source s2): two pilots, sources in sorted order.
    np.testing.assert_allclose(pilots["a"], [[2, 0, 0], [0, 0, 1]])
    # b wins query 2 (s1) and query 4 (s2).
    np.testing.assert_allclose(pilots["b"], [[0, 1, 0], [0, 0, 3]])
    assert pilots["a"].dtype == np.float32


def test_queries_all_experts_tie_on_are_dropped_not_given_to_the_first() -> None:
    embeddings = np.eye(3, dtype=np.float32)
    scores = np.array([[0.0, 0.0], [0.4, 0.4], [0.2, 0.6]])
    pilots = assigned_pilots(embeddings, scores, ["s"] * 3, ["a", "b"])
    assert set(pilots) == {"b"}  # an expert that wins nothing has no pilots
    np.testing.assert_allclose(pilots["b"], [[0, 0, 1]])


def test_identical_experts_give_no_pilots_at_all() -> None:
    scores = np.tile(np.array([[0.3], [0.0], [1.0]]), (1, 3))
    assert assigned_pilots(np.eye(3), scores, ["s"] * 3, ["a", "b", "c"]) == {}


def test_a_query_shared_by_some_best_experts_counts_for_each_of_them() -> None:
    winners = best_experts(np.array([[0.5, 0.5, 0.1], [0.2, 0.2, 0.2], [0.0, 0.1, 0.0]]))
    assert winners.tolist() == [[True, True, False], [False, False, False], [False, True, False]]
    pilots = assigned_pilots(np.eye(3), np.array([[0.5, 0.5, 0.1], [0, 0, 0], [0, 1, 0]]), ["s"] * 3, ["a", "b", "c"])
    np.testing.assert_allclose(pilots["a"], [[1, 0, 0]])
    np.testing.assert_allclose(pilots["b"], [[0.5, 0, 0.5]])
    assert "c" not in pilots


def test_the_pilots_route_a_query_to_the_expert_that_served_its_neighbours() -> None:
    rng = np.random.default_rng(0)
    near_a = rng.normal([1, 0, 0], 0.05, size=(20, 3))
    near_b = rng.normal([0, 1, 0], 0.05, size=(20, 3))
    scores = np.vstack([np.tile([1.0, 0.0], (20, 1)), np.tile([0.0, 1.0], (20, 1))])
    pilots = assigned_pilots(np.vstack([near_a, near_b]), scores, ["s"] * 40, ["a", "b"])
    router = Router(pilots, aggregate="mean")
    assert [d.experts[0] for d in router.route(np.array([[0.9, 0.1, 0], [0.1, 0.9, 0]]))] == ["a", "b"]


@pytest.mark.parametrize(
    ("scores", "sources", "experts", "message"),
    [
        (np.zeros((2, 3)), ["s", "s"], ["a", "b"], r"shape \(queries, experts\) = \(2, 2\)"),
        (np.zeros((2, 2)), ["s"], ["a", "b"], "one label per query"),
        (np.zeros((2, 2)), ["s", "s"], ["a", "a"], "unique"),
        (np.array([[np.nan, 0], [0, 0]]), ["s", "s"], ["a", "b"], "NaN"),
    ],
)
def test_bad_shapes_and_values_are_refused_with_a_reason(scores, sources, experts, message: str) -> None:
    with pytest.raises(PilotError, match=message):
        assigned_pilots(np.eye(2), scores, sources, experts)
