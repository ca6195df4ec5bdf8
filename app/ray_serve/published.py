"""What the Ray Serve deployment publishes: the registry file, watched by every replica, edited under a file lock.

On Ray Serve no single process holds the published set: each ingress replica
routes on it and each searcher replica loads from it, possibly on other nodes
that share ``RR_DATA_DIR``. So the registry file (:mod:`app.publishing.registry`, the one
``rr serve`` writes) is the shared truth. :class:`PublishedSet` re-reads it
only when it changes (one ``stat`` per look: an atomic rewrite always gives the
file a new inode), so an admin change made by any replica is seen by the next
request of every other. Edits take an exclusive ``flock`` on a lock file beside
the registry, so two ingress replicas publishing at once cannot lose one
another's change.

Without a registry file (a fresh data root) every expert directory under the
root is published, as ``rr serve`` does; the first admin edit writes the file.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.publishing.registry import RegistryEntry, RegistryFile
from experts import list_expert_dirs

__all__ = ["Published", "PublishedExpert", "PublishedSet", "published_experts"]

#: Beside ``registry.json``; held (``flock``) while an admin route rewrites the registry.
LOCK_FILE = ".registry.lock"


@dataclass(frozen=True)
class PublishedExpert:
    """One published expert: where it lives, its version, and when it was published (a re-publish changes it)."""

    name: str
    path: Path
    version: int
    published_at: str = ""


@dataclass(frozen=True)
class Published:
    """One reading of the published set; ``signature`` tells whether the files changed since."""

    experts: Mapping[str, PublishedExpert]
    signature: tuple[object, ...]
    #: True when read from the registry file, False when every directory under the root was taken.
    from_registry: bool


def _signature(registry: RegistryFile) -> tuple[object, ...]:
    try:
        stat = os.stat(registry.path)
    except FileNotFoundError:  # no registry: the root's listing is the published set
        root = os.stat(registry.root) if registry.root.is_dir() else None
        return ("root", None if root is None else root.st_mtime_ns)
    return ("registry", stat.st_ino, stat.st_mtime_ns, stat.st_size)


def _read(registry: RegistryFile) -> Published:
    signature = _signature(registry)  # before reading: a change during the read is seen next time
    entries = registry.read()
    if entries is None:
        experts = {d.path.name: PublishedExpert(d.path.name, d.path, 0) for d in list_expert_dirs(registry.root)}
        return Published(experts, signature, from_registry=False)
    experts = {e.name: PublishedExpert(e.name, registry.resolve(e), e.version, e.published_at) for e in entries}
    return Published(experts, signature, from_registry=True)


def published_experts(root: Path) -> dict[str, Path]:
    """Name -> directory of every published expert: the registry's list, else every expert under ``root``."""
    return {name: expert.path for name, expert in _read(RegistryFile(root)).experts.items()}


class PublishedSet:
    """The published set of a data root, re-read when the registry file changes; thread-safe.

    >>> published = PublishedSet(Path("/shared/experts"))
    >>> sorted(published.current().experts)
    ['cacm', 'cisi']
    """

    def __init__(self, root: Path) -> None:
        self.registry = RegistryFile(Path(root).resolve())
        self._lock = threading.Lock()
        self._current = _read(self.registry)

    def current(self) -> Published:
        """The published set now: the last reading, or a new one if the files changed since."""
        with self._lock:
            if _signature(self.registry) != self._current.signature:
                self._current = _read(self.registry)
            return self._current

    def edit(self, change: Callable[[dict[str, RegistryEntry]], dict[str, RegistryEntry]]) -> Published:
        """Rewrite the registry with ``change(entries)`` under the data root's lock; returns the new set.

        ``change`` gets the entries as they are on disk now (not as last read),
        and may raise to change nothing.
        """
        with self._locked():
            entries = self.registry.read()
            if entries is None:  # the first edit of a fresh root: what it published until now, written down
                listed = list_expert_dirs(self.registry.root)
                entries = [RegistryEntry(name=d.path.name, path=d.path.name) for d in listed]
            self.registry.write(list(change({entry.name: entry for entry in entries}).values()))
        return self.current()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        root = self.registry.root
        root.mkdir(parents=True, exist_ok=True)
        with open(root / LOCK_FILE, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes
            yield
