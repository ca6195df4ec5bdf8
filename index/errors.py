"""Errors raised by the ``index`` package.

Every error derives from :class:`IndexStoreError`, so a caller can catch the
whole package in one clause; each also inherits the builtin a caller would
naturally expect, so existing ``except ValueError`` / ``except OSError``
handlers keep working::

    IndexStoreError
    ├── CorpusError             (ValueError)       bad corpus: empty, duplicate ids, unreadable
    ├── DimensionMismatchError  (ValueError)       vectors of the wrong width
    ├── InvalidParameterError   (ValueError)       bad option: factory string, k, limit, ...
    ├── IndexFileError          (OSError)          missing / corrupt / truncated artifact file
    ├── OutputExistsError       (FileExistsError)  a build would overwrite an existing directory
    ├── ReadOnlyError           (PermissionError)  a write to something opened read-only
    ├── BuildInProgressError    (RuntimeError)     another build holds the work directory
    └── NoLexicalIndexError     (LookupError)      lexical search on a collection built without one

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
    "InvalidParameterError",
    "NoLexicalIndexError",
    "OutputExistsError",
    "ReadOnlyError",
]


class IndexStoreError(Exception):
    """Base class of every error raised by the ``index`` package."""


class CorpusError(IndexStoreError, ValueError):
    """The corpus cannot be indexed: empty, duplicate document ids, or unreadable."""


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


class NoLexicalIndexError(IndexStoreError, LookupError):
    """A lexical search was asked of a collection that was built without a lexical index."""
