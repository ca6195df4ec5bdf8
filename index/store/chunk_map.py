"""Which document each chunk vector belongs to, and collapsing chunk results to documents.

A chunked segment gives every chunk its own FAISS id, in an id space of its
own: chunk ``c`` is position ``c`` of a :class:`ChunkMap`, whose arrays say
its docstore row and its character span in the document's passage (title +
" " + text). Chunks are numbered in row order (a document's chunks are
consecutive, rows ascending), so the chunks of a set of rows are found by
binary search, and the map is three int64 arrays, 24 bytes a chunk.

Nothing outside a segment sees chunk ids: dense search collapses them to
rows before it returns (see :func:`collapse`), and tombstones, metadata
filters (``allowed=``) and BM25 all stay in row space. A segment with no
document longer than one chunk has no map at all, and its FAISS ids are rows,
as in every collection built before chunking.

File (in a chunked collection directory, checksummed in ``index.json``)::

    chunks.npy   (C, 3) int64: row, start, end of chunk 0 .. C-1
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from index.atomic import atomic_write
from index.errors import IndexFileError

__all__ = ["CHUNKS_FILE", "ChunkMap", "collapse", "search_collapsed"]

CHUNKS_FILE = "chunks.npy"


class ChunkMap:
    """Chunk id -> (docstore row, start, end): (C,) int64 arrays, rows non-decreasing.

    >>> chunks = ChunkMap(np.array([1, 1, 2]), np.array([0, 900, 0]), np.array([1000, 1500, 80]))
    >>> chunks.chunk_ids(np.array([1])).tolist()
    [0, 1]
    """

    def __init__(self, rows: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        self.rows = np.ascontiguousarray(rows, dtype=np.int64)
        self.starts = np.ascontiguousarray(starts, dtype=np.int64)
        self.ends = np.ascontiguousarray(ends, dtype=np.int64)
        if not (self.rows.ndim == 1 and self.rows.shape == self.starts.shape == self.ends.shape):
            raise IndexFileError(
                f"a chunk map needs three arrays of one length, got {self.rows.shape}, {self.starts.shape}, {self.ends.shape}"
            )
        if len(self.rows) > 1 and (np.diff(self.rows) < 0).any():
            raise IndexFileError("a chunk map's rows must be in ascending order (a document's chunks consecutive)")
        first = np.ones(len(self.rows), dtype=bool)
        first[1:] = self.rows[1:] != self.rows[:-1]
        self.first = np.flatnonzero(first)  # (D,) the first chunk of each document
        counts = np.diff(np.append(self.first, len(self.rows)))
        self.multi = self.rows[self.first[counts > 1]]  # (m,) rows that have more than one chunk, ascending

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def documents(self) -> int:
        """Distinct rows."""
        return len(self.first)

    @property
    def chunked(self) -> bool:
        """True when some document has more than one chunk (else ids could simply be rows)."""
        return len(self.multi) > 0

    def chunk_ids(self, rows: np.ndarray) -> np.ndarray:
        """The chunk ids of sorted unique ``rows``: (n,) -> (m,) int64, ascending; unknown rows have none."""
        rows = np.asarray(rows, dtype=np.int64)
        left = np.searchsorted(self.rows, rows, side="left")
        lengths = np.searchsorted(self.rows, rows, side="right") - left
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, dtype=np.int64)
        begins = np.repeat(left - (np.cumsum(lengths) - lengths), lengths)
        return begins + np.arange(total, dtype=np.int64)

    @property
    def chunks_per_document(self) -> float:
        """Mean chunks per document (how deep a search over-fetches at first)."""
        return len(self.rows) / max(self.documents, 1)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> str:
        """Write ``chunks.npy`` into ``directory`` atomically; returns the file name."""
        table = np.stack([self.rows, self.starts, self.ends], axis=1)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: np.save would append ".npy" to a name
                np.save(handle, table, allow_pickle=False)

        atomic_write(Path(directory) / CHUNKS_FILE, write)
        return CHUNKS_FILE

    @classmethod
    def load(cls, path: Path) -> ChunkMap:
        """Read a ``chunks.npy``; a truncated or malformed file is an :class:`IndexFileError` naming it."""
        try:
            table = np.load(Path(path), allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise IndexFileError(f"chunk map {str(path)!r} is missing or corrupt: {exc}") from exc
        if table.ndim != 2 or table.shape[1] != 3 or not np.issubdtype(table.dtype, np.integer):
            raise IndexFileError(f"chunk map {str(path)!r} holds {table.dtype} {table.shape}; expected (n, 3) int64")
        try:
            return cls(table[:, 0], table[:, 1], table[:, 2])
        except IndexFileError as exc:
            raise IndexFileError(f"chunk map {str(path)!r}: {exc}") from exc


def collapse(
    scores: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Best chunk per document: (nq, d) scores and chunk ids, best first -> the top ``k`` documents.

    ``rows`` maps chunk id -> row. Returns (nq, k) float32 scores, (nq, k)
    int64 rows, (nq, k) int64 chunk ids of each row's best chunk (-inf / -1
    pads) and (nq,) how many distinct rows the ``d`` candidates held. Since
    the candidates are the top ``d`` chunks, the first ``k`` distinct rows are
    the exact top ``k`` documents by best chunk whenever there are ``k`` of them.
    """
    nq = len(ids)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    out_chunks = np.full((nq, k), -1, dtype=np.int64)
    distinct = np.zeros(nq, dtype=np.int64)
    for q in range(nq):
        valid = np.flatnonzero(ids[q] >= 0)
        if not len(valid):
            continue
        found = rows[ids[q, valid]]
        _, first = np.unique(found, return_index=True)
        first.sort()  # first occurrence = best chunk of that row, kept in score order
        distinct[q] = len(first)
        take = valid[first[:k]]
        out_scores[q, : len(take)] = scores[q, take]
        out_rows[q, : len(take)] = rows[ids[q, take]]
        out_chunks[q, : len(take)] = ids[q, take]
    return out_scores, out_rows, out_chunks, distinct


def search_collapsed(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    queries: np.ndarray,
    k: int,
    *,
    rows: np.ndarray,
    available: int,
    per_document: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` documents by their best chunk: (nq, dim) -> (nq, k) scores, rows, best chunk ids.

    ``search(queries, depth)`` returns the top ``depth`` chunks, (nq, depth)
    scores and chunk ids, best first; ``rows`` maps chunk id -> row;
    ``available`` is how many chunks ``search`` can return at most (all, or
    the allowed ones). The first search goes ``k`` x 2 x ``per_document`` deep; a
    query that found fewer than ``k`` documents while chunks remain is searched
    again twice as deep, until it has ``k`` or the chunks are exhausted. Over
    an exact index the result is therefore exact (see :func:`collapse`).
    """
    nq = len(queries)
    out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
    out_rows = np.full((nq, k), -1, dtype=np.int64)
    out_chunks = np.full((nq, k), -1, dtype=np.int64)
    if nq == 0 or available <= 0:
        return out_scores, out_rows, out_chunks
    depth = min(available, max(k, math.ceil(2 * k * per_document)))
    todo = np.arange(nq)
    while len(todo):
        scores, ids = search(queries[todo], depth)
        s, r, c, distinct = collapse(scores, ids, rows, k)
        out_scores[todo], out_rows[todo], out_chunks[todo] = s, r, c
        returned = (ids >= 0).sum(axis=1)
        # Short, and the search gave all it was asked for (so there may be more): go deeper.
        again = (distinct < k) & (returned >= depth) & (depth < available)
        todo = todo[again]
        depth = min(available, depth * 2)
    return out_scores, out_rows, out_chunks
