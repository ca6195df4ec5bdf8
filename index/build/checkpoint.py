"""The resumable state of a build, kept inside the SQLite file of the docstore being built.

Layout of a work directory::

    <work_dir>/
        build.sqlite   the docstore being built + the job's own tables (below)
        shards/        shard-000000.npz ...: each committed chunk's row ids and vectors
        staging/       the collection being assembled, renamed to out_dir when complete
        .lock          flock()ed while a build runs

The job tables live in the *same* SQLite file as the documents so that one
transaction commits a chunk's documents, its progress marker, its malformed
lines and its provenance together: after a crash at any instant the documents
and the marker agree. (Two attached WAL databases would not give that: SQLite
does not make commits across attached WAL files atomic.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from index.errors import BuildInProgressError, IndexFileError
from index.store.docstore import DocStore

__all__ = [
    "CHECKPOINT_FILE",
    "LOCK_FILE",
    "SHARDS_DIR",
    "STAGING_DIR",
    "BuildIdentity",
    "Checkpoint",
    "Progress",
    "discard",
    "lock_work_dir",
]

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "build.sqlite"
SHARDS_DIR = "shards"
STAGING_DIR = "staging"
LOCK_FILE = ".lock"
CHECKPOINT_VERSION = 1

_TABLES = (
    "CREATE TABLE build_identity (id INTEGER PRIMARY KEY CHECK (id = 0), identity TEXT NOT NULL)",
    "CREATE TABLE build_progress (id INTEGER PRIMARY KEY CHECK (id = 0), corpus INTEGER NOT NULL, "
    "line INTEGER NOT NULL, next_shard INTEGER NOT NULL, malformed INTEGER NOT NULL, replaced INTEGER NOT NULL)",
    "CREATE TABLE build_problems (corpus INTEGER NOT NULL, line INTEGER NOT NULL, reason TEXT NOT NULL, "
    "PRIMARY KEY (corpus, line))",
    "CREATE TABLE build_sources (row_id INTEGER PRIMARY KEY, corpus INTEGER NOT NULL, line INTEGER NOT NULL)",
)


@dataclass(frozen=True)
class BuildIdentity:
    """Everything that must match for a checkpoint to be reused."""

    build_key: str
    dim: int
    factory: str
    upsert: bool
    corpus_fingerprints: tuple[str, ...]
    version: int = CHECKPOINT_VERSION
    # How long documents are embedded ("chunk:256:32"); "truncate" matches checkpoints written before chunking.
    chunking: str = "truncate"

    def to_json(self) -> str:
        return json.dumps(asdict(self) | {"corpus_fingerprints": list(self.corpus_fingerprints)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BuildIdentity:
        data = json.loads(text)
        return cls(**data | {"corpus_fingerprints": tuple(data["corpus_fingerprints"])})

    def differences(self, other: BuildIdentity) -> list[str]:
        """Human-readable list of fields that differ (``self`` = checkpoint, ``other`` = this run)."""
        mine, theirs = asdict(self), asdict(other)
        return [
            f"{key}: checkpoint {mine[key]!r} != requested {theirs[key]!r}" for key in mine if mine[key] != theirs[key]
        ]


@dataclass(frozen=True)
class Progress:
    """The marker: the next corpus, lines of it already consumed, the next shard number."""

    corpus: int
    line: int
    next_shard: int
    malformed: int
    replaced: int


@contextmanager
def lock_work_dir(work_dir: Path) -> Iterator[None]:
    """Hold an exclusive flock on ``work_dir/.lock`` (released by the kernel even on kill -9)."""
    with (work_dir / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise BuildInProgressError(f"another build is running in work directory {str(work_dir)!r}") from exc
        yield


def discard(work_dir: Path) -> None:
    """Remove every file a build keeps in ``work_dir`` (and nothing else)."""
    work_dir = Path(work_dir)
    for suffix in ("", "-wal", "-shm", "-journal"):
        (work_dir / f"{CHECKPOINT_FILE}{suffix}").unlink(missing_ok=True)
    for name in (SHARDS_DIR, STAGING_DIR):
        shutil.rmtree(work_dir / name, ignore_errors=True)


class Checkpoint:
    """The docstore being built plus the job's bookkeeping, in one SQLite file."""

    def __init__(self, work_dir: Path, store: DocStore, identity: BuildIdentity) -> None:
        """Private: use :meth:`open`."""
        self.work_dir = work_dir
        self.store = store
        self.identity = identity
        self.shards_dir = work_dir / SHARDS_DIR

    @classmethod
    def open(cls, work_dir: Path, identity: BuildIdentity) -> Checkpoint:
        """Resume the checkpoint in ``work_dir`` if it matches ``identity``, else start afresh.

        A checkpoint that does not match, or cannot be read, is discarded with a
        warning saying why; it is never reused silently.
        """
        work_dir = Path(work_dir)
        path = work_dir / CHECKPOINT_FILE
        if path.exists():
            store, reason = cls._load(path, identity)
            if store is not None:
                (work_dir / SHARDS_DIR).mkdir(exist_ok=True)
                logger.info("resuming the build checkpoint in %s", work_dir)
                return cls(work_dir, store, identity)
            logger.warning("discarding the build checkpoint in %s: %s", work_dir, reason)
        discard(work_dir)
        (work_dir / SHARDS_DIR).mkdir(parents=True)
        store = DocStore.create(path)
        with store.transaction() as conn:
            for statement in _TABLES:
                conn.execute(statement)
            conn.execute("INSERT INTO build_identity VALUES (0, ?)", (identity.to_json(),))
            conn.execute("INSERT INTO build_progress VALUES (0, 0, 0, 0, 0, 0)")
        return cls(work_dir, store, identity)

    @staticmethod
    def _load(path: Path, identity: BuildIdentity) -> tuple[DocStore | None, str]:
        try:
            store = DocStore.open(path, readonly=False)
        except IndexFileError as exc:
            return None, f"unreadable ({exc})"
        try:
            with store.transaction() as conn:
                row = conn.execute("SELECT identity FROM build_identity").fetchone()
            found = BuildIdentity.from_json(row[0])
        except (sqlite3.Error, IndexFileError, TypeError, KeyError, ValueError) as exc:
            store.close()
            return None, f"it has no valid build identity ({exc})"
        differences = found.differences(identity)
        if differences:
            store.close()
            return None, "it belongs to a different build: " + "; ".join(differences)
        return store, ""

    def progress(self) -> Progress:
        with self.store.transaction() as conn:
            row = conn.execute(
                "SELECT corpus, line, next_shard, malformed, replaced FROM build_progress WHERE id = 0"
            ).fetchone()
        return Progress(*row)

    def source(self, row_id: int) -> tuple[int, int] | None:
        """``(corpus index, line)`` a stored document came from."""
        with self.store.transaction() as conn:
            row = conn.execute("SELECT corpus, line FROM build_sources WHERE row_id = ?", (row_id,)).fetchone()
        return None if row is None else (row[0], row[1])

    def problems(self, *, limit: int) -> list[tuple[int, int, str]]:
        """The first ``limit`` malformed lines as ``(corpus index, line, reason)``, in corpus order."""
        with self.store.transaction() as conn:
            return conn.execute(
                "SELECT corpus, line, reason FROM build_problems ORDER BY corpus, line LIMIT ?", (limit,)
            ).fetchall()

    @staticmethod
    def record(
        conn: sqlite3.Connection,
        *,
        progress: Progress,
        sources: list[tuple[int, int, int]],
        problems: list[tuple[int, int, str]],
    ) -> None:
        """Inside the chunk's transaction: store provenance, problems and the new marker."""
        conn.executemany("INSERT OR REPLACE INTO build_sources VALUES (?, ?, ?)", sources)
        conn.executemany("INSERT OR REPLACE INTO build_problems VALUES (?, ?, ?)", problems)
        conn.execute(
            "UPDATE build_progress SET corpus = ?, line = ?, next_shard = ?, malformed = ?, replaced = ? WHERE id = 0",
            (progress.corpus, progress.line, progress.next_shard, progress.malformed, progress.replaced),
        )

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
