"""Publishing and unpublishing experts at run time, and the registry that makes it survive a restart.

Every change follows one order, so that a failure at any step changes
nothing: validate and load the new expert completely (manifest, checksums,
base-model fingerprint, dimension, pilots, index, adapter) → write the
registry file atomically → swap the engine's snapshot. Admin operations are
serialised by one lock; searches never wait for it.

A replace keeps the version it replaces (``keep_versions``, RR_KEEP_VERSIONS,
counts the serving one): a rollback swaps a kept version back by the same
path. See :mod:`app.publishing.versions` for where kept versions live.
"""

from __future__ import annotations

import errno
import logging
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from app.engine.engine import RESERVED_NAMES, SearchEngine
from app.engine.loading import LoadedExpert, load_expert, unload_expert
from app.errors import (
    ConflictError,
    ExpertRejectedError,
    ExpertUnavailableError,
    InvalidRequestError,
    PathNotAllowedError,
    PayloadTooLargeError,
    is_disk_full,
)
from app.publishing.archive import ArchiveError, ArchiveTooLargeError, extract_archive, find_expert_root
from app.publishing.document_writes import carry_or_refuse
from app.publishing.gate import GATE_QUERIES, gate_spec, gate_swap, read_gate_file
from app.publishing.registry import GateRecord, KeptVersion, RegistryEntry, RegistryFile
from app.publishing.versions import (
    UPLOADS_DIR,
    check_no_writes_since_publish,
    choose_kept,
    find_archived,
    owned_directory,
    serving_entry,
)
from experts import ExpertDir, ExpertError, UnknownExpertError, list_expert_dirs
from index import IndexStoreError, MergePolicy
from router import RouterError

logger = logging.getLogger(__name__)

#: Hidden names under it: an archive being received, and one being unpacked (removed at start-up if left).
_RECEIVING_PREFIX = ".upload-"
_STAGING_PREFIX = ".staging-"
#: What a broken expert directory can raise while being validated and loaded.
LOAD_ERRORS = (ExpertError, IndexStoreError, RouterError, ValueError, OSError)


def _remove_tree(path: Path) -> None:
    """Delete a directory tree, or a file or link (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _resolved(path: Path) -> Path:
    """``path.resolve()``, with a symlink loop raised as OSError (ELOOP) as Python 3.13 does; 3.11 raises RuntimeError."""
    try:
        return path.resolve()
    except RuntimeError as exc:
        raise OSError(errno.ELOOP, f"{exc}") from exc


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
            self._discard_interrupted_writes()
            entries = self.registry.read()
            bootstrap = entries is None
            if entries is None:
                entries = [RegistryEntry(name=d.path.name, path=d.path.name) for d in list_expert_dirs(self.root)]
                logger.info("no %s yet: publishing the experts found under %s", self.registry.path.name, self.root)
            published: list[RegistryEntry] = []
            for position, entry in enumerate(entries, start=1):
                progress(f"loading experts ({position}/{len(entries)}: {entry.name})")
                try:
                    directory = _resolved(self.registry.resolve(entry))
                    if not directory.is_relative_to(self.root):
                        raise ValueError(f"{entry.path!r} lies outside the data root {self.root}")
                    loaded = self._load(directory, verify_checksums=self.verify_checksums)
                    if loaded.name != entry.name:
                        unload_expert(loaded, self.engine.encoder)
                        raise ValueError(f"the directory now holds expert {loaded.name!r}")
                except LOAD_ERRORS as exc:
                    if bootstrap:  # never published: just not served
                        logger.warning("not publishing %s: %s", entry.path, exc)
                        self.engine.failures.mark_unavailable(entry.name, str(exc))
                        continue
                    logger.error("published expert %r cannot be loaded: %s", entry.name, exc)
                    self.engine.failures.mark_failed(entry.name, str(exc))
                    published.append(entry)
                    continue
                self.engine.add(loaded)
                published.append(self._restored(entry, loaded.manifest.version))
            changed = published != [entry for entry in entries if entry.name in {e.name for e in published}]
            self._entries = {entry.name: entry for entry in published}
            if bootstrap:  # without a registry nothing says which uploads were published: keep them all
                self.registry.write(published)
                return
            if changed:  # versions retrained in place while the service was down: recorded, best effort
                try:
                    self.registry.write(published)
                except OSError as exc:
                    logger.warning("could not record the experts' current versions in %s: %s", self.registry.path, exc)
            self._discard_unpublished_uploads()

    def _restored(self, entry: RegistryEntry, version: int) -> RegistryEntry:
        """``entry`` with the version its directory now holds; a version ``rr train-expert --replace`` moved under
        ``.versions/`` while the service was down is kept."""
        if entry.version == version:
            return entry
        kept = self._replaced_as_kept(entry, entry.path, version)
        gate = read_gate_file(self.registry.resolve(entry), version)  # the gate `rr train-expert --gate` ran, if it did
        update = {"version": version, "versions": tuple(kept[: self.keep_versions - 1]), "gate": gate}
        return entry.model_copy(update=update)

    def _discard_interrupted_writes(self) -> None:
        """Remove what a crash mid-change left: a registry temp file, a half-received or half-unpacked upload.

        Only the hidden names given to them while they are written; unpacked experts (published or not) are kept.
        """
        for leftover in self.registry.discard_temporary_files():
            logger.warning("removed %s, left by a registry update that was interrupted", leftover)
        uploads = self.root / UPLOADS_DIR
        if not uploads.is_dir():
            return
        for leftover in sorted([*uploads.glob(f"{_RECEIVING_PREFIX}*"), *uploads.glob(f"{_STAGING_PREFIX}*")]):
            logger.warning("removing %s, left by an upload that was interrupted", leftover)
            _remove_tree(leftover)

    def _owned_in_use(self) -> set[Path]:
        """The directories the service made (uploads, kept versions) that a published or kept version still uses."""
        paths = [path for entry in self._entries.values() for path in (entry.path, *(v.path for v in entry.versions))]
        return {owned for path in paths if (owned := owned_directory(self.root, path)) is not None}

    def _discard_unpublished_uploads(self) -> None:
        """Under the lock: delete every unpacked upload that no registry entry names, serving or kept (their expert
        was removed or replaced while the server was down, or a crash came between unpacking and publishing)."""
        uploads = self.root / UPLOADS_DIR
        if not uploads.is_dir() or uploads.is_symlink():
            return
        kept = self._owned_in_use()
        for directory in sorted(uploads.iterdir()):
            if directory.name.startswith(".") or directory in kept:
                continue  # hidden names are uploads in progress (removed by _discard_interrupted_writes)
            logger.warning("removing %s: an uploaded expert that is no longer published", directory)
            _remove_tree(directory)

    def _discard_once_released(self, paths: list[str], released: threading.Event) -> threading.Event:
        """Delete the directories the service made for versions that are no longer served nor kept, once unloaded.

        Not before: searches that still hold the replaced or removed version
        read its files. Directories an admin placed are never deleted. Returns
        an event set when that is done (at once when there is nothing to
        delete). Call it without holding the lock.
        """
        directories = sorted({owned for path in paths if (owned := owned_directory(self.root, path)) is not None})
        if not directories:
            return released

        done = threading.Event()

        def discard() -> None:
            released.wait()
            try:
                with self._lock:  # the same directory may have been published again meanwhile
                    in_use = self._owned_in_use()
                    for directory in directories:
                        if directory not in in_use and directory.exists():
                            _remove_tree(directory)
                            logger.info("removed %s: the version it held is no longer published nor kept", directory)
            finally:
                done.set()

        if released.is_set():
            discard()
        else:
            threading.Thread(target=discard, name="rr-discard-versions", daemon=True).start()
        return done

    # ------------------------------------------------------------------ add
    def resolve_path(self, path: str) -> Path:
        """An expert directory named by the caller, which must lie under the data root once links are followed."""
        candidate = Path(path)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        try:
            resolved = _resolved(candidate)
        except (OSError, ValueError) as exc:  # a NUL byte, a name too long, a symlink loop
            raise InvalidRequestError(f"path {path!r} cannot be resolved: {exc}") from exc
        if not resolved.is_relative_to(self.root):
            raise PathNotAllowedError(
                f"path {path!r} resolves to {resolved}, outside the data root {self.root}: "
                "experts can only be published from directories under the data root"
            )
        if resolved == self.root:
            raise InvalidRequestError(f"path {path!r} is the data root itself; name an expert directory inside it")
        try:
            is_directory = resolved.is_dir()
        except OSError as exc:  # a component longer than the filesystem allows (ENAMETOOLONG)
            raise InvalidRequestError(f"path {path!r} cannot be resolved: {exc.strerror}") from exc
        if not is_directory:
            raise ExpertRejectedError(f"path {path!r} is not a directory under the data root {self.root}")
        return resolved

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
                live_seq = loaded.documents.state().seq  # before the carried writes: see _entry_keeping
                carried = (
                    carry_or_refuse(current, loaded, self.engine.encoder, since=replaced.live_seq, doing="replaced")
                    if current is not None and replaced is not None
                    else None
                )
                if replaced is not None and current is not None:  # the registry's number may predate a retrain
                    replaced = replaced.model_copy(update={"version": current.manifest.version})
                kept = [*self._replaced_as_kept(replaced, relative, loaded.manifest.version)]
                entry, dropped = self._entry_keeping(name, relative, loaded, kept, live_seq=live_seq)
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

    def _replaced_as_kept(self, replaced: RegistryEntry | None, path: str, version: int) -> list[KeptVersion]:
        """The versions kept once the one at ``path`` replaces ``replaced``: the replaced one first, then its kept ones.

        A publish from the serving directory itself keeps the previous version
        only when ``rr train-expert --replace`` moved it under ``.versions/``.
        """
        if replaced is None:
            return []
        kept = list(replaced.versions)
        previous: KeptVersion | None = replaced.kept()
        if replaced.path == path:
            known = {v.path for v in kept}
            moved = [
                relative
                for found in find_archived(self.root, replaced.name, replaced.version)
                if (relative := found.relative_to(self.root).as_posix()) not in known
            ]
            previous = replaced.kept().model_copy(update={"path": moved[0]}) if moved else None
        return [previous, *kept] if previous is not None else kept

    def _entry_keeping(
        self, name: str, path: str, loaded: LoadedExpert, kept: list[KeptVersion], *, live_seq: int
    ) -> tuple[RegistryEntry, list[KeptVersion]]:
        """The registry entry of ``loaded`` serving from ``path`` with the newest kept versions; and those dropped.

        ``live_seq``: where its live log stood before the writes carried into it. The carried writes count as
        written to this version, so the next replace or rollback carries them on (again, where it already holds
        them: an upsert of a document as it is, or a delete of one gone, changes nothing).
        """
        return serving_entry(
            name,
            path,
            version=loaded.manifest.version,
            live_seq=live_seq,
            kept=kept,
            keep_versions=self.keep_versions,
        )

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
                    directory = _resolved(self.root / target.path)
                    if not directory.is_relative_to(self.root):
                        raise ValueError(f"{target.path!r} lies outside the data root {self.root}")
                    loaded = self._load(directory, verify_checksums=True)
                    if loaded.name != name:
                        unload_expert(loaded, self.engine.encoder)
                        raise ValueError(f"the directory now holds expert {loaded.name!r}")
                except LOAD_ERRORS as exc:
                    raise ExpertRejectedError(
                        f"expert {name!r} was not rolled back to version {target.version} at {target.path!r}: {exc}",
                        details={"reason": type(exc).__name__},
                    ) from exc
                live_seq = loaded.documents.state().seq  # before the carried writes: see _entry_keeping
                doing = f"rolled back to version {target.version}"
                carried = (
                    carry_or_refuse(serving, loaded, self.engine.encoder, since=current.live_seq, doing=doing)
                    if serving is not None
                    else None
                )
                kept = [current.kept(), *(v for v in current.versions if v is not target)]
                entry, dropped = self._entry_keeping(name, target.path, loaded, kept, live_seq=live_seq)
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
        return uploads / f"{_RECEIVING_PREFIX}{secrets.token_hex(6)}.tar"

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
        staging = uploads / f"{_STAGING_PREFIX}{secrets.token_hex(6)}"
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
