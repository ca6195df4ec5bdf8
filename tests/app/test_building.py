"""Building an expert's index and pilots through the app layer: resume, atomic publish, generations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from app.building import build_pilots, index_expert, pilot_texts_from_documents
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
    np.testing.assert_allclose(expert.read_pilots(centroid)[0], encoder.embed(texts, max_length=64).mean(axis=0), atol=1e-6)
    with pytest.raises(ValueError, match="Valid methods are"):
        build_pilots(expert, encoder, texts, method="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no texts"):
        build_pilots(expert, encoder, [])


def test_an_int8_encoder_never_resumes_an_fp32_build(tmp_path: Path, tiny_bert_path: Path) -> None:
    from app.building import _build_key

    fp32, int8 = Encoder(tiny_bert_path), Encoder(tiny_bert_path, backend="int8")
    expert = create_expert(tmp_path / "experts", "keyed", encoder=fp32)
    manifest = expert.read_manifest()
    assert _build_key(expert, manifest, fp32, "Flat") != _build_key(expert, manifest, int8, "Flat")
    assert _build_key(expert, manifest, fp32, "Flat") == _build_key(expert, manifest, Encoder(tiny_bert_path), "Flat")
