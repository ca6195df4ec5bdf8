"""The delta segment of a live collection: the documents written since the last merge, searchable.

Vectors live in a fresh ``IndexIDMap2(IndexFlatIP)`` per segment, text in a
BM25 index built on first use, rows and documents in memory. A long document
written under the ``chunk`` policy brings one vector per chunk (see
:mod:`index.long_documents`); then the segment's FAISS ids are chunk positions
(0 .. M-1, a document's chunks consecutive, rows ascending) and dense search
collapses them to rows, exactly (the segment is Flat). While no document of
the delta has more than one chunk, its FAISS ids are its row ids, as before.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import faiss
import numpy as np

from index.live.log import LogEntry
from index.store.analysis import Analyzer, LexicalSettings
from index.store.chunk_map import search_collapsed
from index.store.lexical import LexicalIndex
from index.store.shared_idf import SharedIdf

__all__ = ["DeltaSegment", "no_hits"]


def no_hits(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(nq, k) -inf scores and -1 ids: a search that found nothing."""
    return np.full((nq, k), -np.inf, dtype=np.float32), np.full((nq, k), -1, dtype=np.int64)


class DeltaSegment:
    """The documents written since the last merge: vectors in FAISS, text in BM25, rows in memory.

    Immutable once built. Each write builds the next segment from the previous
    one: the vectors are copied (the delta is small, so that is a memcpy) into
    a fresh ``IndexIDMap2(IndexFlatIP)``, and each document's stems are
    computed once, when it is written, and carried along. The BM25 index is
    built on the first lexical search that needs it (under a lock, so once),
    not by the writer: a burst of writes pays for one build, not one per write.
    """

    def __init__(
        self,
        entries: Mapping[int, LogEntry],
        terms: Mapping[int, list[str]] | None,
        vectors: np.ndarray,
        chunk_rows: np.ndarray,
        *,
        dim: int,
        lexical: LexicalSettings | None,
    ) -> None:
        """Private: use :meth:`build`."""
        self.entries = entries  # row id -> entry
        self.terms = terms  # row id -> stems; None when the collection has no lexical index
        self.by_doc_id = {entry.document.id: row for row, entry in entries.items()}
        self.row_ids = np.fromiter(sorted(entries), dtype=np.int64, count=len(entries))
        self._vectors = vectors  # (M, dim) float32: every chunk, rows in row-id order
        self.chunk_rows = chunk_rows  # (M,) int64: the row of each chunk (== row_ids when nothing is chunked)
        self.chunked = len(chunk_rows) != len(self.row_ids)
        self.dense = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        if len(chunk_rows):
            ids = np.arange(len(chunk_rows), dtype=np.int64) if self.chunked else self.row_ids
            self.dense.add_with_ids(vectors, ids)
        self._settings = lexical
        self._lexical: LexicalIndex | None = None
        self._lexical_lock = threading.Lock()

    @classmethod
    def build(
        cls,
        entries: Mapping[int, LogEntry],
        *,
        dim: int,
        lexical: LexicalSettings | None,
        previous: DeltaSegment | None = None,
        analyzer: Analyzer | None = None,
    ) -> DeltaSegment:
        """Index ``entries`` (a new dict the segment then owns), reusing what ``previous`` computed for its rows."""
        rows = sorted(entries)
        reuse = previous is not None and previous._settings == lexical and previous.dense.d == dim
        old = previous.entries if reuse and previous is not None else {}
        kept = [r for r in rows if r in old and old[r] is entries[r]]
        kept_set = set(kept)
        fresh = [r for r in rows if r not in kept_set]
        if kept and fresh and kept[-1] > fresh[0]:  # new rows are allocated above old ones; else rebuild all
            kept, fresh = [], rows
        parts, row_parts = [], []
        if kept:
            assert previous is not None  # rows are kept only from a reused previous segment
            mask = np.isin(previous.chunk_rows, np.asarray(kept, dtype=np.int64))
            parts.append(previous._vectors[mask])
            row_parts.append(previous.chunk_rows[mask])
        if fresh:
            parts.append(np.concatenate([entries[r].vectors for r in fresh]).astype(np.float32, copy=False))
            row_parts.append(np.repeat(np.asarray(fresh, dtype=np.int64), [len(entries[r].vectors) for r in fresh]))
        vectors = np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, dim), dtype=np.float32)
        chunk_rows = np.concatenate(row_parts) if row_parts else np.zeros(0, dtype=np.int64)
        terms = None
        if lexical is not None:
            analyze = analyzer or Analyzer(lexical)
            known = previous.terms if reuse and previous is not None and previous.terms is not None else {}
            terms = {r: known[r] if r in known else analyze(entries[r].document.passage()) for r in rows}
        return cls(entries, terms, vectors, chunk_rows, dim=dim, lexical=lexical)

    def __len__(self) -> int:
        return len(self.row_ids)

    def vectors(self) -> np.ndarray:
        """(m, dim) float32 in row-id order: one per document, its first chunk's."""
        if not self.chunked:
            return self._vectors
        first = np.ones(len(self.chunk_rows), dtype=bool)
        first[1:] = self.chunk_rows[1:] != self.chunk_rows[:-1]
        return self._vectors[first]

    def chunk_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every chunk in row order: (M,) rows, (M, dim) vectors, (M,) starts, (M,) ends in the passage."""
        starts: list[int] = []
        ends: list[int] = []
        for row in self.row_ids.tolist():
            entry = self.entries[row]
            spans = entry.spans if entry.spans is not None else ((0, len(entry.document.passage())),)
            starts.extend(s for s, _ in spans)
            ends.extend(e for _, e in spans)
        return self.chunk_rows, self._vectors, np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)

    @property
    def lexical(self) -> LexicalIndex | None:
        """The delta's BM25 index, built on first use; None when empty or when there is no lexical index."""
        if self._lexical is None and self.terms and len(self.row_ids):
            with self._lexical_lock:
                if self._lexical is None:
                    assert self._settings is not None  # terms are kept only under lexical settings
                    terms = [self.terms[int(r)] for r in self.row_ids]
                    self._lexical = LexicalIndex.build([(self.row_ids, terms)], self._settings, analyzed=True)
        return self._lexical

    def search_dense(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` rows over the delta (best chunk per row), restricted to ``allowed`` rows by an IDSelector."""
        nq = len(queries)
        if not len(self.row_ids):
            return no_hits(nq, k)
        selected = None
        if allowed is not None:
            wanted = np.intersect1d(allowed, self.row_ids, assume_unique=True)
            if not len(wanted):
                return no_hits(nq, k)
            selected = np.flatnonzero(np.isin(self.chunk_rows, wanted)) if self.chunked else wanted

        def search(q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
            params = None
            if selected is not None:
                selector = faiss.IDSelectorBatch(selected)  # held in a local: params does not keep it alive
                params = faiss.SearchParameters(sel=selector)
            scores, ids = self.dense.search(q, depth, params=params)
            return np.where(ids < 0, -np.inf, scores).astype(np.float32), ids

        if not self.chunked:
            return search(queries, k)
        available = len(self.chunk_rows) if selected is None else len(selected)
        scores, rows, _ = search_collapsed(
            search,
            queries,
            k,
            rows=self.chunk_rows,
            available=available,
            per_document=len(self.chunk_rows) / len(self.row_ids),
        )
        return scores, rows

    def best_span(self, row: int, query: np.ndarray) -> tuple[int, int] | None:
        """The passage span of the chunk of delta ``row`` closest to ``query`` (dim,); None when it has one chunk."""
        entry = self.entries[row]
        if entry.spans is None or len(entry.spans) < 2:
            return None
        return entry.spans[int(np.argmax(entry.vectors @ query))]

    def search_lexical(
        self, texts: Sequence[str], k: int, allowed: np.ndarray | None, *, shared_idf: SharedIdf | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        lexical = self.lexical
        if lexical is None:
            return no_hits(len(texts), k)
        wanted = None if allowed is None else np.intersect1d(allowed, self.row_ids, assume_unique=True)
        return lexical.search(texts, k, allowed=wanted, shared_idf=shared_idf)
