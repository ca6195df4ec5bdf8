"""Reading stored vectors back: exact for Flat and HNSW, refused for lossy storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import Collection, DenseIndex, InvalidParameterError, build_index


@pytest.mark.parametrize("factory", ["Flat", "HNSW16"])
@pytest.mark.parametrize("mmap", [False, True])
def test_vectors_come_back_exactly_sorted_by_id(tmp_path: Path, unit_vectors, factory: str, mmap: bool) -> None:
    vectors = unit_vectors(50)
    ids = np.arange(100, 150)[::-1].copy()  # added in descending id order
    dense = DenseIndex.create(vectors.shape[1], factory=factory)
    dense.add(vectors, ids)
    dense.save(tmp_path / "dense.faiss")
    loaded = DenseIndex.load(tmp_path / "dense.faiss", mmap=mmap)
    got_ids, got = loaded.vectors()
    assert got_ids.tolist() == list(range(100, 150))
    np.testing.assert_array_equal(got, vectors[::-1])


def test_empty_index_has_no_vectors() -> None:
    ids, vectors = DenseIndex.create(8).vectors()
    assert ids.shape == (0,) and vectors.shape == (0, 8)


@pytest.mark.parametrize("factory", ["SQ8", "PCA16,Flat"])
def test_lossy_storage_is_refused_with_a_reason(clustered_vectors, factory: str) -> None:
    dense = DenseIndex.create(32, factory=factory)
    dense.train(clustered_vectors(300))
    dense.add(clustered_vectors(10), np.arange(10))
    assert not dense.exact_storage
    with pytest.raises(InvalidParameterError, match="compressed codes.*re-embed"):
        dense.vectors()


def test_collection_vectors_match_the_docstore_rows(tmp_path: Path, write_corpus, make_records, embed) -> None:
    records = make_records(20)
    corpus = write_corpus(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "published"
    build_index([corpus], embed=embed, dim=32, out_dir=out, work_dir=tmp_path / "work", build_key="k", progress=False)
    with Collection.open(out) as collection:
        rows, vectors = collection.vectors()
        assert rows.tolist() == collection.docstore.all_row_ids().tolist()
        docs = collection.docstore.get(rows.tolist())
        np.testing.assert_allclose(vectors, embed([doc.passage() for doc in docs]), atol=1e-6)
