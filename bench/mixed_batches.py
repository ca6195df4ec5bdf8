"""Mixed batches: one batch whose rows need 1, 2, 5 or 20 different experts, two ways to run it.

Run by hand (not in CI), 1 to 5 minutes with the defaults (longer the busier the machine)::

    nice -n 5 python bench/mixed_batches.py --json mixed_batches.json
    python bench/mixed_batches.py --batch-sizes 32,128 --repeats 5         # up to RR_BATCH_MAX_QUERIES

- **mixed**: one pass with PEFT's ``adapter_names`` (one adapter per row):
  what ``Encoder.embed(texts, expert=[name per row])`` does, and what the
  service runs for a micro-batch. With a single expert in the batch it takes
  the plain ``set_adapter`` path instead.
- **grouped**: rows grouped by expert, one ``Encoder.embed(group, expert=name)``
  pass per expert (each switching the active adapter), results put back in order.

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

from bench.harness import (  # noqa: E402
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


def measure(encoder, texts: list[str], adapters: list[str], experts: int, repeats: int) -> dict:
    rows = [adapters[i % experts] for i in range(len(texts))]
    runs = {
        "mixed": lambda: encoder.embed(texts, expert=rows, max_length=QUERY_MAX_LENGTH, batch_size=len(texts)),
        "grouped": lambda: grouped_pass(encoder, texts, rows),
        "base": lambda: encoder.embed(texts, max_length=QUERY_MAX_LENGTH, batch_size=len(texts)),
        # The same base pass in length-sorted sub-batches of 8 (embed sorts before chunking): less padding.
        "base_by_8": lambda: encoder.embed(texts, max_length=QUERY_MAX_LENGTH, batch_size=8),
    }
    mixed, grouped = runs["mixed"](), runs["grouped"]()  # warm-up, and the two must agree
    if not np.allclose(mixed, grouped, atol=1e-4):
        raise SystemExit(f"mixed and grouped passes disagree with {experts} experts: {np.abs(mixed - grouped).max()}")
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(repeats):
        order = list(runs) if repeat % 2 == 0 else list(reversed(runs))
        for name in order:
            started = time.perf_counter()
            runs[name]()
            seconds[name].append(time.perf_counter() - started)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "batch": len(texts), "experts": experts,
        "mixed_qps": round(len(texts) / median["mixed"], 1), "grouped_qps": round(len(texts) / median["grouped"], 1),
        "base_qps": round(len(texts) / median["base"], 1), "base_by_8_qps": round(len(texts) / median["base_by_8"], 1),
        "grouped_over_mixed_time": round(median["grouped"] / median["mixed"], 3),
        "mixed_over_base_time": round(median["mixed"] / median["base"], 3),
        "faster": "mixed" if median["mixed"] < median["grouped"] else "grouped",
        "seconds": {name: [round(v, 4) for v in values] for name, values in seconds.items()},
    }  # fmt: skip


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--experts", default="1,2,5,20", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--batch-sizes", default="8,32", type=lambda v: [int(x) for x in v.split(",")],
                        help="rows per batch (8 and 32: the service's mean micro-batch at 8 and 32 clients)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from bench.synthetic_experts import random_adapters
    from experts import Encoder

    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    queries = [text for _, text in judged_test_queries(args.datasets)]
    encoder = Encoder(threads=args.threads)
    names = []
    with tempfile.TemporaryDirectory(prefix="rr-mixed-batches-") as scratch:
        for i, path in enumerate(random_adapters(encoder, Path(scratch), max(args.experts))):
            names.append(f"expert-{i:03d}")
            encoder.add_adapter(names[-1], path)
    meter = LoadMeter()
    results = []
    for batch in args.batch_sizes:
        texts = (queries * (batch // len(queries) + 1))[:batch]
        for experts in args.experts:
            results.append(measure(encoder, texts, names, min(experts, batch), args.repeats))
            r = results[-1]
            print(f"  batch {batch}, {r['experts']} experts: mixed {r['mixed_qps']} q/s, grouped {r['grouped_qps']} "
                  f"q/s, base {r['base_qps']} q/s", flush=True)  # fmt: skip
    load = meter.stop()
    print()
    print(table(
        ["batch", "experts", "mixed q/s", "grouped q/s", "base q/s", "base by 8 q/s", "grouped/mixed time",
         "mixed/base time", "faster"],
        [[r["batch"], r["experts"], r["mixed_qps"], r["grouped_qps"], r["base_qps"], r["base_by_8_qps"],
          r["grouped_over_mixed_time"], r["mixed_over_base_time"], r["faster"]] for r in results],
    ))  # fmt: skip
    print(f"\nmeasurement: {load.line()}")
    write_json(args.json, {"threads": args.threads, "results": results, "load": load.__dict__})


if __name__ == "__main__":
    main()
