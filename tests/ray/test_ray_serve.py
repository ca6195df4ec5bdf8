"""Ray Serve: routed search through a local Serve app whose replicas hold experts by multiplexing."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from app.engine.engine import SearchEngine
from app.ray_serve.deployment import build_app
from app.settings import Settings
from experts import Encoder
from router import RoutePolicy
from tests.ray.conftest import free_port

pytestmark = pytest.mark.usefixtures("local_ray")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, serve_experts: Path, tiny_bert_path: Path
) -> Iterator[tuple[str, Settings]]:
    """Three experts served by one router and one searcher replica that holds one expert at a time (pilot votes
    only, top-1 routing unless a request fans out: one routed expert per query, so the LRU order is the test's)."""
    root = tmp_path_factory.mktemp("lru") / "experts"
    shutil.copytree(serve_experts, root)
    settings = Settings(
        data_dir=root,
        base_model=str(tiny_bert_path),
        router_evidence="none",
        torch_threads=1,
        route_top_k=1,
        route_fanout_margin=None,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(settings, max_experts=1, searchers=1, searcher_cpus=0.5, ingress_cpus=0.5)
    serve.run(app, name="rr", route_prefix="/")
    yield f"http://127.0.0.1:{port}", settings
    serve.shutdown()


def test_routed_search_through_serve_matches_the_engine_and_unloads_lru(served: tuple[str, Settings]) -> None:
    url, settings = served
    engine = SearchEngine.open(settings.data_dir, Encoder(settings.base_model), settings.engine_config())
    searcher = serve.get_deployment_handle("ExpertSearcher", app_name="rr")
    queries = ["lift of a swept wing", "sorting methods on tape", "vitamin D and fractures"]
    with httpx.Client(base_url=url, timeout=60) as client:
        for query in queries:  # one at a time: each routed expert replaces the last one held (max_experts=1)
            response = client.post("/search", json={"query": query, "k": 3})
            assert response.status_code == 200, response.text
            (got,) = response.json()["results"]
            (expected,) = engine.search([query], k=3).results
            assert got["route"]["mode"] == "top1" and got["expert"] == expected.decision.experts[0]
            assert [(h["expert"], h["id"]) for h in got["hits"]] == [(h.expert, h.id) for h in expected.hits]
            assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in expected.hits], abs=1e-5)
            assert searcher.held.remote().result() == [expected.decision.experts[0]]

        both = client.post("/search", json={"query": "storage of wings", "k": 6, "route": {"top_k": 2}})
        assert both.status_code == 200, both.text
        (fused,) = both.json()["results"]
        (expected,) = engine.search(["storage of wings"], k=6, policy=RoutePolicy(top_k=2)).results
        assert fused["route"]["mode"] == "fanout"
        assert [(h["expert"], h["id"]) for h in fused["hits"]] == [(h.expert, h.id) for h in expected.hits]

        named = client.post("/search", json={"query": "shock", "k": 2, "expert": "aero"})
        assert named.status_code == 200 and named.json()["results"][0]["route"]["mode"] == "forced"
        unknown = client.post("/search", json={"query": "shock", "expert": "law"})
        assert unknown.status_code == 404 and "Published experts" in unknown.json()["error"]["message"]
        invalid = client.post("/search", json={"query": "shock", "k": 0})
        assert invalid.status_code == 422
        fallback = client.post("/search", json={"query": "shock", "route": {"min_score": 0.9}})
        assert fallback.status_code == 200, fallback.text
        (got,) = fallback.json()["results"]
        (expected,) = engine.search(["shock"], k=10, policy=RoutePolicy(min_score=0.9)).results
        assert got["route"]["mode"] == "fallback" and got["route"]["use_adapters"] is False
        assert [(h["expert"], h["id"]) for h in got["hits"]] == [(h.expert, h.id) for h in expected.hits]
    assert len(searcher.held.remote().result()) == 1
    engine.close()
