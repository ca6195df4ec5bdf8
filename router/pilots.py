"""Pilot embeddings: vectors in the base encoder's space that say which queries an expert serves.

Plain functions on numpy arrays. Two families: the simple
constructions (one centroid, k-means centroids, or a sample of the queries
themselves, of an expert's own training queries) and RouterRetriever's (``assigned_pilots``: each training
query goes to the expert that retrieves its judged documents best, and each
expert's pilots are the mean queries it wins, one per source collection).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    if min(clusters, len(queries)) == 1:
        return centroid_pilots(queries)
    labels, centres = spherical_kmeans(queries, clusters, seed=seed, iterations=iterations)
    # Return plain means of the original vectors, like ``centroid_pilots``.
    return np.stack([queries[labels == c].mean(axis=0) for c in range(len(centres)) if np.any(labels == c)])


def spherical_kmeans(
    vectors: np.ndarray, clusters: int, *, seed: int = 0, iterations: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """k-means on the unit sphere (cosine, k-means++ seeding): (n, d) -> labels (n,), unit centres (c, d).

    Clusters left empty keep their seed; every label is a valid centre index.
    """
    if clusters < 1:
        raise PilotError(f"clusters must be >= 1, got {clusters}")
    unit = _normalise(np.asarray(vectors, dtype=np.float32))
    clusters = min(clusters, len(unit))
    rng = np.random.default_rng(seed)
    centres = [unit[rng.integers(len(unit))]]
    for _ in range(1, clusters):  # k-means++: far points are more likely seeds
        distance = np.clip(1.0 - np.max(unit @ np.stack(centres).T, axis=1), 0, None)
        total = distance.sum()
        pick = rng.integers(len(unit)) if total <= 0 else rng.choice(len(unit), p=distance / total)
        centres.append(unit[pick])
    centre_matrix = np.stack(centres)
    for _ in range(iterations):
        labels = np.argmax(unit @ centre_matrix.T, axis=1)
        updated = _normalise(
            np.stack(
                [unit[labels == c].mean(axis=0) if np.any(labels == c) else centre_matrix[c] for c in range(clusters)]
            )
        )
        if np.allclose(updated, centre_matrix, atol=1e-6):
            break
        centre_matrix = updated
    return np.argmax(unit @ centre_matrix.T, axis=1), centre_matrix


def query_pilots(query_embeddings: np.ndarray, *, limit: int = 1000, seed: int = 0) -> np.ndarray:
    """The training queries themselves as pilots, a uniform sample of at most ``limit``, (n, d) -> (min(n, limit), d).

    For the ``knn`` aggregate, which votes over the pilots nearest a query:
    a collection whose queries fall into several regions keeps all of them
    (a centroid sits between them and matches none). Give every expert the
    same ``limit``: an expert with more pilots would otherwise win votes by
    density alone.
    """
    queries = check_pilots(query_embeddings, name="queries")
    if limit < 1:
        raise PilotError(f"limit must be >= 1, got {limit}")
    if len(queries) <= limit:
        return queries
    chosen = np.sort(np.random.default_rng(seed).choice(len(queries), size=limit, replace=False))
    return queries[chosen]


def best_experts(per_query_scores: np.ndarray, *, atol: float = 1e-9) -> np.ndarray:
    """Which experts win each query: (n, E) scores -> (n, E) bool, True where an expert ties the row's best.

    A row where every expert ties (all score 0, or identical experts) is all
    False: it says nothing about who serves the query, so it gives no pilot.
    """
    scores = np.asarray(per_query_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise PilotError(f"per-query scores must be an (n, experts) matrix, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise PilotError("per-query scores contain NaN or infinite values")
    winners = scores >= scores.max(axis=1, keepdims=True) - atol
    winners[winners.all(axis=1)] = False
    return winners


def assigned_pilots(
    query_embeddings: np.ndarray,
    per_query_scores: np.ndarray,
    sources: Sequence[str] | np.ndarray,
    experts: Sequence[str],
) -> dict[str, np.ndarray]:
    """RouterRetriever's pilots (Algorithm 1): per expert, one mean query per source it wins, {name: (p, d)}.

    ``query_embeddings`` (n, d) are the training queries' *base* embeddings;
    ``per_query_scores`` (n, E) is each expert's retrieval quality on each query
    (nDCG@10 on its judged documents), columns in ``experts`` order;
    ``sources`` (n,) names the collection each query came from. Within each
    source, the queries an expert wins are averaged into one pilot of that
    expert, so an expert has at most one pilot per source. Queries all experts
    tie on are dropped; a query several (not all) experts tie for best on
    counts for each of them. Experts that win nothing are absent from the result.

    >>> emb = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    >>> scores = np.array([[1.0, 0.2], [0.1, 0.9], [0.0, 0.0]])  # third query: a tie, dropped
    >>> {k: v.tolist() for k, v in assigned_pilots(emb, scores, ["a", "b", "b"], ["x", "y"]).items()}
    {'x': [[1.0, 0.0]], 'y': [[0.0, 1.0]]}
    """
    queries = check_pilots(query_embeddings, name="queries")
    scores = np.asarray(per_query_scores)
    labels = np.asarray(sources).astype(str)
    names = list(experts)
    if len(set(names)) != len(names):
        raise PilotError(f"expert names must be unique, got {names}")
    if scores.shape != (len(queries), len(names)):
        raise PilotError(
            f"per-query scores must have shape (queries, experts) = ({len(queries)}, {len(names)}), got {scores.shape}"
        )
    if labels.shape != (len(queries),):
        raise PilotError(f"sources must hold one label per query ({len(queries)}), got shape {labels.shape}")
    winners = best_experts(scores)
    pilots: dict[str, np.ndarray] = {}
    for column, name in enumerate(names):
        groups = [
            queries[(labels == source) & winners[:, column]].mean(axis=0)
            for source in sorted(set(labels.tolist()))
            if np.any((labels == source) & winners[:, column])
        ]
        if groups:
            pilots[name] = np.stack(groups).astype(np.float32)
    return pilots
