"""Errors raised by the ``index`` package.

Every error derives from :class:`IndexStoreError`, so a caller can catch the
whole package in one clause; each also inherits the builtin a caller would
naturally expect, so existing ``except ValueError`` / ``except OSError``
handlers keep working::

    IndexStoreError
    ├── CorpusError             (ValueError)       bad corpus: empty, duplicate ids, unreadable
    │   └── LongDocumentError                      a document over the encoder's limit under policy 'error'
    ├── DimensionMismatchError  (ValueError)       vectors of the wrong width
    ├── InvalidParameterError   (ValueError)       bad option: factory string, k, limit, ...
    ├── IndexFileError          (OSError)          missing / corrupt / truncated artifact file
    ├── OutputExistsError       (FileExistsError)  a build would overwrite an existing directory
    ├── ReadOnlyError           (PermissionError)  a write to something opened read-only
    ├── BuildInProgressError    (RuntimeError)     another build holds the work directory
    ├── LogLockedError          (BlockingIOError)  another process writes this live log
    ├── NoLexicalIndexError     (LookupError)      lexical search on a collection built without one
    └── InvalidFilterError      (ValueError)       a metadata filter that is malformed, too large or can never match
        └── UnknownFieldError                      it names a metadata field that no document has

Lower-layer errors (``RuntimeError`` from FAISS, ``sqlite3.Error``) are
translated where they are raised, so nothing from those libraries leaks out.
"""

from __future__ import annotations

__all__ = [
    "BuildInProgressError",
    "CorpusError",
    "DimensionMismatchError",
    "IndexFileError",
    "IndexStoreError",
    "InvalidFilterError",
    "InvalidParameterError",
    "LogLockedError",
    "LongDocumentError",
    "NoLexicalIndexError",
    "OutputExistsError",
    "ReadOnlyError",
    "UnknownFieldError",
]


class IndexStoreError(Exception):
    """Base class of every error raised by the ``index`` package."""


class CorpusError(IndexStoreError, ValueError):
    """The corpus cannot be indexed: empty, duplicate document ids, or unreadable."""


class LongDocumentError(CorpusError):
    """A document is longer than the encoder's limit and its collection's long-document policy is ``"error"``.

    ``doc_id`` and ``tokens`` name the document and its length in tokens.
    """

    def __init__(self, message: str, *, doc_id: str = "", tokens: int = 0) -> None:
        super().__init__(message)
        self.doc_id = doc_id
        self.tokens = tokens

    def __reduce__(self) -> tuple[type, tuple[str], dict[str, object]]:  # picklable across processes
        return (LongDocumentError, (str(self),), {"doc_id": self.doc_id, "tokens": self.tokens})


class DimensionMismatchError(IndexStoreError, ValueError):
    """Vectors do not have the dimension the index was built for."""


class InvalidParameterError(IndexStoreError, ValueError):
    """An option is out of range or malformed (factory string, ``k``, ``limit``...)."""


class IndexFileError(IndexStoreError, OSError):
    """An index, docstore or info file is missing, truncated or corrupt.

    The message always names the offending path.
    """


class OutputExistsError(IndexStoreError, FileExistsError):
    """A build was asked to publish into a directory that already exists."""


class ReadOnlyError(IndexStoreError, PermissionError):
    """A write was attempted on an index or docstore opened read-only."""


class BuildInProgressError(IndexStoreError, RuntimeError):
    """Another process is running a build in the same work directory."""


class LogLockedError(IndexStoreError, BlockingIOError):
    """Another process holds the writer lock of a live log (see :mod:`index.live.writer_lock`)."""


class NoLexicalIndexError(IndexStoreError, LookupError):
    """A lexical search was asked of a collection that was built without a lexical index."""


class InvalidFilterError(IndexStoreError, ValueError):
    """A metadata filter is malformed, too large, or compares a field in a way that can never match.

    ``path`` names the offending clause as the client wrote it
    (``filter.and[1].year``) and ``reason`` says what is wrong with it; the
    message is ``"<path>: <reason>"``, ready for a 422 response.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # picklable across processes, despite the two arguments
        return (InvalidFilterError, (self.path, self.reason))


class UnknownFieldError(InvalidFilterError):
    """A filter names a metadata field that no document of the collection has; the message lists the known ones."""

    def __init__(self, path: str, field: str, known: list[str], more: str = "") -> None:
        listed = ", ".join(repr(name) for name in known) if known else "none (the documents carry no metadata)"
        super().__init__(path, f"unknown metadata field {field!r}; known fields: {listed}{more}")
        self.field = field
        self.known = known
        self._more = more

    def __reduce__(self) -> tuple[type, tuple[str, str, list[str], str]]:
        return (UnknownFieldError, (self.path, self.field, self.known, self._more))
