"""Scoped API keys (RR_KEYS_FILE) through the HTTP API: scopes, expert limits, 401/403, reload, logs and metrics.

The key file names four keys besides the built-in admin key (RR_ADMIN_KEY):
``beta-rw`` may do anything but admin on expert ``beta`` only; ``reader`` may
search every expert; ``ci-reader`` may only read documents; ``embedder`` may only
embed. Restrictions are checked on a real server (``start_server``) as the
issue asks; scope answers in-process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.keys import hash_secret
from tests.app.service.conftest import ADMIN, SEARCH_KEY, wait_for

BETA_RW, READER, CI_READER, EMBEDDER = "beta-rw-secret", "reader-secret", "ci-reader-secret", "embedder-secret"
#: Queries about alpha's topics (TOPICS in conftest): the router sends them to alpha when it may.
ALPHA_QUERIES = ["wing lift", "supersonic drag", "boundary layer", "shock wave", "jet engine"]
#: Every expert searched, whatever the margins: a restricted key must still see none but its own.
FAN_OUT = {"top_k": 3, "threshold": 10.0}


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key_entry(name: str, secret: str, scopes: list[str], experts: list[str] | None = None) -> str:
    lines = ["[[keys]]", f'name = "{name}"', f'hash = "{hash_secret(secret)}"', f"scopes = {json.dumps(scopes)}"]
    if experts is not None:
        lines.append(f"experts = {json.dumps(experts)}")
    return "\n".join(lines) + "\n\n"


KEYS = (
    key_entry("beta-rw", BETA_RW, ["search", "embed", "documents:read", "documents:write"], ["beta"])
    + key_entry("reader", READER, ["search"])
    + key_entry("ci-reader", CI_READER, ["documents:read"])
    + key_entry("embedder", EMBEDDER, ["embed"])
)


def write_keys(path: Path, text: str) -> None:
    """Replace the key file atomically (write beside it, rename over it): a reload never reads half a file."""
    partial = path.with_suffix(".tmp")
    partial.write_text(text)
    os.replace(partial, path)


def accepted(http: httpx.Client, secret: str) -> bool:
    """Whether a search with ``secret`` is answered (401: the key is not in force)."""
    status = http.post("/search", json={"query": "x"}, headers=bearer(secret)).status_code
    assert status in (200, 401), status
    return status == 200


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}, body
    return body["error"]


@pytest.fixture()
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.toml"
    write_keys(path, KEYS)
    return path


@pytest.fixture()
def keyed(make_client, experts_root: Path, keys_file: Path) -> TestClient:
    return make_client(experts_root, keys_file=keys_file)


# ---------------------------------------------------------------------- expert limits, on a real server
def test_a_key_limited_to_one_expert_cannot_see_search_route_to_or_write_another(
    start_server, experts_root: Path, keys_file: Path
) -> None:
    server = start_server(experts_root, env={"RR_KEYS_FILE": str(keys_file)})
    with httpx.Client(base_url=server.url, timeout=60, headers=bearer(BETA_RW)) as http:
        # See: listings show beta alone; alpha is refused by name, and so is an expert that does not exist.
        assert [e["name"] for e in http.get("/experts").json()["experts"]] == ["beta"]
        for name in ("alpha", "nosuch"):
            refused = http.get(f"/experts/{name}")
            assert refused.status_code == 403 and f"may not use expert '{name}'" in error_of(refused)["message"]
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["base", "auto", "beta"]
        assert http.get("/v1/models/alpha").status_code == 403 and http.get("/v1/models/beta").status_code == 200

        # Search and route: alpha's own queries, fanned out as wide as a request may ask, answer from beta only.
        admin_answer = http.post(
            "/search", json={"queries": ALPHA_QUERIES, "k": 5, "route": {"top_k": 1}}, headers=ADMIN
        ).json()
        to_alpha = [r["query"] for r in admin_answer["results"] if r["expert"] == "alpha"]
        assert to_alpha  # where (some of) them go when any expert may answer
        for route in ({"top_k": 1}, FAN_OUT, {"min_score": 3.0}):  # top-1, fan-out, fallback to the base encoder
            response = http.post("/search", json={"queries": to_alpha, "k": 10, "route": route})
            assert response.status_code == 200, response.text
            body = response.json()
            for result in body["results"]:
                assert result["route"]["experts"] == ["beta"], result["route"]
                assert list(result["route"]["router_scores"]) == ["beta"]  # alpha's score is not even shown
                assert result["hits"] and {hit["expert"] for hit in result["hits"]} == {"beta"}
        named = http.post("/search", json={"query": "wing lift", "expert": "alpha"})
        assert named.status_code == 403 and "may not use expert 'alpha'" in error_of(named)["message"]
        assert http.post("/search", json={"query": "wing lift", "expert": "beta"}).status_code == 200

        # Embeddings: alpha by name is refused; auto routes alpha's texts to beta's adapter.
        assert http.post("/v1/embeddings", json={"model": "alpha", "input": "wing"}).status_code == 403
        auto = http.post("/v1/embeddings", json={"model": "auto", "input": to_alpha}).json()
        assert {row["expert"] for row in auto["data"]} == {"beta"} and auto["model"] == "beta"

        # Documents: alpha's are neither read nor written nor merged; beta's are.
        document = {"documents": [{"id": "mine", "text": "wing lift of a swept wing"}]}
        for method, path, body in (
            ("PUT", "/admin/experts/alpha/documents", document),
            ("DELETE", "/admin/experts/alpha/documents", {"ids": ["alpha-1"]}),
            ("POST", "/admin/experts/alpha/merge", None),
            ("GET", "/experts/alpha/documents/alpha-1", None),
        ):
            refused = http.request(method, path, json=body)
            assert refused.status_code == 403 and "'alpha'" in error_of(refused)["message"], (method, path)
        assert http.put("/admin/experts/beta/documents", json=document).status_code == 200
        assert http.get("/experts/beta/documents/mine").json()["text"] == "wing lift of a swept wing"
        assert http.get("/experts/alpha/documents/alpha-1", headers=ADMIN).status_code == 200  # alpha is untouched
        found = http.post("/search", json={"query": "wing lift of a swept wing", "k": 3, "route": FAN_OUT}).json()
        assert found["results"][0]["hits"][0]["id"] == "mine"

        # No admin: publishing, removing and the key list stay out of reach.
        assert http.delete("/admin/experts/alpha").status_code == 403
        assert http.get("/admin/keys").status_code == 403
    assert BETA_RW not in server.log() and hash_secret(BETA_RW) not in server.log()


def test_a_restricted_key_with_no_routable_expert_gets_a_clear_409(
    make_client, experts_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "keys.toml"
    write_keys(path, key_entry("staging", "staging-secret", ["search"], ["gamma"]))
    client = make_client(experts_root, keys_file=path)
    response = client.post("/search", json={"query": "wing"}, headers=bearer("staging-secret"))
    assert response.status_code == 409 and "['gamma']" in error_of(response)["message"]
    assert "alpha" not in response.text and "beta" not in response.text  # nothing about the others leaks


# ---------------------------------------------------------------------- scopes, 401 and 403
@pytest.mark.parametrize(
    ("secret", "method", "path", "body", "scope"),
    [
        (
            READER,
            "PUT",
            "/admin/experts/beta/documents",
            {"documents": [{"id": "a", "text": "x"}]},
            "'documents:write'",
        ),
        (READER, "POST", "/admin/experts/beta/merge", None, "'documents:write'"),
        (READER, "GET", "/experts/beta/documents/beta-1", None, "'documents:read'"),
        (READER, "POST", "/v1/embeddings", {"model": "base", "input": "x"}, "'embed'"),
        (READER, "GET", "/admin/keys", None, "'admin'"),
        (CI_READER, "POST", "/search", {"query": "x"}, "'search'"),
        (CI_READER, "GET", "/v1/models", None, "'embed'"),
        (EMBEDDER, "GET", "/experts", None, "'search' or 'documents:read'"),
        (EMBEDDER, "POST", "/v1/rerank", {"query": "x", "documents": ["y"]}, "'search'"),
        (BETA_RW, "POST", "/admin/experts", {"path": "staging/gamma"}, "'admin'"),
    ],
)
def test_a_key_without_the_scope_is_403_naming_the_scope(
    keyed: TestClient, secret: str, method: str, path: str, body: dict | None, scope: str
) -> None:
    response = keyed.request(method, path, json=body, headers=bearer(secret))
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error["type"] == "forbidden" and re.match(rf"key '[a-z-]+' lacks scope {scope}, which ", error["message"])


def test_each_scope_opens_its_routes(keyed: TestClient) -> None:
    assert keyed.post("/search", json={"query": "wing"}, headers=bearer(READER)).status_code == 200
    assert keyed.get("/experts", headers=bearer(READER)).status_code == 200
    assert keyed.get("/experts", headers=bearer(CI_READER)).status_code == 200  # listings: search or documents:read
    assert keyed.get("/experts/alpha/documents/alpha-1", headers=bearer(CI_READER)).status_code == 200
    assert (
        keyed.post("/v1/embeddings", json={"model": "alpha", "input": "x"}, headers=bearer(EMBEDDER)).status_code == 200
    )
    assert keyed.get("/v1/models", headers=bearer(EMBEDDER)).status_code == 200
    assert keyed.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN).status_code == 201


def test_missing_and_unknown_keys_are_401_and_probes_stay_open(keyed: TestClient) -> None:
    missing = keyed.post("/search", json={"query": "wing"})  # a key file is set: nothing is open any more
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"] == "Bearer"
    assert "needs an 'Authorization: Bearer <key>' header" in error_of(missing)["message"]
    for path in ("/experts", "/v1/models", "/admin/keys"):
        unknown = keyed.get(path, headers=bearer("not-a-key"))
        assert unknown.status_code == 401 and error_of(unknown)["type"] == "unauthenticated", path
    assert "not valid" in error_of(unknown)["message"]
    assert keyed.get("/experts", headers={"Authorization": "Basic abc"}).status_code == 401
    for probe in ("/healthz", "/readyz", "/metrics", "/metrics/summary", "/console/"):
        assert keyed.get(probe).status_code == 200, probe


def test_the_built_in_keys_keep_their_meaning_beside_a_key_file(
    make_client, experts_root: Path, keys_file: Path
) -> None:
    client = make_client(experts_root, keys_file=keys_file, search_key=SEARCH_KEY)
    search = bearer(SEARCH_KEY)
    assert client.post("/search", json={"query": "wing"}, headers=search).status_code == 200
    assert client.post("/v1/embeddings", json={"model": "auto", "input": "x"}, headers=search).status_code == 200
    assert client.get("/experts/alpha/documents/alpha-1", headers=search).status_code == 200
    write = client.put("/admin/experts/alpha/documents", json={"documents": [{"id": "a", "text": "x"}]}, headers=search)
    assert write.status_code == 403 and "key 'search' lacks scope 'documents:write'" in error_of(write)["message"]
    assert (
        client.put(
            "/admin/experts/alpha/documents", json={"documents": [{"id": "a", "text": "x"}]}, headers=ADMIN
        ).status_code
        == 200
    )
    listed = client.get("/admin/keys", headers=ADMIN).json()
    assert [(k["name"], k["source"]) for k in listed["keys"]] == [
        ("admin", "RR_ADMIN_KEY"), ("search", "RR_SEARCH_KEY"), ("beta-rw", "RR_KEYS_FILE"),
        ("reader", "RR_KEYS_FILE"), ("ci-reader", "RR_KEYS_FILE"), ("embedder", "RR_KEYS_FILE"),
    ]  # fmt: skip
    assert listed["keys"][2] == {
        "name": "beta-rw",
        "scopes": ["documents:read", "documents:write", "embed", "search"],
        "experts": ["beta"],
        "source": "RR_KEYS_FILE",
    }
    assert listed["keys_file"] == str(keys_file) and listed["open_access"] is False
    assert "sha256" not in json.dumps(listed)


def test_without_a_key_file_or_search_key_search_is_open_and_writes_are_not(client: TestClient) -> None:
    assert client.post("/search", json={"query": "wing"}).status_code == 200
    assert client.post("/search", json={"query": "wing"}, headers=bearer("stale")).status_code == 200  # as before
    assert (
        client.put("/admin/experts/alpha/documents", json={"documents": [{"id": "a", "text": "x"}]}).status_code == 401
    )
    assert client.get("/admin/keys", headers=ADMIN).json()["open_access"] is True
    reload = client.post("/admin/keys/reload", headers=ADMIN)
    assert reload.status_code == 422 and "RR_KEYS_FILE is not set" in error_of(reload)["message"]


def test_key_names_label_the_requests_in_the_metrics(keyed: TestClient) -> None:
    keyed.post("/search", json={"query": "wing"}, headers=bearer(READER))
    keyed.post("/search", json={"query": "wing"}, headers=bearer("not-a-key"))
    keyed.post("/search", json={"query": "wing"}, headers=bearer(CI_READER))
    keyed.get("/healthz")
    metrics = keyed.get("/metrics").text
    for labels in (
        'key="reader",route="/search",status="200"',
        'key="unknown",route="/search",status="401"',
        'key="ci-reader",route="/search",status="403"',
        'key="anonymous",route="/healthz",status="200"',
    ):
        assert f"rr_requests_by_key_total{{{labels}}} 1.0" in metrics, labels
    assert READER not in metrics and "sha256" not in metrics


# ---------------------------------------------------------------------- reload
def test_reload_by_the_admin_route_swaps_the_keys_and_a_bad_file_keeps_them(keyed: TestClient, keys_file: Path) -> None:
    search = {"query": "wing"}
    assert keyed.post("/search", json=search, headers=bearer(READER)).status_code == 200
    write_keys(keys_file, key_entry("newcomer", "newcomer-secret", ["search"]))
    reloaded = keyed.post("/admin/keys/reload", headers=ADMIN)
    assert reloaded.status_code == 200 and [k["name"] for k in reloaded.json()["keys"]] == ["admin", "newcomer"]
    assert keyed.post("/search", json=search, headers=bearer(READER)).status_code == 401  # removed: the next request
    assert keyed.post("/search", json=search, headers=bearer("newcomer-secret")).status_code == 200

    write_keys(keys_file, key_entry("ok", "ok-secret", ["search"]) + key_entry("typo", "typo-secret", ["serch"]))
    refused = keyed.post("/admin/keys/reload", headers=ADMIN)
    assert refused.status_code == 422 and error_of(refused)["type"] == "invalid_key_file"
    assert "key 2 (line 6) 'typo': unknown scope 'serch'" in error_of(refused)["message"]
    assert keyed.post("/search", json=search, headers=bearer("newcomer-secret")).status_code == 200  # still in force
    assert keyed.post("/search", json=search, headers=bearer("ok-secret")).status_code == 401
    assert [k["name"] for k in keyed.get("/admin/keys", headers=ADMIN).json()["keys"]] == ["admin", "newcomer"]


def test_a_malformed_key_file_stops_the_server_at_start_up(tmp_path: Path, experts_root: Path) -> None:
    from app.api.main import create_app
    from app.errors import KeyFileError
    from tests.app.service.conftest import service_settings

    path = tmp_path / "keys.toml"
    write_keys(path, KEYS + key_entry("reader", "other", ["search"]))
    with pytest.raises(KeyFileError, match="key 5 .*'reader': the name 'reader' is already taken by key 2"):
        create_app(service_settings(experts_root, keys_file=path))


def test_sighup_reloads_the_key_file_of_a_real_server(start_server, experts_root: Path, keys_file: Path) -> None:
    server = start_server(experts_root, env={"RR_KEYS_FILE": str(keys_file)})
    with httpx.Client(base_url=server.url, timeout=30) as http:
        search = {"query": "wing"}
        assert http.post("/search", json=search, headers=bearer(READER)).status_code == 200
        write_keys(keys_file, key_entry("rotated", "rotated-secret", ["search"]))
        server.process.send_signal(signal.SIGHUP)
        wait_for(
            lambda: http.post("/search", json=search, headers=bearer("rotated-secret")).status_code == 200,
            timeout=30, what="the SIGHUP reload",
        )  # fmt: skip
        assert http.post("/search", json=search, headers=bearer(READER)).status_code == 401

        write_keys(keys_file, "[[keys]]\nname = 'broken'\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "API keys NOT reloaded" in server.log(), timeout=30, what="the refusal in the log")
        assert "key 1 (line 1) 'broken': missing 'hash'" in server.log()
        assert http.post("/search", json=search, headers=bearer("rotated-secret")).status_code == 200
        assert server.process.poll() is None
    log = server.log()
    assert re.search(r'"POST /search HTTP/1.1" 200 OK key=rotated\b', log), log
    assert re.search(r'"POST /search HTTP/1.1" 401 Unauthorized key=unknown\b', log), log
    assert "rotated-secret" not in log and READER not in log and hash_secret("rotated-secret") not in log


def test_reloads_under_load_drop_no_request_that_carried_a_valid_key(
    start_server, experts_root: Path, keys_file: Path
) -> None:
    """32 clients search with a key every version of the file keeps, while other keys come and go 8 times."""
    stable = key_entry("stable", "stable-secret", ["search"], ["alpha", "beta"])
    write_keys(keys_file, stable + KEYS)
    server = start_server(experts_root, env={"RR_KEYS_FILE": str(keys_file)})
    stop = threading.Event()
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=server.url, timeout=60, headers=bearer("stable-secret")) as http:
            while not stop.is_set():
                try:
                    status = str(http.post("/search", json={"query": "wing lift", "k": 3}).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                with lock:
                    outcomes[status] += 1

    threads = [threading.Thread(target=client, daemon=True) for _ in range(32)]
    for thread in threads:
        thread.start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as admin:
            wait_for(lambda: sum(outcomes.values()) >= 32, timeout=60, what="the clients' first answers")
            for round_ in range(8):
                secret = f"rotating-{round_}-secret"
                write_keys(keys_file, key_entry(f"rotating-{round_}", secret, ["search"]) + stable)
                if round_ % 2:  # every other reload by signal, the others by the admin route
                    server.process.send_signal(signal.SIGHUP)
                    wait_for(lambda s=secret: accepted(admin, s), timeout=30, what=f"SIGHUP reload {round_}")
                else:
                    assert admin.post("/admin/keys/reload", headers=ADMIN).status_code == 200
                    assert accepted(admin, secret)
                if round_:  # the previous round's key is refused from the next request on
                    assert not accepted(admin, f"rotating-{round_ - 1}-secret")
                time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert outcomes["200"] >= 100 and set(outcomes) == {"200"}, outcomes
