"""``rr documents``: JSONL upserts, deletes, reads and merges on an expert directory, and through a server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.app.conftest import run_cli, slice_corpus, write_jsonl
from tests.app.service.conftest import ADMIN_KEY, start_server  # noqa: F401  (start_server: a fixture)


@pytest.fixture()
def cranfield(cli_env: Path, datasets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    corpus = slice_corpus(datasets / "cranfield" / "corpus.jsonl", tmp_path / "cranfield.jsonl", 40)
    assert run_cli(["create-expert", "cranfield"], capsys)[0] == 0
    code, _, err = run_cli(["index", "--expert", "cranfield", "--corpus", str(corpus), "--no-progress"], capsys)
    assert code == 0, err
    return cli_env


def _new_documents(path: Path, count: int = 5) -> Path:
    rows = [
        {"_id": f"memo-{i}", "title": f"zyxqwv memo {i}", "text": f"flutter test {i}", "year": 2020 + i}
        for i in range(count)
    ]
    return write_jsonl(path, rows)


def _search(capsys, *extra: str) -> list[str]:
    code, out, err = run_cli(
        ["search", "--json", "--expert", "cranfield", "--mode", "lexical", "-k", "10", *extra], capsys
    )
    assert code == 0, err
    return [hit["id"] for hit in json.loads(out)["results"][0]["hits"]]


def test_upsert_get_delete_and_merge(cranfield: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(
        ["documents", "upsert", str(_new_documents(tmp_path / "new.jsonl")), "--expert", "cranfield"], capsys
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["upserted"] == 5 and summary["created"] == 5 and summary["documents"] == 45
    assert sorted(_search(capsys, "zyxqwv")) == [f"memo-{i}" for i in range(5)]  # a CLI search reads the live log

    code, out, _ = run_cli(["documents", "get", "memo-3", "--expert", "cranfield"], capsys)
    assert code == 0 and json.loads(out)["metadata"] == {"year": 2023}

    code, out, _ = run_cli(["documents", "delete", "memo-0", "memo-1", "nope", "--expert", "cranfield"], capsys)
    assert code == 0 and json.loads(out)["deleted"] == ["memo-0", "memo-1"] and json.loads(out)["missing"] == ["nope"]
    assert sorted(_search(capsys, "zyxqwv")) == ["memo-2", "memo-3", "memo-4"]

    code, out, _ = run_cli(["documents", "merge", "--expert", "cranfield"], capsys)
    merged = json.loads(out)
    assert code == 0 and merged["merged"] and merged["documents"] == 43
    code, out, _ = run_cli(["experts", "--json"], capsys)
    assert json.loads(out)[0]["documents"] == 43
    assert sorted(_search(capsys, "zyxqwv")) == ["memo-2", "memo-3", "memo-4"]
    code, _, err = run_cli(["documents", "get", "memo-0", "--expert", "cranfield"], capsys)
    assert code == 2 and "has no document 'memo-0'" in err


def test_a_bad_line_writes_nothing(cranfield: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [{"_id": "ok-1", "text": "fine"}, "{not json", {"_id": "ok-2", "text": "fine"}]
    code, _, err = run_cli(
        ["documents", "upsert", str(write_jsonl(tmp_path / "bad.jsonl", rows)), "-e", "cranfield"], capsys
    )
    assert code == 2 and "bad.jsonl:2" in err and "nothing was written" in err
    rows = [{"_id": "dup", "text": "one"}, {"_id": "dup", "text": "two"}]
    code, _, err = run_cli(
        ["documents", "upsert", str(write_jsonl(tmp_path / "dup.jsonl", rows)), "-e", "cranfield"], capsys
    )
    assert code == 2 and "already appears on line 1" in err
    assert _search(capsys, "fine") == []


def test_refused_while_another_process_writes_the_expert(cranfield: Path, tmp_path: Path, capsys) -> None:
    lock = cranfield / "cranfield" / "live" / "writer.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); f.truncate(0); f.write(str(os.getpid())); f.flush()\n"
            "print('locked', flush=True); time.sleep(120)",
            str(lock),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = run_cli(
            ["documents", "upsert", str(_new_documents(tmp_path / "n.jsonl")), "-e", "cranfield"], capsys
        )
        assert code == 2 and f"pid {holder.pid}" in err and "--url" in err
        code, out, _ = run_cli(["documents", "get", "1", "--expert", "cranfield"], capsys)
        assert code == 0 and json.loads(out)["id"] == "1"  # reading needs no lock
    finally:
        holder.kill()
        holder.wait()


def test_through_a_running_server(cranfield: Path, tmp_path: Path, capsys, start_server) -> None:  # noqa: F811
    server = start_server(cranfield)
    new = str(_new_documents(tmp_path / "new.jsonl", 3))
    code, out, err = run_cli(
        ["documents", "upsert", new, "-e", "cranfield", "--url", server.url, "--admin-key", ADMIN_KEY], capsys
    )
    assert code == 0, err
    assert json.loads(out)["created"] == 3
    code, out, err = run_cli(["documents", "get", "memo-1", "-e", "cranfield", "--url", server.url], capsys)
    assert code == 0 and json.loads(out)["title"] == "zyxqwv memo 1"
    code, _, err = run_cli(
        ["documents", "delete", "memo-1", "-e", "cranfield", "--url", server.url, "--admin-key", "wrong"], capsys
    )
    assert code == 2 and "HTTP 401" in err
    code, _, err = run_cli(["documents", "upsert", new, "-e", "cranfield"], capsys)  # the server holds the log
    assert code == 2 and "another process" in err
