"""One IDF over several BM25 indexes, so that their scores can be compared (collection selection).

Each collection's BM25 weighs a term by that collection's own IDF. Within a
collection that is right; *across* collections it is not: a term common in
the right collection ("algorithm" in a computing one) is weighed more where
it is rare, and that collection's documents outrank the right ones. Federated
search's collection-selection methods (CORI, ReDDE) use statistics of all
collections for this reason. :class:`SharedIdf` holds the document
frequencies summed over a set of indexes; :func:`shared_idf_top_k` scores one
index with them, rescaling each stored term score (bm25s keeps
``idf(t) x tf-part(t, d)`` per term and document) by ``idf_all(t) / idf_own(t)``.

The router's BM25 votes use it: measured on pseudo queries of the five shared
collections (``bench/routing_evidence.py --split dev``), routing with pilots,
dense votes and BM25 votes went from 93.7% to 94.2% macro; the per-collection
IDF alone routed cisi's pseudo queries 30% right, the shared one 91.5%.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["SharedIdf", "idf", "shared_idf_top_k"]


def idf(method: str, documents: float, frequency: float) -> float:
    """bm25s's IDF of a term in ``frequency`` of ``documents`` documents, for its ``method``."""
    if method == "robertson":
        return math.log((documents - frequency + 0.5) / (frequency + 0.5))
    if method == "atire":
        return math.log(documents / frequency)
    if method in ("bm25l", "bm25+"):
        return math.log((documents + 1) / (frequency + 0.5 if method == "bm25l" else frequency))
    return math.log(1 + (documents - frequency + 0.5) / (frequency + 0.5))  # lucene, bm25s's default


@dataclass(frozen=True)
class SharedIdf:
    """Document frequencies summed over several indexes: ``documents`` in all, ``frequencies[stem]``.

    >>> shared = SharedIdf.over([(100, {"wing": 30}), (900, {"wing": 2, "parser": 400})])
    >>> shared.documents, shared.frequencies["wing"]
    (1000, 32)
    """

    documents: int
    frequencies: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def over(cls, statistics: Iterable[tuple[int, Mapping[str, int]]]) -> SharedIdf:
        """From each index's (documents, frequency per stem), as ``LexicalIndex.document_frequencies`` gives."""
        documents, frequencies = 0, dict[str, int]()
        for count, own in statistics:
            documents += count
            for stem, frequency in own.items():
                frequencies[stem] = frequencies.get(stem, 0) + frequency
        return cls(documents, frequencies)


def shared_idf_top_k(
    matrix: tuple[np.ndarray, np.ndarray, np.ndarray],
    columns: Sequence[Sequence[int]],
    stems: Sequence[Sequence[str]],
    k: int,
    *,
    shared: SharedIdf,
    method: str,
    documents: int,
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` per query of one index scored with ``shared``'s IDF: (nq, k) scores, (nq, k) document numbers.

    ``matrix`` is the index's (data, indices, indptr) in CSC form (one column
    per stem); ``columns[q]`` and ``stems[q]`` the query's stems found in its
    vocabulary and their columns; ``documents`` its document count; ``mask``
    (documents,) 0/1 weights. Documents without any query stem are not hits:
    score -inf, number -1. Stems the shared statistics lack keep their weight.
    """
    data, indices, indptr = matrix
    scores_out = np.full((len(columns), k), -np.inf, dtype=np.float32)
    ids_out = np.full((len(columns), k), -1, dtype=np.int64)
    frequencies = np.diff(indptr)
    for q, (query_columns, query_stems) in enumerate(zip(columns, stems)):
        scores = np.zeros(documents, dtype=np.float64)
        for column, stem in zip(query_columns, query_stems):
            start, end = int(indptr[column]), int(indptr[column + 1])
            if start == end:
                continue
            own = idf(method, documents, float(frequencies[column]))
            overall = shared.frequencies.get(stem)
            weight = 1.0 if overall is None or own <= 1e-9 else idf(method, shared.documents, overall) / own
            scores[indices[start:end]] += data[start:end] * weight
        if mask is not None:
            scores *= mask
        found = np.flatnonzero(scores > 0)
        if not len(found):
            continue
        top = found[np.argsort(-scores[found], kind="stable")[:k]]
        scores_out[q, : len(top)] = scores[top]
        ids_out[q, : len(top)] = top
    return scores_out, ids_out
