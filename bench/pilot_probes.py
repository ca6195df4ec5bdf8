"""How many pilot groups must a query read for the knn vote to match the exact one? Chosen on pseudo queries.

Run by hand (not in CI; about 5 minutes on 2 cores, most of it embedding)::

    python bench/pilot_probes.py --datasets ../shared/datasets --json pilot_probes.json

Real vectors, many experts: ``--copies`` experts per shared collection (50 by
default), each with ``--pilots`` pilots, the base encoder's vectors of pseudo
queries (the title, else a 4-12-word span) of documents sampled with its own
seed, as ``rr pilots`` makes them. The queries are pseudo queries of other
documents (``--queries`` per collection, never a test query). For each count
of probes (and of ``--reduced-dims``, the dimensions of the first comparison), the share of queries whose grouped vote (``router/pilot_groups.py``)
puts first an expert of the same collection as the exact vote, the share
whose five nearest pilots are of the same collections as the exact ones
(copies of a collection share pilots, so ties between copies are arbitrary
in both), and the p50 latency of a
single query's vote against the exact one's, measured in the same run.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.loading import open_encoder  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import COLLECTIONS, argument_parser, percentiles, table, write_json  # noqa: E402
from experts.pseudo_queries import pseudo_queries  # noqa: E402
from router import PilotSearch, Router  # noqa: E402


def documents(datasets: Path, name: str) -> list[tuple[str, str]]:
    import json

    with open(datasets / name / "corpus.jsonl", encoding="utf-8") as reader:
        rows = [json.loads(line) for line in reader if line.strip()]
    return [(row.get("title") or "", row.get("text") or "") for row in rows if (row.get("title") or row.get("text"))]


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--copies", type=int, default=10, help="experts per shared collection")
    parser.add_argument("--pilots", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=100, help="pseudo queries per collection")
    parser.add_argument("--probes", default="8,16,24,32,48,64", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument(
        "--reduced-dims",
        default=str(PilotSearch().reduced_dim),
        type=lambda v: [None if x == "none" else int(x) for x in v.split(",")],
        help="dimensions of the first comparison, comma-separated (none: every dimension); each with every --probes",
    )
    parser.add_argument("--group-size", type=int, default=PilotSearch().group_size, help="pilots per group, about")
    parser.add_argument("--cache", type=Path, default=None, help="keep the embedded pilots and queries here (.npz)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.cache is not None and args.cache.exists():
        cached = np.load(args.cache)
        names = sorted({key.split(":", 1)[1] for key in cached.files if key.startswith("pilots:")})
        pilots = {name: cached[f"pilots:{name}"] for name in names}
        queries, query_collection = cached["queries"], cached["query_collection"].tolist()
    else:
        pilots, queries, query_collection = embed(args)
        if args.cache is not None:
            arrays = {f"pilots:{name}": value for name, value in pilots.items()}
            np.savez(args.cache, queries=queries, query_collection=np.asarray(query_collection), **arrays)
    evaluate(args, pilots, queries, query_collection)


def embed(args) -> tuple[dict[str, np.ndarray], np.ndarray, list[int]]:
    """``--copies`` experts per collection of ``--pilots`` pilots each, and the pseudo queries, embedded."""
    encoder = open_encoder(Settings())
    pilots: dict[str, np.ndarray] = {}
    query_texts: list[str] = []
    query_collection: list[int] = []
    started = time.perf_counter()
    for c, name in enumerate(COLLECTIONS):
        docs = documents(args.datasets, name)
        held_out = set(random.Random(999).sample(range(len(docs)), min(args.queries, len(docs) // 10)))
        rest = [d for i, d in enumerate(docs) if i not in held_out]
        for copy in range(args.copies):
            seed = 1000 * c + copy
            sample = random.Random(seed).sample(rest, min(args.pilots, len(rest)))
            pilots[f"{name}-{copy}"] = encoder.embed(pseudo_queries(sample, seed=seed), max_length=64, bulk=True)
        made = pseudo_queries([docs[i] for i in sorted(held_out)], seed=999)
        query_texts += made
        query_collection += [c] * len(made)
    queries = encoder.embed(query_texts, max_length=64, bulk=True)
    print(f"{len(pilots)} experts, {sum(len(p) for p in pilots.values())} pilots, {len(queries)} queries embedded "
          f"in {time.perf_counter() - started:.0f}s", flush=True)  # fmt: skip
    return pilots, queries, query_collection


def evaluate(args, pilots: dict[str, np.ndarray], queries: np.ndarray, query_collection: list[int]) -> None:
    """Grouped votes at each ``--probes`` against the exact vote: agreement and single-query latency."""
    names = sorted(pilots)
    source = np.asarray([COLLECTIONS.index(name.rsplit("-", 1)[0]) for name in names])
    by_source = np.stack([source == c for c in range(len(COLLECTIONS))], axis=1).astype(np.float32)
    exact = Router(pilots, aggregate="knn", search=PilotSearch(exact_max=None))
    exact_scores = exact.scores(queries)
    exact_top = source[exact_scores.argmax(axis=1)]
    print(f"exact vote: top expert of the query's own collection for {np.mean(exact_top == query_collection):.1%}")
    rows, steps, groups = [], [], None
    for reduced, probes in ((reduced, probes) for reduced in args.reduced_dims for probes in args.probes):
        search = PilotSearch(exact_max=0, probes=probes, group_size=args.group_size, reduced_dim=reduced)
        grouped = Router(pilots, aggregate="knn", search=search, groups=groups)
        groups = grouped.groups  # grouped once, reused for every count of probes
        scores = grouped.scores(queries)
        same_top = float(np.mean(source[scores.argmax(axis=1)] == exact_top))
        # Votes (5 nearest pilots) per collection: copies of one collection share pilots (titles), so the exact
        # vote's ties between copies are arbitrary; what routing sees is which collections the neighbours are of.
        votes, exact_votes = (np.floor(v * 5 + 1e-3) @ by_source for v in (scores, exact_scores))
        same_votes = float(np.mean(np.abs(votes - exact_votes).sum(axis=1) == 0))
        times: dict[str, list[float]] = {"exact": [], "grouped": []}
        for q in range(min(200, len(queries))):
            for label, router in (("exact", exact), ("grouped", grouped))[:: 1 if q % 2 else -1]:
                clock = time.perf_counter()
                router.scores(queries[q : q + 1])
                times[label].append((time.perf_counter() - clock) * 1000)
        exact_p50, grouped_p50 = (percentiles(times[label], [50])[0] for label in ("exact", "grouped"))
        step = {"probes": probes, "reduced_dim": reduced, "same_top_collection": round(same_top, 4), "same_votes": round(same_votes, 4),
                "exact_p50_ms": round(exact_p50, 3), "grouped_p50_ms": round(grouped_p50, 3)}  # fmt: skip
        steps.append(step)
        rows.append([probes, reduced or "all", same_top, same_votes, exact_p50, grouped_p50, grouped_p50 / exact_p50])
        print(step, flush=True)
    print()
    print(
        table(
            [
                "probes",
                "reduced dims",
                "same top collection",
                "same votes per collection",
                "exact p50 ms",
                "grouped p50 ms",
                "÷ exact",
            ],
            rows,
        )
    )
    write_json(
        args.json,
        {"experts": len(pilots), "pilots": args.pilots, "group_size": args.group_size, "queries": len(queries),
         "steps": steps},
    )  # fmt: skip


if __name__ == "__main__":
    main()
