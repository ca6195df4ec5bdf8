"""The quality gate's pieces on real experts (tiny BERT): its sets, the documents they judge, the scores, the verdict."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.loading import LoadedExpert, load_expert, unload_expert
from app.engine.retrieval import Retrieval
from app.errors import GateRefusedError, InvalidRequestError, PathNotAllowedError
from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from app.publishing.gate import GateQueries, gate_queries, parse_gate, run_gate, score_expert
from experts import Encoder, ExpertDir, create_expert
from tests.app.service.conftest import TOPICS

_PERMUTATION_SEED = 5


def build_shuffled(root: Path, name: str, encoder: Encoder, *, source: Path, count: int = 24) -> ExpertDir:
    """``root/name``: ``name``'s documents with their texts shuffled between ids, so every id answers for another's
    text (a broken build); the same adapter as ``source``."""
    topics = TOPICS[name]  # the corpus of conftest.write_corpus, ids aside
    rows = [
        {"title": f"{topics[i % len(topics)]} {i}", "text": f"a study of {topics[i % len(topics)]} number {i}"}
        for i in range(count)
    ]
    order = list(range(count))
    random.Random(_PERMUTATION_SEED).shuffle(order)
    corpus = root / f"{name}-shuffled.jsonl"
    root.mkdir(parents=True, exist_ok=True)
    corpus.write_text("".join(json.dumps({"_id": f"{name}-{i}", **rows[j]}) + "\n" for i, j in enumerate(order)))
    expert = create_expert(root, name, encoder=encoder, adapter_from=source / "adapter", description="shuffled")
    index_expert(expert, encoder, [corpus], progress=False, chunk_size=8)
    build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=12), method="centroid")
    corpus.unlink()
    return expert


@pytest.fixture(scope="module")
def shuffled_beta(tmp_path_factory: pytest.TempPathFactory, template_root: Path, tiny_encoder: Encoder) -> Path:
    return build_shuffled(tmp_path_factory.mktemp("shuffled"), "beta", tiny_encoder, source=template_root / "beta").path


@pytest.fixture()
def loaded(template_root: Path, shuffled_beta: Path, tiny_encoder: Encoder) -> Iterator[dict[str, LoadedExpert]]:
    experts = {
        "beta": load_expert(template_root / "beta", tiny_encoder),
        "shuffled": load_expert(shuffled_beta, tiny_encoder),
        "alpha": load_expert(template_root / "alpha", tiny_encoder),
    }
    yield experts
    for expert in experts.values():
        unload_expert(expert, tiny_encoder)


def labelled(root: Path, rows: list[tuple[str, str, list[str]]]) -> str:
    """Write ``queries.jsonl`` and ``qrels.tsv`` under ``root/gate``; the gate value naming them."""
    folder = root / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t, _ in rows))
    lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{doc}\t1" for q, _, docs in rows for doc in docs]
    (folder / "qrels.tsv").write_text("\n".join(lines) + "\n")
    return "gate/queries.jsonl:gate/qrels.tsv"


def test_pseudo_sets_are_seeded_spans_of_the_serving_documents(loaded: dict[str, LoadedExpert], tmp_path: Path) -> None:
    spec = parse_gate("pseudo", tmp_path, margin=0.01)
    first, again = gate_queries(spec, loaded["beta"], limit=10), gate_queries(spec, loaded["beta"], limit=10)
    assert first == again and len(first.texts) == 10
    docs = loaded["beta"].collection.docstore
    for text, relevant in zip(first.texts, first.relevant, strict=True):
        [(doc_id, grade)] = relevant.items()
        row = docs.row_ids([doc_id])[0]
        assert grade == 1 and row is not None and text in docs.get([row])[0].text  # a span of its one document


def test_scores_reward_the_right_documents(loaded: dict[str, LoadedExpert], tiny_encoder: Encoder) -> None:
    beta = loaded["beta"]
    docs = beta.collection.docstore.get(beta.collection.docstore.all_row_ids().tolist())
    exact = GateQueries([doc.text for doc in docs], [{doc.id: 1} for doc in docs])
    ndcg, recall = score_expert(tiny_encoder, beta, exact, retrieval=Retrieval(mode="hybrid"))
    assert ndcg > 0.8 and recall == 1.0  # every query is its document's whole text: BM25 ranks it high
    wrong = GateQueries(exact.texts, [{"beta-0": 1}] * len(docs))  # one document judged relevant to all
    low, low_recall = score_expert(tiny_encoder, beta, wrong, retrieval=Retrieval(mode="hybrid"))
    assert low < 0.2 and low_recall == 1.0  # 24 documents: it is always in the top 100, rarely near the top
    # A query BM25 finds nothing for still counts, as 0 (ir-measures alone would leave it out of the mean).
    lexical = Retrieval(mode="lexical")
    one = GateQueries(exact.texts[:1], exact.relevant[:1])
    alone = score_expert(tiny_encoder, beta, one, retrieval=lexical)
    nothing = GateQueries([*one.texts, "zzzz qqqq"], [*one.relevant, {"beta-1": 1}])
    halved = score_expert(tiny_encoder, beta, nothing, retrieval=lexical)
    assert alone[0] > 0 and halved == pytest.approx((alone[0] / 2, alone[1] / 2))


def test_the_gate_refuses_a_worse_candidate_with_both_figures(
    loaded: dict[str, LoadedExpert], tiny_encoder: Encoder, tmp_path: Path
) -> None:
    spec = parse_gate("pseudo", tmp_path, margin=0.01)
    with pytest.raises(GateRefusedError) as refused:
        run_gate(tiny_encoder, spec, loaded["beta"], loaded["shuffled"], retrieval=Retrieval())
    record = refused.value.details
    assert record["passed"] is False and record["mode"] == "hybrid" and record["set"] == "pseudo"
    assert record["serving"]["ndcg_at_10"] - record["candidate"]["ndcg_at_10"] > 0.2
    assert "below the serving" in refused.value.message and "margin 0.01" in refused.value.message

    same = run_gate(
        tiny_encoder, parse_gate("pseudo", tmp_path, margin=0.0), loaded["beta"], loaded["beta"], retrieval=Retrieval()
    )
    assert same.passed and same.serving == same.candidate and same.queries == 24
    lenient = run_gate(
        tiny_encoder,
        parse_gate("pseudo", tmp_path, margin=1.0),
        loaded["beta"],
        loaded["shuffled"],
        retrieval=Retrieval(),
    )
    assert lenient.passed and lenient.serving is not None
    # Nothing serving (it failed to load): only the candidate is scored, and it passes.
    alone = run_gate(tiny_encoder, spec, None, loaded["beta"], retrieval=Retrieval())
    assert alone.passed and alone.serving is None


def test_labelled_sets_and_bad_gates(loaded: dict[str, LoadedExpert], tiny_encoder: Encoder, tmp_path: Path) -> None:
    root = tmp_path / "root"
    gate = labelled(root, [("q1", "a study of compiler parser number 0", ["beta-0"]), ("q2", "sorting", ["beta-2"])])
    record = run_gate(
        tiny_encoder, parse_gate(gate, root, margin=0.01), loaded["beta"], loaded["beta"], retrieval=Retrieval()
    )
    assert record.passed and record.queries == 2 and record.set == gate

    with pytest.raises(InvalidRequestError, match=r"does not hold, e.g. \['beta-0', 'beta-2'\]") as missing:
        run_gate(
            tiny_encoder, parse_gate(gate, root, margin=0.01), loaded["alpha"], loaded["beta"], retrieval=Retrieval()
        )
    assert "serving version" in missing.value.message
    gate = labelled(root, [("q1", "wing", ["alpha-1", "beta-1"])])
    with pytest.raises(InvalidRequestError, match=r"e\.g\. \['alpha-1'\]"):
        run_gate(
            tiny_encoder, parse_gate(gate, root, margin=0.01), loaded["beta"], loaded["beta"], retrieval=Retrieval()
        )

    with pytest.raises(InvalidRequestError, match=r"Invalid gate 'labelled'\. Valid gates are: 'pseudo', or"):
        parse_gate("labelled", root, margin=0.01)
    with pytest.raises(InvalidRequestError, match=r"gate qrels file 'gate/nope\.tsv' does not exist"):
        parse_gate("gate/queries.jsonl:gate/nope.tsv", root, margin=0.01)
    with pytest.raises(PathNotAllowedError, match="outside the data root"):
        parse_gate("gate/queries.jsonl:../elsewhere.tsv", root, margin=0.01)
    with pytest.raises(InvalidRequestError, match="between 0 and 1"):
        parse_gate("pseudo", root, margin=2.0)
    (root / "gate" / "qrels.tsv").write_text("not\ta qrels line\n")
    with pytest.raises(InvalidRequestError, match="cannot be read"):
        gate_queries(parse_gate(gate, root, margin=0.01), loaded["beta"])
    shutil.rmtree(root / "gate")
