"""Reranking through the API: ``/v1/rerank`` (Cohere/Jina shape) and ``/search``'s ``rerank``, against direct scores.

The reranker is a tiny random ``BertForSequenceClassification`` (``tiny_cross_encoder_path``); every
expected score is computed here with transformers alone, one pair at a time (sigmoid of the logit).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import SEARCH_KEY, wait_for
from tests.conftest import cross_encoder_reference

QUERY = "lift of a swept wing"
DOCUMENTS = [
    "wing lift at supersonic speed",
    "a one-pass compiler for algol",
    "vitamin d supplements and the risk of bone fractures",
    "shock wave",
    "sorting methods on magnetic tape",
]
OFF_MESSAGE = "set RR_RERANKER to a cross-encoder: a Hugging Face model id or a local path, and restart"


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.fixture()
def reranking(make_client, experts_root: Path, tiny_cross_encoder_path: Path) -> TestClient:
    return make_client(experts_root, reranker=str(tiny_cross_encoder_path), max_rerank_documents=40)


def test_rerank_orders_documents_by_the_cross_encoders_relevance(
    reranking: TestClient, tiny_cross_encoder_path: Path
) -> None:
    response = reranking.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = cross_encoder_reference(tiny_cross_encoder_path, QUERY, DOCUMENTS)
    assert [r["index"] for r in body["results"]] == list(np.argsort(-expected, kind="stable"))
    for result in body["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert result["document"] is None
    assert body["model"] == str(tiny_cross_encoder_path) and uuid.UUID(body["id"])
    assert body["meta"] == {"billed_units": {"search_units": 1}}
    assert body["usage"]["total_tokens"] == sum(len(ids) for ids in _pairs(tiny_cross_encoder_path, DOCUMENTS))


def _pairs(path: Path, documents: list[str]) -> list[list[int]]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)([QUERY] * len(documents), documents, truncation=True)["input_ids"]


def test_top_n_objects_documents_and_v2_give_the_same_ranking(reranking: TestClient) -> None:
    full = reranking.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS}).json()["results"]
    top = reranking.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 2}).json()["results"]
    assert top == full[:2]
    clamped = reranking.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 100}).json()
    assert clamped["results"] == full  # more than there are documents: all of them, as Cohere does

    # Jina/Cohere v1 objects (extra fields and unknown options ignored), return_documents, model "default", /v2.
    objects = [{"text": text, "id": f"doc-{i}"} for i, text in enumerate(DOCUMENTS)]
    body = {
        "model": "default",
        "query": QUERY,
        "documents": objects,
        "top_n": 3,
        "return_documents": True,
        "rank_fields": ["text"],
        "max_chunks_per_doc": 10,
    }
    for path in ("/v1/rerank", "/v2/rerank"):
        response = reranking.post(path, json=body)
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert [(r["index"], r["relevance_score"]) for r in results] == [
            (r["index"], r["relevance_score"]) for r in full[:3]
        ]
        assert all(r["document"] == {"text": DOCUMENTS[r["index"]]} for r in results)


def test_model_names_limits_and_validation(reranking: TestClient, tiny_cross_encoder_path: Path) -> None:
    ok = reranking.post("/v1/rerank", json={"model": str(tiny_cross_encoder_path), "query": "q", "documents": ["d"]})
    assert ok.status_code == 200, ok.text
    wrong = reranking.post("/v1/rerank", json={"model": "rerank-english-v3.0", "query": "q", "documents": ["d"]})
    assert wrong.status_code == 404
    error = error_of(wrong)
    assert error["type"] == "unknown_model" and "'default'" in error["message"]
    assert str(tiny_cross_encoder_path) in error["message"]

    too_many = reranking.post("/v1/rerank", json={"query": "q", "documents": ["d"] * 41})  # limit 40
    assert too_many.status_code == 413 and "RR_MAX_RERANK_DOCUMENTS" in error_of(too_many)["message"]

    for bad, where in [
        ({"query": "q", "documents": []}, "documents"),
        ({"query": "", "documents": ["d"]}, "query"),
        ({"query": "   ", "documents": ["d"]}, "query"),
        ({"documents": ["d"]}, "query"),
        ({"query": "q"}, "documents"),
        ({"query": "q", "documents": ["d"], "top_n": 0}, "top_n"),
        ({"query": "q", "documents": [{"title": "no text"}]}, "documents"),
        ({"query": "q" * 2001, "documents": ["d"]}, "query"),
    ]:
        response = reranking.post("/v1/rerank", json=bad)
        assert response.status_code == 422, (bad, response.text)
        assert error_of(response)["type"] == "validation_error" and error_of(response)["message"].startswith(where)


def test_without_a_reranker_both_say_how_to_turn_it_on(client: TestClient) -> None:
    for path, body in [
        ("/v1/rerank", {"query": "q", "documents": ["d"]}),
        ("/v2/rerank", {"query": "q", "documents": ["d"], "model": "anything"}),
        ("/search", {"query": "wing lift", "rerank": {"top_n": 5}}),
    ]:
        response = client.post(path, json=body)
        assert response.status_code == 501, response.text
        error = error_of(response)
        assert error["type"] == "not_implemented" and OFF_MESSAGE in error["message"]
    assert client.post("/search", json={"query": "wing lift"}).status_code == 200  # search itself is unaffected
    assert {"/v1/rerank", "/v2/rerank"} <= set(client.get("/openapi.json").json()["paths"])


def test_a_reranked_search_returns_the_best_k_by_direct_scores(
    reranking: TestClient, tiny_cross_encoder_path: Path
) -> None:
    plain = reranking.post("/search", json={"query": "wing lift", "k": 12}).json()["results"][0]
    response = reranking.post("/search", json={"query": "wing lift", "k": 4, "rerank": {"top_n": 12}})
    assert response.status_code == 200, response.text
    body = response.json()
    (result,) = body["results"]
    candidates = plain["hits"]  # the same routed search, not reranked
    assert all(hit["rerank_score"] is None for hit in candidates)
    passages = [f"{hit['title']} {hit['text']}" for hit in candidates]
    expected = cross_encoder_reference(tiny_cross_encoder_path, "wing lift", passages)
    best = np.argsort(-expected, kind="stable")[:4]
    assert [hit["id"] for hit in result["hits"]] == [candidates[i]["id"] for i in best]
    for hit, i in zip(result["hits"], best):
        assert hit["rerank_score"] == pytest.approx(float(expected[i]), abs=1e-5)
        assert hit["score"] == candidates[i]["score"]  # the retrieval score stays
    assert result["route"] == plain["route"] and body["timings_ms"]["rerank_ms"] > 0


def test_reranked_search_depth_several_queries_and_limits(reranking: TestClient) -> None:
    # k above top_n: k candidates, all of them reranked.
    deep = reranking.post("/search", json={"query": "wing lift", "k": 6, "rerank": {"top_n": 2}}).json()
    hits = deep["results"][0]["hits"]
    assert len(hits) == 6 and all(hit["rerank_score"] is not None for hit in hits)
    assert [h["rerank_score"] for h in hits] == sorted((h["rerank_score"] for h in hits), reverse=True)

    body = {"queries": ["wing lift", "compiler parser"], "k": 3, "rerank": {"top_n": 20}}
    results = reranking.post("/search", json=body).json()["results"]
    for result, query in zip(results, ["wing lift", "compiler parser"]):
        alone = reranking.post("/search", json={"query": query, "k": 3, "rerank": {"top_n": 20}}).json()
        single = alone["results"][0]["hits"]  # padded with other pairs, scored the same (to float precision)
        assert [hit["id"] for hit in result["hits"]] == [hit["id"] for hit in single]
        assert [hit["rerank_score"] for hit in result["hits"]] == pytest.approx([h["rerank_score"] for h in single])

    over = reranking.post("/search", json={"queries": ["a", "b", "c"], "rerank": {"top_n": 14}})  # 42 > 40
    assert over.status_code == 413 and "RR_MAX_RERANK_DOCUMENTS" in error_of(over)["message"]
    for bad in [{"top_n": 0}, {"top_n": 1001}, {"top_n": 5, "model": "x"}]:
        assert reranking.post("/search", json={"query": "a", "rerank": bad}).status_code == 422


def test_a_cross_encoder_that_fails_to_load_is_a_start_up_failure(
    make_client, experts_root: Path, tiny_bert_path: Path
) -> None:
    client = make_client(experts_root, wait=False, reranker=str(tiny_bert_path))  # an encoder, no head
    wait_for(lambda: client.get("/readyz").status_code == 503 and "failed" in client.get("/readyz").text)
    message = error_of(client.get("/readyz"))["message"]
    assert "start-up failed: ModelLoadError" in message and "not a cross-encoder" in message


def test_rerank_needs_the_search_key_when_one_is_set(
    make_client, experts_root: Path, tiny_cross_encoder_path: Path
) -> None:
    client = make_client(experts_root, reranker=str(tiny_cross_encoder_path), search_key=SEARCH_KEY)
    body = {"query": "q", "documents": ["d"]}
    assert client.post("/v1/rerank", json=body).status_code == 401
    assert client.post("/v1/rerank", json=body, headers={"Authorization": f"Bearer {SEARCH_KEY}"}).status_code == 200


def test_a_real_server_reranks_over_http(start_server, experts_root: Path, tiny_cross_encoder_path: Path) -> None:
    server = start_server(experts_root, env={"RR_RERANKER": str(tiny_cross_encoder_path)})
    expected = cross_encoder_reference(tiny_cross_encoder_path, QUERY, DOCUMENTS)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        body = http.post("/v1/rerank", json={"query": QUERY, "documents": DOCUMENTS, "top_n": 3}).json()
        assert [r["index"] for r in body["results"]] == list(np.argsort(-expected, kind="stable")[:3])
        searched = http.post("/search", json={"query": "wing lift", "k": 2, "rerank": {"top_n": 8}}).json()
        assert len(searched["results"][0]["hits"]) == 2 and "rerank_ms" in searched["timings_ms"]
        metrics = http.get("/metrics").text
    assert 'rr_stage_duration_seconds_count{stage="rerank"} 2.0' in metrics
    assert 'rr_batch_queries_count{kind="rerank"} 2.0' in metrics
