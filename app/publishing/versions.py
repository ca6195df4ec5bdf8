"""Kept versions of an expert: where their directories live, which of them the service owns, pruning.

A new version of an expert arrives in one of two ways:

* ``POST /admin/experts`` with ``replace`` from another directory (a path or
  an uploaded archive): the old version's directory stays where it is and the
  registry records it as kept;
* ``rr train-expert --replace`` exchanges the two directories in place at
  ``<root>/<name>``: the old version is moved to
  ``<root>/.versions/<name>/v<N>/<name>`` (an expert directory carries its
  expert's name) instead of being deleted, and the next publish of
  ``<root>/<name>`` records it from there.

Only the directories the service made (``uploads/<...>`` and
``.versions/<name>/<...>``) are deleted when a version is pruned; a directory
an admin placed elsewhere under the root is only forgotten, never deleted.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from pathlib import Path, PurePosixPath

from app.errors import ConflictError, UnknownVersionError
from app.publishing.registry import KeptVersion, RegistryEntry

logger = logging.getLogger(__name__)

#: Where uploaded archives are unpacked, under the data root.
UPLOADS_DIR = "uploads"
#: Where ``rr train-expert --replace`` keeps the versions it replaced, under the data root.
VERSIONS_DIR = ".versions"


def archived_path(root: Path, name: str, version: int) -> Path:
    """``<root>/.versions/<name>/v<version>/<name>``: where a version replaced in place is kept."""
    return Path(root) / VERSIONS_DIR / name / f"v{version}" / name


def owned_directory(root: Path, path: str) -> Path | None:
    """The directory the service made for a version at ``path`` (relative to ``root``), deleted when it is pruned.

    ``uploads/<upload>`` for an uploaded expert, ``.versions/<name>/v<N>`` for
    one replaced in place; None for a directory an admin placed.
    """
    parts = PurePosixPath(path).parts
    if len(parts) >= 2 and parts[0] == UPLOADS_DIR and not parts[1].startswith("."):
        return Path(root) / UPLOADS_DIR / parts[1]
    if len(parts) >= 3 and parts[0] == VERSIONS_DIR:
        return Path(root) / VERSIONS_DIR / parts[1] / parts[2]
    return None


def archive_replaced(directory: Path, root: Path, name: str, version: int) -> Path:
    """Move the replaced version ``directory`` (named ``name``) to its kept place; returns where it went.

    ``v<N>`` is taken by another copy of the same version number: a suffix keeps both.
    """
    target = archived_path(root, name, version)
    if target.parent.exists():
        target = target.parent.with_name(f"v{version}-{secrets.token_hex(3)}") / name
    target.parent.mkdir(parents=True)
    os.rename(directory, target)
    logger.info("kept version %d of expert %r at %s", version, name, target)
    return target


def prune_archived(root: Path, name: str, *, keep: int) -> list[Path]:
    """Delete all but the ``keep`` most recently kept versions under ``.versions/<name>``; returns those deleted.

    For ``rr train-expert``, which runs beside the service: the service prunes
    what its registry records when it publishes.
    """
    kept = Path(root) / VERSIONS_DIR / name
    if not kept.is_dir():
        return []
    directories = sorted((d for d in kept.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    pruned = directories[max(keep, 0) :]
    for directory in pruned:
        shutil.rmtree(directory, ignore_errors=True)
        logger.info("pruned %s: more than %d older versions of expert %r are kept", directory, keep, name)
    return pruned


def find_archived(root: Path, name: str, version: int) -> list[Path]:
    """The directories ``rr train-expert --replace`` kept for ``version`` of ``name``, most recent first."""
    kept = Path(root) / VERSIONS_DIR / name
    candidates = [*kept.glob(f"v{version}"), *kept.glob(f"v{version}-*")] if kept.is_dir() else []
    found = [c / name for c in candidates if (c / name).is_dir()]
    return sorted(found, key=lambda d: d.parent.stat().st_mtime, reverse=True)


def replaced_as_kept(root: Path, replaced: RegistryEntry | None, path: str) -> list[KeptVersion]:
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
            for found in find_archived(root, replaced.name, replaced.version)
            if (relative := found.relative_to(root).as_posix()) not in known
        ]
        previous = replaced.kept().model_copy(update={"path": moved[0]}) if moved else None
    return [previous, *kept] if previous is not None else kept


def choose_kept(current: RegistryEntry, version: int | None, *, keep_versions: int) -> KeptVersion:
    """The kept version a rollback of ``current`` serves: ``version`` (a manifest version), or the one served before.

    Raises ConflictError (409) when none is kept, UnknownVersionError (404, naming the kept ones) for another.
    """
    if not current.versions:
        raise ConflictError(
            f"expert {current.name!r} keeps no older version to roll back to (it serves version "
            f"{current.version} from {current.path!r}; a replace keeps up to RR_KEEP_VERSIONS - 1 = "
            f"{keep_versions - 1})"
        )
    if version is None:
        return current.versions[0]
    for candidate in current.versions:  # most recently served first
        if candidate.version == version:
            return candidate
    raise UnknownVersionError(
        f"expert {current.name!r} keeps no version {version} (never published, or pruned). "
        f"Kept versions: {[v.version for v in current.versions]}; serving: {current.version}"
    )


def check_no_writes_since_publish(current: RegistryEntry, seq: int) -> None:
    """Refuse (409) to swap out a version whose live log acknowledged writes since it began serving.

    They are in its log, which no kept version holds. The service's rollback carries them over instead
    (:func:`app.publishing.document_writes.carry_writes`) and refuses only where the log cannot list them
    (written by an older release); a rollback at rest has no encoder to embed them with, and refuses.
    """
    if seq > current.live_seq:
        raise ConflictError(
            f"expert {current.name!r} holds document writes acknowledged since version {current.version} began "
            f"serving (live log at seq {seq}, {current.live_seq} then) and this rollback cannot carry them to the "
            "kept version, so it is refused: roll back through the running service (POST /admin/experts/<name>/"
            "rollback carries them), or write them again after the rollback"
        )


def serving_entry(
    name: str, path: str, *, version: int, live_seq: int, kept: list[KeptVersion], keep_versions: int
) -> tuple[RegistryEntry, list[KeptVersion]]:
    """The registry entry of the version at ``path`` with the newest ``keep_versions - 1`` of ``kept``; and the rest.

    ``kept`` is most recently served first; the serving directory is never also kept. ``live_seq``: where the
    version's live log stood before the writes a replace or rollback carried into it. The carried writes count
    as written to this version, so the next replace or rollback carries them on (again, where it already holds
    them: an upsert of a document as it is, or a delete of one gone, changes nothing).
    """
    kept = [candidate for candidate in kept if candidate.path != path]
    room = keep_versions - 1
    entry = RegistryEntry(name=name, path=path, version=version, live_seq=live_seq, versions=tuple(kept[:room]))
    return entry, kept[room:]
