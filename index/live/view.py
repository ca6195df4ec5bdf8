"""One immutable state of a live collection: main segment + delta segment + tombstones, searched as one.

A :class:`LiveView` never changes after it is built. A writer builds the next
view and swaps a single reference (copy-on-write), so a search that took a view
sees one consistent collection from its first FAISS call to its last docstore
read, and never waits for a writer longer than that reference swap.

Exactness. Dense search over the live view is exact wherever the main index
is (Flat): the main segment is searched ``k + t`` deep, ``t`` being the number
of its rows that are tombstoned, so after dropping them at least the true top-``k``
of the survivors remain; the delta segment (an ``IndexIDMap2(IndexFlatIP)``) is
searched exactly; the two lists are merged by score. With ``allowed`` (a
metadata filter's row ids) both segments are searched for the allowed rows
only, so ``k`` hits come back whenever ``k`` allowed documents are live.
Chunked documents (see :mod:`index.long_documents`) are collapsed to their best
chunk inside each segment's search (:class:`~index.store.chunked_dense.ChunkedDense`
for the main one, :class:`~index.live.delta.DeltaSegment` for the delta), so
both lists are in rows, each row at most once, before tombstones apply and
the two are merged.

Lexical statistics. The delta's BM25 index is built by bm25s over the delta's
documents with the main index's settings (same analyzer, k1, b), so a term
meets the same stem on both sides; but its IDF is computed over the delta
alone. A term that is rare in both segments gets a smaller IDF in the small
delta than in the large main (``ln(1 + (N - df + 0.5) / (df + 0.5))`` grows
with N), so a new document's BM25 score is somewhat lower than it will be
after the next merge. We accept that instead of re-implementing BM25 with
borrowed statistics: the merge policy keeps the delta small, every merge
restores exact statistics, and tests/index/test_live_lexical.py measures the effect
(on cranfield with 5% of the documents in the delta, the live BM25 top-10 shares 97.6% of the
exact top-10; 1%: 98.8%, 10%: 97.1%).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from index.corpus import Document
from index.errors import InvalidParameterError, NoLexicalIndexError
from index.live.delta import DeltaSegment, no_hits
from index.live.log import LiveLog
from index.long_documents import text_span
from index.store.collection import Collection, Hit
from index.store.dense import DenseIndex
from index.store.filter_tree import FilterExpr
from index.store.filters import parse_filter
from index.store.metadata_fields import FieldInfo, check_fields
from index.store.shared_idf import SharedIdf

__all__ = ["DeltaSegment", "LiveView", "merge_top_k", "static_view"]  # DeltaSegment lives in index.live.delta

logger = logging.getLogger(__name__)

# The metadata-filter work adds ``allowed=`` to DenseIndex.search (an IDSelector inside FAISS); until
# it is there, a filtered main search over-fetches and filters afterwards, which is exact but slower.
_DENSE_TAKES_ALLOWED = "allowed" in inspect.signature(DenseIndex.search).parameters


def merge_top_k(parts: Sequence[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-segment results by score: list of ((nq, ki) scores, (nq, ki) ids) -> (nq, k), (nq, k).

    Rows are padded with id -1 and score -inf, like :meth:`DenseIndex.search`.
    Ties keep segment order (main first), then rank order within a segment.
    """
    scores = np.concatenate([p[0] for p in parts], axis=1)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _drop(scores: np.ndarray, ids: np.ndarray, unwanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn the ``ids`` that are in ``unwanted`` into padding (-1, -inf)."""
    gone = np.isin(ids, unwanted) | (ids < 0)
    return np.where(gone, -np.inf, scores).astype(np.float32), np.where(gone, -1, ids)


def _keep_only(scores: np.ndarray, ids: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gone = ~np.isin(ids, wanted) | (ids < 0)
    return np.where(gone, -np.inf, scores).astype(np.float32), np.where(gone, -1, ids)


def check_allowed(allowed: np.ndarray | None) -> np.ndarray | None:
    """Validate an ``allowed`` row-id set: sorted, unique, integer -> int64 array (or None)."""
    if allowed is None:
        return None
    array = np.asarray(allowed)
    if array.ndim != 1 or (array.size and (array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer))):
        raise InvalidParameterError(f"allowed must be a 1-d array of integer row ids, got {array.dtype} {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size > 1 and (np.diff(array) <= 0).any():
        array = np.unique(array)
    return array


@dataclass(frozen=True, eq=False)
class LiveView:
    """Main segment minus tombstones plus delta: what every search of one moment sees.

    >>> view = live.view()                                  # doctest: +SKIP
    >>> scores, ids = view.search_dense(query_vectors, 10)  # (nq, 10) float32, (nq, 10) int64 row ids
    >>> view.hits(scores, ids)[0][0].id
    """

    main: Collection
    main_ids: np.ndarray  # (n,) int64 ascending: every row of the main segment, tombstoned or not
    delta: DeltaSegment
    tombstones: Mapping[int, int]  # row id -> seq of the write that removed it
    seq: int  # the last write this view includes
    main_dead: np.ndarray  # tombstoned rows of the main segment, ascending
    log: LiveLog | None  # where the delta's documents are in SQL, for metadata filters

    @classmethod
    def build(
        cls,
        main: Collection,
        main_ids: np.ndarray,
        delta: DeltaSegment,
        tombstones: Mapping[int, int],
        seq: int,
        *,
        log: LiveLog | None = None,
    ) -> LiveView:
        dead = np.fromiter(sorted(tombstones), dtype=np.int64, count=len(tombstones))
        dead = np.intersect1d(dead, main_ids, assume_unique=True)
        return cls(main=main, main_ids=main_ids, delta=delta, tombstones=tombstones, seq=seq, main_dead=dead, log=log)

    # ------------------------------------------------------------------ size and lookup
    def __len__(self) -> int:
        return len(self.main_ids) - len(self.main_dead) + len(self.delta)

    @property
    def has_lexical(self) -> bool:
        return self.main.has_lexical

    def live_main_ids(self) -> np.ndarray:
        """(n,) int64 ascending: the main segment's rows that are not tombstoned."""
        return np.setdiff1d(self.main_ids, self.main_dead, assume_unique=True)

    def row_ids(self) -> np.ndarray:
        """Every live row id, ascending: (n,) int64 (delta rows are above every main row)."""
        return np.concatenate([self.live_main_ids(), self.delta.row_ids])

    def row_id(self, doc_id: str) -> int | None:
        """The live row of a corpus id, or None when the document does not exist (or was deleted)."""
        if (row := self.delta.by_doc_id.get(doc_id)) is not None:
            return row
        row = self.main.docstore.row_ids([doc_id])[0]
        return None if row is None or row in self.tombstones else int(row)

    def get(self, doc_id: str) -> Document | None:
        """The live document with this corpus id, or None."""
        if (row := self.delta.by_doc_id.get(doc_id)) is not None:
            return self.delta.entries[row].document
        row = self.row_id(doc_id)
        return None if row is None else self.main.docstore.get([row])[0]

    # ------------------------------------------------------------------ metadata filters
    def metadata_fields(self) -> dict[str, FieldInfo]:
        """The fields a filter may name: those of the main segment and of the delta, types and counts combined."""
        fields = dict(self.main.docstore.metadata_fields())
        for name, info in ({} if self.log is None else self.log.metadata_fields()).items():
            if (seen := fields.get(name)) is not None:
                info = FieldInfo(name, seen.types | info.types, seen.documents + info.documents, seen.indexed)
            fields[name] = info
        return fields

    def select(self, filter: FilterExpr | Mapping[str, object], *, check: bool = True) -> np.ndarray:
        """Live row ids matching a metadata filter: (n,) int64 sorted, for ``allowed=`` of the searches.

        The filter runs as SQL in both segments' document tables (the main
        docstore with its field indexes, the log's ``documents`` table) and the
        result is cut to this view's live rows. ``check``: refuse fields no
        document of either segment has (:class:`~index.errors.UnknownFieldError`).
        """
        expr = parse_filter(filter)
        if check:
            check_fields(expr, self.metadata_fields())
        main = np.setdiff1d(self.main.docstore.select(expr, check=False), self.main_dead, assume_unique=True)
        if self.log is None or not len(self.delta):
            return main
        delta = np.intersect1d(self.log.select(expr), self.delta.row_ids, assume_unique=True)
        return np.concatenate([main, delta])  # delta rows lie above every main row

    # ------------------------------------------------------------------ search
    def _allowed_main(self, allowed: np.ndarray) -> np.ndarray:
        wanted = np.intersect1d(allowed, self.main_ids, assume_unique=True)
        return np.setdiff1d(wanted, self.main_dead, assume_unique=True)

    def _main_dense(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        dense, nq = self.main.dense, len(queries)
        if allowed is None:
            depth = min(dense.ntotal, k + len(self.main_dead))
            if depth <= 0:
                return no_hits(nq, k)
            return _drop(*dense.search(queries, depth), self.main_dead)
        wanted = self._allowed_main(allowed)
        if not len(wanted):
            return no_hits(nq, k)
        if _DENSE_TAKES_ALLOWED:
            return dense.search(queries, k, allowed=wanted)
        depth = min(dense.ntotal, k + dense.ntotal - len(wanted))
        return _keep_only(*dense.search(queries, depth), wanted)

    def search_dense(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of the live view by inner product: (nq, dim) -> (nq, k) float32 scores, (nq, k) int64 row ids.

        ``allowed``: sorted unique int64 row ids the hits are restricted to
        (None: no filter). Exact when the main index is Flat; HNSW and IVF are
        as approximate as they are for a plain search.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        allowed = check_allowed(allowed)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.main.dense.dim:
            raise InvalidParameterError(
                f"queries must have shape (n, {self.main.dense.dim}), got shape {queries.shape}"
            )
        main = self._main_dense(queries, k, allowed)
        return merge_top_k([main, self.delta.search_dense(queries, k, allowed)], k)

    def search_lexical(
        self, texts: Sequence[str], k: int, *, allowed: np.ndarray | None = None, shared_idf: SharedIdf | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-``k`` of the live view: (nq, k) float32 scores, (nq, k) int64 row ids (-inf / -1 pads).

        Main and delta are scored by their own BM25 indexes and merged by score
        (see the module docstring on their IDF statistics); ``shared_idf``
        scores both with several collections' IDF instead (the router's votes).
        """
        if not self.main.has_lexical:
            raise NoLexicalIndexError(
                f"collection {str(self.main.directory)!r} has no lexical index; "
                "build it again with build_index(..., lexical=LexicalSettings())"
            )
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        allowed = check_allowed(allowed)
        if allowed is None:
            depth = k + len(self.main_dead)
            main = _drop(*self.main.search_lexical(texts, depth, shared_idf=shared_idf), self.main_dead)
        else:
            wanted = self._allowed_main(allowed)
            main = (
                self.main.search_lexical(texts, k, allowed=wanted, shared_idf=shared_idf)
                if len(wanted)
                else no_hits(len(texts), k)
            )
        return merge_top_k([main, self.delta.search_lexical(texts, k, allowed, shared_idf=shared_idf)], k)

    def hits(self, scores: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None = None) -> list[list[Hit]]:
        """(nq, k) scores and row ids (-1 = no hit) -> ``nq`` lists of :class:`Hit`; one docstore fetch.

        ``queries``: the (nq, dim) dense query vectors; with them a hit on a
        chunked document carries its best chunk's :attr:`Hit.span` (see
        :meth:`Collection.hits`), without them every span is None.
        """
        delta = self.delta.entries
        spans: list[dict[int, tuple[int, int]]] | None = None
        if queries is not None:
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            in_main = np.where(np.isin(ids, self.delta.row_ids), -1, ids)
            spans = self.main.best_spans(queries, in_main)
            for q, row_ids in enumerate(np.asarray(ids).tolist()):
                for row in row_ids:
                    if row in delta and (span := self.delta.best_span(row, queries[q])) is not None:
                        spans[q][row] = span
        wanted = np.unique(ids[ids >= 0])
        from_main = [int(r) for r in wanted if int(r) not in delta]
        docs: dict[int, Document | None] = dict(zip(from_main, self.main.docstore.get(from_main), strict=True))
        results: list[list[Hit]] = []
        for q, (row_scores, row_ids) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
            hits = []
            for score, row in zip(row_scores, row_ids, strict=True):
                if row < 0:
                    continue
                doc = delta[row].document if row in delta else docs.get(row)
                if doc is None:
                    logger.warning("row id %d came from a search but is in neither segment", row)
                    continue
                span = None if spans is None or (found := spans[q].get(row)) is None else text_span(doc, *found)
                hits.append(
                    Hit(
                        id=doc.id,
                        score=score,
                        title=doc.title,
                        text=doc.text,
                        metadata=doc.metadata,
                        row=row,
                        span=span,
                    )
                )
            results.append(hits)
        return results


def static_view(main: Collection) -> LiveView:
    """A view of a published collection with no live log: what is searched where nothing is written.

    Searches it exactly as they search a live view (an empty delta, no
    tombstones), so callers need one code path whether or not a collection
    takes writes.
    """
    info = main.info
    delta = DeltaSegment.build({}, dim=info.dim, lexical=info.lexical)
    return LiveView.build(main, main.docstore.all_row_ids(), delta, {}, 0)
