"""``rr train-expert --replace --gate``: the retrained version is scored against the serving one before the swap."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from app.engine.engine import SearchEngine
from app.publishing.gate import GATE_FILE, read_gate_file
from app.publishing.publisher import ExpertPublisher
from app.publishing.registry import RegistryEntry, RegistryFile
from experts import Encoder, ExpertDir
from tests.app.conftest import run_cli
from tests.app.offline.test_training import leftovers, write_corpus

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["--steps", "4", "--batch-size", "8", "--rank", "4", "--no-progress"]


def shuffled(source: Path, target: Path) -> Path:
    """``source``'s corpus with the texts moved between ids: every id answers for another document."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    moved = rows[1:] + rows[:1]
    random.Random(3).shuffle(moved)
    target.write_text("".join(json.dumps({**m, "_id": r["_id"]}) + "\n" for r, m in zip(rows, moved, strict=True)))
    return target


def test_a_worse_retrain_is_refused_and_a_passing_one_keeps_its_figures(
    cli_env: Path, tmp_path: Path, tiny_bert_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, corpus = cli_env, write_corpus(tmp_path / "c.jsonl")
    assert run_cli(["train-expert", "aero", "--corpus", str(corpus), *TRAIN], capsys)[0] == 0
    first = ExpertDir(root / "aero").read_manifest()

    code, _, err = run_cli(["train-expert", "aero", "--corpus", str(corpus), "--gate", "pseudo", *TRAIN], capsys)
    assert code == 2 and "add replace" in err

    broken = shuffled(corpus, tmp_path / "shuffled.jsonl")
    code, _, err = run_cli(
        ["train-expert", "aero", "--replace", "--corpus", str(broken), "--gate", "pseudo", *TRAIN], capsys
    )
    assert code == 2 and "was not published: its nDCG@10 on the gate set 'pseudo' (24 queries)" in err, err
    assert "the serving version keeps serving" in err
    assert ExpertDir(root / "aero").read_manifest() == first and leftovers(root) == []

    code, out, err = run_cli(
        ["train-expert", "aero", "--replace", "--corpus", str(corpus), "--gate", "pseudo", *TRAIN], capsys
    )
    assert code == 0, err
    second = ExpertDir(root / "aero").read_manifest()
    assert second.version > first.version and "gate: passed on pseudo (24 queries, hybrid)" in out
    record = json.loads((root / "aero" / GATE_FILE).read_text())
    assert record["serving"]["version"] == first.version and record["candidate"]["version"] == second.version
    assert record["serving"]["ndcg_at_10"] == record["candidate"]["ndcg_at_10"]  # same corpus and seed: same adapter
    assert read_gate_file(root / "aero", second.version + 1) is None  # published again in place since: not its gate

    # A service starting on the root takes the figures into the registry with the version, as a publish does.
    RegistryFile(root).write([RegistryEntry(name="aero", path="aero", version=first.version)])
    publisher = ExpertPublisher(SearchEngine(Encoder(tiny_bert_path, max_length=64)), root)
    publisher.restore()
    entry = publisher.entries["aero"]
    assert entry.version == second.version and entry.gate is not None
    assert entry.gate.model_dump(mode="json") == record
    assert entry.versions[0].version == first.version and entry.versions[0].gate is None
    for name in list(publisher.engine.experts):
        publisher.remove(name).wait(10)
