"""``rr demo`` and ``rr serve`` from the command line (in-process; the real server is in test_server.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.app.conftest import run_cli


def test_demo_without_the_collections_says_what_to_point_where(cli_env: Path, tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(
        ["demo", "--no-serve", "--collections", "cacm", "--datasets", str(tmp_path / "nowhere")], capsys
    )
    assert code == 2
    assert "were not found under" in err and "RR_DATASETS_DIR" in err and "--datasets" in err
    assert not (cli_env / "cacm").exists()


def test_demo_builds_what_is_missing_reports_and_reuses_it(
    cli_env: Path, datasets: Path, tmp_path: Path, capsys
) -> None:
    args = ["demo", "--no-serve", "--collections", "cacm,cisi", "--max-docs", "30", "--datasets", str(datasets)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "[cacm] 30 documents" in out and "[cisi] pilots from" in out
    # The closing report: routed search against BM25 and the union hybrid, per collection and averaged.
    table = out[out.index("what routing buys") :].splitlines()
    assert "BM25" in table[2] and "hybrid-union" in table[2] and "routed-hybrid" in table[2]
    rows = {line.split()[0]: line.split()[1:] for line in table[3:7]}
    assert list(rows) == ["cacm", "cisi", "macro", "micro"], table
    assert rows["cacm"][0] == "52" and all(0 <= float(v) <= 1 for v in rows["cacm"][1:4])
    assert rows["cacm"][4].endswith("%") and rows["micro"][-1].endswith("%")
    code, out, _ = run_cli(args, capsys)  # everything is built: straight to the report
    assert code == 0 and "indexing" not in out and "what routing buys" in out
    # Built experts are served even when the collections have gone: the report is skipped, with the reason.
    code, out, _ = run_cli(
        ["demo", "--no-serve", "--collections", "cacm", "--datasets", str(tmp_path / "gone")], capsys
    )
    assert code == 0 and "quality report skipped" in out and "RR_DATASETS_DIR" in out


def test_demo_adds_its_experts_to_an_existing_registry(cli_env: Path, datasets: Path, capsys) -> None:
    from app.offline.demo import publish_demo
    from app.publishing.registry import RegistryEntry, RegistryFile
    from app.settings import Settings

    RegistryFile(cli_env).write([RegistryEntry(name="other", path="other")])
    publish_demo(Settings(data_dir=cli_env), ["cacm", "other"])
    assert [e["name"] for e in json.loads((cli_env / "registry.json").read_text())["experts"]] == ["cacm", "other"]


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_options_are_documented(command: str, capsys) -> None:
    code, out, _ = run_cli([command, "--help"], capsys)
    assert code == 0 and "--host" in out and "--port" in out
    assert ("--no-train" in out) == (command == "demo")


def test_demo_serves_at_once_and_publishes_each_expert_when_built(
    tmp_path: Path, tiny_bert_path: Path, datasets: Path
) -> None:
    """`rr demo` answers before any expert exists, is ready with the first, and ends with all of them serving.

    --no-train: training (minutes per expert with the default recipe) is shown in-process with a few steps,
    in test_demo_training.py.
    """
    import os
    import time

    import httpx

    from tests.app.service.conftest import REPO, free_port, launch_subprocess

    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("RR_")}
    env.update(PYTHONPATH=str(REPO), RR_DATA_DIR=str(tmp_path / "experts"), RR_BASE_MODEL=str(tiny_bert_path))
    argv = ["demo", "--no-train", "--collections", "cacm,cisi", "--max-docs", "400", "--datasets", str(datasets)]
    log = tmp_path / "demo.log"
    process = launch_subprocess([*argv, "--port", str(port), "--log-level", "warning"], env=env, cwd=REPO, log=log)
    seen: list[tuple[int, list[str], dict[str, str]]] = []  # (status, experts serving, building) per probe
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()[-3000:]
                try:
                    response = http.get("/readyz")
                except httpx.TransportError:
                    time.sleep(0.05)
                    continue
                body = response.json()
                details = body.get("error", {}).get("details") or {} if response.status_code == 503 else body
                seen.append((response.status_code, details.get("experts", []), details.get("building") or {}))
                if response.status_code == 200 and not body.get("building") and len(body["experts"]) == 2:
                    break
                time.sleep(0.05)
            assert seen and seen[-1][0] == 200 and seen[-1][1] == ["cacm", "cisi"], (seen[-5:], log.read_text()[-3000:])
            # It answered while experts were still building, and was not ready before the first one served.
            assert any(building for _, _, building in seen), seen[:5]
            assert all(status == 503 for status, experts, _ in seen if not experts)
            hits = http.post("/search", json={"query": "information retrieval systems", "k": 3}).json()["results"][0]
            assert hits["expert"] in ("cacm", "cisi") and len(hits["hits"]) == 3
    finally:
        process.terminate()
        process.wait(timeout=60)
    text = log.read_text()
    assert "[cacm] serving now" in text and "[cisi] serving now" in text
    assert "routing of each collection's test queries" in text
    assert "training" not in text
