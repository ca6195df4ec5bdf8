"""The document API on the tiny experts: upsert, delete, read, filters in /search, merges, limits, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import ADMIN, wait_for

UNIQUE = "zyxqwv"  # a token no template document has


def upsert(client: TestClient, expert: str, docs: list[dict], **kwargs) -> object:
    return client.put(f"/admin/experts/{expert}/documents", json={"documents": docs}, headers=ADMIN, **kwargs)


def delete(client: TestClient, expert: str, ids: list[str]) -> object:
    return client.request("DELETE", f"/admin/experts/{expert}/documents", json={"ids": ids}, headers=ADMIN)


def search(client: TestClient, query: str, **body) -> dict:
    response = client.post("/search", json={"query": query, **body})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]


def ids(result: dict) -> list[str]:
    return [hit["id"] for hit in result["hits"]]


def test_an_upserted_document_is_found_at_once_dense_and_lexical(client: TestClient) -> None:
    doc = {
        "id": "new-1",
        "title": f"{UNIQUE} wing",
        "text": f"the {UNIQUE} effect on a wing",
        "metadata": {"year": 2026},
    }
    response = upsert(client, "alpha", [doc])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["created"] == 1 and answer["replaced"] == 0 and answer["documents"] == 25 and answer["seq"] == 1

    lexical = search(client, UNIQUE, expert="alpha", mode="lexical", k=3)
    assert ids(lexical)[0] == "new-1"
    dense = search(client, f"{UNIQUE} wing the {UNIQUE} effect on a wing", expert="alpha", mode="dense", k=3)
    assert ids(dense)[0] == "new-1"
    assert dense["hits"][0]["metadata"] == {"year": 2026}
    got = client.get("/experts/alpha/documents/new-1")
    assert got.status_code == 200 and got.json()["text"] == doc["text"]
    assert client.get("/experts/alpha").json()["live"]["delta_documents"] == 1


def test_a_replaced_document_answers_with_its_new_text_only(client: TestClient) -> None:
    assert (
        upsert(client, "alpha", [{"id": "alpha-3", "title": "", "text": f"{UNIQUE} replaced text"}]).json()["replaced"]
        == 1
    )
    assert ids(search(client, UNIQUE, expert="alpha", mode="lexical", k=3))[0] == "alpha-3"
    old = search(client, "shock wave 3", expert="alpha", mode="lexical", k=24)
    assert "alpha-3" not in ids(old)  # its old title and text are gone from BM25
    assert client.get("/experts/alpha/documents/alpha-3").json()["title"] == ""
    assert client.get("/experts/alpha").json()["documents"] == 24


def test_a_deleted_document_is_gone_from_every_search(client: TestClient) -> None:
    before = ids(search(client, "wing lift 0", expert="alpha", mode="lexical", k=24))
    assert "alpha-0" in before
    response = delete(client, "alpha", ["alpha-0", "no-such-doc"])
    assert response.status_code == 200, response.text
    assert response.json()["deleted"] == ["alpha-0"] and response.json()["missing"] == ["no-such-doc"]
    for mode in ("lexical", "dense", "hybrid"):
        assert "alpha-0" not in ids(search(client, "wing lift 0", expert="alpha", mode=mode, k=24))
    assert client.get("/experts/alpha/documents/alpha-0").status_code == 404
    assert client.get("/experts/alpha/documents/alpha-0").json()["error"]["type"] == "unknown_document"
    assert client.get("/experts/alpha").json()["documents"] == 23


def test_routed_search_and_corpus_votes_see_new_documents(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, router_evidence="documents+bm25", search_mode="hybrid")
    docs = [{"id": f"bio-{i}", "title": f"{UNIQUE} {UNIQUE}", "text": f"{UNIQUE} study {i}"} for i in range(30)]
    assert upsert(client, "beta", docs).status_code == 200
    result = search(client, f"{UNIQUE} {UNIQUE}", k=5)
    assert result["expert"] == "beta" and ids(result)[0].startswith("bio-")


def test_filters_restrict_the_hits_inside_the_search(client: TestClient) -> None:
    docs = [
        {
            "id": f"m-{i}",
            "title": f"wing lift {i}",
            "text": f"a study of wing lift number {i}",
            "metadata": {"year": 2000 + i, "lab": "north" if i % 2 else "south"},
        }
        for i in range(10)
    ]
    assert upsert(client, "alpha", docs).status_code == 200
    result = search(client, "wing lift", expert="alpha", k=5, filter={"year": {"gte": 2004}, "lab": "north"})
    assert sorted(ids(result)) == ["m-5", "m-7", "m-9"] and result["matched"] == 3  # fewer match than k: all of them
    result = search(client, "wing lift", expert="alpha", k=4, filter={"or": [{"year": {"lt": 2003}}, {"lab": "south"}]})
    assert len(result["hits"]) == 4 and result["matched"] == 6  # k hits when more than k match
    assert all(h["metadata"]["year"] < 2003 or h["metadata"]["lab"] == "south" for h in result["hits"])
    for mode in ("dense", "lexical", "hybrid"):
        hits = search(client, "wing lift", expert="alpha", k=10, mode=mode, filter={"year": 2008})["hits"]
        assert [h["id"] for h in hits] == ["m-8"]
    assert search(client, "wing lift", expert="alpha", k=10, filter={"year": 1900})["hits"] == []
    routed = search(client, "wing lift", k=10, filter={"lab": {"in": ["north"]}})
    assert routed["matched"] is not None and all(h["metadata"].get("lab") == "north" for h in routed["hits"])


def test_bad_filters_are_422_naming_the_clause(client: TestClient) -> None:
    upsert(client, "alpha", [{"id": "m", "text": "wing", "metadata": {"year": 2001}}])
    response = client.post("/search", json={"query": "wing", "expert": "alpha", "filter": {"yaer": 2001}})
    assert response.status_code == 422 and response.json()["error"]["type"] == "invalid_filter"
    assert "yaer" in response.json()["error"]["message"] and "'year'" in response.json()["error"]["message"]
    assert response.json()["error"]["details"]["clause"] == "filter.yaer"
    response = client.post("/search", json={"query": "wing", "filter": {"and": [{"year": {"gte": "abc"}}]}})
    assert response.status_code == 422 and "filter.and[0].year" in response.text
    response = client.post("/search", json={"query": "wing", "filter": {"year": {"between": [1, 2]}}})
    assert response.status_code == 422
    # A field only alpha has: a routed query may use it (beta's documents just never match), a search of beta not.
    assert client.post("/search", json={"query": "compiler parser", "filter": {"year": 2001}}).status_code == 200
    response = client.post("/search", json={"query": "compiler", "expert": "beta", "filter": {"year": 2001}})
    assert response.status_code == 422 and "'year'" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"documents": []}, "documents"),
        ({"documents": [{"title": "no id", "text": "x"}]}, "id"),
        ({"documents": [{"id": "a", "title": " ", "text": "  "}]}, "title or a text"),
        ({"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "appears twice"),
        ({"documents": [{"id": "a", "text": "x", "metadata": [1]}]}, "metadata"),
        ({"documents": [{"id": "a", "text": "x", "colour": "red"}]}, "colour"),
        ({"documents": [{"id": " a", "text": "x"}]}, "spaces"),
        ({"documents": [{"id": "a\nb", "text": "x"}]}, "control"),
        ({"documents": [{"id": "a", "text": "x", "metadata": {"blob": "y" * 20_000}}]}, "bytes"),
        ({"docs": []}, "documents"),
    ],
)
def test_malformed_upserts_are_422_and_write_nothing(client: TestClient, body: dict, where: str) -> None:
    response = client.put("/admin/experts/alpha/documents", json=body, headers=ADMIN)
    assert response.status_code == 422, response.text
    assert where in response.text
    assert client.get("/experts/alpha").json()["live"]["seq"] == 0


def test_limits_unknown_experts_and_keys(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, max_upsert_documents=3, max_documents_body_bytes=4096)
    docs = [{"id": f"d{i}", "text": "wing"} for i in range(4)]
    response = upsert(client, "alpha", docs)
    assert response.status_code == 413 and "RR_MAX_UPSERT_DOCUMENTS" in response.text
    assert delete(client, "alpha", [f"d{i}" for i in range(4)]).status_code == 413
    response = upsert(client, "alpha", [{"id": "big", "text": "wing " * 2000}])
    assert response.status_code == 413
    assert upsert(client, "nosuch", [{"id": "a", "text": "x"}]).status_code == 404
    assert client.get("/experts/nosuch/documents/a").status_code == 404
    no_key = client.put("/admin/experts/alpha/documents", json={"documents": [{"id": "a", "text": "x"}]})
    assert no_key.status_code == 401
    wrong = client.put(
        "/admin/experts/alpha/documents",
        json={"documents": [{"id": "a", "text": "x"}]},
        headers={"Authorization": "Bearer wrong"},
    )
    assert wrong.status_code == 401  # a key not known
    assert client.request("DELETE", "/admin/experts/alpha/documents", json={"ids": ["alpha-1"]}).status_code == 401
    assert client.post("/admin/experts/alpha/merge").status_code == 401
    assert client.get("/experts/alpha").json()["live"]["seq"] == 0


def test_a_forced_merge_publishes_a_new_generation_and_keeps_every_write(client: TestClient) -> None:
    before = client.get("/experts/alpha").json()
    upsert(client, "alpha", [{"id": "new", "text": f"{UNIQUE} merged"}])
    delete(client, "alpha", ["alpha-5"])
    response = client.post("/admin/experts/alpha/merge", headers=ADMIN)
    assert response.status_code == 200, response.text
    merged = response.json()
    assert merged["merged"] and merged["documents"] == 24 and merged["version"] == before["version"] + 1
    after = client.get("/experts/alpha").json()
    assert after["index"]["directory"] == merged["directory"] != before["index"]["directory"]
    assert after["live"]["delta_documents"] == 0 and after["live"]["tombstones"] == 0
    assert ids(search(client, UNIQUE, expert="alpha", mode="lexical", k=1)) == ["new"]
    assert "alpha-5" not in ids(search(client, "wing lift", expert="alpha", k=24))
    again = client.post("/admin/experts/alpha/merge", headers=ADMIN).json()
    assert again["merged"] is False and again["version"] == merged["version"]


def test_the_merge_policy_starts_background_merges(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, merge_min_changes=2, merge_max_delta_docs=3)
    version = client.get("/experts/alpha").json()["version"]
    for i in range(3):
        upsert(client, "alpha", [{"id": f"bg-{i}", "text": f"{UNIQUE} {i}"}])
        assert ids(search(client, f"{UNIQUE} {i}", expert="alpha", mode="lexical", k=1)) == [f"bg-{i}"]
    wait_for(lambda: client.get("/experts/alpha").json()["version"] > version, what="a background merge")
    wait_for(lambda: not client.get("/experts/alpha").json()["live"]["merging"], what="the merge to end")
    live = client.get("/experts/alpha").json()["live"]
    assert live["documents"] == 27 and live["delta_documents"] == 0
    assert sorted(ids(search(client, UNIQUE, expert="alpha", mode="lexical", k=5))) == ["bg-0", "bg-1", "bg-2"]


def test_concurrent_writers_are_serialised_and_all_acknowledged(client: TestClient) -> None:
    errors: list[str] = []

    def write(expert: str, worker: int) -> None:
        for i in range(5):
            response = upsert(client, expert, [{"id": f"w{worker}-{i}", "text": f"{UNIQUE} {worker} {i}"}])
            if response.status_code != 200:
                errors.append(response.text)

    threads = [threading.Thread(target=write, args=(expert, w)) for w, expert in enumerate(["alpha", "alpha", "beta"])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert client.get("/experts/alpha").json()["live"]["seq"] == 10
    assert client.get("/experts/beta").json()["live"]["seq"] == 5
    for worker, expert in enumerate(["alpha", "alpha", "beta"]):
        for i in range(5):
            assert client.get(f"/experts/{expert}/documents/w{worker}-{i}").status_code == 200


def test_long_queries_are_truncated_and_say_so_or_refused(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, query_max_length=8)
    assert search(client, "wing lift", expert="alpha")["truncated"] is False
    long = " ".join(["wing lift boundary layer"] * 10)
    assert search(client, long, expert="alpha")["truncated"] is True
    strict = make_client(experts_root, query_max_length=8, long_queries="error")
    response = strict.post("/search", json={"queries": ["wing", long], "expert": "alpha"})
    assert response.status_code == 413 and "query 1 has" in response.json()["error"]["message"]
    assert response.json()["error"]["details"]["limit"] == 8


def test_an_expert_written_by_another_process_is_served_read_only(make_client, experts_root: Path) -> None:
    (experts_root / "alpha" / "live").mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.write(str(os.getpid())); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)",
            str(experts_root / "alpha" / "live" / "writer.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        client = make_client(experts_root)
        live = client.get("/experts/alpha").json()["live"]
        assert live["writable"] is False and str(holder.pid) in live["read_only_reason"]
        response = upsert(client, "alpha", [{"id": "x", "text": "wing"}])
        assert response.status_code == 409 and response.json()["error"]["type"] == "documents_read_only"
        assert str(holder.pid) in response.json()["error"]["message"]
        assert search(client, "wing lift", expert="alpha", k=3)["hits"]  # still searchable
        assert upsert(client, "beta", [{"id": "x", "text": "compiler"}]).status_code == 200  # other experts write
    finally:
        holder.kill()
        holder.wait()


def test_writes_survive_a_restart_and_a_replace(make_client, experts_root: Path) -> None:
    client = make_client(experts_root)
    upsert(client, "alpha", [{"id": "kept", "text": f"{UNIQUE} kept", "metadata": {"tag": "t"}}])
    delete(client, "alpha", ["alpha-1"])
    response = client.post("/admin/experts", json={"path": "alpha", "replace": True}, headers=ADMIN)
    assert response.status_code == 201, response.text
    assert ids(search(client, UNIQUE, expert="alpha", mode="lexical", k=1)) == ["kept"]
    upsert(client, "alpha", [{"id": "after-replace", "text": f"{UNIQUE} later"}])
    client.__exit__(None, None, None)
    restarted = make_client(experts_root)
    assert sorted(ids(search(restarted, UNIQUE, expert="alpha", mode="lexical", k=5))) == ["after-replace", "kept"]
    assert restarted.get("/experts/alpha/documents/alpha-1").status_code == 404
    assert search(restarted, "wing", expert="alpha", filter={"tag": "t"})["matched"] == 1
    assert json.loads((experts_root / "registry.json").read_text())["experts"]


def test_a_long_upserted_document_is_chunked_and_its_hits_say_which_span_matched(client: TestClient) -> None:
    filler = " ".join(f"filler{i}" for i in range(300))  # far past the tiny encoder's 64-token window
    text = f"{filler} the {UNIQUE} tail phrase"
    assert (
        upsert(client, "alpha", [{"id": "long", "text": text}, {"id": "short", "text": f"{UNIQUE} short"}]).status_code
        == 200
    )
    hits = search(client, f"the {UNIQUE} tail phrase", expert="alpha", mode="dense", k=30)["hits"]
    by_id = {hit["id"]: hit for hit in hits}
    start, end = by_id["long"]["span"]
    assert 0 <= start < end <= len(text) and end - start < len(text)  # one window of the text, not all of it
    assert by_id["short"]["span"] is None  # one chunk: searched whole
    lexical = search(client, UNIQUE, expert="alpha", mode="lexical", k=5)["hits"]
    assert {hit["id"] for hit in lexical} >= {"long", "short"} and all(hit["span"] is None for hit in lexical)
    assert client.get("/experts/alpha/documents/long").json()["text"] == text  # stored whole
