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

import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from app.offline.expert_training import train_expert
from experts import Encoder, TrainConfig, create_expert
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

    Returns the version published. ``work`` is removed on every way out; a failed publish removes the moved
    directory too, so nothing is left and nothing served changes.
    """
    target = Path(root) / name
    work.mkdir(parents=True, exist_ok=True)
    moved = False
    try:
        reporter.phase("counting documents")
        total = count_lines(corpus)
        expert = create_expert(work, name, encoder=encoder, description=f"indexed from {corpus.name} by a job")
        reporter.phase("indexing", total=total, unit="documents")
        _, report = index_expert(
            expert, encoder, [corpus], progress=False, chunk_size=chunk_size, on_embedded=reporter.advance
        )
        reporter.log(
            f"indexed {report.documents} documents ({report.malformed} malformed lines) in {report.seconds:.1f}s"
        )
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
    finally:
        if moved:
            shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def run_train_job(
    reporter: Reporter,
    *,
    root: Path,
    name: str,
    corpus: Path,
    queries: Path | None,
    qrels: Path | None,
    steps: int | None,
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
    config = TrainConfig() if steps is None else TrainConfig(steps=steps)
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
