"""A live collection: upsert and delete documents of a published, immutable collection, merge in the background.

::

    published generation (immutable)    + delta segment (new/changed docs) - tombstones (deleted/replaced rows)
    index-000007/ dense, docs, BM25        live/live.sqlite: the write-ahead log, replayed on open

* **Write path.** An upsert embeds its documents first (with the base
  encoder: experts are query-side, so an upsert never touches an adapter),
  then, under the collection's writer lock, commits them to the log in one
  transaction (WAL, ``synchronous=FULL``), then builds the next
  :class:`~index.live.view.LiveView` and swaps it in. Only then does it
  return: an acknowledged write is on disk and visible to every later search,
  dense and lexical alike. A delete is the same without the embedding.
* **Row ids** of new documents are allocated above every row id of the main
  segment and above every id this log handed out before, so they never
  collide with a main row, and a replaced document's old row is tombstoned by
  id without ambiguity.
* **Readers** take the current view (one reference read) and search it; they
  never wait for a writer or a merge.
* **Merge** (:meth:`LiveCollection.merge`, or :meth:`start_merge` in a
  background thread) writes the view of one moment as a new generation (see
  :mod:`index.live.merge`), lets the caller commit it (the expert's manifest), then
  truncates the log up to that moment and swaps the new main segment in; writes
  that arrived meanwhile stay in the delta and tombstones. A process killed
  at any point of a merge restarts with the old generation and the full log,
  or with the new generation and the log that is left (see :meth:`open`).

* **Long documents** follow the main segment's recorded policy
  (``index.json``'s ``chunking``; see :mod:`index.long_documents`): under
  ``chunk`` an upsert splits each passage with the ``split`` function given
  to :meth:`LiveCollection.open` and logs one vector and span per window;
  under ``error`` an over-long document fails the whole upsert with
  :class:`~index.errors.LongDocumentError`. A delete or replacement removes
  the document's row, and with it all its chunks.

Different experts have different LiveCollections and logs, so their writers
never wait on each other.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import numpy as np

from index.build.embedding import EmbedFn
from index.corpus import Document
from index.errors import BuildInProgressError, CorpusError, InvalidParameterError
from index.live.log import LiveLog, LogEntry
from index.live.merge import MergePolicy, write_generation
from index.live.recovery import main_fingerprint, replay
from index.live.reports import DeleteReport, LiveStats, MergeReport, UpsertReport
from index.live.upsert_embedding import check_documents, embed_documents
from index.live.view import DeltaSegment, LiveView
from index.long_documents import SplitFn
from index.store.analysis import Analyzer
from index.store.collection import Collection, Hit
from index.store.filter_tree import FilterExpr
from index.store.metadata_fields import FieldInfo

__all__ = ["LiveCollection"]

logger = logging.getLogger(__name__)

CommitFn = Callable[[Collection], None]
"""Called with the merged generation, opened, before the log is truncated (e.g. publish the expert's manifest)."""


class LiveCollection:
    """A published collection plus a write-ahead log: upsert, delete, search, merge.

    >>> main = Collection.open(index_dir)  # doctest: +SKIP
    >>> live = LiveCollection.open(main, Path("live/live.sqlite"), embed=embed, split=make_split_fn(encoder))
    >>> live.upsert([Document("new-1", "Title", "Body", {"year": 2026})])
    >>> scores, ids = live.search_dense(query_vectors, 10)
    >>> live.hits(scores, ids)
    >>> live.merge(expert_dir.new_index_path(), commit=publish_manifest)

    It owns the collections it opens or is given, and closes them in :meth:`close`.
    """

    def __init__(
        self,
        log: LiveLog,
        view: LiveView,
        *,
        log_id: str,
        next_row_id: int,
        embed: EmbedFn | None,
        split: SplitFn | None = None,
    ) -> None:
        """Private: use :meth:`open`."""
        self._log = log
        self._view = view
        self._log_id = log_id
        self._next_row_id = next_row_id
        self._embed = embed
        self._split = split
        self._write_lock = threading.Lock()  # serialises writers (and a merge's final swap)
        self._merge_lock = threading.Lock()  # one merge at a time
        self._retired: list[Collection] = []  # older main segments: searches may still hold views of them
        lexical = view.main.info.lexical
        self._analyzer = None if lexical is None else Analyzer(lexical)  # the writers' (one stemmer per thread)

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def open(
        cls, main: Collection, log_path: Path, *, embed: EmbedFn | None = None, split: SplitFn | None = None
    ) -> LiveCollection:
        """Put the log at ``log_path`` (created when missing) over ``main`` and replay it.

        ``embed`` maps passages to (n, dim) L2-normalised float32 base-encoder
        vectors; upserts need it (and merges of lossy indexes). ``split``
        (``experts.make_split_fn(encoder, overlap=...)``, with the overlap the
        collection records) cuts long passages into token windows; upserts
        need it when ``main`` was built with long-document policy ``chunk`` or
        ``error``. The log must
        belong to ``main``: it is, when it was written over ``main`` itself, or
        when ``main`` is a merge of this very log (then the writes it already
        contains are dropped from the log: the merge was killed before its
        truncation). A log with writes over another generation (a rebuilt
        index, say) is refused with :class:`IndexFileError`; an empty one is
        simply bound to ``main``.
        """
        log, view, log_id, next_row_id = replay(main, Path(log_path))
        return cls(log, view, log_id=log_id, next_row_id=next_row_id, embed=embed, split=split)

    def close(self) -> None:
        """Close the log and every main segment this object held; wait for a running merge first."""
        with self._merge_lock, self._write_lock:
            self._log.close()
            for collection in [*self._retired, self._view.main]:
                collection.close()
            self._retired.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ reading (delegated to the current view)
    def view(self) -> LiveView:
        """The current state, immutable: take it once per request to search and fetch hits consistently."""
        return self._view

    @property
    def main(self) -> Collection:
        """The current main segment (the published generation)."""
        return self._view.main

    @property
    def has_lexical(self) -> bool:
        return self._view.has_lexical

    def __len__(self) -> int:
        return len(self._view)

    def search_dense(
        self, queries: np.ndarray, k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`LiveView.search_dense`."""
        return self._view.search_dense(queries, k, allowed=allowed)

    def search_lexical(
        self, texts: Sequence[str], k: int, *, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`LiveView.search_lexical`."""
        return self._view.search_lexical(texts, k, allowed=allowed)

    def hits(self, scores: np.ndarray, ids: np.ndarray, *, queries: np.ndarray | None = None) -> list[list[Hit]]:
        """See :meth:`LiveView.hits` (prefer one view for the search and its hits)."""
        return self._view.hits(scores, ids, queries=queries)

    def get(self, doc_id: str) -> Document | None:
        """The live document with this corpus id, or None (``GET /experts/{name}/documents/{id}``)."""
        return self._view.get(doc_id)

    def changed_since(self, seq: int) -> list[str] | None:
        """Ids of the documents upserted or deleted after write ``seq``; None where the log cannot tell."""
        return self._log.changed_since(seq)

    def select(self, filter: FilterExpr | Mapping[str, Any], *, check: bool = True) -> np.ndarray:
        """Live row ids matching a metadata filter, for ``allowed=``; see :meth:`LiveView.select`."""
        return self._view.select(filter, check=check)

    def metadata_fields(self) -> dict[str, FieldInfo]:
        """The metadata fields a filter may name, over both segments."""
        return self._view.metadata_fields()

    def stats(self) -> LiveStats:
        view = self._view
        return LiveStats(len(view), len(view.main_ids), len(view.delta), len(view.main_dead), view.seq)

    def merge_due(self, policy: MergePolicy) -> bool:
        """Whether ``policy`` asks for a merge now (the service calls this after writes)."""
        stats = self.stats()
        return policy.due(main_docs=stats.main_documents, delta_docs=stats.delta_documents, tombstones=stats.tombstones)

    # ------------------------------------------------------------------ writing
    def _swap(self, view: LiveView, entries: dict[int, LogEntry], tombstones: dict[int, int], seq: int) -> None:
        info = view.main.info
        delta = DeltaSegment.build(
            entries, dim=info.dim, lexical=info.lexical, previous=view.delta, analyzer=self._analyzer
        )
        self._view = LiveView.build(view.main, view.main_ids, delta, tombstones, seq, log=self._log)

    def upsert(self, docs: Sequence[Document]) -> UpsertReport:
        """Insert or replace documents; returns once the write is durable and searchable.

        All or nothing: a bad document (duplicate id in the batch, no text,
        unserialisable metadata) or a failed embedding leaves the collection as
        it was. Embedding happens before the writer lock is taken, so writers
        only queue behind each other for the commit and the swap.
        """
        docs = list(docs)
        check_documents(docs)
        if not docs:
            return UpsertReport(seq=self._view.seq, row_ids=[], created=0, replaced=0)
        if self._embed is None:
            raise InvalidParameterError("this live collection was opened without an embed function; it cannot upsert")
        per_doc = embed_documents(docs, self._view.main.info, self._embed, self._split)
        with self._write_lock:
            view = self._view
            seq = view.seq + 1
            entries = dict(view.delta.entries)
            tombstones = dict(view.tombstones)
            removed_delta, dead, replaced = [], [], 0
            for old in self._live_rows(view, [doc.id for doc in docs]):
                if old is None:
                    continue
                replaced += 1
                dead.append(old)
                if old in entries:
                    removed_delta.append(old)
                    del entries[old]
            rows = list(range(self._next_row_id, self._next_row_id + len(docs)))
            added = [
                LogEntry(r, doc, chunk_vectors, seq, doc_spans)
                for r, doc, (chunk_vectors, doc_spans) in zip(rows, docs, per_doc, strict=True)
            ]
            self._log.commit(
                seq=seq,
                next_row_id=rows[-1] + 1,
                added=added,
                removed_delta=removed_delta,
                tombstones=dead,
                changed=[doc.id for doc in docs],
            )
            self._next_row_id = rows[-1] + 1
            entries.update((entry.row_id, entry) for entry in added)
            tombstones.update((row, seq) for row in dead)
            self._swap(view, entries, tombstones, seq)
        return UpsertReport(seq=seq, row_ids=rows, created=len(docs) - replaced, replaced=replaced)

    def delete(self, doc_ids: Sequence[str]) -> DeleteReport:
        """Delete documents by corpus id; returns once the deletion is durable and applied to searches."""
        wanted = list(dict.fromkeys(doc_ids))
        if not all(isinstance(d, str) for d in wanted):
            raise CorpusError("document ids must be strings")
        with self._write_lock:
            view = self._view
            rows = self._live_rows(view, wanted)
            deleted = [d for d, row in zip(wanted, rows, strict=True) if row is not None]
            missing = [d for d, row in zip(wanted, rows, strict=True) if row is None]
            if not deleted:
                return DeleteReport(seq=view.seq, deleted=[], missing=missing)
            seq = view.seq + 1
            dead = [row for row in rows if row is not None]
            entries = dict(view.delta.entries)
            removed_delta = [row for row in dead if row in entries]
            # Every removed row is tombstoned, delta rows too: a merge running now may be writing them into
            # the next main segment, and the tombstone (seq > the merge's) keeps them deleted there.
            self._log.commit(
                seq=seq,
                next_row_id=self._next_row_id,
                added=[],
                removed_delta=removed_delta,
                tombstones=dead,
                changed=deleted,
            )
            for row in removed_delta:
                del entries[row]
            tombstones = dict(view.tombstones) | {row: seq for row in dead}
            self._swap(view, entries, tombstones, seq)
        return DeleteReport(seq=seq, deleted=deleted, missing=missing)

    @staticmethod
    def _live_rows(view: LiveView, doc_ids: list[str]) -> list[int | None]:
        """The live row of each corpus id (delta first, then untombstoned main rows); one docstore query."""
        in_main = view.main.docstore.row_ids([d for d in doc_ids if d not in view.delta.by_doc_id])
        found = iter(in_main)
        rows: list[int | None] = []
        for doc_id in doc_ids:
            row = view.delta.by_doc_id.get(doc_id)
            if row is None:
                row = next(found)
                row = None if row is None or row in view.tombstones else int(row)
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ merging
    def merge(
        self,
        out_dir: Path,
        *,
        commit: CommitFn | None = None,
        progress: bool = False,
        on_step: Callable[[str], None] | None = None,
    ) -> MergeReport | None:
        """Fold the current delta and tombstones into a new generation at ``out_dir``; None when nothing changed.

        Searches and writes go on while it runs; writes that arrive meanwhile
        stay in the log and the delta. ``commit`` is called with the new
        generation before the log is truncated: make it the point where the
        service starts pointing at it (the expert's manifest). If ``commit``
        raises, nothing changes (the new directory is left for the caller's
        cleanup). ``on_step`` is told "written", "committed" and "truncated"
        (for progress reports, and for the crash tests).
        """
        step = on_step or (lambda _name: None)
        if not self._merge_lock.acquire(blocking=False):
            raise BuildInProgressError("a merge of this live collection is already running")
        try:
            view = self._view  # one moment's state; later writes have higher sequence numbers
            if not len(view.delta) and not len(view.tombstones):
                return None
            write_generation(
                view,
                Path(out_dir),
                log_id=self._log_id,
                next_row_id=self._next_row_id,
                embed=self._embed,
                progress=progress,
            )
            step("written")
            merged = Collection.open(Path(out_dir))
            try:
                merged.dense.default_params = view.main.dense.default_params
                if commit is not None:
                    commit(merged)
                step("committed")
                with self._write_lock:
                    self._log.truncate(view.seq, main=main_fingerprint(merged), next_row_id=self._next_row_id)
                    step("truncated")
                    current = self._view
                    entries = {row: e for row, e in current.delta.entries.items() if e.seq > view.seq}
                    tombstones = {row: s for row, s in current.tombstones.items() if s > view.seq}
                    delta = DeltaSegment.build(
                        entries, dim=merged.info.dim, lexical=merged.info.lexical, previous=current.delta
                    )
                    self._view = LiveView.build(
                        merged, merged.docstore.all_row_ids(), delta, tombstones, current.seq, log=self._log
                    )
                    # Searches that took the old view may still read its main segment: close it with us.
                    self._retired.append(current.main)
            except BaseException:
                if self._view.main is not merged:
                    merged.close()
                raise
            return MergeReport(
                directory=Path(out_dir),
                seq=view.seq,
                documents=len(view),
                from_delta=len(view.delta),
                tombstones_applied=len(view.main_dead),
            )
        finally:
            self._merge_lock.release()

    def start_merge(self, out_dir: Path, *, commit: CommitFn | None = None) -> Future[MergeReport | None]:
        """Run :meth:`merge` in a background thread; the future holds its report or its error."""
        future: Future[MergeReport | None] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(self.merge(out_dir, commit=commit))
            except BaseException as exc:  # handed to whoever waits on the future
                logger.exception("merge into %s failed", out_dir)
                future.set_exception(exc)

        threading.Thread(target=run, name=f"merge-{Path(out_dir).name}", daemon=True).start()
        return future
