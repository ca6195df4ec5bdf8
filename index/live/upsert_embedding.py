"""An upsert's documents checked and embedded, before the writer lock is taken.

Embedding is the slow part of a write, so it happens outside the lock: writers
only queue behind each other for the commit and the swap. Long documents
follow the main segment's recorded policy (``index.json``'s ``chunking``; see
:mod:`index.long_documents`): under ``chunk`` each passage is split with the
collection's ``split`` function into one vector and span per window; under
``error`` an over-long document fails the whole upsert with
:class:`~index.errors.LongDocumentError`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from index.build.embedding import EmbedFn, checked_embed
from index.corpus import Document
from index.errors import CorpusError, InvalidParameterError, LongDocumentError
from index.live.log import metadata_json
from index.long_documents import SplitFn, plan_chunks, too_long_message
from index.store.collection_info import IndexInfo

__all__ = ["check_documents", "embed_documents"]


def check_documents(docs: Sequence[Document]) -> None:
    """Refuse a batch unless it is Documents with unique, non-empty ids, some text and JSON-serialisable metadata."""
    seen: set[str] = set()
    for doc in docs:
        if not isinstance(doc, Document):
            raise CorpusError(f"upsert takes Document objects, got {type(doc).__name__}")
        if not isinstance(doc.id, str) or not doc.id:
            raise CorpusError(f"document ids must be non-empty strings, got {doc.id!r}")
        if doc.id in seen:
            raise CorpusError(f"document id {doc.id!r} appears twice in one upsert batch")
        if not doc.passage().strip():
            raise CorpusError(f"document {doc.id!r} has neither title nor text")
        metadata_json(doc)
        seen.add(doc.id)


def embed_documents(
    docs: list[Document], info: IndexInfo, embed: EmbedFn, split: SplitFn | None
) -> list[tuple[np.ndarray, tuple[tuple[int, int], ...] | None]]:
    """Per document, its (c, dim) float32 vectors and the spans of its c windows (None for one window), as logged."""
    chunking = info.chunking
    if chunking is not None and chunking.splits and split is None:
        raise InvalidParameterError(
            f"this collection's long-document policy is {chunking.policy!r}, but the live collection was opened "
            "without a split function; open it with split=experts.make_split_fn(encoder)"
        )
    spans, refused = plan_chunks(docs, chunking, split)
    if refused:
        assert chunking is not None  # only a long-document policy refuses documents
        position, tokens = refused[0]
        doc_id = docs[position].id
        raise LongDocumentError(too_long_message(doc_id, tokens, chunking), doc_id=doc_id, tokens=tokens)
    texts = [doc.passage()[a:b] for doc, windows in zip(docs, spans, strict=True) for a, b in windows]
    vectors = checked_embed(embed, texts, info.dim)
    ends = np.cumsum([len(windows) for windows in spans])
    per_doc = [
        (vectors[end - len(windows) : end], tuple(windows) if len(windows) > 1 else None)
        for end, windows in zip(ends.tolist(), spans, strict=True)
    ]
    return per_doc
