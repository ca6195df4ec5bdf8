"""Filtered dense search: FAISS scores only the allowed row ids, and still returns ``k`` hits when ``k`` match.

A filtered search (``allowed=``: the row ids a metadata filter let through) runs
inside FAISS: the ids go in as an ``IDSelector`` (a bitmap over row ids), so
the index only ever scores allowed vectors. Approximate indexes can then come
back short (an HNSW walk or a few IVF lists may hold fewer than ``k`` allowed
vectors), so: efSearch and nprobe grow with the inverse of the allowed
fraction; small allowed sets (at most :data:`EXACT_FILTER_LIMIT` ids) are
searched exactly over just those vectors; and any query that still has fewer
than ``k`` hits while ``k`` allowed vectors exist is searched again exactly.
A filtered search therefore returns ``k`` hits whenever ``k`` documents match,
for every index type.

Apart from :mod:`index.store.dense` because it is a search of its own (selectors,
widened parameters, exact fallbacks) over the same FAISS index, with its own
cache of the index's row ids.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import faiss
import numpy as np

from index.errors import InvalidParameterError
from index.store.faiss_storage import flat_vectors, inner_storage
from index.store.search_params import SearchParams

__all__ = ["EXACT_FILTER_LIMIT", "FilteredSearch", "allowed_ids"]

logger = logging.getLogger(__name__)

#: An HNSW or IVF search restricted to at most this many ids is done exactly over
#: those vectors instead of through the graph or the lists: below it the exact
#: search is as fast or faster (measured in bench/filtered_search.py, see
#: docs/benchmarks.md section 7) and never comes back short.
EXACT_FILTER_LIMIT = 2048
#: A filtered HNSW or IVF search multiplies efSearch or nprobe by 1 / (allowed fraction),
#: so about as many allowed candidates are seen as unfiltered; at most by this much,
#: and efSearch to at most _MAX_FILTERED_EF (nprobe to the number of lists).
_MAX_WIDENING = 64
_MAX_FILTERED_EF = 1024
#: A bitmap selector costs (largest row id / 8) bytes; above this (and above 16
#: bytes per allowed id) a hash-set selector is built instead.
_MAX_BITMAP_BYTES = 1 << 20
#: Flat and HNSW-over-Flat storage score up to this many allowed ids by gathering their
#: vectors (cost grows with the ids); above it by a FAISS scan with the selector (cost
#: grows with the index). Measured at 100k x 384: gathering 1,024 ids 0.26 ms, 4,096 1.0 ms;
#: the scan 0.45 and 0.78 ms.
_GATHER_LIMIT = 2048
_POPCOUNT = np.array([i.bit_count() for i in range(256)], dtype=np.int64)


def _bitmap(ids: np.ndarray, size: int) -> np.ndarray:
    """Sorted non-negative ids below ``size * 8`` as FAISS's ``IDSelectorBitmap`` reads them: bit (id & 7) of byte (id >> 3)."""
    bits = np.zeros(size * 8, dtype=bool)
    bits[ids] = True
    return np.packbits(bits, bitorder="little")


def allowed_ids(allowed: Iterable[int] | np.ndarray) -> np.ndarray:
    """``allowed`` as sorted, unique, non-negative int64 row ids (negative ids can match nothing)."""
    wanted = np.asarray(allowed if isinstance(allowed, np.ndarray) else list(allowed))
    if wanted.dtype == np.bool_ or (wanted.size and not np.issubdtype(wanted.dtype, np.integer)):
        raise InvalidParameterError(f"allowed must hold integer row ids, got an array of {wanted.dtype}")
    wanted = wanted.astype(np.int64, copy=False).ravel()
    if len(wanted) > 1 and not (np.diff(wanted) > 0).all():  # the contract is sorted + unique; be lenient
        wanted = np.unique(wanted)
    return wanted[wanted >= 0] if len(wanted) and wanted[0] < 0 else wanted


class _Selection:
    """An ``IDSelector`` over row ids, and the numpy buffer it reads (which must outlive every search using it)."""

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = ids  # sorted unique int64
        size = int(ids[-1] >> 3) + 1 if len(ids) else 1
        self.bitmap: np.ndarray | None = None
        if size <= max(_MAX_BITMAP_BYTES, 16 * len(ids)):
            self.bitmap = self.buffer = _bitmap(ids, size)
            self.selector: faiss.IDSelector = faiss.IDSelectorBitmap(size, faiss.swig_ptr(self.buffer))
        else:
            self.buffer = np.ascontiguousarray(ids)
            self.selector = faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(self.buffer))


class FilteredSearch:
    """The filtered searches of one ``IDMap2`` index, with its row ids cached from the first one on.

    A :class:`~index.store.dense.DenseIndex` holds one and replaces it after every ``add``.
    """

    def __init__(self, index: faiss.Index, *, factory: str) -> None:
        self._index = index
        self._factory = factory
        # Built on the first filtered search: row id per internal position, the
        # same sorted, and as a bitmap (None when the ids are too sparse for one).
        self._id_map: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None
        self._stored_bits: np.ndarray | None = None
        self._order: np.ndarray | None = None  # internal positions in row-id order

    def _row_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(row id per internal position, the same sorted); cached for the life of this object."""
        id_map, sorted_ids = self._id_map, self._sorted_ids
        if id_map is None or sorted_ids is None:
            id_map = faiss.vector_to_array(faiss.downcast_index(self._index).id_map).astype(np.int64, copy=False)
            self._order = np.argsort(id_map, kind="stable")
            sorted_ids = id_map[self._order]
            size = int(sorted_ids[-1] >> 3) + 1 if len(sorted_ids) else 1
            self._stored_bits = _bitmap(sorted_ids, size) if size <= max(_MAX_BITMAP_BYTES, 16 * len(id_map)) else None
            self._id_map, self._sorted_ids = id_map, sorted_ids
        return id_map, sorted_ids

    def _present(self, allowed: np.ndarray) -> np.ndarray:
        """The allowed ids that are in this index (a live layer's filter also allows other segments' rows)."""
        _, stored = self._row_ids()
        if len(stored) == 0 or len(allowed) == 0:
            return allowed[:0]
        positions = np.searchsorted(stored, allowed).clip(max=len(stored) - 1)
        return allowed[stored[positions] == allowed]

    def _count_present(self, selection: _Selection) -> int:
        """How many selected ids are in this index: AND of two bitmaps where both exist (0.1 ms for 100k ids)."""
        self._row_ids()
        stored = self._stored_bits
        if selection.bitmap is None or stored is None:
            return len(self._present(selection.ids))
        size = min(len(stored), len(selection.bitmap))
        return int(_POPCOUNT[selection.bitmap[:size] & stored[:size]].sum())

    def search(
        self, queries: np.ndarray, k: int, params: SearchParams, allowed: np.ndarray, *, exact_filter_limit: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over the ``allowed`` row ids (sorted unique int64, :func:`allowed_ids`): (nq, k) scores, ids.

        Searched exactly when at most ``exact_filter_limit`` of them are in the index.
        """
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if len(queries) == 0 or len(allowed) == 0:
            return scores, ids
        selection = _Selection(allowed)
        present = self._count_present(selection)
        if present == 0:
            return scores, ids
        inner = inner_storage(self._index)
        approximate = isinstance(inner, faiss.IndexIVF | faiss.IndexHNSW)
        if not approximate or present <= exact_filter_limit:
            return self._search_exact(queries, k, selection)
        widen = min(int(self._index.ntotal) / present, _MAX_WIDENING)
        if isinstance(inner, faiss.IndexIVF):
            nprobe = params.nprobe or inner.nprobe
            faiss_params = faiss.SearchParametersIVF(
                sel=selection.selector, nprobe=min(inner.nlist, math.ceil(nprobe * widen))
            )
        else:
            ef = max(params.ef_search or inner.hnsw.efSearch, k)
            faiss_params = faiss.SearchParametersHNSW(
                sel=selection.selector, efSearch=max(ef, min(math.ceil(ef * widen), _MAX_FILTERED_EF))
            )
        scores, ids = self._index.search(queries, k, params=faiss_params)
        short = (ids >= 0).sum(axis=1) < min(k, present)
        if short.any():  # the walk or the lists held too few allowed vectors: exact for those queries
            logger.debug("filtered %s search: %d of %d queries came back short", self._factory, short.sum(), len(ids))
            scores[short], ids[short] = self._search_exact(queries[short], k, selection)
        scores[ids < 0] = -np.inf
        return scores, ids

    def _search_gathered(
        self, queries: np.ndarray, k: int, present: np.ndarray, vectors: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over just the ``present`` ids' vectors, gathered by position: O(len(present)), not O(ntotal)."""
        _, sorted_ids = self._row_ids()
        assert self._order is not None  # set by _row_ids()
        positions = self._order[np.searchsorted(sorted_ids, present)]
        similarity = queries @ vectors[positions].T  # (nq, m)
        top_k = min(k, len(present))
        best = np.argpartition(-similarity, top_k - 1, axis=1)[:, :top_k] if top_k < len(present) else None
        if best is None:
            best = np.broadcast_to(np.arange(len(present)), similarity.shape)
        best_scores = np.take_along_axis(similarity, best, axis=1)
        order = np.argsort(-best_scores, axis=1, kind="stable")
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores[:, :top_k] = np.take_along_axis(best_scores, order, axis=1)
        ids[:, :top_k] = present[np.take_along_axis(best, order, axis=1)]
        return scores, ids

    def _search_exact(self, queries: np.ndarray, k: int, selection: _Selection) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` over the selected vectors (over the stored codes, for compressed storage)."""
        inner = inner_storage(self._index)
        top = faiss.downcast_index(self._index)
        if len(selection.ids) <= _GATHER_LIMIT and (vectors := flat_vectors(self._index)) is not None:
            return self._search_gathered(queries, k, self._present(selection.ids), vectors)
        if isinstance(inner, faiss.IndexIVF):  # every list, scoring only the selected entries
            params = faiss.SearchParametersIVF(sel=selection.selector, nprobe=inner.nlist)
            scores, ids = self._index.search(queries, k, params=params)
        elif isinstance(inner, faiss.IndexHNSW) and not isinstance(
            faiss.downcast_index(top.index), faiss.IndexPreTransform
        ):
            # The graph's own storage, scanned flat; its ids are positions, translated to row ids for the selector.
            storage = faiss.downcast_index(inner.storage)
            translated = faiss.IDSelectorTranslated(top.id_map, selection.selector)
            scores, positions = storage.search(queries, k, params=faiss.SearchParameters(sel=translated))
            id_map, _ = self._row_ids()
            ids = np.where(positions >= 0, id_map[positions.clip(min=0)], -1)
        elif isinstance(inner, faiss.IndexHNSW):  # a pre-transform in front of the graph: score reconstructed vectors
            present = self._present(selection.ids)
            vectors = self._index.reconstruct_batch(present)
            similarity = queries @ vectors.T
            top_k = min(k, len(present))
            order = np.argsort(-similarity, axis=1, kind="stable")[:, :top_k]
            scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
            ids = np.full((len(queries), k), -1, dtype=np.int64)
            scores[:, :top_k] = np.take_along_axis(similarity, order, axis=1)
            ids[:, :top_k] = present[order]
        else:  # Flat, PQ, SQ: the search is a scan already, and only selected vectors are scored
            scores, ids = self._index.search(queries, k, params=faiss.SearchParameters(sel=selection.selector))
        scores = np.asarray(scores, dtype=np.float32)
        scores[ids < 0] = -np.inf
        return scores, ids
