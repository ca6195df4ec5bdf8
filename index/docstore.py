"""The document store: documents in SQLite, keyed by the int64 id FAISS returns.

One table, ``documents``: ``row_id`` (the FAISS id), ``doc_id`` (the corpus id,
unique), ``title``, ``text`` and ``metadata`` (a JSON object as text, so that
metadata filters can later be resolved with ``json_extract`` and handed to
FAISS as an ``IDSelector``).

Row ids come from ``AUTOINCREMENT``: SQLite then never hands out an id twice,
even after the highest row is deleted. An upsert therefore always gets a NEW
row id, which is what lets a later live-update segment tombstone the old
vector by id without ambiguity.

Concurrency: one connection, opened with ``check_same_thread=False`` and
guarded by a re-entrant lock. A search does one ``SELECT`` for a whole batch
(tens of microseconds), so contention is negligible next to the FAISS search,
and one connection keeps ``close()`` deterministic (per-thread connections
would be left open in threads we do not own).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np

from index.corpus import Document
from index.errors import CorpusError, IndexFileError, OutputExistsError, ReadOnlyError

__all__ = ["DocStore"]

logger = logging.getLogger(__name__)

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


def _sqlite_failed(path: Path, exc: sqlite3.Error) -> IndexFileError:
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


class DocStore:
    """Documents keyed by int64 row id (= FAISS id), stored in one SQLite file.

    >>> with DocStore.create(Path("docs.sqlite")) as store:  # doctest: +SKIP
    ...     row_ids = store.add([Document("d1", "Title", "Body")])
    ...     store.get(row_ids.tolist())
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        """Private: use :meth:`create` or :meth:`open`."""
        self._conn = conn
        self._path = path
        self._readonly = readonly
        self._lock = threading.RLock()
        self._depth = 0  # nesting level of transaction(); only touched under the lock

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, path: Path) -> DocStore:
        """Create a new, empty docstore at ``path`` (which must not exist), in WAL mode."""
        path = Path(path)
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
                raise _sqlite_failed(path, exc) from exc
            raise
        return cls(conn, path, readonly=False)

    @classmethod
    def open(cls, path: Path, *, readonly: bool = True) -> DocStore:
        """Open an existing docstore; read-only by default (a ``mode=ro`` URI)."""
        path = Path(path)
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
            raise IndexFileError(
                f"docstore {str(path)!r} has schema version {version}; this code reads {SCHEMA_VERSION}"
            )
        return cls(conn, path, readonly=readonly)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def readonly(self) -> bool:
        return self._readonly

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ writes
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Run writes atomically; yields the connection for the caller's own tables.

        The indexing job commits a chunk's documents and its progress marker in
        one transaction this way. Nested calls become savepoints, so a failed
        inner block (say, an ``add`` that hit a duplicate id) is undone without
        aborting the outer transaction. Other threads wait on the lock meanwhile.
        An SQLite error in it (a full disk, most likely) is raised as
        :class:`IndexFileError` naming the file.
        """
        if self._readonly:
            raise ReadOnlyError(f"docstore {str(self._path)!r} was opened read-only; open it with readonly=False")
        with self._lock:
            depth = self._depth
            begin, commit, rollback = (
                ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
                if depth == 0
                else (f"SAVEPOINT sp{depth}", f"RELEASE sp{depth}", f"ROLLBACK TO sp{depth}; RELEASE sp{depth}")
            )
            try:
                self._conn.execute(begin)
            except sqlite3.Error as exc:
                raise _sqlite_failed(self._path, exc) from exc
            self._depth += 1
            try:
                yield self._conn
                self._conn.execute(commit)
            except BaseException as exc:
                # After an I/O error SQLite may already have rolled back: then ROLLBACK itself fails.
                with contextlib.suppress(sqlite3.Error):
                    for statement in rollback.split("; "):
                        self._conn.execute(statement)
                if isinstance(exc, sqlite3.Error):
                    raise _sqlite_failed(self._path, exc) from exc
                raise
            finally:
                self._depth = depth

    def add(self, docs: Sequence[Document], *, upsert: bool = False) -> np.ndarray:
        """Insert documents; return their row ids, (n,) int64, in input order.

        A ``doc_id`` already present (in the store or earlier in ``docs``) raises
        :class:`CorpusError` unless ``upsert``: then the old row is deleted and
        the document gets a new row id. All-or-nothing: on error nothing is added.
        """
        row_ids = np.empty(len(docs), dtype=np.int64)
        with self.transaction() as conn:
            for i, doc in enumerate(docs):
                try:
                    metadata = json.dumps(doc.metadata, ensure_ascii=False)
                except (TypeError, ValueError) as exc:
                    raise CorpusError(f"metadata of document {doc.id!r} is not JSON-serialisable: {exc}") from exc
                if upsert:
                    conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc.id,))
                try:
                    cursor = conn.execute(
                        "INSERT INTO documents (doc_id, title, text, metadata) VALUES (?, ?, ?, ?)",
                        (doc.id, doc.title, doc.text, metadata),
                    )
                except sqlite3.IntegrityError as exc:
                    raise CorpusError(
                        f"document id {doc.id!r} is already in the docstore; pass upsert=True to replace it"
                    ) from exc
                row_ids[i] = cursor.lastrowid
        return row_ids

    # ------------------------------------------------------------------ reads
    def get(self, ids: Sequence[int]) -> list[Document | None]:
        """Documents for row ids, in the order given; ``None`` for unknown ids.

        One ``SELECT`` for the whole batch: the ids travel as one JSON array
        (``json_each``), so there is no limit on the number of SQL variables.
        """
        wanted = [int(i) for i in ids]
        if not wanted:
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT row_id, doc_id, title, text, metadata FROM documents "
                "WHERE row_id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
        found = {row[0]: Document(row[1], row[2], row[3], json.loads(row[4])) for row in rows}
        return [found.get(i) for i in wanted]

    def row_ids(self, doc_ids: Sequence[str]) -> list[int | None]:
        """Row ids for corpus ids, in the order given; ``None`` for unknown ids."""
        wanted = list(doc_ids)
        if not wanted:
            return []
        with self._lock:
            rows = self._conn.execute(
                "SELECT doc_id, row_id FROM documents WHERE doc_id IN (SELECT value FROM json_each(?))",
                (json.dumps(wanted),),
            ).fetchall()
        found = dict(rows)
        return [found.get(d) for d in wanted]

    def all_row_ids(self) -> np.ndarray:
        """Every live row id, ascending: (n,) int64."""
        with self._lock:
            cursor = self._conn.execute("SELECT row_id FROM documents ORDER BY row_id")
            return np.fromiter((row[0] for row in cursor), dtype=np.int64)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM documents").fetchone()[0])

    # ------------------------------------------------------------------ publishing
    def export(self, path: Path) -> None:
        """Write a compact copy holding only the docstore's own tables to ``path``.

        The copy keeps the row-id sequence (so a later upsert never reuses an id)
        and uses a rollback journal instead of WAL: a published, read-only file
        then needs no ``-wal``/``-shm`` side files and opening it writes nothing
        into the published directory. The file is fsynced before returning.
        """
        path = Path(path)
        DocStore.create(path).close()
        try:
            with self._lock:
                self._conn.execute("ATTACH DATABASE ? AS export", (str(path),))
                try:
                    self._conn.execute("BEGIN")
                    self._conn.execute("INSERT INTO export.documents SELECT * FROM main.documents ORDER BY row_id")
                    self._conn.execute(
                        "INSERT INTO export.sqlite_sequence SELECT * FROM main.sqlite_sequence WHERE name = 'documents'"
                    )
                    self._conn.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                        self._conn.execute("ROLLBACK")
                    raise
                finally:
                    self._conn.execute("DETACH DATABASE export")
            conn = sqlite3.connect(path, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = DELETE")
                conn.execute("VACUUM")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise _sqlite_failed(path, exc) from exc
        with path.open("rb") as handle:
            os.fsync(handle.fileno())
