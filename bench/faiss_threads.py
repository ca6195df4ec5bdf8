"""FAISS search threads: single-query and 64-query flat searches with 1 thread and with FAISS's default.

Run by hand (not in CI), a few seconds::

    python bench/faiss_threads.py                 # npl's size: 11,426 vectors of dim 384
    python bench/faiss_threads.py --vectors 50000

Evidence for ``RR_FAISS_THREADS`` (docs/configuration.md). A flat inner-product
index of random unit vectors (a flat search's cost does not depend on the
values), searched for the top 200 (the service's hybrid candidates), in
alternating rounds so that the machine's load falls on both settings alike.
Printed: p50 and p90 per search, and the ratio of 1 thread to the default.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import argument_parser, table  # noqa: E402


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument("--vectors", type=int, default=11_426)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, args.dim)).astype(np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(args.dim)
    index.add(vectors)
    queries = rng.standard_normal((64, args.dim)).astype(np.float32)
    faiss.normalize_L2(queries)
    default = faiss.omp_get_max_threads()
    times: dict[tuple[int, str], list[float]] = {}
    for _ in range(args.rounds):
        for threads in (default, 1):
            faiss.omp_set_num_threads(threads)
            for i in range(100):
                started = time.perf_counter()
                index.search(queries[i % 64 : i % 64 + 1], 200)
                times.setdefault((threads, "1 query"), []).append(time.perf_counter() - started)
            for _ in range(5):
                started = time.perf_counter()
                index.search(queries, 200)
                times.setdefault((threads, "64 queries"), []).append(time.perf_counter() - started)
    rows = []
    for shape in ("1 query", "64 queries"):
        ours, theirs = np.asarray(times[1, shape]), np.asarray(times[default, shape])
        for threads, values in ((default, theirs), (1, ours)):
            p50 = float(np.median(values)) * 1000
            rows.append([shape, threads, round(p50, 2), round(float(np.percentile(values, 90)) * 1000, 2)])
        rows.append([shape, "1 / default", round(float(np.median(ours) / np.median(theirs)), 2), ""])
    print(f"{args.vectors} vectors of dim {args.dim}, top 200; FAISS's default threads here: {default}")
    print(table(["search", "threads", "p50 ms", "p90 ms"], rows))


if __name__ == "__main__":
    main()
