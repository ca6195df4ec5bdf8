"""Corpus evidence for routing: which experts' collections hold the documents a query finds.

Pilots describe the queries an expert was built from; for a corpus-only
expert those are pseudo queries (titles, spans of text), which look unlike a
user's question. Federated search's collection selection asks the collections
themselves instead: search each one, merge the best documents, and see whose
they are. The engine runs the searches (with the base query vector it already
holds, and BM25); this module turns their scores into per-expert votes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from router.errors import RouterError


def document_votes(scores_per_expert: Sequence[np.ndarray], *, depth: int) -> np.ndarray:
    """Each expert's share of the ``depth`` best documents over all experts: E arrays (n, m) -> (n, E).

    ``scores_per_expert[e]`` holds the scores of expert ``e``'s top documents
    for each query (``-inf`` pads a short list; an expert that was not searched
    may pass an (n, 0) array). Scores are compared across experts as they are,
    so they must be on one scale (cosine of the same base vector; BM25 only
    roughly). A query no expert found anything for gets all zeros.

    >>> a = np.array([[0.9, 0.5]]); b = np.array([[0.7, 0.6]])
    >>> document_votes([a, b], depth=2).tolist()
    [[0.5, 0.5]]
    """
    if depth < 1:
        raise RouterError(f"depth must be >= 1, got {depth}")
    if not scores_per_expert:
        raise RouterError("no experts to take votes from")
    n = len(scores_per_expert[0])
    if any(len(s) != n for s in scores_per_expert):
        raise RouterError(f"every expert's scores must cover the same {n} queries")
    merged = np.concatenate([np.asarray(s, dtype=np.float64).reshape(n, -1) for s in scores_per_expert], axis=1)
    owner = np.concatenate([np.full(np.asarray(s).reshape(n, -1).shape[1], e) for e, s in enumerate(scores_per_expert)])
    votes = np.zeros((n, len(scores_per_expert)), dtype=np.float32)
    if merged.shape[1] == 0:
        return votes
    take = min(depth, merged.shape[1])
    top = np.argsort(-merged, axis=1, kind="stable")[:, :take]
    for row, columns in enumerate(top):
        found = columns[np.isfinite(merged[row, columns])]
        if len(found):
            np.add.at(votes[row], owner[found], 1.0 / len(found))
    return votes


def ranked_votes(scores: np.ndarray, owners: np.ndarray, *, experts: int, depth: int) -> np.ndarray:
    """Each expert's share of the ``depth`` best candidates: (n, m) scores and owners -> (n, E) votes.

    The same votes as :func:`document_votes` given each expert's list, for
    candidates that come merged (one search over every collection): row ``i``
    holds scores ``scores[i]`` of documents of experts ``owners[i]`` (0..E-1;
    -1 or a non-finite score pads). Ties rank the lower expert first, as
    :func:`document_votes` ranks the earlier list first.

    >>> ranked_votes(np.array([[0.9, 0.7, 0.6, 0.5]]), np.array([[0, 1, 1, 0]]), experts=2, depth=2).tolist()
    [[0.5, 0.5]]
    """
    if depth < 1:
        raise RouterError(f"depth must be >= 1, got {depth}")
    if experts < 1:
        raise RouterError("no experts to take votes from")
    scores = np.asarray(scores, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    if scores.shape != owners.shape or scores.ndim != 2:
        raise RouterError(
            f"scores and owners must be (n, m) arrays of one shape, got {scores.shape} and {owners.shape}"
        )
    votes = np.zeros((len(scores), experts), dtype=np.float32)
    if scores.shape[1] == 0:
        return votes
    valid = np.isfinite(scores) & (owners >= 0)
    if (owners[valid] >= experts).any():
        raise RouterError(f"owners must be expert positions 0..{experts - 1}")
    take = min(depth, scores.shape[1])
    # Best first, ties to the lower owner; padding last.
    order = np.lexsort((np.where(valid, owners, experts), np.where(valid, -scores, np.inf)), axis=1)[:, :take]
    for row, columns in enumerate(order):
        found = columns[valid[row, columns]]
        if len(found):
            np.add.at(votes[row], owners[row, found], 1.0 / len(found))
    return votes
