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

* **approximate** (section 18): the same union with its dense part an
  inverted file (``--exact-max``, default 0: always; ``--probes`` lists
  read per query), as ``RR_ROUTER_VOTE_EXACT_MAX`` makes a large one.

All run on the same views, query by query, rotating which goes first; the
union's votes are checked equal to the per-expert ones, and the approximate
ones are compared with them: the share of queries whose top-voted expert is
the same, and the mean L1 distance of the vote rows (0 equal, 2 disjoint).
``--embed words`` gives documents and queries bag-of-words vectors (a fixed
random vector per word, summed and normalised: documents sharing words are
near, as with a real encoder, which an inverted file relies on) instead of
random ones. ``--faiss-threads``: FAISS's
OpenMP threads (default: FAISS's own, as the service runs it); on a busy
machine its threads wait for each other at every search. Printed: p50 / p95 per count and
method, the ratio to the same method at the smallest count (target: union at
50 experts <= 1.2 x union at 5), the union's build time and memory. The model
passes of a search are not included: bench/many_experts.py measures the
whole search.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable
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


@functools.lru_cache(maxsize=200_000)
def word_vector(word: str) -> np.ndarray:
    """A fixed random vector of dim ``DIM`` for ``word``, the same in every run."""
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)


def bag_of_words(texts: list[str]) -> np.ndarray:
    """(n, DIM) unit vectors: the sum of a fixed random vector per word (``--embed words``)."""
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for i, text in enumerate(texts):
        for word in text.lower().split()[:200]:
            out[i] += word_vector(word)
        norm = np.linalg.norm(out[i])
        out[i] = out[i] / norm if norm else 1.0 / np.sqrt(DIM)
    return out


def stand_in(root: Path, datasets: Path, i: int, docs: int, embedding: str = "random") -> Collection:
    """Collection ``i``: the first ``docs`` documents of a shared collection, random (or word) vectors, BM25."""
    source = COLLECTIONS[i % len(COLLECTIONS)]
    corpus = root / f"{source}-{docs}.jsonl"
    if not corpus.exists():
        with open(datasets / source / "corpus.jsonl", encoding="utf-8") as reader:
            corpus.write_text("".join(itertools.islice(reader, docs)), encoding="utf-8")
    out = root / f"collection-{i:03d}-{docs}-{embedding}"
    if not out.exists():
        rng = np.random.default_rng(i)

        def embed(texts: list[str]) -> np.ndarray:
            if embedding == "words":
                return bag_of_words(texts)
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
    parser.add_argument("--embed", choices=("random", "words"), default="random", help="the stand-ins' vectors")
    parser.add_argument("--exact-max", type=int, default=0, help="approximate union above this many vectors")
    parser.add_argument("--probes", type=int, default=16, help="inverted lists an approximate union reads")
    args = parser.parse_args()
    if args.faiss_threads is not None:
        import faiss

        faiss.omp_set_num_threads(args.faiss_threads)
    texts = [text for _, text in judged_test_queries(args.datasets)][: args.queries]
    if args.embed == "words":
        base = bag_of_words(texts)
    else:
        base = np.random.default_rng(0).standard_normal((len(texts), DIM)).astype(np.float32)
        base /= np.linalg.norm(base, axis=1, keepdims=True)
    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    with tempfile.TemporaryDirectory(prefix="rr-routing-votes-") as scratch:
        root = args.root or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        collections = [stand_in(root, args.datasets, i, args.docs, args.embed) for i in range(max(args.counts))]
        print(f"{len(collections)} stand-in collections ready in {time.perf_counter() - started:.0f}s", flush=True)
        meter = LoadMeter()
        approximate = {"approximate_above": args.exact_max, "probes": args.probes}
        steps = [measure(collections[:count], texts, base, args.depth, approximate) for count in args.counts]
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
    approximate_rows = [
        [
            s["experts"],
            s["vectors"],
            s["approximate_p50_ms"],
            s["approximate_p95_ms"],
            s["approximate_p50_ms"] / first["approximate_p50_ms"],
            s["union_p50_ms"] / s["approximate_p50_ms"],
            s["approximate_build_s"],
            s["same_top_expert"],
            s["vote_l1"],
        ]
        for s in steps
    ]
    headers = ["experts", "vectors", "approx. p50 ms", "p95", "÷ first", "exact ÷ approx.", "build s"]
    print()
    print(table([*headers, "same top expert", "mean L1 to exact"], approximate_rows))
    print(f"measurement: {load.line()}")
    last = steps[-1]
    targets = []
    for method in ("union", "approximate"):
        ratio = last[f"{method}_p50_ms"] / first[f"{method}_p50_ms"]
        name = f"{method} p50 at {last['experts']} experts / at {first['experts']}"
        targets.append([name, ratio, "<= 1.2", verdict(ratio, 1.2, at_most=True)])
    print(table(["target", "ratio", "target", "verdict"], targets))
    write_json(
        args.json,
        {
            "docs": args.docs,
            "depth": args.depth,
            "queries": len(texts),
            "faiss_threads": args.faiss_threads,
            "embed": args.embed,
            "exact_max": args.exact_max,
            "probes": args.probes,
            "steps": steps,
            "load": load.__dict__,
        },
    )


def measure(collections: list[Collection], texts: list[str], base: np.ndarray, depth: int, approximate: dict) -> dict:
    """Per-expert, union and approximate-union vote latencies for single queries over these collections."""
    shared = SharedIdf.over(c.lexical.document_frequencies() for c in collections)
    started = time.perf_counter()
    union = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    near = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared, **approximate)
    near_build_seconds = time.perf_counter() - started
    views = [static_view(c) for c in collections]

    def old(q: int) -> np.ndarray | None:
        return per_expert_votes(
            views, base[q : q + 1], texts[q : q + 1], evidence="documents+bm25", depth=depth, shared_idf=shared
        )

    def from_union(which: CorpusUnion) -> Callable[[int], np.ndarray | None]:
        def votes(q: int) -> np.ndarray | None:
            one = slice(q, q + 1)
            kinds = "documents+bm25"
            return corpus_votes(
                views, base[one], texts[one], evidence=kinds, depth=depth, shared_idf=shared, union=which
            )

        return votes

    new, approximated = from_union(union), from_union(near)

    for q in range(3):  # warm-up: first touch of every index
        old(q), new(q), approximated(q)
    times: dict[str, list[float]] = {"per_expert": [], "union": [], "approximate": []}
    identical, same_top, distance = True, [], []
    for q in range(len(texts)):
        order = [("per_expert", old), ("union", new), ("approximate", approximated)]
        results = {}
        for name, run in order[q % 3 :] + order[: q % 3]:
            started = time.perf_counter()
            results[name] = run(q)
            times[name].append((time.perf_counter() - started) * 1000)
        exact, close = results["per_expert"], results["approximate"]
        identical &= bool(np.array_equal(exact, results["union"]))
        assert exact is not None and close is not None
        same_top.append(int(np.argmax(exact)) == int(np.argmax(close)))
        distance.append(float(np.abs(exact - close).sum()))
    step: dict = {"experts": len(collections), "identical": identical}
    step["vectors"] = near.dense.vectors if near.dense is not None else 0
    step["same_top_expert"] = round(float(np.mean(same_top)), 3)
    step["vote_l1"] = round(float(np.mean(distance)), 3)
    step["approximate_build_s"] = round(near_build_seconds, 2)
    for name, values in times.items():
        p50, p95 = percentiles(values, [50, 95])
        step[f"{name}_p50_ms"], step[f"{name}_p95_ms"] = round(p50, 3), round(p95, 3)
    step["union_build_s"] = round(build_seconds, 2)
    step["union_mib"] = round(union.nbytes / 2**20, 1)
    print(json.dumps(step), flush=True)
    return step


if __name__ == "__main__":
    main()
