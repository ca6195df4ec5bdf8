"""The dense index: FAISS, int64 ids, inner product on L2-normalised vectors.

Every index is ``IDMap2`` over a storage chosen by a FAISS factory string
("Flat" by default, "HNSW32", "IVF256,PQ16", ...), so the ids FAISS returns are
the docstore's row ids and ``IDMap2`` can map an id back to its vector.

Memory mapping (measured with faiss-cpu 1.15, 200k x 256 float32, ~200 MB file):

* ``IO_FLAG_MMAP`` only maps IVF inverted lists (as ``OnDiskInvertedLists``);
  Flat and HNSW storage is still copied into RAM in full.
* ``IO_FLAG_MMAP_IFC`` maps the flat code arrays in place for Flat, HNSW
  (vectors; the graph links are still read), IVF-Flat, IVF-PQ, PQ and SQ:
  loading a Flat index grew RSS by ~12 MB instead of ~206 MB, and the pages
  that searches touch live in the page cache, shared by every process that
  serves the same file.
* ``IO_FLAG_MMAP | IO_FLAG_MMAP_IFC`` fails for IVF ("mmap only supported for
  File objects"), so we use ``IO_FLAG_MMAP_IFC | IO_FLAG_READ_ONLY`` alone and
  fall back to a normal read for any type FAISS refuses to map.
* A mapped index is a *view*: ``add``/``train`` on it make FAISS call
  ``abort()`` (a failed ``is_owned`` assertion kills the process). We therefore
  mark mapped indexes read-only and refuse writes with :class:`ReadOnlyError`.
  Files are only ever replaced by rename, never rewritten in place, so a
  mapping never sees a file change under it.

Filtered search (``allowed=``: the row ids a metadata filter let through) runs
inside FAISS: the ids go in as an ``IDSelector`` (a bitmap over row ids), so
the index only ever scores allowed vectors. Approximate indexes can then come
back short (an HNSW walk or a few IVF lists may hold fewer than ``k`` allowed
vectors), so: efSearch and nprobe grow with the inverse of the allowed
fraction; small allowed sets (at most :data:`EXACT_FILTER_LIMIT` ids) are
searched exactly over just those vectors; and any query that still has fewer
than ``k`` hits while ``k`` allowed vectors exist is searched again exactly.
A filtered search therefore returns ``k`` hits whenever ``k`` documents match,
for every index type.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from index.atomic import atomic_write
from index.errors import DimensionMismatchError, IndexFileError, IndexStoreError, InvalidParameterError, ReadOnlyError

__all__ = ["EXACT_FILTER_LIMIT", "DenseIndex", "SearchParams"]

logger = logging.getLogger(__name__)

_FACTORY_EXAMPLES = "'Flat', 'HNSW32', 'IVF256,Flat', 'IVF256,PQ16', 'OPQ16,IVF256,PQ16', 'SQ8'"
_MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY

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


@dataclass(frozen=True, slots=True)
class SearchParams:
    """Per-search knobs of approximate indexes; ``None`` keeps the index's own value.

    ``nprobe``: IVF lists visited per query (recall vs speed).
    ``ef_search``: HNSW candidate list size (recall vs speed; at least ``k``).
    """

    nprobe: int | None = None
    ef_search: int | None = None


def _faiss_message(exc: BaseException) -> str:
    """The useful part of a FAISS error ("Error in <C++ signature> at <file>: Error: <this>")."""
    text = " ".join(str(exc).split())
    return text.rpartition("Error: ")[2] or type(exc).__name__


def _storage(index: faiss.Index) -> faiss.Index:
    """The innermost storage index, below the IDMap2 and any pre-transform (OPQ, PCA)."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def _describe(index: faiss.Index) -> str:
    """Best-effort factory string for a loaded index whose factory was not recorded."""
    inner = _storage(index)
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits}"
    if isinstance(inner, faiss.IndexIVFFlat):
        return f"IVF{inner.nlist},Flat"
    if isinstance(inner, faiss.IndexPQ):
        return f"PQ{inner.pq.M}x{inner.pq.nbits}"
    return type(inner).__name__.removeprefix("Index")


def _allowed_ids(allowed: Iterable[int] | np.ndarray) -> np.ndarray:
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


class DenseIndex:
    """A FAISS index of (n, dim) float32 vectors under int64 ids, scored by inner product.

    >>> dense = DenseIndex.create(384, factory="HNSW32")  # doctest: +SKIP
    >>> dense.add(vectors, row_ids)                       # (n, 384) float32, (n,) int64
    >>> scores, ids = dense.search(queries, 10)           # (nq, 10) float32, (nq, 10) int64
    """

    def __init__(self, index: faiss.Index, *, factory: str, read_only: bool = False) -> None:
        """Private: use :meth:`create` or :meth:`load`."""
        self._index = index
        self._factory = factory
        self._read_only = read_only
        self.default_params = SearchParams()
        #: Filtered searches over at most this many ids are exact (see the module docstring).
        self.exact_filter_limit = EXACT_FILTER_LIMIT
        # Built on the first filtered search, dropped by add: row id per internal position,
        # the same sorted, and as a bitmap (None when the ids are too sparse for one).
        self._id_map: np.ndarray | None = None
        self._sorted_ids: np.ndarray | None = None
        self._stored_bits: np.ndarray | None = None
        self._order: np.ndarray | None = None  # internal positions in row-id order

    @classmethod
    def create(cls, dim: int, *, factory: str = "Flat") -> DenseIndex:
        """A new, empty index; ``factory`` is a FAISS factory string for the storage."""
        if not isinstance(dim, int) or dim <= 0:
            raise InvalidParameterError(f"dim must be a positive integer, got {dim!r}")
        if not isinstance(factory, str) or not factory.strip() or "IDMap" in factory:
            raise InvalidParameterError(
                f"invalid FAISS factory string {factory!r}: give the storage only (ids are added for you); "
                f"valid examples: {_FACTORY_EXAMPLES}"
            )
        try:
            index = faiss.index_factory(dim, f"IDMap2,{factory}", faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise InvalidParameterError(
                f"invalid FAISS factory string {factory!r} for dim {dim}: {_faiss_message(exc)}; "
                f"valid examples: {_FACTORY_EXAMPLES}"
            ) from exc
        storage = _storage(index)
        if getattr(storage, "do_polysemous_training", False):
            # The factory turns on polysemous training for PQ codes; it only serves
            # Hamming-filtered search (polysemous_ht), which we never use, and it only
            # permutes centroid numbering, so results are unchanged without it. It
            # was 99% of training time (6.6 s of 6.7 s for IVF16,PQ8 on 1k vectors).
            storage.do_polysemous_training = False
        return cls(index, factory=factory)

    @classmethod
    def load(cls, path: Path, *, mmap: bool = True, factory: str | None = None) -> DenseIndex:
        """Read an index written by :meth:`save`.

        ``mmap=True`` maps the vectors instead of copying them (see the module
        docstring); the result is then read-only. ``factory`` is the string the
        index was created with (a collection keeps it in ``index.json``); when
        omitted it is derived from the index type on a best-effort basis.
        """
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"dense index file {str(path)!r} does not exist or is not a regular file")
        index, mapped = None, False
        if mmap:
            try:
                index, mapped = faiss.read_index(str(path), _MMAP_FLAGS), True
            except RuntimeError as exc:
                logger.debug("faiss could not map %s (%s); reading it into memory", path, _faiss_message(exc))
        if index is None:
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as exc:
                raise IndexFileError(
                    f"dense index file {str(path)!r} is truncated or corrupt: {_faiss_message(exc)}"
                ) from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(
                f"dense index file {str(path)!r} holds a {type(index).__name__} (metric {index.metric_type}); "
                "expected an IndexIDMap2 with inner-product metric, as written by DenseIndex.save"
            )
        return cls(index, factory=factory or _describe(index), read_only=mapped)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def factory(self) -> str:
        return self._factory

    @property
    def read_only(self) -> bool:
        """True when the vectors are memory-mapped: search only."""
        return self._read_only

    @property
    def needs_training(self) -> bool:
        """True until :meth:`train` has run on an index type that needs it (IVF, PQ)."""
        return not self._index.is_trained

    def __len__(self) -> int:
        return self.ntotal

    # ------------------------------------------------------------------ writes
    def _writable(self, action: str) -> None:
        if self._read_only:
            raise ReadOnlyError(
                f"cannot {action}: this {self._factory!r} index is memory-mapped read-only; load it with mmap=False"
            )

    def _matrix(self, x: np.ndarray, what: str) -> np.ndarray:
        array = np.asarray(x)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise DimensionMismatchError(
                f"{what} must have shape (n, {self.dim}) for this index of dim {self.dim}, got shape {array.shape}"
            )
        array = np.ascontiguousarray(array, dtype=np.float32)
        if not np.isfinite(array).all():
            raise InvalidParameterError(f"{what} contain NaN or infinite values")
        return array

    def train(self, sample: np.ndarray) -> None:
        """Train the quantisers on ``sample``: (n, dim) float32; a no-op for Flat and HNSW."""
        self._writable("train")
        sample = self._matrix(sample, "training vectors")
        try:
            self._index.train(sample)
        except RuntimeError as exc:
            raise InvalidParameterError(
                f"training {self._factory!r} on {len(sample)} vectors failed: {_faiss_message(exc)}"
            ) from exc

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under ids: (n, dim) float32 and (n,) int64, ids >= 0 and unique."""
        self._writable("add vectors")
        if self.needs_training:
            raise IndexStoreError(f"the {self._factory!r} index must be trained before add; call train(sample) first")
        vectors = self._matrix(vectors, "vectors")
        id_array = np.asarray(ids)
        if id_array.shape != (len(vectors),) or not np.issubdtype(id_array.dtype, np.integer):
            raise InvalidParameterError(
                f"ids must be an integer array of shape ({len(vectors)},), got {id_array.dtype} {id_array.shape}"
            )
        id_array = np.ascontiguousarray(id_array, dtype=np.int64)
        if len(id_array) and (id_array.min() < 0 or len(np.unique(id_array)) != len(id_array)):
            raise InvalidParameterError("ids must be non-negative and unique (-1 means 'no result' in FAISS)")
        if len(id_array):
            self._index.add_with_ids(vectors, id_array)
            self._id_map = self._sorted_ids = self._stored_bits = self._order = None

    # ------------------------------------------------------------------ search
    def _faiss_params(self, params: SearchParams) -> faiss.SearchParameters | None:
        if params.nprobe is None and params.ef_search is None:
            return None
        inner = _storage(self._index)
        if params.nprobe is not None:
            if not isinstance(inner, faiss.IndexIVF):
                raise InvalidParameterError(f"nprobe applies to IVF indexes; this index is {self._factory!r}")
            if params.ef_search is not None:
                raise InvalidParameterError("give nprobe or ef_search, not both")
            return faiss.SearchParametersIVF(nprobe=int(params.nprobe))
        if not isinstance(inner, faiss.IndexHNSW):
            raise InvalidParameterError(f"ef_search applies to HNSW indexes; this index is {self._factory!r}")
        assert params.ef_search is not None  # neither nprobe nor ef_search returned above
        return faiss.SearchParametersHNSW(efSearch=int(params.ef_search))

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        params: SearchParams | None = None,
        allowed: Iterable[int] | np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product: (nq, k) float32 scores, (nq, k) int64 ids.

        Where fewer than ``k`` vectors exist, ids are -1 and scores -inf.
        ``params`` defaults to :attr:`default_params`. ``allowed`` restricts the
        search to those row ids (sorted unique int64, as
        :meth:`DocStore.select` returns them; ids not in the index are
        ignored): every returned id is allowed, and a query gets ``k`` hits
        whenever ``k`` allowed ids are in the index. Safe to call from several threads.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k <= 0:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        queries = self._matrix(queries, "queries")
        params = params or self.default_params
        faiss_params = self._faiss_params(params)
        if allowed is not None:
            return self._search_allowed(queries, k, params, _allowed_ids(allowed))
        if len(queries) == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        scores, ids = self._index.search(queries, k, params=faiss_params)
        scores[ids < 0] = -np.inf
        return scores, ids

    # ------------------------------------------------------------------ filtered search
    def _row_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(row id per internal position, the same sorted); cached until the next add."""
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

    def _search_allowed(
        self, queries: np.ndarray, k: int, params: SearchParams, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        if len(queries) == 0 or len(allowed) == 0:
            return scores, ids
        selection = _Selection(allowed)
        present = self._count_present(selection)
        if present == 0:
            return scores, ids
        inner = _storage(self._index)
        approximate = isinstance(inner, faiss.IndexIVF | faiss.IndexHNSW)
        if not approximate or present <= self.exact_filter_limit:
            return self._search_exact(queries, k, selection)
        widen = min(self.ntotal / present, _MAX_WIDENING)
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

    def _flat_vectors(self) -> np.ndarray | None:
        """The stored vectors, (ntotal, dim) float32 by internal position, as a view (no copy); None unless Flat storage."""
        if not self.exact_storage:
            return None
        inner = _storage(self._index)
        flat = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
        return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)

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
        inner = _storage(self._index)
        top = faiss.downcast_index(self._index)
        if len(selection.ids) <= _GATHER_LIMIT and (vectors := self._flat_vectors()) is not None:
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

    # ------------------------------------------------------------------ reading vectors back
    @property
    def exact_storage(self) -> bool:
        """True when the stored vectors are the ones added (Flat, HNSW over Flat), not lossy codes."""
        inner = _storage(self._index)
        if isinstance(inner, faiss.IndexHNSW):
            inner = faiss.downcast_index(inner.storage)
        top = faiss.downcast_index(self._index)
        wrapped = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexIDMap2) else top
        return isinstance(inner, faiss.IndexFlat) and not isinstance(wrapped, faiss.IndexPreTransform)

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector with its id, ids ascending: (n,) int64, (n, dim) float32.

        Lets a caller reuse what the index already holds (training an expert
        against its documents' base vectors) instead of re-embedding a corpus.
        Only for exact storage: a PQ/SQ/OPQ index keeps lossy codes, so asking
        it is an error that says so rather than a silently degraded copy.
        """
        if not self.exact_storage:
            raise InvalidParameterError(
                f"a {self._factory!r} index stores compressed codes, not the vectors that were added; "
                "re-embed the documents instead (vectors() serves 'Flat' and 'HNSW<M>' indexes)"
            )
        top = faiss.downcast_index(self._index)
        ids = faiss.vector_to_array(top.id_map).astype(np.int64)
        if len(ids) == 0:
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        vectors = faiss.downcast_index(top.index).reconstruct_n(0, len(ids))
        order = np.argsort(ids, kind="stable")
        return ids[order], np.ascontiguousarray(vectors[order], dtype=np.float32)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> None:
        """Write the index to ``path`` atomically (temp file, fsync, rename, fsync dir)."""
        path = Path(path)

        def write(tmp: Path) -> None:
            try:
                faiss.write_index(self._index, str(tmp))
            except RuntimeError as exc:
                raise IndexFileError(f"cannot write dense index to {str(path)!r}: {_faiss_message(exc)}") from exc

        atomic_write(path, write)
