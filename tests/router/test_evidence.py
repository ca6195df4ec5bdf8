"""Collection-selection votes from per-expert document scores."""

from __future__ import annotations

import numpy as np
import pytest

from router import (
    BEST_OF,
    PilotError,
    Router,
    RouterError,
    best_score_votes,
    candidate_votes,
    document_votes,
    expert_list_votes,
    ranked_votes,
)


def test_votes_are_shares_of_the_best_documents_over_every_expert() -> None:
    a = np.array([[0.9, 0.8, 0.1], [0.2, 0.1, 0.0]])
    b = np.array([[0.85, 0.3, 0.2], [0.9, 0.8, 0.7]])
    votes = document_votes([a, b], depth=4)
    np.testing.assert_allclose(votes, [[0.5, 0.5], [0.25, 0.75]])


def test_missing_documents_do_not_vote_and_an_unsearched_expert_gets_nothing() -> None:
    a = np.array([[0.9, -np.inf], [-np.inf, -np.inf]])
    none = np.zeros((2, 0))
    votes = document_votes([a, none], depth=5)
    np.testing.assert_allclose(votes, [[1.0, 0.0], [0.0, 0.0]])


def test_bad_input_is_refused() -> None:
    with pytest.raises(RouterError, match="depth"):
        document_votes([np.zeros((1, 2))], depth=0)
    with pytest.raises(RouterError, match="same"):
        document_votes([np.zeros((1, 2)), np.zeros((2, 2))], depth=1)


def test_router_adds_evidence_to_pilot_scores() -> None:
    router = Router({"a": np.array([[1.0, 0.0]]), "b": np.array([[0.0, 1.0]])})
    query = np.array([[0.8, 0.6]])
    assert router.route(query)[0].experts == ("a",)
    decision = router.route(query, evidence=np.array([[0.0, 0.5]]))[0]
    assert decision.experts == ("b",) and dict(decision.scores)["b"] == pytest.approx(1.1)
    with pytest.raises(PilotError, match="shape"):
        router.route(query, evidence=np.zeros((1, 3)))


def test_ranked_votes_equal_document_votes_on_the_same_lists_ties_included() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        lists = [np.round(rng.random((3, int(rng.integers(0, 6)))), 1) for _ in range(4)]  # coarse: many ties
        for scores in lists:
            scores[rng.random(scores.shape) < 0.2] = -np.inf
        merged = np.concatenate(lists, axis=1)
        owners = np.concatenate([np.full(s.shape, e) for e, s in enumerate(lists)], axis=1)
        shuffle = rng.permutation(merged.shape[1])  # the order candidates come in does not matter
        for depth in (1, 3, 10):
            expected = document_votes(lists, depth=depth)
            got = ranked_votes(merged[:, shuffle], owners[:, shuffle], experts=4, depth=depth)
            assert np.array_equal(got, expected)


def test_ranked_votes_refuse_owners_out_of_range() -> None:
    with pytest.raises(RouterError, match="owners must be expert positions"):
        ranked_votes(np.ones((1, 2)), np.array([[0, 2]]), experts=2, depth=1)


def test_best_scores_do_not_reward_a_collection_for_its_size() -> None:
    """A small collection whose best documents match best keeps the vote that a share of the top 20 gives away."""
    small = np.array([[0.82, 0.80, 0.79, 0.78, 0.77]])
    large = np.array([np.linspace(0.785, 0.76, 30)])  # many near documents, none as near as the small one's best
    share = expert_list_votes([small, large], depth=20, rule="share", kind="dense")
    best = expert_list_votes([small, large], depth=20, rule="best", kind="dense")
    assert share[0, 1] > 0.7 and best[0, 0] > 0.7
    np.testing.assert_allclose(best.sum(axis=1), 1.0, rtol=1e-6)
    # The large one twice as large (every near document twice): the best rule hardly moves, the share does.
    twice = [small, np.repeat(large, 2, axis=1)]
    best_twice = expert_list_votes(twice, depth=20, rule="best", kind="dense")
    share_twice = expert_list_votes(twice, depth=20, rule="share", kind="dense")
    assert best_twice[0, 0] > 0.65 and abs(best_twice[0, 0] - best[0, 0]) < 0.05
    assert share_twice[0, 1] >= share[0, 1]


def test_an_expert_missing_from_the_best_documents_scores_at_most_the_last_of_them() -> None:
    a = np.array([[0.9, 0.85, 0.8, 0.75, 0.7, 0.65]])
    b = np.array([[0.1]])
    votes = expert_list_votes([a, b], depth=5, rule="best", kind="dense")
    # a: its 5 best (0.8 mean); b: none among the 5 best, so each slot takes the 5th best, 0.7
    expected = np.exp(np.array([0.8, 0.7]) / 0.01)
    np.testing.assert_allclose(votes[0], expected / expected.sum(), rtol=1e-5)
    assert BEST_OF == 5


def test_lexical_best_scores_are_relative_and_an_unsearched_expert_gets_nothing() -> None:
    a = np.array([[12.0, 11.0, -np.inf], [-np.inf, -np.inf, -np.inf]])
    b = np.array([[6.0, 5.5, 5.0], [-np.inf, -np.inf, -np.inf]])
    none = np.zeros((2, 0))
    votes = expert_list_votes([a, b, none], depth=20, rule="best", kind="lexical")
    # fewer than 20 found: the rest are BM25 scores of documents matching no term, 0
    means = np.array([23.0 / 5, 16.5 / 5])
    expected = np.exp(means / means.max() / 0.1)
    np.testing.assert_allclose(votes[0], [*(expected / expected.sum()), 0.0], rtol=1e-5)
    np.testing.assert_array_equal(votes[1], [0.0, 0.0, 0.0])  # nothing found: no votes
    scaled = expert_list_votes([a * 7, b * 7, none], depth=20, rule="best", kind="lexical")
    np.testing.assert_allclose(scaled, votes, rtol=1e-5)  # BM25's scale does not matter


def test_best_votes_of_merged_candidates_equal_those_of_each_experts_list() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        lists = [-np.sort(-np.round(rng.random((3, int(rng.integers(0, 8)))), 1)) for _ in range(4)]  # many ties
        for scores in lists:
            scores[:, rng.random(scores.shape[1]) < 0.2] = -np.inf
        merged = np.concatenate(lists, axis=1)
        owners = np.concatenate([np.full(s.shape, e) for e, s in enumerate(lists)], axis=1)
        shuffle = rng.permutation(merged.shape[1])
        for depth in (1, 3, 10):
            for kind in ("dense", "lexical"):
                expected = expert_list_votes(lists, depth=depth, rule="best", kind=kind)
                top = np.argsort(-merged[:, shuffle], axis=1, kind="stable")[:, :depth]  # what one union search returns
                got = candidate_votes(
                    np.take_along_axis(merged[:, shuffle], top, axis=1),
                    np.take_along_axis(owners[:, shuffle], top, axis=1),
                    experts=4,
                    depth=depth,
                    rule="best",
                    kind=kind,
                    searched=np.array([s.shape[1] > 0 for s in lists]),
                )
                np.testing.assert_allclose(got, expected, rtol=1e-6, err_msg=f"{depth} {kind}")


def test_best_votes_refuse_bad_input() -> None:
    with pytest.raises(RouterError, match="Invalid kind"):
        best_score_votes(np.ones((1, 2)), np.zeros((1, 2), dtype=int), experts=1, depth=2, kind="sparse")  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="Invalid vote rule 'most'"):
        candidate_votes(np.ones((1, 2)), np.zeros((1, 2), dtype=int), experts=1, depth=2, rule="most", kind="dense")  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="owners must be expert positions"):
        best_score_votes(np.ones((1, 2)), np.array([[0, 2]]), experts=2, depth=1, kind="dense")
