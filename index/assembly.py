"""The end of a build: shards -> FAISS index, then a complete collection in a staging directory."""

from __future__ import annotations

import datetime as dt
import logging
import shutil
from pathlib import Path

import numpy as np

from index.atomic import fsync_dir
from index.checkpoint import BuildIdentity
from index.collection import DENSE_FILE, DOCSTORE_FILE, IndexInfo, file_sha256, write_info
from index.dense import DenseIndex
from index.docstore import DocStore
from index.errors import IndexFileError
from index.shards import iter_shards

__all__ = ["TRAIN_SAMPLE_SIZE", "assemble_dense", "stage_collection"]

logger = logging.getLogger(__name__)

TRAIN_SAMPLE_SIZE = 50_000
TRAIN_SEED = 0


def _live_mask(ids: np.ndarray, live: np.ndarray) -> np.ndarray:
    """Which of ``ids`` are in ``live`` (sorted ascending): (n,) bool, O(n log len(live))."""
    positions = np.searchsorted(live, ids).clip(max=len(live) - 1)
    return live[positions] == ids


def assemble_dense(shards_dir: Path, shard_count: int, live: np.ndarray, *, dim: int, factory: str) -> DenseIndex:
    """Build the FAISS index from the shards, keeping only row ids still ``live`` (sorted (n,) int64).

    Vectors are added shard by shard, in row-id order, so the result is the
    same however often the build was interrupted. An index type that needs
    training is trained first on a seeded sample of at most 50k live vectors.
    """
    dense = DenseIndex.create(dim, factory=factory)
    if dense.needs_training:
        rng = np.random.default_rng(TRAIN_SEED)
        sample_ids = np.sort(rng.choice(live, size=min(len(live), TRAIN_SAMPLE_SIZE), replace=False))
        parts = [vectors[_live_mask(ids, sample_ids)] for ids, vectors in iter_shards(shards_dir, shard_count)]
        sample = np.concatenate(parts)
        logger.info("training %r on %d sampled vectors", factory, len(sample))
        dense.train(sample)
    for ids, vectors in iter_shards(shards_dir, shard_count):
        mask = _live_mask(ids, live)
        dense.add(vectors[mask], ids[mask])
    if dense.ntotal != len(live):
        raise IndexFileError(
            f"the shards in {str(shards_dir)!r} hold {dense.ntotal} live vectors but the docstore has "
            f"{len(live)} documents; the work directory is damaged: delete it and build again"
        )
    return dense


def stage_collection(staging: Path, dense: DenseIndex, store: DocStore, *, identity: BuildIdentity) -> IndexInfo:
    """Write a complete, fsynced collection directory at ``staging`` (replacing any leftover)."""
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    dense.save(staging / DENSE_FILE)
    store.export(staging / DOCSTORE_FILE)
    names = (DENSE_FILE, DOCSTORE_FILE)
    info = IndexInfo(
        dim=dense.dim,
        factory=dense.factory,
        count=dense.ntotal,
        build_key=identity.build_key,
        corpus_fingerprints=identity.corpus_fingerprints,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        file_sizes={name: (staging / name).stat().st_size for name in names},
        checksums={name: file_sha256(staging / name) for name in names},
    )
    write_info(staging, info)
    fsync_dir(staging)
    return info
