"""Versions of an expert read and rolled back in ``registry.json`` while no service runs on the data root.

``rr experts versions|rollback`` use these. A running service must be rolled
back through ``POST /admin/experts/{name}/rollback``: it holds the serving
version's live-log writer lock, and a rollback here is refused while it does
(the service would go on serving the old choice, then overwrite the file).
The rules are the service's (:mod:`app.publishing.versions`); the next start
serves what this wrote.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.documents import LIVE_DIR, ExpertDocuments
from app.errors import ConflictError, ExpertRejectedError
from app.publishing.registry import KeptVersion, RegistryEntry, RegistryFile
from app.publishing.versions import check_no_writes_since_publish, choose_kept, owned_directory, serving_entry
from experts import ExpertDir, ExpertError, UnknownExpertError
from index import IndexStoreError, LogLockedError, WriterLock

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionRow:
    """One version on disk as ``rr experts versions`` shows it."""

    version: int
    path: str
    published_at: str
    serving: bool
    documents: int | None
    trained: bool | None
    gate: dict[str, Any] | None = None
    error: str | None = None


def _entry(registry: RegistryFile, name: str) -> RegistryEntry:
    entries = registry.read()
    if entries is None:
        raise UnknownExpertError(f"no {registry.path.name} under {registry.root}: nothing is published there yet")
    for entry in entries:
        if entry.name == name:
            return entry
    raise UnknownExpertError(f"Expert {name!r} is not published. Published experts: {[e.name for e in entries]}")


def list_versions(root: Path, name: str) -> list[VersionRow]:
    """The serving version of ``name``, then those kept, most recently served first (as the registry records them)."""
    registry = RegistryFile(root)
    entry = _entry(registry, name)
    rows = []
    for kept, serving in [(entry.kept(), True), *((v, False) for v in entry.versions)]:
        try:
            manifest = ExpertDir(registry.root / kept.path).read_manifest()
        except (ExpertError, ValueError, OSError) as exc:
            rows.append(VersionRow(**kept.model_dump(), serving=serving, documents=None, trained=None, error=str(exc)))
            continue
        documents = manifest.index.count if manifest.index is not None else None
        rows.append(
            VersionRow(**kept.model_dump(), serving=serving, documents=documents, trained=manifest.adapter.trained)
        )
    return rows


def _live_seq(directory: ExpertDir) -> int:
    """The sequence number of the last write in the expert's live log (0 without one), read without writing."""
    manifest = directory.read_manifest()
    documents = ExpertDocuments.open(directory, manifest, embed=None, write=False)
    try:
        return documents.state().seq
    finally:
        documents.close()


def rollback_at_rest(root: Path, name: str, *, version: int | None = None, keep_versions: int = 3) -> RegistryEntry:
    """Make a kept version of ``name`` the published one in ``registry.json``; the next start serves it.

    Same rules and refusals as the service's rollback; the kept version's
    files are checked (manifest, name, every checksum) before the file is
    written. Versions pruned by ``keep_versions`` are deleted when the service made them.
    """
    registry = RegistryFile(root)
    current = _entry(registry, name)
    target: KeptVersion = choose_kept(current, version, keep_versions=keep_versions)
    serving_dir = ExpertDir(registry.root / current.path)
    try:
        lock = WriterLock.acquire(serving_dir.path / LIVE_DIR)
    except LogLockedError as exc:
        raise ConflictError(
            f"expert {name!r} is in use by a running service ({exc}); roll it back through "
            f"POST /admin/experts/{name}/rollback"
        ) from exc
    try:
        try:
            serving_seq = _live_seq(serving_dir)
        except (ExpertError, IndexStoreError, ValueError, OSError) as exc:  # it cannot serve: nothing written since
            logger.warning("expert %r: the serving version's files cannot be read (%s)", name, exc)
        else:
            check_no_writes_since_publish(current, serving_seq)
        directory = ExpertDir(registry.root / target.path)
        try:
            manifest = directory.read_manifest()
            if manifest.name != name or directory.path.name != name:
                raise ValueError(f"{target.path!r} holds expert {manifest.name!r}")
            directory.verify(manifest, checksums=True)
            target_seq = _live_seq(directory)
        except (ExpertError, IndexStoreError, ValueError, OSError) as exc:
            raise ExpertRejectedError(
                f"expert {name!r} was not rolled back to version {target.version} at {target.path!r}: {exc}"
            ) from exc
        kept = [current.kept(), *(v for v in current.versions if v is not target)]
        entry, dropped = serving_entry(
            name,
            target.path,
            version=manifest.version,
            live_seq=target_seq,
            kept=kept,
            keep_versions=keep_versions,
        )
        entry = entry.model_copy(update={"gate": target.gate})  # the gate it passed when it was published
        others = [e for e in registry.read() or [] if e.name != name]
        registry.write([*others, entry])
    finally:
        lock.release()
    in_use = {
        owned_directory(registry.root, p) for e in [*others, entry] for p in (e.path, *(v.path for v in e.versions))
    }
    for pruned in dropped:
        owned = owned_directory(registry.root, pruned.path)
        if owned is not None and owned not in in_use:
            shutil.rmtree(owned, ignore_errors=True)
    logger.info("rolled expert %r back from v%d to v%d (%s)", name, current.version, entry.version, entry.path)
    return entry
