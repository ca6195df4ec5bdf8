"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory.

After a write returns, a reader finds either the old file or the complete new
one, never a torn mix, even after a power cut: the data is fsynced before the
rename and the directory entry after it.

``experts/atomic.py`` and ``index/atomic.py`` are the same file (the two
packages may not import each other); ``tests/test_architecture.py`` keeps
them identical.
"""

from __future__ import annotations

import io
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = ["atomic_save_npy", "atomic_write", "atomic_write_bytes", "fsync_dir", "fsync_file", "fsync_tree"]


def fsync_file(path: Path) -> None:
    """Flush a file's data to stable storage."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (creations, renames) to stable storage."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (before renaming a staged tree into place)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fsync_file(Path(directory) / name)
        fsync_dir(Path(directory))


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Produce ``path`` atomically: ``write(tmp)`` fills a temp file that then replaces it.

    ``write`` receives the temporary path (in the same directory, so the final
    ``os.replace`` is a same-filesystem rename, and unique to this call) and
    must create that file; it may be a library call that only accepts a file
    name, such as ``faiss.write_index``. On any error the temporary file is removed.

    >>> atomic_write(Path("info.json"), lambda p: p.write_text("{}"))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically (the temp file is created private, as ``mkstemp`` does)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` made atomic."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
