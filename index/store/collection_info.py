"""``index.json``: what a collection records about itself (:class:`IndexInfo`), written and read back.

Dims, counts, the factory string, provenance, the lexical and long-document
settings, and each file's size and checksum. Apart from
:mod:`index.store.collection` (a directory opened for search) because the
batch job and merges write it without opening anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from index.atomic import atomic_write
from index.errors import IndexFileError, InvalidParameterError
from index.long_documents import ChunkSettings
from index.store.analysis import LexicalSettings

__all__ = ["FORMAT_VERSION", "INFO_FILE", "IndexInfo", "file_sha256", "read_info", "write_info"]

logger = logging.getLogger(__name__)

INFO_FILE = "index.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IndexInfo:
    """What ``index.json`` records about a collection."""

    dim: int  # vector width
    factory: str  # FAISS factory string of the storage, without the IDMap2 wrapper
    count: int  # documents (= vectors)
    build_key: str  # caller's identity of what embedded the documents (model + version)
    corpus_fingerprints: tuple[str, ...]  # "sha256:<hex>" of each corpus file, in build order
    created_at: str  # ISO 8601, UTC
    file_sizes: dict[str, int] = field(default_factory=dict, hash=False)  # bytes per file name
    checksums: dict[str, str] = field(default_factory=dict, hash=False)  # "sha256:<hex>" per file name
    format_version: int = FORMAT_VERSION
    lexical: LexicalSettings | None = None  # how the BM25 index was built; None when there is none
    chunking: ChunkSettings | None = None  # the long-document policy; None: built before it existed (= truncate)
    chunks: int | None = None  # vectors in dense.faiss when chunks.npy maps them to rows; None: one per document

    @property
    def files(self) -> tuple[str, ...]:
        """The collection's data files (every file but ``index.json``), for manifests and checksums."""
        return tuple(sorted(self.file_sizes))


def file_sha256(path: Path) -> str:
    """``"sha256:<hex>"`` of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def write_info(directory: Path, info: IndexInfo) -> None:
    """Write ``index.json`` into ``directory`` atomically."""
    payload = asdict(info)
    payload["corpus_fingerprints"] = list(info.corpus_fingerprints)
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    atomic_write(Path(directory) / INFO_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _settings_section(path: Path, data: Mapping[str, Any], key: str, parse: Callable[[dict], Any]) -> Any:
    """``data[key]`` parsed by ``parse`` (None when absent or null); a malformed one names the file and the key."""
    raw = data.get(key)
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise IndexFileError(f"collection info file {str(path)!r}: {key!r} must be an object or null")
    try:
        return parse(raw)
    except (InvalidParameterError, TypeError) as exc:
        raise IndexFileError(f"collection info file {str(path)!r}: invalid {key!r} settings: {exc}") from exc


def read_info(directory: Path) -> IndexInfo:
    """Read ``index.json``; unknown keys are dropped with a warning (newer writers)."""
    path = Path(directory) / INFO_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IndexFileError(f"collection info file {str(path)!r} does not exist") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"collection info file {str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise IndexFileError(f"collection info file {str(path)!r} must hold a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(IndexInfo)}
    unknown = sorted(set(data) - known)
    if unknown:
        logger.warning("%s: ignoring unknown keys %s", path, unknown)
    integer, string = (int, "an integer"), (str, "a string")
    required = {"dim": integer, "factory": string, "count": integer, "build_key": string, "created_at": string}
    for key, (kind, described) in required.items():
        if not isinstance(data.get(key), kind) or isinstance(data.get(key), bool):
            raise IndexFileError(
                f"collection info file {str(path)!r}: {key!r} must be {described}, got {data.get(key)!r}"
            )
    fingerprints = data.get("corpus_fingerprints", [])
    if not isinstance(fingerprints, list) or not all(isinstance(f, str) for f in fingerprints):
        raise IndexFileError(f"collection info file {str(path)!r}: 'corpus_fingerprints' must be a list of strings")
    lexical = _settings_section(path, data, "lexical", LexicalSettings.from_dict)
    chunking = _settings_section(path, data, "chunking", ChunkSettings.from_dict)
    chunks = data.get("chunks")
    if chunks is not None and (not isinstance(chunks, int) or isinstance(chunks, bool) or chunks < 0):
        raise IndexFileError(f"collection info file {str(path)!r}: 'chunks' must be a non-negative integer or null")
    parsed = {"corpus_fingerprints": tuple(fingerprints), "lexical": lexical, "chunking": chunking}
    return IndexInfo(**{k: v for k, v in data.items() if k in known} | parsed)
