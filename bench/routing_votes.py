"""Routing-stage latency against the number of experts: corpus votes per expert (before) and from the union (now).

Run by hand (not in CI), about 2 minutes with the defaults (most of it building the stand-in collections)::

    nice -n 5 python bench/routing_votes.py --json routing_votes.json
    python bench/routing_votes.py --counts 5,20 --queries 30                # a quick look
    python bench/routing_votes.py --faiss-threads 1                         # FAISS without OpenMP threads

Stand-in collections: each the first ``--docs`` documents of a shared
collection (cycling through the five), real text with BM25, random unit
vectors of dim 384 (the base encoder's), ``Flat``, as bench/many_experts.py's
experts. For each count of experts, the votes of single queries (real judged
test queries; random unit base vectors) with ``documents+bm25`` evidence,
``--depth`` deep and the shared IDF, as the engine computes them:

* **per expert** (before): one dense and one BM25 search per expert
  (``app.engine.votes.per_expert_votes``);
* **union** (now): ``corpus_votes`` on the experts' :class:`~index.CorpusUnion`
  (one dense and one BM25 search over all of them).

Both run on the same views, query by query, alternating which goes first;
the votes of every query are checked equal. ``--faiss-threads``: FAISS's
OpenMP threads (default: FAISS's own, as the service runs it); on a busy
machine its threads wait for each other at every search. Printed: p50 / p95 per count and
method, the ratio to the same method at the smallest count (target: union at
50 experts <= 1.2 x union at 5), the union's build time and memory. The model
passes of a search are not included: bench/many_experts.py measures the
whole search.
"""

from __future__ import annotations

import itertools
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.votes import corpus_votes, per_expert_votes  # noqa: E402
from bench.harness import (  # noqa: E402
    COLLECTIONS,
    LoadMeter,
    argument_parser,
    judged_test_queries,
    other_heavy_processes,
    percentiles,
    table,
    verdict,
    write_json,
)
from index import Collection, CorpusUnion, SharedIdf, build_index, static_view  # noqa: E402

DIM = 384


def stand_in(root: Path, datasets: Path, i: int, docs: int) -> Collection:
    """Collection ``i``: the first ``docs`` documents of a shared collection, random vectors, BM25."""
    source = COLLECTIONS[i % len(COLLECTIONS)]
    corpus = root / f"{source}-{docs}.jsonl"
    if not corpus.exists():
        with open(datasets / source / "corpus.jsonl", encoding="utf-8") as reader:
            corpus.write_text("".join(itertools.islice(reader, docs)), encoding="utf-8")
    out = root / f"collection-{i:03d}"
    if not out.exists():
        rng = np.random.default_rng(i)

        def embed(texts: list[str]) -> np.ndarray:
            rows = rng.standard_normal((len(texts), DIM)).astype(np.float32)
            return rows / np.linalg.norm(rows, axis=1, keepdims=True)

        build_index(
            [corpus], embed=embed, dim=DIM, out_dir=out, work_dir=root / f".work-{i}", build_key="bench", progress=False
        )
    return Collection.open(out)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--counts", default="5,20,50", type=lambda v: sorted({int(x) for x in v.split(",")}))
    parser.add_argument("--docs", type=int, default=300, help="documents in each stand-in collection")
    parser.add_argument("--queries", type=int, default=60, help="single-query vote computations per count and method")
    parser.add_argument("--depth", type=int, default=20, help="documents that vote (RR_ROUTER_VOTE_DEPTH)")
    parser.add_argument("--root", type=Path, default=None, help="keep the stand-in collections here (reused)")
    parser.add_argument("--faiss-threads", type=int, default=None, help="FAISS OpenMP threads (default: its own)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    if args.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)
    texts = [text for _, text in judged_test_queries(args.datasets)][: args.queries]
    base = np.random.default_rng(0).standard_normal((len(texts), DIM)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    with tempfile.TemporaryDirectory(prefix="rr-routing-votes-") as scratch:
        root = args.root or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        collections = [stand_in(root, args.datasets, i, args.docs) for i in range(max(args.counts))]
        print(f"{len(collections)} stand-in collections ready in {time.perf_counter() - started:.0f}s", flush=True)
        meter = LoadMeter()
        steps = [measure(collections[:count], texts, base, args.depth) for count in args.counts]
        load = meter.stop()
        for collection in collections:
            collection.close()
    first = steps[0]
    rows = [
        [
            s["experts"],
            s["per_expert_p50_ms"],
            s["per_expert_p95_ms"],
            s["per_expert_p50_ms"] / first["per_expert_p50_ms"],
            s["union_p50_ms"],
            s["union_p95_ms"],
            s["union_p50_ms"] / first["union_p50_ms"],
            s["per_expert_p50_ms"] / s["union_p50_ms"],
            s["union_build_s"],
            s["union_mib"],
        ]
        for s in steps
    ]
    headers = ["experts", "per-expert p50 ms", "p95", "÷ first", "union p50 ms", "p95", "÷ first", "speed-up"]
    print()
    print(table([*headers, "union build s", "union MiB"], rows))
    print(f"votes identical for every query at every count: {all(s['identical'] for s in steps)}")
    print(f"measurement: {load.line()}")
    last = steps[-1]
    ratio = last["union_p50_ms"] / first["union_p50_ms"]
    name = f"union p50 at {last['experts']} experts / at {first['experts']}"
    print(table(["target", "ratio", "target", "verdict"], [[name, ratio, "<= 1.2", verdict(ratio, 1.2, at_most=True)]]))
    write_json(
        args.json,
        {
            "docs": args.docs,
            "depth": args.depth,
            "queries": len(texts),
            "faiss_threads": args.faiss_threads,
            "steps": steps,
            "load": load.__dict__,
        },
    )


def measure(collections: list[Collection], texts: list[str], base: np.ndarray, depth: int) -> dict:
    """Per-expert and union vote latencies for single queries over these collections."""
    shared = SharedIdf.over(c.lexical.document_frequencies() for c in collections)
    started = time.perf_counter()
    union = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared)
    build_seconds = time.perf_counter() - started
    views = [static_view(c) for c in collections]

    def old(q: int) -> np.ndarray | None:
        return per_expert_votes(
            views, base[q : q + 1], texts[q : q + 1], evidence="documents+bm25", depth=depth, shared_idf=shared
        )

    def new(q: int) -> np.ndarray | None:
        return corpus_votes(
            views,
            base[q : q + 1],
            texts[q : q + 1],
            evidence="documents+bm25",
            depth=depth,
            shared_idf=shared,
            union=union,
        )

    for q in range(3):  # warm-up: first touch of every index
        old(q), new(q)
    times: dict[str, list[float]] = {"per_expert": [], "union": []}
    identical = True
    for q in range(len(texts)):
        order = [("per_expert", old), ("union", new)]
        results = {}
        for name, run in order if q % 2 else order[::-1]:
            started = time.perf_counter()
            results[name] = run(q)
            times[name].append((time.perf_counter() - started) * 1000)
        identical &= bool(np.array_equal(results["per_expert"], results["union"]))
    step: dict = {"experts": len(collections), "identical": identical}
    for name, values in times.items():
        p50, p95 = percentiles(values, [50, 95])
        step[f"{name}_p50_ms"], step[f"{name}_p95_ms"] = round(p50, 3), round(p95, 3)
    step["union_build_s"] = round(build_seconds, 2)
    step["union_mib"] = round(union.nbytes / 2**20, 1)
    print(json.dumps(step), flush=True)
    return step


if __name__ == "__main__":
    main()
