"""Many experts: memory (RSS) and single-query search latency with 1, 5, 20 and 50 experts loaded.

Run by hand (not in CI), about 3 minutes with the defaults (most of it building the stand-ins)::

    nice -n 5 python bench/many_experts.py --json many_experts.json
    python bench/many_experts.py --counts 1,5 --queries 20                  # a quick look
    python bench/many_experts.py --setting router_evidence=none             # routing by pilots alone

The experts are stand-ins (bench/synthetic_experts.py): random LoRA adapters
of the default recipe's shape (rank 8 on query/key/value/dense), marked
trained so every routed query runs its adapter pass, each with an index of
``--docs`` real documents (random vectors, BM25 included) and 4 random
pilots. They are built once in a temporary root, then measured in a fresh
process that loads the base encoder, records its RSS, and adds experts to a
``SearchEngine`` (``load_expert``, checksums verified, as the service does) in
steps up to each count. At each step: RSS after loading, then the p50 of
``--queries`` single-query searches (``engine.search([query], k=10)``:
base pass, router, adapter pass, FAISS, documents; no HTTP) over real test
queries, and RSS after searching (the memory-mapped vectors that the
searches touched count from then on). Then the experts are removed in steps
back down to 1 and the latencies measured again, so a drift of the
machine's load is spread evenly over the counts (ABBA); latency per count is
the pooled p50 of both passes.

Targets: RSS grows per expert by about its adapter + index (no copy of the
base model per expert); p50 at 50 experts <= 1.2 x p50 at 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    LoadMeter,
    argument_parser,
    current_rss_mib,
    judged_test_queries,
    other_heavy_processes,
    percentiles,
    table,
    verdict,
    write_json,
)


def measure_child(
    root: Path, counts: list[int], queries: list[str], out: Path, overrides: dict[str, str], kind: str = "now"
) -> None:
    """Hidden mode (a fresh process): load experts in steps, time searches, record RSS."""
    from app.engine.engine import SearchEngine
    from app.engine.loading import load_expert
    from app.settings import Settings
    from experts import Encoder, list_expert_dirs

    settings = Settings(data_dir=root, **overrides)
    from bench.peft_encoder import PeftEncoder

    # No base-vector cache: the same queries repeat at every step, and hits would hide the pass being measured.
    encoder = (PeftEncoder if kind == "peft" else Encoder)(
        max_length=settings.max_length, batch_size=settings.batch_size, threads=settings.torch_threads
    )
    encoder.embed(queries[:4], max_length=settings.query_max_length)
    base_rss = current_rss_mib()
    base_params_mib = sum(p.numel() * p.element_size() for p in encoder.base_module.parameters()) / 2**20
    engine = SearchEngine(encoder, settings.engine_config())
    directories = list_expert_dirs(root)
    steps: dict[int, dict] = {}

    def latencies() -> list[float]:
        for query in queries[:3]:
            engine.search([query], k=10)  # warm-up (first touch of new adapters and indexes)
        times = []
        for query in queries:
            started = time.perf_counter()
            engine.search([query], k=10)
            times.append((time.perf_counter() - started) * 1000)
        return times

    for count in counts:  # up: load, measure memory and latency
        started = time.perf_counter()
        for directory in directories[len(engine.experts) : count]:
            engine.add(load_expert(directory, encoder, verify_checksums=settings.verify_checksums))
        engine.refresh_union()  # what the engine's builder thread does right after a burst of publishes
        load_seconds = time.perf_counter() - started
        loaded = current_rss_mib()
        times = latencies()
        steps[count] = {
            "experts": count,
            "rss_loaded_mib": round(loaded, 1),
            "rss_searched_mib": round(current_rss_mib(), 1),
            "load_seconds": round(load_seconds, 2),
            "latencies_ms": times,
        }
    for count in reversed(counts[:-1]):  # down: unload, measure latency again
        for name in sorted(engine.experts)[count:]:
            engine.remove(name).wait(30)
        engine.refresh_union()
        steps[count]["latencies_ms"] += latencies()
    config = settings.engine_config()
    options = {f.name: str(getattr(config, f.name)) for f in fields(config)}
    out.write_text(
        json.dumps(
            {
                "base_rss_mib": round(base_rss, 1),
                "base_params_mib": round(base_params_mib, 1),
                "engine_options": options,
                "steps": list(steps.values()),
            }
        )
    )


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--counts", default="1,5,20,50", type=lambda v: sorted({int(x) for x in v.split(",")}))
    parser.add_argument("--docs", type=int, default=300, help="documents in each stand-in expert's index")
    parser.add_argument("--queries", type=int, default=40, help="single-query searches per count and pass")
    parser.add_argument("--root", type=Path, default=None, help="keep the stand-in experts here (reused if present)")
    parser.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a service setting for the engine, e.g. router_evidence=none (repeatable)",
    )
    parser.add_argument(
        "--encoder",
        choices=["now", "peft"],
        default="now",
        help="peft: the previous PEFT-wrapped encoder (bench/peft_encoder.py), for before/after",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    queries = [text for _, text in judged_test_queries(args.datasets)][: args.queries]
    overrides = dict(item.split("=", 1) for item in args.setting)
    if args.child is not None:
        measure_child(args.child, args.counts, queries, args.child_out, overrides, args.encoder)
        return

    from bench.synthetic_experts import adapter_and_index_mib, synthetic_root
    from experts import Encoder

    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    with tempfile.TemporaryDirectory(prefix="rr-many-experts-") as scratch:
        root = args.root or Path(scratch) / "experts"
        started = time.perf_counter()
        experts = synthetic_root(root, max(args.counts), encoder=Encoder(), datasets=args.datasets, docs=args.docs)
        print(f"{len(experts)} stand-in experts ready in {time.perf_counter() - started:.0f}s", flush=True)
        sizes = [adapter_and_index_mib(expert) for expert in experts]
        adapter_mib = sum(a for a, _ in sizes) / len(sizes)
        index_mib = sum(i for _, i in sizes) / len(sizes)
        out = Path(scratch) / "child.json"
        meter = LoadMeter()
        subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(root),
                "--child-out",
                str(out),
                "--counts",
                ",".join(map(str, args.counts)),
                "--queries",
                str(args.queries),
                "--encoder",
                args.encoder,
                "--datasets",
                str(args.datasets),
                *(f"--setting={item}" for item in args.setting),
            ],
            check=True,
        )
        load = meter.stop()
        measured = json.loads(out.read_text())
    steps = measured["steps"]
    first = steps[0]
    rows, targets = [], []
    for step in steps:
        p50, p95 = percentiles(step["latencies_ms"], [50, 95])
        step["p50_ms"], step["p95_ms"] = round(p50, 1), round(p95, 1)
        added = step["experts"] - first["experts"]
        per_expert = (step["rss_searched_mib"] - first["rss_searched_mib"]) / added if added else float("nan")
        step["rss_per_added_expert_mib"] = round(per_expert, 2) if added else None
        rows.append(
            [
                step["experts"],
                step["rss_loaded_mib"],
                step["rss_searched_mib"],
                step["rss_searched_mib"] - measured["base_rss_mib"],
                per_expert,
                step["p50_ms"],
                step["p95_ms"],
                step["p50_ms"] / first["p50_ms"],
                step["load_seconds"],
            ]
        )
    print()
    print(
        table(
            [
                "experts",
                "RSS loaded",
                "RSS searched",
                "over base",
                "MiB/added expert",
                "p50 ms",
                "p95 ms",
                "p50 / p50 at 1",
                "load s",
            ],
            rows,
        )
    )
    print(
        f"\nbase encoder alone: RSS {measured['base_rss_mib']} MiB, of which weights {measured['base_params_mib']} MiB; "
        f"per expert on disk: adapter {adapter_mib:.2f} MiB + index {index_mib:.2f} MiB"
    )
    print(f"measurement: {load.line()}")
    last = steps[-1]
    if last["rss_per_added_expert_mib"] is not None:
        ratio = last["rss_per_added_expert_mib"] / (adapter_mib + index_mib)
        targets.append(
            [
                f"RSS per added expert / (adapter + index on disk), {last['experts']} experts",
                ratio,
                "<= 1.25",
                verdict(ratio, 1.25, at_most=True),
            ]
        )
        share = last["rss_per_added_expert_mib"] / measured["base_params_mib"]
        targets.append(
            ["RSS per added expert / base model weights", share, "<< 1 (no copy)", verdict(share, 0.1, at_most=True)]
        )
        ratio = last["p50_ms"] / first["p50_ms"]
        targets.append(
            [
                f"p50 at {last['experts']} experts / p50 at {first['experts']}",
                ratio,
                "<= 1.2",
                verdict(ratio, 1.2, at_most=True),
            ]
        )
    print()
    print(table(["target", "ratio", "target", "verdict"], targets))
    for step in steps:
        step.pop("latencies_ms")
    print(f"engine options: {measured['engine_options']}")
    write_json(
        args.json,
        {
            "encoder": args.encoder,
            "settings": overrides,
            "engine_options": measured["engine_options"],
            "docs_per_expert": args.docs,
            "adapter_mib": round(adapter_mib, 3),
            "index_mib": round(index_mib, 3),
            "base_rss_mib": measured["base_rss_mib"],
            "base_params_mib": measured["base_params_mib"],
            "steps": steps,
            "load": load.__dict__,
            "targets": [dict(zip(["name", "ratio", "target", "verdict"], t)) for t in targets],
        },
    )


if __name__ == "__main__":
    main()
