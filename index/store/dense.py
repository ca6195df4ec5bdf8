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

Filtered search (``allowed=``: the row ids a metadata filter let through) is
:mod:`index.store.dense_filtering`; what the index is made of (its storage,
whether it holds exact vectors) is :mod:`index.store.faiss_storage`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from index.atomic import atomic_write
from index.errors import DimensionMismatchError, IndexFileError, IndexStoreError, InvalidParameterError, ReadOnlyError
from index.store.dense_filtering import EXACT_FILTER_LIMIT, FilteredSearch, allowed_ids
from index.store.faiss_storage import describe, inner_storage, is_exact_storage
from index.store.search_params import SearchParams, faiss_params

__all__ = ["DenseIndex"]

logger = logging.getLogger(__name__)

_FACTORY_EXAMPLES = "'Flat', 'HNSW32', 'IVF256,Flat', 'IVF256,PQ16', 'OPQ16,IVF256,PQ16', 'SQ8'"
_MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def _faiss_message(exc: BaseException) -> str:
    """The useful part of a FAISS error ("Error in <C++ signature> at <file>: Error: <this>")."""
    text = " ".join(str(exc).split())
    return text.rpartition("Error: ")[2] or type(exc).__name__


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
        #: Filtered searches over at most this many ids are exact (see :mod:`index.store.dense_filtering`).
        self.exact_filter_limit = EXACT_FILTER_LIMIT
        # Its row-id cache is built on the first filtered search; add drops it by starting a new one.
        self._filtering = FilteredSearch(index, factory=factory)

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
        inner = inner_storage(index)
        if getattr(inner, "do_polysemous_training", False):
            # The factory turns on polysemous training for PQ codes; it only serves
            # Hamming-filtered search (polysemous_ht), which we never use, and it only
            # permutes centroid numbering, so results are unchanged without it. It
            # was 99% of training time (6.6 s of 6.7 s for IVF16,PQ8 on 1k vectors).
            inner.do_polysemous_training = False
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
        return cls(index, factory=factory or describe(index), read_only=mapped)

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
            self._filtering = FilteredSearch(self._index, factory=self._factory)

    # ------------------------------------------------------------------ search
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
        search_params = faiss_params(self._index, params, factory=self._factory)
        if allowed is not None:
            return self._filtering.search(
                queries, k, params, allowed_ids(allowed), exact_filter_limit=self.exact_filter_limit
            )
        if len(queries) == 0:
            return np.empty((0, k), dtype=np.float32), np.empty((0, k), dtype=np.int64)
        scores, ids = self._index.search(queries, k, params=search_params)
        scores[ids < 0] = -np.inf
        return scores, ids

    # ------------------------------------------------------------------ reading vectors back
    @property
    def exact_storage(self) -> bool:
        """True when the stored vectors are the ones added (Flat, HNSW over Flat), not lossy codes."""
        return is_exact_storage(self._index)

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


def set_search_threads(threads: int) -> None:
    """FAISS's OpenMP threads for every search in this process (a process-wide setting, like torch's)."""
    if threads < 1:
        raise InvalidParameterError(f"threads must be >= 1, got {threads}")
    faiss.omp_set_num_threads(threads)
