"""Start-up: the experts the registry lists loaded and served again, or, on a fresh data root, every one found.

What an interrupted change left is removed first; once loaded, the uploads
no registry entry names (their expert was removed or replaced while the
service was down). A published expert that cannot be loaded stays published
and is recorded failed, keeping the service from being ready until it is
replaced or deleted; on a fresh root (no registry yet) it is only not served.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from app.engine.engine import SearchEngine
from app.engine.loading import LOAD_ERRORS, LoadedExpert
from app.publishing.discards import discard_interrupted_writes, discard_unpublished_uploads
from app.publishing.gate import read_gate_file
from app.publishing.registry import RegistryEntry, RegistryFile
from app.publishing.versions import replaced_as_kept
from experts import list_expert_dirs

logger = logging.getLogger(__name__)


def restore_published(
    engine: SearchEngine,
    registry: RegistryFile,
    *,
    load: Callable[[RegistryEntry], LoadedExpert],
    keep_versions: int,
    progress: Callable[[str], None],
) -> dict[str, RegistryEntry]:
    """Load what ``registry`` lists into ``engine`` (``load`` raises one of LOAD_ERRORS for a broken directory);
    with no registry yet, publish every loadable expert under its root. Returns the published entries by name.

    Call it under the admin lock.
    """
    root = registry.root
    discard_interrupted_writes(root, registry)
    entries = registry.read()
    bootstrap = entries is None
    if entries is None:
        entries = [RegistryEntry(name=d.path.name, path=d.path.name) for d in list_expert_dirs(root)]
        logger.info("no %s yet: publishing the experts found under %s", registry.path.name, root)
    published: list[RegistryEntry] = []
    for position, entry in enumerate(entries, start=1):
        progress(f"loading experts ({position}/{len(entries)}: {entry.name})")
        try:
            loaded = load(entry)
        except LOAD_ERRORS as exc:
            if bootstrap:  # never published: just not served
                logger.warning("not publishing %s: %s", entry.path, exc)
                engine.failures.mark_unavailable(entry.name, str(exc))
                continue
            logger.error("published expert %r cannot be loaded: %s", entry.name, exc)
            engine.failures.mark_failed(entry.name, str(exc))
            published.append(entry)
            continue
        engine.add(loaded)
        published.append(_restored(registry, entry, loaded.manifest.version, keep_versions=keep_versions))
    changed = published != [entry for entry in entries if entry.name in {e.name for e in published}]
    restored = {entry.name: entry for entry in published}
    if bootstrap:  # without a registry nothing says which uploads were published: keep them all
        registry.write(published)
        return restored
    if changed:  # versions retrained in place while the service was down: recorded, best effort
        try:
            registry.write(published)
        except OSError as exc:
            logger.warning("could not record the experts' current versions in %s: %s", registry.path, exc)
    discard_unpublished_uploads(root, published)
    return restored


def _restored(registry: RegistryFile, entry: RegistryEntry, version: int, *, keep_versions: int) -> RegistryEntry:
    """``entry`` with the version its directory now holds; a version ``rr train-expert --replace`` moved under
    ``.versions/`` while the service was down is kept."""
    if entry.version == version:
        return entry
    kept = replaced_as_kept(registry.root, entry, entry.path)
    gate = read_gate_file(registry.resolve(entry), version)  # the gate `rr train-expert --gate` ran, if it did
    update = {"version": version, "versions": tuple(kept[: keep_versions - 1]), "gate": gate}
    return entry.model_copy(update=update)
