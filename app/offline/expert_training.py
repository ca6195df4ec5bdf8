"""Training an expert end to end: index, pairs, LoRA adapter, pilots, published as one directory.

The flow (``train_expert``):

1. a complete new expert is assembled in a hidden staging directory under the
   experts root (``.<name>.train-XXXX.tmp/<name>``), never under its real name;
2. its collection is built with the batch indexing job, or, when retraining on
   the same corpus files, hard-linked from the published version (documents
   are embedded by the frozen base encoder, so an adapter never changes them);
3. the base document vectors are read back from the index (no second embedding
   pass) and training pairs are built: pseudo queries from the documents, plus
   labelled queries when given;
4. the adapter is trained (``experts.train_adapter``) and replaces the staged
   untrained one; the manifest records ``trained=True`` and the recipe;
5. pilots are built from the training queries (never test queries) and
   published, which checksums every file;
6. the staging directory is renamed into place. Retraining an existing expert
   swaps the two directories atomically (Linux ``renameat2(RENAME_EXCHANGE)``),
   so the old version serves until the very moment the new one is complete; a
   server that loaded it keeps its open files and loaded adapter until it
   publishes the new version. The replaced version is kept under
   ``<root>/.versions/<name>/v<N>/<name>`` (``keep_versions``, RR_KEEP_VERSIONS,
   counts the new one) for a rollback, see :mod:`app.publishing.versions`.
   With a ``gate`` (``rr train-expert --replace --gate``) the staged version
   is first scored against the serving one (:mod:`app.publishing.gate`): a
   worse one is refused (GateRefusedError) and nothing is swapped; a passing
   one carries the figures in its ``gate.json``.

Any exception or Ctrl-C removes the staging directory: no half-written
expert is ever left under the root, and the served one is untouched. A
staging directory orphaned by a killed process is removed by the next run for
that name (it holds a lock while in use).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.offline.building import PilotMethod, build_pilots, index_expert
from app.offline.expert_staging import staging, swap_into_place
from app.publishing.gate import write_gate_file
from app.publishing.registry import GateRecord
from app.publishing.versions import archive_replaced, prune_archived
from experts import (
    MANIFEST_FILE,
    AdapterInfo,
    Encoder,
    ExpertDir,
    ExpertDirError,
    LexicalSearch,
    Manifest,
    NegativeSearch,
    TrainConfig,
    TrainingPair,
    TrainingSection,
    TrainReport,
    atomic_write_bytes,
    check_expert_name,
    combine_pairs,
    create_expert,
    fsync_tree,
    pseudo_pairs,
    read_adapter_config,
    supervised_pairs,
    train_adapter,
)
from experts.labelled import read_qrels, read_queries
from index import Collection, corpus_fingerprint, read_info

logger = logging.getLogger(__name__)

_READ_CHUNK = 5000


@dataclass(frozen=True)
class TrainingResult:
    """What ``train_expert`` published and how long each part took."""

    name: str
    path: Path
    manifest: Manifest
    train: TrainReport
    pair_kinds: dict[str, int]
    index_reused: bool
    index_seconds: float
    seconds: float
    replaced_version: int | None
    gate: GateRecord | None = None


# ---------------------------------------------------------------------- index and documents
def _link_tree(source: Path, target: Path) -> None:
    """Hard-link (or copy, across filesystems) a published index generation: its files are never rewritten."""
    target.mkdir()
    for path in sorted(source.iterdir()):
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)


def _reuse_index(
    old: ExpertDir | None, new: ExpertDir, encoder: Encoder, corpora: Sequence[Path], factory: str
) -> bool:
    """Give ``new`` the collection of ``old`` when it was built from the same files the same way."""
    if old is None:
        return False
    manifest = old.read_manifest()
    index = manifest.index
    if (
        index is None
        or index.factory != factory
        or manifest.adapter.side != "query"
        or manifest.base_model.fingerprint != encoder.fingerprint
        or manifest.max_length != encoder.max_length
        or manifest.pooling != encoder.pooling
    ):
        return False
    source = old.path / index.directory
    if list(read_info(source).corpus_fingerprints) != [corpus_fingerprint(Path(c)) for c in corpora]:
        return False
    target = new.new_index_path()
    _link_tree(source, target)
    new.publish(index=index.model_copy(update={"directory": target.name}))
    logger.info("reusing the collection of %s (same corpus files, same base encoder)", old.path)
    return True


def _documents(collection: Collection, rows: np.ndarray) -> list[tuple[str, str, str]]:
    """``(doc_id, title, text)`` of every row, in row order, read in chunks."""
    out: list[tuple[str, str, str]] = []
    for start in range(0, len(rows), _READ_CHUNK):
        chunk = rows[start : start + _READ_CHUNK].tolist()
        for row, doc in zip(chunk, collection.docstore.get(chunk), strict=True):
            if doc is None:
                raise ExpertDirError(f"{collection.directory}: row {row} is in the index but not in the docstore")
            out.append((doc.id, doc.title, doc.text))
    return out


def _base_vectors(collection: Collection, encoder: Encoder, manifest: Manifest) -> tuple[np.ndarray, np.ndarray]:
    """Row ids and base document vectors: read back from an exact index, else embedded again."""
    if collection.dense.exact_storage:
        return collection.vectors()
    assert manifest.index is not None  # the collection was opened from it
    rows = collection.docstore.all_row_ids()
    logger.info("the %r index stores compressed codes: embedding %d documents again", manifest.index.factory, len(rows))
    passages = []
    for start in range(0, len(rows), _READ_CHUNK):
        for doc in collection.docstore.get(rows[start : start + _READ_CHUNK].tolist()):
            assert doc is not None  # the row ids were read from this docstore
            passages.append(doc.passage())
    return rows, encoder.embed(passages, max_length=manifest.max_length)


def _positions(rows: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Docstore row ids (-1: none) as positions in ``rows``, the row ids of the training matrix, ascending."""
    return np.where(ids >= 0, np.searchsorted(rows, ids), -1).astype(np.int64)


def _faiss_negatives(collection: Collection, rows: np.ndarray) -> NegativeSearch:
    """Hard-negative search through the expert's own FAISS index, answering matrix positions."""

    def search(queries: np.ndarray, k: int) -> np.ndarray:
        return _positions(rows, collection.dense.search(queries, k)[1])

    return search


def bm25_search(collection: Collection, rows: np.ndarray) -> LexicalSearch | None:
    """BM25 through the expert's own lexical index, answering matrix positions (training on the fused score).

    None where the collection has no BM25 index.
    """

    def search(queries: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = collection.search_lexical(list(queries), k)
        return scores, _positions(rows, ids)

    return search if collection.has_lexical else None


# ---------------------------------------------------------------------- the workflow
def _pairs(
    documents: list[tuple[str, str, str]],
    *,
    queries: Path | None,
    qrels: Path | None,
    spans_with_title: int,
    spans_without_title: int,
    supervised_repeat: int,
    seed: int,
) -> tuple[list[TrainingPair], list[str]]:
    """Training pairs and the texts to build pilots from (real training queries where given)."""
    pseudo = pseudo_pairs(
        [(title, text) for _, title, text in documents],
        spans_with_title=spans_with_title,
        spans_without_title=spans_without_title,
        seed=seed,
    )
    if queries is None:
        texts = [pair.query for pair in pseudo]
        return pseudo, random.Random(seed).sample(texts, min(1000, len(texts)))
    assert qrels is not None  # train_expert takes queries and qrels together
    rows = {doc_id: position for position, (doc_id, _, _) in enumerate(documents)}
    supervised = supervised_pairs(read_queries(queries), read_qrels(qrels), rows)
    return combine_pairs(pseudo, supervised, supervised_repeat=supervised_repeat), [p.query for p in supervised]


def _record_training(
    expert: ExpertDir,
    report: TrainReport,
    kinds: dict[str, int],
    *,
    corpora: Sequence[Path],
    labelled: str,
    min_version: int,
) -> None:
    """Mark the staged adapter trained and record the recipe (checksums follow with the pilots' publish)."""
    manifest = expert.read_manifest()
    config = read_adapter_config(expert.adapter_path)
    adapter = AdapterInfo(
        side="query",
        rank=int(config["r"]),
        alpha=float(config.get("lora_alpha", config["r"])),
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=tuple(sorted(report.config.target_modules)),
        trained=True,
    )
    training = TrainingSection(
        recipe=report.config.as_dict(),
        mode=report.mode,
        pairs=report.pairs,
        pair_kinds=kinds,
        documents=report.documents,
        first_loss=report.first_loss,
        final_loss=report.final_loss,
        seconds=round(report.seconds, 1),
        corpora=tuple(corpus_fingerprint(Path(c)) for c in corpora),
        labelled=labelled,
    )
    updated = manifest.next_version(adapter=adapter, training=training)
    updated = updated.model_copy(update={"version": max(updated.version, min_version)})
    atomic_write_bytes(expert.path / MANIFEST_FILE, updated.model_dump_json(indent=2).encode())


def train_expert(
    root: Path,
    name: str,
    *,
    encoder: Encoder,
    corpora: Sequence[Path],
    queries: Path | None = None,
    qrels: Path | None = None,
    config: TrainConfig = TrainConfig(),
    replace: bool = False,
    factory: str = "Flat",
    description: str = "",
    spans_with_title: int = 2,
    spans_without_title: int = 3,
    supervised_repeat: int = 3,
    pilot_method: PilotMethod = "queries",
    pilot_clusters: int = 4,
    keep_versions: int = 3,
    progress: bool = True,
    gate: Callable[[Path | None, Path], GateRecord] | None = None,
    on_embedded: Callable[[int], None] | None = None,
    retrains: Path | None = None,
    on_step: Callable[[int, int], None] | None = None,
    checkpoint: Path | None = None,
) -> TrainingResult:
    """Train and publish the expert ``root/name`` from a corpus (and labelled queries, when given).

    Corpus-only by default: pseudo queries (titles, random text spans) point
    at their own documents. With ``queries`` and ``qrels`` (e.g. scifact's
    train split) the labelled pairs join them, repeated ``supervised_repeat``
    times, and the pilots are built from those real queries.

    ``replace=True`` retrains an existing expert; it keeps serving until the
    new directory is complete and swapped in; the replaced version is kept
    under ``.versions/`` unless ``keep_versions`` is 1 (older kept ones beyond
    it are pruned). See the module docstring for the guarantees on interruption.
    ``gate(serving, candidate)`` (directories; serving None for a new expert)
    runs before the swap: it raises to refuse the new version, or returns the
    record left in its ``gate.json`` (see :func:`app.publishing.gate.gate_directories`).
    ``on_embedded`` and ``on_step`` report the indexing batches and the training steps (see
    :func:`~app.offline.building.index_expert` and ``experts.train_adapter``); what they raise stops the run.
    ``retrains``: the serving directory of the expert this new one is to replace when that one is published
    elsewhere and swapped through the service (``rr demo`` trains into a new root and publishes with the
    publisher's replace): its collection is reused as ``replace`` would, and the new version numbers after its.
    ``checkpoint``: the training's checkpoint file, kept outside the staging directory by the caller (a job's
    work directory), resumed from when it holds one of the same inputs (``experts.train_adapter``).

    >>> result = train_expert(Path("data/experts"), "cranfield", encoder=Encoder(),
    ...                       corpora=[Path("cranfield/corpus.jsonl")])  # doctest: +SKIP
    >>> result.manifest.adapter.trained
    True
    """
    started = time.perf_counter()
    check_expert_name(name)
    corpora = [Path(c) for c in corpora]
    if not corpora:
        raise ValueError("give at least one corpus file to train on")
    if (queries is None) != (qrels is None):
        raise ValueError("labelled training needs both queries and qrels (e.g. queries.jsonl and qrels/train.tsv)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    old = ExpertDir(target) if target.exists() else None
    if old is not None and not replace:
        raise ExpertDirError(
            f"expert {name!r} already exists at {target}; pass replace=True (--replace) to retrain it "
            "(the current version keeps serving until the new one is complete)"
        )
    old_version = old.read_manifest().version if old is not None else None
    reusable = ExpertDir(retrains) if retrains is not None else old
    after_version = max(old_version or 0, reusable.read_manifest().version if reusable is not None else 0)
    with staging(root, name) as stage:
        expert = create_expert(
            stage,
            name,
            encoder=encoder,
            rank=config.rank,
            alpha=config.alpha,
            dropout=config.dropout,
            target_modules=config.target_modules,
            description=description,
        )
        index_started = time.perf_counter()
        reused = _reuse_index(reusable, expert, encoder, corpora, factory)
        if not reused:
            index_expert(expert, encoder, corpora, factory=factory, progress=progress, on_embedded=on_embedded)
        index_seconds = time.perf_counter() - index_started
        manifest = expert.read_manifest()
        assert manifest.index is not None  # just built or reused
        with Collection.open(expert.path / manifest.index.directory) as collection:
            rows, vectors = _base_vectors(collection, encoder, manifest)
            documents = _documents(collection, rows)
            pairs, pilot_texts = _pairs(
                documents,
                queries=queries,
                qrels=qrels,
                spans_with_title=spans_with_title,
                spans_without_title=spans_without_title,
                supervised_repeat=supervised_repeat,
                seed=config.seed,
            )
            trained_dir = expert.work_path("train") / "adapter"
            lexical = bm25_search(collection, rows)
            if lexical is None and config.fusion_weight not in (None, 1.0):
                logger.info("the %r index has no BM25 side: training on the dense score alone", name)
                config = dataclasses.replace(config, fusion_weight=None)
            report = train_adapter(
                encoder,
                pairs,
                vectors,
                trained_dir,
                config=config,
                negative_search=_faiss_negatives(collection, rows),
                lexical_search=lexical,
                progress=progress,
                description=f"training {name}",
                on_step=on_step,
                checkpoint=checkpoint,
            )
        shutil.rmtree(expert.adapter_path)
        os.rename(trained_dir, expert.adapter_path)
        shutil.rmtree(expert.path / ".work", ignore_errors=True)
        kinds: dict[str, int] = dict(sorted(Counter(pair.kind for pair in pairs).items()))
        labelled = f"{queries} + {qrels}" if queries is not None else ""
        _record_training(
            expert,
            report,
            kinds,
            corpora=corpora,
            labelled=labelled,
            min_version=after_version + 1,
        )
        source = "labelled training queries" if queries is not None else "pseudo queries the adapter was trained on"
        published = build_pilots(
            expert, encoder, pilot_texts, method=pilot_method, clusters=pilot_clusters, source=source
        )
        expert.verify(published)
        record = gate(target if old is not None else None, expert.path) if gate is not None else None
        if record is not None:
            write_gate_file(expert.path, record)
        fsync_tree(expert.path)
        swap_into_place(expert.path, target, old_version=old_version)
        if old_version is not None and keep_versions > 1:  # the staged path now holds the replaced version
            archive_replaced(expert.path, root, name, old_version)
            prune_archived(root, name, keep=keep_versions - 1)
    result = TrainingResult(
        name=name,
        path=target,
        manifest=published,
        train=report,
        pair_kinds=kinds,
        index_reused=reused,
        index_seconds=index_seconds,
        seconds=time.perf_counter() - started,
        replaced_version=old_version,
        gate=record,
    )
    logger.info(
        "published expert %r version %d (%s) in %.0fs",
        name,
        published.version,
        f"replacing version {old_version}" if old_version is not None else "new",
        result.seconds,
    )
    return result
