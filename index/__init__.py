"""Dense and lexical (BM25) indexes, the document store and the batch indexing job.

Works on numpy arrays and text only: nothing here imports torch or the other
packages of the service. Import from ``index``, not from its modules::

    from index import Collection, build_index
"""

from __future__ import annotations

from index.build.embedding import EmbedFn
from index.build.indexing import BuildReport, build_index
from index.corpus import (
    CorpusProblem,
    CorpusScan,
    Document,
    corpus_fingerprint,
    count_lines,
    read_corpus,
    scan_corpus,
)
from index.errors import (
    BuildInProgressError,
    CorpusError,
    DimensionMismatchError,
    IndexFileError,
    IndexStoreError,
    InvalidFilterError,
    InvalidParameterError,
    LogLockedError,
    LongDocumentError,
    NoLexicalIndexError,
    OutputExistsError,
    ReadOnlyError,
    UnknownFieldError,
)
from index.fusion import FUSION_METHODS, Fused, FusionMethod, fuse_dense_lexical, reciprocal_rank_fusion
from index.live.corpus_union import CorpusUnion
from index.live.live_collection import LiveCollection
from index.live.merge import MergePolicy
from index.live.reports import DeleteReport, LiveStats, MergeReport, UpsertReport
from index.live.view import LiveView, static_view
from index.live.writer_lock import WriterLock
from index.long_documents import LONG_DOCUMENT_POLICIES, ChunkSettings, LongDocuments, SplitFn
from index.store.analysis import Analyzer, LexicalMethod, LexicalSettings
from index.store.chunk_map import CHUNKS_FILE, ChunkMap
from index.store.chunked_dense import ChunkedDense
from index.store.collection import DENSE_FILE, DOCSTORE_FILE, Collection, Hit
from index.store.collection_info import INFO_FILE, IndexInfo, read_info, write_info
from index.store.dense import DenseIndex, set_search_threads
from index.store.dense_filtering import EXACT_FILTER_LIMIT
from index.store.docstore import DocStore
from index.store.filter_sql import compile_filter
from index.store.filter_tree import FilterExpr, filter_fields
from index.store.filters import Filter, filter_to_json, parse_filter
from index.store.lexical import LEXICAL_FILES, LexicalIndex, lexical_files
from index.store.metadata_fields import FieldInfo, check_fields
from index.store.search_params import SearchParams
from index.store.shared_idf import SharedIdf

__all__ = [
    "Analyzer",
    "BuildInProgressError",
    "BuildReport",
    "CHUNKS_FILE",
    "ChunkMap",
    "ChunkSettings",
    "ChunkedDense",
    "Collection",
    "CorpusError",
    "CorpusProblem",
    "CorpusScan",
    "CorpusUnion",
    "DENSE_FILE",
    "DOCSTORE_FILE",
    "DeleteReport",
    "DenseIndex",
    "DimensionMismatchError",
    "DocStore",
    "Document",
    "EXACT_FILTER_LIMIT",
    "EmbedFn",
    "FUSION_METHODS",
    "FieldInfo",
    "Filter",
    "FilterExpr",
    "Fused",
    "FusionMethod",
    "Hit",
    "INFO_FILE",
    "IndexFileError",
    "IndexInfo",
    "IndexStoreError",
    "InvalidFilterError",
    "InvalidParameterError",
    "LEXICAL_FILES",
    "LONG_DOCUMENT_POLICIES",
    "LexicalIndex",
    "LexicalMethod",
    "LexicalSettings",
    "LiveCollection",
    "LiveStats",
    "LiveView",
    "LogLockedError",
    "LongDocumentError",
    "LongDocuments",
    "MergePolicy",
    "MergeReport",
    "NoLexicalIndexError",
    "OutputExistsError",
    "ReadOnlyError",
    "SearchParams",
    "SharedIdf",
    "SplitFn",
    "UnknownFieldError",
    "UpsertReport",
    "WriterLock",
    "build_index",
    "check_fields",
    "compile_filter",
    "corpus_fingerprint",
    "count_lines",
    "filter_fields",
    "filter_to_json",
    "fuse_dense_lexical",
    "lexical_files",
    "parse_filter",
    "read_corpus",
    "read_info",
    "reciprocal_rank_fusion",
    "scan_corpus",
    "set_search_threads",
    "static_view",
    "write_info",
]
