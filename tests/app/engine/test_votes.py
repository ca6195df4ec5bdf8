"""Corpus votes from the union of the collections equal the per-expert searches they replaced, exactly.

Real documents and queries (the first documents of the shared collections)
under a tiny random bag-of-words encoder, so that queries find related
documents and scores are not all alike; Flat, chunked, HNSW (searched on its
own) and BM25L (own IDF) collections side by side; then live upserts and
deletes, and a union that is stale for one collection.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from app.engine.votes import corpus_votes, per_expert_votes
from index import ChunkSettings, Collection, CorpusUnion, Document, LexicalSettings, SharedIdf, build_index
from index.live.live_collection import LiveCollection
from index.live.view import LiveView, static_view
from index.store.union_dense import UnionDense
from index.store.union_lexical import APPROXIMATE_POSTINGS, UnionLexical
from tests.index.conftest import fake_split

DIM = 24
DOCS = 120


def bag_of_words(passages: list[str]) -> np.ndarray:
    """A tiny random encoder: the normalised sum of a fixed random vector per word; (n, DIM) float32."""
    out = np.zeros((len(passages), DIM), dtype=np.float32)
    for i, passage in enumerate(passages):
        for word in passage.lower().split()[:60]:
            seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
            out[i] += np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        norm = np.linalg.norm(out[i])
        out[i] = out[i] / norm if norm else 1.0 / np.sqrt(DIM)
    return out


def build(tmp_path: Path, datasets: Path, name: str, source: str, **options: object) -> Collection:
    corpus = tmp_path / f"{name}.jsonl"
    with open(datasets / source / "corpus.jsonl", encoding="utf-8") as reader:
        lines = list(itertools.islice(reader, DOCS))
    lines.append(json.dumps({"_id": "shared-doc", "title": "", "text": "a document every collection holds"}) + "\n")
    corpus.write_text("".join(lines), encoding="utf-8")
    out = tmp_path / name
    build_index(
        [corpus],
        embed=bag_of_words,
        dim=DIM,
        out_dir=out,
        work_dir=tmp_path / f".work-{name}",
        build_key="votes-test",
        progress=False,
        **options,  # type: ignore[arg-type]
    )
    return Collection.open(out)


@pytest.fixture(scope="module")
def collections(tmp_path_factory: pytest.TempPathFactory, datasets: Path) -> list[Collection]:
    tmp = tmp_path_factory.mktemp("votes")
    made = [
        build(tmp, datasets, "scifact", "scifact"),
        build(tmp, datasets, "cranfield", "cranfield"),
        build(
            tmp, datasets, "cacm", "cacm", chunking=ChunkSettings("chunk", max_tokens=40, overlap=10), split=fake_split
        ),
        build(tmp, datasets, "cisi", "cisi", factory="HNSW8"),
        build(tmp, datasets, "npl", "npl", lexical=LexicalSettings(method="bm25l")),
        build(tmp, datasets, "npl-plain", "npl"),
    ]
    yield made
    for collection in made:
        collection.close()


def queries(datasets: Path) -> list[str]:
    texts = []
    for source in ("scifact", "cranfield", "cacm", "cisi", "npl"):
        with open(datasets / source / "queries.jsonl", encoding="utf-8") as reader:
            texts += [json.loads(line)["text"] for line in itertools.islice(reader, 6)]
    return texts + ["a document every collection holds", "the of and", "zzzz unknownword"]


def shared_of(collections: list[Collection]) -> SharedIdf:
    return SharedIdf.over(c.lexical.document_frequencies() for c in collections if c.has_lexical)


def assert_same_votes(views: list[LiveView], texts: list[str], union: CorpusUnion, shared: SharedIdf | None) -> None:
    base = bag_of_words(texts)
    for evidence, rule in itertools.product(("documents", "bm25", "documents+bm25"), ("best", "share")):
        for depth in (1, 5, 20):
            for rows in (slice(None), slice(0, 1), slice(3, 7)):  # a batch (BLAS in FAISS), one query, a few
                kwargs = dict(evidence=evidence, depth=depth, shared_idf=shared, rule=rule)
                expected = per_expert_votes(views, base[rows], texts[rows], **kwargs)  # type: ignore[arg-type]
                got = corpus_votes(views, base[rows], texts[rows], union=union, **kwargs)  # type: ignore[arg-type]
                assert got is not None and expected is not None
                assert np.array_equal(got, expected), (evidence, rule, depth, rows)


@pytest.mark.parametrize("shard", [UnionDense.SHARD, 37])  # one FAISS index, or many merged
def test_union_votes_equal_per_expert_votes(
    collections: list[Collection], datasets: Path, shard: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UnionDense, "SHARD", shard)
    shared = shared_of(collections)
    union = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared)
    assert union.dense is not None and union.dense.members.count == 5  # the HNSW one is searched on its own
    assert sum(u.members.count for u in union.lexical) == 5  # the BM25L one keeps its own IDF
    views = [static_view(c) for c in collections]
    texts = queries(datasets)
    assert_same_votes(views, texts, union, shared)
    assert_same_votes(views[1:4], texts, union, shared)  # a restricted job: some experts only
    assert_same_votes(views[::-1], texts, union, shared)  # another order of experts
    assert_same_votes(views, texts, union, None)  # each collection's own IDF: not the union's, searched apart
    votes = corpus_votes(views, bag_of_words(texts), texts, evidence="documents", depth=20, union=union)
    assert votes is not None and (votes[:, :3] > 0).any(axis=0).all()  # the votes are not trivially empty


def test_union_votes_follow_live_writes_and_a_stale_union(
    collections: list[Collection], datasets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(UnionDense, "SHARD", 100)
    shared = shared_of(collections)
    mains = [Collection.open(c.directory) for c in collections[:3]]  # the live collections own (and close) these
    union = CorpusUnion.build([*mains, collections[3]], dense=True, lexical=True, shared_idf=shared)
    lives = [
        LiveCollection.open(c, tmp_path / f"log-{i}", embed=bag_of_words, split=fake_split) for i, c in enumerate(mains)
    ]
    try:
        texts = queries(datasets)
        lives[0].upsert(
            [
                Document("new-1", "", texts[0], {}),  # a query's own text: a new best match
                Document("new-2", "", "boundary layer transition on a flat plate " + texts[7], {}),
            ]
        )
        best = lives[0].view().main.search(bag_of_words(texts[:2]), 2)  # the best matches of two queries go
        lives[0].delete(sorted({hit.id for hits in best for hit in hits}))
        first = lives[1].view().main
        hits = first.search_lexical(texts[6:8], 5, shared_idf=shared)[1]
        lives[1].delete([d.id for d in first.docstore.get([int(r) for r in hits[hits >= 0]]) if d is not None])
        lives[2].upsert([Document("shared-doc", "", "rewritten: " + texts[12], {})])  # replaces a chunked document
        views = [live.view() for live in lives] + [static_view(c) for c in collections[3:]]
        assert len(views[1].main_dead) and len(views[0].delta)
        assert_same_votes(views, texts, union, shared)  # npl-plain is not in this union: searched on its own
    finally:
        for live in lives:
            live.close()


def test_an_approximate_union_gives_near_votes_and_only_to_the_experts_asked(
    collections: list[Collection], datasets: Path
) -> None:
    shared = shared_of(collections)
    union = CorpusUnion.build(
        collections, dense=True, lexical=True, shared_idf=shared, approximate_above=0, probes=16,
        lexical_approximate_above=0,
    )  # fmt: skip
    assert union.dense is not None and union.dense.approximate
    assert [u.postings_cap for u in union.lexical] == [APPROXIMATE_POSTINGS]
    exact = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared)
    assert exact.dense is not None and not exact.dense.approximate
    assert [u.postings_cap for u in exact.lexical] == [None]
    # Each part has its own threshold: an inverted file for the vectors, every posting for BM25, and back.
    dense_only = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared, approximate_above=0)
    assert dense_only.dense is not None and dense_only.dense.approximate
    assert [u.postings_cap for u in dense_only.lexical] == [None]
    lexical_only = CorpusUnion.build(
        collections, dense=True, lexical=True, shared_idf=shared, lexical_approximate_above=0
    )
    assert lexical_only.dense is not None and not lexical_only.dense.approximate
    assert [u.postings_cap for u in lexical_only.lexical] == [APPROXIMATE_POSTINGS]
    with pytest.raises(ValueError, match="lexical_approximate_above must be >= 0 or None, got -1"):
        CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared, lexical_approximate_above=-1)
    views = [static_view(c) for c in collections]
    texts = queries(datasets)
    base = bag_of_words(texts)
    for chosen in (views, views[1:4]):
        expected = per_expert_votes(chosen, base, texts, evidence="documents", depth=20, shared_idf=shared)
        got = corpus_votes(chosen, base, texts, evidence="documents", depth=20, shared_idf=shared, union=union)
        assert got is not None and expected is not None and got.shape == expected.shape
        assert np.allclose(got.sum(axis=1), 1.0)  # every query still finds its depth of documents
        agree = np.mean(np.argmax(got, axis=1) == np.argmax(expected, axis=1))
        assert agree >= 0.8, agree
        assert np.abs(got - expected).sum(axis=1).mean() < 0.5


def test_a_capped_lexical_union_keeps_each_stems_best_postings(collections: list[Collection], datasets: Path) -> None:
    """Impact-ordered cut: with a cap above every stem's postings, the same answers bit for bit; with a small one,
    at most that many postings a stem, each one of the stem's best, and a one-stem query's best hits unchanged."""
    plain = [c for c in collections if c.lexical.settings.method == "lucene"]
    shared = shared_of(collections)
    exact = UnionLexical.build([c.lexical for c in plain], shared)
    texts = queries(datasets)
    roomy = UnionLexical.build([c.lexical for c in plain], shared, postings_cap=10_000)
    for got, expected in zip(roomy.search(texts, 20), exact.search(texts, 20), strict=True):
        assert np.array_equal(got, expected)
    capped = UnionLexical.build([c.lexical for c in plain], shared, postings_cap=3)
    assert capped.postings_cap == 3 and np.diff(capped._indptr).max() <= 3
    assert capped.nbytes < exact.nbytes
    stems = [stem for stem in ("flow", "cell", "program", "retriev") if stem in exact._vocab]
    assert len(stems) >= 3
    for stem in stems:
        (best_scores, best_documents), (scores, documents) = (u.search([stem], 3) for u in (exact, capped))
        assert np.array_equal(scores[0][:3], best_scores[0][:3]) and np.array_equal(
            documents[0][:3], best_documents[0][:3]
        )
    with pytest.raises(ValueError, match="postings_cap must be a positive integer"):
        UnionLexical.build([c.lexical for c in plain], shared, postings_cap=0)


def test_the_settings_reach_the_engine_config_and_bad_ones_are_refused() -> None:
    from app.engine.config import EngineConfig
    from app.settings import Settings

    config = Settings(
        router_vote_exact_max=5000, router_vote_probes=4, router_vote_lexical_exact_max=7000
    ).engine_config()
    assert (config.vote_exact_max, config.vote_probes, config.vote_lexical_exact_max) == (5000, 4, 7000)
    with pytest.raises(ValueError, match="router_vote_lexical_exact_max"):
        Settings(router_vote_lexical_exact_max=-1)
    for bad in ({"vote_exact_max": -1}, {"vote_probes": 0}, {"vote_lexical_exact_max": -2}):
        with pytest.raises(ValueError, match="vote_exact_max and vote_lexical_exact_max must be >= 0 or None"):
            EngineConfig(**bad)  # type: ignore[arg-type]


def test_the_settings_reach_the_engines_router(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.engine.engine import SearchEngine
    from app.settings import Settings
    from router import PilotSearch

    monkeypatch.setenv("RR_ROUTER_PILOT_EXACT_MAX", "500")
    monkeypatch.setenv("RR_ROUTER_PILOT_PROBES", "6")
    config = Settings().engine_config()
    assert config.pilot_search == PilotSearch(exact_max=500, probes=6)
    assert SearchEngine(encoder=None, config=config).router.search == config.pilot_search  # type: ignore[arg-type]


def test_the_ray_ingress_votes_with_the_engines_shared_idf(collections: list[Collection], datasets: Path) -> None:
    """The ingress pools each expert's statistics (one searcher call per version) and sends the queries' stems only."""
    from app.ray_serve.vote_idf import VoteIdf, term_statistics, vote_scores
    from router import expert_list_votes

    views = [static_view(c) for c in collections]
    keys = [(f"expert-{i}", "v1") for i in range(len(collections))]
    pooled = VoteIdf()
    assert pooled.missing(keys) == keys
    for key, collection in zip(keys, collections, strict=True):
        pooled.remember(key, term_statistics(collection))
    assert pooled.missing(keys) == []
    texts = queries(datasets)
    base = bag_of_words(texts)
    shared = pooled.for_queries(keys, texts)
    full = shared_of(collections)
    assert shared.documents == full.documents and len(shared.frequencies) < len(full.frequencies)
    for depth in (1, 5, 20):
        answers = [vote_scores(view, base, texts, depth, ("documents", "bm25"), shared) for view in views]
        got = sum(
            expert_list_votes([a[key] for a in answers], depth=depth, rule="best", kind=kind)
            for key, kind in (("documents", "dense"), ("bm25", "lexical"))
        )
        expected = per_expert_votes(views, base, texts, evidence="documents+bm25", depth=depth, shared_idf=full)
        assert expected is not None and np.array_equal(got, expected), depth
        own = per_expert_votes(views, base, texts, evidence="bm25", depth=depth, shared_idf=None)
        if depth == 20:  # the IDF decides: scored with each collection's own, the votes differ
            bm25 = expert_list_votes([a["bm25"] for a in answers], depth=depth, rule="best", kind="lexical")
            assert own is not None and not np.array_equal(bm25, own)
    pooled.forget_all_but(keys[:2])
    assert pooled.missing(keys) == keys[2:]


def test_the_cut_keeps_empty_columns_and_each_columns_best() -> None:
    from index.store.union_lexical import _capped

    data = np.array([5, 1, 3, 2, 9, 4, 4], dtype=np.float32)
    indices = np.array([0, 1, 2, 0, 1, 2, 3])
    indptr = np.array([0, 3, 3, 7, 7])  # an empty column inside and one at the end
    kept, documents, pointers = _capped((data, indices, indptr), 2)
    assert kept.tolist() == [5, 3, 9, 4] and documents.tolist() == [0, 2, 1, 2]  # a tie goes to the lower document
    assert pointers.tolist() == [0, 2, 2, 4, 4]
