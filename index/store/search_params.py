"""Per-search knobs of approximate indexes, and the FAISS parameters they become.

Apart from :mod:`index.store.dense` because both the plain search there and the
filtered search (:mod:`index.store.dense_filtering`, which widens them) read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss

from index.errors import InvalidParameterError
from index.store.faiss_storage import inner_storage

__all__ = ["SearchParams", "faiss_params"]


@dataclass(frozen=True, slots=True)
class SearchParams:
    """Per-search knobs of approximate indexes; ``None`` keeps the index's own value.

    ``nprobe``: IVF lists visited per query (recall vs speed).
    ``ef_search``: HNSW candidate list size (recall vs speed; at least ``k``).
    """

    nprobe: int | None = None
    ef_search: int | None = None


def faiss_params(index: faiss.Index, params: SearchParams, *, factory: str) -> faiss.SearchParameters | None:
    """``params`` as FAISS search parameters for ``index`` (None: the index's own); a knob its type lacks is refused."""
    if params.nprobe is None and params.ef_search is None:
        return None
    inner = inner_storage(index)
    if params.nprobe is not None:
        if not isinstance(inner, faiss.IndexIVF):
            raise InvalidParameterError(f"nprobe applies to IVF indexes; this index is {factory!r}")
        if params.ef_search is not None:
            raise InvalidParameterError("give nprobe or ef_search, not both")
        return faiss.SearchParametersIVF(nprobe=int(params.nprobe))
    if not isinstance(inner, faiss.IndexHNSW):
        raise InvalidParameterError(f"ef_search applies to HNSW indexes; this index is {factory!r}")
    assert params.ef_search is not None  # neither nprobe nor ef_search returned above
    return faiss.SearchParametersHNSW(efSearch=int(params.ef_search))
