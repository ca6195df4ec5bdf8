"""Dense, lexical and hybrid search through ``POST /search``: scores shown, defaults, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import ADMIN

QUERY = "shock wave 13"  # BM25 alone can tell alpha-13 ("shock wave 13", "... number 13") from its siblings


def search(client: TestClient, **body: object) -> dict:
    response = client.post("/search", json={"query": QUERY, "k": 5, "expert": "alpha", **body})
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return result


def test_lexical_mode_ranks_by_bm25_alone(client: TestClient) -> None:
    result = search(client, mode="lexical")
    assert result["mode"] == "lexical"
    top = result["hits"][0]
    assert top["id"] == "alpha-13"
    assert all(h["score"] == h["lexical_score"] and h["dense_score"] is None for h in result["hits"])


def test_hybrid_mode_fuses_and_shows_both_scores(client: TestClient) -> None:
    result = search(client, mode="hybrid")
    assert result["mode"] == "hybrid"
    hits = result["hits"]
    assert hits[0]["id"] == "alpha-13"
    assert hits[0]["dense_score"] is not None and hits[0]["lexical_score"] is not None
    assert all(0.0 <= h["score"] <= 1.0 for h in hits)  # min-max normalised, weights summing to 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    # Weight 1 is the dense ranking; RRF scores are sums of 1 / (60 + rank).
    dense_only = search(client, mode="hybrid", hybrid_weight=1.0)["hits"]
    assert [h["id"] for h in dense_only] == [h["id"] for h in search(client, mode="dense")["hits"]]
    rrf = search(client, mode="hybrid", fusion="rrf")["hits"]
    assert rrf[0]["score"] <= 2 / 61 + 1e-9


def test_hybrid_default_degrades_to_dense_for_an_expert_without_bm25_and_an_explicit_request_is_refused(
    make_client, experts_root: Path
) -> None:
    client = make_client(experts_root, search_mode="hybrid")
    assert client.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN).status_code == 201
    assert search(client)["mode"] == "hybrid"  # alpha has a BM25 index: the default applies
    response = client.post("/search", json={"query": "blood pressure", "expert": "gamma"})
    assert response.status_code == 200 and response.json()["results"][0]["mode"] == "dense"
    response = client.post("/search", json={"query": "blood pressure", "expert": "gamma", "mode": "hybrid"})
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["type"] == "no_lexical_index" and "'gamma'" in error["message"] and "rr index" in error["message"]


@pytest.mark.parametrize(
    "body", [{"mode": "fuzzy"}, {"fusion": "max"}, {"hybrid_weight": 1.5}, {"hybrid_weight": -0.1}]
)
def test_bad_retrieval_options_are_422(client: TestClient, body: dict) -> None:
    response = client.post("/search", json={"query": QUERY, **body})
    assert response.status_code == 422, response.text
