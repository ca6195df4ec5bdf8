"""Where a routed search spends its time: py-spy stacks of the server, added up by stage.

Run by hand on what ``bench/search_load.py --profile DIR`` wrote::

    python bench/profile_summary.py profiles/routed-32-clients.txt [more.txt ...]

Reads py-spy's ``--format raw`` output (one collapsed stack and its sample
count per line; idle threads are not sampled) and puts every sample in the
first category below whose pattern its stack matches, so the shares add up
to 100% of the server's busy time. Native code (torch kernels, FAISS,
SQLite) is charged to the Python frame that called it.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import table  # noqa: E402

_PEFT_BOOKKEEPING = (
    r"(set_adapter|_set_layer_requires_grad|get_model_status|get_layer_status|enable_adapter|disable_adapter)"
)
_TOKENIZER = r"(tokeniz|Tokenizer|\.pad \()"
#: (category, pattern searched in the whole ";"-joined stack), first match wins.
CATEGORIES: list[tuple[str, str]] = [
    ("expert pass: PEFT adapter switching", r"_pair_vectors.*" + _PEFT_BOOKKEEPING),
    ("expert pass: tokenizer", r"_pair_vectors.*" + _TOKENIZER),
    ("expert pass: mixed-batch LoRA routing", r"_pair_vectors.*_mixed_batch_forward"),
    ("expert pass: forward", r"_pair_vectors"),
    ("base pass: PEFT disable_adapter bookkeeping", r"BatchRun\.run.*Encoder\.embed.*" + _PEFT_BOOKKEEPING),
    ("base pass: tokenizer", r"BatchRun\.run.*Encoder\.embed.*" + _TOKENIZER),
    ("base pass: forward", r"BatchRun\.run.*Encoder\.embed"),
    ("router", r"Router\.|routing\.py"),
    ("FAISS search", r"dense\.py|swigfaiss"),
    ("document store (SQLite)", r"docstore\.py"),
    ("rest of the engine (fusion, hits, bookkeeping)", r"engine\.py"),
    (
        "response: pydantic validation + JSON",
        r"serialize_response|jsonable_encoder|model_validate|result_dict|"
        r"routes_search|json|render|pydantic",
    ),
    ("HTTP parsing and writing (uvicorn + h11)", r"h11|uvicorn/protocols|httptools"),
    ("request handling (Starlette / FastAPI)", r"starlette|fastapi"),
    ("metrics", r"metrics\.py|prometheus"),
    ("micro-batcher", r"batching\.py"),
    ("asyncio event loop", r"asyncio|selectors"),
]


def summarise(lines: list[str]) -> tuple[Counter, int]:
    compiled = [(name, re.compile(pattern)) for name, pattern in CATEGORIES]
    counts: Counter = Counter()
    total = 0
    for line in lines:
        stack, _, number = line.rstrip("\n").rpartition(" ")
        if not stack or not number.isdigit():
            continue
        total += int(number)
        category = next((name for name, pattern in compiled if pattern.search(stack)), "other")
        counts[category] += int(number)
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profiles", type=Path, nargs="+", help="py-spy raw output files")
    args = parser.parse_args()
    for path in args.profiles:
        counts, total = summarise(path.read_text().splitlines())
        print(f"\n{path} ({total} samples of busy threads)")
        order = [name for name, _ in CATEGORIES] + ["other"]
        rows = [[name, counts[name], counts[name] / total if total else 0.0] for name in order if counts[name]]
        print(table(["where", "samples", "share"], rows))


if __name__ == "__main__":
    main()
