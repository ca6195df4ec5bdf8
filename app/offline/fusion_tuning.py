"""Tuning an expert's hybrid fusion weight on its own training queries, at build time.

How much a query's BM25 ranking should count against its dense ranking
depends on the domain (rare technical terms favour BM25) and on the query
vector (an expert's adapter makes the dense side better, so it deserves more).
One global 0.5 leaves that on the table, so each expert gets the weight that
maximises nDCG@10 of the fused ranking on queries it was built from: its
labelled training queries where it had them, else pseudo queries drawn from
its documents. Test queries are never used.

Pseudo queries (titles, spans of text) are copied from their document, which
flatters BM25; the tie rule below (prefer the weight nearest 0.5 among those
within ``tolerance`` of the best) keeps a flat curve from drifting to an
extreme on noise. ``rr eval`` measures the tuned weights on test queries.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ir_measures
import numpy as np
from ir_measures import nDCG

from experts import Encoder, ExpertDir, Manifest, RetrievalSection, TrainingPair, pseudo_pairs, supervised_pairs
from experts.labelled import read_qrels, read_queries
from index import Collection, fuse_dense_lexical

logger = logging.getLogger(__name__)

#: Dense shares tried: 0.0 (BM25 only) to 1.0 (dense only).
WEIGHTS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
#: Queries scored per tuning (sampled): enough for a stable curve, a few seconds on a CPU.
TUNING_QUERIES = 500
#: Weights whose nDCG@10 is within this of the best count as ties, and the one nearest 0.5 wins.
TOLERANCE = 0.002
#: Queries embedded per call when someone follows the progress (``on_embedded``): a job reports and can be
#: cancelled between calls.
PROGRESS_CHUNK = 64
_NDCG = nDCG @ 10


@dataclass(frozen=True)
class TuningQueries:
    """Query texts, the docstore row ids relevant to each, and where they came from."""

    texts: list[str]
    relevant: list[tuple[int, ...]]
    kind: str  # "labelled" or "pseudo"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.relevant):
            raise ValueError(f"{len(self.texts)} queries but {len(self.relevant)} relevance lists")
        if not self.texts:
            raise ValueError("no queries to tune the fusion weight on")


def from_pairs(
    pairs: Sequence[TrainingPair], rows: np.ndarray | None = None, *, limit: int = TUNING_QUERIES, seed: int = 0
) -> TuningQueries:
    """Tuning queries from training pairs, labelled ones if any; ``rows[r]`` is the docstore row id of pair row ``r``.

    ``rows=None``: the pairs' rows are docstore row ids already.
    Labelled pairs are in the test queries' own style, so where an expert has
    them the pseudo pairs are left out of tuning (they still train the adapter).
    """
    labelled = [p for p in pairs if p.kind == "supervised"]
    chosen = list(dict.fromkeys(labelled or pairs))  # supervised pairs are repeated for training
    if len(chosen) > limit:
        chosen = random.Random(seed).sample(chosen, limit)
    return TuningQueries(
        [p.query for p in chosen],
        [tuple(int(r if rows is None else rows[r]) for r in p.positives) for p in chosen],
        "labelled" if labelled else "pseudo",
    )


def from_collection(
    collection: Collection,
    *,
    queries: Path | None = None,
    qrels: Path | None = None,
    limit: int = TUNING_QUERIES,
    seed: int = 0,
) -> TuningQueries:
    """Tuning queries for an expert already built: labelled (``queries`` + ``qrels`` files) or pseudo ones.

    Pseudo queries come from a seeded sample of the collection's documents.
    """
    if (queries is None) != (qrels is None):
        raise ValueError("give both a queries file and a qrels file, or neither (pseudo queries)")
    docstore = collection.docstore
    if queries is not None and qrels is not None:
        judged = read_qrels(qrels)
        doc_ids = sorted({doc for docs in judged.values() for doc in docs})
        rows = {doc: row for doc, row in zip(doc_ids, docstore.row_ids(doc_ids), strict=True) if row is not None}
        pairs = supervised_pairs(read_queries(queries), judged, rows)
        return from_pairs(pairs, limit=limit, seed=seed)
    all_rows = docstore.all_row_ids()
    sample = np.asarray(
        sorted(random.Random(seed).sample(all_rows.tolist(), min(limit, len(all_rows)))), dtype=np.int64
    )
    documents = [doc for doc in docstore.get(sample.tolist()) if doc is not None]
    pairs = pseudo_pairs([(doc.title, doc.text) for doc in documents], seed=seed)
    return from_pairs(pairs, sample, limit=limit, seed=seed)


def fusion_curve(
    encoder: Encoder,
    adapter: str | None,
    collection: Collection,
    queries: TuningQueries,
    *,
    candidates: int = 200,
    max_length: int = 64,
    weights: Sequence[float] = WEIGHTS,
    on_embedded: Callable[[int], None] | None = None,
) -> dict[float, float]:
    """nDCG@10 of the weighted fusion at each weight: one model pass, one dense and one BM25 search in all.

    ``on_embedded(n)``: told after each ``PROGRESS_CHUNK`` queries embedded, which are then embedded as bulk
    passes (searches beside it go first); it may raise to stop the tuning.
    """
    if not collection.has_lexical:
        raise ValueError("the collection has no lexical (BM25) index: there is no fusion to tune")
    if on_embedded is None:
        vectors = encoder.embed(queries.texts, expert=adapter, max_length=max_length)
    else:
        parts = []
        for start in range(0, len(queries.texts), PROGRESS_CHUNK):
            chunk = queries.texts[start : start + PROGRESS_CHUNK]
            parts.append(encoder.embed(chunk, expert=adapter, max_length=max_length, bulk=True))
            on_embedded(len(chunk))
        vectors = np.concatenate(parts)
    return vector_fusion_curve(vectors, collection, queries, candidates=candidates, weights=weights)


def vector_fusion_curve(
    vectors: np.ndarray,
    collection: Collection,
    queries: TuningQueries,
    *,
    candidates: int = 200,
    weights: Sequence[float] = WEIGHTS,
) -> dict[float, float]:
    """:func:`fusion_curve` for query vectors already made (one per query text, in order)."""
    dense = collection.dense.search(vectors, candidates)
    lexical = collection.search_lexical(queries.texts, candidates)
    qrels = {str(q): {str(row): 1 for row in rows} for q, rows in enumerate(queries.relevant)}
    curve = {}
    for weight in weights:
        fused = fuse_dense_lexical(dense, lexical, k=10, method="weighted", weight=weight)
        run = {
            str(q): {str(row): float(score) for row, score in zip(ids, scores, strict=True) if row >= 0}
            for q, (ids, scores) in enumerate(zip(fused.ids.tolist(), fused.scores.tolist(), strict=True))
        }
        curve[weight] = float(ir_measures.calc_aggregate([_NDCG], qrels, run)[_NDCG])
    return curve


def best_weight(curve: dict[float, float], *, tolerance: float = TOLERANCE) -> float:
    """The weight with the best nDCG@10; among near-ties, the one nearest 0.5 (the untuned default).

    >>> best_weight({0.3: 0.70, 0.5: 0.699, 0.9: 0.60})
    0.5
    """
    top = max(curve.values())
    return min((w for w, v in curve.items() if v >= top - tolerance), key=lambda w: (abs(w - 0.5), w))


def tune_fusion(
    expert: ExpertDir,
    encoder: Encoder,
    queries: TuningQueries,
    *,
    candidates: int = 200,
    max_length: int = 64,
) -> Manifest:
    """Tune the expert's fusion weight with its own adapter's query vectors and publish it in its manifest."""
    section = tuned_section(expert, encoder, queries, candidates=candidates, max_length=max_length)
    return expert.publish(retrieval=section)


def tuned_section(
    expert: ExpertDir,
    encoder: Encoder,
    queries: TuningQueries,
    *,
    candidates: int = 200,
    max_length: int = 64,
    on_embedded: Callable[[int], None] | None = None,
) -> RetrievalSection:
    """The manifest's ``retrieval`` section :func:`tune_fusion` would publish: the best weight, and its curve."""
    manifest = expert.read_manifest()
    if manifest.index is None:
        raise ValueError(f"expert {manifest.name!r} has no index to tune on: run `rr index` first")
    adapter = None
    if manifest.adapter.trained:
        adapter = f"{manifest.name}@tuning"
        encoder.add_adapter(adapter, expert.adapter_path)
    try:
        with Collection.open(expert.path / manifest.index.directory) as collection:
            curve = fusion_curve(
                encoder,
                adapter,
                collection,
                queries,
                candidates=candidates,
                max_length=max_length,
                on_embedded=on_embedded,
            )
    finally:
        if adapter is not None:
            encoder.remove_adapter(adapter)
    weight = best_weight(curve)
    previous = manifest.retrieval
    logger.info(
        "expert %r: fusion weight %.1f (nDCG@10 %.4f on %d %s queries; 0.5 gives %.4f)",
        manifest.name,
        weight,
        curve[weight],
        len(queries.texts),
        queries.kind,
        curve.get(0.5, float("nan")),
    )
    return RetrievalSection(
        mode=previous.mode if previous is not None else None,
        weight=weight,
        tuned_on=f"{len(queries.texts)} {queries.kind} queries",
        queries=len(queries.texts),
        curve={f"{w:.2f}": round(v, 4) for w, v in curve.items()},
    )
