"""What the second (adapter) pass of a routed query costs, with adapters on every layer and on the top ones only.

Run by hand (not in CI), about a minute::

    python bench/top_layer_pass.py --top-layers 2

Per query (real test queries of the shared collections, one at a time as a
single search does), interleaved so that load drifts fall on every case alike:
a base pass (``embed(cache=True)``, the router's pass; it also keeps the state
a top-layer adapter resumes from), then the adapter pass with a full-depth
adapter (the recipe so far) and with one on the top ``--top-layers`` only
(``TrainConfig.top_layers``; :mod:`experts.layer_resume`). The adapters are
random (``bench/synthetic_experts.random_adapters``): the cost does not depend on
what they learned. Printed: p50 of each pass and the adapter pass's ratio to the
base pass.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import argument_parser, judged_test_queries  # noqa: E402
from bench.synthetic_experts import random_adapters  # noqa: E402
from experts import Encoder  # noqa: E402

QUERY_MAX_LENGTH = 64


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--top-layers", type=int, default=2, help="top layers of the top-layer adapter")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    queries = [text for _, texts in judged_test_queries(args.datasets) for text in texts]
    queries = list(dict.fromkeys(queries))[: args.queries]
    encoder = Encoder(None, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="rr-top-layer-") as scratch:
        (full,) = random_adapters(encoder, Path(scratch) / "full", 1)
        (top,) = random_adapters(encoder, Path(scratch) / "top", 1, top_layers=args.top_layers)
        encoder.add_adapter("full", full)
        encoder.add_adapter("top", top)
    times: dict[str, list[float]] = {"base": [], "full": [], "top": []}
    for round_ in range(2):  # the first round warms up
        for query in queries:
            for name in ("full", "top"):
                started = time.perf_counter()
                encoder.embed([query], max_length=QUERY_MAX_LENGTH, cache=False)
                base = time.perf_counter() - started
                started = time.perf_counter()
                encoder.embed([query], expert=name, max_length=QUERY_MAX_LENGTH)
                second = time.perf_counter() - started
                if round_:
                    times["base"].append(base)
                    times[name].append(second)
    p50 = {name: float(np.median(values)) * 1000 for name, values in times.items()}
    print(f"{len(queries)} queries, the top-layer adapter on the top {args.top_layers} layers")
    print("| pass | p50 ms | x base pass |\n|---|---|---|")
    for name, label in (("base", "base pass"), ("full", "adapter pass, full depth"), ("top", "adapter pass, top only")):
        print(f"| {label} | {p50[name]:.2f} | {p50[name] / p50['base']:.2f} |")


if __name__ == "__main__":
    main()
