"""Per-expert hybrid fusion: tuned on the expert's own queries, kept in its manifest, applied by the engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.engine.config import EngineConfig
from app.engine.engine import SearchEngine
from app.engine.retrieval import Retrieval, RetrievalOptions, expert_retrieval, search_collection
from app.offline.building import build_pilots, index_expert
from app.offline.fusion_tuning import TuningQueries, best_weight, from_collection, fusion_curve, tune_fusion
from experts import Encoder, ExpertDir, RetrievalSection, create_expert
from index import Collection
from tests.app.conftest import run_cli, write_jsonl

WORDS = "wing lift drag shock flow plate heat layer compiler storage sort tape query index nozzle".split()


def build(root: Path, encoder: Encoder, count: int = 60) -> ExpertDir:
    rows = [
        {
            "_id": f"d{n}",
            "title": f"doc {n}",
            "text": " ".join(WORDS[(n * 7 + i) % len(WORDS)] for i in range(5 + n % 7)),
        }
        for n in range(count)
    ]
    corpus = write_jsonl(root.parent / "corpus.jsonl", rows)
    expert = create_expert(root, "aero", encoder=encoder)
    index_expert(expert, encoder, [corpus], progress=False)
    build_pilots(expert, encoder, [row["text"] for row in rows], method="centroid")
    return expert


def test_best_weight_prefers_the_default_among_near_ties() -> None:
    assert best_weight({0.0: 0.80, 0.5: 0.60, 1.0: 0.10}) == 0.0
    assert best_weight({0.4: 0.7005, 0.5: 0.7, 0.6: 0.7004}) == 0.5
    assert best_weight({0.2: 0.7, 0.8: 0.7}) == 0.2  # equally far from 0.5: the smaller


def test_tuning_on_pseudo_queries_publishes_a_weight_that_follows_the_curve(
    tmp_path: Path, tiny_bert_path: Path
) -> None:
    # A random tiny BERT ranks by noise while BM25 matches pseudo queries copied from the documents,
    # so the curve falls as the dense share grows and the tuned weight leans lexical.
    encoder = Encoder(tiny_bert_path)
    expert = build(tmp_path / "experts", encoder)
    before = expert.read_manifest()
    with Collection.open(expert.path / before.index.directory) as collection:
        queries = from_collection(collection, limit=100)
        assert queries.kind == "pseudo" and len(queries.texts) == 100
        curve = fusion_curve(encoder, None, collection, queries)
    assert curve[0.0] > curve[1.0] + 0.2
    manifest = tune_fusion(expert, encoder, queries)
    section = manifest.retrieval
    assert manifest.version == before.version + 1
    assert section.weight == best_weight(curve) and section.weight <= 0.3
    assert section.tuned_on == "100 pseudo queries" and section.curve["0.00"] == pytest.approx(curve[0.0], abs=1e-4)
    ExpertDir(expert.path).verify(expert.read_manifest())  # checksums still hold after the publish


def test_labelled_tuning_queries_map_corpus_ids_to_rows(tmp_path: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    expert = build(tmp_path / "experts", encoder, count=20)
    queries = write_jsonl(
        tmp_path / "queries.jsonl", [{"_id": "q1", "text": "wing lift"}, {"_id": "q2", "text": "tape sort"}]
    )
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td3\t1\nq1\td5\t1\nq2\td9\t2\n")
    manifest = expert.read_manifest()
    with Collection.open(expert.path / manifest.index.directory) as collection:
        tuning = from_collection(collection, queries=queries, qrels=qrels)
        rows = dict(zip(["d3", "d5", "d9"], collection.docstore.row_ids(["d3", "d5", "d9"]), strict=True))
    assert tuning.kind == "labelled"
    assert sorted(zip(tuning.texts, tuning.relevant)) == [
        ("tape sort", (rows["d9"],)),
        ("wing lift", tuple(sorted((rows["d3"], rows["d5"])))),
    ]
    with pytest.raises(ValueError, match="both"):
        from_collection(collection, queries=queries)
    with pytest.raises(ValueError, match="no queries"):
        TuningQueries([], [], "pseudo")


def test_the_engine_searches_each_expert_with_its_own_weight_unless_the_request_sets_one(
    tmp_path: Path, tiny_bert_path: Path
) -> None:
    encoder = Encoder(tiny_bert_path)
    expert = build(tmp_path / "experts", encoder)
    expert.publish(retrieval=RetrievalSection(mode="hybrid", weight=0.0, tuned_on="test", queries=0))
    engine = SearchEngine.open(
        tmp_path / "experts", encoder, EngineConfig(aggregate="max", retrieval=Retrieval(mode="dense"))
    )
    loaded = engine.experts["aero"]
    query = "shock flow plate heat"
    vector = encoder.embed([query], max_length=engine.query_max_length)

    def ids(retrieval: Retrieval) -> list[str]:
        return [h.id for h in search_collection(loaded.collection, [query], vector, [(10, retrieval)])[0]]

    lexical_only, dense_only = ids(Retrieval(mode="hybrid", weight=0.0)), ids(Retrieval(mode="hybrid", weight=1.0))
    assert lexical_only != dense_only  # the test can tell the two weights apart

    def searched(options: RetrievalOptions | None) -> tuple[str, list[str]]:
        (result,) = engine.search([query], k=10, retrieval=options).results
        return result.mode, [hit.id for hit in result.hits]

    # The manifest's mode and weight beat the settings' dense default; a request's own fields beat the manifest.
    assert searched(None) == ("hybrid", lexical_only)
    assert searched(RetrievalOptions(mode="hybrid")) == ("hybrid", lexical_only)
    assert searched(RetrievalOptions(weight=1.0)) == ("hybrid", dense_only)
    assert searched(RetrievalOptions(mode="dense"))[0] == "dense"
    assert expert_retrieval(Retrieval(weight=0.7), None) == Retrieval(weight=0.7)
    engine.close()


def test_bad_options_are_refused_when_made() -> None:
    with pytest.raises(ValueError, match="weight"):
        RetrievalOptions(weight=1.5)
    with pytest.raises(ValueError, match="Invalid mode"):
        RetrievalOptions(mode="sparse")  # type: ignore[arg-type]
    assert RetrievalOptions(weight=0.2).over(Retrieval(mode="hybrid", fusion="rrf")) == Retrieval(
        mode="hybrid", fusion="rrf", weight=0.2
    )


def test_the_cli_tunes_an_expert(cli_env: Path, tmp_path: Path, tiny_bert_path: Path, capsys) -> None:
    build(cli_env, Encoder(tiny_bert_path))
    code, out, err = run_cli(["tune-fusion", "--expert", "aero", "--pseudo", "--limit", "50"], capsys)
    assert code == 0, err
    assert "dense weight" in out and "50 pseudo queries" in out
    manifest = json.loads((cli_env / "aero" / "manifest.json").read_text())
    assert manifest["retrieval"]["queries"] == 50 and 0.0 <= manifest["retrieval"]["weight"] <= 1.0
    code, _, err = run_cli(["tune-fusion", "--expert", "aero"], capsys)
    assert code != 0 and "--pseudo" in err
    assert np.isfinite(manifest["retrieval"]["curve"]["0.50"])
