"""Merging a live collection into a new generation: same results, writes during the merge kept, crash safety."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from index import BuildInProgressError, Collection, InvalidParameterError, read_info
from index.live.live_collection import LiveCollection
from index.live.log import LiveLog
from index.live.merge import MARKER_FILE, MergePolicy, read_marker
from tests.index.conftest import DIM, fake_embed
from tests.index.live_helpers import brute_force, build_collection, doc, ids_of, open_live, state_of

WORKER = Path(__file__).with_name("live_worker.py")
QUERIES = fake_embed([f"query {i}" for i in range(12)] + ["rewritten 12", "fresh document 3 about topic 3"])
TEXTS = ["fresh document topic", "rewritten", "marker17 marker200", "text of d number 42"]


def _writes(live: LiveCollection) -> None:
    live.upsert([doc(f"n{i}", f"fresh document {i} about topic {i % 7}", year=2000 + i) for i in range(30)])
    live.delete([f"d{i}" for i in range(0, 300, 11)] + ["n4"])
    live.upsert([doc(f"d{i}", f"rewritten {i}", year=1900) for i in range(1, 60, 6)])


def test_a_merge_gives_the_same_results_and_empties_the_log(tmp_path: Path) -> None:
    generation, log = build_collection(tmp_path), tmp_path / "live.sqlite"
    with open_live(generation, log) as live:
        _writes(live)
        before = live.view()
        dense_before = live.search_dense(QUERIES, 20)
        count, seq = len(live), live.stats().seq
        committed: list[Path] = []
        report = live.merge(tmp_path / "gen-2", commit=lambda c: committed.append(c.directory))
        assert committed == [tmp_path / "gen-2"] and report.seq == seq and report.documents == count
        after = live.view()
        assert live.main.directory == tmp_path / "gen-2" and len(live) == count
        assert (live.stats().delta_documents, live.stats().tombstones) == (0, 0)
        dense_after = live.search_dense(QUERIES, 20)
        np.testing.assert_array_equal(dense_after[1], dense_before[1])  # same rows: ids are stable
        np.testing.assert_allclose(dense_after[0], dense_before[0], rtol=1e-6)
        assert ids_of(dense_after) == brute_force(after, QUERIES, 20)
        assert [d.id for d in before.main.docstore.get(after.row_ids()[:5].tolist())] == [
            d.id for d in after.main.docstore.get(after.row_ids()[:5].tolist())
        ]
        assert read_marker(tmp_path / "gen-2").seq == seq
        info = read_info(tmp_path / "gen-2")
        assert info.count == count and MARKER_FILE in info.checksums and info.lexical is not None
        contents = LiveLog.open(log, dim=DIM).read()
        assert (contents.entries, contents.tombstones) == ([], {})
        state = state_of(live, QUERIES, TEXTS)
        assert live.merge(tmp_path / "gen-3") is None  # nothing to fold in
    with open_live(tmp_path / "gen-2", log) as again:
        assert state_of(again, QUERIES, TEXTS) == state
        assert again.get("d1").text == "rewritten 1" and again.get("d11") is None and again.get("n4") is None


def test_writes_during_a_merge_survive_the_swap(tmp_path: Path) -> None:
    generation, log = build_collection(tmp_path), tmp_path / "live.sqlite"
    with open_live(generation, log) as live:
        _writes(live)

        def meanwhile(step: str) -> None:  # runs inside merge(), after the new generation was written
            if step == "written":
                live.upsert([doc("during", "written while merging"), doc("n5", "n5 changed while merging")])
                live.delete(["n6", "d2", "d1"])  # delta rows and main rows the merge has already copied

        live.merge(tmp_path / "gen-2", on_step=meanwhile)
        assert live.stats().delta_documents == 2 and live.stats().tombstones == 4  # n5's old row, n6, d2, d1
        for doc_id, text in (("during", "written while merging"), ("n5", "n5 changed while merging")):
            assert live.get(doc_id).text == text
        assert all(live.get(d) is None for d in ("n6", "d2", "d1"))
        view = live.view()
        assert ids_of(view.search_dense(QUERIES, 30)) == brute_force(view, QUERIES, 30)
        found = {h.id for row in view.hits(*view.search_lexical(["merging", "rewritten", "fresh"], 100)) for h in row}
        assert {"during", "n5"} <= found and not found & {"n6", "d2", "d1"}
        state = state_of(live, QUERIES, TEXTS)
    with open_live(tmp_path / "gen-2", log) as again:
        assert state_of(again, QUERIES, TEXTS) == state


def test_a_lossy_index_is_re_embedded_and_an_hnsw_one_is_not(tmp_path: Path) -> None:
    for factory in ("IVF4,Flat", "HNSW16"):
        generation = build_collection(tmp_path, factory=factory, name=f"gen-{factory[:3]}")
        calls: list[int] = []

        def counting(passages: list[str], calls: list[int] = calls) -> np.ndarray:
            calls.append(len(passages))
            return fake_embed(passages)

        with LiveCollection.open(Collection.open(generation), tmp_path / f"{factory}.sqlite", embed=counting) as live:
            live.upsert([doc("x", "brand new")])
            live.delete(["d3"])
            live.merge(tmp_path / f"merged-{factory[:3]}")
            assert live.main.info.factory == factory and len(live) == 300
            assert sum(calls) == (1 + 299 if factory.startswith("IVF") else 1)
            hit = live.hits(*live.search_dense(fake_embed(["brand new"]), 1))[0][0]
            assert hit.id == "x"


def test_background_merge_and_policy(tmp_path: Path) -> None:
    generation = build_collection(tmp_path)
    policy = MergePolicy(max_delta_docs=1000, max_fraction=0.1, min_changes=10)
    assert not policy.due(main_docs=300, delta_docs=5, tombstones=0)  # too few changes to bother
    assert policy.due(main_docs=300, delta_docs=30, tombstones=0) and policy.due(
        main_docs=300, delta_docs=0, tombstones=30
    )
    assert not policy.due(main_docs=300, delta_docs=29, tombstones=29)
    with open_live(generation, tmp_path / "live.sqlite") as live:
        assert not live.merge_due(policy)
        live.upsert([doc(f"n{i}", f"new {i}") for i in range(30)])
        assert live.merge_due(policy)
        release = threading.Event()
        future = live.start_merge(tmp_path / "gen-2", commit=lambda _: release.wait(60))
        live.upsert([doc("meanwhile", "a write while the merge runs")])  # writers do not wait for a merge
        with pytest.raises(BuildInProgressError, match="already running"):
            live.merge(tmp_path / "gen-3")
        release.set()
        assert future.result(timeout=60).from_delta == 30
        assert not live.merge_due(policy) and len(live) == 331 and live.stats().delta_documents == 1


def test_merging_away_every_document_is_refused(tmp_path: Path) -> None:
    generation = build_collection(tmp_path, n=5)
    with open_live(generation, tmp_path / "live.sqlite") as live:
        live.delete([f"d{i}" for i in range(5)])
        with pytest.raises(InvalidParameterError, match="every document"):
            live.merge(tmp_path / "gen-2")
        assert len(live) == 0 and not (tmp_path / "gen-2").exists()


@pytest.mark.parametrize(("step", "published"), [("written", False), ("committed", True), ("truncated", True)])
def test_kill_9_during_a_merge_leaves_a_consistent_state(tmp_path: Path, step: str, published: bool) -> None:
    generation, log, pointer = build_collection(tmp_path), tmp_path / "live" / "live.sqlite", tmp_path / "CURRENT"
    pointer.write_text(str(generation))
    with open_live(generation, log) as live:
        _writes(live)
        state = state_of(live, QUERIES, TEXTS, bm25_scores=False)
    process = subprocess.Popen(
        [sys.executable, str(WORKER), str(pointer), str(log), "merge", step], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == f"STEP {step}"
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    current = Path(pointer.read_text())
    assert (current == tmp_path / "merged") is published and (tmp_path / "merged").is_dir()
    with open_live(current, log) as again:  # the old generation and the whole log, or the new one and what is left
        assert state_of(again, QUERIES, TEXTS, bm25_scores=False) == state
        assert again.stats().delta_documents == (0 if published else 39)
        again.upsert([doc("after-crash", "still writable")])
        assert again.get("after-crash") is not None
