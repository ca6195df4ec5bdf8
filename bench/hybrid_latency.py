"""What do hybrid search and corpus votes cost per query? Single-query latency, each mode against dense.

Run by hand (not in CI), on a root of experts with BM25 indexes::

    RR_DATA_DIR=/tmp/trained python bench/hybrid_latency.py --datasets ../shared/datasets --queries 200

One engine, one query at a time (the latency a lone client sees, without the
HTTP server or the micro-batcher). Every query is timed under every variant
in turn, in a shuffled order, so drift in the machine's load hits all of them
alike; the figures are medians and 95th percentiles, and ratios to the plain
variant (dense search, pilot votes only) timed in the same run.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.engine.engine import SearchEngine  # noqa: E402
from app.engine.loading import open_encoder  # noqa: E402
from app.engine.retrieval import RetrievalOptions  # noqa: E402
from app.offline.evaluation import read_test_set  # noqa: E402
from app.settings import Settings  # noqa: E402

COLLECTIONS = ("scifact", "cranfield", "cacm", "cisi", "npl")
#: (label, search mode, corpus evidence)
VARIANTS = (
    ("dense, pilot votes", "dense", "none"),
    ("hybrid, pilot votes", "hybrid", "none"),
    ("lexical, pilot votes", "lexical", "none"),
    ("dense, + corpus votes", "dense", "documents+bm25"),
    ("hybrid, + corpus votes (default)", "hybrid", "documents+bm25"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", type=Path, default=REPO.parent / "shared" / "datasets")
    parser.add_argument("--queries", type=int, default=200, help="test queries, drawn evenly from the collections")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    settings = Settings()
    encoder = open_encoder(settings)
    engine = SearchEngine.open(settings.data_dir, encoder, settings.engine_config())
    names = [c for c in COLLECTIONS if c in engine.experts]
    pools = [read_test_set(args.datasets, c).texts for c in names]
    rng = random.Random(args.seed)
    queries = [rng.choice(pools[i % len(pools)]) for i in range(args.queries)]
    engine.search(queries[:4], k=args.k)  # warm up: first-call allocations, page cache
    times: dict[str, list[float]] = {label: [] for label, _, _ in VARIANTS}
    for query in queries:
        order = list(VARIANTS)
        rng.shuffle(order)
        for label, mode, evidence in order:
            engine.evidence = evidence  # type: ignore[assignment]
            started = time.perf_counter()
            engine.search([query], k=args.k, retrieval=RetrievalOptions(mode=mode))
            times[label].append((time.perf_counter() - started) * 1000)
    baseline = float(np.median(times[VARIANTS[0][0]]))
    print(f"{len(queries)} queries, k={args.k}, experts: {', '.join(names)}; ms per query")
    print(f"{'variant':34s} {'p50':>8s} {'p95':>8s} {'p50 / dense':>12s}")
    for label, values in times.items():
        p50, p95 = np.percentile(values, [50, 95])
        print(f"{label:34s} {p50:8.1f} {p95:8.1f} {p50 / baseline:12.2f}")
    engine.close()


if __name__ == "__main__":
    main()
