"""Long documents: retrieval quality with ``chunk`` (the new default of ``rr index``) against ``truncate``.

Run by hand (not in CI); about 15 minutes on 2 cores for the four collections with long documents::

    nice -n 5 python bench/long_documents.py --json docs/benchmarks-2026-12-01/long_documents.json
    python bench/long_documents.py --collections cranfield       # one collection

For each collection: how many documents are over the encoder's 256-token window, then the same
corpus indexed twice by the batch job (``build_index``) with the base MiniLM, once truncating each
document to its first 256 tokens and once splitting it into overlapping 256-token windows
(overlap 32), and nDCG@10 / Recall@100 (ir-measures) on the test qrels for dense search and for
the service's hybrid search (BM25 is per document either way). Vectors of passages that are one
window are computed once and shared by both builds, so only the extra windows cost time. What
chunking costs is reported as the vectors it embeds (and searches) against truncating: the
encoder's time and the dense search's both grow with them.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, table, write_json  # noqa: E402

DEFAULT = ["scifact", "cranfield", "cisi", "cacm"]


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--collections", nargs="+", default=DEFAULT)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from app.engine.retrieval import Retrieval, search_collection
    from app.offline.evaluation import score_run
    from experts import Encoder, make_split_fn
    from experts.labelled import judged_queries, read_qrels, read_queries
    from index import ChunkSettings, Collection, build_index

    encoder = Encoder()
    cache: dict[str, np.ndarray] = {}

    def embed(passages: list[str]) -> np.ndarray:
        todo = [p for p in dict.fromkeys(passages) if p not in cache]
        if todo:
            for passage, vector in zip(todo, encoder.embed(todo)):
                cache[passage] = vector
        return np.stack([cache[p] for p in passages])

    split = make_split_fn(encoder, max_tokens=256, overlap=32)
    results, rows = {}, []
    meter = LoadMeter()
    work = Path(tempfile.mkdtemp(prefix="rr-bench-long-"))
    try:
        for name in args.collections:
            folder = args.datasets / name
            corpus = folder / "corpus.jsonl"
            passages = []
            for line in corpus.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                passages.append(f"{row.get('title', '')} {row['text']}".strip())
            counts = encoder.token_counts(passages)
            long = sum(c > 256 for c in counts)
            qrels = read_qrels(folder / "qrels" / "test.tsv")
            queries = judged_queries(read_queries(folder / "queries.jsonl"), qrels)
            qids, texts = list(queries), list(queries.values())
            vectors = encoder.embed(texts, max_length=64)
            entry = {"documents": len(passages), "over_256_tokens": long}
            for policy in ("truncate", "chunk"):
                out = work / f"{name}-{policy}"
                started = time.perf_counter()
                build_index(
                    [corpus],
                    embed=embed,
                    dim=encoder.dim,
                    out_dir=out,
                    work_dir=work / f"{name}-{policy}-work",
                    build_key=f"bench-{policy}",
                    progress=False,
                    chunking=ChunkSettings(policy, 256, 32),
                    split=split,
                )
                seconds = time.perf_counter() - started
                with Collection.open(out) as collection:
                    entry[policy] = {
                        "index_seconds": round(seconds, 1),
                        "vectors": getattr(collection.dense, "chunk_count", collection.dense.ntotal),
                    }
                    for mode in ("dense", "hybrid"):
                        asks = [(100, Retrieval(mode=mode, candidates=200))] * len(texts)
                        found = search_collection(collection, texts, vectors, asks)
                        run = {q: {h.id: float(h.score) for h in hits} for q, hits in zip(qids, found)}
                        entry[policy][mode] = score_run(qrels, run)
            results[name] = entry
            for mode in ("dense", "hybrid"):
                t, c = entry["truncate"][mode], entry["chunk"][mode]
                rows.append(
                    [
                        f"{name} {mode}",
                        long,
                        t["nDCG@10"],
                        c["nDCG@10"],
                        100 * (c["nDCG@10"] - t["nDCG@10"]),
                        t["R@100"],
                        c["R@100"],
                        entry["chunk"]["vectors"] / entry["truncate"]["vectors"],
                    ]
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = meter.stop()
    print(f"\n{load.line()}")
    headers = [
        "collection / search",
        "docs > 256 tok",
        "nDCG@10 truncate",
        "chunk",
        "points",
        "R@100 truncate",
        "chunk",
        "vectors chunk / truncate",
    ]
    print(table(headers, rows))
    write_json(args.json, {"collections": results, "load": load.__dict__})


if __name__ == "__main__":
    main()
