"""Turning an expert directory into a servable expert: validate everything, then load.

The only place that puts the three packages together for one expert: the
manifest and adapter (``experts``), the pilots (``router``), the FAISS index
and document store (``index``).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.settings import Settings
from experts import Encoder, ExpertDir, ExpertDirError, Manifest, check_base_matches
from index import Collection
from router import check_pilots

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedExpert:
    """An expert ready to serve. ``adapter`` is the encoder's adapter name, or None when
    the adapter is untrained (identical to the base, so the extra pass is skipped)."""

    name: str
    directory: ExpertDir
    manifest: Manifest
    collection: Collection
    pilots: np.ndarray | None
    adapter: str | None

    @property
    def routable(self) -> bool:
        return self.pilots is not None


def load_expert(directory: Path | ExpertDir, encoder: Encoder, *, verify_checksums: bool = True) -> LoadedExpert:
    """Validate and load one expert; raises (and loads nothing) if any part is wrong.

    Order matters: every check that reads only files runs before the adapter
    is injected into the shared encoder, so a bad expert never touches it.
    """
    expert = directory if isinstance(directory, ExpertDir) else ExpertDir(Path(directory))
    manifest = expert.read_manifest()
    if manifest.name != expert.path.name:
        raise ExpertDirError(f"{expert.path}: directory name differs from the manifest's name {manifest.name!r}")
    check_base_matches(manifest, encoder)
    expert.verify(manifest, checksums=verify_checksums)
    if manifest.index is None:
        raise ExpertDirError(f"expert {manifest.name!r} has no index yet: build one with `rr index --expert {manifest.name}`")
    pilots = None
    if manifest.pilots is not None:
        pilots = check_pilots(expert.read_pilots(manifest), dim=encoder.dim, name=manifest.name)
    collection = Collection.open(expert.path / manifest.index.directory)
    try:
        if collection.info.dim != encoder.dim:
            raise ExpertDirError(
                f"expert {manifest.name!r}: its index has dim {collection.info.dim}, the encoder {encoder.dim}"
            )
        adapter = None
        if manifest.adapter.trained:
            # A fresh suffix per load: a replaced or removed expert keeps its adapter
            # until its last search finishes, while the new one is already loaded.
            adapter = f"{manifest.name}@v{manifest.version}-{secrets.token_hex(4)}"
            encoder.add_adapter(adapter, expert.adapter_path)
    except BaseException:
        collection.close()
        raise
    logger.info(
        "loaded expert %r v%d: %d documents, %s pilots, adapter %s",
        manifest.name, manifest.version, len(collection), "no" if pilots is None else len(pilots),
        adapter or "untrained (base vectors)",
    )  # fmt: skip
    return LoadedExpert(manifest.name, expert, manifest, collection, pilots, adapter)


def unload_expert(expert: LoadedExpert, encoder: Encoder) -> None:
    """Release what ``load_expert`` took: the adapter and the open index files."""
    if expert.adapter is not None and expert.adapter in encoder.adapters:
        encoder.remove_adapter(expert.adapter)
    expert.collection.close()


def open_encoder(settings: Settings) -> Encoder:
    """The base encoder the settings describe (model, token limit, batch size, device, threads)."""
    return Encoder(
        settings.base_model, max_length=settings.max_length, batch_size=settings.batch_size, device=settings.device,
        threads=settings.torch_threads, batch_tokens=settings.batch_tokens, cache_size=settings.base_cache_size,
        backend=settings.encoder_backend,
    )  # fmt: skip
