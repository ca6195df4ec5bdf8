"""Building an expert's index and pilots through the app layer: resume, atomic publish, generations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from experts import Encoder, ExpertDir, create_expert
from index import Collection


def write_corpus(path: Path, count: int, *, offset: int = 0) -> Path:
    words = "wing lift drag shock flow plate heat layer compiler storage sort tape query index".split()
    rows = []
    for n in range(offset, offset + count):
        text = " ".join(words[(n * 7 + i) % len(words)] for i in range(6 + n % 5))
        rows.append(json.dumps({"_id": f"d{n}", "title": f"doc {n}", "text": text}))
    path.write_text("\n".join(rows) + "\n")
    return path


class Interrupted(Exception):
    pass


def test_an_interrupted_index_build_leaves_the_served_version_and_resumes(
    tmp_path: Path, tiny_bert_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = Encoder(tiny_bert_path)
    expert = create_expert(tmp_path / "experts", "aero", encoder=encoder)
    first, _ = index_expert(expert, encoder, [write_corpus(tmp_path / "v1.jsonl", 20)], progress=False, chunk_size=8)
    served = expert.path / first.index.directory
    served_bytes = {p.name: p.read_bytes() for p in served.iterdir()}

    calls = {"n": 0}
    real_embed = encoder.embed

    def failing_embed(texts, **options):
        calls["n"] += 1
        if calls["n"] == 3:
            raise Interrupted("simulated crash in the middle of the build")
        return real_embed(texts, **options)

    monkeypatch.setattr(encoder, "embed", failing_embed)
    corpus = write_corpus(tmp_path / "v2.jsonl", 50)
    with pytest.raises(Interrupted):
        index_expert(expert, encoder, [corpus], progress=False, chunk_size=8)
    assert expert.read_manifest() == first  # nothing published
    assert {p.name: p.read_bytes() for p in served.iterdir()} == served_bytes  # served index untouched

    monkeypatch.setattr(encoder, "embed", real_embed)
    second, report = index_expert(expert, encoder, [corpus], progress=False, chunk_size=8)
    assert report.resumed_from_line == 16 and report.documents == 50
    assert second.version == first.version + 1 and second.index.count == 50
    assert served.exists()  # the previous generation stays for readers that still hold it
    with Collection.open(expert.path / second.index.directory) as collection:
        assert len(collection) == 50
        stored = collection.docstore.get(collection.docstore.row_ids(["d7"]))[0]
        assert collection.search(encoder.embed([stored.passage()]), 1)[0][0].id == "d7"


def test_reindexing_keeps_only_the_current_and_previous_generation(tmp_path: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    expert = create_expert(tmp_path / "experts", "aero", encoder=encoder)
    directories = []
    for n in range(3):
        manifest, _ = index_expert(expert, encoder, [write_corpus(tmp_path / f"c{n}.jsonl", 5 + n)], progress=False)
        directories.append(manifest.index.directory)
    assert len(set(directories)) == 3
    on_disk = sorted(p.name for p in expert.path.glob("index-*"))
    assert on_disk == sorted(directories[-2:])
    ExpertDir(expert.path).verify(expert.read_manifest())


def test_pilots_from_documents_use_titles_and_are_in_base_space(tmp_path: Path, tiny_bert_path: Path) -> None:
    encoder = Encoder(tiny_bert_path)
    expert = create_expert(tmp_path / "experts", "aero", encoder=encoder)
    index_expert(expert, encoder, [write_corpus(tmp_path / "c.jsonl", 30)], progress=False)
    texts = pilot_texts_from_documents(expert, sample=10, seed=1)
    assert len(texts) == 10 and all(t.startswith("doc ") for t in texts)
    manifest = build_pilots(expert, encoder, texts, method="kmeans", clusters=3, source="test")
    pilots = expert.read_pilots(manifest)
    assert pilots.shape == (manifest.pilots.count, encoder.dim) and 1 <= manifest.pilots.count <= 3
    assert manifest.pilots.method == "kmeans" and "10 queries" in manifest.pilots.source
    centroid = build_pilots(expert, encoder, texts, method="centroid")
    np.testing.assert_allclose(
        expert.read_pilots(centroid)[0], encoder.embed(texts, max_length=64).mean(axis=0), atol=1e-6
    )
    with pytest.raises(ValueError, match="Valid methods are"):
        build_pilots(expert, encoder, texts, method="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no texts"):
        build_pilots(expert, encoder, [])


def test_an_int8_encoder_never_resumes_an_fp32_build(tmp_path: Path, tiny_bert_path: Path) -> None:
    from app.offline.building import _build_key

    fp32, int8 = Encoder(tiny_bert_path), Encoder(tiny_bert_path, backend="int8")
    expert = create_expert(tmp_path / "experts", "keyed", encoder=fp32)
    manifest = expert.read_manifest()
    assert _build_key(expert, manifest, fp32, "Flat") != _build_key(expert, manifest, int8, "Flat")
    assert _build_key(expert, manifest, fp32, "Flat") == _build_key(expert, manifest, Encoder(tiny_bert_path), "Flat")


def _long_corpus(path: Path, datasets: Path) -> tuple[Path, str]:
    """Ten real cranfield documents, the first one made long: twenty texts joined, then a distinctive tail."""
    with (datasets / "cranfield" / "corpus.jsonl").open(encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(30), handle)]
    tail = rows[29]["text"]
    long = {"_id": "long", "title": "", "text": " ".join(r["text"] for r in rows[10:29]) + " " + tail}
    path.write_text("".join(json.dumps(r) + "\n" for r in [long, *rows[:9]]))
    return path, tail


def test_index_expert_chunks_long_documents_by_default_and_records_the_policy(
    tmp_path: Path, tiny_bert_path: Path, datasets: Path
) -> None:
    from app.engine.splitting import long_document_splitter, recorded_splitter
    from index import LiveCollection, read_info
    from index.corpus import Document

    encoder = Encoder(tiny_bert_path)  # max_position_embeddings 128: windows of 128 tokens
    expert = create_expert(tmp_path / "experts", "aero", encoder=encoder)
    corpus, tail = _long_corpus(tmp_path / "long.jsonl", datasets)
    manifest, report = index_expert(expert, encoder, [corpus], progress=False, chunk_overlap=16)
    assert report.documents == 10
    assert manifest.index.chunking == {"policy": "chunk", "max_tokens": 128, "overlap": 16}
    directory = expert.path / manifest.index.directory
    assert read_info(directory).chunks > 10
    with Collection.open(directory) as collection:
        assert collection.chunked
        query = encoder.embed([tail])
        (hit,) = collection.search(query, 1)[0]
        assert hit.id == "long" and hit.span is not None
        window = hit.text[hit.span[0] : hit.span[1]]
        assert window in tail or tail in window  # the best window is in the tail
    with Collection.open(directory) as main:  # a live upsert splits the same way, with the same settings
        settings, split = long_document_splitter(manifest, encoder, overlap=16)
        assert settings == main.info.chunking and recorded_splitter(main.info, encoder)([tail]) == split([tail])
        split = recorded_splitter(main.info, encoder)
        with LiveCollection.open(main, tmp_path / "live.sqlite", embed=encoder.embed, split=split) as live:
            live.upsert([Document("new", "", "x " * 20 + " ".join([tail] * 8))])
            assert len(live.view().delta.entries[live.view().row_id("new")].spans) > 1

    truncated, _ = index_expert(expert, encoder, [corpus], progress=False, long_documents="truncate")
    assert truncated.index.chunking["policy"] == "truncate"
    with Collection.open(expert.path / truncated.index.directory) as collection:
        assert not collection.chunked and len(collection.vectors()[0]) == 10
        assert recorded_splitter(collection.info, encoder) is None

    refused, report = index_expert(expert, encoder, [corpus], progress=False, long_documents="error")
    assert refused.index.count + report.malformed == 10 and refused.index.count > 0  # every one over 128 tokens refused
    assert "document 'long' is" in report.problems[0].reason and "limit of 128" in report.problems[0].reason
    with Collection.open(expert.path / refused.index.directory) as collection:
        _, vectors = collection.vectors()
        docs = collection.docstore.get(collection.docstore.all_row_ids().tolist())
        assert all(len(encoder.tokenizer(d.passage())["input_ids"]) <= 128 for d in docs)
