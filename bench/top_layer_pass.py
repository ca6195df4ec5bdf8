"""What the second (adapter) pass of a routed query costs, with adapters on every layer and on the top ones only.

Run by hand (not in CI), about a minute::

    python bench/top_layer_pass.py --layers 4 5

Per query (real test queries of the shared collections, one at a time as a
single search does), interleaved so that load drifts fall on every case alike:
a base pass (``embed(cache=True)``, the router's pass; it also keeps the state
a top-layer adapter resumes from), then the adapter pass with a full-depth
adapter (the recipe so far) and with one on ``--layers`` only
(``TrainConfig.layers``; :mod:`experts.layer_resume`). The adapters are
random (PEFT's ``init_lora_weights=False``): the cost does not depend on what
they learned. Printed: p50 of each pass and the adapter pass's ratio to the
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
from experts import DEFAULT_TARGET_MODULES, Encoder  # noqa: E402
from experts.base_model import resolve_model  # noqa: E402

QUERY_MAX_LENGTH = 64


def random_adapter(out: Path, layers: list[int] | None) -> Path:
    """A PEFT LoRA adapter (rank 8, the service's target modules) with random weights on ``layers`` (None: all)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModel

    model_id, source = resolve_model(None)
    config = LoraConfig(
        r=8,
        lora_alpha=32,
        target_modules=list(DEFAULT_TARGET_MODULES),
        layers_to_transform=layers,
        init_lora_weights=False,
    )
    model = get_peft_model(AutoModel.from_pretrained(source), config)
    model.peft_config["default"].base_model_name_or_path = model_id
    model.save_pretrained(str(out), save_embedding_layers=False)
    return out


def main() -> None:
    parser = argument_parser(__doc__)
    parser.add_argument("--layers", nargs="+", type=int, default=[4, 5], help="layers of the top-layer adapter")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    queries = [text for _, texts in judged_test_queries(args.datasets) for text in texts]
    queries = list(dict.fromkeys(queries))[: args.queries]
    encoder = Encoder(None, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="rr-top-layer-") as scratch:
        encoder.add_adapter("full", random_adapter(Path(scratch) / "full", None))
        encoder.add_adapter("top", random_adapter(Path(scratch) / "top", args.layers))
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
    print(f"{len(queries)} queries, layers of the top-layer adapter: {args.layers}")
    print("| pass | p50 ms | x base pass |\n|---|---|---|")
    for name, label in (("base", "base pass"), ("full", "adapter pass, full depth"), ("top", "adapter pass, top only")):
        print(f"| {label} | {p50[name]:.2f} | {p50[name] / p50['base']:.2f} |")


if __name__ == "__main__":
    main()
