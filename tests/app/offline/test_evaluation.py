"""``rr eval`` and the paper's pilots end to end on the tiny BERT and two tiny collections with hand-made qrels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from app.cli.evaluation import eval_command, pilots_paper_command
from app.engine.engine import SearchEngine
from app.engine.retrieval import Retrieval
from app.offline.building import build_pilots, index_expert
from app.offline.evaluation import SYSTEMS, evaluate, hybrid_union_run, score_run, union_index
from app.offline.pilot_selection import publish_pilots, select_paper_pilots, training_queries
from app.offline.report import CHART_FILE, DATA_FILE, EVAL_FILE, REPORT_FILE, write_report
from experts import Encoder, ExpertDir, create_expert

AERO = [
    ("a1", "Wing lift", "lift and drag of swept wings at transonic speed"),
    ("a2", "Boundary layers", "laminar boundary layer transition on a flat plate"),
    ("a3", "Shock waves", "oblique shock reflection from a wall"),
    ("a4", "Heat transfer", "heat transfer to a blunt body in hypersonic flow"),
]
COMPUTING = [
    ("a1", "Compilers", "a one-pass compiler for an algebraic language"),
    ("a2", "Sorting", "a comparison of sorting methods on tape"),
    ("a3", "Storage", "dynamic storage allocation with linked lists"),
]


def write_collection(folder: Path, docs, *, test: dict[str, str], train: dict[str, str] | None = None) -> Path:
    """A BEIR folder whose queries are the documents' own passages, each judged relevant to its document."""
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs)
    )
    passages = {i: f"{t} {x}" for i, t, x in docs}
    queries = {**test, **(train or {})}
    (folder / "queries.jsonl").write_text(
        "".join(json.dumps({"_id": q, "text": passages[d]}) + "\n" for q, d in queries.items())
    )
    for split, judged in (("test", test), ("train", train)):
        if judged:
            rows = "".join(f"{q}\t{d}\t1\n" for q, d in judged.items())
            (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


@pytest.fixture()
def setup(tmp_path: Path, tiny_bert_path: Path, adapter_a: Path):
    datasets = tmp_path / "datasets"
    write_collection(datasets / "aero", AERO, test={"q1": "a1", "q2": "a3"}, train={"t1": "a2", "t2": "a4"})
    write_collection(datasets / "computing", COMPUTING, test={"q1": "a2", "q2": "a1", "q3": "a3"})
    root = tmp_path / "experts"
    encoder = Encoder(tiny_bert_path)
    for name, docs, adapter in (("aero", AERO, adapter_a), ("computing", COMPUTING, None)):
        expert = create_expert(root, name, encoder=encoder, adapter_from=adapter)
        index_expert(expert, encoder, [datasets / name / "corpus.jsonl"], progress=False)
        build_pilots(expert, encoder, [f"{t} {x}" for _, t, x in docs])
    engine = SearchEngine.open(root, encoder)
    yield engine, datasets, root
    engine.close()


def test_evaluation_scores_every_system_and_counts_every_query(setup, tmp_path: Path) -> None:
    engine, datasets, _ = setup
    report = evaluate(engine, datasets, ["aero", "computing"], pseudo_sample=3, fanout_margin=0.5)
    assert report.queries == {"aero": 2, "computing": 3}
    assert report.union_documents == len(AERO) + len(COMPUTING)
    assert report.confusion.sum() == 5 and report.confusion.shape == (2, 3)  # + 1: routed to another expert
    assert report.confusion[:, 2].sum() == 0  # only the two collections are published
    # Each test query is its document's passage, so the base encoder and BM25 rank that document first.
    for system in ("base", "base-union", "bm25", "bm25-union", "hybrid-base", "hybrid-union"):
        for name in ("aero", "computing"):
            assert report.metrics[system][name] == pytest.approx({"nDCG@10": 1.0, "R@100": 1.0})
    # The untrained expert is the base model: its oracle run equals the base run.
    assert report.metrics["oracle"]["computing"] == report.metrics["base"]["computing"]
    assert report.systems == list(SYSTEMS)  # routed-fanout included: a margin was given
    assert set(report.pilot_comparison) <= {"centroid", "kmeans", "queries", "paper"}
    assert {"centroid", "kmeans", "queries"} <= set(report.pilot_comparison)
    for by_aggregate in report.pilot_comparison.values():
        assert set(by_aggregate) == {"max", "mean", "knn"}
        assert all(0.0 <= v <= 1.0 for acc in by_aggregate.values() for v in acc.values())

    folder = write_report(report, tmp_path / "reports", name="run", command="rr eval")
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == ["run"]  # no staging folder left
    markdown = (folder / REPORT_FILE).read_text()
    assert "| aero |" in markdown and "nDCG@10" in markdown and "rr eval" in markdown
    assert (folder / CHART_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((folder / DATA_FILE).read_text())["confusion"] == report.confusion.tolist()
    figures = json.loads((folder / EVAL_FILE).read_text())
    assert set(figures["collections"]) == {"aero", "computing"} and figures["command"] == "rr eval"
    assert set(figures["collections"]["aero"]) == set(SYSTEMS)
    assert figures["collections"]["aero"]["bm25"] == {
        "ndcg@10": report.metrics["bm25"]["aero"]["nDCG@10"],
        "recall@100": report.metrics["bm25"]["aero"]["R@100"],
    }
    assert figures["queries"] == {"aero": 2, "computing": 3}
    for system in SYSTEMS:
        for kind in ("macro", "micro"):
            assert figures[f"{kind}_average"][system] == {
                "ndcg@10": report.average(system, "nDCG@10", kind),
                "recall@100": report.average(system, "R@100", kind),
            }
        assert figures["average"][system] == figures["macro_average"][system]  # the old key: readers of earlier runs
    data = json.loads((folder / DATA_FILE).read_text())
    assert data["average"] == data["macro_average"] and data["micro_average"]["bm25"]["nDCG@10"] == report.average(
        "bm25", "nDCG@10", "micro"
    )
    assert "| system | what | aero | computing | macro | micro |" in markdown
    deployed = next(rule for rule in figures["routing"] if rule.startswith("deployed"))
    assert figures["routing"][deployed]["accuracy"] == report.routing_accuracy["all"]
    assert sum(sum(row.values()) for row in figures["routing"][deployed]["confusion"].values()) == 5
    assert "queries + knn" in figures["routing"]
    with pytest.raises(FileExistsError):
        write_report(report, tmp_path / "reports", name="run")


def test_evaluation_scores_only_the_systems_asked_for_with_the_same_figures(setup) -> None:
    engine, datasets, _ = setup
    full = evaluate(engine, datasets, ["aero", "computing"], constructions=())
    some = evaluate(engine, datasets, ["aero", "computing"], constructions=(), systems=["routed-hybrid", "bm25"])
    assert some.systems == ["bm25", "routed-hybrid"]  # SYSTEMS order, whatever order they were asked in
    for system in some.systems:
        assert some.metrics[system] == full.metrics[system]
    # The routing confusion comes from the routed search scored: the same first choices.
    assert some.confusion.tolist() == full.confusion.tolist() and some.confusion.sum() == 5
    assert some.union_documents == 0  # no union index was built
    with pytest.raises(ValueError, match="Unknown systems \\['hybrid'\\]. Valid systems are: bm25, bm25-union"):
        evaluate(engine, datasets, ["aero"], constructions=(), systems=["bm25", "hybrid"])


def test_macro_averages_collections_and_micro_averages_queries() -> None:
    from app.offline.evaluation import EvalReport

    metrics = {"bm25": {"a": {"nDCG@10": 1.0, "R@100": 0.5}, "b": {"nDCG@10": 0.0, "R@100": 0.5}}}
    report = EvalReport(["a", "b"], {"a": 3, "b": 1}, metrics, np.zeros((2, 2)), "")
    assert report.average("bm25", "nDCG@10") == report.average("bm25", "nDCG@10", "macro") == 0.5
    assert report.average("bm25", "nDCG@10", "micro") == pytest.approx(0.75)  # 3 of the 4 queries score 1
    assert report.average("bm25", "R@100", "micro") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Valid kinds are: macro, micro"):
        report.average("bm25", "nDCG@10", "weighted")  # type: ignore[arg-type]


def test_a_failing_report_leaves_no_folder(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine, datasets, _ = setup
    report = evaluate(engine, datasets, ["aero", "computing"], constructions=())

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("app.offline.report.render_chart", broken)
    with pytest.raises(RuntimeError):
        write_report(report, tmp_path / "reports", name="run")
    assert list((tmp_path / "reports").iterdir()) == []


def test_score_run_counts_a_query_missing_from_the_run_as_zero() -> None:
    qrels = {"q1": {"c/d1": 1}, "q2": {"c/d2": 1}}
    assert score_run(qrels, {"q1": {"c/d1": 1.0, "c/d9": 0.5}}) == pytest.approx({"nDCG@10": 0.5, "R@100": 0.5})
    # Another collection's document with the same id is not relevant.
    assert score_run({"q": {"cacm/1": 1}}, {"q": {"cisi/1": 1.0}})["nDCG@10"] == 0.0


def test_hybrid_union_over_one_collection_is_that_collections_hybrid_search(setup) -> None:
    engine, datasets, _ = setup
    report = evaluate(engine, datasets, ["computing"], constructions=())
    # One collection: the union indexes hold exactly its documents, fused by the same rule.
    assert report.metrics["hybrid-union"]["computing"] == pytest.approx(report.metrics["hybrid-base"]["computing"])
    assert report.systems.index("hybrid-union") == report.systems.index("hybrid-base") + 1


def test_hybrid_union_keeps_each_documents_best_chunk_and_fuses_on_document_keys() -> None:
    from app.offline.pilot_selection import JudgedQueries
    from index import fuse_dense_lexical

    test = JudgedQueries("c", ["q"], ["text"], {"q": {"d1": 1}}, "test")
    dense_keys = ["c/d1", "c/d1", "c/d2", "x/d1"]  # d1 split into two chunks; x/d1 is another collection's d1
    dense = (np.array([[0.9, 0.8, 0.7, 0.1]]), np.array([[1, 0, 2, 3]]))  # chunk rows, best first
    lexical_keys = ["x/d1", "c/d2", "c/d1"]  # another order: rows of the lexical union are its own
    lexical = (np.array([[5.0, 1.0, -np.inf]]), np.array([[0, 1, -1]]))
    run = hybrid_union_run(test, dense, dense_keys, lexical, lexical_keys, k=10, retrieval=Retrieval(mode="hybrid"))
    # Document positions: x/d1 0, c/d2 1, c/d1 2; dense side c/d1 .9 (its best chunk), c/d2 .7, x/d1 .1.
    expected = fuse_dense_lexical(
        (np.array([[0.9, 0.7, 0.1]]), np.array([[2, 1, 0]])), (np.array([[5.0, 1.0]]), np.array([[0, 1]])), k=10
    )
    names = ["x/d1", "c/d2", "c/d1"]
    assert run["q"] == pytest.approx(
        {names[r]: float(s) for r, s in zip(expected.ids[0], expected.scores[0]) if r >= 0}
    )
    assert len(run["q"]) == 3


def test_union_index_holds_every_document_once_with_its_collection(setup) -> None:
    engine, _, _ = setup
    union, keys, most_chunks = union_index(engine, ["aero", "computing"])
    assert len(union) == len(keys) == 7 and most_chunks == 1
    assert sorted(keys) == sorted([f"aero/{i}" for i, _, _ in AERO] + [f"computing/{i}" for i, _, _ in COMPUTING])


def test_pseudo_training_queries_point_at_their_source_document(setup) -> None:
    engine, datasets, _ = setup
    queries = training_queries("computing", engine.experts["computing"].collection, datasets, pseudo_sample=2)
    assert queries.origin == "pseudo queries" and len(queries.ids) == 2
    titles = {i: t for i, t, _ in COMPUTING}
    for qid, text in zip(queries.ids, queries.texts):
        (doc,) = queries.qrels[qid]
        assert text == titles[doc]
    real = training_queries("aero", engine.experts["aero"].collection, datasets)
    assert real.origin == "train qrels" and real.ids == ["t1", "t2"]


def test_paper_pilots_follow_the_winners_and_publish(setup) -> None:
    engine, datasets, root = setup
    selection = select_paper_pilots(engine, datasets, pseudo_sample=3)
    assert set(selection.scores) == {"aero", "computing"}
    for source, scores in selection.scores.items():
        assert scores.shape == (len(selection.queries[source].ids), 2)
        assert ((scores >= 0) & (scores <= 1)).all()
        won = sum(selection.wins[source].values())
        assert won + selection.dropped[source] >= len(scores)  # a shared best counts for each expert
    for pilots in selection.pilots.values():
        assert pilots.shape[1] == engine.encoder.dim and 1 <= len(pilots) <= 2  # at most one pilot per source
    if selection.pilots:
        published = publish_pilots(engine, selection.pilots, method="paper", source=selection.source)
        for name, manifest in published.items():
            assert manifest.pilots.method == "paper"
            np.testing.assert_allclose(ExpertDir(root / name).read_pilots(manifest), selection.pilots[name])


def test_cli_functions_run_in_process(setup, tmp_path: Path, tiny_bert_path: Path, monkeypatch) -> None:
    _, datasets, root = setup
    monkeypatch.setenv("RR_DATA_DIR", str(root))
    monkeypatch.setenv("RR_BASE_MODEL", str(tiny_bert_path))
    from app.cli import commands as cli_module

    app = typer.Typer()
    app.callback()(cli_module._configure)
    app.command("eval")(eval_command)
    app.command("pilots-paper")(pilots_paper_command)
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "eval",
            "--datasets",
            str(datasets),
            "--collections",
            "aero,computing",
            "--out",
            str(tmp_path / "reports"),
            "--name",
            "cli",
            "--pilot-method",
            "centroid",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "routing accuracy" in result.output and (tmp_path / "reports" / "cli" / REPORT_FILE).is_file()
    assert "hybrid-union" in result.output and "nDCG@10 macro " in result.output and " micro " in result.output
    result = runner.invoke(app, ["eval", "--pilot-method", "magic", "--datasets", str(datasets)])
    assert result.exit_code != 0 and "Valid methods are" in result.output
    result = runner.invoke(app, ["pilots-paper", "--datasets", str(datasets), "--pseudo-sample", "3", "--dry-run"])
    assert result.exit_code in (0, 2), result.output
    assert "aero (train qrels)" in result.output


def test_the_union_of_chunked_collections_holds_every_chunk_and_ranks_documents_once(tmp_path, tiny_bert_path) -> None:
    from app.engine.engine import SearchEngine
    from app.engine.loading import load_expert
    from app.offline.building import index_expert
    from app.offline.evaluation import _union_run
    from app.offline.pilot_selection import JudgedQueries
    from experts import Encoder, create_expert

    encoder = Encoder(tiny_bert_path, max_length=32)
    corpus = tmp_path / "long.jsonl"
    rows = [{"_id": f"d{i}", "title": "", "text": " ".join(f"word{i}x{j}" for j in range(60))} for i in range(4)]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    expert = create_expert(tmp_path / "experts", "long", encoder=encoder)
    index_expert(expert, encoder, [corpus], progress=False)
    engine = SearchEngine(encoder)
    engine.add(load_expert(expert.path, encoder))
    union, keys, most_chunks = union_index(engine, ["long"])
    assert most_chunks > 1 and len(keys) == len(union) > 4 and set(keys) == {f"long/d{i}" for i in range(4)}
    query = encoder.embed(["word2x50 word2x51 word2x52"])
    found = union.search(query, len(union))
    test = JudgedQueries("long", ["q"], ["word2x50"], {"q": {"d2": 1}}, "test")
    run = _union_run(test, *found, keys, limit=3)
    assert len(run["q"]) == 3 and len(set(run["q"])) == 3  # three distinct documents, each once


def test_queries_routed_to_an_expert_outside_the_collections_scored_are_misses(setup, tmp_path: Path) -> None:
    """Scoring some collections while other experts are published (a domain added later): a query routed to one
    of those counts in the last column, so it lowers the routing accuracy instead of vanishing from it."""
    from app.offline.evaluation import accuracy_of
    from app.offline.report import OTHER_EXPERTS, eval_data, render_markdown

    engine, datasets, _ = setup
    report = evaluate(engine, datasets, ["aero"], systems=["routed-hybrid"])
    assert report.confusion.shape == (1, 2) and report.confusion.sum() == 2  # every aero test query is counted
    report.confusion = np.array([[1, 1]])  # one of the two sent to computing, published beside aero
    assert report.routing_accuracy == {"aero": 0.5, "all": 0.5}
    assert f"| {OTHER_EXPERTS} | accuracy |" in render_markdown(report)
    deployed = next(iter(eval_data(report)["routing"].values()))
    assert deployed["confusion"] == {"aero": {"aero": 1, OTHER_EXPERTS: 1}} and deployed["accuracy"] == 0.5
    assert accuracy_of(np.array([[3, 1, 2], [0, 4, 0]]), ["a", "b"]) == {"a": 0.5, "b": 1.0, "all": 0.7}
