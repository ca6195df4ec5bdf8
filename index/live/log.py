"""The write-ahead log of a live collection: upserted documents and tombstones in SQLite.

A write is acknowledged only after its transaction committed here, in WAL mode
with ``synchronous=FULL``: the commit is on disk when ``COMMIT`` returns, so an
acknowledged upsert or delete survives ``kill -9`` and a power cut. Opening the
log again replays it (no re-embedding: the base-encoder vector is stored with
each document).

Tables::

    documents   row_id, doc_id, title, text, metadata  (the docstore's columns, so a
                metadata filter runs against this table unchanged) + vector (float32
                BLOB: one vector, or one per chunk of a long document, concatenated)
                + seq + spans (JSON [[start, end], ...] of each chunk in the passage;
                NULL for a document embedded whole): the delta segment's
                documents, one row per live doc id
    tombstones  row_id, seq: rows of the main segment (or of an earlier delta) that
                were deleted or replaced; applied at search time until a merge
    live_meta   schema_version, log_id, dim, seq (last committed write), next_row_id
                (row ids below it were handed out already), main (fingerprint of the
                main segment the log applies to), changes_from (the seq from which
                ``changes`` records every write)
    changes     seq, doc_id: the ids each write batch upserted or deleted, kept through
                merges, so that the writes since a given seq can be carried to another
                version of the expert (:meth:`LiveLog.changed_since`)

Every write batch gets the next sequence number; a merge that folded everything
up to ``seq`` N into a new main segment deletes the rows with ``seq <= N`` and
records the new main's fingerprint in the same transaction (:meth:`LiveLog.truncate`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np

from index.corpus import Document
from index.errors import CorpusError, IndexFileError
from index.store.filter_sql import compile_filter
from index.store.filter_tree import FilterExpr
from index.store.metadata_fields import FieldInfo

__all__ = ["LiveLog", "LogContents", "LogEntry"]

SCHEMA_VERSION = 1

_SCHEMA = (
    "CREATE TABLE live_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE documents (
        row_id   INTEGER PRIMARY KEY,
        doc_id   TEXT NOT NULL UNIQUE,
        title    TEXT NOT NULL DEFAULT '',
        text     TEXT NOT NULL,
        metadata TEXT NOT NULL DEFAULT '{}',
        vector   BLOB NOT NULL,
        seq      INTEGER NOT NULL,
        spans    TEXT
    )""",
    "CREATE INDEX documents_seq ON documents (seq)",
    "CREATE TABLE tombstones (row_id INTEGER PRIMARY KEY, seq INTEGER NOT NULL)",
    "CREATE INDEX tombstones_seq ON tombstones (seq)",
)
#: Added to a log written before it (the same schema version: an older release ignores the table).
_CHANGES_SCHEMA = (
    "CREATE TABLE changes (seq INTEGER NOT NULL, doc_id TEXT NOT NULL)",
    "CREATE INDEX changes_seq ON changes (seq)",
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One document of the delta segment as the log holds it.

    ``vectors`` is (c, dim) float32, one row per chunk (a (dim,) vector is
    taken as one chunk); ``spans`` the chunks' ``(start, end)`` in the
    passage, or None for a document embedded whole (c = 1).
    """

    row_id: int
    document: Document
    vectors: np.ndarray
    seq: int
    spans: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors)
        if vectors.ndim == 1:
            object.__setattr__(self, "vectors", vectors.reshape(1, -1))
        if self.spans is not None and len(self.spans) != len(self.vectors):
            raise IndexFileError(
                f"document {self.document.id!r} has {len(self.vectors)} chunk vectors but {len(self.spans)} spans"
            )

    @property
    def vector(self) -> np.ndarray:
        """(dim,) the first chunk's vector (the whole document's, when it was not chunked)."""
        return self.vectors[0]


@dataclass(frozen=True)
class LogContents:
    """Everything :meth:`LiveLog.read` found: the state to rebuild the delta segment from."""

    log_id: str
    seq: int
    next_row_id: int
    main: str | None
    entries: list[LogEntry]
    tombstones: dict[int, int]  # row id -> seq of the write that tombstoned it


def _failed(path: Path, exc: sqlite3.Error) -> IndexFileError:
    name = getattr(exc, "sqlite_errorname", "") or ""
    hint = " (is the disk full?)" if name.startswith(("SQLITE_FULL", "SQLITE_IOERR")) else ""
    return IndexFileError(f"live log {str(path)!r}: {exc}{hint}")


def metadata_json(doc: Document) -> str:
    """A document's metadata as the JSON text both the log and the docstore store."""
    if not isinstance(doc.metadata, dict):
        raise CorpusError(f"metadata of document {doc.id!r} must be a JSON object, got {type(doc.metadata).__name__}")
    try:
        return json.dumps(doc.metadata, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CorpusError(f"metadata of document {doc.id!r} is not JSON-serialisable: {exc}") from exc


def _add_changes(conn: sqlite3.Connection) -> None:
    """Give a log written before ``changes`` existed the table; it records writes from the log's seq on."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "changes" not in {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}:
            for statement in _CHANGES_SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT OR REPLACE INTO live_meta SELECT 'changes_from', value FROM live_meta WHERE key = 'seq'"
            )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


class LiveLog:
    """The SQLite write-ahead log of one live collection; one writer at a time (the caller's lock).

    >>> log = LiveLog.open(Path("experts/scifact/live/live.sqlite"), dim=384)  # doctest: +SKIP
    >>> contents = log.read()
    """

    def __init__(self, conn: sqlite3.Connection, path: Path, dim: int) -> None:
        """Private: use :meth:`open`."""
        self._conn = conn
        self._path = path
        self._dim = dim
        self._lock = threading.Lock()  # one connection, used from writer and merge threads
        # Filters are resolved on a second, read-only connection: in WAL mode a reader never waits
        # for the writer's commit (and its fsync), so a filtered search never waits for an upsert.
        self._reader = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
        self._reader_lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, *, dim: int) -> LiveLog:
        """Open the log at ``path``, creating it (and its directory) when missing.

        A log written for vectors of another width is refused: its vectors could
        not go into this collection's index.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise IndexFileError(f"cannot open live log {str(path)!r}: {exc}") from exc
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA busy_timeout = 5000")
            names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if not names:
                conn.execute("BEGIN IMMEDIATE")
                for statement in (*_SCHEMA, *_CHANGES_SCHEMA):
                    conn.execute(statement)
                meta = {"schema_version": SCHEMA_VERSION, "log_id": uuid.uuid4().hex, "dim": dim}
                meta |= {"seq": 0, "next_row_id": 0, "changes_from": 0}
                conn.executemany("INSERT INTO live_meta VALUES (?, ?)", [(k, str(v)) for k, v in meta.items()])
                conn.execute("COMMIT")
            elif not {"live_meta", "documents", "tombstones"} <= names:
                raise IndexFileError(
                    f"{str(path)!r} is an SQLite database but not a live log "
                    f"(expected tables 'live_meta', 'documents' and 'tombstones', found {sorted(names)})"
                )
            elif "spans" not in {row[1] for row in conn.execute("PRAGMA table_info(documents)")}:
                # A log written before chunking: its documents are embedded whole (spans NULL).
                conn.execute("ALTER TABLE documents ADD COLUMN spans TEXT")
            if names and "changes" not in names:
                _add_changes(conn)
            meta = dict(conn.execute("SELECT key, value FROM live_meta").fetchall())
        except sqlite3.Error as exc:
            conn.close()
            raise IndexFileError(f"live log {str(path)!r} is not a readable SQLite database: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        if meta.get("schema_version") != str(SCHEMA_VERSION) or meta.get("dim") != str(dim):
            conn.close()
            raise IndexFileError(
                f"live log {str(path)!r} has schema version {meta.get('schema_version')} and dim {meta.get('dim')}; "
                f"this collection needs schema {SCHEMA_VERSION} and dim {dim}"
            )
        return cls(conn, path, dim)

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        with self._lock, self._reader_lock:
            self._reader.close()
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ reading
    def read(self) -> LogContents:
        """The whole log: meta, every delta document with its vector, every tombstone."""
        with self._lock:
            try:
                meta = dict(self._conn.execute("SELECT key, value FROM live_meta").fetchall())
                rows = self._conn.execute(
                    "SELECT row_id, doc_id, title, text, metadata, vector, seq, spans FROM documents ORDER BY row_id"
                ).fetchall()
                tombstones = dict(self._conn.execute("SELECT row_id, seq FROM tombstones").fetchall())
            except sqlite3.Error as exc:
                raise _failed(self._path, exc) from exc
        entries = []
        for row_id, doc_id, title, text, metadata, blob, seq, spans_json in rows:
            spans = None if spans_json is None else tuple((int(a), int(b)) for a, b in json.loads(spans_json))
            chunks = 1 if spans is None else len(spans)
            vectors = np.frombuffer(blob, dtype=np.float32)
            if vectors.shape != (chunks * self._dim,):
                raise IndexFileError(
                    f"live log {str(self._path)!r}: document {doc_id!r} has vectors of {len(blob)} bytes, "
                    f"expected {chunks} x {self._dim} float32"
                )
            document = Document(doc_id, title, text, json.loads(metadata))
            entries.append(LogEntry(row_id, document, vectors.reshape(chunks, self._dim), seq, spans))
        return LogContents(
            log_id=meta["log_id"],
            seq=int(meta["seq"]),
            next_row_id=int(meta["next_row_id"]),
            main=meta.get("main"),
            entries=entries,
            tombstones=tombstones,
        )

    def changed_since(self, seq: int) -> list[str] | None:
        """The ids of the documents upserted or deleted by the writes after ``seq``, each once, oldest change first.

        None when the log does not know: it records changes only from ``changes_from`` on
        (a log written by an older release), and ``seq`` is before that.
        """
        with self._lock:
            try:
                row = self._conn.execute("SELECT value FROM live_meta WHERE key = 'changes_from'").fetchone()
                if row is None or int(row[0]) > seq:
                    return None
                rows = self._conn.execute(
                    "SELECT doc_id FROM changes WHERE seq > ? GROUP BY doc_id ORDER BY max(seq), doc_id", (seq,)
                ).fetchall()
            except sqlite3.Error as exc:
                raise _failed(self._path, exc) from exc
        return [doc_id for (doc_id,) in rows]

    def select(self, expr: FilterExpr) -> np.ndarray:
        """Row ids of the logged documents matching a parsed filter: (n,) int64, sorted (see :mod:`index.store.filters`)."""
        sql, params = compile_filter(expr)
        with self._reader_lock:
            try:
                row = self._reader.execute(
                    f"SELECT json_group_array(row_id) FROM (SELECT row_id FROM documents WHERE {sql})", params
                ).fetchone()
            except sqlite3.Error as exc:
                raise _failed(self._path, exc) from exc
        ids = np.asarray(json.loads(row[0]), dtype=np.int64)
        ids.sort()
        return ids

    def metadata_fields(self) -> dict[str, FieldInfo]:
        """Each top-level metadata key of the logged documents, with its JSON types and document count."""
        with self._reader_lock:
            try:
                rows = self._reader.execute(
                    "SELECT j.key, j.type, count(*) FROM documents, json_each(documents.metadata) AS j "
                    "GROUP BY j.key, j.type"
                ).fetchall()
            except sqlite3.Error as exc:
                raise _failed(self._path, exc) from exc
        found: dict[str, tuple[set[str], int]] = {}
        for key, kind, n in rows:
            types, total = found.get(key, (set(), 0))
            found[key] = (types | {kind}, total + n)
        return {key: FieldInfo(key, frozenset(types), total) for key, (types, total) in found.items()}

    # ------------------------------------------------------------------ writing
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
                    self._conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _failed(self._path, exc) from exc
                raise

    def commit(
        self,
        *,
        seq: int,
        next_row_id: int,
        added: Sequence[LogEntry],
        removed_delta: Sequence[int],
        tombstones: Sequence[int],
        changed: Sequence[str] = (),
    ) -> None:
        """One write batch, all or nothing: drop replaced delta rows, add documents, add tombstones, and record
        the ids of the documents the batch ``changed`` (upserted or deleted).

        When this returns the batch is durable (``synchronous=FULL``): the
        caller may acknowledge it.
        """
        documents = [
            (
                e.row_id,
                e.document.id,
                e.document.title,
                e.document.text,
                metadata_json(e.document),
                np.ascontiguousarray(e.vectors).tobytes(),
                e.seq,
                None if e.spans is None else json.dumps(e.spans),
            )
            for e in added
        ]
        for entry in added:
            if entry.vectors.dtype != np.float32 or entry.vectors.ndim != 2 or entry.vectors.shape[1] != self._dim:
                raise IndexFileError(f"vectors of {entry.document.id!r} must be (chunks, {self._dim}) float32")
        with self._transaction() as conn:
            conn.executemany("DELETE FROM documents WHERE row_id = ?", [(int(r),) for r in removed_delta])
            conn.executemany(
                "INSERT INTO documents (row_id, doc_id, title, text, metadata, vector, seq, spans) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                documents,
            )
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones (row_id, seq) VALUES (?, ?)", [(int(r), seq) for r in tombstones]
            )
            conn.executemany("INSERT INTO changes (seq, doc_id) VALUES (?, ?)", [(seq, d) for d in changed])
            conn.executemany(
                "UPDATE live_meta SET value = ? WHERE key = ?", [(str(seq), "seq"), (str(next_row_id), "next_row_id")]
            )

    def truncate(self, upto_seq: int, *, main: str, next_row_id: int) -> None:
        """Forget every write up to ``upto_seq`` (now part of main segment ``main``), in one transaction."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM documents WHERE seq <= ?", (upto_seq,))
            conn.execute("DELETE FROM tombstones WHERE seq <= ?", (upto_seq,))
            conn.execute("INSERT OR REPLACE INTO live_meta VALUES ('main', ?)", (main,))
            conn.execute("UPDATE live_meta SET value = ? WHERE key = 'next_row_id'", (str(next_row_id),))

    def bind(self, *, main: str, next_row_id: int) -> None:
        """Record the main segment an empty log applies to (a fresh log, or one left empty by a merge)."""
        self.truncate(-1, main=main, next_row_id=next_row_id)
