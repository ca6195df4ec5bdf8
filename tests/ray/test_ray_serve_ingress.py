"""The Ray Serve ingress behaves as ``rr serve`` for what it serves: keys, limits, errors, corpus votes, admin, metrics.

One Serve app for the whole module (starting one takes seconds on 2 cores):
corpus votes on (``documents+bm25``, ``rr serve``'s default), both keys set and a key file,
small limits, one searcher replica holding all three experts.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
from ray import serve

from app.api.keys import hash_secret
from app.engine.engine import SearchEngine
from app.publishing.registry import RegistryFile
from app.ray_serve.deployment import build_app
from app.settings import Settings
from experts import Encoder
from tests.ray.conftest import free_port

pytestmark = pytest.mark.usefixtures("local_ray")

SEARCH_KEY, ADMIN_KEY = "search-key-123", "admin-key-456"
READER_KEY, LIMITED_KEY = "reader-key-789", "limited-key-012"
QUERIES = [
    "lift of a swept wing",
    "sorting methods on tape",
    "vitamin D and fractures",
    "storage of wings",
    "shock",
    "stem cells in marrow",
    "a compiler for wings",
    "boundary of the bone",
]


@dataclass
class Served:
    client: httpx.Client
    settings: Settings
    engine: SearchEngine  # rr serve's engine over the same experts, for comparison

    def search(self, body: dict[str, object], *, key: str | None = SEARCH_KEY) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return self.client.post("/search", json=body, headers=headers)

    def admin(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve_experts: Path, tiny_bert_path: Path) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("ingress") / "experts"
    shutil.copytree(serve_experts, root)
    keys_file = root.parent / "keys.toml"
    keys_file.write_text(
        f'[[keys]]\nname = "reader"\nhash = "{hash_secret(READER_KEY)}"\nscopes = ["search"]\n'
        f'[[keys]]\nname = "limited"\nhash = "{hash_secret(LIMITED_KEY)}"\nscopes = ["search"]\nexperts = ["aero"]\n'
    )
    settings = Settings(
        data_dir=root,
        base_model=str(tiny_bert_path),
        router_evidence="documents+bm25",
        torch_threads=1,
        search_key=SEARCH_KEY,
        admin_key=ADMIN_KEY,
        keys_file=keys_file,
        max_body_bytes=2048,
        max_queries=4,
    )
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(settings, max_experts=3, searchers=1, searcher_cpus=0.5, ingress_cpus=0.5, registry_poll_s=0.5)
    serve.run(app, name="rr-ingress", route_prefix="/")
    engine = SearchEngine.open(root, Encoder(settings.base_model), settings.engine_config())
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield Served(client, settings, engine)
    engine.close()
    serve.shutdown()


def test_keys_are_required_as_in_rr_serve(served: Served) -> None:
    missing = served.search({"query": "shock"}, key=None)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "unauthenticated"
    assert missing.headers["WWW-Authenticate"] == "Bearer"
    wrong = served.search({"query": "shock"}, key="not-the-key")
    assert wrong.status_code == 401 and wrong.json()["error"]["type"] == "unauthenticated"
    assert served.search({"query": "shock"}, key=ADMIN_KEY).status_code == 200  # the admin key is a search key too
    as_searcher = served.client.delete("/admin/experts/aero", headers={"Authorization": f"Bearer {SEARCH_KEY}"})
    assert as_searcher.status_code == 403 and "admin API" in as_searcher.json()["error"]["message"]
    assert served.client.post("/admin/experts", json={"path": "aero"}).status_code == 401
    for probe in ("/healthz", "/metrics"):  # probes and metrics need no key
        assert served.client.get(probe).status_code == 200


def test_file_keys_work_and_a_key_limited_to_experts_is_refused_not_widened(served: Served) -> None:
    assert served.search({"query": "shock"}, key=READER_KEY).status_code == 200
    as_reader = served.client.delete("/admin/experts/aero", headers={"Authorization": f"Bearer {READER_KEY}"})
    assert as_reader.status_code == 403 and "lacks scope 'admin'" in as_reader.json()["error"]["message"]
    limited = served.search({"query": "shock"}, key=LIMITED_KEY)
    assert limited.status_code == 403 and "Ray Serve ingress does not restrict routing" in limited.text
    assert 'rr_requests_by_key_total{key="reader",route="/search",status="200"}' in served.client.get("/metrics").text


def test_limits_and_validation_give_rr_serves_error_bodies(served: Served) -> None:
    big = served.search({"query": "wing " * 600})  # ~3 kB: over the 2,048-byte body limit, before any parsing
    assert big.status_code == 413, big.text
    assert big.json()["error"] == {
        "type": "payload_too_large",
        "message": "request body is larger than the limit of 2048 bytes",
        "details": None,
    }
    many = served.search({"queries": ["wing"] * 5})
    assert many.status_code == 413 and "RR_MAX_QUERIES" in many.json()["error"]["message"]
    headers = {"Authorization": f"Bearer {SEARCH_KEY}", "Content-Type": "application/json"}
    broken = served.client.post("/search", content=b'{"query": "wing",', headers=headers)
    assert broken.status_code == 422 and broken.json()["error"]["type"] == "validation_error"
    for body in (
        {"query": "wing", "k": 0},
        {"query": "   "},
        {"query": "wing", "colour": "red"},
        {"query": "w", "route": {"top_k": 99}},
    ):
        invalid = served.search(body)
        assert invalid.status_code == 422 and invalid.json()["error"]["type"] == "validation_error", body
    text = served.client.post("/search", content=b"wing", headers={**headers, "Content-Type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"]["type"] == "unsupported_media_type"
    unknown = served.search({"query": "shock", "expert": "law"})
    assert unknown.status_code == 404 and unknown.json()["error"]["type"] == "unknown_expert"


def test_a_search_with_rerank_is_refused_not_answered_in_routed_order(served: Served) -> None:
    refused = served.search({"query": "wing", "rerank": {"top_n": 5}})
    assert refused.status_code == 501, refused.text
    error = refused.json()["error"]
    assert error["type"] == "not_implemented" and "reranking is served by `rr serve` only" in error["message"]


def _compare(got: dict[str, object], expected: object) -> None:
    route = got["route"]  # type: ignore[index]
    decision = expected.decision  # type: ignore[attr-defined]
    assert (route["experts"], route["mode"], route["use_adapters"]) == (
        list(decision.experts),
        decision.mode,
        decision.use_adapters,
    )
    assert route["router_scores"] == pytest.approx(dict(decision.scores), abs=1e-5)
    assert [(h["expert"], h["id"]) for h in got["hits"]] == [(h.expert, h.id) for h in expected.hits]  # type: ignore[attr-defined, index]


def test_corpus_votes_give_rr_serves_decisions(served: Served) -> None:
    pilots_only = SearchEngine.open(
        served.settings.data_dir, served.engine.encoder, replace(served.settings.engine_config(), evidence="none")
    )
    default = served.settings.route_policy()  # a request's route fields override the service's default
    for policy, route in (
        (default, {}),
        (default.updated(top_k=1), {"top_k": 1}),
        (default.updated(top_k=2, fanout_margin=0.3), {"top_k": 2, "fanout_margin": 0.3}),
    ):
        for start in range(0, len(QUERIES), 4):
            queries = QUERIES[start : start + 4]
            response = served.search({"queries": queries, "k": 3, "route": route})
            assert response.status_code == 200, response.text
            assert "evidence_ms" in response.json()["timings_ms"]
            expected = served.engine.search(queries, k=3, policy=policy).results
            for got, want in zip(response.json()["results"], expected, strict=True):
                _compare(got, want)
    # The votes count: without them the router's scores differ (so the equality above is not pilots alone).
    with_votes = [dict(r.decision.scores) for r in served.engine.search(QUERIES[:4], k=1).results]
    without = [dict(r.decision.scores) for r in pilots_only.search(QUERIES[:4], k=1).results]
    assert any(abs(a[name] - b[name]) > 0.05 for a, b in zip(with_votes, without) for name in a)
    pilots_only.close()


def test_min_score_falls_back_to_the_base_encoder_as_rr_serve_does(served: Served) -> None:
    # Scores are pilot votes (<= 1) plus corpus votes (<= 2): words no document holds get no BM25 votes.
    queries = ["xyzzy", "zebra crossing", "lift of a swept wing"]
    route = {"top_k": 2, "min_score": 1.0, "fanout_margin": 3.0}  # router scores are at most 3: always fan out
    policy = served.settings.route_policy().updated(**route)
    expected = served.engine.search(queries, k=3, policy=policy).results
    assert [r.decision.mode for r in expected] == ["fallback", "fallback", "fanout"]
    response = served.search({"queries": queries, "k": 3, "route": route})
    assert response.status_code == 200, response.text
    for got, want in zip(response.json()["results"], expected, strict=True):
        _compare(got, want)
        assert [h["score"] for h in got["hits"]] == pytest.approx([h.score for h in want.hits], abs=1e-5)


def _held(searcher: object, expect: object, *, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        held = searcher.held.remote().result()  # type: ignore[attr-defined]
        if expect(held) or time.monotonic() > deadline:  # type: ignore[operator]
            return held
        time.sleep(0.2)


def test_admin_changes_reach_the_next_routed_search_and_the_replicas(served: Served) -> None:
    searcher = serve.get_deployment_handle("ExpertSearcher", app_name="rr-ingress")
    assert served.search({"query": "vitamin D", "expert": "medicine"}).status_code == 200
    assert "medicine" in searcher.held.remote().result()

    removed = served.admin("DELETE", "/admin/experts/medicine")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"name": "medicine", "unpublished": True, "unloaded": True}
    assert [e.name for e in RegistryFile(served.settings.data_dir).read() or []] == ["aero", "computing"]
    after = served.search({"query": "vitamin D and fractures"})
    assert after.status_code == 200 and set(after.json()["results"][0]["route"]["router_scores"]) == {
        "aero",
        "computing",
    }
    assert served.search({"query": "vitamin D", "expert": "medicine"}).status_code == 404
    assert "medicine" not in _held(searcher, lambda held: "medicine" not in held)
    assert served.admin("DELETE", "/admin/experts/medicine").status_code == 404

    added = served.admin("POST", "/admin/experts", json={"path": "medicine"})
    assert added.status_code == 201, added.text
    assert added.json()["name"] == "medicine" and added.json()["routable"] is True and added.json()["documents"] == 2
    again = served.search({"query": "vitamin D and fractures"})
    assert set(again.json()["results"][0]["route"]["router_scores"]) == {"aero", "computing", "medicine"}
    (expected,) = served.engine.search(["vitamin D and fractures"], k=10).results
    _compare(again.json()["results"][0], expected)
    assert served.admin("POST", "/admin/experts", json={"path": "medicine"}).status_code == 409

    # A replace with other contents (computing's collection, renamed): the replica holding aero loads the new one.
    assert served.search({"query": "shock", "expert": "aero"}).status_code == 200
    v2 = served.settings.data_dir / "v2" / "aero"
    shutil.copytree(served.settings.data_dir / "computing", v2)
    manifest = json.loads((v2 / "manifest.json").read_text())
    (v2 / "manifest.json").write_text(json.dumps({**manifest, "name": "aero"}))
    replaced = served.admin("POST", "/admin/experts", json={"path": "v2/aero", "replace": True})
    assert replaced.status_code == 201 and replaced.json()["path"] == "v2/aero", replaced.text
    registry = json.loads((served.settings.data_dir / "registry.json").read_text())["experts"]
    assert [v["path"] for e in registry if e["name"] == "aero" for v in e["versions"]] == ["aero"]  # kept
    forced = served.search({"query": "shock", "expert": "aero"})
    assert forced.status_code == 200
    assert {h["title"] for h in forced.json()["results"][0]["hits"]} == {"Compilers", "Sorting", "Storage"}

    # Refused without changing anything: outside the data root, not a directory, a corrupt expert.
    assert served.admin("POST", "/admin/experts", json={"path": "/etc"}).json()["error"]["type"] == "path_not_allowed"
    assert served.admin("POST", "/admin/experts", json={"path": "nowhere"}).status_code == 422
    broken = served.settings.data_dir / "broken" / "computing"
    shutil.copytree(served.settings.data_dir / "computing", broken)
    pilots = next(broken.glob("pilots*"))
    pilots.write_bytes(pilots.read_bytes() + b"x")
    refused = served.admin("POST", "/admin/experts", json={"path": "broken/computing", "replace": True})
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_expert", refused.text
    assert "checksum" in refused.json()["error"]["message"]
    assert {e.name: e.path for e in RegistryFile(served.settings.data_dir).read() or []}["computing"] == "computing"


def test_an_expert_whose_files_fail_on_a_replica_is_taken_out_of_service(served: Served) -> None:
    root = served.settings.data_dir
    registry = RegistryFile(root)
    before = registry.read() or []
    bad = root / "bad" / "medicine"
    shutil.copytree(root / "medicine", bad)
    weights = bad / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"x")  # the pilots still read: the ingress routes to it
    registry.write([e if e.name != "medicine" else e.model_copy(update={"path": "bad/medicine"}) for e in before])

    first = served.search({"query": "vitamin D and fractures"})  # every expert's votes are asked for: it fails
    assert first.status_code == 503 and first.json()["error"]["type"] == "expert_unavailable", first.text
    assert "checksum" in first.json()["error"]["message"]
    then = served.search({"query": "vitamin D and fractures"})  # routed without it, as rr serve does
    assert then.status_code == 200 and set(then.json()["results"][0]["route"]["router_scores"]) == {"aero", "computing"}
    named = served.search({"query": "vitamin D", "expert": "medicine"})
    assert named.status_code == 503 and "out of service" in named.json()["error"]["message"]
    ready = served.client.get("/readyz")
    assert ready.status_code == 503 and set(ready.json()["error"]["details"]["failed"]) == {"medicine"}

    registry.write(before)  # published again (as it was): back in service
    again = served.search({"query": "vitamin D and fractures"})
    assert again.status_code == 200 and "medicine" in again.json()["results"][0]["route"]["router_scores"]


def test_readyz_and_metrics(served: Served) -> None:
    ready = served.client.get("/readyz")
    assert ready.status_code == 200 and set(ready.json()["experts"]) >= {"aero", "computing"}
    served.search({"query": "sorting methods on tape", "route": {"top_k": 1}})
    text = served.client.get("/metrics").text
    assert 'rr_http_requests_total{method="POST",route="/search",status="200"}' in text
    assert 'rr_http_requests_total{method="POST",route="/search",status="401"}' in text
    assert 'rr_routed_queries_total{expert="computing",mode="top1"}' in text
    assert 'rr_searcher_calls_total{expert="aero",kind="scores",outcome="ok"}' in text
    assert 'rr_searcher_call_duration_seconds_count{expert="computing",kind="search"}' in text
    assert 'rr_stage_duration_seconds_count{stage="evidence"}' in text
    assert "rr_experts_published" in text
