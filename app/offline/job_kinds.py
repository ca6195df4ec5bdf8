"""What each kind of job does: ``index`` (a new expert from a corpus, or, ``add``, a corpus upserted into a
published one), ``train`` (an expert trained on one) and ``tune-fusion`` (a published expert's hybrid fusion
weight tuned on its queries).

An index or train job reads its corpus through first (:func:`check_corpus`,
the indexer's own reader, nothing embedded): a malformed line fails the job
at once, naming the first few line numbers and what is wrong on each, and
nothing changes; ``skip_malformed`` skips them instead, as ``rr index`` does.

The first two build beside the running service, as ``rr demo`` does
(:func:`app.offline.demo.build_beside_service`): the serving encoder embeds
in bulk passes (``experts.model_lock``), so searches go first; then the
finished directory is published by the publisher's atomic add
(``publish``), so searches never see half an expert.

Each run reports through a :class:`Reporter`, whose ``advance`` and ``check``
raise :class:`JobStopped` when the job is cancelled or the server stops:
between indexing batches and between training steps. Until ``publishing``
nothing is visible outside the job's staging directory, which is removed on
every way out; from ``publishing`` on a job is no longer stopped.

``tune-fusion`` reads the served expert's own files (its index and adapter),
so it stages nothing: until ``publishing`` it has changed nothing; then the
tuned weight is written into the expert's manifest (a new version, replaced
atomically, as ``rr tune-fusion`` does) and the publisher's replace loads the
directory again and swaps it in. Should that fail, the manifest gets the
previous weight back and the previous version goes on serving.

An ``add`` job writes through the documents API's own path
(:class:`~app.publishing.document_writes.DocumentWriter`), batch by batch:
each batch is durable and searchable once written, all or nothing, and the
expert's other documents stay. It stops between batches; the batches written
before a cancel (or a server stop) stay written, and its log says how many.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from app.offline.expert_training import train_expert
from app.offline.fusion_tuning import TUNING_QUERIES, from_collection, tuned_section
from app.publishing.document_writes import DocumentWriter
from experts import MANIFEST_FILE, Encoder, ExpertDir, TrainConfig, create_expert
from index import Collection, CorpusError, CorpusProblem, Document, read_corpus, scan_corpus

__all__ = [
    "JobStopped",
    "Publish",
    "Reporter",
    "check_corpus",
    "run_add_job",
    "run_index_job",
    "run_train_job",
    "run_tune_fusion_job",
]

logger = logging.getLogger(__name__)

#: ``publish(name, replace)``: put the expert directory ``<root>/<name>`` into service atomically; returns its version.
Publish = Callable[[str, bool], int]


#: A train job's training checkpoint, in its work directory (what the job resumed after a restart goes on from).
TRAIN_CHECKPOINT = "train-checkpoint.pt"


class JobStopped(Exception):
    """Raised inside a job's run when it is cancelled or the server stops; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Reporter(Protocol):
    """How a run tells its job what it does; ``advance`` and ``check`` raise :class:`JobStopped` to stop it."""

    def phase(self, name: str, *, total: int | None = None, unit: str | None = None) -> None: ...

    def advance(self, done: int, *, absolute: bool = False) -> None: ...

    def check(self) -> None: ...

    def log(self, line: str) -> None: ...

    def publishing(self) -> None:
        """Phase ``publishing``: from here on the job is not stopped; it publishes, then ends."""
        ...


def check_corpus(reporter: Reporter, corpus: Path, *, skip_malformed: bool) -> int:
    """The documents in ``corpus``, read through before anything is embedded or written (phase ``checking the
    corpus``): a malformed line fails the job, naming the first few by line number, unless ``skip_malformed``
    (then they are logged and skipped, as ``rr index`` does); a repeated id always fails it (an index build
    and a live upsert both refuse one). An unreadable file raises :class:`CorpusError` saying why.
    """
    reporter.phase("checking the corpus")
    scan = scan_corpus(corpus, on_lines=lambda _: reporter.check())
    if scan.duplicates or (scan.malformed and not skip_malformed):
        hint = "" if scan.duplicates else ", or send skip_malformed=true to skip the malformed lines"
        raise CorpusError(f"{scan.describe()}; nothing was changed: fix the corpus{hint}")
    if scan.malformed:
        reporter.log(f"skipping (skip_malformed) {scan.describe()}")
    if not scan.documents:
        raise CorpusError(f"{corpus.name} holds no documents; nothing was changed")
    return scan.documents


def run_index_job(
    reporter: Reporter,
    *,
    root: Path,
    work: Path,
    name: str,
    corpus: Path,
    encoder: Encoder,
    publish: Publish,
    query_max_length: int,
    chunk_size: int = 256,
    skip_malformed: bool = False,
) -> int:
    """Check ``corpus`` (:func:`check_corpus`), create ``name`` in ``work``, index it, build pilots, move it to
    ``<root>/<name>`` and publish it.

    Returns the version published. ``work`` is removed on every way out (except when the server stops: it
    then holds the build checkpoint that the job resumed after the restart continues from); a failed publish
    removes the moved directory too, so nothing is left and nothing served changes.
    """
    target = Path(root) / name
    work.mkdir(parents=True, exist_ok=True)
    moved = keep = False
    try:
        total = check_corpus(reporter, corpus, skip_malformed=skip_malformed)
        expert = _staged_expert(reporter, work / name, corpus, encoder)
        if expert.read_manifest().index is None:
            reporter.phase("indexing", total=total, unit="documents")
            _, report = index_expert(
                expert, encoder, [corpus], progress=False, chunk_size=chunk_size, on_embedded=reporter.advance
            )
            resumed = f", resumed at line {report.resumed_from_line}" if report.resumed_from_line else ""
            reporter.log(
                f"indexed {report.documents} documents ({report.malformed} malformed lines) in "
                f"{report.seconds:.1f}s{resumed}"
            )
        if expert.read_manifest().pilots is None:
            reporter.phase("building pilots")
            texts = pilot_texts_from_documents(expert, sample=1000)
            reporter.check()
            build_pilots(expert, encoder, texts, source="pseudo queries", query_max_length=query_max_length)
            reporter.log(f"pilots from {len(texts)} pseudo queries")
        reporter.check()
        reporter.publishing()
        if target.exists():
            raise FileExistsError(f"{target} appeared while the job ran; nothing was published")
        shutil.rmtree(expert.path / ".work", ignore_errors=True)
        os.rename(expert.path, target)
        moved = True
        version = publish(name, False)
        moved = False  # published: it stays
        return version
    except JobStopped as stop:
        keep = stop.reason == "interrupted"  # the server stops: the job resumed at the next start continues here
        raise
    finally:
        if moved:
            shutil.rmtree(target, ignore_errors=True)
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run_add_job(
    reporter: Reporter,
    *,
    name: str,
    corpus: Path,
    writer: DocumentWriter,
    skip_malformed: bool = False,
    batch_size: int = 256,
) -> None:
    """Upsert the documents of ``corpus`` into the published expert ``name``, ``batch_size`` at a time, through
    the documents API's write path: each batch durable and searchable once written; its other documents stay.

    The corpus is checked first (:func:`check_corpus`), so a bad line fails the job before anything is
    written. Cancelled or stopped between batches: the batches written stay written (the log says how many).
    """
    total = check_corpus(reporter, corpus, skip_malformed=skip_malformed)
    reporter.phase("adding", total=total, unit="documents")
    written = created = replaced = documents = 0
    merging = False
    try:
        for batch in _document_batches(corpus, batch_size):
            reporter.check()
            done = writer.upsert(name, batch)
            written += len(batch)
            created, replaced = created + done.report.created, replaced + done.report.replaced
            documents, merging = done.documents, done.merging
            reporter.advance(len(batch))
    except Exception as exc:  # a cancel or stop (JobStopped), or a failed batch: the batches before it stay
        if written:
            how = "stopped" if isinstance(exc, JobStopped) else "failed"
            reporter.log(
                f"{how} after {written} of {total} documents ({created} new, {replaced} replaced): the batches "
                f"written stay written and searchable in {name!r} (the same job sent again upserts them all again)"
            )
        raise
    reporter.log(
        f"added {written} documents to {name!r} ({created} new, {replaced} replaced); it holds {documents} now"
        + (" (merging its live writes in the background)" if merging else "")
    )


def _document_batches(corpus: Path, size: int) -> Iterator[list[Document]]:
    """The corpus's documents in batches of ``size``; malformed lines (checked already) skipped."""
    batch: list[Document] = []
    for _, item in read_corpus(corpus):
        if isinstance(item, CorpusProblem):
            continue
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _staged_expert(reporter: Reporter, staged: Path, corpus: Path, encoder: Encoder) -> ExpertDir:
    """The expert being built in ``staged``: the one an interrupted run left (its build checkpoint inside, so
    indexing resumes where it stopped), or a new one."""
    if (staged / MANIFEST_FILE).is_file():
        reporter.log("resuming the build left by the interrupted job")
        return ExpertDir(staged)
    shutil.rmtree(staged, ignore_errors=True)  # a creation cut off before its manifest
    return create_expert(
        staged.parent, staged.name, encoder=encoder, description=f"indexed from {corpus.name} by a job"
    )


def run_train_job(
    reporter: Reporter,
    *,
    root: Path,
    work: Path,
    name: str,
    corpus: Path,
    queries: Path | None,
    qrels: Path | None,
    steps: int | None,
    batch_size: int | None,
    replace: bool,
    encoder: Encoder,
    publish: Publish,
    keep_versions: int,
    skip_malformed: bool = False,
) -> int:
    """Train ``name`` on ``corpus`` (and labelled queries) with :func:`train_expert`, then publish it.

    The corpus is checked first (:func:`check_corpus`: a malformed line fails the job before anything is
    embedded, unless ``skip_malformed``). ``train_expert`` stages under ``<root>`` and removes its staging
    directory on every way out; its swap into ``<root>/<name>`` comes after the last training step, and the
    job publishes right after. The training writes a checkpoint into ``work`` every
    :data:`~experts.train_checkpoint.CHECKPOINT_EVERY` steps; ``work`` is removed on every way out except when
    the server stops, and the job resumed at the next start trains on from that checkpoint (the index is
    built again first, or reused from the serving version; the adapter comes out as an uninterrupted run's).
    """
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / TRAIN_CHECKPOINT
    keep = False
    try:
        total = check_corpus(reporter, corpus, skip_malformed=skip_malformed)
        if checkpoint.is_file():
            reporter.log("the interrupted job's training checkpoint is here: training goes on from it once indexed")
        reporter.phase("indexing", total=total, unit="documents")
        defaults = TrainConfig()
        config = dataclasses.replace(
            defaults, steps=steps or defaults.steps, batch_size=batch_size or defaults.batch_size
        )
        training = False

        def on_step(done: int, of: int) -> None:
            nonlocal training
            if not training:
                training = True
                reporter.phase("training", total=of, unit="steps")
                if done > 1:
                    reporter.log(f"training resumed from its checkpoint after step {done - 1} of {of}")
            reporter.advance(done, absolute=True)
            if done == of:  # the last step: pilots and the swap follow, and the job then publishes
                reporter.publishing()

        result = train_expert(
            root,
            name,
            encoder=encoder,
            corpora=[corpus],
            queries=queries,
            qrels=qrels,
            config=config,
            replace=(Path(root) / name).exists(),
            keep_versions=keep_versions,
            progress=False,
            on_embedded=reporter.advance,
            on_step=on_step,
            description=f"trained from {corpus.name} by a job",
            checkpoint=checkpoint,
        )
        reporter.log(
            f"trained {result.train.pairs} pairs in {result.train.seconds:.1f}s: "
            f"loss {result.train.first_loss:.3f} -> {result.train.final_loss:.3f}"
        )
        return publish(name, replace)
    except JobStopped as stop:
        keep = stop.reason == "interrupted"  # the server stops: the job resumed at the next start goes on from here
        raise
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def run_tune_fusion_job(
    reporter: Reporter,
    *,
    name: str,
    serving: Callable[[], Path],
    queries: Path | None,
    qrels: Path | None,
    encoder: Encoder,
    republish: Callable[[Path], int],
    candidates: int,
    max_length: int,
    limit: int = TUNING_QUERIES,
) -> int | None:
    """Tune the served expert ``name``'s dense/BM25 fusion weight on labelled (``queries`` + ``qrels``) or pseudo
    queries (:mod:`app.offline.fusion_tuning`), then publish it with ``republish(directory)``.

    ``serving()`` is the directory the expert is served from now. Returns the version published, or None when
    the tuned weight is the one the manifest has already (nothing to publish: the job's log says so).
    """
    directory = serving()
    expert = ExpertDir(directory)
    manifest = expert.read_manifest()
    if manifest.index is None:
        raise ValueError(f"expert {name!r} has no index to tune on")
    reporter.phase("choosing tuning queries")
    with Collection.open(directory / manifest.index.directory) as collection:
        tuning = from_collection(collection, queries=queries, qrels=qrels, limit=limit)
    reporter.phase("embedding queries", total=len(tuning.texts), unit="queries")
    section = tuned_section(
        expert, encoder, tuning, candidates=candidates, max_length=max_length, on_embedded=reporter.advance
    )
    best, default = section.curve[f"{section.weight:.2f}"], section.curve.get("0.50", float("nan"))
    reporter.log(f"dense weight {section.weight}: nDCG@10 {best:.4f} on {section.tuned_on} (0.5 gives {default:.4f})")
    reporter.check()
    previous = expert.read_manifest().retrieval
    if previous is not None and (previous.weight, previous.fusion) == (section.weight, section.fusion):
        reporter.log(
            f"unchanged: the manifest's weight is {previous.weight} already (tuned on {previous.tuned_on}); "
            "nothing published"
        )
        return None
    if serving() != directory:
        raise RuntimeError(f"expert {name!r} was replaced while the job tuned it; nothing was published")
    reporter.publishing()
    was = "untuned" if previous is None else f"{previous.weight}"
    tuned = expert.publish(retrieval=section)
    try:
        version = republish(directory)
    except Exception:
        if previous is not None:  # the manifest says again what is served (a new version of the same settings)
            expert.publish(retrieval=previous)
        else:
            logger.error(
                "expert %r: manifest version %d holds the tuned weight %s but was not served; it is served from "
                "the next start, or the next add with replace", name, tuned.version, section.weight,
            )  # fmt: skip
        raise
    reporter.log(f"published version {version}: dense weight {was} -> {section.weight}")
    return version
