"""``/admin/uploads``: a job's files sent over HTTP, then named in ``POST /admin/jobs``; refused ones leave nothing.

Nothing is mocked: the files land under the data root, the jobs index and tune
on the tiny random BERT, and the expert is searched afterwards. The limit is
checked in-process and against a real ``rr serve`` (a streamed body without a
declared length is stopped at the limit as it arrives). ``rr add-domain
--on-server --upload``: ``tests/app/cli/test_cli_add_domain.py``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import ADMIN, submit, wait_job, write_corpus

#: The limit of the tests that pass it: small enough that a test body passes it at once.
LIMIT = 4096


def upload(http: httpx.Client | TestClient, name: str, body: bytes | Iterator[bytes], **headers: str) -> httpx.Response:
    headers = {"Content-Type": "application/octet-stream", **headers, **ADMIN}
    return http.post("/admin/uploads", params={"name": name}, content=body, headers=headers)


def left_in_uploads(root: Path) -> list[str]:
    directory = root / ".uploads"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_an_uploaded_corpus_is_indexed_into_a_searchable_expert(jobs_client: TestClient, experts_root: Path) -> None:
    corpus = gzip.compress(write_corpus(experts_root.parent / "gamma.jsonl", "gamma", count=40).read_bytes())
    sent = upload(jobs_client, "corpus.jsonl.gz", corpus, **{"Content-Type": "application/gzip"})
    assert sent.status_code == 201, sent.text
    received = sent.json()
    assert received["path"].startswith(".uploads/") and received["path"].endswith("-corpus.jsonl.gz")
    assert received["bytes"] == len(corpus) and received["sha256"] == hashlib.sha256(corpus).hexdigest()
    assert (experts_root / received["path"]).read_bytes() == corpus
    assert sent.headers["Location"] == "/admin/uploads/" + received["path"].rsplit("/", 1)[1]
    listed = jobs_client.get("/admin/uploads", headers=ADMIN).json()["uploads"]
    assert [(f["path"], f["name"], f["bytes"]) for f in listed] == [(received["path"], "corpus.jsonl.gz", len(corpus))]

    job = submit(jobs_client, kind="index", expert="gamma", corpus=received["path"]).json()
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert any("indexed 40 documents" in line for line in done["log_tail"])
    hits = jobs_client.post("/search", json={"query": "blood pressure", "expert": "gamma", "k": 3}).json()
    assert [hit["id"].startswith("gamma-") for hit in hits["results"][0]["hits"]] == [True] * 3

    name = received["path"].rsplit("/", 1)[1]
    assert jobs_client.delete(f"/admin/uploads/{name}", headers=ADMIN).json()["path"] == received["path"]
    assert left_in_uploads(experts_root) == []
    gone = jobs_client.delete(f"/admin/uploads/{name}", headers=ADMIN)
    assert gone.status_code == 404 and gone.json()["error"]["type"] == "unknown_upload"


def test_uploaded_queries_and_qrels_tune_an_experts_fusion(jobs_client: TestClient, experts_root: Path) -> None:
    queries = "".join(json.dumps({"_id": f"q{i}", "text": f"sorting algorithm {i}"}) + "\n" for i in range(10))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\tbeta-{i}\t1\n" for i in range(10))
    paths = {}
    for role, name, body in (("queries", "queries.jsonl", queries), ("qrels", "qrels.tsv", qrels)):
        sent = upload(jobs_client, name, body.encode())
        assert sent.status_code == 201, sent.text
        paths[role] = sent.json()["path"]
    done = wait_job(jobs_client, submit(jobs_client, kind="tune-fusion", expert="beta", **paths).json()["id"])
    assert done["state"] == "succeeded", done
    assert done["request"]["queries"] == paths["queries"]
    retrieval = jobs_client.get("/experts/beta").json()["manifest"]["retrieval"]
    assert retrieval["tuned_on"] == "10 labelled queries"


def test_an_upload_over_the_limit_is_a_413_and_leaves_no_file(make_jobs_client, experts_root: Path) -> None:
    client = make_jobs_client(experts_root, max_upload_bytes=LIMIT)
    declared = upload(client, "corpus.jsonl", b"x" * (LIMIT + 1))  # refused on its Content-Length
    assert declared.status_code == 413, declared.text
    assert f"larger than the limit of {LIMIT} bytes" in declared.json()["error"]["message"]
    streamed = upload(client, "corpus.jsonl", iter([b"x" * 1000] * 5))  # no length: counted as it arrives
    assert streamed.status_code == 413, streamed.text
    assert left_in_uploads(experts_root) == []
    assert upload(client, "corpus.jsonl", b"x" * LIMIT).status_code == 201  # the limit itself is taken


@pytest.mark.parametrize(
    ("name", "body", "headers", "status", "says"),
    [
        ("", b"{}\n", {}, 422, "name"),
        ("../corpus.jsonl", b"{}\n", {}, 422, "name"),
        (".hidden.jsonl", b"{}\n", {}, 422, "name"),
        ("corpus.jsonl", b"", {}, 422, "is empty"),
        ("corpus.jsonl", gzip.compress(b"{}\n"), {}, 422, "name it corpus.jsonl.gz"),
        ("corpus.jsonl.gz", b"{}\n", {}, 422, "not gzip-compressed"),
        ("corpus.jsonl", b"{}\n", {"Content-Type": "multipart/form-data; boundary=x"}, 415, "the file's bytes"),
        ("corpus.jsonl", b"{}\n", {"Authorization": "Bearer wrong"}, 401, ""),
    ],
)
def test_bad_uploads_say_what_is_wrong_and_leave_nothing(
    jobs_client: TestClient, experts_root: Path, name: str, body: bytes, headers: dict, status: int, says: str
) -> None:
    sent = jobs_client.post(
        "/admin/uploads",
        params={"name": name},
        content=body,
        headers={"Content-Type": "application/octet-stream", **ADMIN, **headers},
    )
    assert sent.status_code == status, sent.text
    assert says in sent.text
    assert left_in_uploads(experts_root) == []


def test_a_streamed_upload_to_a_real_server_stops_at_the_limit(experts_root: Path, start_server) -> None:
    server = start_server(experts_root, env={"RR_MAX_UPLOAD_BYTES": str(LIMIT)})
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        # Chunks with no declared length: uvicorn hands them over as they come, and the body is stopped at
        # the first byte over the limit, the partial file removed.
        streamed = upload(http, "corpus.jsonl", iter([b"x" * 1000] * 10))
        assert streamed.status_code == 413, streamed.text
        assert left_in_uploads(experts_root) == []
        assert upload(http, "corpus.jsonl", b"x" * LIMIT).status_code == 201


def test_a_file_left_half_received_is_removed_at_start_up(make_jobs_client, experts_root: Path) -> None:
    (experts_root / ".uploads").mkdir()
    (experts_root / ".uploads" / ".receiving-u20261205T150400Z-1a2b3c").write_bytes(b"{}\n{")
    (experts_root / ".uploads" / "u20261205T150400Z-1a2b3c-kept.jsonl").write_bytes(b"{}\n")
    client = make_jobs_client(experts_root)
    assert left_in_uploads(experts_root) == ["u20261205T150400Z-1a2b3c-kept.jsonl"]
    assert [f["name"] for f in client.get("/admin/uploads", headers=ADMIN).json()["uploads"]] == ["kept.jsonl"]
