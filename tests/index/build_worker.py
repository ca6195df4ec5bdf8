"""A build in a child process, for the kill -9 test; not a test module itself.

Usage: python build_worker.py CORPUS OUT_DIR WORK_DIR CHUNK_SIZE

It embeds with the same fake encoder as the tests (loaded from conftest.py by
path) but sleeps a little per chunk, so that the parent can kill it mid-build.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # the repository root, for `import index`

from index import build_index  # noqa: E402


def _load_conftest():
    spec = importlib.util.spec_from_file_location("index_tests_conftest", HERE / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    corpus, out_dir, work_dir, chunk_size = sys.argv[1:5]
    fakes = _load_conftest()

    def slow_embed(passages: list[str]) -> np.ndarray:
        time.sleep(0.05)
        return fakes.fake_embed(passages)

    build_index(
        [Path(corpus)],
        embed=slow_embed,
        dim=fakes.DIM,
        out_dir=Path(out_dir),
        work_dir=Path(work_dir),
        build_key="test-key",
        chunk_size=int(chunk_size),
        progress=False,
    )


if __name__ == "__main__":
    main()
