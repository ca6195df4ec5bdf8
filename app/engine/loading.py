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
from threadpoolctl import threadpool_limits

from app.engine.documents import ExpertDocuments, sliced
from app.engine.splitting import recorded_splitter
from app.settings import Settings
from experts import Encoder, ExpertDir, ExpertDirError, ExpertError, Manifest, check_base_matches
from index import Collection, EmbedFn, IndexStoreError, LiveView, MergePolicy, read_info, set_search_threads
from router import RouterError, check_pilots

logger = logging.getLogger(__name__)

#: What a broken expert directory can raise while being validated and loaded (:func:`load_expert`).
LOAD_ERRORS = (ExpertError, IndexStoreError, RouterError, ValueError, OSError)


@dataclass(frozen=True)
class LoadedExpert:
    """An expert ready to serve. ``adapter`` is the encoder's adapter name, or None when
    the adapter is untrained (identical to the base, so the extra pass is skipped)."""

    name: str
    directory: ExpertDir
    manifest: Manifest
    documents: ExpertDocuments
    pilots: np.ndarray | None
    adapter: str | None

    @property
    def routable(self) -> bool:
        return self.pilots is not None

    @property
    def collection(self) -> Collection:
        """The published generation (without the live writes since): for offline tools that read it whole."""
        return self.documents.main

    def view(self) -> LiveView:
        """What a search of this moment sees: the generation, the live delta, minus tombstones."""
        return self.documents.view()


def load_expert(
    directory: Path | ExpertDir,
    encoder: Encoder,
    *,
    verify_checksums: bool = True,
    write: bool = False,
    merge_policy: MergePolicy = MergePolicy(),
) -> LoadedExpert:
    """Validate and load one expert; raises (and loads nothing) if any part is wrong.

    Order matters: every check that reads only files runs before the adapter
    is injected into the shared encoder, so a bad expert never touches it.
    ``write``: take the expert's live log for writing (the service does; a CLI
    search reads it as it is), see :class:`~app.engine.documents.ExpertDocuments`.
    """
    expert = directory if isinstance(directory, ExpertDir) else ExpertDir(Path(directory))
    manifest = expert.read_manifest()
    if manifest.name != expert.path.name:
        raise ExpertDirError(f"{expert.path}: directory name differs from the manifest's name {manifest.name!r}")
    check_base_matches(manifest, encoder)
    expert.verify(manifest, checksums=verify_checksums)
    if manifest.index is None:
        raise ExpertDirError(
            f"expert {manifest.name!r} has no index yet: build one with `rr index --expert {manifest.name}`"
        )
    pilots = None
    if manifest.pilots is not None:
        pilots = check_pilots(expert.read_pilots(manifest), dim=encoder.dim, name=manifest.name)
    info = read_info(expert.path / manifest.index.directory)
    if info.dim != encoder.dim:
        raise ExpertDirError(f"expert {manifest.name!r}: its index has dim {info.dim}, the encoder {encoder.dim}")
    adapter = None
    if manifest.adapter.trained:
        # A fresh suffix per load: a replaced or removed expert keeps its adapter
        # until its last search finishes, while the new one is already loaded.
        adapter = f"{manifest.name}@v{manifest.version}-{secrets.token_hex(4)}"
        encoder.add_adapter(adapter, expert.adapter_path)
    try:
        embed = document_embedder(encoder, manifest, adapter) if write else None
        split = recorded_splitter(info, encoder) if write else None  # long upserts split as the index was built
        documents = ExpertDocuments.open(expert, manifest, embed=embed, write=write, policy=merge_policy, split=split)
    except BaseException:
        if adapter is not None:
            encoder.remove_adapter(adapter)
        raise
    logger.info(
        "loaded expert %r v%d: %d documents, %s pilots, adapter %s",
        manifest.name,
        manifest.version,
        len(documents),
        "no" if pilots is None else len(pilots),
        adapter or "untrained (base vectors)",
    )
    return LoadedExpert(manifest.name, expert, manifest, documents, pilots, adapter)


def document_embedder(encoder: Encoder, manifest: Manifest, adapter: str | None) -> EmbedFn:
    """How upserted documents are embedded: like the indexing job embedded the rest (see app.offline.building).

    The base encoder for query-side experts (an upsert never touches an
    adapter), the expert's adapter for symmetric ('both') ones; at the
    document token limit the expert was indexed with. Bulk work: searches'
    passes go first between its passes (``Encoder.embed(bulk=True)``).
    """
    expert = adapter if manifest.adapter.embeds_documents else None
    return sliced(lambda texts: encoder.embed(texts, expert=expert, max_length=manifest.max_length, bulk=True))


def unload_expert(expert: LoadedExpert, encoder: Encoder) -> None:
    """Release what ``load_expert`` took: the adapter, the open index files and the writer lock."""
    if expert.adapter is not None and expert.adapter in encoder.adapters:
        encoder.remove_adapter(expert.adapter)
    expert.documents.close()


def apply_search_threads(settings: Settings) -> None:
    """Set FAISS's search threads (``RR_FAISS_THREADS``) and numpy's BLAS threads (``RR_BLAS_THREADS``).

    Both are process-wide; :func:`open_encoder` calls this, and so do benchmarks that search without an encoder.
    """
    if settings.faiss_threads is not None:
        set_search_threads(settings.faiss_threads)
    if settings.blas_threads is not None:
        threadpool_limits(limits=settings.blas_threads, user_api="blas")


def open_encoder(settings: Settings) -> Encoder:
    """The base encoder the settings describe (model, token limit, batch size, device, threads).

    FAISS's and numpy's BLAS threads are set here too (:func:`apply_search_threads`): like torch's, they are
    process-wide, and every command that searches opens the encoder first.
    """
    apply_search_threads(settings)
    return Encoder(
        settings.base_model,
        max_length=settings.max_length,
        batch_size=settings.batch_size,
        device=settings.device,
        threads=settings.torch_threads,
        batch_tokens=settings.batch_tokens,
        cache_size=settings.base_cache_size,
        backend=settings.encoder_backend,
        bulk_copy=settings.bulk_model_copy,
    )
