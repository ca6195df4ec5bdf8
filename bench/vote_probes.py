"""Approximate corpus votes on the real collections: how many inverted lists keep the router's decisions? On pseudo queries.

Run by hand (not in CI), on a root holding one expert per shared collection (the demo's)::

    RR_DATA_DIR=data/experts python bench/vote_probes.py --datasets ../shared/datasets --json vote_probes.json

An exact dense union reads every vector for each query (the five shared
collections hold 35,000 with their chunks). Here the same union is built as
an inverted file at several ``--probes`` (its BM25 part as
``RR_ROUTER_VOTE_LEXICAL_EXACT_MAX`` builds it: every posting up to 50,000
documents), and each is compared with the exact union on pseudo
queries of documents outside the pilots' sample (bench/merge_tuning.py's
``dev`` split; never a test query): the share of queries whose routing
decision (pilots plus votes, the service's policy) has the same top expert,
and the share routed to the query's own collection, beside single-query
latency of the votes, all in one run.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.engine.votes import corpus_votes  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import argument_parser, percentiles, table, write_json  # noqa: E402
from bench.merge_tuning import COLLECTIONS, dev_queries  # noqa: E402
from index import CorpusUnion, SharedIdf  # noqa: E402


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--probes", default="16,32,64,128", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--dev-sample", type=int, default=200, help="pseudo queries per collection")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    settings = Settings()
    engine = SearchEngine.open(settings.data_dir, open_encoder(settings), settings.engine_config())
    names = list(engine.router.experts)
    texts, home = [], []
    for name in COLLECTIONS:
        queries = dev_queries(engine, name, sample=args.dev_sample, seed=1)
        texts += queries.texts
        home += [names.index(name)] * len(queries.texts)
    base = engine.encoder.embed(texts, max_length=engine.query_max_length)
    collections = [engine.experts[name].collection for name in names]
    views = [engine.experts[name].view() for name in names]
    shared = SharedIdf.over(c.lexical.document_frequencies() for c in collections if c.has_lexical)
    policy = settings.route_policy()

    def measure(union: CorpusUnion) -> tuple[np.ndarray, float]:
        votes = corpus_votes(views, base, texts, evidence="documents+bm25", depth=20, shared_idf=shared, union=union)
        decided = engine.router.route(base, policy=policy, evidence=votes)
        top = np.asarray([names.index(d.experts[0]) for d in decided])
        times = []
        for q in range(0, len(texts), 5):
            clock = time.perf_counter()
            corpus_votes(views, base[q : q + 1], texts[q : q + 1], evidence="documents+bm25", depth=20,
                         shared_idf=shared, union=union)  # fmt: skip
            times.append((time.perf_counter() - clock) * 1000)
        return top, percentiles(times, [50])[0]

    exact = CorpusUnion.build(
        collections, dense=True, lexical=True, shared_idf=shared,
        lexical_approximate_above=settings.router_vote_lexical_exact_max,
    )  # fmt: skip
    exact_top, exact_ms = measure(exact)
    assert exact.dense is not None
    print(f"{len(texts)} pseudo queries; union of {exact.dense.vectors} vectors; exact votes p50 {exact_ms:.2f} ms; "
          f"routed home {np.mean(exact_top == home):.1%}", flush=True)  # fmt: skip
    rows = [["exact", 1.0, float(np.mean(exact_top == home)), exact_ms, 1.0]]
    steps = [{"probes": None, "same_top": 1.0, "home": round(float(np.mean(exact_top == home)), 4), "p50_ms": exact_ms}]
    for probes in args.probes:
        union = CorpusUnion.build(
            collections, dense=True, lexical=True, shared_idf=shared, approximate_above=0, probes=probes,
            lexical_approximate_above=settings.router_vote_lexical_exact_max,
        )  # fmt: skip
        top, ms = measure(union)
        same, routed_home = float(np.mean(top == exact_top)), float(np.mean(top == home))
        rows.append([probes, same, routed_home, ms, ms / exact_ms])
        steps.append({"probes": probes, "same_top": round(same, 4), "home": round(routed_home, 4), "p50_ms": ms})
        print(steps[-1], flush=True)
    print()
    print(table(["probes", "same top expert as exact", "routed home", "votes p50 ms", "÷ exact"], rows))
    write_json(args.json, {"queries": len(texts), "vectors": exact.dense.vectors, "steps": steps})


if __name__ == "__main__":
    main()
