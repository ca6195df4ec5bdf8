"""An expert's documents while it is loaded: its live collection, whether this process may write it, its merges.

::

    <expert>/index-000007/     the published generation (immutable), the manifest names it
    <expert>/live/live.sqlite  the write-ahead log of upserts and deletes since (index.live.live_collection)
    <expert>/live/writer.lock  held by the one process that writes the log (index.live.writer_lock)

Every search takes :meth:`ExpertDocuments.view` once and sees main segment,
delta and tombstones of one moment. Writes go to the log and are searchable
when acknowledged. When the merge policy says so, a background thread folds
the delta into a new generation, publishes it in the manifest (the expert's
commit point), and the live collection swaps it in; searches never wait.

A process that cannot take the writer lock (a CLI search while the service
runs, a second replica on the same files) or may not write the directory
opens the expert read-only: it searches the log as it was when it opened,
and a write is refused with the reason.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.errors import DocumentsReadOnlyError
from experts import ExpertDir, Manifest
from index import (
    Collection,
    DeleteReport,
    Document,
    EmbedFn,
    LiveCollection,
    LiveView,
    LogLockedError,
    MergePolicy,
    MergeReport,
    SplitFn,
    UpsertReport,
    WriterLock,
    static_view,
)

logger = logging.getLogger(__name__)

#: The live log's directory inside an expert directory, and the log's file name in it.
LIVE_DIR = "live"
LOG_FILE = "live.sqlite"
#: Documents embedded per encoder call during an upsert: the encoder serialises passes, so smaller
#: calls let searches' passes run between them instead of waiting for a whole batch of long texts.
EMBED_SLICE = 16

#: Told (these documents, the new manifest) once a merge has published it.
OnMerged = Callable[["ExpertDocuments", Manifest], None]


@dataclass(frozen=True)
class LiveState:
    """What ``GET /experts/{name}`` shows of the live segments."""

    documents: int
    main_documents: int
    delta_documents: int
    tombstones: int
    seq: int
    writable: bool
    read_only_reason: str | None
    merging: bool


def sliced(embed: Callable[[list[str]], np.ndarray], size: int = EMBED_SLICE) -> EmbedFn:
    """``embed`` called on at most ``size`` passages at a time, the results stacked."""

    def run(passages: Sequence[str]) -> np.ndarray:
        passages = list(passages)
        parts = [embed(passages[start : start + size]) for start in range(0, len(passages), size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    return run


class ExpertDocuments:
    """One loaded expert's collection: searched through :meth:`view`, written through :meth:`upsert`/:meth:`delete`."""

    def __init__(
        self,
        directory: ExpertDir,
        main: Collection,
        live: LiveCollection | None,
        lock: WriterLock | None,
        *,
        read_only_reason: str | None,
        policy: MergePolicy,
    ) -> None:
        """Private: use :meth:`open`."""
        self.directory = directory
        self._main = main
        self._live = live
        self._static = static_view(main) if live is None else None
        self._lock = lock
        self.read_only_reason = read_only_reason
        self.policy = policy
        #: Set by the engine: told the new manifest after each merge it publishes.
        self.on_merged: OnMerged | None = None
        self._merge: Future[MergeReport | None] | None = None
        self._merge_guard = threading.Lock()
        self._closing = False

    @classmethod
    def open(
        cls,
        directory: ExpertDir,
        manifest: Manifest,
        *,
        embed: EmbedFn | None,
        write: bool,
        policy: MergePolicy = MergePolicy(),
        split: SplitFn | None = None,
    ) -> ExpertDocuments:
        """Open the published generation and replay the live log over it.

        ``write``: take the writer lock and accept upserts (``embed`` makes the
        base-encoder vectors of upserted documents); when another process holds
        the lock, or the directory cannot be written, open read-only and say why
        in :attr:`read_only_reason`. Without ``write`` nothing is created or locked.
        """
        if manifest.index is None:
            raise ValueError(f"expert {manifest.name!r} has no index")
        main = Collection.open(directory.path / manifest.index.directory)
        log_dir = directory.path / LIVE_DIR
        lock: WriterLock | None = None
        reason = None if write else "opened read-only"
        try:
            if write:
                try:
                    lock = WriterLock.acquire(log_dir)
                except LogLockedError as exc:
                    reason = str(exc)
                except OSError as exc:  # a read-only mount, say
                    reason = f"the live log in {str(log_dir)!r} cannot be created: {exc.strerror or exc}"
                if reason is not None:
                    logger.warning("expert %r is read-only here: %s", manifest.name, reason)
            live = None
            if lock is not None:
                _discard_killed_merges(directory.path)
                live = LiveCollection.open(main, log_dir / LOG_FILE, embed=embed, split=split)
            elif (log_dir / LOG_FILE).is_file():
                live = LiveCollection.open(main, log_dir / LOG_FILE, embed=None)
        except BaseException:
            main.close()
            if lock is not None:
                lock.release()
            raise
        return cls(directory, main, live, lock, read_only_reason=reason, policy=policy)

    # ------------------------------------------------------------------ reading
    def view(self) -> LiveView:
        """The state of this moment; take it once per search and use it for the search and the hits."""
        return self._live.view() if self._live is not None else self._static  # type: ignore[return-value]

    @property
    def main(self) -> Collection:
        """The published generation now searched (it changes when a merge is published)."""
        return self._live.main if self._live is not None else self._main

    @property
    def writable(self) -> bool:
        return self._lock is not None and self._live is not None

    def __len__(self) -> int:
        return len(self.view())

    def get(self, doc_id: str) -> Document | None:
        return self.view().get(doc_id)

    def changed_since(self, seq: int) -> list[str] | None:
        """Ids of the documents upserted or deleted by the writes after ``seq``, each once; None where the log
        does not record that far back (written by an older release). Without a log nothing was written."""
        return self._live.changed_since(seq) if self._live is not None else []

    def state(self) -> LiveState:
        view = self.view()
        return LiveState(
            documents=len(view),
            main_documents=len(view.main_ids),
            delta_documents=len(view.delta),
            tombstones=len(view.main_dead),
            seq=view.seq,
            writable=self.writable,
            read_only_reason=self.read_only_reason,
            merging=self.merging,
        )

    # ------------------------------------------------------------------ writing
    def _writer(self) -> LiveCollection:
        if not self.writable:
            raise DocumentsReadOnlyError(
                f"the documents of expert {self.directory.path.name!r} cannot be written by this process: "
                f"{self.read_only_reason}"
            )
        return self._live  # type: ignore[return-value]

    def check_writable(self) -> None:
        """Raise :class:`~app.errors.DocumentsReadOnlyError`, with the reason, where this process may not write."""
        self._writer()

    def upsert(self, docs: Sequence[Document]) -> UpsertReport:
        """Insert or replace; durable and searchable when this returns (all or nothing)."""
        return self._writer().upsert(docs)

    def delete(self, doc_ids: Sequence[str]) -> DeleteReport:
        """Delete by corpus id; durable and applied to searches when this returns."""
        return self._writer().delete(doc_ids)

    # ------------------------------------------------------------------ merging
    @property
    def merging(self) -> bool:
        merge = self._merge
        return merge is not None and not merge.done()

    def merge_due(self) -> bool:
        return self.writable and self._live.merge_due(self.policy)  # type: ignore[union-attr]

    def start_merge(self, *, force: bool = False) -> Future[MergeReport | None] | None:
        """Start a background merge when the policy asks for one (or ``force``); the running one if any.

        None when nothing is due (or this process cannot write). The future's
        result is None when there was nothing to fold in.
        """
        with self._merge_guard:
            if self._closing or not self.writable:
                return None
            if self.merging:
                return self._merge
            if not force and not self.merge_due():
                return None
            live = self._live
            assert live is not None  # writable
            expected = self.main.directory.name
            future = live.start_merge(
                self.directory.new_index_path(), commit=lambda merged: self._commit(merged, expected)
            )
            future.add_done_callback(self._merged)
            self._merge = future
            return future

    def wait_merge(self, timeout: float | None = None) -> None:
        """Wait for a running merge to end (its failure is logged, not raised here)."""
        merge = self._merge
        if merge is not None:
            try:
                merge.result(timeout)
            except Exception:  # noqa: BLE001 - logged by the merge thread
                pass

    def _commit(self, merged: Collection, expected: str) -> None:
        """Publish the merged generation in the manifest: from here on a restart loads it."""
        if self._closing:
            raise RuntimeError("the expert was unloaded while merging; the merge is dropped")
        section = self.directory.read_manifest().index
        assert section is not None  # a live collection exists only over a published index
        update = {"directory": merged.directory.name, "count": len(merged)}
        manifest = self.directory.publish(index=section.model_copy(update=update), expect_index=expected)
        if self.on_merged is not None:
            # Before the merge's future resolves, so whoever waits on it sees the new manifest served.
            self.on_merged(self, manifest)

    def _merged(self, future: Future[MergeReport | None]) -> None:
        if future.cancelled() or future.exception() is not None:
            return  # the merge thread logged it; the log still holds every write
        report = future.result()
        if report is None:
            return
        logger.info(
            "expert %r merged %d delta document(s) and %d tombstone(s) into %s",
            self.directory.path.name,
            report.from_delta,
            report.tombstones_applied,
            report.directory.name,
        )

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Release files and the writer lock; a running merge is dropped, and the files close once it stops.

        Never waits for the merge: this runs where the last search holding the
        expert gives it back, and a search must not wait for a merge.
        """
        with self._merge_guard:
            self._closing = True
            merge = self._merge
        if merge is not None and not merge.done():
            merge.add_done_callback(lambda _future: self._close_now())
        else:
            self._close_now()

    def _close_now(self) -> None:
        # Drop the references that make cycles (callbacks holding this object): the files are
        # unmapped when the last reference goes, and a cycle would wait for the garbage collector.
        self.on_merged = None
        self._merge = None
        if self._live is not None:
            self._live.close()  # closes the main segments it holds
        else:
            self._main.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _discard_killed_merges(directory: Path) -> None:
    """Remove what a merge killed midway left in an expert directory (its hidden staging files).

    Only the writer-lock holder merges, and we hold the lock: nothing of this
    kind can be in progress. A complete but never-published generation is
    left to the next publish, which removes unreferenced generations.
    """
    for leftover in sorted(directory.glob(".index-*")):
        if not (leftover.name.endswith(".merging") or ".docs.sqlite" in leftover.name):
            continue
        logger.warning("removing %s, left by a merge that was interrupted", leftover)
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def log_path(directory: Path) -> Path:
    """Where an expert directory's live log is."""
    return Path(directory) / LIVE_DIR / LOG_FILE
