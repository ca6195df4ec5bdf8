"""Length bucketing: the same rows embedded in passes of 1, 4, 8, 16, ... rows (sorted by length first).

Run by hand (not in CI), under a minute::

    nice -n 5 python bench/length_buckets.py --threads 1
    nice -n 5 python bench/length_buckets.py --threads 1 --documents      # scifact abstracts, 256 tokens

Queries: 32 random judged test queries (64 tokens at most) per repeat; documents:
the first 64 scifact abstracts. Every pass size runs on the same rows, the order
alternating per repeat; rows/s from the median. ``batch_tokens=None`` so that only
``batch_size`` cuts the passes. Behind ``Encoder``'s ``batch_tokens`` default
(docs/benchmarks.md, section 6).
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    LoadMeter,
    argument_parser,
    judged_test_queries,
    table,
    write_json,
)


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--documents", action="store_true", help="64 scifact abstracts (256 tokens) instead of queries")
    parser.add_argument("--sizes", default=None, help="rows per pass, comma-separated")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()

    from experts import Encoder

    encoder = Encoder(threads=args.threads, batch_tokens=None)
    rng = random.Random(0)
    if args.documents:
        with open(args.datasets / "scifact" / "corpus.jsonl") as handle:
            docs = [json.loads(line) for _, line in zip(range(64), handle)]
        pick, max_length = (lambda: [f"{d['title']} {d['text']}" for d in docs]), 256
        sizes = [int(v) for v in (args.sizes or "2,4,8,64").split(",")]
    else:
        queries = [text for _, text in judged_test_queries(args.datasets)]
        pick, max_length = (lambda: rng.sample(queries, 32)), 64
        sizes = [int(v) for v in (args.sizes or "1,4,8,16,32").split(",")]
    seconds: dict[int, list[float]] = {size: [] for size in sizes}
    meter = LoadMeter()
    for repeat in range(args.repeats):
        texts = pick()
        for size in sizes if repeat % 2 == 0 else list(reversed(sizes)):
            started = time.perf_counter()
            encoder.embed(texts, max_length=max_length, batch_size=size)
            seconds[size].append((time.perf_counter() - started) / len(texts))
    load = meter.stop()
    rows = [[size, 1 / statistics.median(values)] for size, values in seconds.items()]
    print(table(["rows per pass", "rows/s"], rows))
    print(f"\nmeasurement: {load.line()}")
    write_json(
        args.json,
        {
            "threads": args.threads,
            "documents": args.documents,
            "rows_per_s": {str(r[0]): round(r[1], 2) for r in rows},
            "load": load.__dict__,
        },
    )


if __name__ == "__main__":
    main()
