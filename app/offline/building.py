"""Building an expert's parts: its index (the batch job) and its pilots.

Each function stages new files inside the expert directory and publishes them
with one manifest swap, so a server reading the expert meanwhile keeps
serving the previous version.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from app.engine.splitting import long_document_splitter
from experts import (
    Encoder,
    ExpertDir,
    IndexSection,
    Manifest,
    PilotsSection,
    adapter_weights_file,
    check_base_matches,
    sha256_file,
)
from experts.labelled import judged_queries, read_qrels, read_queries
from experts.pseudo_queries import pseudo_queries
from index import BuildReport, Collection, LexicalSettings, LongDocuments, build_index
from router import centroid_pilots, kmeans_pilots, query_pilots

if TYPE_CHECKING:  # the optional [ray] extra is imported only when used
    from app.offline.ray_encoders import RayIndexing

logger = logging.getLogger(__name__)

#: How ``build_pilots`` turns training queries into pilots (see ``router.pilots``).
PilotMethod = Literal["centroid", "kmeans", "queries"]
PILOT_METHODS: tuple[PilotMethod, ...] = ("centroid", "kmeans", "queries")
#: Pilots kept per expert by the ``queries`` method: the same for every expert, so a kNN vote is fair.
QUERY_PILOTS = 1000


def _document_embedder(expert: ExpertDir, manifest: Manifest, encoder: Encoder):
    """Base encoder for query-side experts; the expert's adapter for symmetric ('both') ones.

    Bulk passes: when the encoder also serves (``rr demo`` builds beside the service), searches go first.
    """
    if not manifest.adapter.embeds_documents:
        return lambda texts: encoder.embed(texts, max_length=manifest.max_length, bulk=True), None
    name = f"{manifest.name}@index"
    encoder.add_adapter(name, expert.adapter_path)
    return lambda texts: encoder.embed(texts, expert=name, max_length=manifest.max_length, bulk=True), name


def _reporting(embed: Callable[[list[str]], np.ndarray], on_embedded: Callable[[int], None]):
    """``embed`` that tells ``on_embedded`` how many passages each call embedded."""

    def reported(texts: list[str]) -> np.ndarray:
        vectors = embed(texts)
        on_embedded(len(texts))
        return vectors

    return reported


def _build_key(expert: ExpertDir, manifest: Manifest, encoder: Encoder, factory: str) -> str:
    """What a resumable build belongs to: a checkpoint made under another key is not reused."""
    parts = {
        "base": encoder.fingerprint,
        "pooling": encoder.pooling,
        "max_length": manifest.max_length,
        "side": manifest.adapter.side,
        "factory": factory,
    }
    if encoder.backend != "torch":  # int8 vectors differ a little: never resume an fp32 build with them
        parts["backend"] = encoder.backend
    if manifest.adapter.embeds_documents:
        parts["adapter"] = sha256_file(adapter_weights_file(expert.adapter_path))
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def index_expert(
    expert: ExpertDir,
    encoder: Encoder,
    corpora: Sequence[Path],
    *,
    factory: str = "Flat",
    chunk_size: int = 256,
    upsert: bool = False,
    lexical: LexicalSettings | None = LexicalSettings(),
    progress: bool = True,
    ray: RayIndexing | None = None,
    long_documents: LongDocuments | None = None,
    chunk_overlap: int | None = None,
    on_embedded: Callable[[int], None] | None = None,
) -> tuple[Manifest, BuildReport]:
    """Embed ``corpora`` into a new index generation of ``expert`` and publish it.

    Resumable: re-running after an interruption continues from the last
    checkpoint. Replaces the expert's collection with exactly these corpora.
    A BM25 index is built beside the dense one unless ``lexical`` is None.
    ``ray`` embeds on the current Ray cluster instead of in this process
    (same checkpoint, same index: see :mod:`index.build.ray_data`).

    ``long_documents`` is the policy for documents over the embedding limit
    (see :mod:`index.long_documents`; windows overlap by ``chunk_overlap`` tokens);
    None means ``"chunk"``, except on Ray, whose actors embed whole passages
    and cannot chunk yet: there it means ``"truncate"`` (logged, and recorded
    in the index and the manifest), and asking for ``"chunk"`` or
    ``"error"`` is refused.

    ``on_embedded(n)`` is told each batch of ``n`` passages embedded (local builds only), and first, when the
    build resumes, the documents its checkpoint holds; an exception it raises stops the build between
    batches (a job cancelled), leaving the checkpoint to resume from.
    """
    manifest = expert.read_manifest()
    check_base_matches(manifest, encoder)
    if ray is not None and long_documents not in (None, "truncate"):
        raise ValueError(
            f"long_documents={long_documents!r} is not available with the Ray engine yet (its actors embed whole "
            "passages); use long_documents='truncate', or build locally"
        )
    if ray is not None and long_documents is None:
        logger.warning("the Ray engine cannot chunk long documents yet: they are truncated to the encoder's limit")
    policy: LongDocuments = long_documents or ("chunk" if ray is None else "truncate")
    chunking, split = long_document_splitter(manifest, encoder, policy=policy, overlap=chunk_overlap)
    embed, temporary_adapter = _document_embedder(expert, manifest, encoder)
    if on_embedded is not None:
        embed = _reporting(embed, on_embedded)
    if ray is None:
        build = partial(
            build_index,
            embed=embed,
            chunking=chunking,
            split=split if chunking.splits else None,
            on_resumed=on_embedded,  # a resumed build counts what its checkpoint holds as done
        )
    else:
        build = partial(ray.builder(expert, manifest, encoder), chunking=chunking)
    try:
        report = build(
            [Path(c) for c in corpora],
            dim=encoder.dim,
            out_dir=expert.new_index_path(),
            work_dir=expert.work_path("index"),
            build_key=_build_key(expert, manifest, encoder, factory),
            factory=factory,
            chunk_size=chunk_size,
            upsert=upsert,
            lexical=lexical,
            progress=progress,
        )
    finally:
        if temporary_adapter is not None:
            encoder.remove_adapter(temporary_adapter)
    published = expert.publish(
        index=IndexSection(
            directory=report.directory.name,
            factory=factory,
            count=report.documents,
            lexical=None if lexical is None else dataclasses.asdict(lexical),
            chunking=chunking.to_dict(),
        )
    )
    return published, report


def pilot_texts_from_queries(queries: Path, qrels: Path | None = None) -> list[str]:
    """Training queries for pilots: every query, or only those judged in ``qrels`` (e.g. the train split)."""
    texts = read_queries(queries)
    if qrels is not None:
        texts = judged_queries(texts, read_qrels(qrels))
    return list(texts.values())


def pilot_texts_from_documents(expert: ExpertDir, *, sample: int = 1000, seed: int = 0) -> list[str]:
    """Pseudo queries (titles, or short text spans) from a sample of the expert's indexed documents."""
    manifest = expert.read_manifest()
    if manifest.index is None:
        raise ValueError(f"expert {manifest.name!r} has no index to draw pseudo queries from: run `rr index` first")
    collection = Collection.open(expert.path / manifest.index.directory)
    try:
        ids = collection.docstore.all_row_ids().tolist()
        chosen = sorted(random.Random(seed).sample(ids, min(sample, len(ids))))
        documents = [doc for doc in collection.docstore.get(chosen) if doc is not None]
    finally:
        collection.close()
    return pseudo_queries(((doc.title, doc.text) for doc in documents), seed=seed)


def build_pilots(
    expert: ExpertDir,
    encoder: Encoder,
    texts: Sequence[str],
    *,
    method: PilotMethod = "queries",
    clusters: int = 4,
    limit: int = QUERY_PILOTS,
    source: str = "",
    query_max_length: int = 64,
) -> Manifest:
    """Embed ``texts`` with the base encoder (adapters off), make pilots, publish them."""
    manifest = expert.read_manifest()
    check_base_matches(manifest, encoder)
    if not texts:
        raise ValueError(f"no texts to build pilots of expert {manifest.name!r} from")
    if method == "queries" and len(texts) > limit:  # sample before embedding: only the kept ones are needed
        texts = random.Random(0).sample(list(texts), limit)
    embedded = encoder.embed(list(texts), max_length=query_max_length, bulk=True)  # searches go first
    if method == "centroid":
        pilots = centroid_pilots(embedded)
    elif method == "kmeans":
        pilots = kmeans_pilots(embedded, clusters=clusters)
    elif method == "queries":
        pilots = query_pilots(embedded, limit=limit)
    else:
        raise ValueError(f"Invalid pilot method {method!r}. Valid methods are: {', '.join(PILOT_METHODS)}")
    name = expert.stage_pilots(np.asarray(pilots, dtype=np.float32))
    section = PilotsSection(file=name, count=len(pilots), method=method, source=f"{source} ({len(texts)} queries)")
    return expert.publish(pilots=section)
