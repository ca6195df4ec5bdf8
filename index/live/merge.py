"""Folding a live view into a new main segment: a complete collection generation, published by one rename.

The new generation holds the main segment's surviving rows and the delta's
rows **under the same row ids** (delta rows are allocated above every main
row, so the order is kept). Stable ids are what let a merge run beside live
writes: a tombstone written during the merge names a row that still means the
same document in the new generation, so the writer never has to know a merge
is running.

Chunked documents stay chunked: every surviving chunk of the main segment (read
back with its span from ``chunks.npy``) and every chunk the log holds goes into
the new generation, renumbered in row order, with a new ``chunks.npy``; the
generation keeps the main segment's long-document policy. When no document
has more than one chunk, the ids are rows and no map is written.

Nothing is re-embedded when the main index stores exact vectors (Flat, HNSW):
its vectors are read back from FAISS and the delta's come from the log. A
lossy index (IVF-PQ, SQ, OPQ) keeps codes, not vectors, so its surviving
documents are re-embedded from the docstore text with the caller's embed
function (the same base encoder the documents were indexed with). The BM25
index is rebuilt over the merged docstore, so its statistics are exact again.

The generation records in ``live.json`` which log and sequence number it
contains (see :func:`read_marker`): a process killed after the new generation
was committed but before the log was truncated finds out on the next open and
truncates then, instead of applying those writes twice.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.atomic import atomic_write, fsync_dir
from index.build.assembly import TRAIN_SAMPLE_SIZE, TRAIN_SEED, publish_staged, stage_collection, stage_lexical
from index.build.checkpoint import BuildIdentity
from index.build.embedding import EmbedFn, checked_embed
from index.errors import IndexFileError, InvalidParameterError
from index.live.log import metadata_json
from index.live.view import LiveView
from index.store.chunk_map import ChunkMap
from index.store.chunked_dense import ChunkedDense
from index.store.collection_info import IndexInfo, file_sha256, write_info
from index.store.dense import DenseIndex
from index.store.docstore import DocStore

__all__ = ["MARKER_FILE", "MergeMarker", "MergePolicy", "read_marker", "write_generation"]

logger = logging.getLogger(__name__)

MARKER_FILE = "live.json"
_CHUNK = 1024  # documents read (and, for lossy indexes, re-embedded) at a time


@dataclass(frozen=True)
class MergeMarker:
    """What ``live.json`` in a merged generation says: it contains log ``log_id`` up to write ``seq``."""

    log_id: str
    seq: int
    next_row_id: int


def read_marker(directory: Path) -> MergeMarker | None:
    """The merge marker of a collection directory; None for a generation the batch job built."""
    path = Path(directory) / MARKER_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return MergeMarker(log_id=str(data["log_id"]), seq=int(data["seq"]), next_row_id=int(data["next_row_id"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexFileError(f"merge marker {str(path)!r} is not valid: {exc}") from exc


@dataclass(frozen=True)
class MergePolicy:
    """When a live collection should be merged: the delta or the tombstones grew past a bound.

    Both slow searches down (the delta is searched beside the main index and
    its BM25 index is rebuilt on every write; tombstones make the main search
    over-fetch), and both are cleared by a merge.

    >>> MergePolicy(max_delta_docs=10_000, max_fraction=0.1).due(main_docs=5000, delta_docs=600, tombstones=0)
    True
    """

    max_delta_docs: int = 2_000  # the delta's BM25 index is rebuilt after writes: ~0.15 s at 1,000 docs
    max_fraction: float = 0.10  # of the main segment's documents, for the delta and the tombstones each
    min_changes: int = 100  # never merge for fewer changes than this

    def due(self, *, main_docs: int, delta_docs: int, tombstones: int) -> bool:
        changes = delta_docs + tombstones
        if changes < self.min_changes:
            return False
        bound = self.max_fraction * max(main_docs, 1)
        return delta_docs >= self.max_delta_docs or delta_docs >= bound or tombstones >= bound


def _read_docs(view: LiveView, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list]]:
    for start in range(0, len(rows), _CHUNK):
        chunk = rows[start : start + _CHUNK]
        docs = view.main.docstore.get(chunk.tolist())
        if any(doc is None for doc in docs):
            raise IndexFileError(f"{view.main.directory}: a row of its index is missing from its docstore")
        yield chunk, docs


def _main_chunks(view: LiveView, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, starts and ends of every chunk of the surviving main rows ``keep`` (ascending): (C,) int64 each.

    An unchunked main segment has one chunk per row, the whole passage; its
    spans are only read (one docstore pass) when the delta brings chunked
    documents, so that the merged generation needs a map.
    """
    dense = view.main.dense
    if isinstance(dense, ChunkedDense):
        mask = np.isin(dense.chunks.rows, keep)
        return dense.chunks.rows[mask], dense.chunks.starts[mask], dense.chunks.ends[mask]
    zeros = np.zeros(len(keep), dtype=np.int64)
    if not view.delta.chunked:
        return keep, zeros, zeros  # no map will be written: the spans are never used
    lengths = [len(doc.passage()) for _, docs in _read_docs(view, keep) for doc in docs]
    return keep, zeros, np.asarray(lengths, dtype=np.int64)


def _main_vectors(
    view: LiveView,
    keep: np.ndarray,
    chunks: tuple[np.ndarray, np.ndarray, np.ndarray],
    embed: EmbedFn | None,
    *,
    progress: bool,
) -> np.ndarray:
    """Vectors of the chunks of the surviving main rows ``keep`` (ascending): (C, dim) float32."""
    dense = view.main.dense
    if dense.exact_storage:
        if isinstance(dense, ChunkedDense):
            rows, vectors, _, _ = dense.chunk_vectors()
            return vectors[np.isin(rows, keep)]
        ids, vectors = dense.vectors()
        return vectors[np.isin(ids, keep, assume_unique=True)]
    if embed is None:
        raise InvalidParameterError(
            f"the main index is {dense.factory!r}, which keeps compressed codes: merging it re-embeds its "
            "documents, so give the embed function"
        )
    rows, starts, ends = chunks
    parts = []
    with tqdm(total=len(keep), unit="doc", desc="re-embed", disable=not progress, dynamic_ncols=True) as bar:
        for chunk, docs in _read_docs(view, keep):
            texts = [doc.passage() for doc in docs]
            if isinstance(dense, ChunkedDense):  # the same windows again, so the same chunks as before
                passages = dict(zip(chunk.tolist(), texts, strict=True))
                mask = np.isin(rows, chunk)
                windows = zip(rows[mask].tolist(), starts[mask].tolist(), ends[mask].tolist(), strict=True)
                texts = [passages[r][a:b] for r, a, b in windows]
            parts.append(checked_embed(embed, texts, dense.dim))
            bar.update(len(docs))
    return np.concatenate(parts) if parts else np.zeros((0, dense.dim), dtype=np.float32)


def _write_docstore(path: Path, view: LiveView, keep: np.ndarray, next_row_id: int) -> DocStore:
    """A docstore of the surviving main rows and the delta rows, under their own row ids."""
    store = DocStore.create(path)
    insert = "INSERT INTO documents (row_id, doc_id, title, text, metadata) VALUES (?, ?, ?, ?, ?)"
    try:
        with store.transaction() as conn:
            for chunk, docs in _read_docs(view, keep):
                rows = zip(chunk.tolist(), docs, strict=True)
                conn.executemany(insert, [(r, d.id, d.title, d.text, metadata_json(d)) for r, d in rows])
            delta = [view.delta.entries[int(r)] for r in view.delta.row_ids]
            conn.executemany(
                insert,
                [
                    (e.row_id, e.document.id, e.document.title, e.document.text, metadata_json(e.document))
                    for e in delta
                ],
            )
            # AUTOINCREMENT's high-water mark: row ids handed out and since deleted are never reused.
            conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'documents'", (next_row_id - 1,))
    except BaseException:
        store.close()
        raise
    return store


def _dense(view: LiveView, vectors: np.ndarray, ids: np.ndarray) -> DenseIndex:
    dense = DenseIndex.create(view.main.dense.dim, factory=view.main.info.factory)
    if dense.needs_training:
        rng = np.random.default_rng(TRAIN_SEED)
        sample = rng.choice(len(vectors), size=min(len(vectors), TRAIN_SAMPLE_SIZE), replace=False)
        dense.train(vectors[np.sort(sample)])
    dense.add(vectors, ids)
    return dense


def write_generation(
    view: LiveView,
    out_dir: Path,
    *,
    log_id: str,
    next_row_id: int,
    embed: EmbedFn | None = None,
    progress: bool = False,
) -> IndexInfo:
    """Write ``view`` as a new collection at ``out_dir`` (which must not exist), published by one rename.

    It is staged in a hidden sibling directory first (same filesystem), so a
    process killed at any point leaves either no ``out_dir`` or a complete one.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise InvalidParameterError(f"out_dir {str(out_dir)!r} already exists; a merge publishes into a new directory")
    if len(view) == 0:
        raise InvalidParameterError("cannot merge a collection whose every document was deleted")
    staging = out_dir.with_name(f".{out_dir.name}.merging")
    scratch = out_dir.with_name(f".{out_dir.name}.docs.sqlite")
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    keep = view.live_main_ids()
    main_chunks = _main_chunks(view, keep)
    delta_rows, delta_vectors, delta_starts, delta_ends = view.delta.chunk_arrays()
    vectors = np.concatenate([_main_vectors(view, keep, main_chunks, embed, progress=progress), delta_vectors])
    rows = np.concatenate([main_chunks[0], delta_rows])
    chunks = ChunkMap(
        rows, np.concatenate([main_chunks[1], delta_starts]), np.concatenate([main_chunks[2], delta_ends])
    )
    chunked = chunks.chunked
    dense = _dense(view, vectors, np.arange(len(rows), dtype=np.int64) if chunked else rows)
    store = _write_docstore(scratch, view, keep, next_row_id)
    try:
        info = view.main.info
        identity = BuildIdentity(info.build_key, info.dim, info.factory, True, info.corpus_fingerprints)
        staged = stage_collection(
            staging, dense, store, identity=identity, chunks=chunks if chunked else None, chunking=info.chunking
        )
        if info.lexical is not None:
            staged = stage_lexical(staging, store, staged, info.lexical, progress=progress)
    finally:
        store.close()
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{scratch}{suffix}").unlink(missing_ok=True)
    marker = json.dumps({"log_id": log_id, "seq": view.seq, "next_row_id": next_row_id}, indent=2) + "\n"
    atomic_write(staging / MARKER_FILE, lambda tmp: tmp.write_text(marker, encoding="utf-8"))
    staged = replace(
        staged,
        file_sizes=staged.file_sizes | {MARKER_FILE: (staging / MARKER_FILE).stat().st_size},
        checksums=staged.checksums | {MARKER_FILE: file_sha256(staging / MARKER_FILE)},
    )
    write_info(staging, staged)
    fsync_dir(staging)
    try:
        publish_staged(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("merged %d documents (%d from the delta) into %s", staged.count, len(view.delta), out_dir)
    return staged
