"""The dense union's approximate mode: an inverted file above a size, near the exact search, never an excluded document."""

from __future__ import annotations

import numpy as np
import pytest

from index.errors import InvalidParameterError
from index.store.union_dense import UnionDense

DIM = 32


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 40 centres: the shape real embeddings have, which an inverted file relies on."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def members(vectors: np.ndarray, parts: int, *, chunks: int = 1) -> list[tuple[np.ndarray, np.ndarray]]:
    """``parts`` members over ``vectors``; with ``chunks``, each row holds that many consecutive vectors."""
    out = []
    for block in np.array_split(vectors, parts):
        rows = np.arange(len(block)) // chunks
        out.append((rows, block))
    return out


def recall(exact: np.ndarray, approximate: np.ndarray, depth: int) -> float:
    return float(np.mean([len(set(a[:depth]) & set(b[:depth])) / depth for a, b in zip(exact, approximate)]))


def test_a_large_union_is_an_inverted_file_near_the_exact_search() -> None:
    vectors = clustered(6000, seed=1)
    parts = members(vectors, 3)
    exact = UnionDense.build(parts, dim=DIM, total=len(vectors))
    approximate = UnionDense.build(parts, dim=DIM, total=len(vectors), approximate_above=5000, probes=16)
    assert not exact.approximate and approximate.approximate
    assert approximate.documents == exact.documents == 6000
    queries = clustered(50, seed=2)
    scores_e, documents_e = exact.search(queries, 20)
    scores_a, documents_a = approximate.search(queries, 20)
    assert recall(documents_e, documents_a, 20) >= 0.85
    found = documents_a >= 0
    assert (scores_a[found] <= scores_e[:, :1].repeat(scores_a.shape[1], axis=1)[found] + 1e-5).all()
    for row in documents_a:  # each document once, best first
        kept = row[row >= 0]
        assert len(kept) == len(set(kept.tolist())) >= 20


def test_excluded_documents_never_come_back_from_the_inverted_file() -> None:
    vectors = clustered(4000, seed=3)
    union = UnionDense.build(members(vectors, 4), dim=DIM, total=len(vectors), approximate_above=0, probes=8)
    excluded = np.zeros(union.documents, dtype=bool)
    excluded[: union.documents // 2] = True  # two members not asked, as a restricted job's are
    excluded[3000:3100] = True  # and some deleted rows
    _, documents = union.search(clustered(30, seed=4), 20, excluded=excluded)
    found = documents[documents >= 0]
    assert len(found) and not excluded[found].any()
    assert ((documents >= 0).sum(axis=1) >= 20).all()


def test_chunked_members_give_each_document_once_by_its_best_chunk() -> None:
    vectors = clustered(3000, seed=5)
    parts = members(vectors, 2, chunks=3)  # 500 documents of 3 chunks per member
    exact = UnionDense.build(parts, dim=DIM, total=len(vectors))
    approximate = UnionDense.build(parts, dim=DIM, total=len(vectors), approximate_above=1000, probes=24)
    assert approximate.documents == exact.documents == 1000
    queries = clustered(30, seed=6)
    _, documents_e = exact.search(queries, 10)
    scores_a, documents_a = approximate.search(queries, 10)
    assert recall(documents_e, documents_a, 10) >= 0.85
    for row in documents_a:
        kept = row[row >= 0]
        assert len(kept) == len(set(kept.tolist())) >= 10


def test_a_query_reads_no_more_than_its_probes_lists_of_the_mean_size() -> None:
    """Where documents crowd (near-duplicates fill a few lists), the nearest lists hold many more vectors than the
    mean: the search stops once it read ``probes`` lists' worth of the mean size, and still finds its depth."""
    import faiss

    rng = np.random.default_rng(7)
    crowd = rng.standard_normal(DIM) + 0.05 * rng.standard_normal((30, DIM))  # 30 close points, 100 copies of each
    crowd = (crowd / np.linalg.norm(crowd, axis=1, keepdims=True)).astype(np.float32)
    vectors = np.concatenate([clustered(3000, seed=8), np.repeat(crowd, 100, axis=0)])
    union = UnionDense.build(members(vectors, 3), dim=DIM, total=len(vectors), approximate_above=0, probes=8)
    (inverted,) = union._shards
    sizes = np.array([inverted.invlists.list_size(i) for i in range(inverted.nlist)])
    bound = int(np.ceil(8 * inverted.ntotal / inverted.nlist))
    queries = crowd[:20] + 0.01
    _, nearest = inverted.quantizer.search(queries, 8)
    assert (sizes[nearest].sum(axis=1) > 1.5 * bound).all()  # unbounded, each query would read far more
    faiss.cvar.indexIVF_stats.reset()
    _, documents = union.search(queries, 20)
    assert faiss.cvar.indexIVF_stats.ndis <= len(queries) * (bound + sizes.max())
    assert ((documents >= 0).sum(axis=1) >= 20).all()


def test_a_union_at_or_under_the_size_stays_exact() -> None:
    vectors = clustered(500, seed=7)
    union = UnionDense.build(members(vectors, 2), dim=DIM, total=500, approximate_above=500)
    assert not union.approximate and union.probes is None


@pytest.mark.parametrize("options", [{"approximate_above": -1}, {"probes": 0}, {"probes": True}])
def test_bad_approximate_settings_say_what_is_valid(options: dict) -> None:
    vectors = clustered(10, seed=8)
    with pytest.raises(InvalidParameterError, match="approximate_above|probes"):
        UnionDense.build(members(vectors, 1), dim=DIM, total=10, **options)
