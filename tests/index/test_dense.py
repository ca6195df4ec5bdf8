from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from index import (
    DenseIndex,
    DimensionMismatchError,
    IndexFileError,
    IndexStoreError,
    InvalidParameterError,
    ReadOnlyError,
    SearchParams,
)

DIM = 32


def _recall_at_10(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact.tolist(), strict=True)]))


def _dataset(clustered_vectors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = clustered_vectors(2000, DIM, seed=1)
    rng = np.random.default_rng(2)
    queries = base[rng.integers(0, len(base), 200)] + 0.1 * rng.standard_normal((200, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = np.arange(2000, dtype=np.int64) * 3 + 5  # ids need not be positions
    return base, ids, queries.astype(np.float32)


def test_flat_search_is_exact_inner_product(unit_vectors) -> None:
    x = unit_vectors(300, DIM, seed=0)
    q = unit_vectors(7, DIM, seed=1)
    dense = DenseIndex.create(DIM)
    dense.add(x, np.arange(300) + 100)
    scores, ids = dense.search(q, 5)
    assert scores.shape == ids.shape == (7, 5) and scores.dtype == np.float32 and ids.dtype == np.int64
    exact = np.argsort(-(q @ x.T), axis=1)[:, :5] + 100
    assert ids.tolist() == exact.tolist()
    np.testing.assert_allclose(scores, np.sort(q @ x.T, axis=1)[:, ::-1][:, :5], rtol=1e-5)
    assert dense.ntotal == len(dense) == 300 and dense.dim == DIM and dense.factory == "Flat"


def test_fewer_than_k_results_are_padded(unit_vectors) -> None:
    dense = DenseIndex.create(DIM)
    dense.add(unit_vectors(3, DIM), np.array([7, 8, 9]))
    scores, ids = dense.search(unit_vectors(2, DIM, seed=5), 5)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()
    assert sorted(ids[0, :3].tolist()) == [7, 8, 9]


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,PQ8"])
def test_save_load_round_trip(tmp_path: Path, clustered_vectors, factory: str, mmap: bool) -> None:
    x = clustered_vectors(1000, DIM, seed=3)
    dense = DenseIndex.create(DIM, factory=factory)
    if dense.needs_training:
        dense.train(x)
    dense.add(x, np.arange(1000) * 2)
    path = tmp_path / "dense.faiss"
    dense.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["dense.faiss"]  # no temp file left behind
    loaded = DenseIndex.load(path, mmap=mmap, factory=factory)
    before = dense.search(x[:50], 10)
    after = loaded.search(x[:50], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_array_equal(before[0], after[0])
    assert loaded.ntotal == 1000 and loaded.factory == factory and loaded.read_only is mmap


def test_mapped_index_refuses_writes_instead_of_aborting(tmp_path: Path, unit_vectors) -> None:
    dense = DenseIndex.create(DIM)
    dense.add(unit_vectors(10, DIM), np.arange(10))
    dense.save(tmp_path / "d.faiss")
    mapped = DenseIndex.load(tmp_path / "d.faiss")
    with pytest.raises(ReadOnlyError, match="mmap=False"):
        mapped.add(unit_vectors(1, DIM), np.array([99]))
    writable = DenseIndex.load(tmp_path / "d.faiss", mmap=False)
    writable.add(unit_vectors(1, DIM, seed=9), np.array([99]))
    assert writable.ntotal == 11


def test_factory_is_derived_when_not_given(tmp_path: Path, clustered_vectors) -> None:
    x = clustered_vectors(600, DIM)
    for factory, expected in [("Flat", "Flat"), ("HNSW16", "HNSW16"), ("IVF8,PQ4", "IVF8,PQ4x8")]:
        dense = DenseIndex.create(DIM, factory=factory)
        dense.train(x)
        dense.add(x, np.arange(600))
        dense.save(tmp_path / "d.faiss")
        assert DenseIndex.load(tmp_path / "d.faiss").factory == expected


def test_hnsw_and_ivfpq_recall_against_exact(clustered_vectors) -> None:
    base, ids, queries = _dataset(clustered_vectors)
    exact = DenseIndex.create(DIM)
    exact.add(base, ids)
    truth = exact.search(queries, 10)[1]

    hnsw = DenseIndex.create(DIM, factory="HNSW32")
    hnsw.add(base, ids)
    assert _recall_at_10(hnsw.search(queries, 10, params=SearchParams(ef_search=64))[1], truth) >= 0.9

    ivfpq = DenseIndex.create(DIM, factory="IVF32,PQ16")
    assert ivfpq.needs_training
    with pytest.raises(IndexStoreError, match="trained"):
        ivfpq.add(base, ids)
    ivfpq.train(base)
    ivfpq.add(base, ids)
    # PQ16 on 32 dims keeps 2 dims per 8-bit code: compression caps recall well below 1.
    recall = _recall_at_10(ivfpq.search(queries, 10, params=SearchParams(nprobe=8))[1], truth)
    assert recall >= 0.6
    ivfpq.default_params = SearchParams(nprobe=1)
    assert _recall_at_10(ivfpq.search(queries, 10)[1], truth) <= recall


def test_ivf256_pq16_factory_works(clustered_vectors) -> None:
    x = clustered_vectors(2000, 64, seed=4)
    dense = DenseIndex.create(64, factory="IVF256,PQ16")
    dense.train(x)
    dense.add(x, np.arange(2000))
    assert dense.search(x[:3], 5)[1].shape == (3, 5)


def test_invalid_factory_quotes_it_and_lists_examples() -> None:
    for bad in ["Flatt", "", "IDMap,Flat", "PQ7"]:
        with pytest.raises(InvalidParameterError, match="valid examples: 'Flat'") as info:
            DenseIndex.create(DIM, factory=bad)
        assert repr(bad) in str(info.value)
        assert isinstance(info.value, ValueError) and isinstance(info.value, IndexStoreError)


def test_wrong_dimensions_state_both_dims(unit_vectors) -> None:
    dense = DenseIndex.create(DIM)
    with pytest.raises(DimensionMismatchError, match=rf"\(n, {DIM}\).*\(5, 16\)"):
        dense.add(unit_vectors(5, 16), np.arange(5))
    with pytest.raises(DimensionMismatchError, match="16"):
        dense.search(unit_vectors(2, 16), 3)
    with pytest.raises(DimensionMismatchError):
        dense.search(unit_vectors(1, DIM)[0], 3)  # 1-D query


def test_bad_arguments(unit_vectors) -> None:
    dense = DenseIndex.create(DIM)
    dense.add(unit_vectors(4, DIM), np.arange(4))
    for k in (0, -3):
        with pytest.raises(InvalidParameterError, match="k must be a positive integer"):
            dense.search(unit_vectors(1, DIM), k)
    with pytest.raises(InvalidParameterError, match="unique"):
        dense.add(unit_vectors(2, DIM), np.array([10, 10]))
    with pytest.raises(InvalidParameterError, match="non-negative"):
        dense.add(unit_vectors(1, DIM), np.array([-1]))
    with pytest.raises(InvalidParameterError, match="NaN"):
        dense.add(np.full((1, DIM), np.nan, dtype=np.float32), np.array([11]))
    with pytest.raises(InvalidParameterError, match="nprobe applies to IVF"):
        dense.search(unit_vectors(1, DIM), 2, params=SearchParams(nprobe=4))
    with pytest.raises(InvalidParameterError, match="dim must be a positive integer"):
        DenseIndex.create(0)


@pytest.mark.parametrize("mmap", [True, False])
def test_missing_truncated_and_corrupt_files(tmp_path: Path, unit_vectors, mmap: bool) -> None:
    dense = DenseIndex.create(DIM, factory="HNSW32")
    dense.add(unit_vectors(500, DIM), np.arange(500))
    good = tmp_path / "good.faiss"
    dense.save(good)
    data = good.read_bytes()
    cases = {
        "missing.faiss": None,
        "empty.faiss": b"",
        "truncated.faiss": data[: len(data) // 2],
        "header.faiss": data[:10],
        "garbage.faiss": b"not a faiss index" * 50,
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(IndexFileError, match=name):
            DenseIndex.load(path, mmap=mmap)


@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize(
    "factory", ["Flat", "HNSW32", "IVF16,Flat", "IVF16,PQ8", "PCA16,IVF16,Flat", "SQ8", "PCA16,HNSW32"]
)
def test_filtered_search_on_every_index_type(tmp_path: Path, clustered_vectors, factory: str, mmap: bool) -> None:
    """Only allowed ids come back, k of them whenever k are allowed; exact where the storage is (small sets)."""
    base, ids, queries = _dataset(clustered_vectors)
    dense = DenseIndex.create(DIM, factory=factory)
    if dense.needs_training:
        dense.train(base[:1000])
    dense.add(base, ids)
    dense.save(tmp_path / "dense.faiss")
    loaded = DenseIndex.load(tmp_path / "dense.faiss", mmap=mmap, factory=factory)
    rng = np.random.default_rng(7)
    for size in (5, 40, 1200):  # below k, exact path, graph / list path
        allowed = np.sort(rng.choice(ids, size, replace=False))
        scores, found = loaded.search(queries[:20], 10, allowed=allowed)
        assert ((found >= 0).sum(axis=1) == min(size, 10)).all()
        assert np.isin(found[found >= 0], allowed).all() and np.isneginf(scores[found < 0]).all()
        if factory in ("Flat", "HNSW32") and size == 40:
            subset = base[np.isin(ids, allowed)]
            exact = np.sort(queries[:20] @ subset.T, axis=1)[:, ::-1][:, :10]
            np.testing.assert_allclose(scores, exact, rtol=1e-5, atol=1e-6)
    _, none = loaded.search(queries[:3], 10, allowed=np.array([], dtype=np.int64))
    assert (none == -1).all()
