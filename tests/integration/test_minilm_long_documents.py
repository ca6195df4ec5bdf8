"""The real all-MiniLM-L6-v2 on a long document built from real texts: its tail is found with chunking only."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest

from app.offline.building import index_expert
from experts import Encoder, create_expert
from index import Collection, read_info

pytestmark = pytest.mark.slow

NEEDLE = 300  # the scifact document whose text ends the long document


def _read(path: Path, count: int) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in islice(handle, count)]


@pytest.fixture(scope="module")
def built(datasets: Path, tmp_path_factory: pytest.TempPathFactory):
    """One long document (40 cranfield texts, then one scifact abstract) among 80 real documents of both collections.

    Its tail lies thousands of tokens past the 256 the encoder embeds, so a
    truncated index cannot see it; the other scifact documents compete for
    the query in both indexes.
    """
    root = tmp_path_factory.mktemp("experts")
    cranfield = _read(datasets / "cranfield" / "corpus.jsonl", 80)
    scifact = _read(datasets / "scifact" / "corpus.jsonl", NEEDLE + 1)
    needle = scifact[NEEDLE]
    long = {"_id": "long", "title": "", "text": " ".join(d["text"] for d in cranfield[40:]) + " " + needle["text"]}
    corpus = root.parent / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in [long, *cranfield[:40], *scifact[:40]]))
    encoder = Encoder()
    collections = {}
    for policy in ("chunk", "truncate"):
        expert = create_expert(root, policy, encoder=encoder)
        manifest, _ = index_expert(expert, encoder, [corpus], progress=False, long_documents=policy)
        collections[policy] = expert.path / manifest.index.directory
    yield encoder, collections, needle
    # (the expert directories live in the module's temporary directory)


def test_a_phrase_in_the_tail_is_found_with_chunk_and_not_with_truncate(built) -> None:
    encoder, collections, needle = built
    query = encoder.embed([needle["title"]], max_length=64)
    ranks = {}
    for policy, directory in collections.items():
        with Collection.open(directory) as collection:
            (hits,) = collection.search(query, 10)
            ids = [h.id for h in hits]
            ranks[policy] = ids.index("long") + 1 if "long" in ids else None
            if policy == "chunk":
                top = hits[0]
                assert top.id == "long", ids
                start, end = top.span
                window = top.text[start:end]
                assert needle["text"][:200] in window or window in needle["text"] or needle["text"][-200:] in window
                assert start > len(top.text) // 2  # the best window is in the tail
    print(f"rank of the long document: {ranks} (None: not in the top 10)")
    assert ranks["chunk"] == 1
    assert ranks["truncate"] is None or ranks["truncate"] > 5, ranks


def test_the_chunked_index_records_its_windows(built) -> None:
    encoder, collections, _ = built
    info = read_info(collections["chunk"])
    assert info.chunking.policy == "chunk" and info.chunking.max_tokens == encoder.max_length == 256
    assert info.count == 81 and info.chunks > 81 + 10  # the long document alone is well over ten windows
    assert read_info(collections["truncate"]).chunks is None
