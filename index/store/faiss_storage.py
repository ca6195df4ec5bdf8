"""What a dense index is made of, read back from the FAISS index itself.

Every :class:`~index.store.dense.DenseIndex` is ``IDMap2`` over a storage built
from a factory string, maybe behind a pre-transform (OPQ, PCA). Which storage
it is decides which search parameters apply (:mod:`index.store.search_params`),
how a filtered search runs (:mod:`index.store.dense_filtering`) and whether the
added vectors can be read back. These functions answer from the index, apart
from the wrapper because the wrapper and the filtered search both ask.
"""

from __future__ import annotations

import faiss
import numpy as np

__all__ = ["describe", "flat_vectors", "inner_storage", "is_exact_storage"]


def inner_storage(index: faiss.Index) -> faiss.Index:
    """The innermost storage index, below the IDMap2 and any pre-transform (OPQ, PCA)."""
    inner = faiss.downcast_index(index)
    while isinstance(inner, faiss.IndexIDMap2 | faiss.IndexIDMap | faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    return inner


def describe(index: faiss.Index) -> str:
    """Best-effort factory string for a loaded index whose factory was not recorded."""
    inner = inner_storage(index)
    if isinstance(inner, faiss.IndexFlat):
        return "Flat"
    if isinstance(inner, faiss.IndexHNSW):
        return f"HNSW{inner.hnsw.nb_neighbors(1)}"
    if isinstance(inner, faiss.IndexIVFPQ):
        return f"IVF{inner.nlist},PQ{inner.pq.M}x{inner.pq.nbits}"
    if isinstance(inner, faiss.IndexIVFFlat):
        return f"IVF{inner.nlist},Flat"
    if isinstance(inner, faiss.IndexPQ):
        return f"PQ{inner.pq.M}x{inner.pq.nbits}"
    return type(inner).__name__.removeprefix("Index")


def is_exact_storage(index: faiss.Index) -> bool:
    """True when the stored vectors are the ones added (Flat, HNSW over Flat), not lossy codes."""
    inner = inner_storage(index)
    if isinstance(inner, faiss.IndexHNSW):
        inner = faiss.downcast_index(inner.storage)
    top = faiss.downcast_index(index)
    wrapped = faiss.downcast_index(top.index) if isinstance(top, faiss.IndexIDMap2) else top
    return isinstance(inner, faiss.IndexFlat) and not isinstance(wrapped, faiss.IndexPreTransform)


def flat_vectors(index: faiss.Index) -> np.ndarray | None:
    """The stored vectors, (ntotal, dim) float32 by internal position, as a view (no copy); None unless Flat storage."""
    if not is_exact_storage(index):
        return None
    inner = inner_storage(index)
    flat = faiss.downcast_index(inner.storage) if isinstance(inner, faiss.IndexHNSW) else inner
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d)
