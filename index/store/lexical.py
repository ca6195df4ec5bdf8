"""The lexical index: BM25 over a collection's documents (bm25s), keyed by docstore row ids.

Dense search misses exact terms (part numbers, rare technical words) that BM25
finds; on two of our five collections plain BM25 beats the base dense model.
The scoring is bm25s's (it precomputes every document's BM25 weight per term
into a sparse matrix, so a query is a few column sums); what is ours is the
analyzer, the id mapping and the file checks.

Files, flat beside ``dense.faiss`` (fixed names, passed to bm25s's own save/load)::

    lexical-params.json        bm25s parameters (k1, b, method, num_docs, bm25s version)
    lexical-vocab.json         stem -> column of the score matrix
    lexical-data.npy           the score matrix in CSC form: one column per stem ...
    lexical-indices.npy        ... the bm25s document number of each stored score ...
    lexical-indptr.npy         ... where each stem's column starts
    lexical-nonoccurrence.npy  BM25L / BM25+ only: the score of a term a document lacks
    lexical-row-ids.npy        (n,) int64: docstore row id of bm25s document 0..n-1

bm25s numbers documents 0..n-1; the docstore's row ids have gaps (an upsert
gets a new id), so ``lexical-row-ids.npy`` maps bm25s numbers back to the row
ids that dense search returns, and both sides speak the same keys.

Documents and queries go through one :class:`Analyzer` (lowercase, bm25s's
token pattern, stopwords, Snowball stem), so a query term meets the same stem
it was indexed under; its settings live in ``index.json`` (see
:class:`LexicalSettings`), from where a loader rebuilds the same analyzer.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import bm25s
import numpy as np
from bm25s.tokenization import Tokenized

from index.atomic import atomic_write, fsync_dir, fsync_file
from index.errors import IndexFileError, InvalidParameterError
from index.store.analysis import METHODS_WITH_NONOCCURRENCE, Analyzer, LexicalSettings
from index.store.shared_idf import SharedIdf, shared_idf_top_k

__all__ = ["LEXICAL_FILES", "LexicalIndex", "lexical_files"]

logger = logging.getLogger(__name__)
# bm25s pins its logger at DEBUG on import, which prints a line per build whatever
# the application configured; NOTSET hands the decision back to the root logger.
logging.getLogger("bm25s").setLevel(logging.NOTSET)

PARAMS_FILE = "lexical-params.json"
VOCAB_FILE = "lexical-vocab.json"
DATA_FILE = "lexical-data.npy"
INDICES_FILE = "lexical-indices.npy"
INDPTR_FILE = "lexical-indptr.npy"
NONOCCURRENCE_FILE = "lexical-nonoccurrence.npy"
ROW_IDS_FILE = "lexical-row-ids.npy"
LEXICAL_FILES = (PARAMS_FILE, VOCAB_FILE, DATA_FILE, INDICES_FILE, INDPTR_FILE, ROW_IDS_FILE)
"""The files of every lexical index; BM25L and BM25+ add ``lexical-nonoccurrence.npy``."""

# bm25s's save/load keyword -> our file name.
_BM25S_NAMES = {
    "params_name": PARAMS_FILE,
    "vocab_name": VOCAB_FILE,
    "data_name": DATA_FILE,
    "indices_name": INDICES_FILE,
    "indptr_name": INDPTR_FILE,
    "nnoc_name": NONOCCURRENCE_FILE,
}


def lexical_files(method: str) -> tuple[str, ...]:
    """The file names a lexical index built with ``method`` consists of."""
    return LEXICAL_FILES + ((NONOCCURRENCE_FILE,) if method in METHODS_WITH_NONOCCURRENCE else ())


class _PackedTokenIds(Sequence[list[int]]):
    """Every document's token ids in one int32 array: 4 bytes a token, not ~36 as lists of ints.

    bm25s only iterates its corpus (and takes its length), so it gets each
    document's list when it reaches it and drops it afterwards.
    """

    def __init__(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        self._flat = flat
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> list[int]:  # type: ignore[override]
        return self._flat[self._offsets[i] : self._offsets[i + 1]].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for start, end in pairwise(self._offsets.tolist()):
            yield self._flat[start:end].tolist()


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"lexical {what} file {str(path)!r} is not valid JSON: {exc}") from exc


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a ``.npy`` file, checking its size so that a truncated file is caught without reading it."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read_header:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = read_header[version](handle)
            offset = handle.tell()
    except (OSError, ValueError) as exc:
        raise IndexFileError(f"lexical index file {str(path)!r} is not a valid .npy array: {exc}") from exc
    expected = offset + math.prod(shape) * dtype.itemsize
    if dtype.hasobject or fortran or path.stat().st_size != expected:
        raise IndexFileError(
            f"lexical index file {str(path)!r} is truncated or corrupt: {path.stat().st_size} bytes, "
            f"its header ({dtype}, shape {shape}) needs {expected}"
        )
    return shape, dtype


class LexicalIndex:
    """BM25 over a collection: :meth:`build` from documents, :meth:`save` / :meth:`load`, :meth:`search`.

    >>> lexical = LexicalIndex.build([(row_ids, passages)], LexicalSettings())  # doctest: +SKIP
    >>> scores, ids = lexical.search(["wing flutter"], 10)   # (1, 10) float32, (1, 10) int64 row ids
    """

    def __init__(self, retriever: bm25s.BM25, row_ids: np.ndarray, settings: LexicalSettings) -> None:
        """Private: use :meth:`build` or :meth:`load`."""
        self._retriever = retriever
        self._row_ids = row_ids
        self._settings = settings
        self._analyzer = Analyzer(settings)
        self._frequencies: dict[str, int] | None = None

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        chunks: Iterable[tuple[np.ndarray, Sequence[str] | Sequence[list[str]]]],
        settings: LexicalSettings,
        *,
        analyzed: bool = False,
    ) -> LexicalIndex:
        """Index ``(row ids (n,) int64, passages)`` chunks; row ids ascending across chunks.

        Each chunk is analysed and reduced to int32 token ids before the next is
        read, so memory follows the corpus's token count, not its raw text.
        ``analyzed``: the chunks hold each passage's stems (from this ``settings``'s
        :class:`Analyzer`) instead of its text; the live delta segment keeps them,
        so rebuilding its small index does not analyse every document again.
        """
        analyzer = Analyzer(settings)
        vocab: dict[str, int] = {}
        parts: list[np.ndarray] = []
        lengths: list[int] = []
        id_parts: list[np.ndarray] = []
        for row_ids, passages in chunks:
            row_ids = np.asarray(row_ids, dtype=np.int64)
            if row_ids.shape != (len(passages),):
                raise InvalidParameterError(
                    f"a chunk has {len(passages)} passages but row ids of shape {row_ids.shape}"
                )
            chunk: list[int] = []  # Python ints for one chunk only
            for passage in passages:
                terms = passage if analyzed else analyzer(cast(str, passage))  # text unless `analyzed`
                ids = [vocab.setdefault(stem, len(vocab)) for stem in terms]
                chunk.extend(ids)
                lengths.append(len(ids))
            parts.append(np.asarray(chunk, dtype=np.int32))
            id_parts.append(row_ids)
        row_ids = np.concatenate(id_parts) if id_parts else np.zeros(0, dtype=np.int64)
        if len(row_ids) == 0:
            raise InvalidParameterError("a lexical index needs at least one document")
        if row_ids[0] < 0 or (np.diff(row_ids) <= 0).any():
            raise InvalidParameterError("row ids must be non-negative and strictly ascending across chunks")
        flat = np.concatenate(parts)
        del parts
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        retriever = bm25s.BM25(k1=settings.k1, b=settings.b, method=settings.method)
        with np.errstate(divide="ignore", invalid="ignore"):  # a corpus of stopwords only: average length 0
            retriever.index(
                Tokenized(ids=_PackedTokenIds(flat, offsets), vocab=vocab),
                create_empty_token=False,
                show_progress=False,
            )
        logger.debug("lexical index: %d documents, %d tokens, %d distinct stems", len(row_ids), len(flat), len(vocab))
        return cls(retriever, row_ids, settings)

    # ------------------------------------------------------------------ properties
    @property
    def settings(self) -> LexicalSettings:
        return self._settings

    @property
    def row_ids(self) -> np.ndarray:
        """(n,) int64, ascending: the docstore row id of each indexed document."""
        return self._row_ids

    @property
    def files(self) -> tuple[str, ...]:
        return lexical_files(self._settings.method)

    @property
    def vocabulary_size(self) -> int:
        return len(self._retriever.vocab_dict)

    def __len__(self) -> int:
        return len(self._row_ids)

    def document_frequencies(self) -> tuple[int, dict[str, int]]:
        """(documents, stem -> documents holding it): this index's share of a :class:`SharedIdf`."""
        if self._frequencies is None:  # computed once; a benign race computes the same dict twice
            indptr = np.asarray(self._retriever.scores["indptr"])
            counts = np.diff(indptr)
            self._frequencies = {
                stem: int(counts[column]) for stem, column in self._retriever.vocab_dict.items() if column < len(counts)
            }
        return len(self._row_ids), self._frequencies

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> tuple[str, ...]:
        """Write the index files into ``directory`` (which must exist); returns their names.

        bm25s writes each file under a temporary name; each is then fsynced and
        renamed, and the directory fsynced, so a reader never sees a torn file.
        The indexing job saves into its staging directory, published whole by
        one rename.
        """
        directory = Path(directory)
        temporary = {key: f".tmp-{os.getpid()}-{name}" for key, name in _BM25S_NAMES.items()}
        try:
            self._retriever.save(directory, show_progress=False, **temporary)
            for key, name in _BM25S_NAMES.items():
                if name in self.files:
                    fsync_file(directory / temporary[key])
                    os.replace(directory / temporary[key], directory / name)
        finally:
            for tmp in temporary.values():
                (directory / tmp).unlink(missing_ok=True)

        def write_row_ids(tmp: Path) -> None:
            with tmp.open("wb") as handle:  # a file object: np.save would append ".npy" to a name
                np.save(handle, self._row_ids)

        atomic_write(directory / ROW_IDS_FILE, write_row_ids)
        fsync_dir(directory)
        return self.files

    @classmethod
    def load(cls, directory: Path, settings: LexicalSettings, *, mmap: bool = True) -> LexicalIndex:
        """Open the lexical index in ``directory``, built with ``settings`` (from ``index.json``).

        ``mmap=True`` maps the score matrix instead of reading it: its pages are
        shared by every process serving the same files. Checks, each failure an
        :class:`IndexFileError` naming the file: every file exists, the JSON
        parses, the arrays' sizes match their headers, the parameters match
        ``settings``, and the array shapes agree with each other.
        """
        directory = Path(directory)
        for name in lexical_files(settings.method):
            if not (directory / name).is_file():
                raise IndexFileError(f"lexical index file {str(directory / name)!r} does not exist")
        params = _read_json(directory / PARAMS_FILE, "parameters")
        expected = {"k1": settings.k1, "b": settings.b, "method": settings.method}
        found = {key: params.get(key) for key in expected} if isinstance(params, dict) else {}
        if found != expected or not isinstance(params.get("num_docs"), int):
            raise IndexFileError(
                f"lexical parameters file {str(directory / PARAMS_FILE)!r} records {found or params!r} "
                f"and num_docs {params.get('num_docs') if isinstance(params, dict) else None!r}; "
                f"index.json says {expected}"
            )
        vocab = _read_json(directory / VOCAB_FILE, "vocabulary")
        valid = isinstance(vocab, dict) and all(type(column) is int for column in vocab.values())
        columns = set(vocab.values()) if valid else set()
        if not valid or columns != set(range(len(vocab))):  # else a query could index past the score matrix
            raise IndexFileError(
                f"lexical vocabulary file {str(directory / VOCAB_FILE)!r} must map each stem to a distinct "
                "column 0, 1, ... of the score matrix"
            )
        arrays = [name for name in lexical_files(settings.method) if name.endswith(".npy")]
        shapes = {name: _npy_header(directory / name)[0] for name in arrays}
        n, stems = params["num_docs"], len(vocab)
        wanted = {
            DATA_FILE: shapes[INDICES_FILE],
            INDPTR_FILE: (stems + 1,),
            ROW_IDS_FILE: (n,),
            NONOCCURRENCE_FILE: (stems,),
        }
        for name, shape in wanted.items():
            if name in shapes and shapes[name] != shape:
                raise IndexFileError(
                    f"lexical index file {str(directory / name)!r} has shape {shapes[name]}, expected {shape} "
                    f"({n} documents, {stems} stems in {VOCAB_FILE})"
                )
        try:
            retriever = bm25s.BM25.load(directory, mmap=mmap, load_vocab=False, show_progress=False, **_BM25S_NAMES)
        except Exception as exc:  # bm25s raises what numpy and json raise; the checks above name the usual culprits
            raise IndexFileError(f"lexical index in {str(directory)!r} could not be loaded by bm25s: {exc}") from exc
        retriever.vocab_dict = vocab  # read above already; bm25s.load would parse it a second time
        retriever.unique_token_ids_set = columns
        row_ids = np.load(directory / ROW_IDS_FILE, allow_pickle=False)
        if row_ids.dtype != np.int64 or (n and (row_ids[0] < 0 or (np.diff(row_ids) <= 0).any())):
            raise IndexFileError(
                f"lexical index file {str(directory / ROW_IDS_FILE)!r} must hold ascending non-negative int64 row ids"
            )
        return cls(retriever, row_ids, settings)

    # ------------------------------------------------------------------ search
    def _mask(self, allowed: Iterable[int] | np.ndarray) -> np.ndarray:
        """bm25s weight mask (n,) float32: 1 for the allowed row ids, 0 for the rest."""
        wanted = np.asarray(list(allowed) if not isinstance(allowed, np.ndarray) else allowed)
        if wanted.dtype == np.bool_ or (wanted.size and not np.issubdtype(wanted.dtype, np.integer)):
            raise InvalidParameterError(f"allowed must hold integer row ids, got an array of {wanted.dtype}")
        wanted = wanted.astype(np.int64, copy=False).ravel()
        if len(wanted) > 1 and not (np.diff(wanted) > 0).all():
            # Only when needed: DocStore.select gives sorted unique ids, and np.unique (hash-based
            # in numpy 2) took 5 ms of the 8 ms a 50k-id mask cost at 100k documents.
            wanted = np.unique(wanted)
        positions = np.searchsorted(self._row_ids, wanted).clip(max=max(len(self._row_ids) - 1, 0))
        found = self._row_ids[positions] == wanted
        mask = np.zeros(len(self._row_ids), dtype=np.float32)
        mask[positions[found]] = 1.0
        return mask

    def search(
        self,
        queries: Sequence[str],
        k: int,
        *,
        allowed: Iterable[int] | np.ndarray | None = None,
        shared_idf: SharedIdf | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by BM25: (nq, k) float32 scores, (nq, k) int64 row ids, like :meth:`DenseIndex.search`.

        Only documents sharing a stem with the query are hits; the rest of a row
        is padded with id -1 and score -inf (a query of stopwords only, or of
        words the collection lacks, gets no hits). ``allowed``: row ids the
        results are restricted to (a metadata filter), applied inside bm25s as
        a weight mask; ids not in the index are ignored. ``shared_idf``: weigh
        terms by the IDF of several indexes together, so that scores compare
        across them (:mod:`index.store.shared_idf`; BM25L and BM25+ keep their
        own). Safe to call from several threads: bm25s's retrieval only reads
        the index.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k <= 0:
            raise InvalidParameterError(f"k must be a positive integer, got {k!r}")
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise InvalidParameterError("queries must be a list of strings (wrap a single query in a list)")
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        mask = None if allowed is None else self._mask(allowed)
        terms = [self._analyzer(q) for q in queries]
        rows = [i for i, row_terms in enumerate(terms) if row_terms]  # bm25s logs, then scores 0, for the others
        if not rows or self.vocabulary_size == 0 or (mask is not None and not mask.any()):
            return scores, ids  # (bm25s cannot score against an empty vocabulary at all)
        top = min(k, len(self._row_ids))
        if shared_idf is not None and self._settings.method not in METHODS_WITH_NONOCCURRENCE:
            return self._search_shared(terms, rows, top, k, shared_idf, mask)
        positions, found = self._retriever.retrieve(
            [terms[i] for i in rows], k=top, show_progress=False, n_threads=0, weight_mask=mask
        )
        hit = found > 0  # a document without any query stem scores exactly 0; sorted, so hits come first
        scores[rows, :top] = np.where(hit, found, -np.inf)
        ids[rows, :top] = np.where(hit, self._row_ids[positions], -1)
        return scores, ids

    def score_matrix(self) -> tuple[Mapping[str, int], tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(stem -> column, (data, indices, indptr)): bm25s's per-term document scores in CSC form, read-only."""
        m = self._retriever.scores
        return self._retriever.vocab_dict, (np.asarray(m["data"]), np.asarray(m["indices"]), np.asarray(m["indptr"]))

    def _search_shared(
        self, terms: list[list[str]], rows: list[int], top: int, k: int, shared: SharedIdf, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        vocab, matrix = self.score_matrix()
        stems = [[stem for stem in terms[i] if stem in vocab] for i in rows]
        found, positions = shared_idf_top_k(
            matrix,
            [[vocab[stem] for stem in row] for row in stems],
            stems,
            top,
            shared=shared,
            method=self._settings.method,
            documents=len(self._row_ids),
            mask=mask,
        )
        scores = np.full((len(terms), k), -np.inf, dtype=np.float32)
        ids = np.full((len(terms), k), -1, dtype=np.int64)
        scores[rows, :top] = found
        ids[rows, :top] = np.where(positions >= 0, self._row_ids[positions.clip(min=0)], -1)
        return scores, ids
