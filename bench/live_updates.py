"""Live updates: upsert throughput against the batch indexing job, and search latency with a delta segment.

Run by hand (not in CI), about 4 minutes with the defaults::

    nice -n 5 python bench/live_updates.py --json live_updates.json
    python bench/live_updates.py --docs 64 --queries 50        # a quick look

**Throughput** (real MiniLM, the service's ``Encoder.embed``, 256 tokens, batch 64): the first
``--docs`` scifact documents indexed by ``build_index`` (the batch job, BM25 included, atomic
publish) against the next ``--docs`` documents upserted into a :class:`LiveCollection` over it,
in batches of 1, 16 and 64 documents (each upsert: embed, commit to the SQLite log with
``synchronous=FULL``, rebuild the delta's FAISS and BM25 indexes, swap). Ratio: upsert docs/s /
job docs/s. The same upserts with a stand-in encoder (a hash, no model) show what the write path
itself costs, at an empty delta and at a delta of 10% of the collection.

**Search latency** (scifact's whole corpus, 5,183 documents, with a stand-in 384-d vector per
document so that building takes seconds; exact Flat search does the same work whatever the
vectors hold, and BM25 runs on the real texts): one query at a time, k = 10, dense and lexical,
over scifact's test queries, for

- **merged**: a plain ``Collection`` of the same documents, fully merged (the baseline);
- **live, empty delta**: the ``LiveCollection`` wrapper with nothing in the delta;
- **delta 1% / 10%**: that share of the documents re-sent with changed text (each an upsert
  that tombstones the old row and adds a delta row), searched through the live view;
- **filter 1% / 50%**: a metadata filter (``bucket``, spread over the documents) matching that
  share, resolved with ``LiveCollection.select`` and passed as ``allowed=``, delta 1%.

Every query runs under every variant in a shuffled order, so load drift hits all alike; the
ratio is each variant's median against the merged baseline's, in the same run.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, percentiles, table, write_json  # noqa: E402

MAX_LENGTH = 256
BATCH = 64
DIM = 384


def stand_in_embed(passages: list[str]) -> np.ndarray:
    """A unit vector per passage, seeded by its hash: (n, 384) float32, no model."""
    out = np.empty((len(passages), DIM), dtype=np.float32)
    for i, passage in enumerate(passages):
        seed = int.from_bytes(hashlib.sha256(passage.encode()).digest()[:8], "little")
        vector = np.random.default_rng(seed).standard_normal(DIM)
        out[i] = vector / np.linalg.norm(vector)
    return out


def read_records(corpus: Path, limit: int | None = None) -> list[dict]:
    records = []
    with open(corpus, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            if record.get("title") or record.get("text"):
                records.append(record)
            if limit is not None and len(records) >= limit:
                break
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def documents(records: list[dict]):
    from index import Document

    return [Document(r["_id"], r.get("title", ""), r["text"], r.get("metadata", {})) for r in records]


def upsert_rate(live, docs, batch: int) -> float:
    started = time.perf_counter()
    for start in range(0, len(docs), batch):
        live.upsert(docs[start : start + batch])
    return len(docs) / (time.perf_counter() - started)


# ---------------------------------------------------------------------- throughput
def throughput(args, scratch: Path) -> dict:
    from experts import Encoder
    from index import Collection, build_index
    from index.live.live_collection import LiveCollection

    corpus = args.datasets / "scifact" / "corpus.jsonl"
    records = read_records(corpus, 4 * args.docs)
    base, fresh = records[: args.docs], records[args.docs :]
    encoder = Encoder(max_length=MAX_LENGTH, batch_size=BATCH)
    encoder.embed(["warm-up"], max_length=MAX_LENGTH)

    def embed(texts: list[str]) -> np.ndarray:
        return encoder.embed(texts, max_length=MAX_LENGTH)

    meter = LoadMeter()
    started = time.perf_counter()
    build_index(
        [write_jsonl(scratch / "base.jsonl", base)],
        embed=embed,
        dim=encoder.dim,
        out_dir=scratch / "tp-gen",
        work_dir=scratch / ".tp-work",
        build_key="bench",
        progress=False,
    )
    job = len(base) / (time.perf_counter() - started)
    rows, rates = [["batch job (build_index)", len(base), round(job, 2), 1.0]], {"job": job}
    for batch in (1, 16, 64):
        chunk = documents(fresh[: args.docs])
        fresh = fresh[args.docs :]
        main = Collection.open(scratch / "tp-gen")
        with LiveCollection.open(main, scratch / f"tp-{batch}.sqlite", embed=embed) as live:
            rate = upsert_rate(live, chunk, batch)
        rates[f"upsert_batch_{batch}"] = rate
        rows.append([f"upsert, batches of {batch}", len(chunk), round(rate, 2), round(rate / job, 3)])
    load = meter.stop()
    print(table(["MiniLM", "docs", "docs/s", "/ job"], rows))
    return {"rows": rows, "rates": rates, "load": load.__dict__}


def write_path(scratch: Path, generation: Path, records: list[dict]) -> dict:
    """Upsert docs/s with the stand-in encoder: what the log, the delta rebuild and the swap cost."""
    from index import Collection
    from index.live.live_collection import LiveCollection

    rows = []
    n = len(records)
    for delta_share in (0.0, 0.10):
        main = Collection.open(generation)
        with LiveCollection.open(main, scratch / f"wp-{delta_share}.sqlite", embed=stand_in_embed) as live:
            if delta_share:
                prefill = documents([{**r, "text": r["text"] + " (v2)"} for r in records[: int(delta_share * n)]])
                for start in range(0, len(prefill), 256):
                    live.upsert(prefill[start : start + 256])
            probe = documents([{**r, "_id": f"new-{r['_id']}"} for r in records[-256:]])
            for batch in (1, 64):
                part = probe[:64] if batch == 1 else probe[64:]
                rate = upsert_rate(live, part, batch)
                rows.append([f"delta {delta_share:.0%}, batches of {batch}", len(part), round(rate, 1), "-"])
            # The delta's BM25 index is rebuilt by the first lexical search after a write, not by the writer.
            after_write, plain = [], []
            for i, extra in enumerate(documents([{**r, "_id": f"pair-{r['_id']}"} for r in records[:20]])):
                live.upsert([extra])
                for timings in (after_write, plain):
                    started = time.perf_counter()
                    live.search_lexical([records[i]["text"][:80]], 10)
                    timings.append((time.perf_counter() - started) * 1000)
            rows.append(
                [
                    f"delta {delta_share:.0%}, lexical search right after a write (ms)",
                    20,
                    round(float(np.median(after_write)), 2),
                    round(float(np.median(plain)), 2),
                ]
            )
    print(table(["stand-in encoder", "docs", "docs/s or ms", "ms, no write before"], rows))
    return {"rows": rows}


# ---------------------------------------------------------------------- latency
def latency(args, scratch: Path) -> dict:
    from bench.harness import judged_test_queries
    from index import Collection, build_index
    from index.live.live_collection import LiveCollection

    records = read_records(args.datasets / "scifact" / "corpus.jsonl")
    rng = random.Random(0)
    for i, record in enumerate(records):
        record["metadata"] = {"bucket": i % 100}
    corpus = write_jsonl(scratch / "scifact.jsonl", records)
    build_index(
        [corpus],
        embed=stand_in_embed,
        dim=DIM,
        out_dir=scratch / "lat-gen",
        work_dir=scratch / ".lat-work",
        build_key="bench",
        progress=False,
    )
    queries = [text for _, text in judged_test_queries(args.datasets, ["scifact"])][: args.queries]
    vectors = stand_in_embed(queries)
    n = len(records)

    merged = Collection.open(scratch / "lat-gen")
    lives = {}
    for share in (0.0, 0.01, 0.10):
        main = Collection.open(scratch / "lat-gen")
        live = LiveCollection.open(main, scratch / f"lat-{share}.sqlite", embed=stand_in_embed)
        changed = rng.sample(records, int(share * n))
        docs = documents([{**r, "text": r["text"] + " revised"} for r in changed])
        for start in range(0, len(docs), 256):
            live.upsert(docs[start : start + 256])
        lives[share] = live
    filters = {"filter 1%": {"bucket": 0}, "filter 50%": {"bucket": {"lt": 50}}}
    allowed = {name: lives[0.01].select(f) for name, f in filters.items()}

    def dense(target, i, allow=None):
        if target is merged:
            return merged.hits(*merged.dense.search(vectors[i : i + 1], 10))
        view = target.view()
        return view.hits(*view.search_dense(vectors[i : i + 1], 10, allowed=allow))

    def lexical(target, i, allow=None):
        if target is merged:
            return merged.hits(*merged.search_lexical([queries[i]], 10))
        view = target.view()
        return view.hits(*view.search_lexical([queries[i]], 10, allowed=allow))

    variants = {
        "merged (baseline)": lambda f, i: f(merged, i),
        "live, empty delta": lambda f, i: f(lives[0.0], i),
        "delta 1%": lambda f, i: f(lives[0.01], i),
        "delta 10%": lambda f, i: f(lives[0.10], i),
        "filter 1% (delta 1%)": lambda f, i: f(lives[0.01], i, allowed["filter 1%"]),
        "filter 50% (delta 1%)": lambda f, i: f(lives[0.01], i, allowed["filter 50%"]),
    }
    timings = {(side, name): [] for side in ("dense", "lexical") for name in variants}
    meter = LoadMeter()
    for i in range(len(queries)):
        order = [(side, name) for side in ("dense", "lexical") for name in variants]
        rng.shuffle(order)
        for side, name in order:
            function = dense if side == "dense" else lexical
            started = time.perf_counter()
            variants[name](function, i)
            timings[(side, name)].append((time.perf_counter() - started) * 1000)
    load = meter.stop()
    rows = []
    for side in ("dense", "lexical"):
        base = percentiles(timings[(side, "merged (baseline)")], [50])[0]
        for name in variants:
            p50, p95 = percentiles(timings[(side, name)], [50, 95])
            rows.append([f"{side}: {name}", round(p50, 3), round(p95, 3), round(p50 / base, 2)])
    print(table(["variant (k=10, one query)", "p50 ms", "p95 ms", "p50 / merged"], rows))
    writes = write_path(scratch, scratch / "lat-gen", records)
    for live in lives.values():
        live.close()
    merged.close()
    return {"documents": n, "queries": len(queries), "rows": rows, "load": load.__dict__, "write_path": writes}


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument(
        "--docs", type=int, default=192, help="documents the job indexes; as many are upserted per batch size"
    )
    parser.add_argument("--queries", type=int, default=300, help="scifact test queries timed per variant")
    parser.add_argument("--skip-throughput", action="store_true", help="only the latency part (no model needed)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-live-") as scratch:
        results = {"latency": latency(args, Path(scratch))}
        if not args.skip_throughput:
            results["throughput"] = throughput(args, Path(scratch))
    write_json(args.json, results)


if __name__ == "__main__":
    main()
