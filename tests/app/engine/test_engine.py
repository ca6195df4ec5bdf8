"""SearchEngine and expert loading on the tiny BERT: adapters on the query side, snapshots, fusion, failures."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from app.engine.config import EngineConfig
from app.engine.engine import SearchEngine
from app.engine.loading import load_expert
from app.engine.votes import per_expert_votes
from app.offline.building import build_pilots, index_expert
from experts import AdapterMismatchError, Encoder, ExpertDir, ExpertDirError, UnknownExpertError, create_expert
from index.store.union_lexical import APPROXIMATE_POSTINGS
from router import PilotSearch, RoutePolicy

AERO = [
    ("a1", "Wing lift", "lift and drag of swept wings at transonic speed"),
    ("a2", "Boundary layers", "laminar boundary layer transition on a flat plate"),
    ("a3", "Shock waves", "oblique shock reflection from a wall"),
]
COMPUTING = [
    ("a1", "Compilers", "a one-pass compiler for an algebraic language"),
    ("a2", "Sorting", "a comparison of sorting methods on tape"),
    ("a3", "Storage", "dynamic storage allocation with linked lists"),
]


def make_expert(
    root: Path,
    name: str,
    docs: list[tuple[str, str, str]],
    encoder: Encoder,
    *,
    adapter: Path | None = None,
    pilots: bool = True,
) -> ExpertDir:
    corpus = root.parent / f"{name}-corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "title": t, "text": x}) + "\n" for i, t, x in docs))
    expert = create_expert(root, name, encoder=encoder, adapter_from=adapter)
    index_expert(expert, encoder, [corpus], progress=False)
    if pilots:
        build_pilots(expert, encoder, [f"{t} {x}" for _, t, x in docs])
    return expert


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    return tmp_path / "experts"


def test_a_trained_adapter_embeds_the_query_while_documents_stay_base(
    root: Path, tiny_bert_path: Path, adapter_a: Path
) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder, adapter=adapter_a)
    engine = SearchEngine.open(root, encoder)
    query = "lift of a wing"
    hits = engine.search([query], k=3, expert="aero").results[0].hits

    reference = Encoder(tiny_bert_path)
    reference.add_adapter("direct", adapter_a)
    query_vector = reference.embed([query], expert="direct", max_length=64)[0]
    documents = {i: reference.embed([f"{t} {x}"])[0] for i, t, x in AERO}  # base encoder, no adapter
    expected = sorted(((float(documents[i] @ query_vector), i) for i in documents), reverse=True)
    assert [h.id for h in hits] == [i for _, i in expected]
    np.testing.assert_allclose([h.score for h in hits], [s for s, _ in expected], rtol=1e-4)
    assert all(h.expert == "aero" for h in hits)
    engine.close()


def test_an_untrained_adapter_is_not_loaded_and_answers_with_base_vectors(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    engine = SearchEngine.open(root, encoder)
    assert engine.experts["aero"].adapter is None and encoder.adapters == ()
    routed = engine.search(["shock"], k=3).results[0]
    assert routed.decision.experts == ("aero",) and routed.decision.mode == "top1"
    base_top = max(
        AERO, key=lambda d: float(encoder.embed(["shock"], max_length=64)[0] @ encoder.embed([f"{d[1]} {d[2]}"])[0])
    )
    assert routed.hits[0].id == base_top[0]


def test_fanout_fuses_two_collections_and_keeps_equal_ids_apart(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    engine = SearchEngine.open(root, encoder)
    result = engine.search(["storage of wings"], k=6, policy=RoutePolicy(top_k=2)).results[0]
    assert result.decision.mode == "fanout" and set(result.decision.experts) == {"aero", "computing"}
    assert sorted((h.expert, h.id) for h in result.hits) == sorted(
        [("aero", i) for i, _, _ in AERO] + [("computing", i) for i, _, _ in COMPUTING]
    )
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)


def test_fallback_searches_with_the_base_vector_and_says_so(root: Path, tiny_bert_path: Path, adapter_a: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder, adapter=adapter_a)
    engine = SearchEngine.open(root, encoder)
    result = engine.search(["wing"], k=3, policy=RoutePolicy(min_score=2.0)).results[0]
    assert result.decision.mode == "fallback" and not result.decision.use_adapters
    base_query = encoder.embed(["wing"], max_length=64)[0]
    best = max(float(base_query @ encoder.embed([f"{t} {x}"])[0]) for _, t, x in AERO)
    assert result.hits[0].score == pytest.approx(best, rel=1e-4)
    engine.close()


def test_a_broken_expert_is_reported_and_the_others_serve(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    broken = make_expert(root, "computing", COMPUTING, encoder)
    manifest = broken.read_manifest()
    docstore = broken.path / manifest.index.directory / "docs.sqlite"
    docstore.write_bytes(docstore.read_bytes()[:-100])  # truncated
    engine = SearchEngine.open(root, encoder)
    assert set(engine.experts) == {"aero"}
    assert "computing" in engine.failures.unavailable and "checksum" in engine.failures.unavailable["computing"]
    assert engine.search(["anything"], k=1).results[0].decision.experts == ("aero",)


@pytest.mark.parametrize("take_out", [False, True])
def test_an_expert_whose_files_fail_mid_search_is_taken_out_only_by_a_service(
    root: Path, tiny_bert_path: Path, take_out: bool
) -> None:
    from app.errors import ExpertUnavailableError
    from index import IndexFileError

    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    config = EngineConfig(evidence="none", policy=RoutePolicy(top_k=1))
    engine = SearchEngine.open(root, encoder, config)
    engine.take_out_broken = take_out
    computing = engine.experts["computing"]
    outcome = engine.broken(computing, IndexFileError("dense.faiss: read error"))
    if not take_out:  # a one-shot CLI: the searches that touched it fail with the index's error; nothing else
        assert isinstance(outcome, IndexFileError) and "computing" in engine.experts and not engine.failures.failed
        return
    assert isinstance(outcome, ExpertUnavailableError) and "out of service" in str(outcome)
    deadline = time.monotonic() + 30
    while "computing" in engine.experts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "computing" not in engine.experts and "read error" in engine.failures.failed["computing"]
    engine.add(load_expert(root / "computing", encoder))  # published again: it serves, and the record is cleared
    assert "computing" in engine.experts and not engine.failures.failed
    engine._take_out(computing, "late report about the old instance")  # the replacement is not taken out
    assert "computing" in engine.experts and not engine.failures.failed


def test_removing_an_expert_makes_it_unknown_and_routes_elsewhere(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    engine = SearchEngine.open(root, encoder)
    engine.remove("computing")
    with pytest.raises(UnknownExpertError, match=r"Expert 'computing' not found. Published experts: \['aero'\]"):
        engine.search(["sorting"], expert="computing")
    assert all(d.experts == ("aero",) for d in engine.route(["sorting", "compilers"]))
    engine.add(load_expert(root / "computing", encoder))  # and back again, no retraining
    assert {d.experts[0] for d in engine.route(["x"] * 2)} <= {"aero", "computing"}
    assert len(engine.route(["x"])[0].scores) == 2


def test_an_expert_without_pilots_is_searchable_by_name_but_never_routed(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder, pilots=False)
    engine = SearchEngine.open(root, encoder)
    assert not engine.experts["computing"].routable
    assert [name for name, _ in engine.route(["sorting"])[0].scores] == ["aero"]
    assert len(engine.search(["sorting"], k=2, expert="computing").results[0].hits) == 2


def test_loading_refuses_an_expert_without_index_or_for_another_base(
    root: Path, tiny_bert_path: Path, other_bert_path: Path
) -> None:
    encoder = Encoder(tiny_bert_path)
    bare = create_expert(root, "bare", encoder=encoder)
    with pytest.raises(ExpertDirError, match="has no index yet"):
        load_expert(bare, encoder)
    make_expert(root, "aero", AERO, encoder)
    with pytest.raises(AdapterMismatchError, match="built for base model"):
        load_expert(root / "aero", Encoder(other_bert_path))


def test_bad_search_arguments(root: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    engine = SearchEngine.open(root, encoder)
    for k in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            engine.search(["x"], k=k)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="query 1 is empty"):
        engine.search(["x", ""])
    with pytest.raises(TypeError, match="list of strings"):
        engine.search("x")  # type: ignore[arg-type]
    assert engine.search([], k=3).results == []


@pytest.mark.parametrize("evidence", ["documents", "bm25", "documents+bm25"])
@pytest.mark.parametrize(("rule", "depth"), [("share", 1), ("best", 5)])
def test_corpus_evidence_outvotes_misleading_pilots(
    root: Path, tiny_bert_path: Path, evidence: str, rule: str, depth: int
) -> None:
    # Pilots swapped on purpose: aero's pilot is computing's centroid and the other way round.
    encoder = Encoder(tiny_bert_path)
    aero = make_expert(root, "aero", AERO, encoder, pilots=False)
    computing = make_expert(root, "computing", COMPUTING, encoder, pilots=False)
    build_pilots(aero, encoder, [f"{t} {x}" for _, t, x in COMPUTING], method="centroid")
    build_pilots(computing, encoder, [f"{t} {x}" for _, t, x in AERO], method="centroid")
    query = "oblique shock reflection from a wall"  # aero's a3, word for word
    plain = SearchEngine.open(root, encoder, EngineConfig(aggregate="max"))
    assert plain.search([query], k=1).results[0].decision.experts == ("computing",)
    plain.close()
    # share: one vote, for the best document; best: by each collection's best scores. Aero's holds the query's best.
    config = EngineConfig(aggregate="max", evidence=evidence, vote_depth=depth, vote_rule=rule)  # type: ignore[arg-type]
    engine = SearchEngine.open(root, encoder, config)
    (result,) = engine.search([query], k=1).results
    assert result.decision.experts == ("aero",) and result.hits[0].id == "a3"
    scores = dict(result.decision.scores)
    if rule == "share":
        assert scores["aero"] - scores["computing"] > 0.5  # a whole vote, far above the cosine gap of the pilots
    assert engine.search([query], k=1, expert="computing").results[0].decision.mode == "forced"  # no votes when forced
    engine.close()


def test_unknown_evidence_is_refused(tiny_bert_path: Path) -> None:
    with pytest.raises(ValueError, match="documents\\+bm25"):
        EngineConfig(evidence="votes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid vote_rule 'most'. Valid choices are: share, best"):
        EngineConfig(evidence="documents", vote_rule="most")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="vote_depth must be >= 5 with vote_rule 'best'.*got 3; or set vote_rule"):
        EngineConfig(evidence="documents", vote_depth=3)
    assert EngineConfig(evidence="documents", vote_depth=3, vote_rule="share").vote_depth == 3
    assert EngineConfig(evidence="none", vote_depth=3).vote_depth == 3  # no votes: the depth is not read


@pytest.mark.parametrize("evidence", ["none", "documents", "bm25", "documents+bm25"])
@pytest.mark.parametrize(("rule", "depth"), [("share", 1), ("best", 5)])
def test_route_makes_the_decisions_search_makes(
    root: Path, tiny_bert_path: Path, evidence: str, rule: str, depth: int
) -> None:
    # Misleading pilots (swapped, as above), so the corpus votes change decisions: a pilots-only route() would differ.
    encoder = Encoder(tiny_bert_path)
    aero = make_expert(root, "aero", AERO, encoder, pilots=False)
    computing = make_expert(root, "computing", COMPUTING, encoder, pilots=False)
    build_pilots(aero, encoder, [f"{t} {x}" for _, t, x in COMPUTING], method="centroid")
    build_pilots(computing, encoder, [f"{t} {x}" for _, t, x in AERO], method="centroid")
    queries = [f"{t} {x}" for _, t, x in AERO + COMPUTING] + ["oblique shock reflection", "sorting on tape", "wing"]
    config = EngineConfig(aggregate="max", evidence=evidence, vote_depth=depth, vote_rule=rule)  # type: ignore[arg-type]
    engine = SearchEngine.open(root, encoder, config)
    for policy in (RoutePolicy(), RoutePolicy(top_k=2, fanout_margin=0.3)):
        routed = engine.route(queries, policy=policy)
        searched = [result.decision for result in engine.search(queries, k=2, policy=policy).results]
        for decision, expected in zip(routed, searched, strict=True):
            assert (decision.experts, decision.mode, decision.use_adapters) == (
                expected.experts,
                expected.mode,
                expected.use_adapters,
            )
            assert [name for name, _ in decision.scores] == [name for name, _ in expected.scores]
            np.testing.assert_allclose([s for _, s in decision.scores], [s for _, s in expected.scores], rtol=1e-5)
            assert decision.margin == pytest.approx(expected.margin, abs=1e-5)
    if evidence != "none":
        pilots_only = engine.router.route(encoder.embed(queries, max_length=engine.query_max_length))
        assert [d.scores for d in engine.route(queries)] != [d.scores for d in pilots_only]  # the votes are in
        assert engine.route(["oblique shock reflection from a wall"])[0].experts == ("aero",)  # outvoted pilots
    engine.close()


def test_the_votes_union_is_rebuilt_when_experts_are_published_and_removed(root: Path, tiny_bert_path: Path) -> None:
    # open() builds it at once; later publishes leave it to the builder's thread, and votes are exact meanwhile.
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    engine = SearchEngine.open(root, encoder, EngineConfig(evidence="documents+bm25", vote_depth=5))
    queries = ["oblique shock reflection", "sorting on tape", "wing", "storage of lists"]

    def union_members() -> set[str]:
        deadline = time.monotonic() + 10
        while engine._holder.current.union is None and time.monotonic() < deadline:  # the builder's thread
            time.sleep(0.02)
        snapshot = engine._holder.current
        assert snapshot.union is not None and snapshot.union.dense is not None
        assert snapshot.shared_idf is snapshot.union.shared_idf
        names = {id(e.collection): name for name, e in snapshot.experts.items()}
        assert set(snapshot.union.lexical_members) == set(snapshot.union.dense_members)
        return {names[key] for key in snapshot.union.dense_members}

    def assert_votes_as_per_expert() -> None:
        snapshot = engine._holder.current
        views = [snapshot.experts[name].view() for name in snapshot.router.experts]
        base = encoder.embed(queries)
        expected = per_expert_votes(
            views, base, queries, evidence="documents+bm25", depth=5, shared_idf=snapshot.shared_idf
        )
        routed = engine.route(queries, policy=RoutePolicy(top_k=len(views), fanout_margin=10.0))
        pilots = engine.router.route(base, policy=RoutePolicy(top_k=len(views), fanout_margin=10.0))
        assert expected is not None
        for decision, pilot, votes in zip(routed, pilots, expected, strict=True):
            added = {name: score - dict(pilot.scores)[name] for name, score in decision.scores}
            np.testing.assert_allclose([added[name] for name in snapshot.router.experts], votes, atol=1e-6)

    assert union_members() == {"aero", "computing"}
    assert_votes_as_per_expert()
    make_expert(root, "more-aero", AERO[:2], encoder)
    engine.add(load_expert(root / "more-aero", encoder))
    assert_votes_as_per_expert()  # most likely before the union is rebuilt: every collection on its own
    assert union_members() == {"aero", "computing", "more-aero"}
    assert_votes_as_per_expert()
    engine.remove("aero").wait(5)
    assert union_members() == {"computing", "more-aero"}
    assert_votes_as_per_expert()
    engine.close()


def test_the_votes_union_follows_each_parts_own_threshold(root: Path, tiny_bert_path: Path) -> None:
    """The dense part becomes an inverted file above vote_exact_max vectors, the BM25 part keeps each stem's best
    postings above vote_lexical_exact_max documents: the engine passes both, each on its own."""
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    for dense_max, lexical_max, approximate, cap in ((0, None, True, None), (None, 0, False, APPROXIMATE_POSTINGS)):
        config = EngineConfig(
            evidence="documents+bm25", vote_depth=5, vote_exact_max=dense_max, vote_lexical_exact_max=lexical_max
        )
        engine = SearchEngine.open(root, encoder, config)
        union = engine._holder.current.union
        assert union is not None and union.dense is not None
        assert union.dense.approximate is approximate
        assert [u.postings_cap for u in union.lexical] == [cap]
        assert engine.route(["oblique shock reflection"])[0].experts  # routes with it
        engine.close()


def test_grouped_pilot_votes_route_as_search_does_and_publishing_reuses_the_groups(
    root: Path, tiny_bert_path: Path
) -> None:
    """With every pilot group read, the grouped vote is the exact one; route() and search() agree; a publish
    groups only the new pilots."""
    encoder = Encoder(tiny_bert_path)
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    queries = [f"{t} {x}" for _, t, x in AERO + COMPUTING] + ["oblique shock reflection", "sorting on tape"]
    exact = SearchEngine.open(root, encoder, EngineConfig(aggregate="knn", pilot_search=PilotSearch(exact_max=None)))
    grouped_config = EngineConfig(aggregate="knn", pilot_search=PilotSearch(exact_max=0, probes=10_000, group_size=2))
    grouped = SearchEngine.open(root, encoder, grouped_config)
    assert grouped.router.groups and not exact.router.groups
    routed = grouped.route(queries)
    assert [d.experts for d in routed] == [d.experts for d in exact.route(queries)]
    assert [d.experts for d in routed] == [r.decision.experts for r in grouped.search(queries, k=2).results]
    before = dict(grouped.router.groups)
    grouped.remove("computing").wait(10)
    assert grouped.router.groups["aero"] is before["aero"]
    exact.close()
    grouped.close()
