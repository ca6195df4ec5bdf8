"""Pilot embeddings: vectors in the base encoder's space that say which queries an expert serves.

Plain functions on numpy arrays. This module holds the simple constructions
(one centroid, or k-means centroids, of an expert's own training queries);
RouterRetriever's per-query best-expert assignment builds on the same
``centroids`` helper.
"""

from __future__ import annotations

import numpy as np

from router.errors import PilotError


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return (rows / np.maximum(norms, 1e-12)).astype(np.float32)


def check_pilots(pilots: np.ndarray, *, dim: int | None = None, name: str = "expert") -> np.ndarray:
    """Validate a (p, dim) pilot matrix and return it as contiguous float32."""
    pilots = np.asarray(pilots)
    if pilots.ndim != 2 or pilots.shape[0] == 0:
        raise PilotError(f"pilots of {name!r} must be a non-empty (p, dim) matrix, got shape {pilots.shape}")
    if dim is not None and pilots.shape[1] != dim:
        raise PilotError(f"pilots of {name!r} have dim {pilots.shape[1]}, but the router works in dim {dim}")
    if not np.isfinite(pilots).all():
        raise PilotError(f"pilots of {name!r} contain NaN or infinite values")
    return np.ascontiguousarray(pilots, dtype=np.float32)


def centroid_pilots(query_embeddings: np.ndarray) -> np.ndarray:
    """One pilot: the mean of an expert's query embeddings, (n, d) -> (1, d).

    The paper's pilots are plain means; we keep them unnormalised so that the
    mean over a tight cluster stays longer than one over a scattered cluster
    (a natural confidence signal), matching Algorithm 1.
    """
    queries = check_pilots(query_embeddings, name="queries")
    return queries.mean(axis=0, keepdims=True)


def kmeans_pilots(query_embeddings: np.ndarray, *, clusters: int, seed: int = 0, iterations: int = 25) -> np.ndarray:
    """Several pilots: k-means (cosine, k-means++ seeding) centroids of the queries, (n, d) -> (c, d).

    Useful when an expert's queries form distinct groups (a collection mixing
    topics), where one mean would sit between them and match neither.
    """
    queries = check_pilots(query_embeddings, name="queries")
    if clusters < 1:
        raise PilotError(f"clusters must be >= 1, got {clusters}")
    clusters = min(clusters, len(queries))
    if clusters == 1:
        return centroid_pilots(queries)
    rng = np.random.default_rng(seed)
    unit = _normalise(queries)
    centres = [unit[rng.integers(len(unit))]]
    for _ in range(1, clusters):  # k-means++: far points are more likely seeds
        distance = 1.0 - np.max(unit @ np.stack(centres).T, axis=1)
        weights = np.clip(distance, 0, None)
        total = weights.sum()
        pick = rng.integers(len(unit)) if total <= 0 else rng.choice(len(unit), p=weights / total)
        centres.append(unit[pick])
    centre_matrix = np.stack(centres)
    for _ in range(iterations):
        labels = np.argmax(unit @ centre_matrix.T, axis=1)
        updated = np.stack(
            [unit[labels == c].mean(axis=0) if np.any(labels == c) else centre_matrix[c] for c in range(clusters)]
        )
        updated = _normalise(updated)
        if np.allclose(updated, centre_matrix, atol=1e-6):
            break
        centre_matrix = updated
    labels = np.argmax(unit @ centre_matrix.T, axis=1)
    # Return plain means of the original vectors, like ``centroid_pilots``.
    return np.stack([queries[labels == c].mean(axis=0) for c in range(clusters) if np.any(labels == c)])
