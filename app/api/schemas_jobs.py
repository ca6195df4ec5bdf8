"""What ``/admin/jobs`` takes and answers, and the service behind it as the API sees it (:class:`JobService`).

The API never imports the offline jobs (``app/offline``): ``rr serve`` hands
:func:`app.api.main.create_app` a factory that makes a :class:`JobService`
(:class:`app.offline.job_runner.JobRunner`), and the routes talk to it only
through this protocol, in plain dicts that the models below validate.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.api.schemas import ExpertName
from app.engine.engine import SearchEngine
from app.publishing.publisher import ExpertPublisher

__all__ = [
    "JobListOut",
    "JobOut",
    "JobProgressOut",
    "JobRequest",
    "JobService",
    "JobServiceFactory",
    "UploadListOut",
    "UploadOut",
]

#: A file named relative to the data root (checked there: under it, and a file).
DataPath = Annotated[str, StringConstraints(min_length=1, max_length=4096)]
#: What a job does: index a corpus into a new expert, train one, tune a published one's hybrid fusion weight.
JobKind = Literal["index", "train", "tune-fusion"]
#: What an index job does: make a new expert of the corpus, or upsert its documents into a published one.
IndexMode = Literal["create", "add"]


class JobService(Protocol):
    """Jobs submitted, listed and cancelled; errors are the service's own (``app.errors``), raised as they are."""

    def submit(
        self,
        *,
        kind: JobKind,
        expert: str,
        corpus: str | None = None,
        queries: str | None = None,
        qrels: str | None = None,
        replace: bool = False,
        steps: int | None = None,
        batch_size: int | None = None,
        mode: IndexMode = "create",
        skip_malformed: bool = False,
    ) -> dict[str, Any]: ...

    def records(self) -> list[dict[str, Any]]: ...

    def record(self, job_id: str) -> dict[str, Any]: ...

    def cancel(self, job_id: str) -> dict[str, Any]: ...

    def close(self) -> None: ...


#: Made once the engine and the publisher exist (start-up); ``rr serve`` passes one to ``create_app``.
JobServiceFactory = Callable[[SearchEngine, ExpertPublisher], JobService]


class JobRequest(BaseModel):
    """``POST /admin/jobs``: index a corpus into a new expert, train an expert on one, or tune an expert's fusion."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "index", "expert": "contracts", "corpus": "incoming/contracts.jsonl.gz"},
                {"kind": "index", "expert": "scifact", "corpus": "incoming/more-scifact.jsonl", "mode": "add"},
                {
                    "kind": "train",
                    "expert": "scifact",
                    "corpus": "datasets/scifact/corpus.jsonl",
                    "queries": "datasets/scifact/queries.jsonl",
                    "qrels": "datasets/scifact/qrels/train.tsv",
                    "replace": True,
                },
                {"kind": "index", "expert": "contracts", "corpus": ".uploads/u20261205T150400Z-1a2b3c-corpus.jsonl.gz"},
                {"kind": "tune-fusion", "expert": "scifact"},
            ]
        },
    )

    kind: JobKind = Field(
        description="`index`: a NEW expert from the corpus (create, index, pilots, publish), or with `mode=add` "
        "the corpus's documents upserted into a published expert. `train`: an expert "
        "trained on the corpus (and labelled queries), published as a new expert or, with `replace`, swapped in. "
        "`tune-fusion`: a published expert's dense/BM25 fusion weight tuned on labelled queries (`queries` + "
        "`qrels`) or pseudo queries from its documents, and swapped in when it changes."
    )
    expert: ExpertName = Field(
        description="The expert's name (a new one, the one an add job writes to, a train job replaces, or the one "
        "to tune)."
    )
    corpus: DataPath | None = Field(
        None,
        description="index, train: a BEIR corpus (.jsonl or .jsonl.gz), relative to the data root (a path from "
        "POST /admin/uploads, or a file put there).",
    )
    queries: DataPath | None = Field(
        None, description="train, tune-fusion: labelled queries (BEIR queries.jsonl); tune-fusion without: pseudo."
    )
    qrels: DataPath | None = Field(None, description="train, tune-fusion: their judgements (a qrels .tsv).")
    replace: bool = Field(False, description="train: replace the published expert of that name.")
    steps: int | None = Field(None, ge=1, le=100_000, description="train: optimiser steps (default 300).")
    batch_size: int | None = Field(None, ge=1, le=4096, description="train: queries per step (default 64).")
    mode: IndexMode = Field(
        "create",
        description="index: `create` a new expert (409 if the name exists), or `add`: upsert the corpus's documents "
        "(by id) into a published expert (404 if none), in batches through the document write path, each batch "
        "searchable and durable once written, its other documents kept; a cancel stops between batches and the "
        "batches written stay.",
    )
    skip_malformed: bool = Field(
        False,
        description="index, train: skip the corpus's malformed lines (listed in the job's log) instead of failing; "
        "by default a malformed line fails the job before anything is embedded, naming the line numbers.",
    )

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> JobRequest:
        if self.kind == "tune-fusion":
            given = [name for name in ("corpus", "steps", "batch_size") if getattr(self, name) is not None]
            if given or self.replace:
                raise ValueError(
                    f"{[*given, *(['replace'] if self.replace else [])]} do not apply to tune-fusion jobs; one takes "
                    "kind, expert, and optionally queries and qrels (else pseudo queries)"
                )
        elif self.corpus is None:
            raise ValueError(f"a {self.kind} job needs a corpus (a .jsonl or .jsonl.gz under the data root)")
        if self.kind == "index":
            given = [name for name in ("queries", "qrels", "steps", "batch_size") if getattr(self, name) is not None]
            if given or self.replace:
                raise ValueError(
                    f"{[*given, *(['replace'] if self.replace else [])]} apply to train jobs only; an index job "
                    "takes kind, expert, corpus, and optionally mode ('create' or 'add') and skip_malformed"
                )
        elif self.mode != "create":
            raise ValueError(f"mode applies to index jobs only, not to {self.kind} jobs")
        elif self.kind == "tune-fusion" and self.skip_malformed:
            raise ValueError("skip_malformed applies to jobs with a corpus (index, train), not to tune-fusion jobs")
        if (self.queries is None) != (self.qrels is None):
            raise ValueError("give both queries and qrels (labelled training), or neither (corpus-only training)")
        return self


class JobProgressOut(BaseModel):
    phase: str = Field(
        description="What the job does now: queued, checking the corpus, indexing, adding, building pilots, "
        "training, embedding queries, publishing."
    )
    done: int = Field(description="Units done in this phase.")
    total: int | None = Field(description="Units in this phase, when known.")
    unit: str | None = Field(
        description="`documents` while indexing or adding, `steps` while training, `queries` while tuning fusion."
    )
    rate: float | None = Field(description="Units per second in this phase.")
    eta_s: float | None = Field(description="Seconds this phase still needs, at that rate.")


class JobOut(BaseModel):
    id: str
    kind: JobKind
    expert: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    request: dict[str, Any] = Field(description="What was asked: the data-root paths, replace, steps.")
    progress: JobProgressOut
    created_at: float = Field(description="Unix time it was submitted.")
    started_at: float | None
    finished_at: float | None
    error: str | None = Field(description="Why it failed, or was interrupted.")
    published_version: int | None = Field(
        description="The expert version it published, once it succeeded (none for an index job with mode=add, "
        "whose documents are live writes to the version served, nor for a tune-fusion job that found the "
        "weight unchanged: their logs say so)."
    )
    log_tail: list[str] = Field(description="The last lines the job logged.")


class JobListOut(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first.")


class UploadOut(BaseModel):
    """``POST /admin/uploads``: a file received whole; name its ``path`` in ``POST /admin/jobs``."""

    path: str = Field(description="Relative to the data root: what a job's `corpus`, `queries` or `qrels` names.")
    name: str = Field(description="The name it was sent with (its suffix says the format).")
    bytes: int = Field(description="Its size.")
    sha256: str | None = Field(description="SHA-256 of the bytes received (given when it is received).")
    created_at: float = Field(description="Unix time it was received.")


class UploadListOut(BaseModel):
    uploads: list[UploadOut] = Field(description="Newest first.")
