"""Which corpus evidence should the router add to its pilot scores? BM25 votes with each collection's IDF or one IDF.

Run by hand (not in CI), on a root holding one expert per shared collection
(expert name = collection folder name), e.g. the demo's::

    RR_DATA_DIR=data/experts python bench/routing_evidence.py --datasets ../shared/datasets --split dev
    RR_DATA_DIR=data/experts python bench/routing_evidence.py --datasets ../shared/datasets --split test

The router adds corpus votes to its pilot scores: each expert's share of the
``depth`` best documents over all experts' dense indexes (base vectors: one
scale) and over all BM25 indexes. BM25 scores are **not** on one scale across
collections: each index weighs a term by its own IDF, so a term common in the
right collection (``algorithm`` in cacm) weighs more in a collection where it
is rare (cisi), and that collection's documents outrank the right ones. The
classic remedy of federated search (CORI, ReDDE use collection-wide statistics)
is one IDF for every collection: ``global-idf`` rescales each index's stored
term scores by ``idf_all(t) / idf_own(t)``, with the document frequencies
summed over every collection.

Evidence compared (``P``: pilot scores; ``D``: dense votes; ``L``: BM25 votes,
own IDF; ``G``: BM25 votes, one IDF, today's; ``C``: a softmax classifier on the
pilots; ``T``: term votes, each collection's document frequencies as a unigram
model smoothed towards all collections' (Dirichlet, 1000), a query scored by
the mean log ratio of its words, softmax x 5): routing accuracy per
collection (the share of queries whose top expert is their own collection),
macro and micro averages. ``--split dev``: pseudo queries of documents outside
the pilots' sample (bench/merge_tuning.py); ``dev-real``: scifact's train
queries; ``test``: the test queries (report only: nothing is chosen on them).

Term votes (2026-12-05, top-2-layer experts) were the best single kind on dev
(92.3% macro) and lifted P+D+G from 93.9% to 94.7% there (test: 92.0% to
93.1%); but with the deployed fan-out and score merge (``bench/merge_tuning.py``
with them added) nDCG@10 did not move on dev (.916 against .917 macro) nor on
scifact's train queries (.762 against .761), so they are not in the service.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.merge_tuning import split_arguments, split_collections, split_queries  # noqa: E402
from router import document_votes  # noqa: E402


def idf(n: float, df: np.ndarray) -> np.ndarray:
    """Lucene's BM25 IDF (bm25s' default method)."""
    return np.log(1.0 + (n - df + 0.5) / (df + 0.5))


class GlobalIdfLexical:
    """Every expert's BM25 index scored with one IDF over all of them (document frequencies summed)."""

    def __init__(self, engine: SearchEngine, names: list[str]) -> None:
        self.parts = []
        total_docs, df_all = 0, {}
        for name in names:
            lexical = engine.experts[name].collection.lexical
            retriever = lexical._retriever
            scores = retriever.scores
            indptr = np.asarray(scores["indptr"])
            df = np.diff(indptr)
            vocab = retriever.vocab_dict
            n_docs = int(scores["num_docs"])
            total_docs += n_docs
            for token, column in vocab.items():
                if column < len(df):
                    df_all[token] = df_all.get(token, 0) + int(df[column])
            self.parts.append(
                (name, lexical, vocab, indptr, np.asarray(scores["indices"]), np.asarray(scores["data"]), df, n_docs)
            )
        self.total_docs, self.df_all = total_docs, df_all

    def top(self, text: str, depth: int) -> list[np.ndarray]:
        """Per expert, its ``depth`` best one-IDF BM25 scores for ``text`` (padded with -inf)."""
        out = []
        for _, lexical, vocab, indptr, indices, data, df, n_docs in self.parts:
            terms = lexical._analyzer(text)
            scores = np.zeros(n_docs, dtype=np.float64)
            for term in terms:
                column = vocab.get(term)
                if column is None or column >= len(df) or df[column] == 0:
                    continue
                own = math.log(1.0 + (n_docs - df[column] + 0.5) / (df[column] + 0.5))
                shared = math.log(1.0 + (self.total_docs - self.df_all[term] + 0.5) / (self.df_all[term] + 0.5))
                start, end = indptr[column], indptr[column + 1]
                scores[indices[start:end]] += data[start:end] * (shared / own)
            best = np.sort(scores[scores > 0])[::-1][:depth]
            out.append(np.concatenate([best, np.full(depth - len(best), -np.inf)]))
        return out


class TermVotes:
    """Each collection's share of a query by its words: document frequencies as a smoothed unigram model."""

    def __init__(self, engine: SearchEngine, names: list[str], *, smoothing: float = 1000.0) -> None:
        stats = [engine.experts[name].collection.lexical.document_frequencies()[1] for name in names]
        self.analyse = engine.experts[names[0]].collection.lexical._analyzer
        vocab = sorted(set().union(*stats))
        self.column = {term: i for i, term in enumerate(vocab)}
        counts = np.zeros((len(names), len(vocab)))
        for e, frequencies in enumerate(stats):
            for term, count in frequencies.items():
                counts[e, self.column[term]] = count
        pooled = counts.sum(axis=0) / counts.sum()
        own = (counts + smoothing * pooled) / (counts.sum(axis=1, keepdims=True) + smoothing)
        self.log_ratio = np.log(own) - np.log(pooled)

    def __call__(self, texts: list[str], temperature: float = 5.0) -> np.ndarray:
        scores = []
        for text in texts:
            columns = [self.column[t] for t in self.analyse(text) if t in self.column]
            scores.append(self.log_ratio[:, columns].mean(axis=1) if columns else np.zeros(len(self.log_ratio)))
        weights = np.exp(temperature * (np.array(scores) - np.max(scores, axis=1, keepdims=True)))
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def softmax_router(
    engine: SearchEngine, names: list[str], *, l2: float = 1e-3, steps: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """A multinomial logistic regression on the pilots (class-balanced), by full-batch gradient descent: (W, b)."""
    router = engine.router
    x = np.concatenate([router.pilots(name) for name in names]).astype(np.float64)
    y = np.concatenate([np.full(len(router.pilots(name)), e) for e, name in enumerate(names)])
    weight = (len(y) / (len(names) * np.bincount(y)))[y]
    onehot = np.eye(len(names))[y]
    w, b = np.zeros((x.shape[1], len(names))), np.zeros(len(names))
    m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
    for step in range(1, steps + 1):
        logits = x @ w + b
        logits -= logits.max(axis=1, keepdims=True)
        prob = np.exp(logits)
        prob /= prob.sum(axis=1, keepdims=True)
        grad = (prob - onehot) * weight[:, None] / len(y)
        g_w, g_b = x.T @ grad + l2 * w, grad.sum(axis=0)
        for param, g, m, v in ((w, g_w, m_w, v_w), (b, g_b, m_b, v_b)):
            m[...] = 0.9 * m + 0.1 * g
            v[...] = 0.999 * v + 0.001 * g * g
            param -= 0.1 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return w, b


def components(engine: SearchEngine, names: list[str], texts: list[str], depth: int, glob: GlobalIdfLexical):
    base = engine.encoder.embed(texts, max_length=engine.query_max_length)
    router = engine.router
    order = [names.index(name) for name in router.experts]
    pilots = router.scores(base)[:, np.argsort(order)]
    views = [engine.experts[name].view() for name in names]
    dense = document_votes([view.search_dense(base, depth)[0] for view in views], depth=depth)
    lexical = document_votes([view.search_lexical(texts, depth)[0] for view in views], depth=depth)
    shared = np.stack(
        [document_votes([row[None, :] for row in glob.top(text, depth)], depth=depth)[0] for text in texts]
    )
    w, b = SOFTMAX
    logits = base.astype(np.float64) @ w + b
    logits -= logits.max(axis=1, keepdims=True)
    classifier = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    terms = TERMS(texts)
    return {"P": pilots, "C": classifier.astype(np.float32), "D": dense, "L": lexical, "G": shared, "T": terms}


SOFTMAX: tuple[np.ndarray, np.ndarray]
TERMS: TermVotes
COMBOS = (
    *("P", "C", "D", "L", "G", "T", "P+D", "P+D+L", "P+D+G", "D+G", "P+G", "C+D", "C+D+L", "C+D+G", "C+G"),
    *("C+P+D+G", "P+D+G+T", "D+G+T", "P+T"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    split_arguments(parser)
    args = parser.parse_args()
    settings = Settings()
    engine = SearchEngine.open(settings.data_dir, open_encoder(settings), settings.engine_config())
    names = sorted(engine.experts)
    depth = engine.vote_depth
    glob = GlobalIdfLexical(engine, names)
    global SOFTMAX, TERMS
    SOFTMAX = softmax_router(engine, names)
    TERMS = TermVotes(engine, names)
    started = time.perf_counter()
    accuracy: dict[str, dict[str, float]] = {combo: {} for combo in COMBOS}
    counts = {}
    collections = split_collections(args)
    for name in collections:
        texts = split_queries(engine, name, args).texts
        parts = components(engine, names, list(texts), depth, glob)
        if args.split == "dev-real":  # scifact's train queries are its pilots: take each one's own vote off
            parts["P"][:, names.index(name)] -= 1.0 / engine.router.neighbours
        counts[name] = len(texts)
        for combo in COMBOS:
            total = sum(parts[key] for key in combo.split("+"))
            accuracy[combo][name] = float(np.mean(np.argmax(total, axis=1) == names.index(name)))
    n = sum(counts.values())
    print(f"\n{args.split}: routing accuracy, vote depth {depth} ({time.perf_counter() - started:.0f}s)")
    print(f"{'evidence':<10}" + "".join(f"{c:>10}" for c in collections) + f"{'macro':>9}{'micro':>9}")
    for combo in COMBOS:
        row = [accuracy[combo][c] for c in collections]
        micro = sum(accuracy[combo][c] * counts[c] for c in collections) / n
        print(f"{combo:<10}" + "".join(f"{v:>10.1%}" for v in row) + f"{np.mean(row):>9.1%}{micro:>9.1%}")


if __name__ == "__main__":
    main()
