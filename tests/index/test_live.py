"""Live upsert and delete over a published collection: read after write, exact search, replay, durability."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from index import Collection, CorpusError, Document, IndexFileError, InvalidParameterError, UnknownFieldError
from index.live.live_collection import LiveCollection
from index.live.log import LiveLog
from tests.index.conftest import fake_embed
from tests.index.live_helpers import brute_force, build_collection, doc, ids_of, open_live, state_of

WORKER = Path(__file__).with_name("live_worker.py")


@pytest.fixture
def generation(tmp_path: Path) -> Path:
    return build_collection(tmp_path)


@pytest.fixture
def live(generation: Path, tmp_path: Path):
    with open_live(generation, tmp_path / "live" / "live.sqlite") as live:
        yield live


def top_ids(live: LiveCollection, text: str, k: int = 5) -> tuple[list[str], list[str]]:
    """Corpus ids of the dense hits for ``text``'s own vector and of the lexical hits for ``text``."""
    view = live.view()
    dense = view.hits(*view.search_dense(fake_embed([text]), k))[0]
    lexical = view.hits(*view.search_lexical([text], k))[0]
    return [h.id for h in dense], [h.id for h in lexical]


def test_an_upserted_document_is_found_at_once_dense_and_lexical(live: LiveCollection) -> None:
    assert len(live) == 300 and live.stats().seq == 0
    report = live.upsert([doc("new-1", "zygomorphic quasicrystal flutter", year=2026)])
    assert (report.seq, report.created, report.replaced) == (1, 1, 0)
    assert report.row_ids[0] > 300  # above every row of the main segment
    dense, lexical = top_ids(live, "zygomorphic quasicrystal flutter")
    assert dense[0] == "new-1" and lexical == ["new-1"]  # only it has those words
    assert live.get("new-1") == Document("new-1", "", "zygomorphic quasicrystal flutter", {"year": 2026})
    assert len(live) == 301


def test_a_deleted_document_is_gone_from_every_search(live: LiveCollection) -> None:
    old_text = live.get("d5").passage()
    live.upsert([doc("new-1", "zygomorphic quasicrystal")])
    report = live.delete(["d5", "new-1", "never-was"])
    assert (report.deleted, report.missing) == (["d5", "new-1"], ["never-was"])
    assert len(live) == 299 and live.get("d5") is None and live.get("new-1") is None
    assert "d5" not in top_ids(live, old_text, k=300)[0]
    assert top_ids(live, "marker5 zygomorphic quasicrystal")[1] == []  # lexical: main and delta alike
    again = live.delete(["d5"])  # deleting twice is not a write
    assert (again.seq, again.deleted, again.missing) == (report.seq, [], ["d5"])


def test_an_upsert_replaces_the_document(live: LiveCollection) -> None:
    old_text = live.get("d7").passage()
    report = live.upsert([doc("d7", "entirely new words about hypersonic ablation", year=2030)])
    assert (report.created, report.replaced) == (0, 1) and len(live) == 300
    assert live.get("d7").text == "entirely new words about hypersonic ablation"
    dense, lexical = top_ids(live, "entirely new words about hypersonic ablation")
    assert dense[0] == "d7" and lexical[0] == "d7"
    view = live.view()
    hits = view.hits(*view.search_dense(fake_embed([old_text]), 300))[0]
    assert hits[0].id != "d7" and [h.row for h in hits if h.id == "d7"] == report.row_ids  # old row tombstoned
    assert top_ids(live, "marker7")[1] == []  # ... and so are its old words
    live.upsert([doc("d7", "third version")])  # replacing a delta document replaces it in the delta
    assert len(live) == 300 and live.stats().delta_documents == 1
    dense, _ = top_ids(live, "third version", k=300)
    assert dense.count("d7") == 1


def _shuffle_writes(live: LiveCollection) -> None:
    rng = np.random.default_rng(3)
    live.upsert([doc(f"n{i}", f"fresh document {i} about topic {i % 7}", year=2000 + i) for i in range(40)])
    live.delete([f"d{i}" for i in rng.choice(300, 30, replace=False)] + ["n3", "n11"])
    live.upsert([doc(f"d{i}", f"rewritten {i}", year=1900) for i in range(0, 60, 6)] + [doc("n5", "again")])


@pytest.mark.parametrize("k", [1, 10, 50])
def test_live_top_k_equals_brute_force_over_the_live_view(live: LiveCollection, k: int) -> None:
    _shuffle_writes(live)
    view = live.view()
    queries = fake_embed([f"query {i}" for i in range(20)])
    assert ids_of(view.search_dense(queries, k)) == brute_force(view, queries, k)
    rows = view.row_ids()
    rng = np.random.default_rng(k)
    for fraction in (0.5, 0.05, 0.01):  # unselective to selective filters, mixing main and delta rows
        allowed = np.sort(rng.choice(rows, max(1, int(fraction * len(rows))), replace=False))
        found = ids_of(view.search_dense(queries, k, allowed=allowed))
        assert found == brute_force(view, queries, k, allowed)
        assert all(len(row) == min(k, len(allowed)) for row in found)  # k hits whenever k match
    dead = np.array(sorted(view.tombstones), dtype=np.int64)
    assert ids_of(view.search_dense(queries, k, allowed=dead)) == [[]] * 20  # deleted rows stay deleted


def test_lexical_search_applies_tombstones_and_filters(live: LiveCollection) -> None:
    _shuffle_writes(live)
    view = live.view()
    texts = ["fresh document topic", "text of d number", "rewritten"]
    rows = set(view.row_ids().tolist())
    for row in ids_of(view.search_lexical(texts, 300)):
        assert set(row) <= rows and len(row) == len(set(row))
    allowed = np.sort(np.random.default_rng(0).choice(view.row_ids(), 40, replace=False))
    filtered = ids_of(view.search_lexical(texts, 300, allowed=allowed))
    unfiltered = ids_of(view.search_lexical(texts, 300))
    for got, full in zip(filtered, unfiltered, strict=True):
        assert set(got) == {r for r in full if r in set(allowed.tolist())}  # the filter loses nothing


def test_replay_after_reopen_equals_the_state_before(generation: Path, tmp_path: Path) -> None:
    log = tmp_path / "live" / "live.sqlite"
    queries, texts = fake_embed(["q1", "rewritten 6", "fresh document 2"]), ["fresh topic", "rewritten", "marker9"]
    with open_live(generation, log) as live:
        _shuffle_writes(live)
        before, stats = state_of(live, queries, texts), live.stats()
        rows = live.upsert([doc("after", "one more")]).row_ids
        live.delete(["after"])
    with open_live(generation, log) as again:
        assert state_of(again, queries, texts) == before and again.stats().seq == stats.seq + 2
        assert again.upsert([doc("later", "x y z")]).row_ids[0] > rows[0]  # ids are never handed out twice


def test_the_log_lists_the_documents_changed_since_a_write_through_merges(live: LiveCollection, tmp_path: Path) -> None:
    """What a rollback carries to another version: every id upserted or deleted after a given write, once each."""
    live.upsert([doc("new-1", "first words"), doc("new-2", "second words")])  # seq 1
    live.delete(["d5", "never-was"])  # seq 2: an id that was not there changes nothing
    live.upsert([doc("new-1", "new words")])  # seq 3
    assert live.changed_since(0) == ["new-2", "d5", "new-1"]  # by their last change
    assert (live.changed_since(2), live.changed_since(3)) == (["new-1"], [])
    assert live.merge(tmp_path / "gen-2") is not None  # the delta folds into a new generation; the record stays
    assert live.changed_since(1) == ["d5", "new-1"]


def test_a_log_from_before_the_record_of_changes_knows_only_the_writes_after_it(
    generation: Path, tmp_path: Path
) -> None:
    log = tmp_path / "live" / "live.sqlite"
    with open_live(generation, log) as live:
        live.upsert([doc("old-1", "written by an older release")])
    with sqlite3.connect(log) as conn:  # as an older release left it: no changes table
        conn.execute("DROP TABLE changes")
        conn.execute("DELETE FROM live_meta WHERE key = 'changes_from'")
    with open_live(generation, log) as live:
        assert live.changed_since(0) is None and live.changed_since(1) == []
        live.delete(["old-1"])
        assert live.changed_since(1) == ["old-1"] and live.get("old-1") is None


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([doc("a", "x"), doc("a", "y")], "appears twice"),
        ([Document("b", "", "  ")], "neither title nor text"),
        ([doc("c", "x", when=object())], "not JSON-serialisable"),
        ([Document("", "", "x")], "non-empty strings"),
    ],
)
def test_a_bad_batch_changes_nothing(live: LiveCollection, batch: list[Document], message: str) -> None:
    before = live.stats()
    with pytest.raises(CorpusError, match=message):
        live.upsert([doc("ok", "fine"), *batch])
    assert live.stats() == before and live.get("ok") is None


def test_a_failing_encoder_changes_nothing(generation: Path, tmp_path: Path) -> None:
    def half_norm(passages: list[str]) -> np.ndarray:
        return fake_embed(passages) * 0.5

    with LiveCollection.open(Collection.open(generation), tmp_path / "log.sqlite", embed=half_norm) as live:
        with pytest.raises(InvalidParameterError, match="L2-normalised"):
            live.upsert([doc("x", "y")])
        assert live.stats().seq == 0 and len(live) == 300
    with LiveCollection.open(Collection.open(generation), tmp_path / "log.sqlite") as live:
        with pytest.raises(InvalidParameterError, match="without an embed function"):
            live.upsert([doc("x", "y")])
        assert live.delete(["d1"]).deleted == ["d1"]  # deletes need no encoder


def test_bad_arguments_are_refused(live: LiveCollection) -> None:
    with pytest.raises(InvalidParameterError, match="k must be"):
        live.search_dense(fake_embed(["q"]), 0)
    with pytest.raises(InvalidParameterError, match="integer row ids"):
        live.search_dense(fake_embed(["q"]), 3, allowed=np.array([0.5]))
    with pytest.raises(InvalidParameterError, match="shape"):
        live.search_dense(np.zeros((1, 5), dtype=np.float32), 3)


def test_a_log_written_over_another_generation_is_refused(generation: Path, tmp_path: Path) -> None:
    other = build_collection(tmp_path, n=50, name="other")
    log = tmp_path / "live.sqlite"
    with open_live(generation, log) as live:
        live.upsert([doc("x", "y")])
    with pytest.raises(IndexFileError, match="1 unmerged write"):
        open_live(other, log)
    with open_live(generation, log) as live:  # still fine where it belongs
        live.delete(["x"])
    empty = tmp_path / "empty.sqlite"
    open_live(generation, empty).close()
    with open_live(other, empty) as live:  # an empty log simply moves to the new generation
        assert len(live) == 50
    with pytest.raises(IndexFileError, match="dim"):
        LiveLog.open(log, dim=7)


def _run_until_ack(args: list[str]) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    assert line.startswith(("ACK", "STEP")), line
    return process


def _kill(process: subprocess.Popen) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def test_acknowledged_writes_survive_kill_9(generation: Path, tmp_path: Path) -> None:
    pointer, log = tmp_path / "CURRENT", tmp_path / "live" / "live.sqlite"
    pointer.write_text(str(generation))
    new = [{"id": "k1", "text": "kilonova spectroscopy", "metadata": {"year": 2026}}, {"id": "d3", "text": "changed"}]
    _kill(_run_until_ack([str(pointer), str(log), "upsert", json.dumps(new)]))
    with open_live(generation, log) as live:
        assert top_ids(live, "kilonova spectroscopy")[1] == ["k1"] and live.get("d3").text == "changed"
    _kill(_run_until_ack([str(pointer), str(log), "delete", json.dumps(["k1", "d4"])]))
    with open_live(generation, log) as live:
        assert live.get("k1") is None and live.get("d4") is None and live.get("d3").text == "changed"
        assert len(live) == 299 and top_ids(live, "kilonova spectroscopy")[1] == []


def test_metadata_filters_resolve_over_both_segments(live: LiveCollection) -> None:
    _shuffle_writes(live)  # n<i>: year 2000 + i; rewritten d<i>: year 1900; main: 1990 + i % 30
    view = live.view()
    queries = fake_embed([f"query {i}" for i in range(10)])
    for filter, matching in (
        ({"year": {"gte": 2015}}, lambda d: d.metadata.get("year", 0) >= 2015),
        (
            {"or": [{"group": "a"}, {"year": 1900}]},
            lambda d: d.metadata.get("group") == "a" or d.metadata.get("year") == 1900,
        ),
        ({"year": {"in": [2001, 2003, 1995]}}, lambda d: d.metadata.get("year") in (2001, 2003, 1995)),
    ):
        allowed = live.select(filter)
        rows = view.row_ids()
        docs = view.hits(np.zeros((1, len(rows)), dtype=np.float32), rows[None, :])[0]
        assert allowed.tolist() == sorted(h.row for h in docs if matching(h))  # every live match, nothing else
        assert ids_of(view.search_dense(queries, 10, allowed=allowed)) == brute_force(view, queries, 10, allowed)
    with pytest.raises(UnknownFieldError, match="colour"):
        live.select({"colour": "red"})
    live.upsert([doc("tagged", "new field", colour="red")])  # a field only the delta has
    assert live.select({"colour": "red"}).tolist() == [live.view().row_id("tagged")]
    live.delete(["tagged"])
    assert live.select({"colour": "red"}, check=False).tolist() == []
