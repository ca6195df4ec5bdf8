"""BM25 over several collections' lexical indexes at once, every term weighed by one shared IDF.

The router's BM25 votes score each collection with the IDF of all of them
(:mod:`index.store.shared_idf`): each stored term score ``idf_own(t) x tf-part(t, d)``
is rescaled by ``idf_all(t) / idf_own(t)``. That factor depends on the term and
the collection only, not on the query, so :class:`UnionLexical` applies it
once, when it is built, and keeps every member's rescaled scores in one CSC
matrix over one vocabulary: a query is then one pass over its stems' columns
for all members, instead of one search per collection.

Exactness. Each rescaled score is computed as :func:`~index.store.shared_idf.shared_idf_top_k`
computes it (the stored float32 score times the float32-rounded factor), and a
document's scores are added in float64 in the order of the query's stems, so
every document gets bit for bit the score its own collection's search gives.
Members must analyse text alike (one :class:`~index.store.analysis.Analyzer`)
and use a method without a non-occurrence score (BM25L and BM25+ keep their
own IDF in :meth:`LexicalIndex.search`).

Memory: one float32 score and one int32 document number per stored
(term, document) pair of every member: a copy of their score matrices.

Approximate unions. Searched exactly, a query's cost follows the postings of
its stems, which grow with the documents held. Built with ``postings_cap``,
each stem keeps only its ``postings_cap`` highest term scores (the
``RR_ROUTER_VOTE_EXACT_MAX`` switch of :class:`~index.live.corpus_union.CorpusUnion`
above that many documents, with :data:`APPROXIMATE_POSTINGS`): an
impact-ordered cut, so a query reads at most that many postings a stem,
whatever the union holds. A document loses only the scores of stems for which
that many documents score higher, so the votes' best documents (20 by
default) are near the exact ones, not equal.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.errors import InvalidParameterError
from index.store.analysis import METHODS_WITH_NONOCCURRENCE, Analyzer, LexicalSettings
from index.store.lexical import LexicalIndex
from index.store.shared_idf import SharedIdf, idf
from index.store.union_members import UnionMembers

__all__ = ["APPROXIMATE_POSTINGS", "UnionLexical", "analysis_of"]

#: Postings kept per stem in an approximate union (the highest term scores).
APPROXIMATE_POSTINGS = 1024


def analysis_of(settings: LexicalSettings) -> tuple[str | None, str | None, str]:
    """What decides a text's stems (stopwords, stemmer, token pattern): indexes alike in it can share a union."""
    return settings.stopwords, settings.stemmer, settings.token_pattern


def _factors(index: LexicalIndex, shared: SharedIdf, overall_idf: dict[tuple[str, str], float]) -> np.ndarray:
    """(stems,) float32: each column's ``idf_all / idf_own`` as ``shared_idf_top_k`` computes it (1 where it keeps)."""
    vocab, (_, _, indptr) = index.score_matrix()
    counts = np.diff(indptr)
    method, documents = index.settings.method, len(index)
    factors = np.ones(len(counts), dtype=np.float64)
    for stem, column in vocab.items():
        if column >= len(counts) or not counts[column]:
            continue
        own = idf(method, documents, float(counts[column]))
        overall = shared.frequencies.get(stem)
        if overall is None or own <= 1e-9:
            continue
        key = (method, stem)
        if key not in overall_idf:
            overall_idf[key] = idf(method, shared.documents, overall)
        factors[column] = overall_idf[key] / own
    return factors.astype(np.float32)


class UnionLexical:
    """Members' BM25 scores rescaled to one IDF, in one CSC matrix; documents numbered member by member.

    >>> union = UnionLexical.build([collection_a.lexical, collection_b.lexical], shared)  # doctest: +SKIP
    >>> scores, documents = union.search(["swept wing"], 20)   # (1, m) float32, (1, m) int64 document numbers
    """

    def __init__(
        self,
        analyzer: Analyzer,
        vocab: dict[str, int],
        matrix: tuple[np.ndarray, np.ndarray, np.ndarray],
        member_rows: Sequence[np.ndarray],
        postings_cap: int | None = None,
    ) -> None:
        """Private: use :meth:`build`."""
        self._analyzer = analyzer
        self._vocab = vocab
        self._data, self._indices, self._indptr = matrix
        #: Which member and row each document number is (bm25s's document order, rows ascending).
        self.members = UnionMembers(member_rows)
        #: Postings kept per stem (None: all of them, exact scores).
        self.postings_cap = postings_cap

    @classmethod
    def build(
        cls, members: Sequence[LexicalIndex], shared: SharedIdf, *, postings_cap: int | None = None
    ) -> UnionLexical:
        """One matrix over ``members`` (one analyzer, methods without a non-occurrence score), scored with ``shared``.

        ``postings_cap``: keep only that many postings of each stem, its highest scores (ties: the lower document).
        """
        if postings_cap is not None and (isinstance(postings_cap, bool) or postings_cap < 1):
            raise InvalidParameterError(f"postings_cap must be a positive integer or None, got {postings_cap!r}")
        if not members:
            raise InvalidParameterError("a lexical union needs at least one member")
        analyzer = Analyzer(members[0].settings)
        vocab: dict[str, int] = {}
        columns, data, documents, overall_idf, offset = [], [], [], dict[tuple[str, str], float](), 0
        for member in members:
            settings = member.settings
            if settings.method in METHODS_WITH_NONOCCURRENCE or analysis_of(settings) != analysis_of(
                members[0].settings
            ):
                raise InvalidParameterError(
                    f"a lexical union's members must analyse text alike and score without a non-occurrence "
                    f"term; got {settings} beside {members[0].settings}"
                )
            own_vocab, (values, indices, indptr) = member.score_matrix()
            counts = np.diff(indptr)
            union_column = np.zeros(len(counts), dtype=np.int64)
            for stem, column in own_vocab.items():
                if column < len(counts):
                    union_column[column] = vocab.setdefault(stem, len(vocab))
            columns.append(np.repeat(union_column, counts))
            data.append(np.asarray(values, dtype=np.float32) * np.repeat(_factors(member, shared, overall_idf), counts))
            documents.append(offset + np.asarray(indices, dtype=np.int64))
            offset += len(member)
        # Document numbers and columns in 4 bytes where they fit: the matrix is a copy of every member's.
        small = np.int32 if max(offset, len(vocab)) < 2**31 else np.int64
        column_of = np.concatenate(columns).astype(small, copy=False)
        del columns
        order = np.argsort(column_of, kind="stable")  # members stay in order within a column
        indptr = np.zeros(len(vocab) + 1, dtype=np.int64)
        np.cumsum(np.bincount(column_of, minlength=len(vocab)), out=indptr[1:])
        del column_of
        matrix = (np.concatenate(data)[order], np.concatenate(documents).astype(small)[order], indptr)
        if postings_cap is not None:
            matrix = _capped(matrix, postings_cap)
        return cls(analyzer, vocab, matrix, [member.row_ids for member in members], postings_cap)

    @property
    def documents(self) -> int:
        return len(self.members)

    @property
    def nbytes(self) -> int:
        """Memory held: the rescaled scores, their document numbers and column pointers (not the vocabulary)."""
        return self._data.nbytes + self._indices.nbytes + self._indptr.nbytes + self.members.nbytes

    def _scored(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The documents sharing a stem with ``text`` (ascending) and their float64 scores, added in stem order.

        Few postings are summed by document (sorted); many into one array over
        every document. Both add each document's scores in the same order, so
        they give the same sums, bit for bit.
        """
        spans = []
        for stem in self._analyzer(text):
            column = self._vocab.get(stem)
            if column is not None:
                spans.append((int(self._indptr[column]), int(self._indptr[column + 1])))
        if sum(end - start for start, end in spans) * 8 >= self.documents:
            scores = np.zeros(self.documents, dtype=np.float64)
            for start, end in spans:
                scores[self._indices[start:end]] += self._data[start:end]
            hits = np.flatnonzero(scores)
            return hits, scores[hits]
        if not spans:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        documents = np.concatenate([self._indices[start:end] for start, end in spans])
        weights = np.concatenate([self._data[start:end] for start, end in spans]).astype(np.float64)
        hits, inverse = np.unique(documents, return_inverse=True)
        return hits.astype(np.int64), np.bincount(inverse, weights=weights, minlength=len(hits))

    def search(
        self, texts: Sequence[str], depth: int, *, excluded: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every document that can be among the ``depth`` best: n texts -> (n, m) float32 scores, (n, m) documents.

        Only documents sharing a stem with the query are hits. ``excluded``:
        (D,) bool, documents that must not count. Rows best first, padded
        with -inf / -1; all documents scoring at least the ``depth``-th best
        are in (ties included, as float32 scores compare).
        """
        if isinstance(depth, bool) or not isinstance(depth, int) or depth <= 0:
            raise InvalidParameterError(f"depth must be a positive integer, got {depth!r}")
        found: list[tuple[np.ndarray, np.ndarray]] = []
        for text in texts:
            hits, totals = self._scored(text)
            if excluded is not None:
                totals[excluded[hits]] = 0.0
            keep = totals > 0
            hits, values = hits[keep], totals[keep].astype(np.float32)
            if len(hits) > depth:
                boundary = np.partition(values, len(values) - depth)[len(values) - depth]
                keep = values >= boundary
                hits, values = hits[keep], values[keep]
            order = np.argsort(-values, kind="stable")
            found.append((values[order], hits[order]))
        width = max((len(s) for s, _ in found), default=0)
        out_scores = np.full((len(found), width), -np.inf, dtype=np.float32)
        out_documents = np.full((len(found), width), -1, dtype=np.int64)
        for q, (values, hits) in enumerate(found):
            out_scores[q, : len(values)] = values
            out_documents[q, : len(hits)] = hits
        return out_scores, out_documents


def _capped(matrix: tuple[np.ndarray, np.ndarray, np.ndarray], cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The CSC ``matrix`` with each column cut to its ``cap`` highest scores (ties: the lower document), in order."""
    data, indices, indptr = matrix
    keep = np.ones(len(data), dtype=bool)
    for column in np.flatnonzero(np.diff(indptr) > cap):
        start, end = int(indptr[column]), int(indptr[column + 1])
        ranked = np.lexsort((indices[start:end], -data[start:end]))  # best score first, then the lower document
        keep[start + ranked[cap:]] = False
    columns = len(indptr) - 1
    column_of = np.repeat(np.arange(columns), np.diff(indptr))
    new_indptr = np.zeros_like(indptr)
    np.cumsum(np.bincount(column_of[keep], minlength=columns), out=new_indptr[1:])
    return data[keep], indices[keep], new_indptr
