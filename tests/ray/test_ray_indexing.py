"""``rr index --engine ray``: the same collection as the local engine, embedded by Ray Data actors."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from app.cli.commands import main
from app.offline.building import index_expert
from app.offline.ray_encoders import RayIndexing
from app.settings import Settings
from experts import Encoder, create_expert
from index import DENSE_FILE, Collection, CorpusError
from index.build.ray_data import OrderedVectors, RayEngine, passage_digest

pytestmark = pytest.mark.usefixtures("local_ray")


def slice_corpus(source: Path, target: Path, count: int) -> Path:
    with open(source, encoding="utf-8") as reader, open(target, "w", encoding="utf-8") as writer:
        writer.writelines(itertools.islice(reader, count))
    return target


def rows_of(collection: Collection) -> tuple[list[str], np.ndarray]:
    """Document ids in row order and the vectors of those rows, straight from the published files."""
    row_ids = collection.docstore.all_row_ids()
    ids = [doc.id for doc in collection.docstore.get(row_ids.tolist())]
    stored = faiss.read_index(str(collection.directory / DENSE_FILE))
    return ids, stored.reconstruct_batch(row_ids)


def assert_same_collection(local: Collection, ray_built: Collection, queries: np.ndarray, texts: list[str]) -> None:
    assert len(local) == len(ray_built)
    local_ids, local_vectors = rows_of(local)
    ray_ids, ray_vectors = rows_of(ray_built)
    assert local_ids == ray_ids
    np.testing.assert_allclose(local_vectors, ray_vectors, atol=1e-5)
    _, dense_local = local.dense.search(queries, 10)
    _, dense_ray = ray_built.dense.search(queries, 10)
    assert (dense_local == dense_ray).all()
    _, lexical_local = local.search_lexical(texts, 10)
    _, lexical_ray = ray_built.search_lexical(texts, 10)
    assert (lexical_local == lexical_ray).all()


@pytest.mark.slow
def test_ray_engine_builds_the_local_engines_index_of_scifact(tmp_path: Path, datasets: Path) -> None:
    corpus = slice_corpus(datasets / "scifact" / "corpus.jsonl", tmp_path / "scifact-240.jsonl", 240)
    settings = Settings(data_dir=tmp_path / "experts", torch_threads=1)
    encoder = Encoder(max_length=256)
    local_expert = create_expert(settings.data_dir, "local", encoder=encoder)
    ray_expert = create_expert(settings.data_dir, "viaray", encoder=encoder)

    # The Ray engine cannot chunk yet, so it truncates; the local engine is asked for the same policy.
    local_manifest, local_report = index_expert(
        local_expert, encoder, [corpus], progress=False, long_documents="truncate"
    )
    ray_manifest, ray_report = index_expert(
        ray_expert,
        encoder,
        [corpus],
        progress=False,
        chunk_size=64,
        ray=RayIndexing(settings, RayEngine(actors=2, batch_size=32)),
    )

    assert ray_report.documents == local_report.documents == 240
    assert (
        ray_manifest.index.chunking == local_manifest.index.chunking
        and ray_manifest.index.chunking["policy"] == "truncate"
    )
    texts = ["vitamin D and bone fractures", "stem cells in the bone marrow", "gene expression in cancer cells"]
    queries = encoder.embed(texts, max_length=64)
    with (
        Collection.open(local_expert.path / local_manifest.index.directory) as local,
        Collection.open(ray_expert.path / ray_manifest.index.directory) as ray_built,
    ):
        assert_same_collection(local, ray_built, queries, texts)
    assert not (ray_expert.path / ".work" / "index").exists()  # the same clean-up as the local job


class Interrupted(Exception):
    pass


def test_a_local_build_interrupted_halfway_is_finished_on_ray(tmp_path: Path, tiny_bert_path: Path) -> None:
    """The engines share the checkpoint: Ray embeds only what is left, from the local run's marker on."""
    rows = [{"_id": f"d{n}", "title": f"doc {n}", "text": f"wing {n} lift drag shock {n % 7} flow"} for n in range(300)]
    rows[17] = {"_id": "broken"}  # a malformed line is counted, not embedded, by both engines
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    settings = Settings(data_dir=tmp_path / "experts", base_model=str(tiny_bert_path), torch_threads=1)
    encoder = Encoder(tiny_bert_path)
    whole = create_expert(settings.data_dir, "whole", encoder=encoder)
    resumed = create_expert(settings.data_dir, "resumed", encoder=encoder)
    # A checkpoint is shared between engines under the same long-document policy: the Ray engine's truncate.
    whole_manifest, _ = index_expert(whole, encoder, [corpus], progress=False, chunk_size=50, long_documents="truncate")

    real_embed, calls = encoder.embed, {"n": 0}

    def failing_embed(texts, **options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted("killed during the third chunk")
        return real_embed(texts, **options)

    encoder.embed = failing_embed  # type: ignore[method-assign]
    with pytest.raises(Interrupted):
        index_expert(resumed, encoder, [corpus], progress=False, chunk_size=50, long_documents="truncate")
    encoder.embed = real_embed  # type: ignore[method-assign]

    manifest, report = index_expert(
        resumed,
        encoder,
        [corpus],
        progress=False,
        chunk_size=50,
        ray=RayIndexing(settings, RayEngine(actors=2)),
    )
    assert (report.resumed_from_line, report.documents, report.malformed) == (101, 299, 1)
    texts = ["wing 12 lift", "shock 3 flow"]
    with (
        Collection.open(whole.path / whole_manifest.index.directory) as expected,
        Collection.open(resumed.path / manifest.index.directory) as got,
    ):
        assert_same_collection(expected, got, encoder.embed(texts), texts)


def test_rr_index_engine_ray_from_the_command_line(
    tmp_path: Path, tiny_bert_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RR_DATA_DIR", str(tmp_path / "experts"))
    monkeypatch.setenv("RR_BASE_MODEL", str(tiny_bert_path))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"d{n}", "text": f"heat transfer {n}"}) + "\n" for n in range(40)))

    def rr(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["rr", *args])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    assert rr("create-expert", "heat")[0] == 0
    code, _, err = rr("index", "--expert", "heat", "--corpus", str(corpus), "--engine", "spark", "--no-progress")
    assert code == 2 and "Valid engines are: local, ray" in " ".join(err.replace("│", " ").split())
    code, out, err = rr(
        "index", "--expert", "heat", "--corpus", str(corpus), "--engine", "ray", "--actors", "1", "--no-progress"
    )
    assert code == 0, err
    assert "indexed 40 documents into 'heat'" in out


def test_the_stream_refuses_vectors_of_other_passages() -> None:
    """A vector is handed to the job only for the passage it was computed from."""
    passages = ["alpha", "beta", "gamma"]
    batch = {
        "digest": np.array([passage_digest(p) for p in passages]),
        "vector": np.eye(3, dtype=np.float32),
        "corpus": np.zeros(3, dtype=np.int64),
        "line": np.arange(1, 4),
    }
    stream = OrderedVectors(iter([batch]))
    np.testing.assert_array_equal(stream(["alpha"]), np.eye(3, dtype=np.float32)[:1])
    with pytest.raises(CorpusError, match="out of step with the job at document 2 .*line 2"):
        stream(["gamma", "beta"])
    ended = OrderedVectors(iter([batch]))
    with pytest.raises(CorpusError, match="stream ended after 3 documents"):
        ended(["alpha", "beta", "gamma", "delta"])


def test_ray_engine_refuses_bad_pool_settings() -> None:
    with pytest.raises(ValueError, match="actors must be a positive integer"):
        RayEngine(actors=0)
    with pytest.raises(ValueError, match="no room for one encoder actor"):
        RayEngine(gpus_per_actor=1).pool_size({"CPU": 2.0})
    assert RayEngine(cpus_per_actor=0.5).pool_size({"CPU": 2.0}) == 4
