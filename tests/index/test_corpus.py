from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from index import CorpusError, CorpusProblem, Document, corpus_fingerprint, read_corpus, scan_corpus
from index.corpus import count_lines

MIXED = [
    {"_id": "a", "title": "Alpha", "text": "first", "metadata": {"lang": "en"}, "year": 2020},
    "{not json",
    "[1, 2, 3]",
    {"title": "no id", "text": "x"},
    {"_id": "b", "title": "no text"},
    "",
    {"_id": 7, "text": "integer id"},
    {"_id": "c", "text": 42},
    {"_id": "d", "title": "", "text": "   "},
    {"_id": True, "text": "bool id"},
    {"_id": "", "text": "empty id"},
    {"id": "e", "text": "plain id key"},
    {"_id": "f", "title": 3, "text": "bad title"},
    {"_id": "g", "text": "bad metadata", "metadata": [1]},
]


def _split(items):
    docs = [(line, item) for line, item in items if isinstance(item, Document)]
    problems = [(line, item) for line, item in items if isinstance(item, CorpusProblem)]
    return docs, problems


@pytest.mark.parametrize("name", ["corpus.jsonl", "corpus.jsonl.gz"])
def test_valid_and_malformed_lines_with_line_numbers(tmp_path: Path, write_corpus, name: str) -> None:
    path = write_corpus(tmp_path / name, MIXED)
    docs, problems = _split(list(read_corpus(path)))

    assert [(line, d.id) for line, d in docs] == [(1, "a"), (7, "7"), (12, "e")]
    first = docs[0][1]
    assert first.title == "Alpha" and first.text == "first"
    assert first.metadata == {"lang": "en", "year": 2020}
    reasons = {line: p.reason for line, p in problems}
    assert sorted(reasons) == [2, 3, 4, 5, 8, 9, 10, 11, 13, 14]
    assert reasons[2].startswith("invalid JSON")
    assert "object" in reasons[3] and "list" in reasons[3]
    assert reasons[4] == "missing '_id'"
    assert reasons[5] == "missing 'text'"
    assert "'text' must be a string" in reasons[8]
    assert "both empty" in reasons[9]
    assert "bool" in reasons[10]
    assert reasons[11] == "empty '_id'"
    assert "'title' must be a string" in reasons[13]
    assert "'metadata' must be an object" in reasons[14]
    assert all(p.path == path and p.line == line for line, p in problems)
    assert str(problems[0][1]) == f"{path}:2: {reasons[2]}"


def test_scan_names_the_bad_lines_the_indexer_would_skip(tmp_path: Path, write_corpus) -> None:
    path = write_corpus(tmp_path / "corpus.jsonl", [*MIXED, {"_id": "a", "text": "again"}, {"_id": 7, "text": "x"}])
    scan = scan_corpus(path, keep=3)
    assert (scan.documents, scan.malformed, scan.duplicates, scan.clean) == (3, 10, 2, False)
    assert [p.line for p in scan.problems] == [2, 3, 4] and [p.line for p in scan.repeated] == [15, 16]
    described = scan.describe()
    assert described.startswith("corpus.jsonl: 10 malformed lines: line 2: invalid JSON")
    assert "line 4: missing '_id'; ... (7 more)" in described
    assert described.endswith(
        "and 2 repeated-id lines: line 15: id 'a' already on line 1; line 16: id '7' already on line 7"
    )
    assert scan_corpus(write_corpus(tmp_path / "ok.jsonl", MIXED[:1])).clean
    seen: list[int] = []
    scan_corpus(path, on_lines=seen.append, every=5)
    assert seen == [5, 10, 15]  # line 6 is blank: no item, no call


def test_a_cut_off_line_names_the_column_where_it_ends(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": \n{"_id": "b", "text": "ok"}\n')  # not "line 2 column 1"
    (line, problem), _ = list(read_corpus(path))
    assert line == 1 and problem.reason == "invalid JSON: Expecting value (column 21)"


def test_scan_of_an_unreadable_corpus_says_why(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl.gz").write_text('{"_id": "a", "text": "not gzip"}\n')
    with pytest.raises(CorpusError, match="cannot read corpus file.*gzip"):
        scan_corpus(tmp_path / "c.jsonl.gz")
    with pytest.raises(CorpusError, match="not a regular file"):
        scan_corpus(tmp_path)


def test_start_line_skips_already_processed_lines(tmp_path: Path, write_corpus, make_records) -> None:
    path = write_corpus(tmp_path / "c.jsonl", make_records(10))
    lines = [line for line, _ in read_corpus(path, start_line=6)]
    assert lines == [7, 8, 9, 10]


def test_gz_and_plain_give_the_same_documents(tmp_path: Path, write_corpus, make_records) -> None:
    records = make_records(20)
    plain = list(read_corpus(write_corpus(tmp_path / "c.jsonl", records)))
    packed = list(read_corpus(write_corpus(tmp_path / "c.jsonl.gz", records)))
    assert plain == packed
    assert count_lines(tmp_path / "c.jsonl.gz") == 20


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(CorpusError, match=r"nope\.jsonl"):
        list(read_corpus(missing))
    with pytest.raises(CorpusError, match=r"nope\.jsonl"):
        corpus_fingerprint(missing)


def test_truncated_gzip_is_a_corpus_error(tmp_path: Path, make_records) -> None:
    data = gzip.compress("".join(json.dumps(r) + "\n" for r in make_records(2000)).encode())
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError, match="cannot read"):
        list(read_corpus(path))


def test_invalid_utf8_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "x"}\n{"_id": "b", "text": "\xff"}\n')
    docs, problems = _split(list(read_corpus(path)))
    assert [d.id for _, d in docs] == ["a"]
    assert problems[0][0] == 2 and "UTF-8" in problems[0][1].reason


def test_passage_joins_title_and_text() -> None:
    assert Document("1", "Title", "Body").passage() == "Title Body"
    assert Document("1", "", "Body").passage() == "Body"
    assert Document("1", "Title", "").passage() == "Title"


def test_fingerprint_tracks_content(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"_id": "a", "text": "x"}\n')
    first = corpus_fingerprint(path)
    assert first.startswith("sha256:") and corpus_fingerprint(path) == first
    path.write_text('{"_id": "a", "text": "y"}\n')
    assert corpus_fingerprint(path) != first
