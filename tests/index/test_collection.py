from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from index import (
    DENSE_FILE,
    DOCSTORE_FILE,
    INFO_FILE,
    LEXICAL_FILES,
    Collection,
    IndexFileError,
    SearchParams,
    build_index,
    read_info,
    write_info,
)


@pytest.fixture
def collection_dir(tmp_path: Path, write_corpus, make_records, embed) -> Path:
    records = make_records(300)
    records[5]["metadata"] = {"lang": "fr"}
    corpus = write_corpus(tmp_path / "corpus.jsonl", records)
    out = tmp_path / "published"
    build_index([corpus], embed=embed, dim=32, out_dir=out, work_dir=tmp_path / "work", build_key="k1", progress=False)
    return out


def test_search_returns_documents_with_scores(collection_dir: Path, embed) -> None:
    with Collection.open(collection_dir) as collection:
        assert len(collection) == 300 and collection.info.dim == 32 and collection.info.factory == "Flat"
        queries = embed(["Title d5 text of d number 5", "text of d number 9"])
        hits = collection.search(queries, 3)
        assert [len(h) for h in hits] == [3, 3]
        top = hits[0][0]
        assert (top.id, top.title, top.text, top.metadata) == ("d5", "Title d5", "text of d number 5", {"lang": "fr"})
        assert top.score == pytest.approx(1.0, abs=1e-5) and hits[0][1].score < top.score
        assert hits[1][0].id == "d9"
        assert len(collection.search(queries[:1], 1000)[0]) == 300  # k > count: fewer hits, no padding


def test_opening_writes_nothing_into_the_published_directory(collection_dir: Path, embed) -> None:
    before = sorted(p.name for p in collection_dir.iterdir())
    with Collection.open(collection_dir) as collection:
        collection.search(embed(["x"]), 5)
        collection.search_lexical(["text"], 5)
        expected = sorted([DENSE_FILE, DOCSTORE_FILE, INFO_FILE, *LEXICAL_FILES])
        assert sorted(p.name for p in collection_dir.iterdir()) == before == expected


@pytest.mark.parametrize("name", [DENSE_FILE, DOCSTORE_FILE, INFO_FILE])
def test_missing_file_is_named(collection_dir: Path, name: str) -> None:
    (collection_dir / name).unlink()
    with pytest.raises(IndexFileError, match=f"missing '{name}'"):
        Collection.open(collection_dir)


def test_wrong_count_is_reported(collection_dir: Path) -> None:
    info = read_info(collection_dir)
    write_info(collection_dir, dataclasses.replace(info, count=299))
    with pytest.raises(IndexFileError, match=r"holds 300 vectors but index\.json says 299"):
        Collection.open(collection_dir)


def test_wrong_dim_is_reported(collection_dir: Path) -> None:
    write_info(collection_dir, dataclasses.replace(read_info(collection_dir), dim=64))
    with pytest.raises(IndexFileError, match=r"dim 32 but index\.json says 64"):
        Collection.open(collection_dir)


def test_bad_info_json(collection_dir: Path) -> None:
    (collection_dir / INFO_FILE).write_text("{not json")
    with pytest.raises(IndexFileError, match="not valid JSON"):
        Collection.open(collection_dir)
    (collection_dir / INFO_FILE).write_text(json.dumps({"dim": "32"}))
    with pytest.raises(IndexFileError, match="'dim' must be an integer, got '32'"):
        Collection.open(collection_dir)


def test_size_and_checksum_mismatch(collection_dir: Path) -> None:
    docs = collection_dir / DOCSTORE_FILE
    data = bytearray(docs.read_bytes())
    data[-100] ^= 0xFF  # same size, different bytes: only the checksum can tell
    docs.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum"):
        Collection.open(collection_dir, verify_checksums=True)
    docs.write_bytes(bytes(data[:-4096]))
    with pytest.raises(IndexFileError, match=r"bytes but index\.json records"):
        Collection.open(collection_dir)


def test_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(IndexFileError, match="does not exist"):
        Collection.open(tmp_path / "nothing")


def test_info_round_trip_drops_unknown_keys(tmp_path: Path, collection_dir: Path, caplog) -> None:
    info = read_info(collection_dir)
    assert info.build_key == "k1" and info.count == 300 and len(info.corpus_fingerprints) == 1
    write_info(tmp_path, info)
    assert read_info(tmp_path) == info
    data = json.loads((tmp_path / INFO_FILE).read_text()) | {"from_the_future": 1}
    (tmp_path / INFO_FILE).write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING):
        assert read_info(tmp_path) == info
    assert "from_the_future" in caplog.text


def test_hnsw_collection_with_search_params(tmp_path: Path, write_corpus, make_records, embed) -> None:
    corpus = write_corpus(tmp_path / "c.jsonl", make_records(200))
    out = tmp_path / "hnsw"
    build_index(
        [corpus],
        embed=embed,
        dim=32,
        out_dir=out,
        work_dir=tmp_path / "w",
        build_key="k",
        factory="HNSW16",
        progress=False,
    )
    with Collection.open(out, search_params=SearchParams(ef_search=64)) as collection:
        assert collection.info.factory == "HNSW16" and collection.dense.read_only
        hits = collection.search(np.asarray(embed(["text of d number 3"])), 5)
        assert hits[0][0].id == "d3"
