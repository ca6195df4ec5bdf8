from __future__ import annotations

import numpy as np
import pytest

from router import PilotError, centroid_pilots, kmeans_pilots, query_pilots


def test_centroid_is_the_mean() -> None:
    queries = np.array([[1, 0], [0, 1]], dtype=np.float32)
    np.testing.assert_allclose(centroid_pilots(queries), [[0.5, 0.5]])


def test_kmeans_finds_separate_groups_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    groups = [np.array([1, 0, 0]), np.array([0, 1, 0]), np.array([0, 0, 1])]
    queries = np.vstack([g + 0.05 * rng.normal(size=(20, 3)) for g in groups]).astype(np.float32)
    pilots = kmeans_pilots(queries, clusters=3, seed=1)
    assert pilots.shape == (3, 3)
    nearest_group = sorted(int(np.argmax(p)) for p in pilots)
    assert nearest_group == [0, 1, 2]
    np.testing.assert_array_equal(pilots, kmeans_pilots(queries, clusters=3, seed=1))


def test_kmeans_with_more_clusters_than_queries_caps_the_count() -> None:
    queries = np.eye(2, dtype=np.float32)
    assert len(kmeans_pilots(queries, clusters=5)) <= 2


def test_no_queries_is_an_error() -> None:
    with pytest.raises(PilotError, match="non-empty"):
        centroid_pilots(np.zeros((0, 4), dtype=np.float32))
    with pytest.raises(PilotError, match="clusters must be >= 1"):
        kmeans_pilots(np.ones((3, 2), dtype=np.float32), clusters=0)


def test_query_pilots_keep_every_query_up_to_the_limit_then_a_seeded_sample() -> None:
    queries = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    np.testing.assert_array_equal(query_pilots(queries, limit=50), queries)
    sample = query_pilots(queries, limit=10, seed=3)
    assert sample.shape == (10, 4)
    assert all(any(np.array_equal(row, q) for q in queries) for row in sample)  # rows of the input, not averages
    np.testing.assert_array_equal(sample, query_pilots(queries, limit=10, seed=3))
    with pytest.raises(PilotError, match="limit"):
        query_pilots(queries, limit=0)
