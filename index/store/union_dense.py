"""One flat inner-product index over several collections' stored vectors, searched once for all of them.

The router's document votes ask every collection for its best documents for a
query's base vector (see :mod:`router.evidence`). Searching each collection's
own index costs one FAISS call per collection and query batch, so routing
grows with every expert. :class:`UnionDense` holds a copy of every member's
vectors in one ``IndexFlatIP``, with each vector's document (member, row), so
one search answers for all of them.

Exactness. Members are ``Flat`` collections (their own search is exact), so
one exact search over the concatenation finds the same documents with the
same scores: FAISS computes each inner product the same way in both indexes.
A chunked member contributes every chunk, and a document scores by its best
chunk, as :class:`~index.store.chunked_dense.ChunkedDense` scores it.
:meth:`UnionDense.search` returns *every* document that can be among the
``depth`` best of those not excluded, ties at the boundary included, so that a
merge with other lists (the members' live deltas) by score and owner gives the
same top ``depth`` as the per-collection searches did.

The vectors are held in shards of :attr:`UnionDense.SHARD`, searched one
after the other and merged by score (why: the attribute's comment).

Approximate, above a size. An exact search reads every vector, so its cost
follows the documents of every routed collection (about 0.07 ms per 1,000
vectors of dim 384 per query here: 7 ms at 100,000). Built with
``approximate_above``, a union holding more vectors is one inverted file
instead (``IndexIVFFlat``, about 4 x sqrt(P) lists, the ``probes`` nearest
searched, and no more vectors read than ``probes`` lists of the mean size
hold, however uneven the lists): a query reads about (4 + probes / 4) x sqrt(P)
vectors, so the cost grows with the square root of the documents, and the
votes are those of the documents the probed lists hold: near the exact ones,
not equal (docs/benchmarks.md, 18 and 26).
Excluded documents are skipped inside the search (FAISS's ID selector).

Memory: the copy duplicates each member's vectors (4 x dim bytes per vector:
1.5 KiB at dim 384) and is rebuilt whole when a member changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import faiss
import numpy as np

from index.errors import DimensionMismatchError, InvalidParameterError
from index.store.union_members import UnionMembers

__all__ = ["UnionDense"]


class UnionDense:
    """Members' vectors in one ``IndexFlatIP``; documents numbered 0..D-1, member by member.

    >>> union = UnionDense.build([(rows_a, vectors_a), (rows_b, vectors_b)], dim=384, total=n)  # doctest: +SKIP
    >>> scores, documents = union.search(queries, 20)     # (nq, m) float32, (nq, m) int64 document numbers
    >>> union.members.member_of[documents[0, 0]], union.members.row_of[documents[0, 0]]
    """

    #: Vectors per FAISS index. One query over more than about 9,000 vectors is split over FAISS's OpenMP
    #: threads, which wait for each other on a busy machine: with two threads on our two busy cores, 0.45 ms
    #: at 8,000 vectors became 11 ms at 10,000 (single-threaded: 0.59 ms). Shards keep each search below
    #: that, one thread each (the dense votes at 50 experts of 300 documents: see docs/benchmarks.md, 16).
    SHARD = 8192

    #: Lists of the inverted file per square root of its vectors (4 000 lists at a million).
    LISTS_PER_ROOT = 4
    #: Training points per list (FAISS warns below 39); the rest of the vectors are only assigned.
    TRAINING_PER_LIST = 64

    def __init__(
        self,
        shards: Sequence[faiss.Index],
        vector_document: np.ndarray,
        member_rows: Sequence[np.ndarray],
        *,
        probes: int | None = None,
    ) -> None:
        """Private: use :meth:`build`. ``probes``: ``shards`` is one inverted file, searched that many lists deep."""
        self._shards = tuple(shards)  # consecutive blocks of the vectors, each at most SHARD; or one inverted file
        self.probes = probes
        self._shard_starts = np.cumsum([0] + [s.ntotal for s in shards[:-1]]).astype(np.int64)
        self._vector_document = vector_document  # (P,) int64: the document of each vector
        #: Which member and row each document number is.
        self.members = UnionMembers(member_rows)

    @classmethod
    def build(
        cls,
        members: Iterable[tuple[np.ndarray, np.ndarray]],
        *,
        dim: int,
        total: int,
        approximate_above: int | None = None,
        probes: int = 64,
    ) -> UnionDense:
        """From each member's (rows (P_m,) int64, vectors (P_m, dim) float32), ``total`` vectors in all.

        A row repeats for each of its chunks. ``members`` may be a generator: each member's vectors are
        copied into one (total, dim) matrix as they come, and FAISS gets it in one ``add`` (sized once).
        ``approximate_above``: more vectors than this make an inverted file searched ``probes`` lists deep
        (None: always exact).
        """
        if approximate_above is not None and approximate_above < 0:
            raise InvalidParameterError(f"approximate_above must be >= 0 or None, got {approximate_above}")
        if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
            raise InvalidParameterError(f"probes must be a positive integer, got {probes!r}")
        matrix = np.empty((total, dim), dtype=np.float32)
        documents, member_rows, offset, filled = [], [], 0, 0
        for rows, vectors in members:
            rows = np.asarray(rows, dtype=np.int64)
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) != len(rows) or filled + len(rows) > total:
                raise DimensionMismatchError(
                    f"a member of the union has {len(rows)} rows and vectors of shape {vectors.shape}; "
                    f"expected shape ({len(rows)}, {dim}), {total} vectors in all"
                )
            unique = np.unique(rows)
            documents.append(offset + np.searchsorted(unique, rows))
            member_rows.append(unique)
            offset += len(unique)
            matrix[filled : filled + len(rows)] = vectors
            filled += len(rows)
        if filled != total:
            raise DimensionMismatchError(f"the union's members hold {filled} vectors, not the {total} announced")
        vector_document = np.concatenate(documents) if documents else np.zeros(0, dtype=np.int64)
        vector_document = vector_document.astype(np.int64)
        if approximate_above is not None and total > approximate_above and total >= 2:
            inverted = cls._inverted_file(matrix, probes)
            del matrix
            return cls([inverted], vector_document, member_rows, probes=min(probes, inverted.nlist))
        shards: list[faiss.Index] = []
        for start in range(0, total, cls.SHARD):
            shards.append(faiss.IndexFlatIP(dim))
            shards[-1].add(matrix[start : start + cls.SHARD])
        del matrix
        return cls(shards or [faiss.IndexFlatIP(dim)], vector_document, member_rows)

    @classmethod
    def _inverted_file(cls, matrix: np.ndarray, probes: int) -> faiss.IndexIVFFlat:
        """An inner-product inverted file over ``matrix``, its lists trained on an even sample of the vectors."""
        total, dim = matrix.shape
        lists = max(1, min(total // 2, int(cls.LISTS_PER_ROOT * np.sqrt(total))))
        quantizer = faiss.IndexFlatIP(dim)
        inverted = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
        inverted.own_fields = True  # the inverted file keeps its quantizer alive
        quantizer.this.disown()
        step = max(1, total // (lists * cls.TRAINING_PER_LIST))
        inverted.cp.min_points_per_centroid = 1  # a small sample trains without FAISS's warning
        inverted.train(np.ascontiguousarray(matrix[::step]))
        inverted.add(matrix)
        inverted.nprobe = min(probes, lists)
        return inverted

    @property
    def approximate(self) -> bool:
        """True when the union is an inverted file (its search finds most, not all, of the best documents)."""
        return self.probes is not None

    @property
    def dim(self) -> int:
        return int(self._shards[0].d)

    @property
    def documents(self) -> int:
        return len(self.members)

    @property
    def vectors(self) -> int:
        return sum(int(shard.ntotal) for shard in self._shards)

    @property
    def nbytes(self) -> int:
        """Memory held: the vectors' copy and the document numbers."""
        return self.vectors * self.dim * 4 + self._vector_document.nbytes + self.members.nbytes

    def search(
        self, queries: np.ndarray, depth: int, *, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every document that can be among the ``depth`` best: (nq, dim) -> (nq, m) scores, (nq, m) documents.

        ``excluded``: (D,) bool, documents that must not count (deleted rows,
        members not asked). Each document at most once, with its best
        vector's score; rows best first, padded with -inf / -1. All documents
        scoring at least the ``depth``-th best are in (ties included).
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise InvalidParameterError(f"depth must be a positive integer, got {depth!r}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise DimensionMismatchError(f"queries must have shape (n, {self.dim}), got shape {queries.shape}")
        if self.probes is not None:
            return self._search_approximate(queries, depth, excluded)
        nq, total = len(queries), self.vectors
        largest = max(int(shard.ntotal) for shard in self._shards)
        found: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0, np.float32), np.zeros(0, np.int64))] * nq
        if total:
            skipped = 0 if excluded is None else int(excluded[self._vector_document].sum())
            k = min(largest, 2 * depth + skipped)
            todo = np.arange(nq)
            while len(todo):
                scores, ids, floor = self._search_shards(queries[todo], k)
                again = []
                for j, q in enumerate(todo.tolist()):
                    kept = self._documents(scores[j], ids[j], excluded)
                    found[q] = kept
                    # Complete when every vector was seen, or no unseen vector (each scores at most ``floor``)
                    # can reach or tie the depth-th document.
                    if k < largest and (len(kept[0]) < depth or floor[j] >= kept[0][depth - 1]):
                        again.append(j)
                todo = todo[again]
                k = min(largest, 2 * k)
        return self._padded(found)

    def _search_approximate(
        self, queries: np.ndarray, depth: int, excluded: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The inverted file's search: the excluded documents' vectors skipped by an ID selector, then each
        document once; the ``depth`` best of what the probed lists hold (chunked members: asked deeper)."""
        (inverted,) = self._shards
        chunks = len(self._vector_document) / max(len(self.members), 1)
        k = min(int(inverted.ntotal), int(np.ceil(depth * max(chunks, 1.0))) + depth)
        # At most ``probes`` lists' worth of vectors at their mean size: lists are uneven (a query lands where
        # documents crowd), and without the bound a query read twice as many on near-duplicate collections.
        reading = int(np.ceil(self.probes * inverted.ntotal / max(inverted.nlist, 1)))
        params = faiss.SearchParametersIVF(nprobe=self.probes, max_codes=max(reading, k))
        selector = None
        if excluded is not None and excluded.any():
            keep = np.packbits(~excluded[self._vector_document], bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self._vector_document), faiss.swig_ptr(keep))
            params.sel = selector
        scores, ids = inverted.search(queries, k, params=params)
        return self._padded([self._documents(s, i, None) for s, i in zip(scores, ids, strict=True)])

    def _padded(self, found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Each query's (scores, documents) as rows of two arrays, padded with -inf / -1."""
        nq = len(found)
        width = max((len(s) for s, _ in found), default=0)
        out_scores = np.full((nq, width), -np.inf, dtype=np.float32)
        out_documents = np.full((nq, width), -1, dtype=np.int64)
        for q, (scores_q, documents_q) in enumerate(found):
            out_scores[q, : len(scores_q)] = scores_q
            out_documents[q, : len(documents_q)] = documents_q
        return out_scores, out_documents

    def _search_shards(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each shard's top ``k``, merged: (nq, m) scores best first, (nq, m) vector positions (-1 pads), and
        (nq,) the most an unseen vector can score (the k-th score of each shard that holds more than k)."""
        parts, floor = [], np.full(len(queries), -np.inf, dtype=np.float32)
        for shard, start in zip(self._shards, self._shard_starts.tolist(), strict=True):
            if shard.ntotal == 0:
                continue
            scores, ids = shard.search(queries, min(k, int(shard.ntotal)))
            parts.append((scores, np.where(ids >= 0, ids + start, -1)))
            if shard.ntotal > k:
                floor = np.maximum(floor, scores[:, -1])
        scores = np.concatenate([p[0] for p in parts], axis=1)
        ids = np.concatenate([p[1] for p in parts], axis=1)
        if len(parts) > 1:
            order = np.argsort(-scores, axis=1, kind="stable")
            scores, ids = np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)
        return scores, ids, floor

    def _documents(
        self, scores: np.ndarray, ids: np.ndarray, excluded: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One query's hits (k,) -> its documents, each once (best vector first), without the excluded ones."""
        hit = ids >= 0
        documents, scores = self._vector_document[ids[hit]], scores[hit]
        if excluded is not None:
            keep = ~excluded[documents]
            documents, scores = documents[keep], scores[keep]
        if len(self._vector_document) != len(self.members):  # chunks: keep each document's first (best) hit
            _, first = np.unique(documents, return_index=True)
            first.sort()
            documents, scores = documents[first], scores[first]
        return scores.astype(np.float32, copy=False), documents
