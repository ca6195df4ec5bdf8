"""The real all-MiniLM-L6-v2 on 300-document slices of two shared collections: index, route, search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.engine.engine import SearchEngine
from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents, pilot_texts_from_queries
from experts import Encoder, create_expert
from experts.labelled import judged_queries, read_qrels, read_queries

pytestmark = pytest.mark.slow

SLICE = 300
JUDGED_QUERIES = 30


def write_slice(collection: Path, target: Path) -> tuple[Path, dict[str, str], dict[str, dict[str, int]]]:
    """The relevant documents of the first judged test queries, filled up to SLICE documents in file order."""
    qrels = read_qrels(collection / "qrels" / "test.tsv")
    queries = dict(list(judged_queries(read_queries(collection / "queries.jsonl"), qrels).items())[:JUDGED_QUERIES])
    wanted = {doc for qid in queries for doc, score in qrels[qid].items() if score > 0}
    lines, filler = [], []
    with open(collection / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            (lines if json.loads(line)["_id"] in wanted else filler).append(line)
    lines += filler[: max(0, SLICE - len(lines))]
    target.write_text("".join(lines))
    return target, queries, {qid: qrels[qid] for qid in queries}


@pytest.fixture(scope="module")
def engine(datasets: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("experts")
    encoder = Encoder()
    slices = {}
    for name in ("scifact", "cranfield"):
        corpus, queries, qrels = write_slice(datasets / name, root.parent / f"{name}.jsonl")
        slices[name] = (queries, qrels)
        expert = create_expert(root, name, encoder=encoder)
        index_expert(expert, encoder, [corpus], progress=False)
        if name == "scifact":  # real training queries (train split), never the test queries
            texts = pilot_texts_from_queries(datasets / name / "queries.jsonl", datasets / name / "qrels" / "train.tsv")
        else:  # no training queries: pseudo queries from the expert's documents
            texts = pilot_texts_from_documents(expert, sample=300)
        build_pilots(expert, encoder, texts)
    engine = SearchEngine.open(root, encoder)
    yield engine, slices
    engine.close()


def test_test_queries_are_routed_to_their_own_collection(engine) -> None:
    engine, slices = engine
    for name, (queries, _) in slices.items():
        decisions = engine.route(list(queries.values()))
        routed_home = sum(d.experts[0] == name for d in decisions) / len(decisions)
        assert routed_home >= 0.9, f"{name}: only {routed_home:.0%} of test queries routed to {name}"


def test_a_relevant_document_comes_back_for_most_queries(engine) -> None:
    engine, slices = engine
    for name, (queries, qrels) in slices.items():
        batch = engine.search(list(queries.values()), k=10)
        found = [
            any(hit.id in {d for d, s in qrels[qid].items() if s > 0} for hit in result.hits)
            for qid, result in zip(queries, batch.results)
        ]
        assert sum(found) / len(found) >= 0.7, (
            f"{name}: a relevant document in the top 10 for {sum(found)}/{len(found)}"
        )
        assert all(result.decision.experts for result in batch.results)
