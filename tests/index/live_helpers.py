"""Helpers of the live-collection tests: a small published collection and an exact reference search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from index import Collection, Document, build_index
from index.live.live_collection import LiveCollection
from index.live.view import LiveView
from tests.index.conftest import DIM, fake_embed, make_records, write_corpus


def records(n: int = 300) -> list[dict]:
    """``n`` corpus records with synthetic metadata (year, group) and one distinctive word each."""
    out = make_records(n)
    for i, record in enumerate(out):
        record["text"] += f" marker{i}"
        record["metadata"] = {"year": 1990 + i % 30, "group": ["a", "b", "c"][i % 3]}
    return out


def build_collection(tmp_path: Path, *, n: int = 300, factory: str = "Flat", name: str = "gen-1") -> Path:
    corpus = write_corpus(tmp_path / f"{name}.jsonl", records(n))
    out = tmp_path / name
    build_index(
        [corpus],
        embed=fake_embed,
        dim=DIM,
        out_dir=out,
        work_dir=tmp_path / f".work-{name}",
        build_key="test",
        factory=factory,
        progress=False,
    )
    return out


def open_live(generation: Path, log: Path) -> LiveCollection:
    return LiveCollection.open(Collection.open(generation), log, embed=fake_embed)


def doc(doc_id: str, text: str, **metadata) -> Document:
    return Document(doc_id, "", text, metadata)


def live_vectors(view: LiveView) -> tuple[np.ndarray, np.ndarray]:
    """Every live document's vector, read independently of the search path: (n,) row ids, (n, dim)."""
    ids, vectors = view.main.vectors()
    keep = np.isin(ids, view.live_main_ids())
    delta = view.delta.row_ids
    delta_vectors = np.stack([view.delta.entries[int(r)].vector for r in delta]) if len(delta) else vectors[:0]
    return np.concatenate([ids[keep], delta]), np.concatenate([vectors[keep], delta_vectors])


def brute_force(view: LiveView, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[list[int]]:
    """Exact top-k row ids of the live view (optionally of the allowed rows only), by numpy."""
    ids, vectors = live_vectors(view)
    if allowed is not None:
        keep = np.isin(ids, allowed)
        ids, vectors = ids[keep], vectors[keep]
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [ids[row].tolist() for row in order]


def ids_of(result: tuple[np.ndarray, np.ndarray]) -> list[list[int]]:
    return [[int(i) for i in row if i >= 0] for row in result[1]]


def state_of(live: LiveCollection, queries: np.ndarray, texts: list[str], *, bm25_scores: bool = True) -> str:
    """Everything a reader can observe, as one comparable string: size, dense and lexical results with documents.

    ``bm25_scores=False`` compares which documents each lexical query matches,
    not their scores: a merge changes BM25 statistics (see index.live.view).
    """
    view = live.view()
    dense = view.search_dense(queries, 8)
    hits = [[(h.id, round(h.score, 4), h.title, h.text, h.metadata) for h in row] for row in view.hits(*dense)]
    if bm25_scores:
        words = [[(h.id, round(h.score, 3)) for h in row] for row in view.hits(*view.search_lexical(texts, 8))]
    else:
        words = [sorted(h.id for h in row) for row in view.hits(*view.search_lexical(texts, len(view) + 1))]
    return json.dumps({"len": len(view), "dense": hits, "lexical": words})
