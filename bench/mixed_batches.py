"""Mixed batches: one batch whose rows need 1, 2, 5 or 20 different experts, two ways to run it.

Run by hand (not in CI), 1 to 5 minutes with the defaults (longer the busier the machine)::

    nice -n 5 python bench/mixed_batches.py --json mixed_batches.json
    python bench/mixed_batches.py --batch-sizes 32,128 --repeats 5         # up to RR_BATCH_MAX_QUERIES

- **mixed**: one pass with a different adapter per row, what
  ``Encoder.embed(texts, expert=[name per row])`` does: now one batched LoRA
  product per layer (experts/lora.py); before, PEFT's ``adapter_names``
  (``bench/peft_encoder.py``), whose layers loop over the adapters in the batch.
- **grouped**: rows grouped by expert, one ``embed(group, expert=name)`` pass
  per expert, results put back in order. Both ways with both encoders.

Rows are real test queries (64 tokens at most, as the service embeds
queries), assigned to experts round-robin. Adapters are random LoRA
adapters of the default recipe's shape (bench/synthetic_experts.py). Each
repeat times mixed, grouped and a base pass (no adapter: the floor) back to
back, alternating which goes first; the median of ``--repeats`` is reported.
A fourth timing, the base pass in length-sorted sub-batches of 8, shows what
padding every row to the batch's longest query costs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    LoadMeter,
    argument_parser,
    judged_test_queries,
    other_heavy_processes,
    table,
    write_json,
)

QUERY_MAX_LENGTH = 64  # RR_QUERY_MAX_LENGTH


def grouped_pass(encoder, texts: list[str], rows: list[str]) -> np.ndarray:
    """One pass per expert over its rows; vectors back in row order."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    for name in dict.fromkeys(rows):
        positions = [i for i, row in enumerate(rows) if row == name]
        group = [texts[i] for i in positions]
        out[positions] = encoder.embed(group, expert=name, max_length=QUERY_MAX_LENGTH, batch_size=len(group))
    return out


def measure(encoders: dict, texts: list[str], adapters: list[str], experts: int, repeats: int) -> dict:
    rows = [adapters[i % experts] for i in range(len(texts))]
    now, peft = encoders["now"], encoders["peft"]
    runs = {
        "peft_mixed": lambda: peft.embed(texts, expert=rows, max_length=QUERY_MAX_LENGTH, batch_size=len(texts)),
        "peft_grouped": lambda: grouped_pass(peft, texts, rows),
        "mixed": lambda: now.embed(texts, expert=rows, max_length=QUERY_MAX_LENGTH, batch_size=len(texts)),
        "grouped": lambda: grouped_pass(now, texts, rows),
        "base": lambda: now.embed(texts, max_length=QUERY_MAX_LENGTH, batch_size=len(texts)),
        # Length bucketing: the same mixed pass in length-sorted sub-batches of 8 (embed sorts before chunking).
        "mixed_by_8": lambda: now.embed(texts, expert=rows, max_length=QUERY_MAX_LENGTH, batch_size=8),
        "base_by_8": lambda: now.embed(texts, max_length=QUERY_MAX_LENGTH, batch_size=8),
    }
    reference = runs["peft_mixed"]()  # warm-up, and every way must agree with PEFT's
    for name, run in runs.items():
        if not name.startswith("base") and not np.allclose(run(), reference, atol=1e-4):
            raise SystemExit(f"{name} disagrees with PEFT's mixed pass with {experts} experts")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            started = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    qps = {f"{name}_qps": round(len(texts) / value, 1) for name, value in median.items()}
    return {
        "batch": len(texts),
        "experts": experts,
        **qps,
        "grouped_over_mixed_time": round(median["grouped"] / median["mixed"], 3),
        "mixed_by_8_over_mixed_time": round(median["mixed_by_8"] / median["mixed"], 3),
        "peft_mixed_over_mixed_time": round(median["peft_mixed"] / median["mixed"], 3),
        "peft_best_over_mixed_time": round(min(median["peft_mixed"], median["peft_grouped"]) / median["mixed"], 3),
        "mixed_over_base_time": round(median["mixed"] / median["base"], 3),
        "faster": "mixed" if median["mixed"] < median["grouped"] else "grouped",
        "seconds": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
    }


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--experts", default="1,2,5,20", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument(
        "--batch-sizes",
        default="8,32",
        type=lambda v: [int(x) for x in v.split(",")],
        help="rows per batch (8 and 32: the service's mean micro-batch at 8 and 32 clients)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench.peft_encoder import PeftEncoder
    from bench.synthetic_experts import random_adapters
    from experts import Encoder

    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    queries = [text for _, text in judged_test_queries(args.datasets)]
    encoders = {"now": Encoder(threads=args.threads), "peft": PeftEncoder()}
    names = []
    with tempfile.TemporaryDirectory(prefix="rr-mixed-batches-") as scratch:
        for i, path in enumerate(random_adapters(encoders["now"], Path(scratch), max(args.experts))):
            names.append(f"expert-{i:03d}")
            for encoder in encoders.values():
                encoder.add_adapter(names[-1], path)
    meter = LoadMeter()
    results = []
    for batch in args.batch_sizes:
        texts = (queries * (batch // len(queries) + 1))[:batch]
        for experts in args.experts:
            results.append(measure(encoders, texts, names, min(experts, batch), args.repeats))
            r = results[-1]
            print(
                f"  batch {batch}, {r['experts']} experts: mixed {r['mixed_qps']} q/s, grouped {r['grouped_qps']} "
                f"q/s, PEFT mixed {r['peft_mixed_qps']} q/s, base {r['base_qps']} q/s",
                flush=True,
            )
    load = meter.stop()
    print()
    print(
        table(
            [
                "batch",
                "experts",
                "PEFT mixed q/s",
                "PEFT grouped q/s",
                "mixed q/s",
                "grouped q/s",
                "mixed by 8 q/s",
                "base q/s",
                "base by 8 q/s",
                "grouped/mixed time",
                "PEFT best/mixed time",
                "mixed/base time",
                "faster",
            ],
            [
                [
                    r["batch"],
                    r["experts"],
                    r["peft_mixed_qps"],
                    r["peft_grouped_qps"],
                    r["mixed_qps"],
                    r["grouped_qps"],
                    r["mixed_by_8_qps"],
                    r["base_qps"],
                    r["base_by_8_qps"],
                    r["grouped_over_mixed_time"],
                    r["peft_best_over_mixed_time"],
                    r["mixed_over_base_time"],
                    r["faster"],
                ]
                for r in results
            ],
        )
    )
    print(f"\nmeasurement: {load.line()}")
    write_json(args.json, {"threads": args.threads, "results": results, "load": load.__dict__})


if __name__ == "__main__":
    main()
