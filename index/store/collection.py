"""A published collection: one read-only directory with fixed file names.

::

    <directory>/
        dense.faiss   the FAISS index (IDMap2, inner product), ids = docstore row ids
        docs.sqlite   the docstore (rollback-journal mode: opening it writes nothing)
        index.json    IndexInfo: dim, factory, count, provenance, lexical settings, file sizes and checksums
                      (see index.store.collection_info)
        lexical-*     the BM25 index (see index.store.lexical), when the collection has one
        chunks.npy    chunk id -> (row, start, end), when some document was split into chunks
                      (see index.store.chunk_map); then dense.faiss holds chunk ids, not row ids

A directory is produced complete by the indexing job and published with one
``rename``; nothing in it is modified afterwards, so any number of processes
can open it at once (the FAISS vectors memory-mapped and shared).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from index.errors import IndexFileError, NoLexicalIndexError
from index.long_documents import text_span
from index.store.chunk_map import CHUNKS_FILE, ChunkMap
from index.store.chunked_dense import ChunkedDense
from index.store.collection_info import INFO_FILE, IndexInfo, file_sha256, read_info
from index.store.dense import DenseIndex
from index.store.docstore import DocStore
from index.store.filter_tree import FilterExpr
from index.store.lexical import LexicalIndex
from index.store.metadata_fields import FieldInfo
from index.store.search_params import SearchParams
from index.store.shared_idf import SharedIdf

__all__ = ["DENSE_FILE", "DOCSTORE_FILE", "Collection", "Hit"]

logger = logging.getLogger(__name__)

DENSE_FILE = "dense.faiss"
DOCSTORE_FILE = "docs.sqlite"


@dataclass(frozen=True)
class Hit:
    """One search result: the corpus id, its score, and the stored document.

    ``row`` is the docstore row id, the key dense and lexical search share
    (corpus ids are strings and may be re-used by an upsert; rows are not).

    ``span`` is ``(start, end)``, character offsets into ``text``
    (``text[start:end]``) of the document's chunk that scored best against
    the query, for a document that was split into chunks (see
    :mod:`index.long_documents`); None when the document was embedded whole (it
    fits the encoder's limit, or its collection truncates long documents), or
    when no query vector was given to find the best chunk. A chunk that
    starts in the title starts at 0.
    """

    id: str
    score: float
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)
    row: int = -1
    span: tuple[int, int] | None = None


class Collection:
    """A published collection opened for search: dense index + docstore + info.

    >>> with Collection.open(Path("experts/scifact/index")) as collection:  # doctest: +SKIP
    ...     hits = collection.search(query_vectors, 10)   # (nq, dim) float32 -> nq lists of Hit
    """

    def __init__(
        self,
        directory: Path,
        info: IndexInfo,
        dense: DenseIndex | ChunkedDense,
        docstore: DocStore,
        lexical: LexicalIndex | None,
    ) -> None:
        """Private: use :meth:`open`."""
        self._directory = directory
        self._info = info
        self._dense = dense
        self._docstore = docstore
        self._lexical = lexical

    @classmethod
    def open(
        cls,
        directory: Path,
        *,
        mmap: bool = True,
        verify_checksums: bool = False,
        search_params: SearchParams | None = None,
    ) -> Collection:
        """Open and validate a collection directory.

        Checks that the three files exist, ``index.json`` parses, file sizes
        match what was recorded (and checksums, when ``verify_checksums``: this
        reads every byte, so it is off by default), and that dims and counts
        agree across the files. The lexical index is opened too when
        ``index.json`` records one (its score matrix memory-mapped like the
        vectors when ``mmap``). Any failure is an :class:`IndexFileError` that
        names the file and what was wrong.
        """
        directory = Path(directory)
        if not directory.is_dir():
            raise IndexFileError(f"collection directory {str(directory)!r} does not exist or is not a directory")
        for name in (DENSE_FILE, DOCSTORE_FILE, INFO_FILE):
            if not (directory / name).is_file():
                raise IndexFileError(
                    f"collection {str(directory)!r} is missing {name!r} "
                    f"(a collection holds {DENSE_FILE!r}, {DOCSTORE_FILE!r} and {INFO_FILE!r})"
                )
        info = read_info(directory)
        for name, size in info.file_sizes.items():
            if not (directory / name).is_file():
                raise IndexFileError(f"collection {str(directory)!r} is missing {name!r}, which {INFO_FILE} lists")
            actual = (directory / name).stat().st_size
            if actual != size:
                raise IndexFileError(f"{str(directory / name)!r} is {actual} bytes but {INFO_FILE} records {size}")
        if verify_checksums:
            for name, digest in info.checksums.items():
                if file_sha256(directory / name) != digest:
                    raise IndexFileError(f"{str(directory / name)!r} does not match its checksum in {INFO_FILE}")
        flat = DenseIndex.load(directory / DENSE_FILE, mmap=mmap, factory=info.factory)
        dense: DenseIndex | ChunkedDense = flat
        vectors = flat.ntotal
        if CHUNKS_FILE in info.file_sizes:
            chunks = ChunkMap.load(directory / CHUNKS_FILE)
            if len(chunks) != vectors or info.chunks != vectors:
                raise IndexFileError(
                    f"collection {str(directory)!r} is inconsistent: {CHUNKS_FILE} maps {len(chunks)} chunks, "
                    f"{DENSE_FILE} holds {vectors} vectors and {INFO_FILE} says {info.chunks}"
                )
            dense = ChunkedDense(flat, chunks)
        if search_params is not None:
            dense.default_params = search_params
        lexical = None if info.lexical is None else LexicalIndex.load(directory, info.lexical, mmap=mmap)
        docstore = DocStore.open(directory / DOCSTORE_FILE, readonly=True)
        try:
            problems = []
            if dense.dim != info.dim:
                problems.append(f"{DENSE_FILE} has dim {dense.dim} but {INFO_FILE} says {info.dim}")
            if dense.ntotal != info.count:
                what = "documents' chunks" if isinstance(dense, ChunkedDense) else "vectors"
                problems.append(f"{DENSE_FILE} holds {dense.ntotal} {what} but {INFO_FILE} says {info.count}")
            if (stored := len(docstore)) != info.count:
                problems.append(f"{DOCSTORE_FILE} holds {stored} documents but {INFO_FILE} says {info.count}")
            if lexical is not None and len(lexical) != info.count:
                problems.append(f"the lexical index holds {len(lexical)} documents but {INFO_FILE} says {info.count}")
            if problems:
                raise IndexFileError(f"collection {str(directory)!r} is inconsistent: " + "; ".join(problems))
        except BaseException:
            docstore.close()
            raise
        return cls(directory, info, dense, docstore, lexical)

    @property
    def directory(self) -> Path:
        return self._directory

    @property
    def info(self) -> IndexInfo:
        return self._info

    @property
    def dense(self) -> DenseIndex | ChunkedDense:
        """The dense index, searched in row ids (a :class:`ChunkedDense` when documents were split into chunks)."""
        return self._dense

    @property
    def chunked(self) -> bool:
        """True when some document is stored as several chunk vectors (``index.json`` records ``chunks``)."""
        return isinstance(self._dense, ChunkedDense)

    @property
    def docstore(self) -> DocStore:
        return self._docstore

    @property
    def has_lexical(self) -> bool:
        """True when the collection was built with a lexical (BM25) index."""
        return self._lexical is not None

    @property
    def lexical(self) -> LexicalIndex:
        """The lexical index; :class:`NoLexicalIndexError` when the collection has none."""
        if self._lexical is None:
            raise NoLexicalIndexError(
                f"collection {str(self._directory)!r} has no lexical index; "
                "build it again with build_index(..., lexical=LexicalSettings())"
            )
        return self._lexical

    def __len__(self) -> int:
        return self._info.count

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        params: SearchParams | None = None,
        allowed: Iterable[int] | np.ndarray | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` hits per query: (nq, dim) float32 -> ``nq`` lists of at most ``k`` hits.

        One dense search for the batch, then one docstore fetch for every id it
        returned. ``allowed`` restricts the hits to those row ids (what
        :meth:`select` returns for a metadata filter), inside the FAISS search,
        so a query gets ``k`` hits whenever ``k`` documents are allowed. Safe to
        call from several threads.

        >>> allowed = collection.select({"year": {"gte": 2000}})  # doctest: +SKIP
        >>> collection.search(query_vectors, 10, allowed=allowed)
        """
        scores, ids = self._dense.search(queries, k, params=params, allowed=allowed)
        return self.hits(scores, ids, queries=queries)

    def select(self, filter: FilterExpr | Mapping[str, Any], *, check: bool = True) -> np.ndarray:
        """Row ids of the documents matching a metadata filter: (n,) int64, sorted; see :mod:`index.store.filters`.

        Pass the result as ``allowed=`` to :meth:`search` and
        :meth:`search_lexical`. A malformed filter is an
        :class:`~index.errors.InvalidFilterError` naming the clause, a field no
        document has an :class:`~index.errors.UnknownFieldError` listing the known ones.
        """
        return self._docstore.select(filter, check=check)

    def metadata_fields(self) -> dict[str, FieldInfo]:
        """The metadata fields a filter may name, with their JSON types (recorded when the collection was built)."""
        return self._docstore.metadata_fields()

    def search_lexical(
        self,
        queries: Sequence[str],
        k: int,
        *,
        allowed: Iterable[int] | np.ndarray | None = None,
        shared_idf: SharedIdf | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top-``k`` per query text: (nq, k) float32 scores, (nq, k) int64 row ids (-inf / -1 pads).

        The same shapes, order and ids as :meth:`DenseIndex.search`, so the two
        lists can be fused by id; :meth:`hits` turns either into documents.
        ``allowed`` restricts the results to those row ids (what :meth:`select`
        returns), applied inside bm25s as a weight mask, like the dense side;
        ``shared_idf`` scores with several collections' IDF (the router's votes).
        Safe to call from several threads.

        >>> scores, ids = collection.search_lexical(["heat transfer"], 10)  # doctest: +SKIP
        >>> collection.hits(scores, ids)[0][0].id
        '1234'
        """
        return self.lexical.search(queries, k, allowed=allowed, shared_idf=shared_idf)

    def hits(self, scores: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None = None) -> list[list[Hit]]:
        """(nq, k) scores and row ids (-1 = no hit) -> ``nq`` lists of :class:`Hit`, one docstore fetch.

        ``queries``: the (nq, dim) query vectors the ids were searched with
        (dense or lexically: for a fused list give the dense query vectors).
        With them, a hit on a chunked document carries its best chunk's
        :attr:`Hit.span`; without them (or in an unchunked collection) every
        span is None.
        """
        spans = self.best_spans(queries, ids) if queries is not None else None
        unique = np.unique(ids[ids >= 0])
        docs = dict(zip(unique.tolist(), self._docstore.get(unique.tolist()), strict=True))
        results: list[list[Hit]] = []
        for q, (row_scores, row_ids) in enumerate(zip(scores.tolist(), ids.tolist(), strict=True)):
            hits = []
            for score, row_id in zip(row_scores, row_ids, strict=True):
                doc = docs.get(row_id)
                if doc is None:
                    if row_id >= 0:
                        logger.warning(
                            "%s: row id %d came from a search but is not in %s", self._directory, row_id, DOCSTORE_FILE
                        )
                    continue
                span = None if spans is None or (found := spans[q].get(row_id)) is None else text_span(doc, *found)
                hits.append(
                    Hit(
                        id=doc.id,
                        score=score,
                        title=doc.title,
                        text=doc.text,
                        metadata=doc.metadata,
                        row=row_id,
                        span=span,
                    )
                )
            results.append(hits)
        return results

    def best_spans(self, queries: np.ndarray, ids: np.ndarray) -> list[dict[int, tuple[int, int]]]:
        """Per query, row -> passage span (title + " " + text) of its best chunk, for the chunked rows among ``ids``.

        (nq, dim) query vectors, (nq, k) rows -> nq dicts; empty in an unchunked collection.
        """
        if not isinstance(self._dense, ChunkedDense):
            return [{} for _ in range(len(ids))]
        return self._dense.best_spans(np.ascontiguousarray(queries, dtype=np.float32), np.asarray(ids))

    def vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every document's stored vector, by docstore row id ascending: (n,) int64, (n, dim) float32.

        In a chunked collection, each document's first chunk (see :meth:`ChunkedDense.vectors`).

        Exact-storage indexes only (``Flat``, ``HNSW<M>``); see :meth:`DenseIndex.vectors`.
        """
        return self._dense.vectors()

    def close(self) -> None:
        self._docstore.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
