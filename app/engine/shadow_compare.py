"""What a shadow does with one query: the candidate searched as it would serve it, and the two top lists compared.

:mod:`app.engine.shadow` runs the shadows; the batch that answered hands it :class:`ShadowQuery` records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from app.engine.loading import LoadedExpert
from app.engine.retrieval import Retrieval, RetrievalOptions, check_lexical, expert_retrieval, search_collection
from experts import Encoder
from index import FilterExpr, LiveView, NoLexicalIndexError

#: How many of each version's hits are compared.
SHADOW_DEPTH = 10


@dataclass(frozen=True)
class ShadowQuery:
    """A query the serving version of ``expert`` answered, and how: what the candidate is asked the same way."""

    expert: str
    text: str
    depth: int
    options: RetrievalOptions | None
    filter: FilterExpr | None
    use_adapter: bool
    #: The serving version's top ids (at most :data:`SHADOW_DEPTH`), by document id.
    served: tuple[str, ...]


@dataclass(frozen=True)
class Comparison:
    """Two top lists of one query compared: overlap in [0, 1], whether they differ, how far shared ids moved."""

    overlap: float
    differs: bool
    top1_differs: bool
    displacement: float


def compare_top(served: Sequence[str], candidate: Sequence[str], *, depth: int = SHADOW_DEPTH) -> Comparison:
    """The top ``depth`` ids of both lists: |A∩B| / ``depth``, or by |A∪B| when fewer hits; 1.0 when both are empty.

    ``differs``: the lists are not identical (ids or order); ``displacement``: the mean rank distance of the
    ids both hold (0 when none is shared).

    >>> compare_top(["a", "b", "c"], ["b", "a", "d"], depth=3)
    Comparison(overlap=0.6666666666666666, differs=True, top1_differs=True, displacement=1.0)
    """
    a, b = list(served[:depth]), list(candidate[:depth])
    union = set(a) | set(b)
    shared = set(a) & set(b)
    overlap = 1.0 if not union else len(shared) / min(depth, len(union))
    moved = [abs(a.index(doc) - b.index(doc)) for doc in shared]
    return Comparison(overlap, a != b, a[:1] != b[:1], sum(moved) / len(moved) if moved else 0.0)


def search_candidate(
    encoder: Encoder, candidate: LoadedExpert, queries: Sequence[ShadowQuery], *, default: Retrieval, max_length: int
) -> list[list[str] | None]:
    """The candidate's top ids for each query (None: it cannot search it that way, e.g. no BM25 index).

    Searched as the candidate would serve the request: its adapter (or base vectors where the serving pass
    used them), its manifest's defaults under the request's options, the request's filter on its documents.
    """
    view = candidate.view()
    asks: list[Retrieval | None] = [_retrieval(candidate, view, query.options, default) for query in queries]
    rows = [i for i, ask in enumerate(asks) if ask is not None]
    out: list[list[str] | None] = [None] * len(queries)
    if not rows:
        return out
    texts = [queries[i].text for i in rows]
    vectors = np.zeros((len(rows), encoder.dim), dtype=np.float32)
    need = [j for j, i in enumerate(rows) if asks[i].needs_vector]  # type: ignore[union-attr]
    for use_adapter in (True, False):
        part = [j for j in need if queries[rows[j]].use_adapter is use_adapter]
        if part:
            adapter = candidate.adapter if use_adapter else None
            vectors[part] = encoder.embed([texts[j] for j in part], expert=adapter, max_length=max_length, bulk=True)
    allowed: dict[int, np.ndarray | None] = {}
    for i in rows:
        expression = queries[i].filter
        if id(expression) not in allowed:
            allowed[id(expression)] = None if expression is None else view.select(expression, check=False)
    wanted = [(queries[i].depth, asks[i], allowed[id(queries[i].filter)]) for i in rows]
    found = search_collection(view, texts, vectors, wanted)  # type: ignore[arg-type]
    for i, hits in zip(rows, found, strict=True):
        out[i] = [hit.id for hit in hits[:SHADOW_DEPTH]]
    return out


def _retrieval(
    candidate: LoadedExpert, view: LiveView, options: RetrievalOptions | None, default: Retrieval
) -> Retrieval | None:
    """The request's options over the candidate's own default, as a batch would choose them; None where refused."""
    own = expert_retrieval(default, candidate.manifest.retrieval)
    if options is None:
        return replace(own, mode="dense") if own.needs_lexical and not view.has_lexical else own
    ask = options.over(own)
    try:
        check_lexical(candidate.name, view, ask)
    except NoLexicalIndexError:
        return None
    return ask
