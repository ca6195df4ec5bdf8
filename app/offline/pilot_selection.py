"""RouterRetriever's pilot construction (Algorithm 1) over the loaded experts, and the simple ones to compare.

For every collection's *training* queries (its ``qrels/train.tsv`` where it
has one, else pseudo queries made from a sample of its own documents, whose
positive is the document they came from), every expert embeds the queries
and searches that collection's index; the expert with the best per-query
nDCG@10 wins the query. :func:`router.assigned_pilots` turns the winners into
pilots. Test queries are never read here.

    >>> selection = select_paper_pilots(engine, Path("../shared/datasets"))
    >>> publish_pilots(engine, selection.pilots, method="paper", source=selection.source)
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import ir_measures
import numpy as np
from ir_measures import nDCG

from app.engine.engine import SearchEngine
from app.offline.building import PILOT_METHODS, QUERY_PILOTS, PilotMethod
from experts import Manifest, PilotsSection
from experts.labelled import judged_queries, read_qrels, read_queries
from experts.pseudo_queries import pseudo_queries
from index import Collection
from router import assigned_pilots, best_experts, centroid_pilots, kmeans_pilots, query_pilots

logger = logging.getLogger(__name__)

PilotConstruction = Literal["centroid", "kmeans", "queries", "paper"]
PILOT_CONSTRUCTIONS: tuple[PilotConstruction, ...] = ("centroid", "kmeans", "queries", "paper")

#: Depth of the per-query ranking that decides which expert wins a query.
WIN_DEPTH = 10


@dataclass(frozen=True)
class JudgedQueries:
    """One collection's judged queries: ids, texts, their judged documents, and where they came from.

    Pilot training uses train qrels or pseudo queries; the evaluation uses the test qrels.
    """

    collection: str
    ids: list[str]
    texts: list[str]
    qrels: dict[str, dict[str, int]]
    origin: str  # "train qrels" or "pseudo queries"


def training_queries(
    collection_name: str,
    collection: Collection,
    datasets: Path | None,
    *,
    pseudo_sample: int = 300,
    seed: int = 0,
) -> JudgedQueries:
    """Real training queries (``<datasets>/<name>/qrels/train.tsv``) if there are any, else pseudo queries.

    Pseudo queries are one per sampled document (its title, or a short span of
    its text) and their one relevant document is that source document.
    """
    if datasets is not None:
        folder = Path(datasets) / collection_name
        train = folder / "qrels" / "train.tsv"
        if train.is_file():
            qrels = read_qrels(train)
            queries = judged_queries(read_queries(folder / "queries.jsonl"), qrels)
            if queries:
                ids = list(queries)
                return JudgedQueries(collection_name, ids, [queries[q] for q in ids], qrels, "train qrels")
    rows = collection.docstore.all_row_ids().tolist()
    chosen = sorted(random.Random(seed).sample(rows, min(pseudo_sample, len(rows))))
    ids, texts, qrels = [], [], {}
    for number, doc in enumerate(collection.docstore.get(chosen)):
        if doc is None:
            continue
        made = pseudo_queries([(doc.title, doc.text)], seed=seed + number)
        if not made:
            continue
        query_id = f"pseudo-{number}"
        ids.append(query_id)
        texts.append(made[0])
        qrels[query_id] = {doc.id: 1}
    return JudgedQueries(collection_name, ids, texts, qrels, "pseudo queries")


def per_query_ndcg(
    qrels: Mapping[str, Mapping[str, int]], ids: Sequence[str], ranked: Sequence[Sequence[tuple[str, float]]]
) -> np.ndarray:
    """nDCG@10 of each query (ir-measures), (n,) in ``ids`` order; a query with no hits scores 0."""
    run = {qid: {doc: float(score) for doc, score in hits} for qid, hits in zip(ids, ranked, strict=True)}
    values = {m.query_id: m.value for m in ir_measures.iter_calc([nDCG @ WIN_DEPTH], qrels, run)}
    return np.array([values.get(qid, 0.0) for qid in ids], dtype=np.float64)


@dataclass
class PilotSelection:
    """Pilots per construction, with the evidence behind the paper's: who won which collection's queries."""

    experts: list[str]
    queries: dict[str, JudgedQueries]
    base: dict[str, np.ndarray]  # collection -> (n, d) base embeddings of its training queries
    scores: dict[str, np.ndarray] = field(default_factory=dict)  # collection -> (n, E) per-query nDCG@10
    pilots: dict[str, np.ndarray] = field(default_factory=dict)  # the paper's, {expert: (p, d)}
    wins: dict[str, dict[str, int]] = field(default_factory=dict)  # source collection -> {expert: queries won}
    dropped: dict[str, int] = field(default_factory=dict)  # source collection -> queries every expert tied on

    @property
    def source(self) -> str:
        parts = [f"{name}: {len(q.ids)} {q.origin}" for name, q in self.queries.items()]
        return "; ".join(parts)

    @property
    def without_pilots(self) -> list[str]:
        """Experts that won no query (they keep whatever pilots they had)."""
        return [name for name in self.experts if name not in self.pilots]


def collect_training_queries(
    engine: SearchEngine,
    datasets: Path | None,
    *,
    experts: Sequence[str] | None = None,
    pseudo_sample: int = 300,
    seed: int = 0,
) -> PilotSelection:
    """Every expert's training queries and their base embeddings (no expert runs yet)."""
    names = sorted(engine.experts) if experts is None else list(experts)
    loaded = engine.experts
    missing = [n for n in names if n not in loaded]
    if missing:
        raise KeyError(f"Experts {missing} are not loaded. Loaded experts: {sorted(loaded)}")
    queries = {
        n: training_queries(n, loaded[n].collection, datasets, pseudo_sample=pseudo_sample, seed=seed) for n in names
    }
    empty = [n for n, q in queries.items() if not q.ids]
    if empty:
        raise ValueError(f"no training queries for {empty}: their collections hold no usable documents")
    base = {n: engine.encoder.embed(q.texts, max_length=engine.query_max_length) for n, q in queries.items()}
    return PilotSelection(names, queries, base)


def select_paper_pilots(
    engine: SearchEngine,
    datasets: Path | None,
    *,
    experts: Sequence[str] | None = None,
    pseudo_sample: int = 300,
    seed: int = 0,
    selection: PilotSelection | None = None,
) -> PilotSelection:
    """Algorithm 1: run every expert on every collection's training queries, assign winners, average.

    Experts without a trained adapter embed like the base model: they share
    one pass and, being identical, tie with each other on every query.
    """
    selection = selection or collect_training_queries(
        engine, datasets, experts=experts, pseudo_sample=pseudo_sample, seed=seed
    )
    loaded = engine.experts
    for source, queries in selection.queries.items():
        collection = loaded[source].collection
        columns = []
        for name in selection.experts:
            adapter = loaded[name].adapter
            vectors = (
                selection.base[source]
                if adapter is None
                else engine.encoder.embed(queries.texts, expert=adapter, max_length=engine.query_max_length)
            )
            hits = collection.search(vectors, WIN_DEPTH)
            columns.append(per_query_ndcg(queries.qrels, queries.ids, [[(h.id, h.score) for h in row] for row in hits]))
        scores = np.stack(columns, axis=1)
        selection.scores[source] = scores
        winners = best_experts(scores)
        selection.wins[source] = {n: int(winners[:, i].sum()) for i, n in enumerate(selection.experts)}
        selection.dropped[source] = int((~winners.any(axis=1)).sum())
        logger.info(
            "paper pilots: %s wins %s, %d ties dropped", source, selection.wins[source], selection.dropped[source]
        )
    sources = [s for s in selection.queries for _ in selection.queries[s].ids]
    selection.pilots = assigned_pilots(
        np.concatenate([selection.base[s] for s in selection.queries]),
        np.concatenate([selection.scores[s] for s in selection.queries]),
        sources,
        selection.experts,
    )
    return selection


def simple_pilots(
    selection: PilotSelection, method: PilotMethod, *, clusters: int = 4, limit: int = QUERY_PILOTS
) -> dict[str, np.ndarray]:
    """The baselines: each expert's pilots from its own collection's training queries only."""
    if method == "centroid":
        return {n: centroid_pilots(selection.base[n]) for n in selection.experts}
    if method == "kmeans":
        return {n: kmeans_pilots(selection.base[n], clusters=clusters) for n in selection.experts}
    if method == "queries":
        return {n: query_pilots(selection.base[n], limit=limit) for n in selection.experts}
    raise ValueError(f"Invalid pilot method {method!r}. Valid methods are: {', '.join(PILOT_METHODS)}")


def publish_pilots(
    engine: SearchEngine, pilots: Mapping[str, np.ndarray], *, method: str, source: str
) -> dict[str, Manifest]:
    """Write each expert's pilots into its directory and publish them (one manifest swap each).

    The running engine is not changed: reopen it (or reload the experts) to route with them.
    """
    published = {}
    for name, matrix in sorted(pilots.items()):
        directory = engine.experts[name].directory
        file = directory.stage_pilots(np.asarray(matrix, dtype=np.float32))
        section = PilotsSection(file=file, count=len(matrix), method=method, source=source)
        published[name] = directory.publish(pilots=section)
    return published
