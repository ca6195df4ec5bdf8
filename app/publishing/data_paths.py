"""Files a caller names by path (gate sets, job corpora): under the data root once links are followed, and files.

One check for every route that reads a file the server did not make, so a
path can never reach outside the data root (``../``, an absolute path, a
symlink pointing out): outside is a 403 ``path_not_allowed``, anything else
wrong (missing, not a file, unresolvable) a 422 naming the path.

>>> data_file("scifact/corpus.jsonl", Path("data/experts"), what="corpus")  # doctest: +SKIP
PosixPath('/srv/data/experts/scifact/corpus.jsonl')
"""

from __future__ import annotations

from pathlib import Path

from app.errors import InvalidRequestError, PathNotAllowedError

__all__ = ["data_file"]


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
