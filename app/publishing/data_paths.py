"""Paths a caller names (expert directories, gate sets, job corpora): under the data root once links are followed.

One check for every route that reads a file or publishes a directory the server did not make, so a
path can never reach outside the data root (``../``, an absolute path, a
symlink pointing out): outside is a 403 ``path_not_allowed``, anything else
wrong (missing, not a file, unresolvable) a 422 naming the path.

>>> data_file("scifact/corpus.jsonl", Path("data/experts"), what="corpus")  # doctest: +SKIP
PosixPath('/srv/data/experts/scifact/corpus.jsonl')
"""

from __future__ import annotations

import errno
from pathlib import Path

from app.errors import ExpertRejectedError, InvalidRequestError, PathNotAllowedError

__all__ = ["data_file", "expert_directory", "resolved"]


def data_file(path: str, root: Path, *, what: str) -> Path:
    """``path`` (relative to ``root``, or absolute) resolved; it must be a file under ``root``.

    ``what`` names the file in messages ("gate queries file", "corpus").
    """
    root = Path(root).resolve()
    candidate = Path(path) if Path(path).is_absolute() else root / path
    try:
        resolved = candidate.resolve()
        is_file = resolved.is_file()
    except (OSError, ValueError, RuntimeError) as exc:  # a NUL byte, a name too long, a symlink loop
        raise InvalidRequestError(f"{what} {path!r} cannot be resolved: {exc}") from exc
    if not resolved.is_relative_to(root):
        raise PathNotAllowedError(
            f"{what} {path!r} resolves to {resolved}, outside the data root {root}: "
            "files named in a request must lie under the data root"
        )
    if not is_file:
        raise InvalidRequestError(f"{what} {path!r} does not exist under the data root {root}")
    return resolved


def resolved(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop raised as OSError (ELOOP) as Python 3.13 does; 3.11 raises RuntimeError."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, f"{exc}") from exc


def expert_directory(path: str, root: Path) -> Path:
    """An expert directory named by the caller, which must lie under the (resolved) data root once links are followed."""
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        directory = resolved(candidate)
    except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
        raise InvalidRequestError(f"path {path!r} cannot be resolved: {exc}") from exc
    if not directory.is_relative_to(root):
        raise PathNotAllowedError(
            f"path {path!r} resolves to {directory}, outside the data root {root}: "
            "experts can only be published from directories under the data root"
        )
    if directory == root:
        raise InvalidRequestError(f"path {path!r} is the data root itself; name an expert directory inside it")
    try:
        is_directory = directory.is_dir()
    except OSError as exc:  # a component longer than the filesystem allows (ENAMETOOLONG)
        raise InvalidRequestError(f"path {path!r} cannot be resolved: {exc.strerror}") from exc
    if not is_directory:
        raise ExpertRejectedError(f"path {path!r} is not a directory under the data root {root}")
    return directory
