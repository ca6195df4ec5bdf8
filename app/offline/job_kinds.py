"""What each kind of job does: ``index`` (a new expert from a corpus) and ``train`` (an expert trained on one).

Both build beside the running service, as ``rr demo`` does
(:func:`app.offline.demo.build_beside_service`): the serving encoder embeds
in bulk passes (``experts.model_lock``), so searches go first; then the
finished directory is published by the publisher's atomic add
(``publish``), so searches never see half an expert.

Each run reports through a :class:`Reporter`, whose ``advance`` and ``check``
raise :class:`JobStopped` when the job is cancelled or the server stops:
between indexing batches and between training steps. Until ``publishing``
nothing is visible outside the job's staging directory, which is removed on
every way out; from ``publishing`` on a job is no longer stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from app.offline.expert_training import train_expert
from experts import MANIFEST_FILE, Encoder, ExpertDir, TrainConfig, create_expert
from index import count_lines

__all__ = ["JobStopped", "Publish", "Reporter", "run_index_job", "run_train_job"]

logger = logging.getLogger(__name__)

#: ``publish(name, replace)``: put the expert directory ``<root>/<name>`` into service atomically; returns its version.
Publish = Callable[[str, bool], int]


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
) -> int:
    """Create ``name`` in ``work``, index ``corpus``, build pilots, move it to ``<root>/<name>`` and publish it.

    Returns the version published. ``work`` is removed on every way out (except when the server stops: it
    then holds the build checkpoint that the job resumed after the restart continues from); a failed publish
    removes the moved directory too, so nothing is left and nothing served changes.
    """
    target = Path(root) / name
    work.mkdir(parents=True, exist_ok=True)
    moved = keep = False
    try:
        reporter.phase("counting documents")
        total = count_lines(corpus)
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
) -> int:
    """Train ``name`` on ``corpus`` (and labelled queries) with :func:`train_expert`, then publish it.

    ``train_expert`` stages under ``<root>`` and removes its staging directory on every way out; its swap
    into ``<root>/<name>`` comes after the last training step, and the job publishes right after.
    """
    reporter.phase("counting documents")
    total = count_lines(corpus)
    reporter.phase("indexing", total=total, unit="documents")
    defaults = TrainConfig()
    config = dataclasses.replace(defaults, steps=steps or defaults.steps, batch_size=batch_size or defaults.batch_size)
    training = False

    def on_step(done: int, of: int) -> None:
        nonlocal training
        if not training:
            training = True
            reporter.phase("training", total=of, unit="steps")
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
    )
    reporter.log(
        f"trained {result.train.pairs} pairs in {result.train.seconds:.1f}s: "
        f"loss {result.train.first_loss:.3f} -> {result.train.final_loss:.3f}"
    )
    return publish(name, replace)
