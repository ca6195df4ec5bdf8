"""The corpus votes a routing decision adds to the pilot scores, computed in one place.

Both :meth:`SearchEngine.search <app.engine.engine.SearchEngine.search>` (each
micro-batch, :class:`~app.engine.batch_run.BatchRun`) and
:meth:`SearchEngine.route <app.engine.engine.SearchEngine.route>` (``rr route``,
the demo's routing report) call :func:`corpus_votes`, so what a user is shown
as the routing of a query is the routing its search gets. The searches run
on the snapshot's :class:`~index.CorpusUnion` (every routed collection's
published generation in one dense index and one BM25 matrix, plus each
expert's live delta), so their cost does not grow with each expert; the
scores are turned into votes by :func:`router.candidate_votes`.
:func:`per_expert_votes` is the computation it replaced (one dense and one
BM25 search per expert), kept as the reference the tests and
``bench/routing_votes.py`` compare it with.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from index import CorpusUnion, LiveView, SharedIdf
from router import VoteRule, candidate_votes, expert_list_votes

__all__ = ["ROUTE_EVIDENCE", "RouteEvidence", "corpus_votes", "per_expert_votes"]

#: Searches every view on its own: what a union that holds no collection does.
_NO_UNION = CorpusUnion()

#: Corpus evidence the router may add to pilot scores (see ``SearchEngine``).
RouteEvidence = Literal["none", "documents", "bm25", "documents+bm25"]
ROUTE_EVIDENCE: tuple[RouteEvidence, ...] = ("none", "documents", "bm25", "documents+bm25")


def corpus_votes(
    views: Sequence[LiveView],
    base: np.ndarray,
    texts: Sequence[str],
    *,
    evidence: RouteEvidence,
    depth: int,
    shared_idf: SharedIdf | None = None,
    union: CorpusUnion | None = None,
    rule: VoteRule = "best",
) -> np.ndarray | None:
    """(n, E) votes of the collections ``views`` (the router's experts, in its order) for n queries; None when off.

    ``base`` (n, dim) holds the queries' base vectors, searched over every
    view's documents (``documents``); ``texts`` the queries, searched in every
    BM25 index (``bm25``); each kind gives each expert its share of the
    ``depth`` best documents over all of them (``rule``: their shares, or
    a softmax of each expert's best scores, :func:`router.candidate_votes`),
    and ``documents+bm25`` adds the two. An expert without a BM25 index gets no lexical votes.
    ``shared_idf``: BM25 scored with every collection's IDF together, so that
    scores compare across collections (:mod:`index.store.shared_idf`); None:
    each its own. The caller takes the views once (one per expert, as a
    search batch does), so every expert is asked about the same moment of its
    documents. ``union``: the snapshot's union of the published generations,
    searched once for all views it holds (None: every view on its own); the
    votes are the same either way (:func:`per_expert_votes`), only cheaper.

    >>> votes = corpus_votes(views, base, ["lift of a swept wing"], evidence="documents", depth=20)  # doctest: +SKIP
    >>> votes.shape                                                                                  # doctest: +SKIP
    (1, 5)
    """
    if evidence not in ROUTE_EVIDENCE:
        raise ValueError(f"Invalid evidence {evidence!r}. Valid choices are: {', '.join(ROUTE_EVIDENCE)}")
    if evidence == "none" or not len(texts) or not views:
        return None
    union = union or _NO_UNION
    votes = np.zeros((len(texts), len(views)), dtype=np.float32)
    if evidence in ("documents", "documents+bm25"):
        scores, owners = union.dense_candidates(views, base, depth)
        votes += candidate_votes(scores, owners, experts=len(views), depth=depth, rule=rule, kind="dense")
    if evidence in ("bm25", "documents+bm25"):
        scores, owners = union.lexical_candidates(views, list(texts), depth, shared_idf=shared_idf)
        searched = np.array([view.has_lexical for view in views])
        votes += candidate_votes(
            scores, owners, experts=len(views), depth=depth, rule=rule, kind="lexical", searched=searched
        )
    return votes


def per_expert_votes(
    views: Sequence[LiveView],
    base: np.ndarray,
    texts: Sequence[str],
    *,
    evidence: RouteEvidence,
    depth: int,
    shared_idf: SharedIdf | None = None,
    rule: VoteRule = "best",
) -> np.ndarray | None:
    """:func:`corpus_votes` as it was computed before the union: one dense and one BM25 search per view.

    The reference for tests and benchmarks; the engine does not call it.
    """
    if evidence == "none" or not len(texts) or not views:
        return None
    votes = np.zeros((len(texts), len(views)), dtype=np.float32)
    if evidence in ("documents", "documents+bm25"):
        dense = [view.search_dense(base, depth)[0] for view in views]
        votes += expert_list_votes(dense, depth=depth, rule=rule, kind="dense")
    if evidence in ("bm25", "documents+bm25"):
        queries = list(texts)
        none = np.zeros((len(queries), 0), dtype=np.float32)  # an expert without BM25 gets no lexical votes
        scores = [
            view.search_lexical(queries, depth, shared_idf=shared_idf)[0] if view.has_lexical else none
            for view in views
        ]
        votes += expert_list_votes(scores, depth=depth, rule=rule, kind="lexical")
    return votes
