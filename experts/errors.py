"""Errors raised by the ``experts`` package.

The tree, so that callers can catch as broadly or narrowly as they need::

    ExpertError
    ├── UnknownExpertError        (also KeyError)    no adapter or expert of that name
    ├── ModelLoadError            (also OSError)     the base model or the cross-encoder could not be loaded
    ├── AdapterMismatchError      (also ValueError)  adapter/expert made for another base
    ├── ExpertDirError            (also ValueError)  an expert directory is not valid
    │   ├── MissingFileError      (also FileNotFoundError)
    │   └── ChecksumMismatchError
    └── ChunkingError             (also ValueError)  token-window settings that cannot split a text
"""

from __future__ import annotations


class ExpertError(Exception):
    """Base class of every error raised by ``experts``."""


class UnknownExpertError(ExpertError, KeyError):
    """A name that is not a loaded adapter or a known expert."""

    def __str__(self) -> str:  # KeyError would wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ModelLoadError(ExpertError, OSError):
    """The base encoder or the cross-encoder could not be loaded from the given id or path (or is not one)."""


class AdapterMismatchError(ExpertError, ValueError):
    """An adapter or expert was made for a different base model or dimension."""


class ExpertDirError(ExpertError, ValueError):
    """An expert directory is malformed: bad manifest, bad name, bad layout."""


class MissingFileError(ExpertDirError, FileNotFoundError):
    """A file that the manifest lists, or that the layout requires, is missing."""


class ChecksumMismatchError(ExpertDirError):
    """A file's bytes differ from the checksum recorded in the manifest."""


class ChunkingError(ExpertError, ValueError):
    """Token-window settings that cannot split a text: overlap not below the window, no room beside special tokens."""
