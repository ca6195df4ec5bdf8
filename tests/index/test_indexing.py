from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import index.build.indexing as indexing
import index.build.job as job
from index import (
    DENSE_FILE,
    BuildInProgressError,
    Collection,
    CorpusError,
    DimensionMismatchError,
    InvalidParameterError,
    OutputExistsError,
    SearchParams,
    build_index,
)
from index.build.checkpoint import CHECKPOINT_FILE, SHARDS_DIR

DIM = 32
WORKER = Path(__file__).with_name("build_worker.py")


class Interrupted(Exception):
    pass


def _build(corpora, tmp: Path, name: str, embed, **options):
    options = {"dim": DIM, "build_key": "test-key", "chunk_size": 25, "progress": False} | options
    return build_index(corpora, embed=embed, out_dir=tmp / name, work_dir=tmp / f".work-{name}", **options)


def _snapshot(directory: Path, embed) -> tuple:
    """Everything that must match between an interrupted and an uninterrupted build."""
    with Collection.open(directory) as collection:
        rows = collection.docstore.all_row_ids()
        docs = collection.docstore.get(rows.tolist())
        queries = np.concatenate([embed([d.passage() for d in docs[::37]]), np.eye(DIM, dtype=np.float32)[:4]])
        hits = [[(h.id, h.score) for h in hl] for hl in collection.search(queries, 10)]
        return rows.tolist(), docs, hits, (directory / DENSE_FILE).read_bytes()


def _shard_count(work_dir: Path) -> int:
    shards = work_dir / SHARDS_DIR
    return len(list(shards.glob("shard-*.npz"))) if shards.is_dir() else 0


def _tree_digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture
def corpus(tmp_path: Path, write_corpus, make_records) -> Path:
    """600 documents with malformed lines and a duplicate id spread through it."""
    lines: list = list(make_records(600))
    lines.insert(40, "{broken")
    lines.insert(300, {"_id": "no-text"})
    lines.insert(450, {"_id": "d10", "text": "a later d10"})  # line 451 repeats the id of line 11
    lines.append("")
    return write_corpus(tmp_path / "corpus.jsonl", lines)


def test_build_publishes_a_complete_collection(tmp_path: Path, corpus: Path, embed) -> None:
    report = _build([corpus], tmp_path, "out", embed, upsert=True)
    assert report.documents == 600 and report.malformed == 2 and report.replaced == 1
    assert [(p.line, p.path) for p in report.problems] == [(41, corpus), (301, corpus)]
    assert report.resumed_from_corpus is None and report.resumed_from_line == 0
    assert not (tmp_path / ".work-out").exists()  # cleaned up after publishing
    with Collection.open(report.directory) as collection:
        assert len(collection) == 600
        assert collection.search(embed(["a later d10"]), 1)[0][0].text == "a later d10"
        assert collection.info.corpus_fingerprints[0].startswith("sha256:")


def test_duplicates_are_refused_with_both_locations(tmp_path: Path, corpus: Path, embed, write_corpus) -> None:
    with pytest.raises(CorpusError, match=r"duplicate document id 'd10' at .*corpus.jsonl:451, first seen at .*:11"):
        _build([corpus], tmp_path, "out", embed)
    first = write_corpus(tmp_path / "first.jsonl", [{"_id": f"d{i}", "text": f"t{i}"} for i in range(5)])
    second = write_corpus(tmp_path / "second.jsonl.gz", [{"_id": "d3", "text": "again"}])
    with pytest.raises(CorpusError, match=r"'d3' at .*second\.jsonl\.gz:1, first seen at .*first\.jsonl:4"):
        _build([first, second], tmp_path, "across", embed)
    report = _build([first, second], tmp_path, "upserted", embed, upsert=True)
    assert report.documents == 5 and report.replaced == 1


def test_empty_corpus_says_how_many_lines_were_malformed(tmp_path: Path, write_corpus, embed) -> None:
    corpus = write_corpus(tmp_path / "empty.jsonl", ["", "{bad", "[]", ""])
    with pytest.raises(CorpusError, match=r"no valid documents .* 2 malformed line"):
        _build([corpus], tmp_path, "out", embed)
    assert not (tmp_path / "out").exists()


def test_existing_out_dir_is_refused_before_any_work(tmp_path: Path, corpus: Path, embed) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(OutputExistsError, match="already exists"):
        _build([corpus], tmp_path, "out", embed)
    assert not (tmp_path / ".work-out").exists()


def test_bad_arguments_fail_before_embedding(tmp_path: Path, corpus: Path, embed) -> None:
    with pytest.raises(InvalidParameterError, match="'Flatt'"):
        _build([corpus], tmp_path, "out", embed, factory="Flatt")
    with pytest.raises(InvalidParameterError, match="chunk_size"):
        _build([corpus], tmp_path, "out", embed, chunk_size=0)
    with pytest.raises(DimensionMismatchError, match=r"expected \(25, 32\)"):
        _build([corpus], tmp_path, "out", lambda p: np.ones((len(p), DIM + 1), np.float32))
    with pytest.raises(InvalidParameterError, match="L2-normalised"):
        _build([corpus], tmp_path, "out2", lambda p: np.ones((len(p), DIM), np.float32))


def test_a_second_build_in_the_same_work_dir_is_refused(tmp_path: Path, corpus: Path, embed) -> None:
    work = tmp_path / ".work-out"
    work.mkdir()
    with (work / ".lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(BuildInProgressError):
            _build([corpus], tmp_path, "out", embed)


def test_resume_after_embed_failure_matches_uninterrupted(tmp_path: Path, corpus: Path, embed) -> None:
    reference = _build([corpus], tmp_path, "reference", embed, upsert=True)
    calls = 0

    def flaky(passages: list[str]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls in (5, 19):
            raise Interrupted(f"embed call {calls}")
        return embed(passages)

    with pytest.raises(Interrupted):
        _build([corpus], tmp_path, "out", flaky, upsert=True)
    with pytest.raises(Interrupted):  # second interruption after the duplicate and a malformed line
        _build([corpus], tmp_path, "out", flaky, upsert=True)
    assert not (tmp_path / "out").exists() and (tmp_path / ".work-out" / CHECKPOINT_FILE).exists()
    held: list[int] = []
    report = _build([corpus], tmp_path, "out", flaky, upsert=True, chunk_size=40, on_resumed=held.append)
    assert report.resumed_from_corpus == corpus and report.resumed_from_line > 400  # chunking may change
    assert len(held) == 1 and 0 < held[0] < report.documents  # what the checkpoint held, told once
    for field in ("documents", "malformed", "problems", "replaced"):
        assert getattr(report, field) == getattr(reference, field), field
    assert _snapshot(report.directory, embed) == _snapshot(reference.directory, embed)


def test_shard_written_but_not_committed_is_redone(tmp_path: Path, corpus: Path, embed, monkeypatch) -> None:
    reference = _build([corpus], tmp_path, "reference", embed, upsert=True)
    real_write = job.write_shard
    written = 0

    def write_then_crash(*args, **kwargs):
        nonlocal written
        path = real_write(*args, **kwargs)
        written += 1
        if written == 3:
            raise Interrupted("after the shard, before the commit")
        return path

    monkeypatch.setattr(job, "write_shard", write_then_crash)
    with pytest.raises(Interrupted):
        _build([corpus], tmp_path, "out", embed, upsert=True)
    shards = sorted(p.name for p in (tmp_path / ".work-out" / SHARDS_DIR).iterdir())
    assert shards[-1] == "shard-000002.npz"  # on disk, but its chunk never committed
    monkeypatch.setattr(job, "write_shard", real_write)
    report = _build([corpus], tmp_path, "out", embed, upsert=True)
    assert report.resumed_from_line == 51  # two chunks of 25 documents plus the malformed line 41
    assert _snapshot(report.directory, embed) == _snapshot(reference.directory, embed)


def test_crash_between_publish_and_cleanup(tmp_path: Path, corpus: Path, embed, monkeypatch) -> None:
    def crash(work_dir: Path) -> None:
        raise Interrupted("killed after the rename")

    monkeypatch.setattr(indexing, "_cleanup", crash)
    with pytest.raises(Interrupted):
        _build([corpus], tmp_path, "out", embed, upsert=True)
    published = _tree_digest(tmp_path / "out")
    monkeypatch.undo()
    report = _build([corpus], tmp_path, "out", embed, upsert=True)  # same arguments: recognised as done
    assert report.documents == 600 and report.replaced == 1
    assert _tree_digest(tmp_path / "out") == published and not (tmp_path / ".work-out").exists()


def test_mismatched_checkpoint_is_discarded_with_a_warning(tmp_path: Path, corpus: Path, embed, caplog) -> None:
    def fail_second(passages: list[str], calls=[]) -> np.ndarray:  # noqa: B006 - call counter
        calls.append(1)
        if len(calls) == 2:
            raise Interrupted
        return embed(passages)

    with pytest.raises(Interrupted):
        _build([corpus], tmp_path, "out", fail_second, upsert=True, build_key="model-a")
    with caplog.at_level(logging.WARNING):
        report = _build([corpus], tmp_path, "out", embed, upsert=True, build_key="model-b")
    assert "discarding the build checkpoint" in caplog.text and "model-a" in caplog.text
    assert report.resumed_from_corpus is None and report.documents == 600


def test_trained_factory_and_several_corpora(tmp_path: Path, write_corpus, make_records, embed) -> None:
    first = write_corpus(tmp_path / "a.jsonl.gz", make_records(300, prefix="a"))
    second = write_corpus(tmp_path / "b.jsonl", make_records(300, prefix="b"))
    report = _build([first, second], tmp_path, "ivf", embed, factory="IVF8,Flat", chunk_size=64, progress=True)
    with Collection.open(report.directory) as collection:
        assert len(collection) == 600 and collection.info.factory == "IVF8,Flat"
        hits = collection.search(embed(["text of b number 3"]), 1, params=SearchParams(nprobe=8))[0]
        assert hits[0].id == "b3"


def test_published_collection_is_never_touched_by_a_later_build(
    tmp_path: Path, corpus: Path, embed, write_corpus, make_records
) -> None:
    _build([corpus], tmp_path, "live", embed, upsert=True)
    live = tmp_path / "live"
    before = _tree_digest(live)
    with Collection.open(live) as served:  # being served while the next build runs
        other = write_corpus(tmp_path / "next.jsonl", make_records(100, prefix="n"))
        build_index(
            [other],
            embed=embed,
            dim=DIM,
            out_dir=tmp_path / "next",
            work_dir=tmp_path / ".work-next",
            build_key="test-key",
            progress=False,
        )
        assert served.search(embed(["text of d number 3"]), 1)[0][0].id == "d3"
    assert _tree_digest(live) == before


def test_sigkill_mid_build_then_resume(tmp_path: Path, write_corpus, make_records, embed) -> None:
    corpus = write_corpus(tmp_path / "corpus.jsonl", make_records(1200))
    reference = _build([corpus], tmp_path, "reference", embed, chunk_size=30)
    out, work = tmp_path / "out", tmp_path / ".work-out"
    env = os.environ | {"PYTHONPATH": str(WORKER.parents[2])}
    child = subprocess.Popen([sys.executable, str(WORKER), str(corpus), str(out), str(work), "30"], env=env)
    try:
        deadline = time.monotonic() + 60
        while _shard_count(work) < 3:  # a few chunks committed (or about to be): kill it mid-run
            assert child.poll() is None, "the worker ended before it could be killed"
            assert time.monotonic() < deadline, "the worker wrote no checkpoint within 60 s"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    assert not out.exists()

    report = _build([corpus], tmp_path, "out", embed, chunk_size=30)
    assert report.resumed_from_corpus == corpus and 0 < report.resumed_from_line < 1200
    assert report.documents == reference.documents == 1200
    assert _snapshot(out, embed) == _snapshot(reference.directory, embed)
