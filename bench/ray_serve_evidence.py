"""Corpus votes on Ray Serve: routed-search latency with ``RR_ROUTER_EVIDENCE=documents+bm25`` against ``none``.

Run by hand (not in CI), about 4 minutes with the defaults on 2 cores::

    nice -n 5 python bench/ray_serve_evidence.py --json ray_serve_evidence.json
    python bench/ray_serve_evidence.py --docs 100 --queries 20                   # a quick look

Builds one expert per collection (the first ``--docs`` documents, bundled
MiniLM, BM25 included, a random rank-8 adapter so every query pays the adapter
pass, pilots from the documents), then serves them twice on one local Ray
(``num_cpus=2``): app ``none`` (pilot votes only) and app ``votes`` (corpus votes,
each routed request first asks every expert's searcher for its top-20 dense and
BM25 scores). Each app has one ingress and one searcher replica holding every
expert (``max_experts`` = experts). One client sends the same judged test
queries, one per request, alternating between the apps, after a warm-up that
loads every expert (other queries: each ingress caches base vectors). The same
is timed in process on ``SearchEngine`` (what ``rr serve`` runs, without HTTP or
the micro-batcher), one encoder per engine, for comparison. Ratios are p50
latency with votes / without, in the same run.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, judged_test_queries, percentiles, table, write_json  # noqa: E402
from bench.synthetic_experts import corpus_slice, random_adapters  # noqa: E402


def build_root(root: Path, collections: list[str], *, datasets: Path, docs: int) -> None:
    import json
    import shutil

    from app.offline.building import build_pilots, index_expert
    from experts import Encoder, ExpertDir, create_expert

    encoder = Encoder()
    adapters = random_adapters(encoder, root.parent / "adapters", len(collections))
    for name, adapter in zip(collections, adapters):
        if (root / name / "manifest.json").is_file():
            if ExpertDir(root / name).read_manifest().pilots is not None:
                continue  # built by an earlier run with the same --work
            shutil.rmtree(root / name)  # left half-built by an interrupted run
        corpus = corpus_slice(datasets, name, root.parent / "corpora", docs)
        expert = create_expert(root, name, encoder=encoder, adapter_from=adapter)
        index_expert(expert, encoder, [corpus], progress=False)
        texts = [f"{row.get('title', '')} {row['text']}" for row in map(json.loads, corpus.read_text().splitlines())]
        build_pilots(expert, encoder, texts)


def time_http(url: str, queries: list[str]) -> list[float]:
    import httpx

    seconds = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for query in queries:
            started = time.perf_counter()
            response = client.post("/search", json={"query": query, "k": 10})
            seconds.append(time.perf_counter() - started)
            response.raise_for_status()
    return seconds


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", default="scifact,cranfield,cacm,cisi,npl")
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--queries", type=int, default=60)
    parser.add_argument("--work", type=Path, default=None, help="keep the experts here between runs")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    collections = args.collections.split(",")
    work = args.work or Path(tempfile.mkdtemp(prefix="rr-ray-votes-"))
    root = work / "experts"
    build_root(root, collections, datasets=args.datasets, docs=args.docs)
    judged = [text for _, text in judged_test_queries(args.datasets, collections)]
    queries, warm_up = judged[: args.queries], judged[args.queries : args.queries + 10]  # warm-ups are not timed

    import ray
    from ray import serve

    from app.engine.engine import SearchEngine
    from app.ray_serve.deployment import build_app
    from app.settings import Settings
    from experts import Encoder

    # In process first (rr serve's engine), then on Serve. One encoder per engine: the base-vector cache of
    # one must not answer for the other; queries alternate between them.
    engines = {
        evidence: SearchEngine.open(
            root, Encoder(threads=1), replace(Settings(data_dir=root).engine_config(), evidence=evidence)
        )
        for evidence in ("none", "documents+bm25")
    }
    in_process: dict[str, list[float]] = {evidence: [] for evidence in engines}
    for engine in engines.values():
        engine.search(warm_up, k=10)
    for query in queries:
        for evidence, engine in engines.items():
            started = time.perf_counter()
            engine.search([query], k=10)
            in_process[evidence].append(time.perf_counter() - started)
    for engine in engines.values():
        engine.close()
    del engines

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    port = 8123
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    for name, evidence in (("none", "none"), ("votes", "documents+bm25")):
        settings = Settings(data_dir=root, router_evidence=evidence, torch_threads=1)
        app = build_app(settings, max_experts=len(collections), searchers=1, searcher_cpus=0.5, ingress_cpus=0.5)
        serve.run(app, name=name, route_prefix=f"/{name}")
    urls = {name: f"http://127.0.0.1:{port}/{name}" for name in ("none", "votes")}
    for url in urls.values():  # warm-up: every expert loaded on its replica
        time_http(url, warm_up)
    meter = LoadMeter()
    served: dict[str, list[float]] = {"none": [], "votes": []}
    for query in queries:  # alternate, so both see the same machine load
        for name, url in urls.items():
            served[name] += time_http(url, [query])
    reading = meter.stop()
    serve.shutdown()
    ray.shutdown()

    rows, payload = [], {"collections": collections, "docs": args.docs, "queries": len(queries), "load": reading.line()}
    for label, without, with_votes in (
        ("SearchEngine in process", in_process["none"], in_process["documents+bm25"]),
        ("Ray Serve, HTTP", served["none"], served["votes"]),
    ):
        p_without, p_with = percentiles(without, (50, 95)), percentiles(with_votes, (50, 95))
        ratio = p_with[0] / p_without[0]
        rows.append([label, p_without[0] * 1000, p_without[1] * 1000, p_with[0] * 1000, p_with[1] * 1000, ratio])
        payload[label] = {"p50_ms_none": p_without[0] * 1000, "p50_ms_votes": p_with[0] * 1000, "ratio_p50": ratio}
    print(table(["", "p50 ms none", "p95 ms none", "p50 ms votes", "p95 ms votes", "p50 ratio"], rows))
    print(f"Serve phase: {reading.line()}")
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
