"""Writing the documents of published experts: upsert, delete, read one, merge.

The API routes and ``rr documents`` call these; each takes the expert as it is
published now. A write to one expert holds that expert's document lock (from
:meth:`~app.engine.engine.SearchEngine.document_lock`) for its embedding and commit,
so two writers to one expert run one after the other and an expert is never
replaced between a write's commit and its acknowledgement; writers to other
experts and all searches go on meanwhile. After a write, a background merge
starts when the expert's merge policy asks for one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Generic, TypeVar

from app.engine.documents import ExpertDocuments
from app.engine.engine import SearchEngine
from app.engine.loading import LoadedExpert, unload_expert
from app.errors import ConflictError, UnknownDocumentError
from experts import Encoder, UnknownExpertError
from index import DeleteReport, Document, MergeReport, UpsertReport

logger = logging.getLogger(__name__)

Report = TypeVar("Report", UpsertReport, DeleteReport)

#: Documents per upsert when writes are carried to another version (each batch is embedded, then committed).
CARRY_BATCH = 256


@dataclass(frozen=True)
class Written(Generic[Report]):
    """A write's report and the expert's state right after it."""

    report: Report
    documents: int
    merging: bool


class DocumentWriter:
    """The document operations on ``engine``'s published experts.

    ``check_servable`` (the publisher's) refuses an expert that is published
    but failed to load, with its reason, before the unknown-expert 404.
    """

    def __init__(self, engine: SearchEngine, *, check_servable=lambda name: None) -> None:
        self.engine = engine
        self._check_servable = check_servable

    def expert(self, name: str) -> LoadedExpert:
        self._check_servable(name)
        expert = self.engine.experts.get(name)
        if expert is None:
            raise UnknownExpertError(f"Expert {name!r} not found. Published experts: {sorted(self.engine.experts)}")
        return expert

    def upsert(self, name: str, docs: Sequence[Document]) -> Written[UpsertReport]:
        """Insert or replace documents of ``name``; durable and searchable once this returns."""
        with self.engine.document_lock(name):
            expert = self.expert(name)  # the one published now, looked up under the lock
            report = expert.documents.upsert(docs)
        return self._written(expert, report)

    def delete(self, name: str, doc_ids: Sequence[str]) -> Written[DeleteReport]:
        """Delete documents of ``name`` by id; durable and gone from searches once this returns."""
        with self.engine.document_lock(name):
            expert = self.expert(name)
            report = expert.documents.delete(doc_ids)
        return self._written(expert, report)

    def get(self, name: str, doc_id: str) -> Document:
        document = self.expert(name).documents.get(doc_id)
        if document is None:
            raise UnknownDocumentError(f"expert {name!r} has no document {doc_id!r}")
        return document

    def merge(self, name: str, *, timeout: float | None = None) -> tuple[MergeReport | None, LoadedExpert]:
        """Fold ``name``'s live writes into a new index generation now (or join the running merge) and wait.

        Returns the report (None when there was nothing to fold in) and the
        expert as published afterwards (its manifest names the new generation).
        """
        expert = self.expert(name)
        future = expert.documents.start_merge(force=True)
        if future is None:
            expert.documents.check_writable()  # this process cannot write it: say why
        report = future.result(timeout) if future is not None else None
        return report, self.expert(name)

    def _written(self, expert: LoadedExpert, report: Report) -> Written[Report]:
        merge: Future[MergeReport | None] | None = expert.documents.start_merge()
        if merge is not None:
            logger.info("expert %r: merging its live writes in the background", expert.name)
        return Written(report, len(expert.documents), expert.documents.merging)


@dataclass(frozen=True)
class Carried:
    """The documents a rollback carried to the version it serves: ids upserted there, and ids deleted there."""

    upserted: list[str]
    deleted: list[str]


def carry_writes(source: ExpertDocuments, target: ExpertDocuments, *, since: int) -> Carried | None:
    """Write into ``target`` what the writes to ``source`` after its write ``since`` left: each document they
    touched as ``source`` holds it now, upserted (embedded by ``target``'s own rules), or deleted where it is gone.

    The caller holds the expert's document lock, so ``source`` takes no write meanwhile. None, with nothing
    written, where ``source``'s log does not record its changes back to ``since`` (written by an older release).

    >>> carry_writes(serving.documents, kept.documents, since=entry.live_seq)  # doctest: +SKIP
    Carried(upserted=['new-1'], deleted=['doc-7'])
    """
    changed = source.changed_since(since)
    if changed is None:
        return None
    view = source.view()  # one moment of the source: each id is either in it or not
    present = [(doc_id, view.get(doc_id)) for doc_id in changed]
    upserts = [document for _, document in present if document is not None]
    deletes = [doc_id for doc_id, document in present if document is None]
    for start in range(0, len(upserts), CARRY_BATCH):
        target.upsert(upserts[start : start + CARRY_BATCH])
    if deletes:
        target.delete(deletes)  # an id the target never held is reported missing, which is what we want
    return Carried(upserted=[d.id for d in upserts], deleted=deletes)


def carry_or_refuse(
    serving: LoadedExpert, loaded: LoadedExpert, encoder: Encoder, *, since: int, doing: str
) -> Carried | None:
    """:func:`carry_writes` from the serving version into ``loaded`` before a swap (a replace or a rollback).

    So no acknowledged write is lost by a swap. Nothing to carry where ``loaded`` opens the serving
    directory's own log (a reload of the same directory). A failure unloads ``loaded`` and refuses the swap
    (409), the serving version untouched; ``loaded``'s log may then hold some of the writes, which are
    acknowledged ones and are carried again next time. A log written by an older release, which does
    not record what changed, is not carried (logged).
    """
    if serving.directory.path.resolve() == loaded.directory.path.resolve():
        return None
    try:
        carried = carry_writes(serving.documents, loaded.documents, since=since)
    except Exception as exc:
        unload_expert(loaded, encoder)
        raise ConflictError(
            f"expert {serving.name!r} was not {doing}: the documents written since version "
            f"{serving.manifest.version} began serving could not be carried to the new one: {exc}",
            details={"reason": type(exc).__name__},
        ) from exc
    if carried is None:
        logger.warning(
            "expert %r: its live log does not record what changed since it began serving (an older release "
            "wrote it); documents written since then are not carried to the version it is %s",
            serving.name,
            doing,
        )
    return carried
