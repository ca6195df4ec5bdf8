from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from index import CorpusError, DocStore, Document, IndexFileError, OutputExistsError, ReadOnlyError


def _docs(n: int, prefix: str = "d") -> list[Document]:
    return [Document(f"{prefix}{i}", f"T{i}", f"text {i} é", {"n": i, "tags": ["x"]}) for i in range(n)]


@pytest.fixture
def store(tmp_path: Path):
    with DocStore.create(tmp_path / "docs.sqlite") as s:
        yield s


def test_round_trip_preserves_order_and_unknown_ids_are_none(store: DocStore) -> None:
    docs = _docs(5)
    ids = store.add(docs)
    assert ids.dtype == np.int64 and ids.tolist() == sorted(ids.tolist())
    got = store.get([int(ids[3]), 999, int(ids[0]), -1])
    assert got == [docs[3], None, docs[0], None]
    assert store.row_ids(["d4", "zzz", "d1"]) == [int(ids[4]), None, int(ids[1])]
    assert store.all_row_ids().tolist() == ids.tolist()
    assert len(store) == 5
    assert store.get([]) == [] and store.row_ids([]) == []


def test_large_batches_need_one_query_only(store: DocStore) -> None:
    ids = store.add(_docs(50))
    wanted = list(range(-20_000, 20_000))  # more ids than SQLite allows as bound variables
    got = store.get(wanted)
    assert sum(doc is not None for doc in got) == 50
    assert got[wanted.index(int(ids[7]))].id == "d7"


def test_duplicate_id_is_refused_and_nothing_is_added(store: DocStore) -> None:
    store.add(_docs(3))
    with pytest.raises(CorpusError, match="'d1'"):
        store.add([Document("new", "", "x"), Document("d1", "", "again")])
    assert len(store) == 3 and store.row_ids(["new"]) == [None]
    with pytest.raises(CorpusError, match="'x'"):
        store.add([Document("x", "", "1"), Document("x", "", "2")])


def test_upsert_replaces_with_a_new_row_id(store: DocStore) -> None:
    ids = store.add(_docs(3))
    # d2 holds the highest row id: AUTOINCREMENT must still not hand it out again.
    new = store.add([Document("d2", "", "replaced"), Document("y", "", "1"), Document("y", "", "2")], upsert=True)
    assert new[0] > ids.max() and len(set(new.tolist()) | set(ids.tolist())) == 6
    assert store.get([int(ids[2])]) == [None]
    assert store.get([int(new[0])])[0].text == "replaced"
    assert store.get([int(new[2])])[0].text == "2" and store.get([int(new[1])]) == [None]
    assert len(store) == 4


def test_readonly_open_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "docs.sqlite"
    with DocStore.create(path) as s:
        s.add(_docs(2))
    with DocStore.open(path) as ro:
        assert ro.readonly and len(ro) == 2
        with pytest.raises(ReadOnlyError, match="read-only"):
            ro.add(_docs(1, "z"))
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # enforced by SQLite too (mode=ro)
            ro._conn.execute("DELETE FROM documents")


def test_open_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError, match=r"missing\.sqlite"):
        DocStore.open(tmp_path / "missing.sqlite")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IndexFileError, match=r"garbage\.sqlite"):
        DocStore.open(garbage)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    with pytest.raises(IndexFileError, match="not a docstore"):
        DocStore.open(other)
    DocStore.create(tmp_path / "exists.sqlite").close()
    with pytest.raises(OutputExistsError):
        DocStore.create(tmp_path / "exists.sqlite")


def test_transaction_commits_caller_rows_with_documents(store: DocStore) -> None:
    with store.transaction() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS marker (v INTEGER)")
    with pytest.raises(RuntimeError), store.transaction() as conn:
        store.add(_docs(2))
        conn.execute("INSERT INTO marker VALUES (1)")
        raise RuntimeError("crash before commit")
    assert len(store) == 0
    with store.transaction() as conn:
        store.add(_docs(2))
        with pytest.raises(CorpusError):
            store.add([Document("ok", "", "x"), Document("d0", "", "dup")])  # savepoint: undone alone
        conn.execute("INSERT INTO marker VALUES (1)")
    assert len(store) == 2 and store.row_ids(["ok"]) == [None]


def test_concurrent_reads(store: DocStore) -> None:
    ids = store.add(_docs(200)).tolist()
    errors: list[BaseException] = []

    def read(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            for _ in range(50):
                pick = rng.choice(ids, 10).tolist()
                assert [d.id for d in store.get(pick)] == [f"d{ids.index(i)}" for i in pick]
        except BaseException as exc:  # collected, then checked in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_export_is_compact_self_contained_and_keeps_the_sequence(store: DocStore, tmp_path: Path) -> None:
    ids = store.add(_docs(10))
    store.add([Document("d9", "", "new")], upsert=True)
    out = tmp_path / "export.sqlite"
    store.export(out)
    conn = sqlite3.connect(out)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    with DocStore.open(out, readonly=False) as copy:
        assert len(copy) == 10
        assert copy.get([int(ids[0])]) == store.get([int(ids[0])])
        assert copy.add([Document("n", "", "x")])[0] == ids.max() + 2
