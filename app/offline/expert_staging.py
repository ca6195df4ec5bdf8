"""Where ``rr train-expert`` assembles a new expert, and how it takes its place (see :mod:`app.offline.expert_training`).

A hidden, locked staging directory under the experts root, removed on every
exit; and the swap into place: a rename for a new expert, an atomic exchange
of the two directories (Linux ``renameat2(RENAME_EXCHANGE)``) for a
replacement, so the old version serves until the new one is complete.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from experts import ExpertDir, ExpertDirError, fsync_dir

__all__ = ["staging", "swap_into_place"]

logger = logging.getLogger(__name__)

_STAGING_LOCK = ".staging.lock"
_ORPHAN_AGE_S = 60.0


@contextmanager
def staging(root: Path, name: str) -> Iterator[Path]:
    """A hidden, locked staging directory under ``root``, removed on every exit.

    After a publish it holds only what was replaced (or nothing); after an
    error or Ctrl-C, the half-built expert.

    Orphans from killed runs (their lock is free, and they are a minute old,
    so a run that is just starting is not mistaken for one) are removed first.
    """
    for orphan in root.glob(f".{name}.train-*.tmp"):
        try:
            if time.time() - orphan.stat().st_mtime < _ORPHAN_AGE_S:
                continue
            with open(orphan / _STAGING_LOCK, "a+b") as handle:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(orphan, ignore_errors=True)
                logger.info("removed %s, left behind by an interrupted training run", orphan)
        except (BlockingIOError, FileNotFoundError, NotADirectoryError):
            continue  # in use by a running training, or already gone
    stage = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.train-", suffix=".tmp"))
    handle = open(stage / _STAGING_LOCK, "a+b")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        handle.close()


def _exchange(a: Path, b: Path) -> None:
    """Swap two directories in one atomic step (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    Raises ``NotImplementedError`` where the platform or filesystem cannot.
    """
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None) if sys.platform == "linux" else None
    if renameat2 is None:
        raise NotImplementedError("renameat2 is not available")
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise NotImplementedError(os.strerror(code))
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def swap_into_place(staged: Path, target: Path, *, old_version: int | None) -> None:
    """Make ``staged`` the expert at ``target``: a rename for a new one, an atomic exchange for a replacement.

    Refuses when ``target`` changed since training started (another writer
    published meanwhile), rather than silently discarding that change.
    """
    if old_version is None:
        try:
            os.rename(staged, target)  # fails if a directory of that name appeared meanwhile
        except OSError as exc:
            raise ExpertDirError(
                f"cannot publish expert {target.name!r}: {target} appeared while training ({exc})"
            ) from exc
        fsync_dir(target.parent)
        return
    current = ExpertDir(target)
    with current.locked():
        now = current.read_manifest().version
        if now != old_version:
            raise ExpertDirError(
                f"expert {target.name!r} changed while training (version {old_version} -> {now}); "
                "nothing was replaced, train again to include that change"
            )
        try:
            _exchange(staged, target)
        except NotImplementedError:
            # Two renames: for a moment no expert of that name exists (a loader then reports it missing).
            aside = staged.with_name(staged.name + ".old")
            os.rename(target, aside)
            try:
                os.rename(staged, target)
            except BaseException:
                os.rename(aside, target)
                raise
            os.rename(aside, staged)
    fsync_dir(target.parent)
