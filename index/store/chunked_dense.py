"""The dense index of a chunked collection, searched in document rows like an unchunked one.

A chunked collection's FAISS index holds one vector per chunk under chunk ids
(see :mod:`index.store.chunk_map`). :class:`ChunkedDense` wraps it with the same
search surface as :class:`~index.store.dense.DenseIndex` (``search(queries, k,
params=, allowed=)`` -> (nq, k) scores, (nq, k) **row** ids; ``dim``,
``ntotal`` in documents, ``default_params``, ``exact_storage``,
``vectors()``), so the service, the live view and fusion, which all speak
rows, need not know a collection is chunked:

* a search over-fetches chunks and keeps each document's best one
  (:func:`~index.store.chunk_map.search_collapsed`), exact for ``Flat``;
* ``allowed`` rows (a metadata filter) become the chunk ids of those rows for
  FAISS's ``IDSelector``, so a filtered search still returns ``k`` documents
  whenever ``k`` match;
* :meth:`vectors` returns one vector per document, its first chunk (the
  start of the document, what ``truncate`` would have embedded), for callers
  that treat a collection as a document matrix (adapter training, routing
  votes); :meth:`chunk_vectors` returns them all.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from index.errors import InvalidParameterError
from index.store.chunk_map import ChunkMap, collapse, search_collapsed
from index.store.dense import DenseIndex
from index.store.dense_filtering import allowed_ids
from index.store.search_params import SearchParams

__all__ = ["ChunkedDense"]


class ChunkedDense:
    """A :class:`DenseIndex` of chunk vectors plus its :class:`ChunkMap`, searched by document.

    >>> dense = ChunkedDense(DenseIndex.load(path / "dense.faiss"), ChunkMap.load(path / "chunks.npy"))  # doctest: +SKIP
    >>> scores, rows = dense.search(queries, 10)   # (nq, 10) float32, (nq, 10) int64 docstore rows
    """

    def __init__(self, chunks_index: DenseIndex, chunks: ChunkMap) -> None:
        self.chunks_index = chunks_index
        self.chunks = chunks

    # ------------------------------------------------------------------ what DenseIndex offers
    @property
    def dim(self) -> int:
        return self.chunks_index.dim

    @property
    def ntotal(self) -> int:
        """Documents (not chunk vectors: see :attr:`chunk_count`)."""
        return self.chunks.documents

    @property
    def chunk_count(self) -> int:
        return self.chunks_index.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def factory(self) -> str:
        return self.chunks_index.factory

    @property
    def read_only(self) -> bool:
        return True  # a published generation is never written

    @property
    def needs_training(self) -> bool:
        return False

    @property
    def exact_storage(self) -> bool:
        return self.chunks_index.exact_storage

    @property
    def default_params(self) -> SearchParams:
        return self.chunks_index.default_params

    @default_params.setter
    def default_params(self, params: SearchParams) -> None:
        self.chunks_index.default_params = params

    @property
    def exact_filter_limit(self) -> int:
        return self.chunks_index.exact_filter_limit

    @exact_filter_limit.setter
    def exact_filter_limit(self, limit: int) -> None:
        self.chunks_index.exact_filter_limit = limit

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        params: SearchParams | None = None,
        allowed: Iterable[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` documents by their best chunk: (nq, dim) -> (nq, k) float32 scores, (nq, k) int64 rows.

        Each row at most once per query; -inf / -1 pads. ``allowed`` is in
        rows, as for :meth:`DenseIndex.search`.
        """
        scores, rows, _ = self.search_chunks(queries, k, params=params, allowed=allowed)
        return scores, rows

    def search_chunks(
        self,
        queries: np.ndarray,
        k: int,
        *,
        params: SearchParams | None = None,
        allowed: Iterable[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search` plus the best chunk id of each returned row: (nq, k) each."""
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        chunk_ids = None if allowed is None else self.chunks.chunk_ids(allowed_ids(allowed))
        available = self.chunk_count if chunk_ids is None else len(chunk_ids)

        def search(q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            return self.chunks_index.search(q, depth, params=params, allowed=chunk_ids)

        queries = np.asarray(queries)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            self.chunks_index.search(queries, k)  # raises the DenseIndex's error for the shape
        return search_collapsed(
            search,
            queries,
            k,
            rows=self.chunks.rows,
            available=available,
            per_document=self.chunks.chunks_per_document,
        )

    def best_spans(self, queries: np.ndarray, ids: np.ndarray) -> list[dict[int, tuple[int, int]]]:
        """For each query, the passage span of the best chunk of each returned row that has several chunks.

        (nq, dim) query vectors and (nq, k) rows (-1 ignored) -> nq dicts row
        -> (start, end); rows with one chunk are absent. One exact FAISS
        search per query over just those rows' chunks.
        """
        out: list[dict[int, tuple[int, int]]] = []
        for q in range(len(ids)):
            wanted = np.intersect1d(np.unique(ids[q][ids[q] >= 0]), self.chunks.multi, assume_unique=True)
            if not len(wanted):
                out.append({})
                continue
            chunk_ids = self.chunks.chunk_ids(wanted)
            scores, found = self.chunks_index.search(queries[q : q + 1], len(chunk_ids), allowed=chunk_ids)
            _, rows, best, _ = collapse(scores, found, self.chunks.rows, len(wanted))
            out.append(
                {
                    int(r): (int(self.chunks.starts[c]), int(self.chunks.ends[c]))
                    for r, c in zip(rows[0], best[0], strict=True)
                    if r >= 0
                }
            )
        return out

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """One vector per document, its first chunk's, rows ascending: (n,) int64, (n, dim) float32."""
        rows, vectors, _, _ = self.chunk_vectors()
        first = np.ones(len(rows), dtype=bool)
        first[1:] = rows[1:] != rows[:-1]
        return rows[first], np.ascontiguousarray(vectors[first])

    def chunk_vectors(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every chunk in chunk-id order: (C,) rows, (C, dim) float32 vectors, (C,) starts, (C,) ends.

        Exact storage only, like :meth:`DenseIndex.vectors`.
        """
        ids, vectors = self.chunks_index.vectors()  # chunk ids ascending = 0 .. C-1
        return self.chunks.rows[ids], vectors, self.chunks.starts[ids], self.chunks.ends[ids]
