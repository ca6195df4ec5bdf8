"""Vector shards of a build in progress: one ``.npz`` per committed chunk.

A shard holds a chunk's row ids (n,) int64 and vectors (n, dim) float32 and,
when documents are split into token windows (see :mod:`index.long_documents`), the
spans (n, 2) int64 of each vector's window: then a row id repeats once per
window of its document, in passage order. It is
written atomically and fsynced *before* the chunk's documents and progress
marker are committed to SQLite, so a committed marker always has its shard on
disk; a shard written for a chunk that never committed carries the number the
resumed run will use next, and is simply overwritten.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from index.atomic import atomic_write
from index.errors import IndexFileError

__all__ = ["iter_shards", "read_shard", "read_shard_spans", "remove_shards_from", "shard_path", "write_shard"]


def shard_path(directory: Path, number: int) -> Path:
    return Path(directory) / f"shard-{number:06d}.npz"


def write_shard(
    directory: Path, number: int, ids: np.ndarray, vectors: np.ndarray, spans: np.ndarray | None = None
) -> Path:
    """Write shard ``number`` atomically: ids (n,) int64, vectors (n, dim) float32, spans (n, 2) int64 or None."""
    path = shard_path(directory, number)
    arrays = {"ids": np.asarray(ids, dtype=np.int64), "vectors": np.asarray(vectors, dtype=np.float32)}
    if spans is not None:
        arrays["spans"] = np.asarray(spans, dtype=np.int64).reshape(-1, 2)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:  # a file object: np.savez would append ".npz" to a name
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # mypy also matches **arrays to allow_pickle: bool

    atomic_write(path, write)
    return path


def read_shard(directory: Path, number: int) -> tuple[np.ndarray, np.ndarray]:
    """Read shard ``number``: (n,) int64 ids, (n, dim) float32 vectors."""
    ids, vectors, _ = read_shard_spans(directory, number)
    return ids, vectors


def read_shard_spans(directory: Path, number: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read shard ``number``: (n,) int64 ids, (n, dim) float32 vectors, (n, 2) int64 spans or None."""
    path = shard_path(directory, number)
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, vectors = data["ids"], data["vectors"]
            spans = data["spans"] if "spans" in data.files else None
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise IndexFileError(
            f"shard {str(path)!r} is missing or corrupt although the checkpoint says it was committed; "
            f"the build's work directory is damaged: delete {str(path.parent.parent)!r} and build again ({exc})"
        ) from exc
    if ids.ndim != 1 or vectors.ndim != 2 or len(ids) != len(vectors):
        raise IndexFileError(f"shard {str(path)!r} holds ids {ids.shape} and vectors {vectors.shape}; they must agree")
    if spans is not None and spans.shape != (len(ids), 2):
        raise IndexFileError(f"shard {str(path)!r} holds {len(ids)} ids but spans of shape {spans.shape}")
    return ids, vectors, spans


def iter_shards(directory: Path, count: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
    """Shards ``0 .. count-1`` in order, one at a time (memory: one shard): ids, vectors, spans or None."""
    for number in range(count):
        yield read_shard_spans(directory, number)


def remove_shards_from(directory: Path, number: int) -> int:
    """Delete shards numbered ``number`` and above (left by an uncommitted chunk); return how many."""
    removed = 0
    for path in Path(directory).glob("shard-*.npz"):
        stem = path.stem.removeprefix("shard-")
        if stem.isdigit() and int(stem) >= number:
            path.unlink()
            removed += 1
    return removed
