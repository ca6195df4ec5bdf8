"""Ray Serve: routed search through a local Serve app whose replicas hold experts by multiplexing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ray import serve

from app.building import build_pilots, index_expert
from app.engine import SearchEngine
from app.ray_serve import build_app
from app.settings import Settings
from experts import Encoder, create_expert
from router import RoutePolicy

pytestmark = pytest.mark.usefixtures("local_ray")

AERO = [("a1", "Wing lift", "lift and drag of swept wings at transonic speed"),
        ("a2", "Boundary layers", "laminar boundary layer transition on a flat plate"),
        ("a3", "Shock waves", "oblique shock reflection from a wall")]  # fmt: skip
COMPUTING = [("a1", "Compilers", "a one-pass compiler for an algebraic language"),
             ("a2", "Sorting", "a comparison of sorting methods on tape"),
             ("a3", "Storage", "dynamic storage allocation with linked lists")]  # fmt: skip
MEDICINE = [("m1", "Vitamin D", "vitamin D supplements and the risk of bone fractures"),
            ("m2", "Stem cells", "haematopoietic stem cells in the bone marrow")]  # fmt: skip


def make_expert(root: Path, name: str, docs: list[tuple[str, str, str]], encoder: Encoder, adapter: Path) -> None:
    corpus = root.parent / f"{name}-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    expert = create_expert(root, name, encoder=encoder, adapter_from=adapter)
    index_expert(expert, encoder, [corpus], progress=False)
    build_pilots(expert, encoder, [f"{t} {x}" for _, t, x in docs])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def served(tmp_path: Path, tiny_bert_path: Path, adapter_a: Path, adapter_b: Path) -> Iterator[tuple[str, Settings]]:
    """Three trained experts on disk, served by one router and one searcher replica that holds one expert at a time."""
    root = tmp_path / "experts"
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder, adapter_a)
    make_expert(root, "computing", COMPUTING, encoder, adapter_b)
    make_expert(root, "medicine", MEDICINE, encoder, adapter_a)
    settings = Settings(data_dir=root, base_model=str(tiny_bert_path), router_evidence="none", torch_threads=1)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(settings, max_experts=1, searchers=1, searcher_cpus=0.5, ingress_cpus=0.5)
    serve.run(app, name="rr", route_prefix="/")
    yield f"http://127.0.0.1:{port}", settings
    serve.shutdown()


def test_routed_search_through_serve_matches_the_engine_and_unloads_lru(served: tuple[str, Settings]) -> None:
    url, settings = served
    engine = SearchEngine.open(settings.data_dir, Encoder(settings.base_model), **settings.engine_options())
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
