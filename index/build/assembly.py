"""The end of a build: shards -> FAISS index, then a complete collection in a staging directory."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import numpy as np

from index.atomic import fsync_dir
from index.build.checkpoint import BuildIdentity
from index.build.shards import iter_shards
from index.errors import IndexFileError
from index.long_documents import ChunkSettings
from index.store.chunk_map import ChunkMap
from index.store.collection import DENSE_FILE, DOCSTORE_FILE
from index.store.collection_info import IndexInfo, file_sha256, write_info
from index.store.dense import DenseIndex
from index.store.docstore import DocStore

__all__ = ["TRAIN_SAMPLE_SIZE", "assemble_dense", "stage_collection"]

logger = logging.getLogger(__name__)

TRAIN_SAMPLE_SIZE = 50_000
TRAIN_SEED = 0


def _live_mask(ids: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Which of ``ids`` are in ``live`` (sorted ascending): (n,) bool, O(n log len(live))."""
    positions = np.searchsorted(live, ids).clip(max=len(live) - 1)
    return live[positions] == ids


def _chunk_map(shards_dir: Path, shard_count: int, live: np.ndarray) -> ChunkMap | None:
    """The live vectors' rows and spans when some document has several (None: one vector per row).

    Chunk ids are positions in shard order, which is row order (rows are
    allocated as chunks commit), a document's windows consecutive.
    """
    rows, starts, ends, chunked = [], [], [], False
    for ids, _, spans in iter_shards(shards_dir, shard_count):
        mask = _live_mask(ids, live)
        rows.append(ids[mask])
        chunked = chunked or (len(rows[-1]) > 1 and bool((rows[-1][1:] == rows[-1][:-1]).any()))
        if spans is not None:
            starts.append(spans[mask, 0])
            ends.append(spans[mask, 1])
    if not chunked:
        return None
    if len(starts) != len(rows):
        raise IndexFileError(
            f"the shards in {str(shards_dir)!r} repeat row ids without spans; delete the work directory"
        )
    return ChunkMap(np.concatenate(rows), np.concatenate(starts), np.concatenate(ends))


def assemble_dense(
    shards_dir: Path, shard_count: int, live: np.ndarray, *, dim: int, factory: str
) -> tuple[DenseIndex, ChunkMap | None]:
    """Build the FAISS index from the shards, keeping only row ids still ``live`` (sorted (n,) int64).

    Vectors are added shard by shard, in row-id order, so the result is the
    same however often the build was interrupted. An index type that needs
    training is trained first on a seeded sample of the vectors of at most 50k
    live rows. When some document was split into chunks, the vectors go in
    under chunk ids and the :class:`ChunkMap` that maps them to rows comes
    back too; else the ids are rows and the map is None.
    """
    chunks = _chunk_map(shards_dir, shard_count, live)
    dense = DenseIndex.create(dim, factory=factory)
    if dense.needs_training:
        rng = np.random.default_rng(TRAIN_SEED)
        sample_ids = np.sort(rng.choice(live, size=min(len(live), TRAIN_SAMPLE_SIZE), replace=False))
        parts = [vectors[_live_mask(ids, sample_ids)] for ids, vectors, _ in iter_shards(shards_dir, shard_count)]
        sample = np.concatenate(parts)
        logger.info("training %r on %d sampled vectors", factory, len(sample))
        dense.train(sample)
    added = 0
    for ids, vectors, _ in iter_shards(shards_dir, shard_count):
        mask = _live_mask(ids, live)
        kept = int(mask.sum())
        dense.add(vectors[mask], ids[mask] if chunks is None else np.arange(added, added + kept, dtype=np.int64))
        added += kept
    documents = len(live) if chunks is None else chunks.documents
    if dense.ntotal != (len(live) if chunks is None else len(chunks)) or documents != len(live):
        raise IndexFileError(
            f"the shards in {str(shards_dir)!r} hold {dense.ntotal} live vectors of {documents} documents but the "
            f"docstore has {len(live)} documents; the work directory is damaged: delete it and build again"
        )
    return dense, chunks


def stage_collection(
    staging: Path,
    dense: DenseIndex,
    store: DocStore,
    *,
    identity: BuildIdentity,
    chunks: ChunkMap | None = None,
    chunking: ChunkSettings | None = None,
) -> IndexInfo:
    """Write a complete, fsynced collection directory at ``staging`` (replacing any leftover).

    ``chunks`` (the map of a chunked ``dense``) is written as ``chunks.npy``;
    ``chunking`` is the long-document policy recorded in ``index.json``.
    """
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    dense.save(staging / DENSE_FILE)
    store.export(staging / DOCSTORE_FILE)
    names: tuple[str, ...] = (DENSE_FILE, DOCSTORE_FILE)
    if chunks is not None:
        names += (chunks.save(staging),)
    info = IndexInfo(
        dim=dense.dim,
        factory=dense.factory,
        count=dense.ntotal if chunks is None else chunks.documents,
        build_key=identity.build_key,
        corpus_fingerprints=identity.corpus_fingerprints,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        file_sizes={name: (staging / name).stat().st_size for name in names},
        checksums={name: file_sha256(staging / name) for name in names},
        chunking=chunking,
        chunks=None if chunks is None else len(chunks),
    )
    write_info(staging, info)
    fsync_dir(staging)
    return info
