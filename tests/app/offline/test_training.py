"""Training an expert end to end on the tiny BERT: published complete, or not at all; retraining swaps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

import app.offline.expert_training as training
from app.cli.train import _DEFAULTS, train_expert_command
from app.engine.loading import load_expert, unload_expert
from app.offline.expert_training import train_expert
from app.publishing.versions import VERSIONS_DIR, archived_path
from experts import Encoder, ExpertDir, ExpertDirError, TrainConfig, create_expert

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = "wing lift drag shock flow plate heat layer compiler storage sort tape query index vitamin cell".split()
CONFIG = TrainConfig(steps=6, batch_size=8, query_max_length=16, lr=1e-2)


@pytest.fixture()
def encoder(tiny_bert_path: Path) -> Encoder:
    return Encoder(tiny_bert_path, max_length=64)


def write_corpus(path: Path, count: int = 24, *, titled: bool = True) -> Path:
    rows = []
    for n in range(count):
        text = " ".join(WORDS[(n * 5 + i) % len(WORDS)] for i in range(10 + n % 4))
        rows.append({"_id": f"d{n}", "title": f"{WORDS[n % len(WORDS)]} study {n}" if titled else "", "text": text})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def leftovers(root: Path) -> list[str]:
    """Anything under the root that is not a published expert directory (or its kept versions)."""
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".") and p.name != VERSIONS_DIR)


def test_a_trained_expert_is_published_complete_and_loads(tmp_path: Path, encoder: Encoder) -> None:
    root = tmp_path / "experts"
    result = train_expert(
        root, "aero", encoder=encoder, corpora=[write_corpus(tmp_path / "c.jsonl")], config=CONFIG, progress=False
    )
    manifest = result.manifest
    assert result.path == root / "aero" and manifest.adapter.trained and manifest.adapter.side == "query"
    assert manifest.index.count == 24 and manifest.pilots.count == 72 and "pseudo queries" in manifest.pilots.source
    assert result.pair_kinds == {"span": 48, "title": 24} and result.train.pairs == 72
    training_record = manifest.training
    assert training_record.recipe["steps"] == 6 and training_record.pair_kinds == result.pair_kinds
    assert training_record.corpora[0].startswith("sha256:") and training_record.final_loss > 0
    directory = ExpertDir(root / "aero")
    directory.verify(directory.read_manifest())  # every file is checksummed, nothing missing
    assert directory.read_manifest() == manifest
    assert sorted(p.name for p in directory.path.iterdir() if not p.name.startswith(".")) == sorted(
        ["adapter", "manifest.json", manifest.index.directory, manifest.pilots.file]
    )
    assert leftovers(root) == []
    loaded = load_expert(directory, encoder)
    try:
        assert loaded.adapter is not None and loaded.pilots.shape == (72, encoder.dim)  # every pseudo query
        texts = ["wing study 0", "heat transfer"]
        assert not np.allclose(encoder.embed(texts, expert=loaded.adapter), encoder.embed(texts))
    finally:
        unload_expert(loaded, encoder)


def test_labelled_queries_join_the_pseudo_pairs_and_make_the_pilots(tmp_path: Path, encoder: Encoder) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text('{"_id": "q1", "text": "drag of wings"}\n{"_id": "q2", "text": "sorting tapes"}\n')
    qrels = tmp_path / "train.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\td2\t1\nq1\td3\t1\nq2\td10\t1\n")
    result = train_expert(
        tmp_path / "experts",
        "mixed",
        encoder=encoder,
        corpora=[write_corpus(tmp_path / "c.jsonl", titled=False)],
        queries=queries,
        qrels=qrels,
        config=CONFIG,
        progress=False,
    )
    assert result.pair_kinds == {"span": 72, "supervised": 6}  # 3 spans per untitled document, 2 queries x 3
    assert result.manifest.pilots.source == "labelled training queries (2 queries)"
    assert "train.tsv" in result.manifest.training.labelled
    with pytest.raises(ValueError, match="both queries and qrels"):
        train_expert(tmp_path / "experts", "other", encoder=encoder, corpora=[tmp_path / "c.jsonl"], queries=queries)


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_an_interruption_leaves_no_expert_and_no_staging(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch, failure: type[BaseException]
) -> None:
    root = tmp_path / "experts"
    real = training.train_adapter

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)  # the adapter is written, then the user presses Ctrl-C
        raise failure("interrupted")

    monkeypatch.setattr(training, "train_adapter", interrupted)
    with pytest.raises(failure):
        train_expert(
            root, "aero", encoder=encoder, corpora=[write_corpus(tmp_path / "c.jsonl")], config=CONFIG, progress=False
        )
    assert list(root.iterdir()) == []


def test_retraining_keeps_the_old_version_serving_until_the_swap(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, corpus = tmp_path / "experts", write_corpus(tmp_path / "c.jsonl")
    first = train_expert(root, "aero", encoder=encoder, corpora=[corpus], config=CONFIG, progress=False)
    with pytest.raises(ExpertDirError, match="already exists.*--replace"):
        train_expert(root, "aero", encoder=encoder, corpora=[corpus], config=CONFIG, progress=False)
    served = load_expert(ExpertDir(root / "aero"), encoder)
    old_weights = (root / "aero" / "adapter" / "adapter_model.safetensors").read_bytes()
    seen = {}
    real = training.train_adapter

    def observing(*args, **kwargs):
        seen["manifest"] = ExpertDir(root / "aero").read_manifest()  # mid-training: the old version, intact
        ExpertDir(root / "aero").verify(seen["manifest"])
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_adapter", observing)
    second = train_expert(
        root,
        "aero",
        encoder=encoder,
        corpora=[corpus],
        config=TrainConfig(**{**CONFIG.as_dict(), "seed": 7}),
        replace=True,
        progress=False,
    )
    assert seen["manifest"] == first.manifest
    assert second.index_reused and second.replaced_version == first.manifest.version
    assert second.manifest.version > first.manifest.version and second.manifest.training.recipe["seed"] == 7
    assert (root / "aero" / "adapter" / "adapter_model.safetensors").read_bytes() != old_weights
    ExpertDir(root / "aero").verify(second.manifest)
    assert leftovers(root) == []
    kept = ExpertDir(archived_path(root, "aero", first.manifest.version))  # kept for a rollback (RR_KEEP_VERSIONS)
    assert (
        kept.read_manifest() == first.manifest
        and kept.adapter_path.joinpath("adapter_model.safetensors").read_bytes() == old_weights
    )
    try:  # the expert loaded before the swap still searches: its files stay open
        docstore = served.collection.docstore
        stored = docstore.get(docstore.row_ids(["d7"]))[0]
        assert served.collection.search(encoder.embed([stored.passage()]), 1)[0][0].id == "d7"
    finally:
        unload_expert(served, encoder)
    third = train_expert(
        root,
        "aero",
        encoder=encoder,
        corpora=[write_corpus(tmp_path / "d.jsonl", 30)],
        config=CONFIG,
        replace=True,
        progress=False,
    )
    assert not third.index_reused and third.manifest.index.count == 30
    assert sorted(p.name for p in (root / VERSIONS_DIR / "aero").iterdir()) == sorted(
        f"v{version}" for version in (first.manifest.version, second.manifest.version)
    )
    train_expert(
        root, "aero", encoder=encoder, corpora=[corpus], config=CONFIG, replace=True, keep_versions=2, progress=False
    )
    assert [p.name for p in (root / VERSIONS_DIR / "aero").iterdir()] == [f"v{third.manifest.version}"]  # pruned


def test_a_change_published_meanwhile_is_not_overwritten(
    tmp_path: Path, encoder: Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, corpus = tmp_path / "experts", write_corpus(tmp_path / "c.jsonl")
    first = train_expert(root, "aero", encoder=encoder, corpora=[corpus], config=CONFIG, progress=False)
    real = training.train_adapter

    def racing(*args, **kwargs):
        ExpertDir(root / "aero").publish()  # another writer publishes a new version while we train
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "train_adapter", racing)
    with pytest.raises(ExpertDirError, match="changed while training"):
        train_expert(root, "aero", encoder=encoder, corpora=[corpus], config=CONFIG, replace=True, progress=False)
    assert ExpertDir(root / "aero").read_manifest().version == first.manifest.version + 1
    assert leftovers(root) == []


def test_an_orphaned_staging_directory_is_cleaned_up(tmp_path: Path, encoder: Encoder) -> None:
    root = tmp_path / "experts"
    orphan = root / ".aero.train-dead.tmp"
    (orphan / "aero").mkdir(parents=True)
    os.utime(orphan, (time.time() - 3600, time.time() - 3600))
    create_expert(root, "other", encoder=encoder)
    train_expert(
        root, "aero", encoder=encoder, corpora=[write_corpus(tmp_path / "c.jsonl")], config=CONFIG, progress=False
    )
    assert not orphan.exists() and leftovers(root) == []


def test_the_cli_command_trains_and_reports(
    tmp_path: Path, tiny_bert_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.cli import commands as cli_module

    monkeypatch.setenv("RR_DATA_DIR", str(tmp_path / "experts"))
    monkeypatch.setenv("RR_BASE_MODEL", str(tiny_bert_path))
    app = typer.Typer()
    app.callback()(cli_module._configure)
    app.command("train-expert")(train_expert_command)
    corpus = write_corpus(tmp_path / "c.jsonl")
    args = [
        "train-expert",
        "aero",
        "--corpus",
        str(corpus),
        "--steps",
        "4",
        "--batch-size",
        "8",
        "--rank",
        "4",
        "--targets",
        "query,value",
        "--seed",
        "3",
        "--no-progress",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "trained expert 'aero' (version" in result.output and "24 documents" in result.output
    manifest = ExpertDir(tmp_path / "experts" / "aero").read_manifest()
    assert manifest.adapter.rank == 4 and manifest.adapter.target_modules == ("query", "value")
    again = CliRunner().invoke(app, ["train-expert", "aero", "--corpus", str(corpus), "--queries", str(corpus)])
    assert again.exit_code != 0 and "--qrels" in again.output


def test_cli_defaults_are_the_recipe_defaults() -> None:
    defaults = TrainConfig()
    for key, value in _DEFAULTS.items():
        expected = ",".join(defaults.target_modules) if key == "targets" else getattr(defaults, key)
        assert value == expected, key
