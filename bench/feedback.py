"""Does pseudo-relevance feedback pay inside an expert's collection? (issue 17)

Run by hand (not in CI), on a root that holds one expert per shared collection::

    RR_DATA_DIR=data/experts python bench/feedback.py --datasets ../shared/datasets --split dev-real
    RR_DATA_DIR=data/experts python bench/feedback.py --datasets ../shared/datasets --split dev

Every query is searched in its own collection (oracle routing) with the
collection's expert and its own hybrid fusion, as ``hybrid-oracle`` in
``rr eval``. Then, **dense Rocchio feedback** (``rocchio-M-B``): the query's
expert vector moves towards the mean vector of its ``M`` best fused hits,
``q' = normalise(q + B * mean)``; the dense side is searched again with
``q'`` and fused with the same BM25 list. The documents' vectors are the
ones the index holds (a chunked document's first chunk). No model pass is
added: feedback costs one more dense search.

**Lexical feedback** (``rm3-M-T-L``, after RM3): the ``T`` stems most
probable in the ``M`` best fused hits (each hit's term frequencies over its
length, weighed by its share of their fused scores), the query's own left
out, are searched by BM25 as a second query; a document's lexical score is
its BM25 for the query plus ``L`` times its BM25 for those stems (BM25 adds
up over terms, so this is the query with the new stems weighed ``L``), and
that list is fused with the dense one. ``both-M-B-T-L``: both at once.

``--split dev-real`` (scifact's labelled train queries) is the real-query
check; ``--split dev`` (pseudo queries of held-out documents, each one's
source the only relevant document) favours any step that pulls the query
towards the documents it already found. ``--split test`` reports the test
qrels for the settings ``--grid`` names (the ones dev chose). nDCG@10 and
R@100 from ir-measures; macro and micro averages.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.engine.retrieval import expert_retrieval  # noqa: E402
from app.offline.evaluation import score_run  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.merge_tuning import print_table, split_arguments, split_collections, split_queries  # noqa: E402
from index import fuse_dense_lexical  # noqa: E402

K = 100


def rocchio(queries: np.ndarray, top_rows: np.ndarray, vectors: dict[int, np.ndarray], beta: float) -> np.ndarray:
    """Each query moved towards the mean of its feedback documents' vectors, unit length again."""
    moved = queries.astype(np.float32).copy()
    for i, rows in enumerate(top_rows):
        found = [vectors[int(r)] for r in rows if r >= 0 and int(r) in vectors]
        if found:
            moved[i] += beta * np.mean(found, axis=0)
    return moved / np.linalg.norm(moved, axis=1, keepdims=True)


def expansion(analyzer, query: str, documents, weights: np.ndarray, terms: int) -> str:
    """The ``terms`` stems most probable in the feedback documents, weighed by ``weights``; the query's own left out."""
    own = set(analyzer(query))
    mass: dict[str, float] = {}
    for document, weight in zip(documents, weights, strict=True):
        stems = analyzer(f"{document.title} {document.text}")
        for stem in stems:
            if stem not in own:
                mass[stem] = mass.get(stem, 0.0) + weight / len(stems)
    return " ".join(sorted(mass, key=lambda stem: -mass[stem])[:terms])


def expanded_lexical(view, collection, texts, fused, m: int, terms: int, weight: float, depth: int):
    """BM25 of each query plus ``weight`` x BM25 of its expansion stems, as a (scores, ids) list of ``depth``."""
    analyzer = collection.lexical._analyzer
    expansions = []
    for i, text in enumerate(texts):
        rows = [int(r) for r in fused.ids[i, :m] if r >= 0]
        shares = np.clip(fused.scores[i, : len(rows)].astype(np.float64), 1e-9, None)
        documents = [d for d in collection.docstore.get(rows) if d is not None]
        expansions.append(expansion(analyzer, text, documents, shares[: len(documents)] / shares.sum(), terms))
    first = view.search_lexical(texts, depth)
    second = view.search_lexical([e or t for e, t in zip(expansions, texts, strict=True)], depth)
    scores = np.full(first[0].shape, -np.inf, dtype=np.float32)
    ids = np.full(first[1].shape, -1, dtype=np.int64)
    for i in range(len(texts)):
        total: dict[int, float] = {}
        for (found_scores, found_ids), share in ((first, 1.0), (second, weight if expansions[i] else 0.0)):
            for row, score in zip(found_ids[i].tolist(), found_scores[i].tolist()):
                if row >= 0 and np.isfinite(score):
                    total[row] = total.get(row, 0.0) + share * score
        best = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:depth]
        for column, (row, score) in enumerate(best):
            ids[i, column], scores[i, column] = row, score
    return scores, ids


def fused_run(view, retrieval, ids, dense, lexical):
    """The run (query id -> document id -> score) of the fused lists, and the fused arrays."""
    fused = fuse_dense_lexical(dense, lexical, k=K, method=retrieval.fusion, weight=retrieval.weight)
    hits = view.hits(fused.scores, fused.ids)
    return {q: {h.id: float(h.score) for h in row} for q, row in zip(ids, hits, strict=True)}, fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(parser)
    parser.add_argument(
        "--grid",
        default="rocchio-3-0.5,rocchio-5-0.5,rocchio-5-1.0,rocchio-10-0.5,rm3-5-10-0.3,rm3-10-10-0.3,rm3-10-20-0.5,both-5-0.5-10-0.3",
        help="Comma-separated settings rocchio-M-B, rm3-M-T-L, both-M-B-T-L (no feedback is always measured).",
    )
    args = parser.parse_args()
    settings = Settings()
    engine = SearchEngine.open(settings.data_dir, open_encoder(settings), settings.engine_config())
    started = time.perf_counter()
    settings_grid = ["none"] + [g for g in args.grid.split(",") if g]
    table: dict[str, dict[str, dict[str, float]]] = {s: {} for s in settings_grid}
    counts: dict[str, int] = {}
    collections = split_collections(args)
    for name in collections:
        queries = split_queries(engine, name, args)
        texts = list(queries.texts)
        qrels = {q: dict(docs) for q, docs in queries.qrels.items()}
        expert = engine.experts[name]
        retrieval = replace(expert_retrieval(engine.retrieval, expert.manifest.retrieval), mode="hybrid")
        view = expert.view()
        rows, matrix = expert.collection.vectors()
        vectors = dict(zip(rows.tolist(), matrix))
        query_vectors = engine.encoder.embed(texts, expert=expert.adapter, max_length=engine.query_max_length)
        depth = retrieval.depth(K)
        lexical = view.search_lexical(texts, depth)
        dense = view.search_dense(query_vectors, depth)

        base_run, base = fused_run(view, retrieval, queries.ids, dense, lexical)
        table["none"][name] = score_run(qrels, base_run)
        for setting in settings_grid[1:]:
            kind, m, *rest = setting.split("-")
            new_dense, new_lexical = dense, lexical
            if kind in ("rocchio", "both"):
                moved = rocchio(query_vectors, base.ids[:, : int(m)], vectors, float(rest[0]))
                new_dense = view.search_dense(moved, depth)
            if kind in ("rm3", "both"):
                terms, weight = rest[-2:]
                new_lexical = expanded_lexical(
                    view, expert.collection, texts, base, int(m), int(terms), float(weight), depth
                )
            table[setting][name] = score_run(qrels, fused_run(view, retrieval, queries.ids, new_dense, new_lexical)[0])
        counts[name] = len(queries.ids)
        print(f"{name}: {len(queries.ids)} {queries.origin}", flush=True)
    title = f"{args.split}: nDCG@10 per collection, macro and micro, R@100 macro"
    print_table(
        f"{title} ({time.perf_counter() - started:.0f}s)", "feedback", settings_grid, table, collections, counts
    )


if __name__ == "__main__":
    main()
