"""Collection-selection votes from per-expert document scores."""

from __future__ import annotations

import numpy as np
import pytest

from router import PilotError, Router, RouterError, document_votes, ranked_votes


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
