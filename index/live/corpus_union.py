"""The corpus the router takes votes from, searched once per query batch instead of once per collection.

The router's corpus votes (:func:`router.ranked_votes`) need, per query, the
best documents over every routed collection and whose they are. A
:class:`CorpusUnion` holds the published generations of those collections
in one dense index (:class:`~index.store.union_dense.UnionDense`) and one
shared-IDF BM25 matrix per analyzer (:class:`~index.store.union_lexical.UnionLexical`),
built once when the set of collections changes (off the search path) and
replaced whole. A search then asks it for the candidates of a set of
:class:`~index.live.view.LiveView` s of the same moment:

* the union is searched once, its documents of collections not asked and its
  tombstoned rows excluded;
* each asked collection's live delta (documents written since its last
  merge) is searched on its own, only when it holds documents;
* a view the union does not hold (a collection published after the union was
  built, a merge's new generation, a non-``Flat`` index, BM25L / BM25+, or
  BM25 scored without the union's shared IDF) is searched whole, as before.

The candidates are (score, owner) pairs whose top ``depth`` by score, ties
to the lower owner, are exactly those of the per-collection searches, so the
votes do not change: only their cost does (tests/index/test_corpus_union.py).
The exception is a union built with ``approximate_above``: a dense part of
more vectors than that is an inverted file; and one built with
``lexical_approximate_above``: a lexical part of more documents keeps each
stem's highest-scoring postings only. Their
candidates are most of the exact ones (:class:`~index.store.union_dense.UnionDense`,
:class:`~index.store.union_lexical.UnionLexical`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from index.errors import InvalidParameterError
from index.live.view import LiveView
from index.store.analysis import METHODS_WITH_NONOCCURRENCE
from index.store.chunked_dense import ChunkedDense
from index.store.collection import Collection
from index.store.shared_idf import SharedIdf
from index.store.union_dense import UnionDense
from index.store.union_lexical import APPROXIMATE_POSTINGS, UnionLexical, analysis_of
from index.store.union_members import UnionMembers

__all__ = ["CorpusUnion"]

#: Below this share of the union's documents asked, the union is not searched (it would have to go deep).
_SMALLEST_SHARE = 0.25

Candidates = tuple[np.ndarray, np.ndarray]  # (n, m) float32 scores (-inf pads), (n, m) int64 owners (-1 pads)


def _concat(parts: list[Candidates], n: int) -> Candidates:
    if not parts:
        return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
    return np.concatenate([p[0] for p in parts], axis=1), np.concatenate([p[1] for p in parts], axis=1)


def _vectors(collection: Collection) -> tuple[np.ndarray, np.ndarray]:
    """(P,) rows and (P, dim) vectors of a collection's dense index: every chunk of a chunked one."""
    if isinstance(collection.dense, ChunkedDense):
        rows, vectors, _, _ = collection.dense.chunk_vectors()
        return rows, vectors
    return collection.dense.vectors()


def _owned(scores: np.ndarray, owner: int) -> Candidates:
    return scores, np.where(np.isfinite(scores), owner, -1)


@dataclass(frozen=True, eq=False)
class CorpusUnion:
    """Published generations in one dense union and per-analyzer lexical unions; immutable once built.

    >>> union = CorpusUnion.build(collections, dense=True, lexical=True, shared_idf=shared)  # doctest: +SKIP
    >>> scores, owners = union.dense_candidates(views, base, 20)  # owners index ``views``
    """

    dense: UnionDense | None = None
    #: id(collection) -> (collection, member of ``dense``)
    dense_members: dict[int, tuple[Collection, int]] = field(default_factory=dict)
    lexical: tuple[UnionLexical, ...] = ()
    #: id(collection) -> (collection, (union in ``lexical``, member of it))
    lexical_members: dict[int, tuple[Collection, tuple[int, int]]] = field(default_factory=dict)
    #: The IDF the lexical unions were scored with; their votes serve searches with this very one.
    shared_idf: SharedIdf | None = None

    @classmethod
    def build(
        cls,
        collections: Sequence[Collection],
        *,
        dense: bool,
        lexical: bool,
        shared_idf: SharedIdf | None,
        approximate_above: int | None = None,
        probes: int = 64,
        lexical_approximate_above: int | None = None,
    ) -> CorpusUnion:
        """The union of ``collections``: ``dense`` over their Flat indexes, ``lexical`` (with a ``shared_idf``)
        over their BM25 indexes; any other collection is searched on its own by the candidates methods.
        ``approximate_above`` and ``probes``: a dense union of more vectors is an inverted file
        (:meth:`UnionDense.build <index.store.union_dense.UnionDense.build>`); ``lexical_approximate_above``:
        a lexical union of more documents keeps :data:`~index.store.union_lexical.APPROXIMATE_POSTINGS`
        postings a stem. None: exact."""
        if lexical_approximate_above is not None and lexical_approximate_above < 0:
            raise InvalidParameterError(
                f"lexical_approximate_above must be >= 0 or None, got {lexical_approximate_above}"
            )
        dense_union, dense_members = None, {}
        flat = [
            c for c in collections if dense and c.dense.factory.replace(" ", "") == "Flat" and c.dense.exact_storage
        ]
        flat = [c for c in flat if c.dense.dim == flat[0].dense.dim]
        if flat:
            total = sum(c.dense.chunk_count if isinstance(c.dense, ChunkedDense) else c.dense.ntotal for c in flat)
            dense_union = UnionDense.build(
                (_vectors(c) for c in flat),
                dim=flat[0].dense.dim,
                total=total,
                approximate_above=approximate_above,
                probes=probes,
            )
            dense_members = {id(c): (c, m) for m, c in enumerate(flat)}
        unions, lexical_members = [], {}
        if lexical and shared_idf is not None:
            groups: dict[tuple[str | None, str | None, str], list[Collection]] = defaultdict(list)
            for c in collections:
                if c.has_lexical and c.lexical.settings.method not in METHODS_WITH_NONOCCURRENCE:
                    groups[analysis_of(c.lexical.settings)].append(c)
            for g, members in enumerate(groups.values()):
                documents = sum(len(c.lexical) for c in members)
                capped = lexical_approximate_above is not None and documents > lexical_approximate_above
                cap = APPROXIMATE_POSTINGS if capped else None
                unions.append(UnionLexical.build([c.lexical for c in members], shared_idf, postings_cap=cap))
                lexical_members.update({id(c): (c, (g, m)) for m, c in enumerate(members)})
        return cls(dense_union, dense_members, tuple(unions), lexical_members, shared_idf if unions else None)

    @property
    def nbytes(self) -> int:
        """Memory held by the unions' arrays (the copies of the collections' vectors and BM25 scores)."""
        return (self.dense.nbytes if self.dense is not None else 0) + sum(u.nbytes for u in self.lexical)

    def _dense_member(self, view: LiveView) -> int | None:
        entry = self.dense_members.get(id(view.main))
        return entry[1] if entry is not None and entry[0] is view.main else None

    def _lexical_member(self, view: LiveView) -> tuple[int, int] | None:
        entry = self.lexical_members.get(id(view.main))
        return entry[1] if entry is not None and entry[0] is view.main else None

    # ------------------------------------------------------------------ candidates
    def dense_candidates(self, views: Sequence[LiveView], queries: np.ndarray, depth: int) -> Candidates:
        """(n, dim) base vectors -> (n, m) scores and owners (positions in ``views``) of the documents that may
        be among the ``depth`` best of all the views' live documents, by inner product."""
        queries, n = np.ascontiguousarray(queries, dtype=np.float32), len(queries)
        asked = {m: j for j, view in enumerate(views) if (m := self._dense_member(view)) is not None}
        union = self.dense
        if union is not None and asked:
            share = sum(len(union.members.rows[m]) for m in asked) / max(len(union.members), 1)
            if share < _SMALLEST_SHARE:
                asked = {}
        parts: list[Candidates] = []
        if union is not None and asked:
            members = list(asked)
            excluded = union.members.excluded(members, [views[asked[m]].main_dead for m in members])
            scores, documents = union.search(queries, depth, excluded=excluded)
            parts.append((scores, self._owners(union.members, documents, asked)))
            for j in asked.values():
                if len(views[j].delta):
                    parts.append(_owned(views[j].delta.search_dense(queries, depth, None)[0], j))
        searched = set(asked.values())
        for j, view in enumerate(views):
            if j not in searched:
                parts.append(_owned(view.search_dense(queries, depth)[0], j))
        return _concat(parts, n)

    def lexical_candidates(
        self, views: Sequence[LiveView], texts: Sequence[str], depth: int, *, shared_idf: SharedIdf | None
    ) -> Candidates:
        """n query texts -> (n, m) scores and owners (positions in ``views``) of the documents that may be among
        the ``depth`` best of all the views' live documents by BM25 (``shared_idf``: as :meth:`LiveView.search_lexical`
        scores them); a view without a BM25 index has none."""
        n = len(texts)
        groups: dict[int, dict[int, int]] = defaultdict(dict)  # union -> member -> position in views
        if shared_idf is not None and shared_idf is self.shared_idf:
            for j, view in enumerate(views):
                if (found := self._lexical_member(view)) is not None:
                    groups[found[0]][found[1]] = j
        parts: list[Candidates] = []
        done: set[int] = set()
        for g, asked in groups.items():
            union, members = self.lexical[g], list(asked)
            excluded = union.members.excluded(members, [views[asked[m]].main_dead for m in members])
            scores, documents = union.search(list(texts), depth, excluded=excluded)
            parts.append((scores, self._owners(union.members, documents, asked)))
            for j in asked.values():
                done.add(j)
                if len(views[j].delta):
                    delta = views[j].delta.search_lexical(texts, depth, None, shared_idf=shared_idf)[0]
                    parts.append(_owned(delta, j))
        for j, view in enumerate(views):
            if j not in done and view.has_lexical:
                parts.append(_owned(view.search_lexical(texts, depth, shared_idf=shared_idf)[0], j))
        return _concat(parts, n)

    @staticmethod
    def _owners(members: UnionMembers, documents: np.ndarray, asked: dict[int, int]) -> np.ndarray:
        """(n, m) union document numbers (-1 pads) -> their owners' positions in the views (-1 pads)."""
        position = np.full(members.count, -1, dtype=np.int64)
        position[list(asked)] = list(asked.values())
        return np.where(documents >= 0, position[members.member_of[documents.clip(min=0)]], -1)
