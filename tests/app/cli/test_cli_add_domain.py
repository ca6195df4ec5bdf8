"""``rr add-domain``: a slice of a shared collection added locally, and to a running server, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from app.publishing.registry import RegistryFile
from tests.app.conftest import run_cli, slice_corpus
from tests.app.service.conftest import ADMIN_KEY, ServerProcess, free_port, write_corpus
from tests.conftest import make_tiny_bert

FAST = ["--steps", "3", "--batch-size", "8", "--no-progress"]


@pytest.fixture()
def corpus(datasets: Path, tmp_path: Path) -> Path:
    return slice_corpus(datasets / "scifact" / "corpus.jsonl", tmp_path / "scifact-40.jsonl", 40)


@pytest.fixture()
def server(tmp_path: Path, tiny_bert_path: Path):
    """``server(base_model) -> ServerProcess``: a real ``rr serve`` on an empty root of its own (not the CLI's)."""
    servers: list[ServerProcess] = []

    def start(base_model: Path = tiny_bert_path) -> ServerProcess:
        root = tmp_path / f"server-root-{len(servers)}"
        root.mkdir()
        process = ServerProcess(root, tmp_path / f"server-{len(servers)}.log", base_model=base_model)
        servers.append(process)
        process.wait_ready()
        return process

    yield start
    for process in servers:
        process.stop()


def test_a_local_add_is_listed_and_joins_the_registry(
    cli_env: Path, corpus: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    RegistryFile(cli_env).write([])  # a root a server has published from: the new expert must join its registry
    code, out, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), *FAST], capsys)
    assert code == 0, err
    assert "trained expert 'sci' (version" in out and "40 documents" in out and "registry.json" in out
    assert [entry.name for entry in RegistryFile(cli_env).read() or []] == ["sci"]
    code, out, err = run_cli(["experts", "--json"], capsys)
    listed = {row["name"]: row for row in json.loads(out)}
    assert listed["sci"]["documents"] == 40 and listed["sci"]["adapter"] == "trained" and listed["sci"]["pilots"]

    code, out, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), *FAST], capsys)
    assert code == 2 and "already exists" in err and "--replace" in err


def test_inputs_are_checked_before_anything_is_built(
    cli_env: Path, corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["add-domain", "sci", "--corpus", str(tmp_path / "nope.jsonl"), *FAST], capsys)
    assert code == 2 and "nope.jsonl: no such file" in err
    code, _, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), "--queries", str(corpus), *FAST], capsys)
    assert code == 2 and "--qrels" in err
    code, _, err = run_cli(["add-domain", "Bad Name", "--corpus", str(corpus), *FAST], capsys)
    assert code == 2 and "Bad Name" in err
    nobody = f"http://127.0.0.1:{free_port()}"
    code, _, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), "--url", nobody, *FAST], capsys)
    assert code == 1 and f"cannot reach {nobody}" in err
    assert not (cli_env / "sci").exists()


def test_add_to_a_running_server_then_search_it(
    cli_env: Path,
    corpus: Path,
    datasets: Path,
    server,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = server()
    code, _, err = run_cli(
        ["add-domain", "sci", "--corpus", str(corpus), "--url", running.url, "--admin-key", "wrong"], capsys
    )
    assert code == 1 and "HTTP 401" in err and "not valid" in err  # refused before the build
    assert not (cli_env / "sci").exists()

    monkeypatch.setenv("RR_ADMIN_KEY", ADMIN_KEY)  # the key's default
    labelled = ["--queries", str(datasets / "scifact" / "queries.jsonl")]
    labelled += ["--qrels", str(datasets / "scifact" / "qrels" / "train.tsv")]
    args = ["add-domain", "sci", "--corpus", str(corpus), *labelled, "--url", running.url, *FAST]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err + running.log()
    assert f"published to {running.url}: 'sci' loaded" in out
    with httpx.Client(base_url=running.url, timeout=60) as http:
        listed = {e["name"]: e for e in http.get("/experts").json()["experts"]}
        assert listed["sci"]["state"] == "loaded" and listed["sci"]["documents"] == 40
        assert listed["sci"]["adapter"]["trained"] is True
        training = http.get("/experts/sci").json()["manifest"]["training"]
        assert "train.tsv" in training["labelled"] and training["pair_kinds"]["supervised"] > 0
        answer = http.post("/search", json={"query": "vitamin D deficiency", "expert": "sci", "k": 3})
        assert answer.status_code == 200 and len(answer.json()["results"][0]["hits"]) == 3

    code, _, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), "--url", running.url, *FAST], capsys)
    assert code == 2 and "--replace" in err  # the local copy exists: refused up front


def test_a_refused_publish_says_why_and_keeps_the_local_expert(
    cli_env: Path, corpus: Path, server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = server(base_model=make_tiny_bert(tmp_path / "wider-bert", hidden=48))  # another base encoder
    args = ["add-domain", "sci", "--corpus", str(corpus), "--url", other.url, "--admin-key", ADMIN_KEY, *FAST]
    code, _, err = run_cli(args, capsys)
    assert code == 1 and "HTTP 4" in err and f"stays at {cli_env / 'sci'}" in err
    assert (cli_env / "sci" / "manifest.json").is_file()
    with httpx.Client(base_url=other.url, timeout=60) as http:
        assert http.get("/experts").json()["experts"] == []


def test_on_server_the_service_builds_it_as_a_job(
    cli_env: Path, datasets: Path, server, capsys: pytest.CaptureFixture[str]
) -> None:
    running = server()
    (running.root / "incoming").mkdir()
    slice_corpus(datasets / "scifact" / "corpus.jsonl", running.root / "incoming" / "sci.jsonl", 40)
    remote = ["--url", running.url, "--on-server", "--admin-key", ADMIN_KEY, *FAST]
    code, out, err = run_cli(["add-domain", "sci", "--corpus", "incoming/sci.jsonl", *remote], capsys)
    assert code == 0, err + running.log()
    assert "queued on" in out and "[succeeded] publishing" in out  # the phases it was seen in, as it went
    assert f"published to {running.url} by job job-" in out and "'sci' version" in out
    assert not (cli_env / "sci").exists()  # nothing built here
    with httpx.Client(base_url=running.url, timeout=60) as http:
        answer = http.post("/search", json={"query": "vitamin D deficiency", "expert": "sci", "k": 3})
        assert answer.status_code == 200 and len(answer.json()["results"][0]["hits"]) == 3

    code, _, err = run_cli(["add-domain", "sci2", "--corpus", "../elsewhere.jsonl", *remote], capsys)
    assert code == 1 and "HTTP 403" in err and "outside the data root" in err
    code, _, err = run_cli(["add-domain", "sci", "--corpus", "incoming/sci.jsonl", *remote], capsys)
    assert code == 1 and "HTTP 409" in err and "replace=true" in err
    code, _, err = run_cli(["add-domain", "sci", "--corpus", "incoming/sci.jsonl", "--on-server", *FAST], capsys)
    assert code == 2 and "--url" in err


def test_on_server_with_upload_the_local_files_are_sent_first(
    cli_env: Path, tmp_path: Path, server, capsys: pytest.CaptureFixture[str]
) -> None:
    running = server()
    corpus = write_corpus(tmp_path / "local corpus.jsonl", "gamma", count=30)  # a space: sent as local_corpus
    remote = ["--url", running.url, "--on-server", "--upload", "--admin-key", ADMIN_KEY, *FAST]
    code, out, err = run_cli(["add-domain", "sci", "--corpus", str(corpus), *remote], capsys)
    assert code == 0, err + running.log()
    uploaded = [p.name for p in (running.root / ".uploads").iterdir()]
    assert len(uploaded) == 1 and uploaded[0].endswith("-local_corpus.jsonl")
    assert f"uploaded {corpus} ({corpus.stat().st_size} bytes" in out and uploaded[0] in out
    assert f"published to {running.url} by job job-" in out
    with httpx.Client(base_url=running.url, timeout=60) as http:
        answer = http.post("/search", json={"query": "blood pressure", "expert": "sci", "k": 3})
        assert answer.status_code == 200 and len(answer.json()["results"][0]["hits"]) == 3

    code, _, err = run_cli(["add-domain", "sci2", "--corpus", str(tmp_path / "nope.jsonl"), *remote], capsys)
    assert code == 2 and "not a file here" in err
    code, _, err = run_cli(["add-domain", "sci2", "--corpus", str(corpus), "--upload", *FAST], capsys)
    assert code == 2 and "--on-server" in err
