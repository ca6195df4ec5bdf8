"""From how many pilots is the grouped knn vote faster than the exact one? Single queries and batches.

Run by hand (not in CI; about a minute on 2 cores)::

    python bench/pilot_crossover.py --json pilot_crossover.json

``RR_ROUTER_PILOT_EXACT_MAX`` decides, by the number of pilots alone, whether
the router compares a query with every pilot (one matrix product for a whole
batch) or only with the pilots of its nearest groups (``router/pilot_groups.py``:
a loop over the batch's queries). A query's decision must not depend on the
batch it lands in, so the switch cannot be per batch: this times both at each
count of pilots for batches of 1, 8 and 32 queries (``Router.scores``, the
two alternating), with numpy's BLAS and FAISS threads as ``rr serve`` sets
them (``RR_BLAS_THREADS``, ``RR_FAISS_THREADS``: one each on 2 cores). Pilots:
``--per-expert`` random unit vectors around 16 centres per expert (the cost
does not depend on what they hold); queries: random unit vectors.

Caches: in the service a forward pass (about 90 MB of weights for
all-MiniLM-L6-v2) comes between two routings, so the pilots are read from
memory each time. Before each timed call this reads ``--evict-mb`` of other
memory (0: the pilots stay cached from one call to the next, as they never do
in the service).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.loading import apply_search_threads  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.harness import LoadMeter, argument_parser, percentiles, table, write_json  # noqa: E402
from router import PilotSearch, Router  # noqa: E402

DIM = 384


def pilots_of(experts: int, per_expert: int, seed: int) -> dict[str, np.ndarray]:
    """``experts`` experts' pilots: unit vectors around 16 random centres each."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in range(experts):
        centres = rng.standard_normal((16, DIM))
        x = centres[rng.integers(0, 16, per_expert)] + 0.7 * rng.standard_normal((per_expert, DIM))
        out[f"e{e:03d}"] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    return out


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument("--experts", default="5,8,10,12,15,20,30", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--per-expert", type=int, default=1000, help="pilots per expert (the demo's: 1,000)")
    parser.add_argument("--batches", default="1,8,32", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--calls", type=int, default=60, help="timed calls per count, batch size and method")
    parser.add_argument("--evict-mb", type=int, default=96, help="memory read before each call (0: warm caches)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    other = np.ones(args.evict_mb * 2**20 // 8)
    settings = Settings()
    apply_search_threads(settings)
    rng = np.random.default_rng(1)
    queries = rng.standard_normal((max(args.batches) * args.calls, DIM)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    everyone = pilots_of(max(args.experts), args.per_expert, seed=0)
    meter = LoadMeter()
    steps, rows = [], []
    for experts in args.experts:
        pilots = {name: everyone[name] for name in sorted(everyone)[:experts]}
        exact = Router(pilots, aggregate="knn", search=PilotSearch(exact_max=None))
        grouped = Router(pilots, aggregate="knn", search=PilotSearch(exact_max=0))
        step: dict = {"pilots": experts * args.per_expert, "experts": experts}
        for batch in args.batches:
            times: dict[str, list[float]] = {"exact": [], "grouped": []}
            for call in range(args.calls):
                part = queries[call * batch : (call + 1) * batch]
                for name, router in (("exact", exact), ("grouped", grouped))[:: 1 if call % 2 else -1]:
                    other.sum()  # what a forward pass does to the caches
                    started = time.perf_counter()
                    router.scores(part)
                    times[name].append((time.perf_counter() - started) * 1000)
            for name, values in times.items():
                step[f"{name}_{batch}_p50_ms"] = round(percentiles(values, [50])[0], 3)
        steps.append(step)
        rows.append(
            [step["pilots"]]
            + [f"{step[f'exact_{b}_p50_ms']:.2f} / {step[f'grouped_{b}_p50_ms']:.2f}" for b in args.batches]
        )
        print(step, flush=True)
    load = meter.stop()
    print()
    print(table(["pilots", *(f"{b} queries: exact / grouped ms" for b in args.batches)], rows))
    print(f"measurement: {load.line()}")
    write_json(
        args.json,
        {"per_expert": args.per_expert, "evict_mb": args.evict_mb, "blas_threads": settings.blas_threads, "faiss_threads": settings.faiss_threads,
         "steps": steps, "load": load.__dict__},
    )  # fmt: skip


if __name__ == "__main__":
    main()
