"""The whole routing stage of one query against the number of experts: the pilots' kNN vote and the corpus votes.

Run by hand (not in CI); a first run builds the stand-in collections (keep them with ``--root``)::

    nice -n 5 python bench/routing_stage.py --root /tmp/rr-stage --json routing_stage.json
    python bench/routing_stage.py --counts 5,20 --queries 40          # a quick look

bench/routing_votes.py times the corpus votes alone. A routed query also
compares its base vector with every expert's pilots (``RR_ROUTER_AGGREGATE=knn``):
the demo's experts have 1,000 pilots each, so 50 experts hold 50,000, which
an exact vote reads whole for each query. This times both parts together, as
the engine runs them for a single query, at each count of experts:

* **pilots, exact**: ``Router.route`` comparing the query with every pilot;
* **pilots, grouped**: the same with each expert's pilots in k-means groups
  and only the ``--probes`` nearest groups read (``router/pilot_groups.py``);
* **votes**: ``corpus_votes`` over the experts' union with the engine's
  defaults (dense: exact up to ``RR_ROUTER_VOTE_EXACT_MAX`` vectors, an
  inverted file read ``RR_ROUTER_VOTE_PROBES`` lists deep above; BM25: every
  posting up to ``RR_ROUTER_VOTE_LEXICAL_EXACT_MAX`` documents, each stem's
  1,024 best above; each collection's best scores, ``RR_ROUTER_VOTE_RULE=best``);
  **votes, share**: the same searches counted as shares of the best documents (the rule before);
* **pilots, grouped, all dims**: the grouped vote comparing every dimension
  (``RR_ROUTER_PILOT_REDUCED_DIM`` unset); **pilots, grouped** compares the
  probed pilots first in their 128 main directions, then the nearest again in full;
* **stage, before**: votes + exact pilots; **stage, all dims**: votes + pilots as
  ``RR_ROUTER_PILOT_EXACT_MAX`` chooses, compared in every dimension; **stage, now**: votes + pilots as
  ``RR_ROUTER_PILOT_EXACT_MAX`` (default 10,000) chooses. The votes are the
  engine's as they are now in all three; **BM25 exact / capped** time that union's
  search alone with every posting and with the cut, to show what the cut saves.

Stand-ins as bench/routing_votes.py's with ``--embed words`` (the first
``--docs`` documents of a shared collection, cycling through the five;
bag-of-words vectors, so near texts have near vectors, as with a real
encoder); each expert's pilots are bag-of-words vectors of pseudo queries
(titles, else spans) of ``--pilots`` of its documents, sampled per expert.
Queries: judged test queries, bag-of-words base vectors. "Same top
collection" and "L1" compare the grouped vote with the exact one (pilot votes
plus corpus votes, as routed); stand-in i copies shared collection i % 5, so
copies tie by construction and both are taken per collection (the share of
queries whose top expert stands in for the same one; the L1 distance of the
scores summed per collection). Every (count of experts, part) pair is timed
in turn for each query, so that the machine's drift weighs on every count
alike. The votes follow ``RR_ROUTER_VOTE_*`` as the service reads them (set
``RR_ROUTER_VOTE_EXACT_MAX=0`` for an inverted file at every count). The model passes are not included: bench/many_experts.py
and bench/peer_infinity.py time whole searches.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.loading import apply_search_threads  # noqa: E402
from app.engine.votes import corpus_votes  # noqa: E402
from app.settings import Settings  # noqa: E402
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
from bench.routing_votes import bag_of_words, stand_in  # noqa: E402
from experts.pseudo_queries import pseudo_queries  # noqa: E402
from index import Collection, CorpusUnion, SharedIdf, set_search_threads, static_view  # noqa: E402
from index.store.union_lexical import APPROXIMATE_POSTINGS, UnionLexical  # noqa: E402
from router import PilotSearch, Router, VoteRule  # noqa: E402

#: The service's settings (app/settings.py, RR_* variables): dense votes exact up to this many vectors, IVF lists
#: read above it, BM25 votes with every posting up to this many documents, documents that vote, the routing policy.
SETTINGS = Settings()
VOTE_EXACT_MAX, VOTE_PROBES = SETTINGS.router_vote_exact_max, SETTINGS.router_vote_probes
VOTE_LEXICAL_EXACT_MAX, DEPTH = SETTINGS.router_vote_lexical_exact_max, SETTINGS.router_vote_depth
POLICY = SETTINGS.route_policy()
METHODS = (
    "bm25_exact",
    "bm25_capped",
    "pilots_exact",
    "pilots_grouped_all_dims",
    "pilots_grouped",
    "votes",
    "votes_share",
    "stage_before",
    "stage_all_dims",
    "stage_now",
)


def pilots_of(collection: Collection, count: int, seed: int) -> np.ndarray:
    """Bag-of-words vectors of pseudo queries of ``count`` of the collection's documents, sampled with ``seed``."""
    rows = collection.docstore.all_row_ids().tolist()
    chosen = sorted(random.Random(seed).sample(rows, min(count, len(rows))))
    documents = [(doc.title, doc.text) for doc in collection.docstore.get(chosen) if doc is not None]
    return bag_of_words(pseudo_queries(documents, seed=seed))


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--counts", default="5,20,50", type=lambda v: sorted({int(x) for x in v.split(",")}))
    parser.add_argument("--docs", type=int, default=2000, help="documents in each stand-in collection")
    parser.add_argument("--pilots", type=int, default=1000, help="pilots per expert (the demo's: 1,000)")
    parser.add_argument("--queries", type=int, default=100, help="single queries timed per count")
    parser.add_argument("--probes", type=int, default=PilotSearch().probes, help="pilot groups read (grouped)")
    parser.add_argument("--root", type=Path, default=None, help="keep the stand-in collections here (reused)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    parser.add_argument(
        "--faiss-threads", type=int, default=SETTINGS.faiss_threads, help="FAISS threads (default: the service's)"
    )
    args = parser.parse_args()
    apply_search_threads(SETTINGS)  # FAISS's and numpy's BLAS threads, as rr serve sets them (1 each on <= 2 cores)
    if args.faiss_threads is not None and args.faiss_threads != SETTINGS.faiss_threads:
        set_search_threads(args.faiss_threads)
    texts = [text for _, text in judged_test_queries(args.datasets)][: args.queries]
    base = bag_of_words(texts)
    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    with tempfile.TemporaryDirectory(prefix="rr-routing-stage-") as scratch:
        root = args.root or Path(scratch)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        collections = [stand_in(root, args.datasets, i, args.docs, "words") for i in range(max(args.counts))]
        pilots = {f"e{i:03d}": pilots_of(c, args.pilots, seed=i) for i, c in enumerate(collections)}
        print(
            f"{len(collections)} stand-ins and their pilots ready in {time.perf_counter() - started:.0f}s", flush=True
        )
        setups = [setup(collections[:count], pilots, texts, base, args.probes) for count in args.counts]
        meter = LoadMeter()
        steps = measure(setups, len(texts))
        load = meter.stop()
        for collection in collections:
            collection.close()
    first, last = steps[0], steps[-1]
    rows = [
        [s["experts"], s["pilots"], s["vectors"]]
        + [
            value
            for method in METHODS
            for value in (s[f"{method}_p50_ms"], s[f"{method}_p50_ms"] / first[f"{method}_p50_ms"])
        ]
        + [s["same_top_collection"], s["vote_l1"], s["grouping_s"]]
        for s in steps
    ]
    headers = ["experts", "pilots", "vectors"]
    headers += [h for method in METHODS for h in (f"{method} p50 ms", "÷ first")]
    print()
    print(table([*headers, "same top collection", "L1", "grouping s"], rows))
    print(f"measurement: {load.line()}")
    targets = []
    for method in ("stage_before", "stage_all_dims", "stage_now"):
        ratio = last[f"{method}_p50_ms"] / first[f"{method}_p50_ms"]
        name = f"{method} p50 at {last['experts']} experts / at {first['experts']}"
        targets.append([name, ratio, "<= 1.2", verdict(ratio, 1.2, at_most=True)])
    print(table(["target", "ratio", "target", "verdict"], targets))
    write_json(
        args.json,
        {"docs": args.docs, "pilots": args.pilots, "queries": len(texts), "probes": args.probes,
         "faiss_threads": args.faiss_threads, "blas_threads": SETTINGS.blas_threads, "steps": steps, "load": load.__dict__},
    )  # fmt: skip


Run = Callable[[int], object]


def setup(
    collections: list[Collection], all_pilots: dict[str, np.ndarray], texts: list[str], base: np.ndarray, probes: int
) -> tuple[dict, dict[str, Run]]:
    """One count of experts: its figures that are not timings, and each part of the routing stage as a function of
    the query's number."""
    names = sorted(all_pilots)[: len(collections)]
    pilots = {name: all_pilots[name] for name in names}
    shared = SharedIdf.over(c.lexical.document_frequencies() for c in collections)
    union = CorpusUnion.build(
        collections, dense=True, lexical=True, shared_idf=shared, approximate_above=VOTE_EXACT_MAX, probes=VOTE_PROBES,
        lexical_approximate_above=VOTE_LEXICAL_EXACT_MAX,
    )  # fmt: skip
    views = [static_view(c) for c in collections]
    exact = Router(pilots, aggregate="knn", search=PilotSearch(exact_max=None))
    started = time.perf_counter()
    grouped = Router(pilots, aggregate="knn", search=PilotSearch(exact_max=0, probes=probes))
    grouping = time.perf_counter() - started
    default = grouped if PilotSearch().grouped(sum(len(p) for p in pilots.values())) else exact
    all_dims = Router(
        pilots, aggregate="knn", search=PilotSearch(exact_max=0, probes=probes, reduced_dim=None), groups=grouped.groups
    )
    default_all_dims = all_dims if default is grouped else exact

    def votes(q: int, rule: VoteRule = "best") -> np.ndarray:
        one = slice(q, q + 1)
        found = corpus_votes(
            views,
            base[one],
            texts[one],
            evidence="documents+bm25",
            depth=DEPTH,
            shared_idf=shared,
            union=union,
            rule=rule,
        )
        assert found is not None
        return found

    def stage(router: Router, q: int) -> list:
        return router.route(base[q : q + 1], policy=POLICY, evidence=votes(q))

    lexical = UnionLexical.build([c.lexical for c in collections], shared)  # every posting: the exact BM25 union
    capped = UnionLexical.build([c.lexical for c in collections], shared, postings_cap=APPROXIMATE_POSTINGS)
    runs: dict[str, Run] = {
        "bm25_exact": lambda q: lexical.search(texts[q : q + 1], DEPTH),
        "bm25_capped": lambda q: capped.search(texts[q : q + 1], DEPTH),
        "pilots_exact": lambda q: exact.route(base[q : q + 1], policy=POLICY),
        "pilots_grouped_all_dims": lambda q: all_dims.route(base[q : q + 1], policy=POLICY),
        "pilots_grouped": lambda q: grouped.route(base[q : q + 1], policy=POLICY),
        "votes": votes,
        "votes_share": lambda q: votes(q, "share"),
        "stage_before": lambda q: stage(exact, q),
        "stage_all_dims": lambda q: stage(default_all_dims, q),
        "stage_now": lambda q: stage(default, q),
    }
    evidence = np.concatenate([votes(q) for q in range(len(texts))])
    exact_scores = exact.scores(base) + evidence
    grouped_scores = grouped.scores(base) + evidence
    # Stand-in i is a copy of shared collection i % 5 (other pilots, same documents), so copies tie by
    # construction: compare the collection the top expert stands in for, and the votes summed per collection.
    source = np.arange(len(names)) % len(COLLECTIONS)
    by_source = np.stack([source == c for c in range(len(COLLECTIONS))], axis=1).astype(np.float32)
    step: dict = {
        "experts": len(collections),
        "pilots": int(sum(len(p) for p in pilots.values())),
        "vectors": union.dense.vectors if union.dense is not None else 0,
        "dense_votes_approximate": union.dense is not None and union.dense.approximate,
        "grouped_by_default": default is grouped,
        "grouping_s": round(grouping, 2),
        "same_top_collection": round(
            float(np.mean(source[exact_scores.argmax(axis=1)] == source[grouped_scores.argmax(axis=1)])), 3
        ),
        "vote_l1": round(float(np.abs((exact_scores - grouped_scores) @ by_source).sum(axis=1).mean()), 4),
    }
    return step, runs


def measure(setups: list[tuple[dict, dict[str, Run]]], queries: int) -> list[dict]:
    """Per-query latency of each part at each count of experts: every (count, part) pair in turn for each query,
    starting one further along each time, so that the machine's drift weighs on every count alike."""
    for _, runs in setups:
        for q in range(3):  # warm-up: first touch of every index
            for run in runs.values():
                run(q)
    pairs = [(i, name, run) for i, (_, runs) in enumerate(setups) for name, run in runs.items()]
    times: list[dict[str, list[float]]] = [{name: [] for name in runs} for _, runs in setups]
    for q in range(queries):
        shift = q % len(pairs)
        for i, name, run in pairs[shift:] + pairs[:shift]:
            started = time.perf_counter()
            run(q)
            times[i][name].append((time.perf_counter() - started) * 1000)
    steps = []
    for (step, _), timed in zip(setups, times, strict=True):
        for name, values in timed.items():
            p50, p95 = percentiles(values, [50, 95])
            step[f"{name}_p50_ms"], step[f"{name}_p95_ms"] = round(p50, 3), round(p95, 3)
        print(step, flush=True)
        steps.append(step)
    return steps


if __name__ == "__main__":
    main()
