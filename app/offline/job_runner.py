"""The jobs of ``/admin/jobs``: submitted, run one at a time in a worker thread beside the service, recorded.

One worker thread runs the jobs in the order they came (one at a time over
all experts: the CPUs are shared with the searches, and a second build would
only slow both); a second job for an expert that has one queued or running
is refused (409 naming it). The records are kept in
``<root>/.jobs/jobs.json`` (:mod:`app.offline.job_store`), so the list
survives a restart; a job that was queued or running when the server stopped
is shown as ``interrupted`` after it, and its staging files are removed;
except an index job that had begun indexing: its staging directory holds the
build checkpoint (``index/build``), and a new job, queued at start-up with
``request.resumes`` naming the interrupted one, continues from it.

``rr serve`` builds one with :func:`job_runner_factory` and hands it to the
app (:func:`app.api.main.create_app`); the API reaches it through
:class:`app.api.schemas_jobs.JobService`, never by importing this module.

>>> runner = JobRunner(root, encoder=encoder, publisher=publisher)  # doctest: +SKIP
>>> runner.submit(kind="index", expert="contracts", corpus="incoming/contracts.jsonl")["state"]
'queued'
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.engine.engine import SearchEngine
from app.errors import ConflictError, InvalidRequestError, UnknownJobError
from app.offline.job_kinds import JobStopped, run_add_job, run_index_job, run_train_job, run_tune_fusion_job
from app.offline.job_store import ACTIVE_STATES, IndexMode, JobKind, JobProgress, JobRecord, JobStore, new_job_id
from app.publishing.data_paths import data_file
from app.publishing.document_writes import DocumentWriter
from app.publishing.publisher import ExpertPublisher
from app.settings import Settings
from experts import Encoder, UnknownExpertError, check_expert_name

__all__ = ["JobRunner", "job_runner_factory"]

logger = logging.getLogger(__name__)

#: Progress is written to the records file at most this often (state changes are written at once).
_SAVE_EVERY_S = 1.0
#: How long closing waits for the running job to reach its next batch or step.
_CLOSE_TIMEOUT_S = 30.0


class _Reporter:
    """The :class:`~app.offline.job_kinds.Reporter` of one job: updates its record under the runner's lock."""

    def __init__(self, runner: JobRunner, record: JobRecord) -> None:
        self.runner, self.record = runner, record
        self.cancelled = False
        self.committed = False
        self._phase_started = time.monotonic()

    def phase(self, name: str, *, total: int | None = None, unit: str | None = None) -> None:
        with self.runner._lock:
            self.record.progress = JobProgress(phase=name, total=total, unit=unit)
            self.record.log(name + (f" ({total} {unit})" if total is not None else ""))
            self._phase_started = time.monotonic()
        self.runner._save(force=True)

    def advance(self, done: int, *, absolute: bool = False) -> None:
        self.check()
        with self.runner._lock:
            progress = self.record.progress
            progress.done = done if absolute else progress.done + done
            if progress.total is not None:
                progress.done = min(progress.done, progress.total)  # long documents embed as several windows
            elapsed = time.monotonic() - self._phase_started
            progress.rate = round(progress.done / elapsed, 2) if elapsed > 0 else None
            if progress.rate and progress.total is not None:
                progress.eta_s = round((progress.total - progress.done) / progress.rate, 1)
        self.runner._save()

    def check(self) -> None:
        if self.committed:
            return
        if self.cancelled:
            raise JobStopped("cancelled")
        if self.runner._closing.is_set():
            raise JobStopped("interrupted")

    def log(self, line: str) -> None:
        with self.runner._lock:
            self.record.log(line)
        logger.info("job %s (%s %s): %s", self.record.id, self.record.kind, self.record.expert, line)

    def publishing(self) -> None:
        with self.runner._lock:
            self.committed = True
        self.phase("publishing")


class JobRunner:
    """Jobs submitted, queued and run by one worker thread; their records kept under the data root."""

    def __init__(
        self,
        root: Path,
        *,
        encoder: Encoder,
        publisher: ExpertPublisher,
        query_max_length: int = 64,
        keep_versions: int = 3,
        index_chunk_size: int = 256,
        hybrid_candidates: int = 200,
    ) -> None:
        self.root = Path(root).resolve()
        self.encoder, self.publisher = encoder, publisher
        self.query_max_length, self.keep_versions = query_max_length, keep_versions
        self.hybrid_candidates = hybrid_candidates
        self.index_chunk_size = index_chunk_size
        self.store = JobStore(self.root)
        # The documents API's own write path (the same engine, so the same per-expert document lock).
        self.writer = DocumentWriter(publisher.engine, check_servable=publisher.check_servable)
        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._current: _Reporter | None = None
        self._last_save = 0.0
        self._records: dict[str, JobRecord] = {r.id: r for r in self.store.load()}
        self._interrupt_leftovers()
        self._thread = threading.Thread(target=self._work, name="rr-jobs", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the API's side
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
    ) -> dict[str, Any]:
        """Check the request, queue the job and return its record (``queued``); nothing runs on the caller's thread.

        An index job's ``mode`` is ``create`` (a new expert) or ``add`` (upsert into a published one);
        ``skip_malformed`` lets an index or train job skip the corpus's malformed lines instead of failing on them.
        """
        check_expert_name(expert)
        if kind != "index" and mode != "create":
            raise InvalidRequestError(f"mode applies to index jobs only, not to {kind} jobs")
        if kind == "tune-fusion" and skip_malformed:
            raise InvalidRequestError("skip_malformed applies to jobs with a corpus (index, train), not to tune-fusion")
        files = {}
        if kind == "tune-fusion":
            if corpus is not None:
                raise InvalidRequestError("a tune-fusion job tunes a published expert on its own index: send no corpus")
        elif corpus is None:
            raise InvalidRequestError(f"a {kind} job needs a corpus (a file under the data root)")
        else:
            files["corpus"] = data_file(corpus, self.root, what="corpus")
        if (queries is None) != (qrels is None):
            raise InvalidRequestError(
                "give both queries and qrels (labelled training), or neither (corpus-only training)"
            )
        if queries is not None and qrels is not None:
            files["queries"] = data_file(queries, self.root, what="queries file")
            files["qrels"] = data_file(qrels, self.root, what="qrels file")
        with self._lock:
            busy = [r for r in self._records.values() if r.expert == expert and r.state in ACTIVE_STATES]
            if busy:
                raise ConflictError(
                    f"expert {expert!r} already has a job {busy[0].state}: {busy[0].id}; wait for it or cancel it "
                    f"(DELETE /admin/jobs/{busy[0].id})",
                    details={"job": busy[0].id},
                )
            self._check_expert(kind, expert, replace=replace, mode=mode)
            request: dict[str, Any] = {key: str(path.relative_to(self.root)) for key, path in files.items()}
            request.update(replace=replace, steps=steps, batch_size=batch_size)
            if kind == "index":
                request.update(mode=mode)
            if kind != "tune-fusion":
                request.update(skip_malformed=skip_malformed)
            record = JobRecord(id=new_job_id(), kind=kind, expert=expert, request=request)
            source = request.get("corpus") or (f"{queries} + {qrels}" if queries else "pseudo queries")
            what = f"{kind} ({mode})" if kind == "index" else kind
            record.log(f"queued: {what} {expert} from {source}")
            self._records[record.id] = record
            self._save(force=True)
            self._wake.notify_all()
            return record.to_dict()

    def records(self) -> list[dict[str, Any]]:
        """Every job kept, newest first."""
        with self._lock:
            return [r.to_dict() for r in sorted(self._records.values(), key=lambda r: r.created_at, reverse=True)]

    def record(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._get(job_id).to_dict()

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued job at once, a running one at its next batch or step; a finished one is left as it is."""
        with self._lock:
            record = self._get(job_id)
            if record.state == "queued":
                record.log("cancelled before it started")
                self._finish(record, "cancelled", None)
            elif record.state == "running" and self._current is not None and self._current.record is record:
                if self._current.committed:
                    raise ConflictError(
                        f"job {job_id} is publishing {record.expert!r} and can no longer be cancelled",
                        details={"job": job_id},
                    )
                self._current.cancelled = True
                record.log("cancel requested: stopping at the next batch or step")
            return record.to_dict()

    def close(self) -> None:
        """Stop the worker: the running job ends at its next batch or step; it and the queued ones are ``interrupted``."""
        self._closing.set()
        with self._lock:
            self._wake.notify_all()
        self._thread.join(timeout=_CLOSE_TIMEOUT_S)
        with self._lock:
            for record in self._records.values():
                if record.state in ACTIVE_STATES:
                    self._finish(record, "interrupted", "the server stopped before the job finished")

    # ------------------------------------------------------------------ the worker
    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closing.is_set() and not (queued := self._queued()):
                    self._wake.wait()
                if self._closing.is_set():
                    return
                record = queued[0]
                record.state, record.started_at = "running", time.time()
                reporter = self._current = _Reporter(self, record)
                self._save(force=True)
            try:
                version = self._run(reporter)
            except JobStopped as stop:
                state = "cancelled" if stop.reason == "cancelled" else "interrupted"
                with self._lock:
                    self._finish(record, state, None if state == "cancelled" else "the server stopped")
            except Exception as exc:
                logger.exception("job %s (%s %s) failed", record.id, record.kind, record.expert)
                with self._lock:
                    self._finish(record, "failed", f"{type(exc).__name__}: {exc}")
            else:
                with self._lock:
                    record.published_version = version
                    self._finish(record, "succeeded", None)
            finally:
                with self._lock:
                    self._current = None

    def _run(self, reporter: _Reporter) -> int | None:
        record = reporter.record
        labelled = {
            key: self.root / record.request[key] if record.request.get(key) else None for key in ("queries", "qrels")
        }
        if record.kind == "tune-fusion":
            return run_tune_fusion_job(
                reporter,
                name=record.expert,
                serving=lambda: self._serving_directory(record.expert),
                queries=labelled["queries"],
                qrels=labelled["qrels"],
                encoder=self.encoder,
                republish=self._republish,
                candidates=self.hybrid_candidates,
                max_length=self.query_max_length,
            )
        corpus = self.root / record.request["corpus"]
        skip_malformed = bool(record.request.get("skip_malformed"))
        if record.kind == "index" and record.request.get("mode") == "add":
            run_add_job(
                reporter,
                name=record.expert,
                corpus=corpus,
                writer=self.writer,
                skip_malformed=skip_malformed,
                batch_size=self.index_chunk_size,
            )
            return None  # live writes: the expert's version stays; its document count grew (the log says)
        if record.kind == "index":
            return run_index_job(
                reporter,
                root=self.root,
                work=self.store.work_root / record.id,
                name=record.expert,
                corpus=corpus,
                encoder=self.encoder,
                publish=self._publish,
                query_max_length=self.query_max_length,
                chunk_size=self.index_chunk_size,
                skip_malformed=skip_malformed,
            )
        return run_train_job(
            reporter,
            root=self.root,
            work=self.store.work_root / record.id,
            name=record.expert,
            corpus=corpus,
            queries=labelled["queries"],
            qrels=labelled["qrels"],
            steps=record.request.get("steps"),
            batch_size=record.request.get("batch_size"),
            replace=bool(record.request.get("replace")),
            encoder=self.encoder,
            publish=self._publish,
            keep_versions=self.keep_versions,
            skip_malformed=skip_malformed,
        )

    def _publish(self, name: str, replace: bool) -> int:
        entry = self.publisher.add_path(name, replace=replace)
        return entry.version

    def _serving_directory(self, name: str) -> Path:
        entry = self.publisher.entries.get(name)
        if entry is None:
            raise UnknownExpertError(
                f"expert {name!r} is no longer published; published: {sorted(self.publisher.entries)}"
            )
        return self.root / entry.path

    def _republish(self, directory: Path) -> int:
        """The publisher's replace, from the directory the expert is served from (its manifest changed in place)."""
        return self.publisher.add_path(directory.relative_to(self.root).as_posix(), replace=True).version

    # ------------------------------------------------------------------ records
    def _check_expert(self, kind: JobKind, expert: str, *, replace: bool, mode: IndexMode = "create") -> None:
        """An index job makes a new expert (``create``) or adds to a published one (``add``); a train job makes
        one (name free) or replaces a published one; a tune-fusion job tunes a published one."""
        published = self.publisher.entries
        if kind == "index" and mode == "add":
            if expert not in published:
                raise UnknownExpertError(
                    f"expert {expert!r} is not published, so there is nothing to add to; published experts: "
                    f"{sorted(published)} (or send mode=create to make a new one)"
                )
            return
        if kind == "tune-fusion":
            if expert not in published:
                raise UnknownExpertError(
                    f"expert {expert!r} is not published, so there is nothing to tune; published experts: "
                    f"{sorted(published)}"
                )
            return
        exists = expert in published or (self.root / expert).exists()
        if kind == "index" and exists:
            raise ConflictError(
                f"expert {expert!r} already exists; an index job with mode=create makes a new expert: pick another "
                "name, send mode=add to upsert the corpus's documents into it, or retrain it with a train job and "
                "replace=true"
            )
        if kind == "train" and replace and expert not in published:
            raise UnknownExpertError(
                f"expert {expert!r} is not published, so there is nothing to replace; published experts: "
                f"{sorted(published)} (or send replace=false to make a new one)"
            )
        if kind == "train" and not replace and exists:
            raise ConflictError(f"expert {expert!r} already exists: send replace=true to retrain and swap it")

    def _queued(self) -> list[JobRecord]:
        return sorted((r for r in self._records.values() if r.state == "queued"), key=lambda r: r.created_at)

    def _get(self, job_id: str) -> JobRecord:
        record = self._records.get(job_id)
        if record is None:
            recent = [r.id for r in sorted(self._records.values(), key=lambda r: r.created_at)[-5:]]
            raise UnknownJobError(f"job {job_id[:80]!r} not found; the most recent jobs: {recent}")
        return record

    def _finish(self, record: JobRecord, state: str, error: str | None) -> None:
        record.state = state  # type: ignore[assignment]  # one of JobState, chosen by the callers above
        record.error, record.finished_at = error, time.time()
        record.progress.eta_s = None
        record.log(state + (f": {error}" if error else ""))
        logger.info("job %s (%s %s) %s%s", record.id, record.kind, record.expert, state, f": {error}" if error else "")
        self._save(force=True)

    def _save(self, *, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last_save < _SAVE_EVERY_S:
                return
            self._last_save = now
            try:
                self.store.save(list(self._records.values()))
            except OSError:  # a full disk must not kill the job or the request: the records stay in memory
                logger.exception("cannot write the job records to %s", self.store.path)

    def _interrupt_leftovers(self) -> None:
        """At start-up: jobs active when the last server stopped are ``interrupted``, and their staging goes;
        except the work directory of an index job (its build checkpoint) or of a train job (its training
        checkpoint): a new job resumes from it (``request.resumes``)."""
        for record in self._records.values():
            if record.state in ACTIVE_STATES:
                self._finish(record, "interrupted", "the server stopped before the job finished")
                if record.kind == "train":  # train_expert's own staging, left by a killed process
                    for orphan in self.root.glob(f".{record.expert}.train-*.tmp"):
                        shutil.rmtree(orphan, ignore_errors=True)
        work = self.store.work_root
        for staged in sorted(work.iterdir()) if work.is_dir() else []:
            old = self._records.get(staged.name)
            resumable = old is not None and old.kind in ("index", "train") and old.state == "interrupted"
            if old is None or not resumable or "resumed_by" in old.request:
                shutil.rmtree(staged, ignore_errors=True)
                continue
            resumed = JobRecord(
                id=new_job_id(), kind=old.kind, expert=old.expert, request={**old.request, "resumes": old.id}
            )
            what = "build" if old.kind == "index" else "training"
            resumed.log(f"queued: resumes the interrupted job {old.id} from its {what} checkpoint")
            staged.rename(work / resumed.id)
            old.request = {**old.request, "resumed_by": resumed.id}
            old.log(f"resumed by job {resumed.id}")
            self._records[resumed.id] = resumed
            logger.info("job %s (%s %s) resumes the interrupted job %s", resumed.id, old.kind, old.expert, old.id)
        self._save(force=True)


def job_runner_factory(settings: Settings) -> Callable[[SearchEngine, ExpertPublisher], JobRunner]:
    """What ``rr serve`` hands to the app: given the serving engine and publisher, the job runner."""

    def make(engine: SearchEngine, publisher: ExpertPublisher) -> JobRunner:
        return JobRunner(
            settings.data_dir,
            encoder=engine.encoder,
            publisher=publisher,
            query_max_length=settings.query_max_length,
            keep_versions=settings.keep_versions,
            hybrid_candidates=settings.hybrid_candidates,
        )

    return make
