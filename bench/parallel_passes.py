"""Two forward passes at once on one thread each, against one pass at a time on two threads: passes per second.

Run by hand (not in CI; about a minute on 2 cores)::

    python bench/parallel_passes.py --json parallel_passes.json

The service runs one forward pass at a time on the shared model (the model
lock: which adapter a pass uses is state of the model), each on two torch
threads with ``RR_TORCH_THREADS=auto`` on a quiet 2-core host. Under load, a
third of the two cores then sat idle (docs/benchmarks.md, section 26). This
measures the alternative on the bare base model, with no service around it:
``--passes`` passes over batches of judged test queries (cut at 64 tokens), (a) one after another on two
torch threads, (b) two Python threads at once, one torch thread each, each
with its own copy of the model, (c) the same sharing one model (inference
only reads the weights). Every arrangement runs in each of ``--rounds`` rounds, in turn.
"""

from __future__ import annotations

import copy
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import LoadMeter, argument_parser, judged_test_queries, table, write_json  # noqa: E402


def main() -> None:
    import torch

    from experts import Encoder

    parser = argument_parser(__doc__)
    parser.add_argument("--batches", default="1,4,8", type=lambda v: [int(x) for x in v.split(",")])
    parser.add_argument("--passes", type=int, default=200, help="passes per arrangement and batch size (even)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    encoder = Encoder()
    model, tokenizer = encoder.base_module, encoder.tokenizer
    copied = copy.deepcopy(model)
    texts = [text for _, text in judged_test_queries(args.datasets)]

    def run(module: torch.nn.Module, inputs: list[dict], threads: int) -> None:
        torch.set_num_threads(threads)  # per OS thread under OpenMP
        with torch.inference_mode():
            for batch in inputs:
                module(**batch)

    def together(modules: tuple[torch.nn.Module, torch.nn.Module], inputs: list[dict]) -> None:
        halves = (inputs[0::2], inputs[1::2])
        workers = [threading.Thread(target=run, args=(m, h, 1)) for m, h in zip(modules, halves, strict=True)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    arrangements = {
        "one at a time, 2 threads": lambda inputs: run(model, inputs, 2),
        "two at once, own copies, 1 thread each": lambda inputs: together((model, copied), inputs),
        "two at once, one model, 1 thread each": lambda inputs: together((model, model), inputs),
    }
    meter = LoadMeter()
    rates: dict[int, dict[str, list[float]]] = {b: {name: [] for name in arrangements} for b in args.batches}
    for size in args.batches:
        inputs = [
            dict(
                tokenizer(
                    [texts[(i * size + j) % len(texts)] for j in range(size)],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=64,
                )
            )
            for i in range(args.passes)
        ]
        run(model, inputs[:5], 2)  # warm-up
        for _ in range(args.rounds):
            for name, arrangement in arrangements.items():
                started = time.perf_counter()
                arrangement(inputs)
                rates[size][name].append(len(inputs) / (time.perf_counter() - started))
        print(size, {name: [round(r, 1) for r in values] for name, values in rates[size].items()}, flush=True)
    load = meter.stop()
    rows = []
    for size, by_name in rates.items():
        first = float(np.median(by_name["one at a time, 2 threads"]))
        for name, values in by_name.items():
            rows.append([size, name, round(float(np.median(values)), 1), round(float(np.median(values)) / first, 2)])
    print(table(["queries a pass", "arrangement", "passes/s (median of rounds)", "÷ one at a time"], rows))
    print(f"measurement: {load.line()}")
    write_json(args.json, {"passes": args.passes, "rounds": args.rounds, "rates": rates, "load": load.__dict__})


if __name__ == "__main__":
    main()
