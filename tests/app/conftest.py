from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.cli.commands import main


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``rr`` in-process as a user would; returns (exit code, stdout, stderr)."""
    saved = sys.argv
    sys.argv = ["rr", *args]
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return code, out, err


def slice_corpus(source: Path, target: Path, count: int) -> Path:
    with open(source, encoding="utf-8") as reader, open(target, "w", encoding="utf-8") as writer:
        writer.writelines(itertools.islice(reader, count))
    return target


@pytest.fixture()
def cli_env(tmp_path: Path, tiny_bert_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An experts root in tmp_path and the tiny BERT as base model, via the environment as a user would."""
    root = tmp_path / "experts"
    monkeypatch.setenv("RR_DATA_DIR", str(root))
    monkeypatch.setenv("RR_BASE_MODEL", str(tiny_bert_path))
    yield root


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path
