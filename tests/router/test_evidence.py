"""Collection-selection votes from per-expert document scores."""

from __future__ import annotations

import numpy as np
import pytest

from router import PilotError, Router, RouterError, document_votes


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
