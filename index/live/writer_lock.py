"""One writing process per live log: an ``flock`` on a file beside it, counted within the process.

A :class:`~index.live.live_collection.LiveCollection` serialises its writers with a thread
lock, which says nothing about other processes: a server and an ``rr
documents upsert`` run against the same expert would each build views of
their own and never see each other's writes. So a process that wants to
write a live log first takes this lock, without waiting; a second process is
refused at once with the holder's pid, and can open the collection read-only
instead (as CLI searches and extra Serve replicas do).

Within one process the lock is counted, not re-taken: while an expert is
being replaced, its old and its new version are both loaded for a moment
and both hold it. ``flock`` is released by the kernel when the process
dies, so a ``kill -9`` never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Self

from index.errors import LogLockedError

__all__ = ["WRITER_LOCK_FILE", "WriterLock"]

#: Fixed name, beside the log.
WRITER_LOCK_FILE = "writer.lock"


class _Held:
    """An open, flocked file and how many :class:`WriterLock` objects of this process share it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.count = 0


_held: dict[Path, _Held] = {}
_guard = threading.Lock()


class WriterLock:
    """The right to write the live log in ``directory``, for as long as this object is held.

    >>> lock = WriterLock.acquire(Path("experts/scifact/live"))  # doctest: +SKIP
    >>> lock.release()
    """

    def __init__(self, path: Path) -> None:
        """Private: use :meth:`acquire`."""
        self.path = path
        self._released = False

    @classmethod
    def acquire(cls, directory: Path) -> WriterLock:
        """Take the lock of ``directory`` (created when missing) without waiting.

        Raises :class:`LogLockedError`, naming the process that holds it, when
        another process does.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = (directory / WRITER_LOCK_FILE).resolve()
        with _guard:
            held = _held.get(path)
            if held is None:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    os.close(fd)
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                        raise
                    raise LogLockedError(
                        f"the live log in {str(directory)!r} is written by another process ({_holder(path)}); "
                        "send the documents to that process (the service's PUT /admin/experts/{name}/documents, "
                        "or `rr documents ... --url`), or stop it first"
                    ) from None
                # Who holds it, for the message another process gets (informational; the flock is the lock).
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
                held = _held[path] = _Held(fd)
            held.count += 1
        return cls(path)

    def release(self) -> None:
        """Give the lock back (idempotent); the file is unlocked when the last holder in this process releases."""
        with _guard:
            if self._released:
                return
            self._released = True
            held = _held[self.path]
            held.count -= 1
            if held.count == 0:
                del _held[self.path]
                fcntl.flock(held.fd, fcntl.LOCK_UN)
                os.close(held.fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return f"pid {pid}" if pid.isdigit() else "pid unknown"
