"""Search latency while one 2048-input ``/v1/embeddings`` request runs, against the same on an older checkout.

Run by hand (not in CI), about 4 minutes with the defaults::

    git worktree add /tmp/before f913888     # the last commit before turns and the pass lock
    python bench/embedding_turns.py --baseline /tmp/before --json embedding_turns.json
    python bench/embedding_turns.py --inputs 256 --idle 5      # a quick look, this checkout only

``rr serve`` on the same stand-in experts (five collections, the first
``--docs`` documents of each, random trained-shaped adapters: see
bench/search_load.py), from this checkout with its defaults, then (with
``--baseline``) from another checkout, run with ``RR_MAX_QUERIES`` and
``RR_MAX_EMBEDDING_INPUTS`` raised so it takes the request. Against each: one client
sends routed ``/search`` requests back to back (judged test queries of the
five collections, k = 10) for ``--idle`` seconds with nothing else running,
then again while a second client posts one ``/v1/embeddings`` request of
``--inputs`` scifact abstracts (``model: base``, ``input_type: document``),
until that request returns. Reported per server: search p50 and p95 idle and
busy, busy/idle ratios, and how long the embeddings request took.
"""

from __future__ import annotations

import json
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    DEFAULT_DATASETS,
    REPO,
    LoadMeter,
    argument_parser,
    judged_test_queries,
    percentiles,
    start_rr_serve,
    table,
    write_json,
)
from bench.search_load import build_stand_ins  # noqa: E402


def abstracts(datasets: Path, count: int) -> list[str]:
    """The first ``count`` scifact documents as title + text (OpenAI-sized inputs: about 300 tokens each)."""
    rows = []
    with open(datasets / "scifact" / "corpus.jsonl", encoding="utf-8") as corpus:
        for line in corpus:
            row = json.loads(line)
            rows.append(f"{row.get('title', '')}. {row.get('text', '')}".strip())
            if len(rows) == count:
                break
    return rows


def searches(url: str, queries: list[str], stop: threading.Event | float) -> list[float]:
    """Milliseconds of back-to-back /search requests until ``stop`` is set (or that many seconds have passed)."""
    latencies: list[float] = []
    deadline = time.monotonic() + stop if isinstance(stop, float) else None
    with httpx.Client(base_url=url, timeout=120) as http:
        i = 0
        while not (stop.is_set() if isinstance(stop, threading.Event) else time.monotonic() >= deadline):  # type: ignore[operator]
            started = time.perf_counter()
            http.post("/search", json={"query": queries[i % len(queries)], "k": 10}).raise_for_status()
            latencies.append((time.perf_counter() - started) * 1000)
            i += 1
    return latencies


def measure(url: str, queries: list[str], inputs: list[str], idle_s: float, pid: int) -> dict:
    searches(url, queries[:20], 3.0)  # warm-up
    idle = searches(url, queries, idle_s)
    done = threading.Event()
    embed_ms: list[float] = []

    def embed() -> None:
        started = time.perf_counter()
        body = {"model": "base", "input": inputs, "input_type": "document"}
        httpx.post(f"{url}/v1/embeddings", json=body, timeout=1800).raise_for_status()
        embed_ms.append((time.perf_counter() - started) * 1000)
        done.set()

    meter = LoadMeter([pid])
    worker = threading.Thread(target=embed)
    worker.start()
    busy = searches(url, queries, done)
    worker.join()
    idle_p50, idle_p95 = percentiles(idle, [50, 95])
    busy_p50, busy_p95 = percentiles(busy, [50, 95])
    return {
        "idle": {"searches": len(idle), "p50_ms": round(idle_p50, 1), "p95_ms": round(idle_p95, 1)},
        "busy": {
            "searches": len(busy),
            "p50_ms": round(busy_p50, 1),
            "p95_ms": round(busy_p95, 1),
            "max_ms": round(max(busy), 1),
        },
        "p50_ratio": round(busy_p50 / idle_p50, 2),
        "p95_ratio": round(busy_p95 / idle_p95, 2),
        "embeddings_s": round(embed_ms[0] / 1000, 1),
        "load": meter.stop().__dict__,
    }


def main() -> None:
    parser = argument_parser(__doc__, datasets=False)
    parser.add_argument("--datasets", type=Path, default=DEFAULT_DATASETS)
    parser.add_argument("--docs", type=int, default=300, help="documents per stand-in expert")
    parser.add_argument("--inputs", type=int, default=2048, help="inputs of the one embeddings request")
    parser.add_argument("--idle", type=float, default=20.0, help="seconds of searches on the idle server")
    parser.add_argument("--baseline", type=Path, default=None, help="another checkout to run the same against")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    queries = [text for _, text in judged_test_queries(args.datasets)]
    inputs = abstracts(args.datasets, args.inputs)
    inputs_limit = str(max(2048, args.inputs))
    # Each server with its defaults but the limits this request needs; the older code has one limit for
    # queries and inputs (RR_MAX_QUERIES) and one body limit.
    checkouts = {"this checkout": (REPO, {"RR_MAX_EMBEDDING_INPUTS": inputs_limit})}
    if args.baseline is not None:
        older = {"RR_MAX_QUERIES": inputs_limit, "RR_MAX_BODY_BYTES": str(64 << 20)}
        checkouts["baseline"] = (args.baseline.resolve(), older)
    results = {}
    with tempfile.TemporaryDirectory(prefix="rr-bench-turns-") as scratch:
        root = Path(scratch) / "experts"
        print(f"building stand-in experts ({args.docs} documents each) ...", flush=True)
        build_stand_ins(root, args.datasets, args.docs)
        for name, (checkout, env) in checkouts.items():
            log = Path(scratch) / f"{name.replace(' ', '-')}.log"
            process, url = start_rr_serve(root, log, env, checkout=checkout)
            try:
                results[name] = measure(url, queries, inputs, args.idle, process.pid)
            finally:
                process.send_signal(signal.SIGINT)
                process.wait(60)
            print(f"  {name} ({checkout}): {results[name]}", flush=True)

    rows = [
        [
            name,
            r["idle"]["p50_ms"],
            r["busy"]["p50_ms"],
            r["p50_ratio"],
            r["idle"]["p95_ms"],
            r["busy"]["p95_ms"],
            r["p95_ratio"],
            r["busy"]["searches"],
            r["embeddings_s"],
        ]
        for name, r in results.items()
    ]
    headers = ["server", "idle p50", "busy p50", "ratio", "idle p95", "busy p95", "ratio", "busy n", "embed s"]
    print(table(headers, rows))
    write_json(
        args.json,
        {
            "inputs": args.inputs,
            "docs": args.docs,
            "checkouts": {k: str(v[0]) for k, v in checkouts.items()},
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
