"""What does a metadata filter cost a dense search? Latency with filters matching 1% and 50%, against unfiltered.

Run by hand (not in CI)::

    python bench/filtered_search.py --docs 100000 --queries 200 --json /tmp/filtered_search.json

A collection of ``--docs`` clustered unit vectors (dim 384, MiniLM's width)
with synthetic metadata (``bucket`` = 0..99, uncorrelated with the vectors, so
a filter scatters its documents over every cluster: the hard case for HNSW) is
written to a real published docstore (expression indexes, read-only) and put
under Flat, HNSW32 and IVF256,Flat (nprobe 8) indexes. For each index, one
query at a time, every query runs unfiltered (the baseline), with
``{"bucket": 7}`` (1%) and with ``{"bucket": {"lt": 50}}`` (50%), in shuffled
order so drift in the machine's load hits all alike; the figures are medians
and ratios to the unfiltered search of the same index in the same run, with
recall@10 against brute force over the matching documents and the share of
queries that got all k hits. FAISS runs on one OpenMP thread (``--faiss-threads``):
one query gains nothing from more, and on a busy machine a team of threads
waiting at a barrier turned 0.1 ms searches into 8 ms ones. The filter is resolved once per filter (what
``DocStore.select`` costs is reported beside it), as a service would cache it.

BM25 (bm25s, with the filter as a weight mask) runs the same way over synthetic
texts: 30 words each from a Zipf-distributed vocabulary of 20,000, queries of 3 words.

A second table sweeps the size of the allowed set for HNSW and IVF, timing (median
of 50 queries) the exact search over just those vectors against the widened graph / list search,
which is where ``index.store.dense_filtering.EXACT_FILTER_LIMIT`` comes from.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import LoadMeter, argument_parser, percentiles, table, write_json  # noqa: E402
from index import DenseIndex, DocStore, Document, LexicalIndex, LexicalSettings, SearchParams  # noqa: E402

FILTERS = {"none": None, "1%": {"bucket": 7}, "50%": {"bucket": {"lt": 50}}}
FACTORIES = (("Flat", SearchParams()), ("HNSW32", SearchParams()), ("IVF256,Flat", SearchParams(nprobe=8)))
SWEEP = (256, 512, 1024, 2048, 4096, 8192, 16384)


def clustered(n: int, dim: int, *, clusters: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def build_store(directory: Path, n: int, seed: int) -> tuple[DocStore, np.ndarray]:
    """A published (exported, read-only) docstore of ``n`` documents with ``bucket`` metadata; their row ids."""
    rng = np.random.default_rng(seed)
    buckets = rng.permutation(np.arange(n) % 100)
    with DocStore.create(directory / "work.sqlite") as work:
        rows = work.add([Document(f"d{i}", "", "x", {"bucket": int(buckets[i])}) for i in range(n)])
        work.export(directory / "docs.sqlite")
    return DocStore.open(directory / "docs.sqlite"), rows


def exact_top(queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, k: int) -> list[set[int]]:
    scores = queries @ vectors.T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    return [set(ids[row].tolist()) for row in top]


def timed(fn: Any, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat * 1000


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--faiss-threads",
        type=int,
        default=1,
        help="OpenMP threads for FAISS; 1 (the default) keeps one-query latency steady on a shared machine",
    )
    args = parser.parse_args()
    faiss.omp_set_num_threads(args.faiss_threads)
    k = args.k

    meter = LoadMeter()
    vectors = clustered(args.docs, args.dim, clusters=max(args.docs // 500, 10), seed=args.seed)
    rng = np.random.default_rng(args.seed + 1)
    picked = vectors[rng.integers(0, args.docs, args.queries)]
    queries = picked + 0.3 * rng.standard_normal(picked.shape).astype(np.float32) / np.sqrt(args.dim)
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        store, rows = build_store(Path(tmp), args.docs, args.seed)
        select_ms = {name: timed(lambda f=f: store.select(f), 20) for name, f in FILTERS.items() if f is not None}
        allowed = {name: (None if f is None else store.select(f)) for name, f in FILTERS.items()}
        plan = {name: store.explain_select(f) for name, f in FILTERS.items() if f is not None}
        store.close()
    truth = {}
    for name, ids in allowed.items():
        mask = np.ones(len(rows), dtype=bool) if ids is None else np.isin(rows, ids)
        truth[name] = exact_top(queries, vectors[mask], rows[mask], k)
    print(f"{args.docs} documents, dim {args.dim}, {args.queries} queries, k={k}; setup {meter.stop().line()}")
    print("select ms (median of 20): " + ", ".join(f"{n}: {ms:.2f}" for n, ms in select_ms.items()), plan)

    indexes = {}
    for factory, params in FACTORIES:
        started = time.perf_counter()
        dense = DenseIndex.create(args.dim, factory=factory)
        if dense.needs_training:
            dense.train(vectors[rng.choice(args.docs, min(args.docs, 50_000), replace=False)])
        dense.add(vectors, rows)
        dense.default_params = params
        indexes[factory] = dense
        print(f"built {factory} in {time.perf_counter() - started:.1f} s")

    started = time.perf_counter()
    words = np.array([f"w{i}" for i in range(20_000)])
    zipf = 1 / np.arange(1, len(words) + 1)
    drawn = words[rng.choice(len(words), (args.docs, 30), p=zipf / zipf.sum())]
    texts = [" ".join(row) for row in drawn]
    lexical = LexicalIndex.build([(rows, texts)], LexicalSettings())
    query_texts = [" ".join(texts[i].split()[:3]) for i in rng.integers(0, args.docs, args.queries)]
    lexical_truth = {}
    for name, ids in allowed.items():
        _, i_all = lexical.search(query_texts, args.docs)
        keep = [set(r.tolist()) if ids is None else set(r[np.isin(r, ids)].tolist()) for r in i_all]
        lexical_truth[name] = [
            set([i for i in r.tolist() if i >= 0 and i in kept][:k]) for r, kept in zip(i_all, keep, strict=True)
        ]
    print(f"built BM25 in {time.perf_counter() - started:.1f} s")

    meter = LoadMeter()
    variants = [(factory, name) for factory, _ in FACTORIES for name in FILTERS] + [("BM25", n) for n in FILTERS]
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    found: dict[tuple[str, str], list[np.ndarray]] = {v: [] for v in variants}

    def run(factory: str, name: str, i: int) -> np.ndarray:
        if factory == "BM25":
            return lexical.search(query_texts[i : i + 1], k, allowed=allowed[name])[1]
        return indexes[factory].search(queries[i : i + 1], k, allowed=allowed[name])[1]

    for factory, name in variants:  # warm up: first-call allocations, the id caches
        run(factory, name, 0)
    order = random.Random(args.seed)
    for i in range(args.queries):
        order.shuffle(variants)
        for factory, name in variants:
            started = time.perf_counter()
            ids = run(factory, name, i)
            times[factory, name].append((time.perf_counter() - started) * 1000)
            found[factory, name].append(ids[0])
    load = meter.stop()
    rows_out, results = [], []
    for factory in [f for f, _ in FACTORIES] + ["BM25"]:
        base = percentiles(times[factory, "none"])[0]
        for name in FILTERS:
            ids = found[factory, name]
            wanted = lexical_truth[name] if factory == "BM25" else truth[name]
            # (BM25 ties are common on synthetic text and break either way, so its recall is not reported.)
            recall = (
                float("nan")
                if factory == "BM25"
                else float(
                    np.mean([len(set(r.tolist()) & t) / max(len(t), 1) for r, t in zip(ids, wanted, strict=True)])
                )
            )
            full = float(np.mean([(r >= 0).sum() == len(t) for r, t in zip(ids, wanted, strict=True)]))
            p50, p95, _ = percentiles(times[factory, name])
            extra = select_ms.get(name, 0.0)
            rows_out.append([factory, name, p50, p95, p50 / base, (p50 + extra) / base, recall, full])
            results.append(
                {
                    "index": factory,
                    "filter": name,
                    "p50_ms": p50,
                    "p95_ms": p95,
                    "ratio": p50 / base,
                    "ratio_with_select": (p50 + extra) / base,
                    "recall_at_k": recall,
                    "all_k_hits": full,
                }
            )
    print(
        table(["index", "filter", "p50 ms", "p95 ms", "p50 / unfiltered", "+ select", "recall@k", "all hits"], rows_out)
    )
    print(f"latency phase {load.line()}")

    sweep_rows, sweep = [], []
    for factory in ("HNSW32", "IVF256,Flat"):
        dense = indexes[factory]
        for size in SWEEP:
            if size >= args.docs:
                continue
            ids = np.sort(rng.choice(rows, size, replace=False))
            q = queries[: min(50, args.queries)]
            limit = dense.exact_filter_limit
            dense.exact_filter_limit = 1 << 62
            exact_ms = float(
                np.median([timed(lambda i=i: dense.search(q[i : i + 1], k, allowed=ids)) for i in range(len(q))])  # noqa: B023  (timed() runs it at once)
            )
            dense.exact_filter_limit = 0
            approx_ms = float(
                np.median([timed(lambda i=i: dense.search(q[i : i + 1], k, allowed=ids)) for i in range(len(q))])  # noqa: B023  (timed() runs it at once)
            )
            dense.exact_filter_limit = limit
            sweep_rows.append([factory, size, exact_ms, approx_ms, exact_ms / approx_ms])
            sweep.append({"index": factory, "allowed": size, "exact_ms": exact_ms, "approximate_ms": approx_ms})
    print(table(["index", "allowed ids", "exact ms", "graph/lists ms", "exact / approximate"], sweep_rows))
    write_json(
        args.json,
        {"args": vars(args), "select_ms": select_ms, "results": results, "sweep": sweep, "load": load.__dict__},
    )


if __name__ == "__main__":
    main()
