"""The end of a build: shards -> FAISS index -> a staged collection, with its lexical index -> published by rename.

The batch job (:mod:`index.build.indexing`) ends with every step here; a merge
(:mod:`index.live.merge`) writes its generation with :func:`stage_collection`,
:func:`stage_lexical` and :func:`publish_staged` too.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from index.atomic import fsync_dir
from index.build.checkpoint import BuildIdentity
from index.build.shards import iter_shards
from index.errors import IndexFileError, OutputExistsError
from index.long_documents import ChunkSettings
from index.store.analysis import LexicalSettings
from index.store.chunk_map import ChunkMap
from index.store.collection import DENSE_FILE, DOCSTORE_FILE
from index.store.collection_info import IndexInfo, file_sha256, write_info
from index.store.dense import DenseIndex
from index.store.docstore import DocStore
from index.store.lexical import LexicalIndex

__all__ = ["TRAIN_SAMPLE_SIZE", "TRAIN_SEED", "assemble_dense", "publish_staged", "stage_collection", "stage_lexical"]

logger = logging.getLogger(__name__)

TRAIN_SAMPLE_SIZE = 50_000
TRAIN_SEED = 0
_LEXICAL_CHUNK = 4096  # documents read back from the docstore at a time for the lexical index


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


def stage_lexical(
    staging: Path, store: DocStore, info: IndexInfo, settings: LexicalSettings, *, progress: bool
) -> IndexInfo:
    """Build the lexical index from ``store`` into the staged collection and record it in its ``index.json``."""
    live = store.all_row_ids()
    with tqdm(total=len(live), unit="doc", desc="lexical", disable=not progress, dynamic_ncols=True) as bar:

        def chunks() -> Iterator[tuple[np.ndarray, list[str]]]:
            for start in range(0, len(live), _LEXICAL_CHUNK):
                row_ids = live[start : start + _LEXICAL_CHUNK]
                docs = store.get(row_ids.tolist())
                yield row_ids, [doc.passage() for doc in docs if doc is not None]
                bar.update(len(row_ids))

        lexical = LexicalIndex.build(chunks(), settings)
    names = lexical.save(staging)
    info = replace(
        info,
        lexical=settings,
        file_sizes=info.file_sizes | {name: (staging / name).stat().st_size for name in names},
        checksums=info.checksums | {name: file_sha256(staging / name) for name in names},
    )
    write_info(staging, info)
    logger.info("lexical index: %d documents, %d distinct terms", len(lexical), lexical.vocabulary_size)
    return info


def publish_staged(staging: Path, out_dir: Path) -> None:
    """Move the complete staging directory to ``out_dir`` with one rename, then make it durable."""
    if out_dir.exists():  # checked again: it may have appeared while we were building
        raise OutputExistsError(f"out_dir {str(out_dir)!r} appeared during the build; not replacing it")
    os.rename(staging, out_dir)
    fsync_dir(out_dir.parent)
