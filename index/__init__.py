"""Dense and lexical (BM25) indexes, the document store and the batch indexing job.

Works on numpy arrays and text only: nothing here imports torch or the other
packages of the service. Import from ``index``, not from its modules::

    from index import Collection, build_index
"""

from __future__ import annotations

from index.analysis import Analyzer, LexicalMethod, LexicalSettings
from index.collection import DENSE_FILE, DOCSTORE_FILE, INFO_FILE, Collection, Hit, IndexInfo, read_info, write_info
from index.corpus import CorpusProblem, Document, corpus_fingerprint, read_corpus
from index.dense import DenseIndex, SearchParams
from index.docstore import DocStore
from index.errors import (
    BuildInProgressError,
    CorpusError,
    DimensionMismatchError,
    IndexFileError,
    IndexStoreError,
    InvalidParameterError,
    NoLexicalIndexError,
    OutputExistsError,
    ReadOnlyError,
)
from index.fusion import reciprocal_rank_fusion
from index.hybrid import FUSION_METHODS, Fused, FusionMethod, fuse_dense_lexical
from index.indexing import BuildReport, EmbedFn, build_index
from index.lexical import LEXICAL_FILES, LexicalIndex, lexical_files

__all__ = [
    "Analyzer",
    "BuildInProgressError",
    "BuildReport",
    "Collection",
    "CorpusError",
    "CorpusProblem",
    "DENSE_FILE",
    "DOCSTORE_FILE",
    "DenseIndex",
    "DimensionMismatchError",
    "DocStore",
    "Document",
    "EmbedFn",
    "FUSION_METHODS",
    "Fused",
    "FusionMethod",
    "Hit",
    "INFO_FILE",
    "IndexFileError",
    "IndexInfo",
    "IndexStoreError",
    "InvalidParameterError",
    "LEXICAL_FILES",
    "LexicalIndex",
    "LexicalMethod",
    "LexicalSettings",
    "NoLexicalIndexError",
    "OutputExistsError",
    "ReadOnlyError",
    "SearchParams",
    "build_index",
    "corpus_fingerprint",
    "fuse_dense_lexical",
    "lexical_files",
    "read_corpus",
    "read_info",
    "reciprocal_rank_fusion",
    "write_info",
]
