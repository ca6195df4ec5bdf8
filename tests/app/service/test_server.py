"""A real ``rr serve`` (uvicorn in a subprocess, loopback, free port) driven with httpx.

The tiny BERT keeps it fast; the MiniLM relevance test is in test_server_minilm.py.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app.service.conftest import ADMIN, ServerProcess, wait_for


@pytest.fixture(scope="module")
def live_server(
    template_root: Path, tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("live")
    root = work / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    server = ServerProcess(
        root, work / "server.log", base_model=tiny_bert_path, env={"RR_MAX_QUERIES": "8", "RR_BATCH_WAIT_MS": "2"}
    )
    try:
        server.wait_ready()
        yield server
    finally:
        assert server.stopped_cleanly(), server.log()


def test_search_probes_auth_and_limits_over_http(live_server: ServerProcess) -> None:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        assert http.get("/healthz").json() == {"status": "ok"}
        assert http.get("/readyz").json() == {"status": "ready", "experts": ["alpha", "beta"]}
        body = http.post("/search", json={"queries": ["wing lift", "compiler parser"], "k": 4}).json()
        assert len(body["results"]) == 2 and all(len(r["hits"]) == 4 for r in body["results"])
        assert all(r["expert"] in {"alpha", "beta"} and len(r["route"]["router_scores"]) == 2 for r in body["results"])

        assert http.post("/search", json={"query": "x", "k": 0}).status_code == 422
        assert http.post("/search", json={"queries": ["q"] * 9}).status_code == 413  # RR_MAX_QUERIES=8
        too_big = http.post(
            "/search", content=b"{" + b" " * (2 << 20) + b"}", headers={"Content-Type": "application/json"}
        )
        assert too_big.status_code == 413 and too_big.json()["error"]["type"] == "payload_too_large"
        assert http.post("/search", json={"query": "x", "expert": "lawx"}).status_code == 404
        assert http.post("/admin/experts", json={"path": "staging/gamma"}).status_code == 401
        assert (
            http.post(
                "/admin/experts", json={"path": "staging/gamma"}, headers={"Authorization": "Bearer no"}
            ).status_code
            == 401
        )
        metrics = http.get("/metrics").text
        assert 'rr_http_requests_total{method="POST",route="/search",status="413"}' in metrics
        assert 'rr_batch_requests_count{kind="search"}' in metrics and "rr_index_documents" in metrics
        assert http.get("/docs").status_code == 200
    assert "admin-key-for-tests" not in live_server.log()


def test_publish_and_unpublish_while_clients_search(live_server: ServerProcess) -> None:
    """Zero failed searches: routed ones always succeed; ones naming the new expert succeed while it is
    published and are 404 once the DELETE has returned (either, for those racing the DELETE)."""
    phase = {"now": "before"}  # before -> added -> deleting -> deleted
    records: list[tuple[str, str, str, object]] = []
    stop = threading.Event()

    def search_in_a_loop(seed: int) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as http:
            turn = 0
            while not stop.is_set():
                turn += 1
                named = turn % 2 == 0 and phase["now"] != "before"
                body = {
                    "query": f"blood pressure and wing lift {seed}-{turn}",
                    "k": 3,
                    **({"expert": "gamma"} if named else {}),
                }
                started = phase["now"]
                try:
                    outcome: object = http.post("/search", json=body).status_code
                except httpx.HTTPError as exc:  # counted as a failure below
                    outcome = repr(exc)
                records.append(("named" if named else "routed", started, phase["now"], outcome))

    def count(kind: str, started: str) -> int:
        return sum(1 for r in list(records) if r[0] == kind and r[1] == started)

    clients = [threading.Thread(target=search_in_a_loop, args=(n,)) for n in range(3)]
    for client in clients:
        client.start()
    try:
        wait_for(lambda: count("routed", "before") >= 30, what="searches before the add")
        with httpx.Client(base_url=live_server.url, timeout=120) as admin:
            added = admin.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN)
            assert added.status_code == 201, added.text
            phase["now"] = "added"
            wait_for(lambda: count("named", "added") >= 30, what="searches naming gamma")
            phase["now"] = "deleting"
            deleted = admin.delete("/admin/experts/gamma", headers=ADMIN)
            assert deleted.status_code == 200 and deleted.json()["unpublished"], deleted.text
            phase["now"] = "deleted"
            wait_for(lambda: count("named", "deleted") >= 30, what="searches after the delete")
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=120)

    failures = []
    for kind, started, ended, outcome in records:
        if kind == "routed" or (started == "added" and ended == "added"):
            expected = {200}
        elif started == "deleted":
            expected = {404}
        else:  # raced the DELETE: either answer is right
            expected = {200, 404}
        if outcome not in expected:
            failures.append((kind, started, ended, outcome))
    assert failures == [], failures[:10]
    assert count("routed", "added") + count("routed", "deleting") + count("routed", "deleted") > 0
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        assert http.get("/readyz").json()["experts"] == ["alpha", "beta"]


def test_a_restart_serves_what_was_published(template_root: Path, tmp_path: Path, start_server) -> None:
    root = tmp_path / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    first = start_server(root)
    with httpx.Client(base_url=first.url, timeout=120) as http:
        assert http.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN).status_code == 201
        assert http.delete("/admin/experts/beta", headers=ADMIN).status_code == 200
        assert http.post("/admin/experts", json={"path": "staging/alien"}, headers=ADMIN).status_code == 422
    assert first.stopped_cleanly(), first.log()
    assert [e["name"] for e in json.loads((root / "registry.json").read_text())["experts"]] == ["alpha", "gamma"]

    second = start_server(root)
    with httpx.Client(base_url=second.url, timeout=60) as http:
        assert http.get("/readyz").json() == {"status": "ready", "experts": ["alpha", "gamma"]}
        listed = {e["name"]: e for e in http.get("/experts").json()["experts"]}
        assert set(listed) == {"alpha", "gamma"} and listed["gamma"]["path"] == "staging/gamma"
        hits = http.post("/search", json={"query": "vitamin", "expert": "gamma", "k": 2}).json()["results"][0]["hits"]
        assert [hit["expert"] for hit in hits] == ["gamma", "gamma"]
        assert http.post("/search", json={"query": "x", "expert": "beta"}).status_code == 404
