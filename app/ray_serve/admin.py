"""Publishing and unpublishing experts through the Ray Serve ingress: the registry file is what changes.

No process of the deployment holds every expert, so publishing is not a
load-and-swap as in ``rr serve`` (:mod:`app.publishing.publisher`) but an edit of the
shared registry file, in the same order of checks so that a failure changes
nothing:

1. the path must lie under the data root (``rr serve``'s own rules,
   :meth:`ExpertPublisher.resolve_path <app.publishing.publisher.ExpertPublisher.resolve_path>`);
2. a searcher replica loads the expert completely (manifest, every checksum,
   base-model fingerprint, dimension, pilots, index, adapter) and unloads it:
   this also proves the searchers' nodes can read the directory;
3. the registry is rewritten under the data root's lock.

Every ingress replica routes on the new set at its next request (it watches
the registry); searcher replicas load a new or replaced expert when first
asked and unload a removed one at their next sweep. Archive uploads stay on
``rr serve``: unpack the archive under the data root and publish its path.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from app.api.schemas import ExpertDetailOut, RemovedOut
from app.engine.jobs import RESERVED_NAMES
from app.errors import ConflictError, ExpertRejectedError
from app.publishing.publisher import ExpertPublisher
from app.publishing.registry import RegistryEntry
from app.publishing.versions import serving_entry
from app.ray_serve.published import PublishedSet
from experts import ExpertDir, ExpertError, Manifest, UnknownExpertError

__all__ = ["IngressAdmin"]

#: Validates an expert directory on a searcher replica; returns what it found (name, documents, routable).
Check = Callable[[str], Awaitable[dict[str, Any]]]
#: Asks the searcher replica holding an expert to unload what is no longer published; returns what it holds then.
Sweep = Callable[[str], Awaitable[list[str]]]


class IngressAdmin:
    """``POST /admin/experts`` and ``DELETE /admin/experts/{name}`` on the Serve ingress."""

    def __init__(self, published: PublishedSet, paths: ExpertPublisher, *, check: Check, sweep: Sweep) -> None:
        # ``paths`` is used for its path rules only: it publishes nothing (its engine stays empty).
        self.published, self._paths, self._check, self._sweep = published, paths, check, sweep

    async def add(self, path: str, *, replace: bool) -> ExpertDetailOut:
        """Validate the expert at ``path`` on a searcher replica, then publish it; a failure changes nothing."""
        directory = await asyncio.to_thread(self._paths.resolve_path, path)
        try:
            manifest = await asyncio.to_thread(lambda: ExpertDir(directory).read_manifest())
        except (ExpertError, ValueError, OSError) as exc:
            raise ExpertRejectedError(f"expert at {path!r} was not published: {exc}") from exc
        name = manifest.name
        if name in RESERVED_NAMES:
            raise ExpertRejectedError(
                f"expert name {name!r} is reserved (the embeddings API uses {list(RESERVED_NAMES)} "
                "as model names); rename it"
            )
        _refuse_taken(name, {n: str(e.path) for n, e in self.published.current().experts.items()}, replace=replace)
        try:
            found = await self._check(str(directory))
        except Exception as exc:  # noqa: BLE001  (whatever the load raised, the expert is refused with it)
            raise ExpertRejectedError(
                f"expert {name!r} at {path!r} was not published: {exc}", details={"reason": type(exc).__name__}
            ) from exc
        relative = os.path.relpath(directory, self.published.registry.root)
        entry = RegistryEntry(name=name, path=Path(relative).as_posix(), version=manifest.version)

        def change(entries: dict[str, RegistryEntry]) -> dict[str, RegistryEntry]:
            _refuse_taken(name, {n: e.path for n, e in entries.items()}, replace=replace)  # again: it may have changed
            previous = entries.get(name)
            kept = [] if previous is None else list(previous.versions)
            if previous is not None and previous.path != entry.path:
                kept.insert(0, previous.kept())  # as rr serve keeps it (pruned directories are left on disk here)
            new, _ = serving_entry(
                name, entry.path, version=entry.version, live_seq=0, kept=kept, keep_versions=self._paths.keep_versions
            )
            return {**entries, name: new}

        await asyncio.to_thread(self.published.edit, change)
        return ExpertDetailOut.model_validate(_describe(entry, manifest, found))

    async def remove(self, name: str) -> RemovedOut:
        """Unpublish at once; the replica holding it unloads it now (others at their next sweep)."""

        def change(entries: dict[str, RegistryEntry]) -> dict[str, RegistryEntry]:
            if name not in entries:
                raise UnknownExpertError(f"Expert {name!r} is not published. Published experts: {sorted(entries)}")
            return {key: value for key, value in entries.items() if key != name}

        await asyncio.to_thread(self.published.edit, change)
        held = await self._sweep(name)
        return RemovedOut(name=name, unloaded=name not in held)


def _refuse_taken(name: str, published: dict[str, str], *, replace: bool) -> None:
    if name in published and not replace:
        raise ConflictError(
            f"expert {name!r} is already published (from {published[name]!r}); "
            "add with replace=true to swap it for this one, or DELETE it first"
        )


def _describe(entry: RegistryEntry, manifest: Manifest, found: dict[str, Any]) -> dict[str, Any]:
    """What ``rr serve``'s admin answers (``GET /experts/{name}``'s shape), from the manifest and the check."""
    row: dict[str, Any] = {
        "name": entry.name,
        "path": entry.path,
        "state": "loaded",
        "version": manifest.version,
        "description": manifest.description,
        "base_model": manifest.base_model.id,
        "pilots": manifest.pilots.count if manifest.pilots else None,
        "routable": bool(found.get("routable")),
        "adapter": {
            "trained": manifest.adapter.trained,
            "side": manifest.adapter.side,
            "rank": manifest.adapter.rank,
            "alpha": manifest.adapter.alpha,
        },
        "documents": found.get("documents"),
        "manifest": manifest.model_dump(mode="json"),
    }
    if manifest.index is not None:
        row["index"] = {
            "factory": manifest.index.factory,
            "directory": manifest.index.directory,
            "documents": manifest.index.count,
        }
    return row
