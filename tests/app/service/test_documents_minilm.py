"""Read after write with the real all-MiniLM-L6-v2 behind a real server, surviving ``kill -9``.

A scifact expert holds a 120-document slice that lacks the documents judged
relevant to a few test queries. One of them is upserted through the API; the
first search after the acknowledgement (same query, same second) finds it
first; the server is killed with SIGKILL right after the acknowledgement and
restarted, and it is still found; then it is deleted, the server is killed
again, and after the restart it is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from experts import Encoder, create_expert
from experts.labelled import judged_queries, read_qrels, read_queries
from tests.app.service.conftest import ADMIN
from tests.reliability.forked import ForkedProcess

pytestmark = pytest.mark.slow

SLICE = 80
CANDIDATE_QUERIES = 20


@pytest.fixture(scope="module")
def scifact_case(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict]:
    """(experts root, a test query, the one document that answers it); the slice does not hold that document."""
    collection = datasets / "scifact"
    qrels = read_qrels(collection / "qrels" / "test.tsv")
    queries = list(judged_queries(read_queries(collection / "queries.jsonl"), qrels).items())[:CANDIDATE_QUERIES]
    relevant = {doc for qid, _ in queries for doc, grade in qrels[qid].items() if grade > 0}
    corpus = [json.loads(line) for line in (collection / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    by_id = {row["_id"]: row for row in corpus}
    sliced = [row for row in corpus if row["_id"] not in relevant][:SLICE]
    work = tmp_path_factory.mktemp("documents-minilm")
    (work / "slice.jsonl").write_text("".join(json.dumps(row) + "\n" for row in sliced))

    encoder = Encoder()
    vectors = encoder.embed([f"{row['title']} {row['text']}" for row in sliced])
    single = [(text, docs[0]) for qid, text in queries if len(docs := [d for d, g in qrels[qid].items() if g > 0]) == 1]
    query_vectors = encoder.embed([text for text, _ in single], max_length=64)
    doc_vectors = encoder.embed([f"{by_id[doc]['title']} {by_id[doc]['text']}" for _, doc in single])
    chosen = None
    for (text, doc), query, vector in zip(single, query_vectors, doc_vectors):
        if float(vector @ query) > float(np.max(vectors @ query)) + 0.05:  # it beats the whole slice by cosine
            chosen = (text, by_id[doc])
            break
    assert chosen is not None, "no scifact test query whose relevant document stands out"
    root = work / "experts"
    expert = create_expert(root, "scifact", encoder=encoder)
    index_expert(expert, encoder, [work / "slice.jsonl"], progress=False)
    build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=SLICE))
    return root, chosen[0], chosen[1]


def _search(url: str, query: str) -> list[str]:
    response = httpx.post(
        f"{url}/search", json={"query": query, "k": 5, "expert": "scifact", "mode": "dense"}, timeout=60
    )
    assert response.status_code == 200, response.text
    return [hit["id"] for hit in response.json()["results"][0]["hits"]]


def test_upserts_and_deletes_are_read_after_write_and_survive_kill_9(scifact_case, start_server) -> None:
    root, query, row = scifact_case
    server = start_server(root, base_model=None, launch=ForkedProcess)
    assert row["_id"] not in _search(server.url, query)

    document = {"id": row["_id"], "title": row["title"], "text": row["text"], "metadata": {"source": "api"}}
    started = time.monotonic()
    response = httpx.put(
        f"{server.url}/admin/experts/scifact/documents", json={"documents": [document]}, headers=ADMIN, timeout=60
    )
    assert response.status_code == 200, response.text
    assert _search(server.url, query)[0] == row["_id"]  # the first search after the acknowledgement
    print(f"upsert acknowledged and found in {time.monotonic() - started:.3f} s")  # figure for the README
    server.process.kill()  # SIGKILL right after the acknowledgement: no shutdown, no flush
    server.process.wait(timeout=30)

    server = start_server(root, base_model=None, launch=ForkedProcess)
    assert _search(server.url, query)[0] == row["_id"]
    got = httpx.get(f"{server.url}/experts/scifact/documents/{row['_id']}", timeout=30)
    assert got.status_code == 200 and got.json()["metadata"] == {"source": "api"}

    response = httpx.request(
        "DELETE", f"{server.url}/admin/experts/scifact/documents", json={"ids": [row["_id"]]}, headers=ADMIN, timeout=60
    )
    assert response.status_code == 200 and response.json()["deleted"] == [row["_id"]]
    assert row["_id"] not in _search(server.url, query)
    server.process.kill()
    server.process.wait(timeout=30)

    server = start_server(root, base_model=None, launch=ForkedProcess)
    assert row["_id"] not in _search(server.url, query)
    assert httpx.get(f"{server.url}/experts/scifact/documents/{row['_id']}", timeout=30).status_code == 404
