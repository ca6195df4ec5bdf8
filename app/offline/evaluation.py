"""``rr eval``: retrieval quality and routing accuracy on the collections' *test* queries.

Systems compared, each scored with ir-measures (nDCG@10, Recall@100) per
collection, as a macro average (mean over collections) and as a micro average
(mean over every judged query, each collection weighted by its queries):

- ``base``: the base encoder's query vector on the query's own collection
  (the oracle-collection baseline); ``base-union``: the base encoder over one
  index of every collection's documents (what a user without routing runs);
- ``bm25`` / ``bm25-union``: the same with BM25, what most users run today;
- ``hybrid-base``: base vector + BM25 fused, own collection; ``hybrid-union``:
  the same over one union index per side (base-encoder dense search over every
  collection's documents, each document's best chunk, fused with BM25 over one
  index of them all, by the engine's default fusion): what any vector database
  with hybrid search gives a user, the baseline routing has to beat;
- ``oracle`` / ``hybrid-oracle``: the collection's own expert on its own
  collection, dense / fused with BM25 (perfect routing);
- ``routed`` / ``routed-hybrid``: the deployed system, ``SearchEngine.search``
  with the engine's routing policy (``RR_ROUTE_*``: which experts a query is
  searched in, how their lists merge), dense / hybrid inside the chosen experts;
  ``routed-hybrid-top1``: hybrid, the top expert only (what the merge adds);
- ``routed-fanout`` (with ``fanout_margin``): routed dense, but a query whose
  top-1/top-2 margin is below the margin searches both experts, fused by RRF.

The lexical systems need every expert to have a BM25 index.
Plus routing accuracy and the confusion matrix of the deployed router, and a
comparison of pilot constructions (centroid, k-means, the queries themselves,
the paper's) under each aggregate (nearest pilot, mean, kNN vote), built in memory from
training queries only. Every hit is keyed ``collection/doc-id``, so another
collection's document is simply non-relevant (ids repeat across collections).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import ir_measures
import numpy as np
from ir_measures import R, nDCG

from app.engine.engine import SearchEngine
from app.engine.retrieval import Retrieval, RetrievalOptions, expert_retrieval, search_collection
from app.offline.pilot_selection import (
    PILOT_CONSTRUCTIONS,
    JudgedQueries,
    PilotConstruction,
    collect_training_queries,
    select_paper_pilots,
    simple_pilots,
)
from experts.labelled import judged_queries, read_qrels, read_queries
from index import ChunkedDense, DenseIndex, LexicalIndex, fuse_dense_lexical
from router import AGGREGATES, RouteDecision, RoutePolicy, Router

logger = logging.getLogger(__name__)

MEASURES = (nDCG @ 10, R @ 100)
METRIC_NAMES = {nDCG @ 10: "nDCG@10", R @ 100: "R@100"}
SYSTEMS = (
    "bm25", "bm25-union", "base", "base-union", "hybrid-base", "hybrid-union", "oracle", "hybrid-oracle",
    "routed", "routed-fanout", "routed-hybrid-top1", "routed-hybrid",
)  # fmt: skip
SYSTEM_TITLES = {
    "bm25": "BM25, own collection",
    "bm25-union": "BM25, union index of all collections",
    "base": "base encoder, own collection (oracle collection)",
    "base-union": "base encoder, union index of all collections",
    "hybrid-base": "base encoder + BM25 fused, own collection",
    "hybrid-union": "base encoder + BM25 fused, union indexes of all collections",
    "oracle": "expert on its own collection (oracle routing)",
    "hybrid-oracle": "expert + BM25 fused, own collection (oracle routing)",
    "routed": "routed system (the deployed routing policy), dense",
    "routed-fanout": "routed, top-2 experts fused by RRF when the router's margin is small",
    "routed-hybrid-top1": "routed, hybrid search in the top expert only",
    "routed-hybrid": "routed system (the deployed routing policy), hybrid search",
}
#: Systems that need every expert to have a BM25 index.
LEXICAL_SYSTEMS = frozenset(
    {"bm25", "bm25-union", "hybrid-base", "hybrid-union", "hybrid-oracle", "routed-hybrid-top1", "routed-hybrid"}
)
#: How :meth:`EvalReport.average` averages over collections: mean of the collections, or of every query.
AverageKind = Literal["macro", "micro"]
AVERAGE_KINDS: tuple[AverageKind, ...] = ("macro", "micro")
#: Queries per engine.search call: bounded memory for the hits of k=100.
_SEARCH_BATCH = 64


def read_test_set(datasets: Path, collection: str, *, split: str = "test") -> JudgedQueries:
    """``<datasets>/<collection>/qrels/<split>.tsv`` and the queries judged in it (relevance > 0)."""
    folder = Path(datasets) / collection
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    queries = judged_queries(read_queries(folder / "queries.jsonl"), qrels)
    ids = list(queries)
    return JudgedQueries(collection, ids, [queries[q] for q in ids], {q: qrels[q] for q in ids}, f"{split} qrels")


@dataclass
class EvalReport:
    """Everything ``rr eval`` measured; ``metrics[system][collection][metric]``; ``average`` is macro or micro."""

    collections: list[str]
    queries: dict[str, int]
    metrics: dict[str, dict[str, dict[str, float]]]
    #: (C, C + 1) test queries: rows = true collection, columns = routed expert; the last column counts those
    #: routed to an expert that is not one of the collections scored (one published beside them).
    confusion: np.ndarray
    routed_aggregate: str
    pilot_comparison: dict[str, dict[str, dict[str, float]]] = field(
        default_factory=dict
    )  # construction -> aggregate -> collection/all -> accuracy
    pilot_confusion: dict[str, dict[str, np.ndarray]] = field(
        default_factory=dict
    )  # construction -> aggregate -> (C, C + 1)
    pilot_notes: dict[str, str] = field(default_factory=dict)
    union_documents: int = 0
    seconds: float = 0.0
    settings: dict[str, object] = field(default_factory=dict)

    @property
    def systems(self) -> list[str]:
        """The systems scored, in ``SYSTEMS`` order (``routed-fanout`` only when asked for)."""
        return [s for s in SYSTEMS if s in self.metrics]

    def average(self, system: str, metric: str, kind: AverageKind = "macro") -> float:
        """``system``'s ``metric`` over the collections: ``macro`` (each collection counts once) or ``micro``.

        Macro is the BEIR convention and keeps a small collection from being
        drowned out; micro weights each collection by its judged queries, so
        it is the mean over every query: the figure a user sending all of them
        would see. Both are reported because they rank systems differently
        when one collection (scifact's 300 queries) outweighs the rest.
        """
        if kind not in AVERAGE_KINDS:
            raise ValueError(f"Invalid average kind {kind!r}. Valid kinds are: {', '.join(AVERAGE_KINDS)}")
        values = [self.metrics[system][c][metric] for c in self.collections]
        if kind == "macro":
            return float(np.mean(values))
        weights = [self.queries[c] for c in self.collections]
        # No judged query anywhere: every figure is 0 (score_run), and so is either mean.
        return float(np.average(values, weights=weights)) if sum(weights) else float(np.mean(values))

    @property
    def routing_accuracy(self) -> dict[str, float]:
        """Share of each collection's test queries routed to its own expert, and ``all`` (micro)."""
        return accuracy_of(self.confusion, self.collections)


def accuracy_of(confusion: np.ndarray, collections: Sequence[str]) -> dict[str, float]:
    """Per collection (row) the share on the diagonal, and ``all`` (micro); a (C, C + 1) matrix's last column (routed
    to another expert) counts in the totals, so a query sent to an expert outside the collections is a miss."""
    diagonal = np.diag(confusion)
    totals = confusion.sum(axis=1)
    accuracy = {c: float(diagonal[i] / max(totals[i], 1)) for i, c in enumerate(collections)}
    accuracy["all"] = float(diagonal.sum() / max(totals.sum(), 1))
    return accuracy


def _keyed_qrels(test: JudgedQueries) -> dict[str, dict[str, int]]:
    return {q: {f"{test.collection}/{doc}": rel for doc, rel in docs.items()} for q, docs in test.qrels.items()}


def score_run(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """nDCG@10 and Recall@100 averaged over every judged query (a query missing from the run scores 0)."""
    full_run = {q: dict(run.get(q, {})) for q in qrels}
    totals = {name: 0.0 for name in METRIC_NAMES.values()}
    for metric in ir_measures.iter_calc(list(MEASURES), qrels, full_run):
        totals[METRIC_NAMES[metric.measure]] += metric.value
    return {name: value / max(len(qrels), 1) for name, value in totals.items()}


def _run_of(test: JudgedQueries, collection: str, hits_per_query) -> dict[str, dict[str, float]]:
    return {
        q: {f"{collection}/{h.id}": float(h.score) for h in hits}
        for q, hits in zip(test.ids, hits_per_query, strict=True)
    }


def _union_run(
    test: JudgedQueries, scores: np.ndarray, rows: np.ndarray, keys: Sequence[str], *, limit: int | None = None
) -> dict[str, dict[str, float]]:
    """Per query, document key -> score; a document found through several chunks keeps its best (first) one."""
    run: dict[str, dict[str, float]] = {}
    for q, score_row, row in zip(test.ids, scores, rows, strict=True):
        found: dict[str, float] = {}
        for s, r in zip(score_row, row):
            if r >= 0 and np.isfinite(s) and keys[r] not in found and (limit is None or len(found) < limit):
                found[keys[r]] = float(s)
        run[q] = found
    return run


def _best_per_document(
    scores: np.ndarray, rows: np.ndarray, keys: Sequence[str], position: Mapping[str, int], *, limit: int
) -> tuple[np.ndarray, np.ndarray]:
    """(nq, m) chunk hits of a union search -> (nq, limit) scores and document positions, each document once.

    Rows arrive best first, so a document's first chunk is its best one (what
    a chunked collection's own search returns); -inf / -1 pad a short row.
    """
    out_scores = np.full((len(rows), limit), -np.inf, dtype=np.float32)
    out_ids = np.full((len(rows), limit), -1, dtype=np.int64)
    for i, (score_row, row) in enumerate(zip(scores, rows, strict=True)):
        seen: set[int] = set()
        for s, r in zip(score_row, row):
            if len(seen) == limit:
                break
            if r < 0 or not np.isfinite(s) or position[keys[r]] in seen:
                continue
            out_scores[i, len(seen)], out_ids[i, len(seen)] = s, position[keys[r]]
            seen.add(position[keys[r]])
    return out_scores, out_ids


def hybrid_union_run(
    test: JudgedQueries,
    dense: tuple[np.ndarray, np.ndarray],
    dense_keys: Sequence[str],
    lexical: tuple[np.ndarray, np.ndarray],
    lexical_keys: Sequence[str],
    *,
    k: int,
    retrieval: Retrieval,
) -> dict[str, dict[str, float]]:
    """Fuse a union dense search (chunk rows) with a union BM25 search (document rows) per query; top ``k``.

    Both sides are keyed by one document numbering (position in the union of
    both key lists), cut to ``retrieval.candidates`` documents each and fused
    by :func:`index.fuse_dense_lexical` with ``retrieval``'s method and weight,
    exactly as a hybrid search fuses inside one collection.
    """
    documents = list(dict.fromkeys([*lexical_keys, *dense_keys]))
    position = {key: i for i, key in enumerate(documents)}
    depth = retrieval.depth(k)
    dense_side = _best_per_document(*dense, dense_keys, position, limit=depth)
    lexical_side = _best_per_document(*lexical, lexical_keys, position, limit=depth)
    fused = fuse_dense_lexical(dense_side, lexical_side, k=k, method=retrieval.fusion, weight=retrieval.weight)
    return {
        q: {documents[r]: float(s) for s, r in zip(scores, ids) if r >= 0}
        for q, scores, ids in zip(test.ids, fused.scores, fused.ids, strict=True)
    }


def lexical_union_index(engine: SearchEngine, collections: Sequence[str]) -> tuple[LexicalIndex, list[str]]:
    """One BM25 index over every collection's documents (the first collection's analyzer); row i is ``keys[i]``."""
    keys: list[str] = []
    settings = engine.experts[collections[0]].collection.lexical.settings

    def chunks():
        for name in collections:
            docstore = engine.experts[name].collection.docstore
            docs = [doc for doc in docstore.get(docstore.all_row_ids().tolist()) if doc is not None]
            rows = np.arange(len(keys), len(keys) + len(docs), dtype=np.int64)
            keys.extend(f"{name}/{doc.id}" for doc in docs)
            yield rows, [doc.passage() for doc in docs]

    return LexicalIndex.build(chunks(), settings), keys


def union_index(engine: SearchEngine, collections: Sequence[str]) -> tuple[DenseIndex, list[str], int]:
    """One exact index of every collection's stored base vectors; row i is ``keys[i]`` (collection/doc-id).

    A collection that split long documents into chunks contributes every
    chunk (keyed by its document), as its own index searches them; the third
    value is the most chunks any document has, so a search can go deep
    enough to find ``k`` distinct documents.
    """
    union = DenseIndex.create(engine.encoder.dim)
    keys: list[str] = []
    most = 1
    for name in collections:
        collection = engine.experts[name].collection
        if collection.chunked:
            assert isinstance(collection.dense, ChunkedDense)  # what `chunked` means
            rows, vectors, _, _ = collection.dense.chunk_vectors()
            most = max(most, int(np.bincount(rows).max()) if len(rows) else 1)
        else:
            rows, vectors = collection.vectors()
        docs = collection.docstore.get(rows.tolist())
        keep = [i for i, doc in enumerate(docs) if doc is not None]
        union.add(vectors[keep], np.arange(len(keys), len(keys) + len(keep), dtype=np.int64))
        keys.extend(f"{name}/{doc.id}" for doc in docs if doc is not None)  # the `keep` rows, in order
    return union, keys, most


def evaluate(
    engine: SearchEngine,
    datasets: Path,
    collections: Sequence[str],
    *,
    k: int = 100,
    constructions: Sequence[PilotConstruction] = PILOT_CONSTRUCTIONS,
    pseudo_sample: int = 300,
    clusters: int = 4,
    seed: int = 0,
    routed_aggregate: str = "",
    fanout_margin: float | None = None,
    systems: Sequence[str] | None = None,
) -> EvalReport:
    """Score the systems of ``SYSTEMS``, the deployed router and the pilot constructions on the test queries.

    Expert names must equal the collections' folder names under ``datasets``.
    Scifact (and any collection with ``qrels/test.tsv``) is scored on its test
    split only; pilot comparisons train on train qrels or pseudo queries.
    ``routed_aggregate`` only labels the report (the engine's router has its own).
    With ``fanout_margin`` the ``routed-fanout`` system is scored too; the
    lexical systems only when every expert has a BM25 index. ``systems``: score
    only these (``rr demo``'s report: BM25, the union hybrid and routed hybrid);
    the routing confusion then comes from whichever routed system is scored.
    """
    unknown = sorted(set(systems or ()) - set(SYSTEMS))
    if unknown:
        raise ValueError(f"Unknown systems {unknown}. Valid systems are: {', '.join(SYSTEMS)}")
    started = time.perf_counter()
    collections = list(collections)
    missing = [c for c in collections if c not in engine.experts]
    if missing:
        raise KeyError(f"Collections {missing} have no loaded expert. Loaded experts: {sorted(engine.experts)}")
    if k < 100:
        raise ValueError(f"k must be >= 100 to score Recall@100, got {k}")
    tests = {c: read_test_set(datasets, c) for c in collections}
    encoder, max_length = engine.encoder, engine.query_max_length
    base_vectors = {c: encoder.embed(t.texts, max_length=max_length) for c, t in tests.items()}
    lexical = all(engine.experts[c].collection.has_lexical for c in collections)
    if not lexical:
        logger.warning("not every expert has a BM25 index: the lexical and hybrid systems are left out")
    wanted = set(SYSTEMS if systems is None else systems)
    to_score = [
        s for s in SYSTEMS
        if s in wanted and (s != "routed-fanout" or fanout_margin is not None) and (lexical or s not in LEXICAL_SYSTEMS)
    ]  # fmt: skip
    keys: list[str] = []  # the dense union's documents, when a system searches it
    if {"base-union", "hybrid-union"} & set(to_score):
        union, keys, most_chunks = union_index(engine, collections)
    if {"bm25-union", "hybrid-union"} & set(to_score):
        lexical_union, lexical_keys = lexical_union_index(engine, collections)
    dense, hybrid = Retrieval(mode="dense"), replace(engine.retrieval, mode="hybrid")
    routed_dense, routed_hybrid = RetrievalOptions(mode="dense"), RetrievalOptions(mode="hybrid")
    metrics: dict[str, dict[str, dict[str, float]]] = {system: {} for system in to_score}
    position = {c: i for i, c in enumerate(collections)}
    confusion = np.zeros((len(collections), len(collections) + 1), dtype=np.int64)  # + 1: another expert
    # Every routed system makes the same first choice (the router's); the confusion counts it once.
    decider = next(
        (s for s in ("routed", "routed-hybrid", "routed-hybrid-top1", "routed-fanout") if s in to_score), None
    )
    for name, test in tests.items():
        expert = engine.experts[name]
        qrels = _keyed_qrels(test)

        def own(vectors: np.ndarray, retrieval: Retrieval) -> dict[str, float]:  # called within this iteration only
            found = search_collection(expert.collection, test.texts, vectors, [(k, retrieval)] * len(test.texts))  # noqa: B023
            return score_run(qrels, _run_of(test, name, found))  # noqa: B023

        def routed(system: str, policy: RoutePolicy, retrieval: RetrievalOptions) -> None:  # this iteration only
            run, decisions = _routed_run(engine, test, k, policy, retrieval)  # noqa: B023
            metrics[system][name] = score_run(qrels, run)  # noqa: B023
            if system == decider:
                for decision in decisions:
                    # An expert outside the collections scored (one published beside them) is the last column.
                    confusion[position[name], position.get(decision.experts[0], len(position))] += 1  # noqa: B023

        if {"oracle", "hybrid-oracle"} & set(to_score):
            expert_vectors = (
                base_vectors[name]
                if expert.adapter is None
                else encoder.embed(test.texts, expert=expert.adapter, max_length=max_length)
            )
        if "base" in to_score:
            metrics["base"][name] = own(base_vectors[name], dense)
        if "base-union" in to_score:
            found = union.search(base_vectors[name], min(k * most_chunks, union.ntotal))
            metrics["base-union"][name] = score_run(qrels, _union_run(test, *found, keys, limit=k))
        if "oracle" in to_score:
            metrics["oracle"][name] = own(expert_vectors, dense)
        if "routed" in to_score:
            routed("routed", engine.policy, routed_dense)
        if "routed-fanout" in to_score:
            routed("routed-fanout", RoutePolicy(top_k=2, fanout_margin=fanout_margin, merge="rrf"), routed_dense)
        if "bm25" in to_score:
            metrics["bm25"][name] = own(base_vectors[name], Retrieval(mode="lexical"))
        if "bm25-union" in to_score:
            found = lexical_union.search(test.texts, k)
            metrics["bm25-union"][name] = score_run(qrels, _union_run(test, *found, lexical_keys))
        if "hybrid-base" in to_score:
            metrics["hybrid-base"][name] = own(base_vectors[name], hybrid)
        if "hybrid-union" in to_score:
            depth = hybrid.depth(k)
            dense_found = union.search(base_vectors[name], min(depth * most_chunks, union.ntotal))
            lexical_found = lexical_union.search(test.texts, depth)
            fused = hybrid_union_run(test, dense_found, keys, lexical_found, lexical_keys, k=k, retrieval=hybrid)
            metrics["hybrid-union"][name] = score_run(qrels, fused)
        if "hybrid-oracle" in to_score:
            # The expert's own fusion (its manifest's tuned weight) on the expert's side; the settings' on the base's.
            tuned = replace(expert_retrieval(engine.retrieval, expert.manifest.retrieval), mode="hybrid")
            metrics["hybrid-oracle"][name] = own(expert_vectors, tuned)
        if "routed-hybrid-top1" in to_score:
            routed("routed-hybrid-top1", RoutePolicy(), routed_hybrid)
        if "routed-hybrid" in to_score:
            routed("routed-hybrid", engine.policy, routed_hybrid)
        logger.info("eval %s: %s", name, {s: metrics[s][name] for s in to_score})
    report = EvalReport(
        collections=collections,
        queries={c: len(t.ids) for c, t in tests.items()},
        metrics=metrics,
        confusion=confusion,
        routed_aggregate=routed_aggregate,
        union_documents=len(keys),
        settings={
            "k": k,
            "pseudo_sample": pseudo_sample,
            "clusters": clusters,
            "seed": seed,
            "datasets": str(datasets),
            "fanout_margin": fanout_margin,
            "router_neighbours": engine.router.neighbours,
            "route_policy": {
                "top_k": engine.policy.top_k,
                "fanout_margin": engine.policy.fanout_margin,
                "merge": engine.policy.merge,
                "gap_weight": engine.policy.gap_weight,
            },
            "router_evidence": engine.evidence,
            "router_vote_depth": engine.vote_depth,
            "router_vote_rule": engine.vote_rule,
        },  # fmt: skip
    )
    if constructions:
        compare_pilots(engine, datasets, tests, base_vectors, report, constructions=constructions,
                       pseudo_sample=pseudo_sample, clusters=clusters, seed=seed)  # fmt: skip
    report.seconds = time.perf_counter() - started
    return report


def _routed_run(
    engine: SearchEngine, test: JudgedQueries, k: int, policy: RoutePolicy, retrieval: RetrievalOptions
) -> tuple[dict[str, dict[str, float]], list[RouteDecision]]:
    """The deployed router's run over one collection's test queries, and its decisions."""
    run: dict[str, dict[str, float]] = {}
    decisions: list[RouteDecision] = []
    for start in range(0, len(test.texts), _SEARCH_BATCH):
        batch = engine.search(test.texts[start : start + _SEARCH_BATCH], k=k, policy=policy, retrieval=retrieval)
        for qid, result in zip(test.ids[start : start + _SEARCH_BATCH], batch.results, strict=True):
            run[qid] = {f"{h.expert}/{h.id}": float(h.score) for h in result.hits}
            decisions.append(result.decision)
    return run, decisions


def routing_confusion(router: Router, collections: Sequence[str], base_vectors: Mapping[str, np.ndarray]) -> np.ndarray:
    """(C, C + 1) test queries: rows = true collection, columns = the router's top-1 expert (``collections`` order,
    then any other expert)."""
    column = {name: collections.index(name) for name in router.experts if name in collections}
    confusion = np.zeros((len(collections), len(collections) + 1), dtype=np.int64)
    for row, name in enumerate(collections):
        for chosen in np.argmax(router.scores(base_vectors[name]), axis=1):
            confusion[row, column.get(router.experts[chosen], len(collections))] += 1
    return confusion


def compare_pilots(
    engine: SearchEngine,
    datasets: Path,
    tests: Mapping[str, JudgedQueries],
    base_vectors: Mapping[str, np.ndarray],
    report: EvalReport,
    *,
    constructions: Sequence[PilotConstruction],
    pseudo_sample: int,
    clusters: int,
    seed: int,
) -> None:
    """Routing accuracy per pilot construction x aggregate, pilots built in memory from training queries only."""
    selection = collect_training_queries(
        engine, datasets, experts=report.collections, pseudo_sample=pseudo_sample, seed=seed
    )
    report.pilot_notes["training queries"] = selection.source
    for construction in constructions:
        if construction == "paper":
            select_paper_pilots(engine, datasets, selection=selection)
            pilots = selection.pilots
            dropped = sum(selection.dropped.values())
            report.pilot_notes["paper"] = (
                f"{sum(len(p) for p in pilots.values())} pilots; {dropped} training queries dropped as ties; "
                f"experts without pilots: {selection.without_pilots or 'none'}"
            )
            if selection.without_pilots:
                # An expert that won nothing cannot be routed to; say so rather than inventing a pilot.
                report.pilot_notes["paper"] += " (never routed to)"
            if not pilots:
                report.pilot_notes["paper"] = (
                    f"not applicable: every expert tied on all {sum(len(q.ids) for q in selection.queries.values())} "
                    "training queries (untrained adapters are identical to the base model)"
                )
                continue
        else:
            pilots = simple_pilots(selection, construction, clusters=clusters)
        for aggregate in AGGREGATES:
            router = Router(pilots, aggregate=aggregate, neighbours=engine.router.neighbours)
            confusion = routing_confusion(router, report.collections, base_vectors)
            report.pilot_comparison.setdefault(construction, {})[aggregate] = accuracy_of(confusion, report.collections)
            report.pilot_confusion.setdefault(construction, {})[aggregate] = confusion
