"""Searching one expert's collection for a group of queries: dense, lexical (BM25) or hybrid.

The engine routes; this module answers "these queries, in this collection".
Each query brings its own ``k`` and :class:`Retrieval`, yet the group costs
one dense search (rows that need vectors), one lexical search (rows that need
BM25) and one document fetch, whatever the mix of modes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from experts import RetrievalSection
from index import (
    FUSION_METHODS,
    Collection,
    FusionMethod,
    LiveView,
    NoLexicalIndexError,
    fuse_dense_lexical,
    static_view,
)

SearchMode = Literal["dense", "lexical", "hybrid"]
SEARCH_MODES: tuple[SearchMode, ...] = ("dense", "lexical", "hybrid")


@dataclass(frozen=True)
class Retrieval:
    """How a query is searched inside an expert.

    ``weight`` is the dense share of a ``weighted`` fusion; ``candidates`` is
    how many each side contributes to a hybrid fusion (more than ``k``: a
    document ranked 150th by BM25 and 3rd by the dense model belongs in the top 10).
    """

    mode: SearchMode = "dense"
    fusion: FusionMethod = "weighted"
    weight: float = 0.5
    candidates: int = 200

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ValueError(f"Invalid mode {self.mode!r}. Valid modes are: {', '.join(SEARCH_MODES)}")
        if self.fusion not in FUSION_METHODS:
            raise ValueError(f"Invalid fusion {self.fusion!r}. Valid fusions are: {', '.join(FUSION_METHODS)}")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"weight must be between 0 and 1, got {self.weight}")
        if self.candidates < 1:
            raise ValueError(f"candidates must be >= 1, got {self.candidates}")

    @property
    def needs_vector(self) -> bool:
        return self.mode != "lexical"

    @property
    def needs_lexical(self) -> bool:
        return self.mode != "dense"

    @property
    def dense_share(self) -> float:
        """How much of a hit's score comes from the dense side: 1 dense, 0 lexical, the weight (rrf: 0.5) hybrid."""
        if self.mode != "hybrid":
            return 1.0 if self.mode == "dense" else 0.0
        return self.weight if self.fusion == "weighted" else 0.5

    def depth(self, k: int) -> int:
        """How deep each side is searched for ``k`` hits."""
        return max(k, self.candidates) if self.mode == "hybrid" else k


@dataclass(frozen=True)
class RetrievalOptions:
    """The retrieval fields a request (or an expert's manifest) sets; None leaves the layer below in force.

    Layers, most specific last: the service's settings, the expert's manifest
    (its tuned fusion weight, its default mode), the request. Keeping the
    request's choices partial is what lets a request say ``mode: hybrid``
    and still get each expert's own tuned weight.
    """

    mode: SearchMode | None = None
    fusion: FusionMethod | None = None
    weight: float | None = None

    def __post_init__(self) -> None:
        Retrieval(
            mode=self.mode or "dense",
            fusion=self.fusion or "weighted",
            weight=0.5 if self.weight is None else self.weight,
        )

    def over(self, base: Retrieval) -> Retrieval:
        """``base`` with the fields set here replaced."""
        return replace(
            base,
            mode=self.mode or base.mode,
            fusion=self.fusion or base.fusion,
            weight=base.weight if self.weight is None else self.weight,
        )


def requested_retrieval(
    *, mode: str | None = None, fusion: str | None = None, weight: float | None = None
) -> RetrievalOptions | None:
    """A caller's retrieval options; None when it set none (every expert's default applies)."""
    if mode is None and fusion is None and weight is None:
        return None
    return RetrievalOptions(mode=mode, fusion=fusion, weight=weight)  # type: ignore[arg-type]


def expert_retrieval(default: Retrieval, section: RetrievalSection | None) -> Retrieval:
    """The settings' retrieval with an expert's manifest on top: its tuned fusion and weight, its mode if it sets one."""
    if section is None:
        return default
    return RetrievalOptions(mode=section.mode, fusion=section.fusion, weight=section.weight).over(default)


@dataclass(frozen=True)
class ExpertHit:
    """A hit and the expert (collection) it came from: ids are unique only within a collection.

    ``score`` ranks the list (cosine, BM25, or the fused score); ``dense_score``
    and ``lexical_score`` are the raw scores behind it, None where that side did
    not retrieve the document (or did not run). After a rerank the list is in
    ``rerank_score`` order and ``score`` keeps the retrieval score.
    """

    expert: str
    id: str
    score: float
    title: str
    text: str
    metadata: dict[str, object] = field(default_factory=dict, hash=False)
    dense_score: float | None = None
    lexical_score: float | None = None
    #: Character offsets in ``text`` of the passage that matched, where the document was split into chunks.
    span: tuple[int, int] | None = None
    #: The cross-encoder's relevance in [0, 1] when the search was reranked (:mod:`app.engine.reranking`).
    rerank_score: float | None = None


def check_lexical(name: str, view: LiveView | Collection, retrieval: Retrieval) -> None:
    """Refuse, with the way out, a lexical or hybrid search of a collection that has no BM25 index."""
    if retrieval.needs_lexical and not view.has_lexical:
        raise NoLexicalIndexError(
            f"expert {name!r} has no lexical index, so mode {retrieval.mode!r} cannot search it: "
            "rebuild its index with `rr index` (it builds one by default) or search with mode 'dense'"
        )


#: What one row asks of a collection: ``k``, how to search, and the row ids a filter allows (None: all).
Ask = tuple[int, Retrieval] | tuple[int, Retrieval, np.ndarray | None]


def search_collection(
    view: LiveView | Collection, texts: Sequence[str], vectors: np.ndarray, asks: Sequence[Ask], *, expert: str = ""
) -> list[list[ExpertHit]]:
    """Row ``i`` (``texts[i]``, ``vectors[i]``) asks for ``asks[i] = (k, retrieval[, allowed])``; one hit list per row.

    ``view`` is the live view a search took (a plain published ``Collection``
    is searched as a view without writes). Rows that share one ``allowed``
    array (one request's filter) share one dense and one lexical search; a
    filter is applied inside both searches, so a row gets ``k`` hits whenever
    ``k`` allowed documents exist. The hits name ``expert`` as their collection.
    """
    if isinstance(view, Collection):
        view = static_view(view)
    allowed_of = [ask[2] if len(ask) > 2 else None for ask in asks]
    groups: dict[int, list[int]] = {}
    for i, allowed in enumerate(allowed_of):
        groups.setdefault(id(allowed), []).append(i)
    dense: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    lexical: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for members in groups.values():
        allowed = allowed_of[members[0]]
        if allowed is not None and not len(allowed):
            continue  # nothing matches the filter: no search at all, the rows get no hits
        dense_rows = [i for i in members if asks[i][1].needs_vector]
        lexical_rows = [i for i in members if asks[i][1].needs_lexical]
        # The lambdas run inside _search, within this iteration: binding `allowed` late is safe.
        dense |= _search(
            dense_rows,
            asks,
            lambda rows, depth: view.search_dense(vectors[rows], depth, allowed=allowed),  # noqa: B023
        )
        lexical |= _search(
            lexical_rows,
            asks,
            lambda rows, depth: view.search_lexical([texts[i] for i in rows], depth, allowed=allowed),  # noqa: B023
        )
    width = max(ask[0] for ask in asks) if asks else 0
    ids = np.full((len(asks), width), -1, dtype=np.int64)
    scores = np.full((len(asks), width), -np.inf, dtype=np.float32)
    raw: list[tuple[dict[int, float], dict[int, float]]] = []
    for i, ask in enumerate(asks):
        k, retrieval = ask[0], ask[1]
        empty = _nothing(retrieval.depth(k))
        if retrieval.mode == "hybrid":
            fused = fuse_dense_lexical(
                dense.get(i, empty), lexical.get(i, empty), k=k, method=retrieval.fusion, weight=retrieval.weight
            )
            ids[i, :k], scores[i, :k] = fused.ids[0], fused.scores[0]
        else:
            found_scores, found_ids = (dense if retrieval.mode == "dense" else lexical).get(i, empty)
            ids[i, :k], scores[i, :k] = found_ids[0, :k], found_scores[0, :k]
        raw.append((_by_row(dense.get(i)), _by_row(lexical.get(i))))
    # The query vectors let a hit on a document split into chunks say which chunk matched (its span);
    # a lexical-only row has no vector (its row is zeros), so its hits carry no span.
    with_vectors = any(ask[1].needs_vector for ask in asks)
    hits = view.hits(scores, ids, queries=vectors if with_vectors else None)
    return [
        [
            ExpertHit(
                expert,
                hit.id,
                hit.score,
                hit.title,
                hit.text,
                hit.metadata,
                dense_of.get(hit.row),
                lexical_of.get(hit.row),
                hit.span if ask[1].needs_vector else None,
            )
            for hit in row_hits
        ]
        for row_hits, (dense_of, lexical_of), ask in zip(hits, raw, asks, strict=True)
    ]


def _nothing(depth: int) -> tuple[np.ndarray, np.ndarray]:
    """A (1, depth) result without hits, for a row whose filter matched nothing."""
    return np.full((1, depth), -np.inf, dtype=np.float32), np.full((1, depth), -1, dtype=np.int64)


def _search(rows, asks, run) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """One search for ``rows`` at the deepest depth any of them needs; row -> its own (1, depth) scores and ids.

    Each row is cut back to its own depth, so a query's fusion never depends on
    which other requests shared its micro-batch.
    """
    if not rows:
        return {}
    depths = {i: asks[i][1].depth(asks[i][0]) for i in rows}
    scores, ids = run(rows, max(depths.values()))
    return {row: (scores[j : j + 1, : depths[row]], ids[j : j + 1, : depths[row]]) for j, row in enumerate(rows)}


def _by_row(found: tuple[np.ndarray, np.ndarray] | None) -> dict[int, float]:
    if found is None:
        return {}
    scores, ids = found
    return {int(r): float(s) for r, s in zip(ids[0], scores[0]) if r >= 0 and np.isfinite(s)}
