"""How an expert's long documents are cut into token windows: at build time, and for live upserts.

Both the batch indexing job (:mod:`app.offline.building`) and a served expert's
live collection (:mod:`app.engine.loading`) split with these, so an upsert is
windowed exactly as the generation it joins was built.
"""

from __future__ import annotations

from experts import DEFAULT_OVERLAP, Encoder, Manifest, make_split_fn
from index import ChunkSettings, IndexInfo, LongDocuments, SplitFn

__all__ = ["long_document_splitter", "recorded_splitter"]


def long_document_splitter(
    manifest: Manifest, encoder: Encoder, *, policy: LongDocuments = "chunk", overlap: int | None = None
) -> tuple[ChunkSettings, SplitFn]:
    """An expert's long-document settings and the split function that goes with them (also for live upserts).

    Windows are as long as the documents' embedding limit (the manifest's
    ``max_length``, capped by the encoder's). ``overlap`` None: 32 tokens, at
    most a quarter of a window (a short window must still move forward).
    """
    max_tokens = min(manifest.max_length, encoder.max_length)
    if overlap is None:
        overlap = min(DEFAULT_OVERLAP, max_tokens // 4)
    return ChunkSettings(policy, max_tokens, overlap), make_split_fn(encoder, max_tokens=max_tokens, overlap=overlap)


def recorded_splitter(info: IndexInfo, encoder: Encoder) -> SplitFn | None:
    """The ``split=`` a live collection over this generation needs: its recorded windows; None when it truncates.

    >>> live = LiveCollection.open(main, log, embed=embed, split=recorded_splitter(main.info, encoder))  # doctest: +SKIP
    """
    if info.chunking is None or not info.chunking.splits:
        return None
    return make_split_fn(encoder, max_tokens=info.chunking.max_tokens, overlap=info.chunking.overlap)
