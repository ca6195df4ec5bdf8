"""Shared IDF: BM25 over several indexes on one IDF, checked against a BM25 index built over their union."""

from __future__ import annotations

import numpy as np
import pytest

from index import LexicalIndex, LexicalSettings, SharedIdf
from index.store.shared_idf import idf

COMPUTING = [
    "an algorithm for sorting lists",
    "parsing algorithm of a compiler",
    "a fast algorithm for hashing",
    "operating system scheduling",
]
LIBRARY = [
    "library catalogues and indexing",
    "retrieval of documents in libraries",
    "an algorithm for ranking library documents",
    "citation indexing of journals",
    "subject headings in catalogues",
    "library users and their needs",
]


def build(texts: list[str], start: int = 0) -> LexicalIndex:
    return LexicalIndex.build([(np.arange(start, start + len(texts)), texts)], LexicalSettings())


def test_frequencies_count_the_documents_holding_each_stem() -> None:
    documents, frequencies = build(COMPUTING).document_frequencies()
    assert documents == 4 and frequencies["algorithm"] == 3 and frequencies["compil"] == 1


def test_each_term_is_weighed_by_the_idf_over_every_index() -> None:
    computing, library = build(COMPUTING), build(LIBRARY, start=100)
    shared = SharedIdf.over([computing.document_frequencies(), library.document_frequencies()])
    assert shared.documents == 10 and shared.frequencies["algorithm"] == 4
    for index, documents, frequency in ((computing, 4, 3), (library, 6, 1)):
        own_scores, own_ids = index.search(["algorithm"], 3)
        scores, ids = index.search(["algorithm"], 3, shared_idf=shared)
        assert sorted(ids[0].tolist()) == sorted(own_ids[0].tolist())
        ratio = idf("lucene", 10, 4) / idf("lucene", documents, frequency)
        found = np.isfinite(own_scores[0])
        assert np.allclose(np.sort(scores[0][found]), np.sort(own_scores[0][found] * ratio), rtol=1e-5)
    # A query of two terms: each is rescaled by its own ratio, so the order of documents can change.
    both = computing.search(["algorithm compiler"], 4, shared_idf=shared)
    assert both[1][0, 0] == 1  # the one document with both terms


def test_a_rare_term_in_one_collection_no_longer_outweighs_it_elsewhere() -> None:
    computing, library = build(COMPUTING), build(LIBRARY, start=100)
    shared = SharedIdf.over([computing.document_frequencies(), library.document_frequencies()])
    query = ["algorithm"]
    own_best = max(computing.search(query, 1)[0][0, 0], library.search(query, 1)[0][0, 0])
    assert own_best == library.search(query, 1)[0][0, 0]  # own IDF: the library's one 'algorithm' wins
    with_shared = [index.search(query, 1, shared_idf=shared)[0][0, 0] for index in (computing, library)]
    assert with_shared[0] == pytest.approx(with_shared[1], rel=0.5)  # one IDF: only length normalisation differs


def test_masks_stopwords_and_unknown_stems_behave_as_without_shared_idf() -> None:
    computing = build(COMPUTING)
    shared = SharedIdf.over([computing.document_frequencies()])
    for query in (["the of and"], ["zebra"], ["algorithm"]):
        plain = computing.search(query, 4)
        same = computing.search(query, 4, shared_idf=shared)  # one index: its IDF is the shared one
        assert sorted(plain[1][0].tolist()) == sorted(same[1][0].tolist())
        assert np.allclose(np.sort(plain[0][0]), np.sort(same[0][0]), rtol=1e-5)
    scores, ids = computing.search(["algorithm"], 4, allowed=[1], shared_idf=shared)
    assert ids[0].tolist() == [1, -1, -1, -1] and np.isfinite(scores[0, 0])
