"""``/v1/embeddings`` and ``/v1/models`` beyond the basics: limits, token ids, usage, turns, the models list."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from app.publishing.registry import RegistryFile
from experts import Encoder
from tests.app.service.conftest import ADMIN

TEXTS = ["wing lift at high angle of attack", "compiler", "a sorting algorithm for memory caches", "shock wave"]


def error_of(response) -> dict:
    return response.json()["error"]


def test_inputs_have_their_own_limit_apart_from_the_search_limit(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, max_queries=2, max_embedding_inputs=3)
    assert client.post("/v1/embeddings", json={"model": "base", "input": TEXTS[:3]}).status_code == 200
    response = client.post("/v1/embeddings", json={"model": "base", "input": TEXTS})
    assert response.status_code == 413
    assert error_of(response)["message"] == "4 inputs in one request; the limit is 3 (RR_MAX_EMBEDDING_INPUTS)"


def test_the_default_limit_is_openais_2048(client: TestClient) -> None:
    texts = [f"query number {i}" for i in range(2048)]
    body = client.post("/v1/embeddings", json={"model": "base", "input": texts}).json()
    assert [item["index"] for item in body["data"]] == list(range(2048))
    response = client.post("/v1/embeddings", json={"model": "base", "input": [*texts, "one more"]})
    assert response.status_code == 413 and "the limit is 2048" in error_of(response)["message"]


def test_token_ids_get_a_400_that_says_what_to_send(client: TestClient) -> None:
    for tokens in ([1820, 4589], [[1820, 4589], [9906]]):
        response = client.post("/v1/embeddings", json={"model": "base", "input": tokens})
        assert response.status_code == 400, response.text
        error = error_of(response)
        assert error["type"] == "unsupported_input"
        assert "takes text" in error["message"] and "check_embedding_ctx_length=False" in error["message"]
    # Neither text nor token ids: a plain validation error, as before.
    assert client.post("/v1/embeddings", json={"model": "base", "input": [[]]}).status_code == 422
    assert client.post("/v1/embeddings", json={"model": "base", "input": ["text", 3]}).status_code == 422


def test_usage_counts_the_tokens_the_encoder_read(client: TestClient, tiny_encoder: Encoder) -> None:
    long_text = "boundary layer " * 100  # over the tiny encoder's 64 tokens: cut, and counted as cut
    texts = [*TEXTS, long_text]
    body = client.post("/v1/embeddings", json={"model": "beta", "input": texts}).json()
    expected = [min(count, tiny_encoder.max_length) for count in tiny_encoder.token_counts(texts)]
    assert body["usage"] == {"prompt_tokens": sum(expected), "total_tokens": sum(expected)}
    assert expected[-1] == tiny_encoder.max_length and all(count > 2 for count in expected)


def test_a_large_request_is_embedded_in_turns_with_the_same_vectors(make_client, experts_root: Path) -> None:
    whole = make_client(experts_root, embedding_turn_inputs=64)
    turns = make_client(experts_root, embedding_turn_inputs=3)
    texts = [f"{text} {i}" for i in range(5) for text in TEXTS]  # 20 inputs: 7 turns of 3
    for model in ("base", "beta", "auto"):
        one = whole.post("/v1/embeddings", json={"model": model, "input": texts}).json()
        many = turns.post("/v1/embeddings", json={"model": model, "input": texts}).json()
        assert [d["index"] for d in many["data"]] == list(range(len(texts)))
        assert [d["expert"] for d in many["data"]] == [d["expert"] for d in one["data"]]
        assert np.allclose([d["embedding"] for d in many["data"]], [d["embedding"] for d in one["data"]], atol=1e-5)
        assert many["usage"] == one["usage"] and many["model"] == one["model"]
    # A turn counts as one batch of at most 3 texts.
    assert 'rr_batch_queries_bucket{kind="embeddings",le="4.0"} 21.0' in turns.get("/metrics").text


def test_auto_names_the_model_that_made_the_vectors(client: TestClient) -> None:
    # beta holds the computing topics and has a trained adapter; alpha's adapter is untrained (base vectors).
    beta = client.post("/v1/embeddings", json={"model": "auto", "input": ["compiler parser", "operating system"]})
    items = beta.json()["data"]
    if {item["expert"] for item in items} == {"beta"}:
        assert beta.json()["model"] == "beta"
    mixed = client.post("/v1/embeddings", json={"model": "auto", "input": TEXTS}).json()
    experts = {item["expert"] for item in mixed["data"]}
    assert mixed["model"] == ("auto" if len(experts) > 1 else (experts.pop() or "base"))


def test_models_lists_base_auto_and_every_serving_expert(client: TestClient, experts_root: Path) -> None:
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    models = {model["id"]: model for model in listed["data"]}
    assert list(models) == ["base", "auto", "alpha", "beta"]
    base_id = models["base"]["root"]
    assert all(model["object"] == "model" and model["root"] == base_id for model in models.values())
    assert models["base"]["parent"] is None and models["beta"]["parent"] == base_id
    published = {entry.name: entry.published_at for entry in RegistryFile(experts_root).read()}
    assert models["beta"]["created"] == int(datetime.fromisoformat(published["beta"]).timestamp())
    assert client.get("/v1/models/beta").json() == models["beta"]
    response = client.get("/v1/models/text-embedding-3-small")
    assert response.status_code == 404
    assert error_of(response)["message"].endswith("Valid models: ['alpha', 'auto', 'base', 'beta']")


def test_models_change_live_as_experts_come_and_go(client: TestClient) -> None:
    added = client.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN)
    assert added.status_code in (200, 201), added.text
    assert "gamma" in [model["id"] for model in client.get("/v1/models").json()["data"]]
    assert client.delete("/admin/experts/alpha", headers=ADMIN).status_code == 200
    ids = [model["id"] for model in client.get("/v1/models").json()["data"]]
    assert ids == ["base", "auto", "beta", "gamma"]
    assert client.get("/v1/models/alpha").status_code == 404
