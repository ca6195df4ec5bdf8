"""Reading labelled queries in BEIR format: ``queries.jsonl`` and ``qrels/<split>.tsv``.

Training data for experts and pilots; also what the evaluation reads. Bad
lines are errors here (unlike corpora, query files are small and hand-made,
so a silent skip would hide a mistake).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from experts.errors import ExpertError


class LabelledDataError(ExpertError, ValueError):
    """A queries or qrels file that cannot be read."""


def read_queries(path: Path) -> dict[str, str]:
    """``{query_id: text}`` from a BEIR ``queries.jsonl`` (fields ``_id`` and ``text``)."""
    path = Path(path)
    if not path.is_file():
        raise LabelledDataError(f"queries file {path} does not exist")
    queries: dict[str, str] = {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                query_id, text = str(record["_id"]), record["text"]
            except (ValueError, KeyError, TypeError) as exc:
                raise LabelledDataError(
                    f"{path}:{number}: expected a JSON object with '_id' and 'text' ({exc})"
                ) from exc
            if not isinstance(text, str) or not text.strip():
                raise LabelledDataError(f"{path}:{number}: query {query_id!r} has no text")
            queries[query_id] = text
    return queries


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """``{query_id: {doc_id: relevance}}`` from a BEIR qrels TSV (header ``query-id corpus-id score``)."""
    path = Path(path)
    if not path.is_file():
        raise LabelledDataError(f"qrels file {path} does not exist")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        rows = csv.reader(handle, delimiter="\t")
        for number, row in enumerate(rows, start=1):
            if not row or (number == 1 and row[0] == "query-id"):
                continue
            try:
                query_id, doc_id, score = row[0], row[1], int(row[2])
            except (IndexError, ValueError) as exc:
                raise LabelledDataError(
                    f"{path}:{number}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}"
                ) from exc
            qrels.setdefault(query_id, {})[doc_id] = score
    return qrels


def judged_queries(queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, str]:
    """The queries that have at least one relevant judgement, in file order."""
    return {qid: text for qid, text in queries.items() if any(score > 0 for score in qrels.get(qid, {}).values())}
