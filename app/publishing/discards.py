"""Deleting what the service made once nothing uses it: the directories of versions no longer served nor kept,
uploads no registry entry names, and what an interrupted change left.

Only the directories the service made (``uploads/<...>`` and
``.versions/<name>/<...>``, see :func:`~app.publishing.versions.owned_directory`)
and the hidden names an upload has while it is received or unpacked are ever
deleted; an expert directory an admin placed is only forgotten.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from app.publishing.data_uploads import DataUploads
from app.publishing.registry import RegistryEntry, RegistryFile
from app.publishing.versions import UPLOADS_DIR, owned_directory

logger = logging.getLogger(__name__)

#: Hidden names under it: an archive being received, and one being unpacked (removed at start-up if left).
RECEIVING_PREFIX = ".upload-"
STAGING_PREFIX = ".staging-"


def remove_tree(path: Path) -> None:
    """Delete a directory tree, or a file or link (a link is removed, never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def owned_in_use(root: Path, entries: Iterable[RegistryEntry]) -> set[Path]:
    """The directories the service made (uploads, kept versions) that a published or kept version still uses."""
    paths = [path for entry in entries for path in (entry.path, *(v.path for v in entry.versions))]
    return {owned for path in paths if (owned := owned_directory(root, path)) is not None}


def discard_interrupted_writes(root: Path, registry: RegistryFile) -> None:
    """Remove what a crash mid-change left: a registry temp file, a half-received or half-unpacked upload
    (an expert archive, or a job's file under ``.uploads/``).

    Only the hidden names given to them while they are written; unpacked experts (published or not) are kept.
    """
    for leftover in registry.discard_temporary_files():
        logger.warning("removed %s, left by a registry update that was interrupted", leftover)
    for leftover in DataUploads(root, max_bytes=0).discard_partial():
        logger.warning("removed %s, a job file whose upload was interrupted", leftover)
    uploads = root / UPLOADS_DIR
    if not uploads.is_dir():
        return
    for leftover in sorted([*uploads.glob(f"{RECEIVING_PREFIX}*"), *uploads.glob(f"{STAGING_PREFIX}*")]):
        logger.warning("removing %s, left by an upload that was interrupted", leftover)
        remove_tree(leftover)


def discard_unpublished_uploads(root: Path, entries: Iterable[RegistryEntry]) -> None:
    """Under the admin lock: delete every unpacked upload that none of ``entries`` names, serving or kept (their
    expert was removed or replaced while the server was down, or a crash came between unpacking and publishing)."""
    uploads = root / UPLOADS_DIR
    if not uploads.is_dir() or uploads.is_symlink():
        return
    kept = owned_in_use(root, entries)
    for directory in sorted(uploads.iterdir()):
        if directory.name.startswith(".") or directory in kept:
            continue  # hidden names are uploads in progress (removed by discard_interrupted_writes)
        logger.warning("removing %s: an uploaded expert that is no longer published", directory)
        remove_tree(directory)


def discard_once_released(
    root: Path,
    paths: list[str],
    released: threading.Event,
    *,
    lock: threading.Lock,
    published: Callable[[], Iterable[RegistryEntry]],
) -> threading.Event:
    """Delete the directories the service made for versions that are no longer served nor kept, once unloaded.

    Not before: searches that still hold the replaced or removed version
    read its files. Directories an admin placed are never deleted. Returns
    an event set when that is done (at once when there is nothing to
    delete). ``lock`` is the admin lock, under which ``published()`` gives
    the entries published now; call it without holding the lock.
    """
    directories = sorted({owned for path in paths if (owned := owned_directory(root, path)) is not None})
    if not directories:
        return released

    done = threading.Event()

    def discard() -> None:
        released.wait()
        try:
            with lock:  # the same directory may have been published again meanwhile
                in_use = owned_in_use(root, published())
                for directory in directories:
                    if directory not in in_use and directory.exists():
                        remove_tree(directory)
                        logger.info("removed %s: the version it held is no longer published nor kept", directory)
        finally:
            done.set()

    if released.is_set():
        discard()
    else:
        threading.Thread(target=discard, name="rr-discard-versions", daemon=True).start()
    return done
