"""Publishing and unpublishing experts at run time, and the registry that makes it survive a restart.

Every change follows one order, so that a failure at any step changes
nothing: validate and load the new expert completely (manifest, checksums,
base-model fingerprint, dimension, pilots, index, adapter) → write the
registry file atomically → swap the engine's snapshot. Admin operations are
serialised by one lock; searches never wait for it.

A replace keeps the version it replaces (``keep_versions``, RR_KEEP_VERSIONS,
counts the serving one): a rollback swaps a kept version back by the same
path. See :mod:`app.publishing.versions` for where kept versions live,
:mod:`app.publishing.restore` for start-up and :mod:`app.publishing.discards`
for when the directories of versions no longer used are deleted.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from app.engine.engine import RESERVED_NAMES, SearchEngine
from app.engine.loading import LOAD_ERRORS, LoadedExpert, load_expert, unload_expert
from app.errors import (
    ConflictError,
    ExpertRejectedError,
    ExpertUnavailableError,
    PayloadTooLargeError,
    is_disk_full,
)
from app.publishing.archive import ArchiveError, ArchiveTooLargeError, extract_archive, find_expert_root
from app.publishing.data_paths import expert_directory, resolved
from app.publishing.discards import RECEIVING_PREFIX, STAGING_PREFIX, discard_once_released
from app.publishing.document_writes import carry_or_refuse
from app.publishing.gate import GATE_QUERIES, gate_spec, gate_swap, read_gate_file
from app.publishing.registry import GateRecord, RegistryEntry, RegistryFile
from app.publishing.restore import restore_published
from app.publishing.versions import (
    UPLOADS_DIR,
    check_no_writes_since_publish,
    choose_kept,
    replaced_as_kept,
    serving_entry,
)
from experts import ExpertDir, UnknownExpertError
from index import MergePolicy

logger = logging.getLogger(__name__)


class ExpertPublisher:
    """The published set: the engine's snapshot plus the registry file, changed together.

    ``failed`` holds experts that are published (in the registry) but could not
    be loaded at start-up, or were taken out of service when their files failed
    during a search, with the reason: they keep the service from being ready
    until they are replaced or deleted. It is the engine's record
    (:class:`~app.engine.failures.ExpertFailures`), which this class writes at
    start-up; the engine writes it when it takes an expert out.
    """

    def __init__(
        self,
        engine: SearchEngine,
        root: Path,
        *,
        verify_checksums: bool = True,
        merge_policy: MergePolicy = MergePolicy(),
        keep_versions: int = 3,
        gate_margin: float = 0.01,
        gate_queries: int = GATE_QUERIES,
    ) -> None:
        if keep_versions < 1:
            raise ValueError(f"keep_versions must be at least 1 (the serving version), got {keep_versions}")
        self.engine = engine
        self.keep_versions = keep_versions
        self.root = Path(root).resolve()
        self.registry = RegistryFile(self.root)
        self.verify_checksums = verify_checksums
        self.merge_policy = merge_policy
        self.gate_margin, self.gate_queries = gate_margin, gate_queries
        self._entries: dict[str, RegistryEntry] = {}
        self._lock = threading.Lock()

    @property
    def failed(self) -> Mapping[str, str]:
        """Published experts that do not serve, with why (the engine's record)."""
        return self.engine.failures.failed

    @property
    def admin_lock(self) -> threading.Lock:
        """Held by every admin change (a shadow's start holds it too: never beside a replace of the same expert)."""
        return self._lock

    @property
    def entries(self) -> dict[str, RegistryEntry]:
        """Published experts by name (loaded or failed)."""
        return dict(self._entries)

    # ------------------------------------------------------------------ start-up
    def restore(self, *, progress: Callable[[str], None] = lambda _: None) -> None:
        """Load what the registry lists; with no registry yet, publish every loadable expert under the root."""
        with self._lock:
            self._entries = restore_published(
                self.engine,
                self.registry,
                load=lambda entry: self._load_published(entry.name, entry.path, verify_checksums=self.verify_checksums),
                keep_versions=self.keep_versions,
                progress=progress,
            )

    def _discard_once_released(self, paths: list[str], released: threading.Event) -> threading.Event:
        """Once ``released`` is set, delete the directories the service made for ``paths`` that nothing uses now
        (:func:`~app.publishing.discards.discard_once_released`). Call it without holding the lock."""
        return discard_once_released(
            self.root, paths, released, lock=self._lock, published=lambda: self._entries.values()
        )

    # ------------------------------------------------------------------ add
    def resolve_path(self, path: str) -> Path:
        """An expert directory named by the caller, which must lie under the data root once links are followed."""
        return expert_directory(path, self.root)

    def add_path(
        self, path: str, *, replace: bool = False, gate: str | None = None, gate_margin: float | None = None
    ) -> RegistryEntry:
        """Validate, load and publish the expert directory at ``path``; a failure changes nothing.

        ``gate``: score the candidate against the serving version first and refuse a worse one (409).
        """
        spec = gate_spec(gate, self.root, margin=gate_margin, default_margin=self.gate_margin, replace=replace)
        directory = self.resolve_path(path)
        with self._lock:
            try:
                name = ExpertDir(directory).read_manifest().name
            except LOAD_ERRORS as exc:
                raise ExpertRejectedError(f"expert at {path!r} was not published: {exc}") from exc
            self._check_name(name, replace=replace)
            # No document write of this expert between loading the new version (which replays the live
            # log) and publishing it: a write acknowledged by the old version would be missing from the new.
            with self.engine.document_lock(name):
                current = self.engine.experts.get(name)
                if current is not None:
                    current.documents.wait_merge()  # its merge would publish a generation under the new one
                try:
                    loaded = self._load(directory, verify_checksums=True)  # an add always checks every byte
                except LOAD_ERRORS as exc:
                    raise ExpertRejectedError(
                        f"expert {name!r} at {path!r} was not published: {exc}", details={"reason": type(exc).__name__}
                    ) from exc
                # Under the document lock (writes wait), never under a lock searches take; refused: unloaded.
                record: GateRecord | None
                if spec is not None:
                    record = gate_swap(self.engine, spec, current, loaded, limit=self.gate_queries)
                else:  # the gate `rr train-expert --gate` ran, if it did
                    record = read_gate_file(directory, loaded.manifest.version)
                relative = directory.relative_to(self.root).as_posix()
                replaced = self._entries.get(name)
                live_seq = loaded.documents.state().seq  # before the carried writes: see serving_entry
                carried = (
                    carry_or_refuse(current, loaded, self.engine.encoder, since=replaced.live_seq, doing="replaced")
                    if current is not None and replaced is not None
                    else None
                )
                if replaced is not None and current is not None:  # the registry's number may predate a retrain
                    replaced = replaced.model_copy(update={"version": current.manifest.version})
                kept = replaced_as_kept(self.root, replaced, relative)
                entry, dropped = serving_entry(
                    name,
                    relative,
                    version=loaded.manifest.version,
                    live_seq=live_seq,
                    kept=kept,
                    keep_versions=self.keep_versions,
                )
                entry = entry.model_copy(update={"gate": record})
                released = self._swap_in(loaded, entry)
            logger.info(
                "published expert %r v%d from %s%s",
                name,
                loaded.manifest.version,
                entry.path,
                f", carrying {len(carried.upserted)} upserted and {len(carried.deleted)} deleted document(s)"
                if carried
                else "",
            )
        if replaced is not None:
            self._discard_once_released([replaced.path, *(v.path for v in dropped)], released)
        return entry

    def _swap_in(self, loaded: LoadedExpert, entry: RegistryEntry) -> threading.Event:
        """Under the lock and the expert's document lock: write the registry, then swap the snapshot.

        Returns the event set once the version it replaced is unloaded (its searches finished).
        """
        try:
            self.registry.write([*(e for n, e in self._entries.items() if n != entry.name), entry])
        except BaseException:
            unload_expert(loaded, self.engine.encoder)
            raise
        released = self.engine.add(loaded)  # a replaced expert is unloaded when its searches finish
        # A new dict rather than an in-place change: request handlers read it without the lock.
        self._entries = {**self._entries, entry.name: entry}
        return released

    # ------------------------------------------------------------------ rollback
    def rollback(self, name: str, *, version: int | None = None) -> tuple[RegistryEntry, threading.Event]:
        """Serve a kept version of ``name`` again (by default the one served before), by the path of a replace.

        The kept version is loaded and validated first; any failure leaves the
        serving one untouched. The version it replaces is kept in turn, so a
        rollback can be undone by another. Document writes acknowledged since
        the serving version began serving are carried to the kept one before
        the swap (each touched document upserted as it is now, embedded by the
        kept version's rules, or deleted), so none is lost; refused (409) only
        where the serving version's log is too old to list them.
        Returns the new entry and an event set once the replaced version is unloaded.

        >>> entry, unloaded = publisher.rollback("cacm")  # doctest: +SKIP
        """
        with self._lock:
            current = self._entries.get(name)
            if current is None:
                raise UnknownExpertError(
                    f"Expert {name!r} is not published. Published experts: {sorted(self._entries)}"
                )
            target = choose_kept(current, version, keep_versions=self.keep_versions)
            with self.engine.document_lock(name):
                serving = self.engine.experts.get(name)
                if serving is not None:
                    serving.documents.wait_merge()
                    if serving.documents.changed_since(current.live_seq) is None:  # a log too old to say
                        check_no_writes_since_publish(current, serving.documents.state().seq)
                try:
                    loaded = self._load_published(name, target.path, verify_checksums=True)
                except LOAD_ERRORS as exc:
                    raise ExpertRejectedError(
                        f"expert {name!r} was not rolled back to version {target.version} at {target.path!r}: {exc}",
                        details={"reason": type(exc).__name__},
                    ) from exc
                live_seq = loaded.documents.state().seq  # before the carried writes: see serving_entry
                doing = f"rolled back to version {target.version}"
                carried = (
                    carry_or_refuse(serving, loaded, self.engine.encoder, since=current.live_seq, doing=doing)
                    if serving is not None
                    else None
                )
                kept = [current.kept(), *(v for v in current.versions if v is not target)]
                entry, dropped = serving_entry(
                    name,
                    target.path,
                    version=loaded.manifest.version,
                    live_seq=live_seq,
                    kept=kept,
                    keep_versions=self.keep_versions,
                )
                entry = entry.model_copy(update={"gate": target.gate})
                released = self._swap_in(loaded, entry)
            logger.info(
                "rolled expert %r back from v%d (%s) to v%d (%s), carrying %d upserted and %d deleted document(s)",
                name,
                current.version,
                current.path,
                entry.version,
                entry.path,
                len(carried.upserted) if carried else 0,
                len(carried.deleted) if carried else 0,
            )
        return entry, self._discard_once_released([v.path for v in dropped], released)

    def check_servable(self, name: str) -> None:
        """Refuse, with the load failure, a request naming a published expert that could not be loaded.

        Without this it would be a 404 "not found", sending the caller to check
        a name that is right; the fault is on the server.
        """
        reason = self.failed.get(name)
        if reason is not None:
            raise ExpertUnavailableError(
                f"expert {name!r} is published but could not be loaded: {reason}; "
                "an admin can fix its files and publish it again with replace"
            )

    def receiving_path(self) -> Path:
        """A new file name under ``<root>/uploads/`` for an archive being received (the directory is created)."""
        uploads = self.root / UPLOADS_DIR
        uploads.mkdir(parents=True, exist_ok=True)
        return uploads / f"{RECEIVING_PREFIX}{secrets.token_hex(6)}.tar"

    def add_archive(
        self,
        archive: Path,
        *,
        replace: bool = False,
        max_bytes: int,
        gate: str | None = None,
        gate_margin: float | None = None,
    ) -> RegistryEntry:
        """Unpack an uploaded archive under ``<root>/uploads/``, then publish it like a path.

        A failure leaves nothing behind: neither the unpacked files nor a change to what is served.
        """
        gate_spec(gate, self.root, margin=gate_margin, default_margin=self.gate_margin, replace=replace)  # fail fast
        uploads = self.root / UPLOADS_DIR
        staging = uploads / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        staging.mkdir(parents=True)
        final: Path | None = None
        try:
            try:
                extract_archive(archive, staging, max_bytes=max_bytes)
                source = find_expert_root(staging)
                name = ExpertDir(source).read_manifest().name
            except ArchiveTooLargeError as exc:
                raise PayloadTooLargeError(str(exc)) from exc
            except (ArchiveError, *LOAD_ERRORS) as exc:
                if is_disk_full(exc):
                    raise  # the server's fault, not the archive's: answered 507
                raise ExpertRejectedError(f"the uploaded archive was not published: {exc}") from exc
            self._check_name(name, replace=replace)  # before the (slow) load: fail fast
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            final = uploads / f"{name}-{stamp}-{secrets.token_hex(3)}" / name
            final.parent.mkdir()
            source.rename(final)
            return self.add_path(str(final), replace=replace, gate=gate, gate_margin=gate_margin)
        except BaseException:
            if final is not None:
                shutil.rmtree(final.parent, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _check_name(self, name: str, *, replace: bool) -> None:
        if name in RESERVED_NAMES:
            raise ExpertRejectedError(
                f"expert name {name!r} is reserved (the embeddings API uses {list(RESERVED_NAMES)} "
                "as model names); rename it"
            )
        if name in self._entries and not replace:
            raise ConflictError(
                f"expert {name!r} is already published (from {self._entries[name].path!r}); "
                "add with replace=true to swap it for this one, or DELETE it first"
            )

    def _load(self, directory: Path, *, verify_checksums: bool) -> LoadedExpert:
        name = directory.name
        if name in RESERVED_NAMES:
            raise ValueError(f"expert name {name!r} is reserved for the embeddings API")
        return load_expert(
            directory,
            self.engine.encoder,
            verify_checksums=verify_checksums,
            write=True,
            merge_policy=self.merge_policy,
        )

    def _load_published(self, name: str, path: str, *, verify_checksums: bool) -> LoadedExpert:
        """Load the version of ``name`` the registry records at ``path``: under the data root once links are
        followed, and still holding expert ``name``. Raises one of LOAD_ERRORS."""
        directory = resolved(self.root / path)
        if not directory.is_relative_to(self.root):
            raise ValueError(f"{path!r} lies outside the data root {self.root}")
        loaded = self._load(directory, verify_checksums=verify_checksums)
        if loaded.name != name:
            unload_expert(loaded, self.engine.encoder)
            raise ValueError(f"the directory now holds expert {loaded.name!r}")
        return loaded

    # ------------------------------------------------------------------ remove
    def remove(self, name: str) -> threading.Event:
        """Unpublish at once (registry, then snapshot).

        The event is set once the last search holding it finished, it is
        unloaded and, if it was uploaded, its unpacked files are deleted.
        """
        with self._lock:
            if name not in self._entries:
                raise UnknownExpertError(
                    f"Expert {name!r} is not published. Published experts: {sorted(self._entries)}"
                )
            self.registry.write([entry for n, entry in self._entries.items() if n != name])
            removed = self._entries[name]
            self._entries = {key: value for key, value in self._entries.items() if key != name}
            self.engine.failures.clear(name)
            released = threading.Event()  # it never loaded (or was taken out): nothing to unload
            released.set()
            if name in self.engine.experts:
                with self.engine.document_lock(name):  # a write in progress finishes (and is acknowledged) first
                    try:
                        released = self.engine.remove(name)
                    except UnknownExpertError:
                        pass  # taken out of service by the engine a moment ago: already unloading
        return self._discard_once_released([removed.path, *(v.path for v in removed.versions)], released)
