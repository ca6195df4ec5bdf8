"""Which routing rule sends test queries to their own collection most often?

Run by hand (not in CI), on a root that holds one expert per shared collection
(expert name = collection folder name)::

    RR_DATA_DIR=/tmp/trained python bench/routing_rules.py --datasets ../shared/datasets

Every rule sees only the base encoder's query vector and what the experts hold
(pilots built from *training* queries: scifact's train qrels, else pseudo
queries of the collection's own documents; the base document vectors of each
expert's index). Test queries never shape a pilot. Signals, each an (n, E)
score matrix:

- ``centroid``, ``kmeans-K``: nearest pilot (cosine);
- ``knn-K``: share of the K nearest training queries that belong to each expert;
- ``docs-M``: share of the M best documents over every expert's index (one
  search per index with the base vector, merged by score): federated search's
  collection-selection vote, with no extra model pass;

and sums of a pilot signal and a vote, with the weight swept so the curve
shows how sensitive the choice is. Prints accuracy overall and per collection.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.offline.evaluation import lexical_union_index, read_test_set  # noqa: E402
from app.offline.pilot_selection import collect_training_queries  # noqa: E402
from app.settings import Settings  # noqa: E402
from experts import Encoder  # noqa: E402
from router import Router, centroid_pilots, document_votes, kmeans_pilots  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")


def vote_shares(neighbour_owner: np.ndarray, experts: int) -> np.ndarray:
    """(n, M) expert index of each neighbour (-1: none found) -> (n, E) each expert's share of the neighbours found."""
    found = neighbour_owner >= 0
    shares = np.zeros((len(neighbour_owner), experts), dtype=np.float32)
    rows = np.repeat(np.arange(len(neighbour_owner)), neighbour_owner.shape[1]).reshape(neighbour_owner.shape)
    np.add.at(shares, (rows[found], neighbour_owner[found]), 1.0)
    return shares / np.maximum(found.sum(axis=1, keepdims=True), 1)


def top_owners(similarity: np.ndarray, owners: np.ndarray, m: int) -> np.ndarray:
    """Owners of the m most similar rows of each query: (n, N) similarity -> (n, m)."""
    top = np.argpartition(-similarity, m, axis=1)[:, :m]
    return owners[top]


def accuracy(scores: np.ndarray, truth: np.ndarray, names: list[str]) -> tuple[float, dict[str, float]]:
    chosen = np.argmax(scores, axis=1)
    per = {n: float((chosen[truth == i] == i).mean()) for i, n in enumerate(names)}
    return float((chosen == truth).mean()), per


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--pseudo-sample", type=int, default=1000)
    args = parser.parse_args()
    started = time.perf_counter()
    settings = Settings()
    engine = SearchEngine.open(
        settings.data_dir, Encoder(settings.base_model), query_max_length=settings.query_max_length
    )
    names = [c for c in COLLECTIONS if c in engine.experts]
    tests = {c: read_test_set(args.datasets, c) for c in names}
    queries = np.concatenate([engine.encoder.embed(tests[c].texts, max_length=engine.query_max_length) for c in names])
    truth = np.concatenate([np.full(len(tests[c].ids), i) for i, c in enumerate(names)])
    selection = collect_training_queries(engine, args.datasets, experts=names, pseudo_sample=args.pseudo_sample)
    training = np.concatenate([selection.base[c] for c in names])
    training_owner = np.concatenate([np.full(len(selection.base[c]), i) for i, c in enumerate(names)])
    documents, document_owner = [], []
    for i, c in enumerate(names):
        _, vectors = engine.experts[c].collection.vectors()
        documents.append(vectors)
        document_owner.append(np.full(len(vectors), i))
    document_matrix, document_owner_all = np.concatenate(documents), np.concatenate(document_owner)
    print(f"{len(truth)} test queries; training queries: {selection.source}; {len(document_matrix)} documents")

    def pilot_scores(pilots: dict[str, np.ndarray]) -> np.ndarray:
        router = Router(pilots)  # columns in the router's (sorted) order: put them in ``names`` order
        return router.scores(queries)[:, [router.experts.index(c) for c in names]]

    signals: dict[str, np.ndarray] = {}
    signals["centroid"] = pilot_scores({c: centroid_pilots(selection.base[c]) for c in names})
    for clusters in (4, 8, 16):
        signals[f"kmeans-{clusters}"] = pilot_scores(
            {c: kmeans_pilots(selection.base[c], clusters=clusters) for c in names}
        )
    query_training = queries @ training.T
    for m in (5, 10, 20):
        signals[f"knn-{m}"] = vote_shares(top_owners(query_training, training_owner, m), len(names))
    query_documents = queries @ document_matrix.T
    for m in (10, 20, 50):
        signals[f"docs-{m}"] = vote_shares(top_owners(query_documents, document_owner_all, m), len(names))
    if all(engine.experts[c].collection.has_lexical for c in names):
        lexical, keys = lexical_union_index(engine, names)
        key_owner = np.array([names.index(key.split("/", 1)[0]) for key in keys])
        texts = [text for c in names for text in tests[c].texts]
        for m in (10, 20, 50):
            _, rows = lexical.search(texts, m)
            owners = np.where(rows >= 0, key_owner[np.maximum(rows, 0)], -1)
            signals[f"bm25-{m}"] = vote_shares(owners, len(names))
        # What a server holds: one BM25 index per expert, each with its own idf; the service's own vote.
        per_expert = [engine.experts[c].collection.search_lexical(texts, 20)[0] for c in names]
        signals["bm25sep-20"] = document_votes(per_expert, depth=20)

    def show(label: str, scores: np.ndarray) -> None:
        overall, per = accuracy(scores, truth, names)
        print(f"{label:32s} {overall:6.1%}  " + "  ".join(f"{n} {v:5.1%}" for n, v in per.items()))

    for label, scores in signals.items():
        show(label, scores)
    for pilot in ("centroid", "kmeans-8"):
        for vote in ("knn-10", "docs-20"):
            for weight in (0.1, 0.2, 0.3, 0.5, 1.0):
                show(f"{pilot} + {weight} x {vote}", signals[pilot] + weight * signals[vote])
    if "bm25-20" in signals:
        for vote in ("knn-5", "knn-10"):
            for w_docs, w_bm25 in ((0.5, 0.5), (1.0, 1.0), (0.0, 0.5), (0.0, 1.0), (0.5, 1.0), (0.3, 0.3)):
                show(
                    f"{vote} + {w_docs} docs-20 + {w_bm25} bm25-20",
                    signals[vote] + w_docs * signals["docs-20"] + w_bm25 * signals["bm25-20"],
                )
        show("docs-20 + bm25-20", signals["docs-20"] + signals["bm25-20"])
        show("bm25sep-20", signals["bm25sep-20"])
        show("knn-5 + docs-20", signals["knn-5"] + signals["docs-20"])
        show("knn-5 + 0.5 docs-20", signals["knn-5"] + 0.5 * signals["docs-20"])
        show("knn-5 + docs-20 + bm25sep-20", signals["knn-5"] + signals["docs-20"] + signals["bm25sep-20"])
        show("knn-5 + bm25sep-20", signals["knn-5"] + signals["bm25sep-20"])
        show("knn-5 + docs-20 + bm25-20 (equal)", signals["knn-5"] + signals["docs-20"] + signals["bm25-20"])
    for weight in (0.5, 1.0):
        show(f"knn-10 + {weight} x docs-20", signals["knn-10"] + weight * signals["docs-20"])
        show(
            f"kmeans-8 + .3 knn-10 + {weight * 0.3:.2f} docs-20",
            signals["kmeans-8"] + 0.3 * signals["knn-10"] + weight * 0.3 * signals["docs-20"],
        )
    print(f"{time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
