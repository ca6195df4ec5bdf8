"""Files a client uploads for a job (a corpus, queries, qrels), received under ``<root>/.uploads/`` and named by path.

A client without access to the server's disk sends each file with ``POST
/admin/uploads`` and names the path it gets back in ``POST /admin/jobs``, as
it would name a file it had put under the data root itself. A file is
received under a hidden temporary name (``.receiving-<id>``), fsynced, and
renamed to ``<id>-<name>`` only once complete, so a job never reads half a
file; a body past the limit, a dropped connection or any other error removes
the partial file, and nothing appears. What a server killed mid-upload left
is removed at its next start
(:func:`app.publishing.discards.discard_interrupted_writes`). Uploaded files
stay until deleted (``DELETE /admin/uploads/{name}``): several jobs may use
one (a corpus to index, then its queries to tune fusion on).

>>> uploads = DataUploads(root, max_bytes=1 << 30)  # doctest: +SKIP
>>> receiving = uploads.receive("corpus.jsonl.gz")  # doctest: +SKIP
>>> receiving.write(chunk); receiving.commit().path  # doctest: +SKIP
'.uploads/u20261205T150400Z-1a2b3c-corpus.jsonl.gz'
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from app.errors import InvalidRequestError, PayloadTooLargeError, UnknownUploadError
from experts import fsync_dir

__all__ = ["FILE_UPLOADS_DIR", "RECEIVING_PREFIX", "UPLOAD_NAME_PATTERN", "DataUploads", "Receiving", "UploadedFile"]

#: Uploaded job files, under the data root (hidden: never taken for an expert; not ``uploads/``, which holds
#: unpacked expert archives).
FILE_UPLOADS_DIR = ".uploads"
#: The hidden name of a file still being received.
RECEIVING_PREFIX = ".receiving-"
#: What a client may call its file: the suffix says the format (``.jsonl``, ``.jsonl.gz``, ``.tsv``).
UPLOAD_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_NAME = re.compile(UPLOAD_NAME_PATTERN)
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class UploadedFile:
    """A file received whole: its path relative to the data root (what a job names), size, and SHA-256."""

    path: str
    name: str
    bytes: int
    sha256: str | None
    created_at: float


class Receiving:
    """One file being received: ``write`` its chunks, then ``commit``; ``discard`` (or any error) leaves nothing.

    Writes past ``max_bytes`` raise :class:`PayloadTooLargeError` after removing the partial file.
    """

    def __init__(self, root: Path, name: str, *, max_bytes: int) -> None:
        self.root, self.name, self.max_bytes = root, name, max_bytes
        self.id = f"u{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"
        self.directory = root / FILE_UPLOADS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.temporary = self.directory / f"{RECEIVING_PREFIX}{self.id}"
        self.target = self.directory / f"{self.id}-{name}"
        self.size = 0
        self._hash = hashlib.sha256()
        self._head = b""
        self._file: BinaryIO | None = open(self.temporary, "xb")  # noqa: SIM115 - closed by commit or discard

    def write(self, chunk: bytes) -> None:
        if self._file is None:
            raise ValueError(f"upload {self.name!r} is no longer being received")
        self.size += len(chunk)
        if self.size > self.max_bytes:
            self.discard()
            raise PayloadTooLargeError(
                f"uploaded file {self.name!r} is larger than the limit of {self.max_bytes} bytes "
                "(RR_MAX_UPLOAD_BYTES); nothing was kept"
            )
        if len(self._head) < len(_GZIP_MAGIC):
            self._head = (self._head + chunk)[: len(_GZIP_MAGIC)]
        self._hash.update(chunk)
        self._file.write(chunk)

    def commit(self) -> UploadedFile:
        """Flush and fsync the file, then give it its final name; a file whose name misstates its compression
        (the readers go by the ``.gz`` suffix) is refused and removed."""
        if self._file is None:
            raise ValueError(f"upload {self.name!r} is no longer being received")
        if self.size == 0:
            self.discard()
            raise InvalidRequestError(f"uploaded file {self.name!r} is empty: send the file's bytes as the body")
        gzipped = self._head == _GZIP_MAGIC
        if gzipped != self.name.endswith(".gz"):
            self.discard()
            wanted = f"name it {self.name}.gz" if gzipped else "send it uncompressed, or gzip it"
            raise InvalidRequestError(
                f"uploaded file {self.name!r} is {'' if gzipped else 'not '}gzip-compressed but its name "
                f"{'does not end' if gzipped else 'ends'} in .gz; the readers go by the suffix: {wanted}"
            )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
            os.rename(self.temporary, self.target)
            fsync_dir(self.directory)
        except BaseException:
            self.discard()
            raise
        return UploadedFile(
            path=self.target.relative_to(self.root).as_posix(),
            name=self.name,
            bytes=self.size,
            sha256=self._hash.hexdigest(),
            created_at=time.time(),
        )

    def discard(self) -> None:
        """Close and remove the partial file (safe to call twice, and after a commit failed)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temporary.unlink(missing_ok=True)


class DataUploads:
    """The uploaded job files of one data root."""

    def __init__(self, root: Path, *, max_bytes: int) -> None:
        self.root = Path(root).resolve()
        self.directory = self.root / FILE_UPLOADS_DIR
        self.max_bytes = max_bytes

    def receive(self, name: str) -> Receiving:
        """Start receiving a file called ``name`` (``corpus.jsonl.gz``: letters, digits, ``.``, ``_``, ``-``)."""
        if not _NAME.fullmatch(name):
            raise InvalidRequestError(
                f"upload name {name!r} is not accepted: 1-128 letters, digits, '.', '_' or '-', not starting with "
                "'.' or '-' (e.g. corpus.jsonl.gz, queries.jsonl, qrels.tsv)"
            )
        return Receiving(self.root, name, max_bytes=self.max_bytes)

    def files(self) -> list[UploadedFile]:
        """The files received whole, newest first (``sha256`` is given only when a file is received)."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith(".") or not path.is_file():
                continue
            stat = path.stat()
            name = path.name.split("-", 2)[-1]
            found.append(UploadedFile(path.relative_to(self.root).as_posix(), name, stat.st_size, None, stat.st_mtime))
        return sorted(found, key=lambda f: (f.created_at, f.path), reverse=True)

    def remove(self, file_name: str) -> UploadedFile:
        """Delete the uploaded file ``<id>-<name>`` (its path's last part); jobs already queued on it then fail."""
        for uploaded in self.files():
            if Path(uploaded.path).name == file_name:
                (self.root / uploaded.path).unlink(missing_ok=True)
                return uploaded
        known = [Path(f.path).name for f in self.files()[:10]]
        raise UnknownUploadError(f"upload {file_name[:200]!r} not found; the most recent uploads: {known}")

    def discard_partial(self) -> list[Path]:
        """Remove files left half-received by a server that stopped mid-upload; returns them."""
        if not self.directory.is_dir():
            return []
        leftovers = sorted(self.directory.glob(f"{RECEIVING_PREFIX}*"))
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        return leftovers
