"""Live-collection writes in a child process, for the kill -9 tests; not a test module itself.

Usage: python live_worker.py GENERATION_POINTER LOG_PATH MODE [ARG]

``GENERATION_POINTER`` is a file naming the generation directory to open (a
stand-in for an expert's manifest). Modes:

* ``upsert``: upsert the documents of the JSON list ARG, print ``ACK <seq>``, then sleep.
* ``delete``: delete the ids of the JSON list ARG, print ``ACK <seq>``, then sleep.
* ``merge``: merge into ``<pointer's parent>/merged``; the commit step rewrites the
  pointer; at step ARG ("written", "committed", "truncated") print ``STEP <name>``
  and sleep, so the parent can kill the process right there.

It embeds (and splits long passages) with the same fakes as the tests (conftest.py, loaded by path).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for `import index`

from index import Collection, Document  # noqa: E402
from index.atomic import atomic_write  # noqa: E402
from index.live.live_collection import LiveCollection  # noqa: E402


def _fakes():
    spec = importlib.util.spec_from_file_location("index_tests_conftest", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fake_embed, module.fake_split


def _hang(line: str) -> None:
    print(line, flush=True)
    time.sleep(600)  # the parent kills us now


def main() -> None:
    pointer, log_path, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    argument = sys.argv[4] if len(sys.argv) > 4 else ""
    generation = Path(pointer.read_text().strip())
    embed, split = _fakes()
    live = LiveCollection.open(Collection.open(generation), log_path, embed=embed, split=split)
    if mode == "upsert":
        docs = [Document(d["id"], d.get("title", ""), d["text"], d.get("metadata", {})) for d in json.loads(argument)]
        _hang(f"ACK {live.upsert(docs).seq}")
    elif mode == "delete":
        _hang(f"ACK {live.delete(json.loads(argument)).seq}")
    elif mode == "merge":

        def commit(collection: Collection) -> None:
            atomic_write(pointer, lambda tmp: tmp.write_text(str(collection.directory)))

        def on_step(name: str) -> None:
            if name == argument:
                _hang(f"STEP {name}")

        live.merge(pointer.parent / "merged", commit=commit, on_step=on_step)
        print("DONE", flush=True)
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
