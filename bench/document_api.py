"""Live documents end to end: upserts through the HTTP API against the batch job, and /search with deltas and filters.

Run by hand (not in CI), 10-15 minutes on 2 busy cores with the defaults::

    nice -n 5 python bench/document_api.py --json docs/benchmarks-2026-12-01/document_api.json
    python bench/document_api.py --docs 300 --upserts 64 --queries 40      # a quick look

Everything goes through a real ``rr serve`` (a subprocess on loopback) with the real MiniLM, so
the figures include what a client pays: HTTP, validation, the model, the log's fsync.

**Throughput**: the first ``--docs`` scifact documents are indexed by ``rr index``'s library
function (the batch job: embedding, docstore, FAISS, BM25, atomic publish) with the encoder opened
from the same settings as the server's; the baseline is its documents/s. Then the next ``--upserts`` documents are sent with ``PUT /admin/experts/{name}/documents``
in batches of 1, 16 and 64 (each acknowledged only when durable and searchable). Ratio: upsert
documents/s / batch job documents/s.

**Search latency**: one client, one query per request, k = 10, the server's default search (hybrid:
dense + BM25), the expert named (no routing), over scifact test queries. Four copies of the same
expert: *merged* (the baseline: nothing live), *delta 1%* and *delta 10%* (that share of the
documents re-sent with changed text: a delta row and a tombstone each), and *merged* again with a
metadata filter that matches 1% or 50% of the documents (a synthetic ``bucket`` field, 0-99, spread
over the documents). Every query runs under every variant in a shuffled order; the ratio is each
variant's median against the merged baseline's, for the client's wall time and for the server's
``search_ms`` stage (FAISS + BM25 + docstore: the part the live segments change).
"""

from __future__ import annotations

import json
import random
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, percentiles, start_rr_serve, table, write_json  # noqa: E402

ADMIN_KEY = "bench-admin-key"
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}


def scifact_rows(datasets: Path, count: int) -> list[dict]:
    with open(datasets / "scifact" / "corpus.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(count), handle)]
    for i, row in enumerate(rows):
        row["bucket"] = (i * 37) % 100  # every bucket value spread over the corpus
    return rows


def as_document(row: dict) -> dict:
    return {"id": row["_id"], "title": row.get("title", ""), "text": row["text"], "metadata": {"bucket": row["bucket"]}}


def build(root: Path, rows: list[dict]) -> float:
    """Index ``rows`` as expert 'merged' with the batch job; returns documents/s."""
    from app.engine.loading import open_encoder
    from app.offline.building import index_expert
    from app.settings import Settings
    from experts import create_expert

    corpus = root.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    encoder = open_encoder(Settings())  # as `rr index` and the server open it (1 torch thread on <= 2 cores)
    expert = create_expert(root, "merged", encoder=encoder)
    started = time.perf_counter()
    index_expert(expert, encoder, [corpus], progress=False)
    return len(rows) / (time.perf_counter() - started)


def copy_expert(root: Path, source: str, name: str) -> None:
    shutil.copytree(root / source, root / name, ignore=shutil.ignore_patterns("live", ".lock"))
    manifest = json.loads((root / name / "manifest.json").read_text())
    (root / name / "manifest.json").write_text(json.dumps({**manifest, "name": name}))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def upsert_throughput(http: httpx.Client, rows: list[dict], batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(rows), batch):
        docs = [as_document(row) for row in rows[start : start + batch]]
        response = http.put("/admin/experts/writes/documents", json={"documents": docs}, headers=HEADERS)
        response.raise_for_status()
    return len(rows) / (time.perf_counter() - started)


def revise(http: httpx.Client, expert: str, rows: list[dict]) -> None:
    for start in range(0, len(rows), 64):
        docs = [{**as_document(row), "text": row["text"] + " (revised)"} for row in rows[start : start + 64]]
        http.put(f"/admin/experts/{expert}/documents", json={"documents": docs}, headers=HEADERS).raise_for_status()


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--docs", type=int, default=1000, help="Documents of the batch-built expert.")
    parser.add_argument("--upserts", type=int, default=192, help="Documents upserted per batch size.")
    parser.add_argument("--queries", type=int, default=150, help="scifact test queries timed per variant.")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from bench.harness import judged_test_queries

    rows = scifact_rows(args.datasets, args.docs + 3 * args.upserts)
    base, extra = rows[: args.docs], rows[args.docs :]
    work = Path(tempfile.mkdtemp(prefix="rr-bench-documents-"))
    root = work / "experts"
    try:
        meter = LoadMeter()
        job_rate = build(root, base)
        for name in ("writes", "delta1", "delta10"):
            copy_expert(root, "merged", name)
        server, url = start_rr_serve(
            root,
            work / "server.log",
            dict(RR_ADMIN_KEY=ADMIN_KEY, RR_MERGE_MIN_CHANGES=str(10**9), RR_ROUTER_EVIDENCE="none"),
        )
        try:
            with httpx.Client(base_url=url, timeout=300) as http:
                rates = {}
                for i, batch in enumerate((1, 16, 64)):
                    rates[batch] = upsert_throughput(http, extra[i * args.upserts : (i + 1) * args.upserts], batch)
                shuffled = random.Random(0).sample(base, len(base))
                revise(http, "delta1", shuffled[: len(base) // 100])
                revise(http, "delta10", shuffled[: len(base) // 10])
                queries = [text for name, text in judged_test_queries(args.datasets, ["scifact"])][: args.queries]
                variants = {
                    "merged (baseline)": {"expert": "merged"},
                    "delta 1%": {"expert": "delta1"},
                    "delta 10%": {"expert": "delta10"},
                    "filter matching 1%": {"expert": "merged", "filter": {"bucket": 7}},
                    "filter matching 50%": {"expert": "merged", "filter": {"bucket": {"lt": 50}}},
                }
                wall: dict[str, list[float]] = {v: [] for v in variants}
                stage: dict[str, list[float]] = {v: [] for v in variants}
                for body in variants.values():  # warm every variant (first lexical search builds the delta's BM25)
                    http.post("/search", json={"query": queries[0], "k": 10, **body}).raise_for_status()
                for query in queries:
                    for name in random.sample(list(variants), len(variants)):
                        started = time.perf_counter()
                        response = http.post("/search", json={"query": query, "k": 10, **variants[name]})
                        response.raise_for_status()
                        wall[name].append((time.perf_counter() - started) * 1000)
                        stage[name].append(response.json()["timings_ms"]["search_ms"])
        finally:
            server.terminate()
            server.wait(timeout=60)
        load = meter.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nthroughput (real MiniLM, 256 tokens); {load.line()}")
    throughput_rows = [["batch job (index_expert)", job_rate, 1.0]]
    throughput_rows += [[f"PUT documents, batches of {b}", rate, rate / job_rate] for b, rate in rates.items()]
    print(table(["", "docs/s", "/ batch job"], throughput_rows))
    base_wall, base_stage = percentiles(wall["merged (baseline)"])[0], percentiles(stage["merged (baseline)"])[0]
    latency_rows = []
    for name in variants:
        p50, p95, _ = percentiles(wall[name])
        s50 = percentiles(stage[name])[0]
        latency_rows.append([name, p50, p95, p50 / base_wall, s50, s50 / base_stage])
    print(f"\nsearch latency, {len(queries)} queries per variant, hybrid, k=10")
    print(table(["variant", "p50 ms", "p95 ms", "p50 / merged", "search_ms p50", "/ merged"], latency_rows))
    write_json(
        args.json,
        {
            "docs": args.docs,
            "upserts": args.upserts,
            "queries": len(queries),
            "load": load.__dict__,
            "throughput": {"batch_job": job_rate, **{f"upsert_batch_{b}": r for b, r in rates.items()}},
            "latency_ms": {name: {"wall": wall[name], "search": stage[name]} for name in variants},
        },
    )


if __name__ == "__main__":
    main()
