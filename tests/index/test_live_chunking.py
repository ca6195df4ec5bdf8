"""Long documents in live collections: chunked upserts, deletes and replacements, replay, kill -9, merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import (
    CHUNKS_FILE,
    ChunkSettings,
    Collection,
    InvalidParameterError,
    LongDocumentError,
    build_index,
    read_info,
)
from index.live.live_collection import LiveCollection
from index.live.view import LiveView
from index.store.chunked_dense import ChunkedDense
from tests.index.conftest import DIM, fake_embed, fake_split, write_corpus
from tests.index.live_helpers import build_collection, doc, ids_of, records

WORKER = Path(__file__).with_name("live_worker.py")
QUERIES = fake_embed([f"query {i}" for i in range(16)])


def long_text(tag: str, words: int = 40) -> str:
    return " ".join(f"{tag}{i}" for i in range(words))


def chunked_generation(tmp_path: Path, *, policy: str = "chunk", name: str = "gen-1") -> Path:
    """300 records, every tenth of them long (several 40-character windows of the fake split)."""
    rows = records(300)
    for i in range(0, 300, 10):
        rows[i]["text"] = long_text(f"w{i}x")
    corpus = write_corpus(tmp_path / f"{name}.jsonl", rows)
    out = tmp_path / name
    build_index(
        [corpus],
        embed=fake_embed,
        dim=DIM,
        out_dir=out,
        work_dir=tmp_path / f".work-{name}",
        build_key="test",
        progress=False,
        chunking=ChunkSettings(policy, max_tokens=40, overlap=10),
        split=fake_split,
    )
    return out


def open_chunked(generation: Path, log: Path) -> LiveCollection:
    return LiveCollection.open(Collection.open(generation), log, embed=fake_embed, split=fake_split)


def live_chunks(view: LiveView) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every live chunk, read independently of the search path: rows, vectors, starts, ends."""
    dense = view.main.dense
    if isinstance(dense, ChunkedDense):
        rows, vectors, starts, ends = dense.chunk_vectors()
    else:
        rows, vectors = dense.vectors()
        starts = ends = np.zeros(len(rows), dtype=np.int64)
    keep = np.isin(rows, view.live_main_ids())
    parts = [(rows[keep], vectors[keep], starts[keep], ends[keep])]
    for row in view.delta.row_ids.tolist():
        entry = view.delta.entries[row]
        spans = entry.spans or ((0, len(entry.document.passage())),)
        parts.append((np.full(len(spans), row), entry.vectors, *np.asarray(spans).T))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(4))  # type: ignore[return-value]


def brute_force_chunks(view: LiveView, queries: np.ndarray, k: int, allowed=None) -> list[list[int]]:
    rows, vectors, _, _ = live_chunks(view)
    scores = queries @ vectors.T
    out = []
    for q in range(len(queries)):
        best: dict[int, float] = {}
        for row, score in zip(rows.tolist(), scores[q].tolist(), strict=True):
            if allowed is None or row in allowed:
                best[row] = max(best.get(row, -np.inf), score)
        out.append([r for r, _ in sorted(best.items(), key=lambda item: -item[1])[:k]])
    return out


def chunk_queries(view: LiveView, row: int) -> np.ndarray:
    """The vectors of every chunk of a live row: a query equal to one of them scores 1.0 on it."""
    rows, vectors, _, _ = live_chunks(view)
    return vectors[rows == row]


@pytest.fixture
def generation(tmp_path: Path) -> Path:
    return chunked_generation(tmp_path)


@pytest.fixture
def live(generation: Path, tmp_path: Path):
    with open_chunked(generation, tmp_path / "live" / "live.sqlite") as live:
        yield live


def _writes(live: LiveCollection) -> None:
    live.upsert([doc(f"n{i}", long_text(f"n{i}y") if i % 2 else f"short {i}", year=2000 + i) for i in range(12)])
    live.delete(["d0", "d11", "n3"])
    live.upsert([doc("d20", "now short"), doc("d21", long_text("r21z"), year=1900)])


def test_an_upserted_long_document_is_chunked_and_found_by_its_tail(live: LiveCollection) -> None:
    text = long_text("tail", 30)
    report = live.upsert([doc("long-1", text, year=2026)])
    (row,) = report.row_ids
    entry = live.view().delta.entries[row]
    assert entry.spans is not None and len(entry.spans) == len(fake_split([text])[0][0]) > 2
    tail = entry.vectors[-1:]  # the query is the last window: only chunking can see it
    (hits,) = live.hits(*live.search_dense(tail, 5), queries=tail)
    assert hits[0].id == "long-1" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    start, end = hits[0].span
    assert (start, end) == entry.spans[-1] and text[start:end] == text[entry.spans[-1][0] :]
    assert [h.id for h in hits].count("long-1") == 1


@pytest.mark.parametrize("k", [1, 7, 40])
def test_live_search_equals_brute_force_over_live_chunks(live: LiveCollection, k: int) -> None:
    _writes(live)
    view = live.view()
    found = ids_of(view.search_dense(QUERIES, k))
    assert all(len(row) == len(set(row)) == k for row in found)
    assert found == brute_force_chunks(view, QUERIES, k)
    allowed = view.select({"year": {"gte": 2005}})
    filtered = ids_of(view.search_dense(QUERIES, k, allowed=allowed))
    assert all(len(row) == min(k, len(allowed)) and set(row) <= set(allowed.tolist()) for row in filtered)
    assert filtered == brute_force_chunks(view, QUERIES, k, set(allowed.tolist()))


def test_deleted_and_replaced_long_documents_vanish_with_every_chunk(live: LiveCollection) -> None:
    view = live.view()
    main_long = view.row_id("d10")
    queries = chunk_queries(view, main_long)
    assert len(queries) > 2
    report = live.upsert([doc("delta-long", long_text("gone"))])
    delta_queries = chunk_queries(live.view(), report.row_ids[0])
    live.delete(["d10", "delta-long"])
    live.upsert([doc("d30", "replaced by a short text")])  # d30 was long in the main segment
    view = live.view()
    for q in (queries, delta_queries):
        (rows,) = [set(r) for r in ids_of(view.search_dense(q, 300))][:1]
        assert main_long not in rows and report.row_ids[0] not in rows
    old_d30 = chunked_old_row = None
    with Collection.open(view.main.directory) as main:
        old_d30 = main.docstore.row_ids(["d30"])[0]
        chunked_old_row = old_d30 in set(main.dense.chunks.multi.tolist())
    assert chunked_old_row
    assert all(old_d30 not in row for row in ids_of(view.search_dense(QUERIES, 300)))
    assert [h.id for h in view.hits(*view.search_dense(QUERIES, 300))[0]].count("d30") == 1


def test_replay_after_reopen_restores_chunks(generation: Path, tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite"
    with open_chunked(generation, log) as live:
        _writes(live)
        before = live.search_dense(QUERIES, 20)
        entries = {r: (e.spans, e.vectors.copy()) for r, e in live.view().delta.entries.items()}
    with open_chunked(generation, log) as again:
        np.testing.assert_array_equal(again.search_dense(QUERIES, 20)[1], before[1])
        replayed = again.view().delta.entries
        assert {r: e.spans for r, e in replayed.items()} == {r: s for r, (s, _) in entries.items()}
        for r, (_, vectors) in entries.items():
            np.testing.assert_array_equal(replayed[r].vectors, vectors)


def test_a_merge_keeps_chunked_documents_findable(generation: Path, tmp_path: Path) -> None:
    log = tmp_path / "live.sqlite"
    with open_chunked(generation, log) as live:
        _writes(live)
        view = live.view()
        before = live.search_dense(QUERIES, 25)
        tail = chunk_queries(view, view.row_id("n5"))[-1:]
        live.merge(tmp_path / "gen-2")
        info = read_info(tmp_path / "gen-2")
        assert info.chunking == ChunkSettings("chunk", 40, 10) and CHUNKS_FILE in info.checksums
        assert live.main.chunked and live.stats().delta_documents == 0
        after = live.search_dense(QUERIES, 25)
        np.testing.assert_array_equal(after[1], before[1])  # same rows, same order: chunks carried over
        np.testing.assert_allclose(after[0], before[0], rtol=1e-5)
        assert ids_of(after) == brute_force_chunks(live.view(), QUERIES, 25)
        (hits,) = live.hits(*live.search_dense(tail, 3), queries=tail)
        assert hits[0].id == "n5" and hits[0].span is not None and hits[0].span[1] == len(hits[0].text)


def test_an_unchunked_generation_takes_chunked_upserts_and_merges_them(tmp_path: Path) -> None:
    generation = build_collection(tmp_path)  # built before chunking: no policy, one vector per row
    chunking = ChunkSettings("chunk", 40, 10)
    with LiveCollection.open(Collection.open(generation), tmp_path / "l.sqlite", embed=fake_embed) as live:
        live.upsert([doc("long", long_text("q"))])  # no policy recorded: truncate, embedded whole
        assert live.view().delta.entries[live.view().row_id("long")].spans is None
    # A generation that records 'chunk' splits upserts; merging writes the first chunk map.
    info = read_info(generation)
    from index.store.collection_info import write_info

    write_info(generation, type(info)(**{**info.__dict__, "chunking": chunking}))
    with open_chunked(generation, tmp_path / "m.sqlite") as live:
        live.upsert([doc("long", long_text("q"))])
        tail = live.view().delta.entries[live.view().row_id("long")].vectors[-1:]
        live.merge(tmp_path / "gen-2")
        assert (
            live.main.chunked
            and read_info(tmp_path / "gen-2").chunks == 299 + len(fake_split([long_text("q")])[0][0]) + 1
        )
        assert live.hits(*live.search_dense(tail, 1))[0][0].id == "long"


def test_policy_error_and_missing_split_are_refused(tmp_path: Path) -> None:
    generation = chunked_generation(tmp_path, policy="error")
    with open_chunked(generation, tmp_path / "l.sqlite") as live:
        with pytest.raises(LongDocumentError, match=r"document 'big' is \d+ tokens long") as caught:
            live.upsert([doc("ok", "short"), doc("big", long_text("b"))])
        assert caught.value.doc_id == "big" and caught.value.tokens > 40
        assert live.get("ok") is None  # all or nothing
    chunked = chunked_generation(tmp_path, name="gen-c")
    with LiveCollection.open(Collection.open(chunked), tmp_path / "n.sqlite", embed=fake_embed) as live:
        with pytest.raises(InvalidParameterError, match="without a split function"):
            live.upsert([doc("x", "short")])


def _run_until(args: list[str], prefix: str) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
    )
    line = process.stdout.readline()
    assert line.startswith(prefix), line
    return process


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()


def test_chunked_writes_survive_kill_9_and_a_killed_merge(generation: Path, tmp_path: Path) -> None:
    pointer, log = tmp_path / "CURRENT", tmp_path / "live" / "live.sqlite"
    pointer.write_text(str(generation))
    new = [{"id": "k1", "text": long_text("kilo")}, {"id": "d10", "text": "d10 is short now"}]
    _kill(_run_until([str(pointer), str(log), "upsert", json.dumps(new)], "ACK"))
    with open_chunked(generation, log) as live:
        view = live.view()
        tail = view.delta.entries[view.row_id("k1")].vectors[-1:]
        assert live.hits(*live.search_dense(tail, 1))[0][0].id == "k1" and live.get("d10").text == "d10 is short now"
        state = (live.search_dense(QUERIES, 30)[1].tolist(), len(live))
    _kill(_run_until([str(pointer), str(log), "merge", "committed"], "STEP committed"))
    merged = Path(pointer.read_text())
    with open_chunked(merged, log) as live:  # committed but not truncated: the log's writes are not applied twice
        assert (live.search_dense(QUERIES, 30)[1].tolist(), len(live)) == state
        assert live.stats().delta_documents == 0 and live.hits(*live.search_dense(tail, 1))[0][0].id == "k1"


def test_a_lossy_chunked_main_is_re_embedded_window_by_window_on_merge(tmp_path: Path) -> None:
    rows = records(120)
    for i in range(0, 120, 10):
        rows[i]["text"] = long_text(f"w{i}x")
    corpus = write_corpus(tmp_path / "sq.jsonl", rows)
    build_index(
        [corpus],
        embed=fake_embed,
        dim=DIM,
        out_dir=tmp_path / "sq",
        work_dir=tmp_path / ".work-sq",
        build_key="t",
        factory="SQ8",
        progress=False,
        chunking=ChunkSettings("chunk", 40, 10),
        split=fake_split,
    )
    with open_chunked(tmp_path / "sq", tmp_path / "sq.sqlite") as live:
        before = live.main.dense.chunks
        live.upsert([doc("new", long_text("fresh"))])
        tail = live.view().delta.entries[live.view().row_id("new")].vectors[-1:]
        live.merge(tmp_path / "sq-2")
        after = live.main.dense.chunks
        main_part = np.isin(after.rows, before.rows)
        assert np.array_equal(after.starts[main_part], before.starts) and np.array_equal(
            after.ends[main_part], before.ends
        )
        assert live.hits(*live.search_dense(tail, 1))[0][0].id == "new"
        d10 = live.view().row_id("d10")
        window = fake_embed([live.get("d10").passage()[after.starts[after.rows == d10][-1] :]])
        assert live.hits(*live.search_dense(window, 1))[0][0].id == "d10"  # its last window, re-embedded
