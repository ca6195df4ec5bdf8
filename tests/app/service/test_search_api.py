"""The search side of the API in-process (TestClient): responses, validation, limits, auth, errors."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import ADMIN_KEY, SEARCH_KEY, wait_for


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and {"type", "message", "details"} == set(body["error"]), body
    return body["error"]


def test_a_routed_search_says_which_expert_answered_and_why(client: TestClient) -> None:
    # top_k 1: the top expert alone (the default also searches experts within RR_ROUTE_FANOUT_MARGIN of it).
    response = client.post("/search", json={"query": "supersonic drag of a wing", "k": 5, "route": {"top_k": 1}})
    assert response.status_code == 200, response.text
    body = response.json()
    (result,) = body["results"]
    assert result["query"] == "supersonic drag of a wing"
    assert result["expert"] in {"alpha", "beta"} and result["route"]["experts"] == [result["expert"]]
    assert result["route"]["mode"] == "top1" and set(result["route"]["router_scores"]) == {"alpha", "beta"}
    assert isinstance(result["route"]["margin"], float)
    hits = result["hits"]
    assert len(hits) == 5 and all(
        hit["expert"] == result["expert"] and hit["id"].startswith(result["expert"]) for hit in hits
    )
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert {"id", "score", "title", "text", "metadata", "expert", "dense_score", "lexical_score", "span"} == set(
        hits[0]
    ) - {"rerank_score"}
    assert hits[0]["rerank_score"] is None  # not reranked (test_rerank_api.py)
    assert result["mode"] == "dense" and hits[0]["dense_score"] == hits[0]["score"] and hits[0]["lexical_score"] is None
    assert {"queue_ms", "base_ms", "route_ms", "expert_ms", "search_ms", "total_ms"} <= set(body["timings_ms"])
    assert body["batch"]["requests"] >= 1 and body["batch"]["queries"] >= 1


def test_a_list_of_queries_is_one_batch_and_options_apply(client: TestClient) -> None:
    body = client.post("/search", json={"queries": ["wing lift", "compiler parser", "shock wave"], "k": 2}).json()
    assert [r["query"] for r in body["results"]] == ["wing lift", "compiler parser", "shock wave"]
    assert body["batch"]["queries"] >= 3 and all(len(r["hits"]) == 2 for r in body["results"])

    forced = client.post("/search", json={"query": "anything", "expert": "beta", "k": 3}).json()["results"][0]
    assert forced["expert"] == "beta" and forced["route"]["mode"] == "forced" and forced["route"]["margin"] is None
    assert all(hit["expert"] == "beta" for hit in forced["hits"])

    fanned = client.post("/search", json={"query": "wing", "k": 4, "route": {"top_k": 2, "threshold": 5.0}}).json()
    route = fanned["results"][0]["route"]
    assert route["mode"] == "fanout" and sorted(route["experts"]) == ["alpha", "beta"]

    fallback = client.post("/search", json={"query": "wing", "route": {"min_score": 1.0}}).json()["results"][0]
    assert fallback["route"]["mode"] == "fallback" and fallback["route"]["use_adapters"] is False

    many = client.post("/search", json={"query": "wing", "k": 1000, "route": {"top_k": 1}}).json()["results"][0]
    assert len(many["hits"]) == 24  # the whole collection: k larger than it is fine


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "body"),
        ({"query": "a", "queries": ["b"]}, "body"),
        ({"query": ""}, "query"),
        ({"query": "   "}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": 42}, "query"),
        ({"queries": []}, "queries"),
        ({"queries": ["ok", " "]}, "queries.1"),
        ({"queries": "not a list"}, "queries"),
        ({"query": "a", "k": 0}, "k"),
        ({"query": "a", "k": 1001}, "k"),
        ({"query": "a", "k": "ten"}, "k"),
        ({"query": "a", "expert": "Not A Name"}, "expert"),
        ({"query": "a", "route": {"top_k": 0}}, "route.top_k"),
        ({"query": "a", "route": {"top_k": 17}}, "route.top_k"),
        ({"query": "a", "route": {"threshold": -1}}, "route.threshold"),
        ({"query": "a", "route": {"min_score": 3.5}}, "route.min_score"),
        ({"query": "a", "route": {"bogus": 1}}, "route.bogus"),
        ({"query": "a", "qurey": "typo"}, "qurey"),
    ],
)
def test_every_field_is_validated(client: TestClient, body: dict, where: str) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == 422, response.text
    error = error_of(response)
    assert error["type"] == "validation_error" and error["details"]
    assert any(".".join(map(str, d["loc"][1:])).startswith(where) or where == "body" for d in error["details"]), error


def test_malformed_json_and_wrong_types_are_422_not_500(client: TestClient) -> None:
    response = client.post("/search", content=b"{not json", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and error_of(response)["type"] == "validation_error"
    response = client.post("/search", content=b"[1, 2]", headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert client.get("/search").status_code == 405 and error_of(client.get("/search"))["type"] == "method_not_allowed"
    assert error_of(client.get("/nowhere"))["type"] == "not_found"


def test_unknown_expert_is_404_and_names_the_published_ones(client: TestClient) -> None:
    response = client.post("/search", json={"query": "x", "expert": "lawx"})
    assert response.status_code == 404
    error = error_of(response)
    assert error["type"] == "unknown_expert" and "Published experts: ['alpha', 'beta']" in error["message"]
    assert client.get("/experts/lawx").status_code == 404


def test_limits_are_413(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, max_queries=3, max_embedding_inputs=3, max_body_bytes=2048)
    response = client.post("/search", json={"queries": ["a", "b", "c", "d"]})
    assert response.status_code == 413 and "limit is 3" in error_of(response)["message"]
    assert client.post("/search", json={"queries": ["a", "b", "c"]}).status_code == 200
    response = client.post("/search", json={"query": "x" * 1500, "k": 1, "expert": "alpha", "pad": "y" * 1000})
    assert response.status_code == 413 and error_of(response)["type"] == "payload_too_large"

    def chunks():  # no Content-Length: counted while it streams
        yield b'{"query": "'
        for _ in range(10):
            yield b"z" * 500
        yield b'"}'

    response = client.post("/search", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and error_of(response)["type"] == "payload_too_large"
    response = client.post("/v1/embeddings", json={"model": "base", "input": ["a", "b", "c", "d"]})
    assert response.status_code == 413 and "RR_MAX_EMBEDDING_INPUTS" in error_of(response)["message"]


def test_search_key_when_configured(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, search_key=SEARCH_KEY)
    body = {"query": "wing"}
    response = client.post("/search", json=body)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert error_of(response)["type"] == "unauthenticated"
    assert client.post("/search", json=body, headers={"Authorization": "Basic abc"}).status_code == 401
    response = client.post("/search", json=body, headers={"Authorization": "Bearer wrong"})
    assert response.status_code == 401 and error_of(response)["type"] == "unauthenticated"
    assert client.post("/search", json=body, headers={"Authorization": f"Bearer {SEARCH_KEY}"}).status_code == 200
    assert client.post("/search", json=body, headers={"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 200
    assert client.get("/experts").status_code == 401
    assert client.post("/v1/embeddings", json={"model": "base", "input": "x"}).status_code == 401
    for probe in ("/healthz", "/readyz", "/metrics"):  # probes need no key
        assert client.get(probe).status_code == 200
    assert SEARCH_KEY not in client.get("/metrics").text


def test_search_is_open_without_a_search_key(client: TestClient) -> None:
    assert (
        client.post("/search", json={"query": "wing"}, headers={"Authorization": "Bearer anything"}).status_code == 200
    )


def test_embeddings_are_openai_compatible(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "base", "input": ["wing lift", "compiler"]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (
        body["object"] == "list" and body["model"] == "base" and set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    )
    assert [d["index"] for d in body["data"]] == [0, 1] and all(d["object"] == "embedding" for d in body["data"])
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)

    single = client.post(
        "/v1/embeddings", json={"model": "base", "input": "wing lift", "encoding_format": "base64"}
    ).json()
    decoded = np.frombuffer(base64.b64decode(single["data"][0]["embedding"]), dtype="<f4")
    assert np.allclose(decoded, vectors[0], atol=1e-5)

    # beta has a trained adapter: its query vectors differ from the base ones, its document vectors do not.
    query = client.post("/v1/embeddings", json={"model": "beta", "input": "wing lift"}).json()["data"][0]
    document = client.post(
        "/v1/embeddings", json={"model": "beta", "input": "wing lift", "input_type": "document"}
    ).json()["data"][0]
    assert query["expert"] == "beta" and document["expert"] is None
    assert not np.allclose(query["embedding"], vectors[0], atol=1e-4)
    assert np.allclose(
        client.post("/v1/embeddings", json={"model": "base", "input": "wing lift", "input_type": "document"}).json()[
            "data"
        ][0]["embedding"],
        document["embedding"],
        atol=1e-5,
    )

    routed = client.post("/v1/embeddings", json={"model": "auto", "input": ["wing lift", "compiler"]}).json()
    assert len(routed["data"]) == 2
    made_by = {d["expert"] for d in routed["data"]}
    assert made_by <= {None, "beta"}  # alpha's adapter is untrained: base vectors
    # The top-level model names what made the vectors: one model for all, else `auto` (the items say which).
    assert routed["model"] == ("auto" if len(made_by) > 1 else (made_by.pop() or "base"))


def test_embeddings_errors(client: TestClient) -> None:
    response = client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
    assert (
        response.status_code == 404
        and "Valid models: ['auto', 'base', 'alpha', 'beta']" in error_of(response)["message"]
    )
    assert client.post("/v1/embeddings", json={"model": "base", "input": "x", "dimensions": 7}).status_code == 422
    assert client.post("/v1/embeddings", json={"model": "base", "input": "x", "dimensions": 32}).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "base", "input": [1, 2]}).status_code == 400  # token ids
    assert client.post("/v1/embeddings", json={"model": "base", "input": []}).status_code == 422
    assert client.post("/v1/embeddings", json={"input": "x"}).status_code == 422
    assert (
        client.post("/v1/embeddings", json={"model": "base", "input": "x", "input_type": "passage"}).status_code == 422
    )
    assert (
        client.post("/v1/embeddings", json={"model": "base", "input": "x", "user": "u1", "future_field": 1}).status_code
        == 200
    )


def test_experts_listing(client: TestClient) -> None:
    listed = client.get("/experts").json()["experts"]
    assert [e["name"] for e in listed] == ["alpha", "beta"]
    alpha = listed[0]
    assert alpha["state"] == "loaded" and alpha["documents"] == 24 and alpha["index"]["factory"] == "Flat"
    assert alpha["routable"] and alpha["pilots"] == 1 and alpha["adapter"]["trained"] is False
    beta = client.get("/experts/beta").json()
    assert beta["adapter"]["trained"] is True and beta["manifest"]["name"] == "beta" and beta["manifest"]["files"]
    assert client.get("/experts/NOT valid").status_code == 422


def test_experts_listing_shows_what_is_still_building(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    service.set_building("cisi", "indexing (first 400 documents)")
    service.set_building("beta", "training step 3/10")  # a serving expert being rebuilt keeps its row
    service.set_building("npl", "failed: corpus.jsonl:3: not JSON")
    listed = {e["name"]: e for e in client.get("/experts").json()["experts"]}
    assert list(listed) == ["alpha", "beta", "cisi", "npl"]
    assert listed["cisi"]["state"] == "building" and listed["cisi"]["building"] == "indexing (first 400 documents)"
    assert listed["cisi"]["documents"] is None and listed["cisi"]["path"] == "cisi"
    assert listed["beta"]["state"] == "loaded" and listed["beta"]["building"] == "training step 3/10"
    assert listed["npl"]["state"] == "failed" and listed["npl"]["error"] == "failed: corpus.jsonl:3: not JSON"
    assert listed["alpha"]["building"] is None
    service.set_building("cisi", None)
    assert "cisi" not in [e["name"] for e in client.get("/experts").json()["experts"]]


def test_probes_metrics_and_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "experts": ["alpha", "beta"]}
    client.post("/search", json={"queries": ["wing", "parser"]})
    client.post("/search", json={"query": "wing", "expert": "lawx"})
    text = client.get("/metrics").text
    for needle in (
        'rr_http_requests_total{method="POST",route="/search",status="200"}',
        'rr_http_requests_total{method="POST",route="/search",status="404"}',
        "rr_http_request_duration_seconds_bucket",
        'rr_batch_queries_count{kind="search"}',
        'rr_batch_requests_count{kind="search"}',
        'rr_queue_depth{kind="search"} 0.0',
        "rr_routed_queries_total{",
        "rr_router_margin_bucket{",
        'rr_index_documents{expert="alpha",index="Flat"} 24.0',
        "rr_experts_published 2.0",
        'rr_stage_duration_seconds_count{stage="base"}',
        "rr_host_other_load_cores ",
    ):
        assert needle in text, needle
    threads = float(re.search(r"^rr_torch_threads (\S+)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    chosen = client.app.state.service.runtime.engine.encoder.thread_choice  # type: ignore[attr-defined]
    assert threads >= 1 if chosen is not None else threads == 0  # per pass (RR_TORCH_THREADS=auto) or fixed
    openapi = client.get("/openapi.json").json()
    assert {"/search", "/v1/embeddings", "/experts", "/admin/experts", "/admin/experts/{name}", "/readyz"} <= set(
        openapi["paths"]
    )
    assert "examples" in str(openapi["components"]["schemas"]["SearchRequest"])
    assert client.get("/docs").status_code == 200


def test_not_ready_while_loading_answers_503_with_retry_after(make_client, experts_root: Path) -> None:
    (experts_root / "registry.json").write_text("{broken")  # start-up fails: the reason is in /readyz
    client = make_client(experts_root, wait=False)
    wait_for(lambda: client.get("/readyz").json()["error"]["details"]["phase"] == "failed", what="start-up to fail")
    response = client.get("/readyz")
    assert response.status_code == 503 and response.headers["Retry-After"] == "1"
    assert "registry file" in error_of(response)["message"]
    response = client.post("/search", json={"query": "wing"})
    assert (
        response.status_code == 503 and error_of(response)["type"] == "not_ready" and "Retry-After" in response.headers
    )
    assert client.get("/healthz").status_code == 200
