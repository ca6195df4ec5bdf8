"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync dir.

After :func:`atomic_write` returns, a reader sees either the old file or the
complete new one, never a torn one, even after a power cut: the data is
fsynced before the rename and the directory entry is fsynced after it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "fsync_file"]


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


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Produce ``path`` atomically: ``write(tmp)`` fills a temp file that then replaces it.

    ``write`` receives the temporary path (in the same directory, so the final
    ``os.replace`` is a same-filesystem rename) and must create that file; it
    may be a library call that only accepts a file name, such as
    ``faiss.write_index``. On any error the temporary file is removed.

    >>> atomic_write(Path("info.json"), lambda p: p.write_text("{}"))  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
