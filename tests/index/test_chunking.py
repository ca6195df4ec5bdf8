"""Long documents in a built collection: chunk vectors, collapse to documents, spans, filters, policies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from index import (
    CHUNKS_FILE,
    ChunkSettings,
    Collection,
    IndexFileError,
    InvalidParameterError,
    build_index,
    read_info,
)
from index.store.chunk_map import ChunkMap, collapse
from tests.index.conftest import DIM, fake_embed, fake_split

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron sigma tau upsilon".split()


def long_records(n: int = 60) -> list[dict]:
    """Every third document long (several 40-character windows), with metadata to filter on."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j) % len(WORDS)] + str(i) for j in range(4 if i % 3 else 30)]
        out.append(
            {
                "_id": f"d{i}",
                "title": f"T{i}" if i % 2 else "",
                "text": " ".join(words),
                "metadata": {"group": ["a", "b", "c", "d"][i % 4]},
            }
        )
    return out


def build(tmp_path: Path, write_corpus, *, policy: str = "chunk", records=None, factory: str = "Flat", name="gen"):
    corpus = write_corpus(tmp_path / f"{name}.jsonl", records or long_records())
    out = tmp_path / name
    report = build_index(
        [corpus],
        embed=fake_embed,
        dim=DIM,
        out_dir=out,
        work_dir=tmp_path / f".work-{name}",
        build_key="t",
        factory=factory,
        progress=False,
        chunking=ChunkSettings(policy, max_tokens=40, overlap=10),
        split=fake_split,
    )
    return out, report


def chunk_reference(collection: Collection, queries: np.ndarray, k: int, allowed=None) -> list[list[int]]:
    """Brute force over every chunk vector, collapsed by max per row: the top-k rows."""
    rows, vectors, _, _ = collection.dense.chunk_vectors()
    scores = queries @ vectors.T
    out = []
    for q in range(len(queries)):
        best: dict[int, float] = {}
        for row, score in zip(rows.tolist(), scores[q].tolist(), strict=True):
            if allowed is None or row in allowed:
                best[row] = max(best.get(row, -np.inf), score)
        out.append([r for r, _ in sorted(best.items(), key=lambda item: -item[1])[:k]])
    return out


def test_a_chunked_build_stores_chunks_and_records_its_policy(tmp_path: Path, write_corpus) -> None:
    out, report = build(tmp_path, write_corpus)
    info = read_info(out)
    assert info.chunking == ChunkSettings("chunk", 40, 10) and info.count == 60 == report.documents
    assert CHUNKS_FILE in info.checksums and info.chunks > 60
    with Collection.open(out, verify_checksums=True) as collection:
        assert collection.chunked and len(collection) == 60 and collection.dense.ntotal == 60
        rows, vectors, starts, ends = collection.dense.chunk_vectors()
        assert len(rows) == info.chunks
        docs = dict(
            zip(
                collection.docstore.all_row_ids().tolist(),
                collection.docstore.get(collection.docstore.all_row_ids().tolist()),
            )
        )
        # Each chunk's vector is the embedding of its span of the passage (what the job embedded).
        texts = [docs[r].passage()[s:e] for r, s, e in zip(rows.tolist(), starts.tolist(), ends.tolist())]
        np.testing.assert_allclose(vectors, fake_embed(texts), atol=1e-6)
        # One vector per document for callers that want a document matrix: the first chunk.
        head_rows, head = collection.vectors()
        assert len(head_rows) == 60 and np.array_equal(np.unique(rows), head_rows)


def test_dense_search_is_brute_force_over_chunks_collapsed_by_max(tmp_path: Path, write_corpus) -> None:
    out, _ = build(tmp_path, write_corpus)
    queries = fake_embed([f"q{i}" for i in range(20)])
    with Collection.open(out) as collection:
        for k in (1, 5, 17, 60, 100):
            scores, ids = collection.dense.search(queries, k)
            assert scores.shape == ids.shape == (20, k)
            found = [[int(i) for i in row if i >= 0] for row in ids]
            assert all(len(row) == len(set(row)) for row in found)  # each document at most once
            assert found == chunk_reference(collection, queries, k)
            assert all(len(row) == min(k, 60) for row in found)


def test_allowed_rows_filter_chunked_documents_and_fill_k(tmp_path: Path, write_corpus) -> None:
    out, _ = build(tmp_path, write_corpus)
    queries = fake_embed([f"q{i}" for i in range(10)])
    with Collection.open(out) as collection:
        allowed = collection.select({"group": "b"})
        assert len(allowed) == 15
        for k in (3, 15, 20):
            scores, ids = collection.dense.search(queries, k, allowed=allowed)
            found = [[int(i) for i in row if i >= 0] for row in ids]
            assert all(len(row) == min(k, 15) and set(row) <= set(allowed.tolist()) for row in found)
            assert found == chunk_reference(collection, queries, k, set(allowed.tolist()))
        # The lexical side stays per document, in the same row space.
        _, lexical_ids = collection.search_lexical(["alpha3"], 5, allowed=allowed)
        assert set(lexical_ids[lexical_ids >= 0].tolist()) <= set(allowed.tolist())


def test_hits_carry_the_span_of_the_best_chunk(tmp_path: Path, write_corpus) -> None:
    records = long_records()
    out, _ = build(tmp_path, write_corpus, records=records)
    with Collection.open(out) as collection:
        rows, vectors, starts, ends = collection.dense.chunk_vectors()
        in_long = np.flatnonzero(np.isin(rows, collection.dense.chunks.multi))
        for chunk in in_long[[1, len(in_long) // 2, -1]]:  # a query equal to one chunk's vector finds that chunk
            (hits,) = collection.search(vectors[chunk : chunk + 1], 3)
            top = hits[0]
            assert top.row == rows[chunk] and top.score == pytest.approx(1.0, abs=1e-5)
            doc = collection.docstore.get([top.row])[0]
            passage_piece = doc.passage()[starts[chunk] : ends[chunk]]
            start, end = top.span
            assert passage_piece.endswith(top.text[start:end]) and end - start > 0
        short = next(i for i, r in enumerate(records) if i % 3)
        (hits,) = collection.search(fake_embed([f"T{short} " + records[short]["text"]]), 1)
        assert hits[0].id == f"d{short}" and hits[0].span is None  # one chunk: embedded whole
        scores, ids = collection.dense.search(vectors[:2], 4)
        assert all(h.span is None for row in collection.hits(scores, ids) for h in row)  # no query vectors given


def test_truncate_embeds_whole_passages_like_before(tmp_path: Path, write_corpus) -> None:
    out, _ = build(tmp_path, write_corpus, policy="truncate")
    old, _ = build(tmp_path, write_corpus, policy="truncate", name="other")
    info = read_info(out)
    assert info.chunking.policy == "truncate" and info.chunks is None and CHUNKS_FILE not in info.file_sizes
    with Collection.open(out) as collection:
        assert not collection.chunked
        ids, vectors = collection.vectors()
        docs = collection.docstore.get(ids.tolist())
        np.testing.assert_allclose(vectors, fake_embed([d.passage() for d in docs]), atol=1e-6)


def test_error_policy_reports_each_long_document_and_indexes_the_rest(tmp_path: Path, write_corpus) -> None:
    out, report = build(tmp_path, write_corpus, policy="error")
    assert report.documents == 40 and report.malformed == 20
    first = report.problems[0]
    assert first.line == 1 and "document 'd0' is" in first.reason and "tokens long" in first.reason
    assert str(len(long_records()[0]["text"])) in first.reason  # the fake split counts characters as tokens
    with Collection.open(out) as collection:
        assert not collection.chunked and collection.docstore.row_ids(["d0", "d1"])[0] is None


def test_policy_arguments_are_checked(tmp_path: Path, write_corpus) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", long_records(3))
    with pytest.raises(InvalidParameterError, match="needs split="):
        build_index(
            [corpus],
            embed=fake_embed,
            dim=DIM,
            out_dir=tmp_path / "o",
            work_dir=tmp_path / "w",
            build_key="t",
            progress=False,
            chunking=ChunkSettings("chunk"),
        )
    with pytest.raises(InvalidParameterError, match="valid policies: truncate, chunk, error"):
        ChunkSettings("split")
    with pytest.raises(InvalidParameterError, match="overlap"):
        ChunkSettings("chunk", max_tokens=32, overlap=32)


def test_a_damaged_chunk_map_is_refused(tmp_path: Path, write_corpus) -> None:
    out, _ = build(tmp_path, write_corpus)
    table = np.load(out / CHUNKS_FILE)
    (out / CHUNKS_FILE).chmod(0o644)
    np.save(out / CHUNKS_FILE, table[:-1])  # one chunk fewer: the same size check fails first
    with pytest.raises(IndexFileError, match=CHUNKS_FILE):
        Collection.open(out)


def test_resumed_chunked_build_equals_an_uninterrupted_one(tmp_path: Path, write_corpus, monkeypatch) -> None:
    whole, _ = build(tmp_path, write_corpus, name="whole")
    corpus = write_corpus(tmp_path / "r.jsonl", long_records())
    calls = {"n": 0}

    def failing(passages: list[str]) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return fake_embed(passages)

    kwargs = dict(
        dim=DIM,
        out_dir=tmp_path / "r",
        work_dir=tmp_path / ".work-r",
        build_key="t",
        progress=False,
        chunk_size=8,
        chunking=ChunkSettings("chunk", 40, 10),
        split=fake_split,
    )
    with pytest.raises(RuntimeError):
        build_index([corpus], embed=failing, **kwargs)
    report = build_index([corpus], embed=fake_embed, **kwargs)
    assert report.resumed_from_line > 0
    assert np.array_equal(np.load(whole / CHUNKS_FILE), np.load(tmp_path / "r" / CHUNKS_FILE))
    with Collection.open(whole) as a, Collection.open(tmp_path / "r") as b:
        q = fake_embed(["x", "y"])
        assert np.array_equal(a.dense.search(q, 10)[1], b.dense.search(q, 10)[1])


def test_collapse_keeps_the_first_occurrence_per_row() -> None:
    rows = np.array([7, 7, 8, 9, 9, 9])
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, -np.inf]], dtype=np.float32)
    ids = np.array([[4, 0, 1, 3, 2, -1]])
    s, r, c, distinct = collapse(scores, ids, rows, 3)
    assert r.tolist() == [[9, 7, 8]] and c.tolist() == [[4, 0, 2]] and distinct.tolist() == [3]
    assert s.tolist() == [[pytest.approx(0.9), pytest.approx(0.8), pytest.approx(0.5)]]
    chunks = ChunkMap(rows, np.zeros(6), np.ones(6))
    assert chunks.chunk_ids(np.array([7, 9, 10])).tolist() == [0, 1, 3, 4, 5] and chunks.multi.tolist() == [7, 9]
    assert json.loads(json.dumps(ChunkSettings().to_dict())) == {"policy": "chunk", "max_tokens": 256, "overlap": 32}


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,Flat", "SQ8"])
def test_approximate_and_lossy_indexes_collapse_and_filter_too(tmp_path: Path, write_corpus, factory: str) -> None:
    out, _ = build(tmp_path, write_corpus, factory=factory)
    queries = fake_embed([f"q{i}" for i in range(8)])
    with Collection.open(out) as collection:
        assert collection.chunked and collection.info.factory == factory
        scores, ids = collection.dense.search(queries, 10)
        found = [[int(i) for i in row if i >= 0] for row in ids]
        assert all(len(row) == len(set(row)) == 10 for row in found)
        assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
        allowed = collection.select({"group": "c"})
        _, ids = collection.dense.search(queries, 15, allowed=allowed)
        assert all(sorted(row.tolist()) == allowed.tolist() for row in ids)  # all 15 matching documents
