"""Faults in the indexing job: ``kill -9`` at many points, and a disk that fills up mid-build.

Each run is a real ``rr index`` process (see :mod:`tests.reliability.forked`)
re-indexing an expert that already serves a published index. Whatever happens
to the job, the published index must keep loading and answering exactly as
before, and running the job again must finish the build with exactly the
right documents. (``tests/index/test_indexing.py`` kills the bare build
function once, with a fake encoder; these tests go through the CLI, the
tiny BERT and the expert's manifest, at a dozen points.)
"""

from __future__ import annotations

import random
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from app.engine.engine import SearchEngine
from app.engine.loading import load_expert
from app.offline.building import index_expert
from experts import Encoder, ExpertDir, create_expert
from tests.app.conftest import slice_corpus
from tests.reliability.forked import ForkedProcess, rr_environment

NAME = "sci"
FIRST_DOCS = 120  # the published index the job must never disturb
CORPUS_DOCS = 400  # what the re-indexing job builds
CHUNK = 8  # documents per checkpointed chunk: 50 chunks, so kills land at many different places
QUERIES = ["vitamin D and bone fractures", "cerebral white matter in newborns", "gene expression in tumours"]
SEED = 20261123


@dataclass(frozen=True)
class Served:
    """What an expert directory serves right now: manifest version, documents, top hits per query."""

    version: int
    documents: int
    hits: list[list[tuple[str, float]]]


def served(expert: ExpertDir, encoder: Encoder) -> Served:
    """Load the expert as the server would (every checksum verified), search, unload."""
    engine = SearchEngine(encoder)
    engine.add(load_expert(expert.path, encoder, verify_checksums=True))
    try:
        batch = engine.search(QUERIES, k=10, expert=NAME)
        hits = [[(hit.id, hit.score) for hit in result.hits] for result in batch.results]
        manifest = engine.experts[NAME].manifest
        return Served(manifest.version, len(engine.experts[NAME].collection), hits)
    finally:
        engine.close()


def same_hits(found: Served, expected: Served) -> bool:
    """Same documents in the same order, scores equal to float32 rounding (batches differ between runs)."""
    if [[doc for doc, _ in row] for row in found.hits] != [[doc for doc, _ in row] for row in expected.hits]:
        return False
    return all(
        np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
        for a, b in zip(found.hits, expected.hits, strict=True)
    )


@dataclass
class Setup:
    root: Path
    expert: ExpertDir
    corpus: Path
    env: dict[str, str]
    published: Served  # before any job ran
    reference: Served  # an uninterrupted build of the corpus

    def argv(self) -> list[str]:
        return ["index", "--expert", NAME, "--corpus", str(self.corpus), "--chunk-size", str(CHUNK), "--no-progress"]


@pytest.fixture()
def setup(tmp_path: Path, tiny_encoder: Encoder, tiny_bert_path: Path, datasets: Path) -> Setup:
    """An expert serving FIRST_DOCS scifact documents, and what an uninterrupted re-index to CORPUS_DOCS gives."""
    source = datasets / "scifact" / "corpus.jsonl"
    root = tmp_path / "experts"
    expert = create_expert(root, NAME, encoder=tiny_encoder, description="scifact slice")
    index_expert(
        expert,
        tiny_encoder,
        [slice_corpus(source, tmp_path / "first.jsonl", FIRST_DOCS)],
        progress=False,
        chunk_size=CHUNK,
    )
    corpus = slice_corpus(source, tmp_path / "corpus.jsonl", CORPUS_DOCS)

    reference_root = tmp_path / "reference"
    shutil.copytree(root, reference_root)
    reference_expert = ExpertDir(reference_root / NAME)
    index_expert(reference_expert, tiny_encoder, [corpus], progress=False, chunk_size=CHUNK)
    env = rr_environment(
        RR_DATA_DIR=str(root),
        RR_BASE_MODEL=str(tiny_bert_path),
        RR_MAX_LENGTH="64",
        RR_BATCH_SIZE=str(CHUNK),
        RR_TORCH_THREADS="1",
    )
    return Setup(root, expert, corpus, env, served(expert, tiny_encoder), served(reference_expert, tiny_encoder))


def _shards(expert: ExpertDir) -> int:
    shards = expert.path / ".work" / "index" / "shards"
    return len(list(shards.glob("shard-*.npz"))) if shards.is_dir() else 0


def _reached(expert: ExpertDir, shards: int) -> bool:
    return _shards(expert) >= shards


def _run_until(process: ForkedProcess, trigger: Callable[[], bool], *, delay: float, timeout: float = 120) -> int:
    """Poll ``trigger`` every 2 ms while the job runs; once it holds wait ``delay`` s and SIGKILL. Returns the exit status."""
    deadline = time.monotonic() + timeout
    while process.poll() is None:
        assert time.monotonic() < deadline, "the indexing job neither finished nor reached its kill point"
        if trigger():
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    return process.wait(timeout=60)


@pytest.mark.timeout(240)
def test_kill_9_the_indexing_job_at_a_dozen_points_then_resume(
    setup: Setup, tiny_encoder: Encoder, tmp_path: Path, figures
) -> None:
    """Kill points, in this order (seeded): during start-up (model loading), after 1-4 more committed
    chunks plus 0-30 ms (mid-embedding, mid-commit) ten times, while the collection is being assembled,
    and in the instant after the new index directory appeared but before the manifest names it."""
    rng = random.Random(SEED)
    expert = setup.expert
    work = expert.path / ".work" / "index"
    points: list[tuple[str, Callable[[], bool], float]] = [("start-up", lambda: True, rng.uniform(0.05, 0.4))]
    for _ in range(10):
        points.append(("chunks", lambda: False, rng.uniform(0.0, 0.03)))  # trigger set at run time
    points.append(("assembling", lambda: (work / "staging").exists(), rng.uniform(0.0, 0.01)))
    points.append(("published-dir", lambda: len(list(expert.path.glob("index-*"))) > 1, 0.0))

    outcomes: list[str] = []
    for number, (kind, trigger, delay) in enumerate(points):
        if kind == "chunks":
            target = _shards(expert) + rng.randint(1, 4)
            trigger = partial(_reached, expert, target)
        process = ForkedProcess(setup.argv(), env=setup.env, cwd=tmp_path, log=tmp_path / f"index-{number}.log")
        status = _run_until(process, trigger, delay=delay)
        assert status in (-signal.SIGKILL, 0), (tmp_path / f"index-{number}.log").read_text()[-3000:]
        now = served(expert, tiny_encoder)  # loads with every checksum verified, or raises
        if now.version == setup.published.version:
            assert now.hits == setup.published.hits, f"kill point {number} ({kind}) changed what the old index serves"
        else:  # the job got as far as publishing: then it is the complete new index
            assert now.documents == CORPUS_DOCS and same_hits(now, setup.reference)
        outcomes.append(f"{kind}:{'killed' if status else 'finished'}@{_shards(expert)}")
        if status == 0 or now.version != setup.published.version:
            break  # the build finished (or published just before the kill): nothing left to interrupt

    killed = sum(1 for outcome in outcomes if ":killed" in outcome)
    assert killed >= 10, outcomes

    before_final = expert.read_manifest().index.directory  # type: ignore[union-attr]  # the first index, unless a kill came late
    process = ForkedProcess(setup.argv(), env=setup.env, cwd=tmp_path, log=tmp_path / "index-final.log")
    assert process.wait(timeout=120) == 0, (tmp_path / "index-final.log").read_text()[-3000:]
    final = served(expert, tiny_encoder)
    manifest = expert.read_manifest()
    assert final.version > setup.published.version and final.documents == manifest.index.count == CORPUS_DOCS  # type: ignore[union-attr]
    assert same_hits(final, setup.reference)
    assert not work.exists()  # the checkpoint is cleaned up once published
    # Only the new index and the one before it remain; one orphaned by a kill after its rename is removed.
    assert {p.name for p in expert.path.glob("index-*")} == {manifest.index.directory, before_final}  # type: ignore[union-attr]
    figures(kill_points=len(points), killed=killed, documents=final.documents, outcomes=" ".join(outcomes))


# 240 s like the kill test: the fixture's two builds chunk scifact's abstracts into the tiny model's
# 128-token windows (the default policy), about three windows a document, and the budget includes it.
@pytest.mark.timeout(240)
@pytest.mark.parametrize(("phase", "limit_kib"), [("streaming", 64), ("assembling", 160)])
def test_disk_full_while_indexing_fails_clearly_and_changes_nothing(
    setup: Setup, tiny_encoder: Encoder, tmp_path: Path, phase: str, limit_kib: int, figures
) -> None:
    """RLIMIT_FSIZE stands in for a full disk (a write past it fails with EFBIG, as one fails with ENOSPC).

    ``streaming``: 64 KiB stops the job while it commits its first chunks to the checkpoint.
    ``assembling``: a first run is killed once every chunk is in, and the resumed run, limited to
    160 KiB, fails while it writes the collection (the exported docstore is about 600 KiB).
    """
    work = setup.expert.path / ".work" / "index"
    if phase == "assembling":
        first = ForkedProcess(setup.argv(), env=setup.env, cwd=tmp_path, log=tmp_path / "index-first.log")
        assert _run_until(first, lambda: (work / "staging").exists(), delay=0.0) == -signal.SIGKILL
    log = tmp_path / "index-full.log"
    process = ForkedProcess(setup.argv(), env=setup.env, cwd=tmp_path, log=log, fsize_limit=limit_kib * 1024)
    status = process.wait(timeout=120)
    output = log.read_text()
    error_lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert status == 2 and "Traceback" not in output, output[-3000:]
    assert len(error_lines) == 1 and "disk" in error_lines[0], output[-3000:]
    assert served(setup.expert, tiny_encoder) == setup.published  # the old index, untouched
    assert len(list(setup.expert.path.glob("index-*"))) == 1

    process = ForkedProcess(setup.argv(), env=setup.env, cwd=tmp_path, log=tmp_path / "index-after.log")
    assert process.wait(timeout=120) == 0, (tmp_path / "index-after.log").read_text()[-3000:]
    after = served(setup.expert, tiny_encoder)
    assert after.documents == CORPUS_DOCS and same_hits(after, setup.reference)
    figures(phase=phase, limit_kib=limit_kib, error=error_lines[0].replace(str(setup.expert.path), "<expert>"))
