"""The docstore's SQLite file: its schema and version, created and opened with the settings every connection needs.

Apart from :mod:`index.store.docstore` (what is read and written through the
file) because creating a file, and refusing one that is not a docstore of
this version, is the one place that knows the schema as a whole.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from index.errors import IndexFileError, OutputExistsError

__all__ = ["SCHEMA_VERSION", "create_database", "open_database", "sqlite_failed"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE documents (
    row_id   INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id   TEXT NOT NULL UNIQUE,
    title    TEXT NOT NULL DEFAULT '',
    text     TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE docstore_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    mode = "ro" if readonly else "rw"
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction
    # covers exactly what the caller asked for and nothing autocommits midway.
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute("PRAGMA busy_timeout = 5000")
    return conn


def sqlite_failed(path: Path, exc: sqlite3.Error) -> IndexFileError:
    """A failed statement of a transaction as the package's own error; a full disk is named as the likely cause.

    SQLite reports a full disk as ``SQLITE_FULL``, and a write refused by the
    file-size limit (EFBIG) as a generic ``SQLITE_IOERR_*``.
    """
    name = getattr(exc, "sqlite_errorname", "") or ""
    hint = " (is the disk full?)" if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) else ""
    return IndexFileError(f"docstore {str(path)!r}: {exc}{hint}")


def _tune_for_writing(conn: sqlite3.Connection) -> None:
    # WAL: readers are never blocked by the writer (live upserts later).
    # synchronous=FULL: a commit is on disk when COMMIT returns, so a checkpoint
    # marker committed by the indexing job survives a power cut, not only kill -9.
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")


def create_database(path: Path) -> sqlite3.Connection:
    """A new, empty docstore file at ``path`` (which must not exist), in WAL mode: its open connection."""
    if path.exists():
        raise OutputExistsError(f"cannot create docstore {str(path)!r}: the file already exists")
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        _tune_for_writing(conn)
        conn.execute("BEGIN")
        for statement in filter(str.strip, _SCHEMA.split(";")):
            conn.execute(statement)
        conn.execute("INSERT INTO docstore_meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        conn.execute("COMMIT")
    except BaseException as exc:
        conn.close()
        path.unlink(missing_ok=True)
        if isinstance(exc, sqlite3.Error):
            raise sqlite_failed(path, exc) from exc
        raise
    return conn


def open_database(path: Path, *, readonly: bool) -> sqlite3.Connection:
    """An existing docstore file, checked to be a docstore of :data:`SCHEMA_VERSION`: its open connection."""
    if not path.is_file():
        raise IndexFileError(f"docstore file {str(path)!r} does not exist or is not a regular file")
    try:
        conn = _connect(path, readonly=readonly)
    except sqlite3.Error as exc:
        raise IndexFileError(f"cannot open docstore {str(path)!r}: {exc}") from exc
    try:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = None
        if "docstore_meta" in names:
            row = conn.execute("SELECT value FROM docstore_meta WHERE key = 'schema_version'").fetchone()
            version = row and row[0]
        if not readonly:
            _tune_for_writing(conn)
    except sqlite3.Error as exc:
        conn.close()
        raise IndexFileError(f"docstore {str(path)!r} is not a readable SQLite database: {exc}") from exc
    if not {"documents", "docstore_meta"} <= names:
        conn.close()
        raise IndexFileError(
            f"{str(path)!r} is an SQLite database but not a docstore "
            f"(expected tables 'documents' and 'docstore_meta', found {sorted(names)})"
        )
    if version != str(SCHEMA_VERSION):
        conn.close()
        raise IndexFileError(f"docstore {str(path)!r} has schema version {version}; this code reads {SCHEMA_VERSION}")
    return conn
