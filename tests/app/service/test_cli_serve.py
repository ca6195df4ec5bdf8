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
    assert (
        "[cacm] 30 documents" in out
        and "[cisi] pilots from" in out
        and "routing of each collection's test queries" in out
    )
    code, out, _ = run_cli(args, capsys)  # everything is built: straight to the report
    assert code == 0 and "indexing" not in out and "routing of each" in out
    # Built experts are served even when the collections have gone: the report is skipped, with the reason.
    code, out, _ = run_cli(
        ["demo", "--no-serve", "--collections", "cacm", "--datasets", str(tmp_path / "gone")], capsys
    )
    assert code == 0 and "routing report skipped" in out and "RR_DATASETS_DIR" in out


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
