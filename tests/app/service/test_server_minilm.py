"""The real all-MiniLM-L6-v2 behind a real server: routed search finds the judged relevant documents.

Two experts on 120-document slices of scifact and cranfield (each slice holds
the relevant documents of its first judged test queries); the server is
``rr serve`` in a subprocess with the bundled base model; the test queries go
in as concurrent single-query requests, so they are micro-batched together.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents, pilot_texts_from_queries
from experts import Encoder, create_expert
from experts.labelled import judged_queries, read_qrels, read_queries

pytestmark = pytest.mark.slow

SLICE = 120
PILOT_QUERIES = 200  # scifact's training queries used for its pilot (a centroid settles long before 809)
SAMPLE_QUERIES = 8


def write_slice(collection: Path, target: Path) -> dict[str, tuple[str, set[str]]]:
    """Write the slice; return {query id: (text, relevant doc ids)} for its sample queries."""
    qrels = read_qrels(collection / "qrels" / "test.tsv")
    queries = list(judged_queries(read_queries(collection / "queries.jsonl"), qrels).items())[:SAMPLE_QUERIES]
    relevant = {qid: {doc for doc, score in qrels[qid].items() if score > 0} for qid, _ in queries}
    wanted = set().union(*relevant.values())
    kept, filler = [], []
    with open(collection / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if json.loads(line)["_id"] in wanted:
                kept.append(line)
            elif len(filler) < SLICE:
                filler.append(line)
    target.write_text("".join(kept + filler[: max(0, SLICE - len(kept))]))
    return {qid: (text, relevant[qid]) for qid, text in queries}


@pytest.fixture(scope="module")
def minilm_root(datasets: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict]]:
    work = tmp_path_factory.mktemp("minilm-service")
    root = work / "experts"
    encoder = Encoder()
    samples = {}
    for name in ("scifact", "cranfield"):
        samples[name] = write_slice(datasets / name, work / f"{name}.jsonl")
        expert = create_expert(root, name, encoder=encoder)
        index_expert(expert, encoder, [work / f"{name}.jsonl"], progress=False)
        if name == "scifact":  # its real training queries; never the test queries
            texts = pilot_texts_from_queries(datasets / name / "queries.jsonl", datasets / name / "qrels" / "train.tsv")
            texts = texts[:PILOT_QUERIES]
        else:
            texts = pilot_texts_from_documents(expert, sample=SLICE)
        build_pilots(expert, encoder, texts)
    return root, samples


def test_routed_search_returns_the_known_relevant_documents(minilm_root, start_server) -> None:
    root, samples = minilm_root
    server = start_server(root, base_model=None)  # no RR_BASE_MODEL: the bundled MiniLM
    asked = [
        (name, qid, text, relevant) for name, queries in samples.items() for qid, (text, relevant) in queries.items()
    ]

    def ask(item):
        _, _, text, _ = item
        with httpx.Client(base_url=server.url, timeout=120) as http:
            response = http.post("/search", json={"query": text, "k": 10})
        assert response.status_code == 200, response.text
        return response.json()["results"][0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(ask, asked))

    routed_home = found = 0
    for (name, _, _, relevant), result in zip(asked, results):
        routed_home += result["expert"] == name
        found += any(hit["id"] in relevant and hit["expert"] == name for hit in result["hits"])
        assert set(result["route"]["router_scores"]) == {"scifact", "cranfield"}
    assert routed_home >= 0.9 * len(asked), f"only {routed_home}/{len(asked)} routed to their own collection"
    assert found >= 0.75 * len(asked), f"a relevant document in the top 10 for only {found}/{len(asked)}"

    with httpx.Client(base_url=server.url, timeout=120) as http:
        texts = [text for _, _, text, _ in asked]
        batch = http.post("/search", json={"queries": texts, "k": 10}).json()  # one request, one batch
        assert [r["expert"] for r in batch["results"]] == [r["expert"] for r in results]
        assert [[h["id"] for h in r["hits"]] for r in batch["results"]] == [
            [h["id"] for h in r["hits"]] for r in results
        ]
        routed = http.post("/v1/embeddings", json={"model": "auto", "input": texts[:2]}).json()
        assert len(routed["data"][0]["embedding"]) == 384
