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
