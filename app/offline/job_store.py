"""Job records: what ``POST /admin/jobs`` started, where it stands, and the file that keeps them across restarts.

The records live in one JSON file under the data root, ``<root>/.jobs/jobs.json``,
replaced atomically (temp file, fsync, rename) on every change of state and at
most once a second while a job reports progress, so a crash loses at most a
second of progress and never a record. Builds in progress stage their files
under ``<root>/.jobs/work/<job id>/`` (see :mod:`app.offline.job_kinds`).

A record is a plain dataclass with a dict round trip (``to_dict`` /
``from_dict``); keys a newer version adds are dropped on load.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from experts import atomic_write_bytes

__all__ = [
    "ACTIVE_STATES",
    "IndexMode",
    "JOBS_DIR",
    "JOBS_FILE",
    "JobKind",
    "JobProgress",
    "JobRecord",
    "JobState",
    "JobStore",
    "LOG_TAIL_LINES",
    "new_job_id",
]

logger = logging.getLogger(__name__)

#: The jobs' directory under the data root (hidden: never taken for an expert) and its records file.
JOBS_DIR = ".jobs"
JOBS_FILE = "jobs.json"
#: Lines of a job's own log kept with its record (``log_tail``).
LOG_TAIL_LINES = 20
#: Finished records kept in the file; the oldest beyond are dropped.
KEEP_FINISHED = 200

JobKind = Literal["index", "train", "tune-fusion"]
#: What an index job does with its corpus: a new expert from it, or its documents upserted into a published one.
IndexMode = Literal["create", "add"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
#: States of a job not finished yet: one per expert at a time.
ACTIVE_STATES: frozenset[JobState] = frozenset({"queued", "running"})


def new_job_id() -> str:
    """A job id that sorts by creation time: ``job-<UTC stamp>-<6 hex>``."""
    return f"job-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


@dataclass
class JobProgress:
    """Where a running job is: its phase, and ``done`` of ``total`` ``unit`` with a rate and an ETA."""

    phase: str = "queued"
    done: int = 0
    total: int | None = None
    #: "documents" while indexing, "steps" while training, "queries" while tuning fusion.
    unit: str | None = None
    #: Units per second since the phase began.
    rate: float | None = None
    eta_s: float | None = None


@dataclass
class JobRecord:
    """One job: what was asked (``request``), its state and progress, and how it ended."""

    id: str
    kind: JobKind
    expert: str
    request: dict[str, Any]
    state: JobState = "queued"
    progress: JobProgress = field(default_factory=JobProgress)
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    #: Why it failed (or was interrupted); None otherwise.
    error: str | None = None
    #: The version published when it succeeded.
    published_version: int | None = None
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        progress = values.get("progress") or {}
        progress_fields = {f.name for f in dataclasses.fields(JobProgress)}
        values["progress"] = JobProgress(**{k: v for k, v in progress.items() if k in progress_fields})
        return cls(**values)

    def log(self, line: str) -> None:
        """Add a line to the log tail (timestamped, the oldest dropped past ``LOG_TAIL_LINES``)."""
        stamp = time.strftime("%H:%M:%S", time.gmtime())
        tail = deque(self.log_tail, maxlen=LOG_TAIL_LINES)
        tail.append(f"{stamp} {line}")
        self.log_tail = list(tail)


class JobStore:
    """The records file of one data root: read once at start-up, rewritten whole (it is small)."""

    def __init__(self, root: Path, *, keep_finished: int = KEEP_FINISHED) -> None:
        self.directory = Path(root) / JOBS_DIR
        self.path = self.directory / JOBS_FILE
        self.keep_finished = keep_finished

    @property
    def work_root(self) -> Path:
        """Where builds in progress stage their files: one directory per job id."""
        return self.directory / "work"

    def load(self) -> list[JobRecord]:
        """The records saved, oldest first; an unreadable file is logged and set aside, never fatal."""
        if not self.path.is_file():
            return []
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return [JobRecord.from_dict(item) for item in data["jobs"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            aside = self.path.with_suffix(f".unreadable-{int(time.time())}")
            logger.error("cannot read %s (%s): moved to %s, starting with no job records", self.path, exc, aside)
            self.path.rename(aside)
            return []

    def save(self, records: list[JobRecord]) -> None:
        """Replace the file with ``records`` (the oldest finished ones beyond ``keep_finished`` dropped)."""
        finished = [r for r in records if r.state not in ACTIVE_STATES]
        dropped = {r.id for r in finished[: max(0, len(finished) - self.keep_finished)]}
        kept = [r.to_dict() for r in records if r.id not in dropped]
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps({"jobs": kept}, indent=1).encode())
