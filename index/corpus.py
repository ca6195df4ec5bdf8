"""Reading BEIR-style corpora (``corpus.jsonl`` / ``corpus.jsonl.gz``) as a stream.

A corpus is read line by line so that memory stays flat however large the file
is; a malformed line does not stop the read but comes back as a
:class:`CorpusProblem` with its 1-based line number, so the indexing job can
skip it, count it and report it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from index.errors import CorpusError

__all__ = [
    "CorpusProblem",
    "CorpusScan",
    "Document",
    "corpus_fingerprint",
    "count_lines",
    "read_corpus",
    "scan_corpus",
]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20
# Keys with a meaning of their own; every other top-level key goes into metadata.
_ID_KEYS = ("_id", "id")
_RESERVED = frozenset({"_id", "id", "title", "text", "metadata"})


@dataclass(frozen=True, slots=True)
class Document:
    """One document of a collection, as stored in the docstore.

    ``metadata`` holds everything else the corpus line carried; it does not take
    part in hashing (dicts are unhashable) but does take part in equality.
    """

    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict, hash=False)

    def passage(self) -> str:
        """The text that gets embedded: title and text joined by one space.

        An empty title is skipped so that untitled documents do not start with a
        stray space (which would change their tokenisation).

        >>> Document("d1", "Title", "Body.").passage()
        'Title Body.'
        """
        if not self.title:
            return self.text
        if not self.text:
            return self.title
        return f"{self.title} {self.text}"


@dataclass(frozen=True, slots=True)
class CorpusProblem:
    """A corpus line that could not be turned into a :class:`Document`.

    ``line`` is 1-based, as an editor shows it; ``path`` names the corpus file
    when the problem came from one.
    """

    line: int
    reason: str
    path: Path | None = None

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.path is not None else f"line {self.line}"
        return f"{where}: {self.reason}"


def _open_binary(path: Path) -> io.BufferedIOBase:
    """Open ``path`` for binary reading, gunzipping when it ends in ``.gz``."""
    if not path.exists():
        raise CorpusError(f"corpus file {str(path)!r} does not exist")
    if not path.is_file():
        raise CorpusError(f"corpus path {str(path)!r} is not a regular file")
    try:
        return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")
    except OSError as exc:
        raise CorpusError(f"cannot open corpus file {str(path)!r}: {exc}") from exc


def _parse_line(raw: bytes) -> Document | str:
    """Parse one non-blank line; return a Document or the reason it is malformed."""
    try:
        obj = json.loads(raw.rstrip())  # the newline stripped, a cut-off line says the column where it ends
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"

    key = next((k for k in _ID_KEYS if k in obj), None)
    if key is None:
        return "missing '_id'"
    doc_id = obj[key]
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str):
        return f"'{key}' must be a string or an integer, got {type(doc_id).__name__}"
    if not doc_id.strip():
        return f"empty '{key}'"

    if "text" not in obj:
        return "missing 'text'"
    text, title = obj["text"], obj.get("title", "")
    if not isinstance(text, str):
        return f"'text' must be a string, got {type(text).__name__}"
    if title is None:
        title = ""
    if not isinstance(title, str):
        return f"'title' must be a string, got {type(title).__name__}"
    if not text.strip() and not title.strip():
        return "'title' and 'text' are both empty"

    explicit = obj.get("metadata", {})
    if not isinstance(explicit, dict):
        return f"'metadata' must be an object, got {type(explicit).__name__}"
    # Extra top-level fields first, so that an explicit "metadata" object wins a clash.
    metadata = {k: v for k, v in obj.items() if k not in _RESERVED or (k in _ID_KEYS and k != key)}
    metadata.update(explicit)
    return Document(id=doc_id, title=title, text=text, metadata=metadata)


def read_corpus(path: Path, *, start_line: int = 0) -> Iterator[tuple[int, Document | CorpusProblem]]:
    """Stream a corpus as ``(line number, Document | CorpusProblem)``, 1-based.

    Blank lines are skipped silently. ``start_line`` is the number of lines
    already processed (the line number of the last one): those lines are
    skipped without being parsed, which is how a resumed build continues.

    >>> for line, item in read_corpus(Path("corpus.jsonl")):  # doctest: +SKIP
    ...     if isinstance(item, CorpusProblem): print(item)
    """
    path = Path(path)
    if start_line < 0:
        raise CorpusError(f"start_line must be >= 0, got {start_line}")
    with _open_binary(path) as handle:
        try:
            for number, raw in enumerate(handle, start=1):
                if number <= start_line:
                    continue
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                if not raw.strip():
                    continue
                parsed = _parse_line(raw)
                if isinstance(parsed, str):
                    yield number, CorpusProblem(line=number, reason=parsed, path=path)
                else:
                    yield number, parsed
        except (OSError, EOFError, zlib.error) as exc:
            # A truncated or corrupt .gz surfaces mid-stream, not at open time.
            raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc}") from exc


@dataclass(frozen=True)
class CorpusScan:
    """What a read through a corpus found: its documents, and its bad lines (the first few of each kind kept).

    ``malformed`` counts the lines the indexer would skip (:func:`read_corpus`'s problems); ``duplicates``
    the documents whose id an earlier line already had (an index build refuses them, and so does one
    batch of a live upsert).
    """

    path: Path
    documents: int
    malformed: int
    problems: list[CorpusProblem]
    duplicates: int
    repeated: list[CorpusProblem]

    @property
    def clean(self) -> bool:
        return not self.malformed and not self.duplicates

    def describe(self) -> str:
        """One line naming what is wrong, by line number, e.g. ``corpus.jsonl: 2 malformed lines: line 4: ...``."""
        parts = [
            _bad_lines(count, kind, shown)
            for count, kind, shown in (
                (self.malformed, "malformed", self.problems),
                (self.duplicates, "repeated-id", self.repeated),
            )
            if count
        ]
        return f"{self.path.name}: " + (" and ".join(parts) if parts else f"{self.documents} documents, no bad lines")


def _bad_lines(count: int, kind: str, shown: list[CorpusProblem]) -> str:
    more = f"; ... ({count - len(shown)} more)" if count > len(shown) else ""
    lines = "; ".join(f"line {p.line}: {p.reason}" for p in shown)
    return f"{count} {kind} line{'s' if count != 1 else ''}: {lines}{more}"


def scan_corpus(
    path: Path, *, keep: int = 5, on_lines: Callable[[int], None] | None = None, every: int = 10_000
) -> CorpusScan:
    """Read ``path`` through with the indexer's own reader (:func:`read_corpus`), embedding nothing: how many
    documents it holds, and which lines an index build would skip or refuse (the first ``keep`` of each kind).

    So a job can refuse a bad corpus in seconds rather than after minutes of embedding. ``on_lines(n)`` is
    told every ``every`` lines read (``n`` the line number); an exception it raises stops the scan. An
    unreadable file (missing, a directory, not gzip, truncated) raises :class:`CorpusError`.

    >>> scan_corpus(Path("corpus.jsonl")).describe()  # doctest: +SKIP
    "corpus.jsonl: 1 malformed line: line 4: invalid JSON: Expecting value (column 1)"
    """
    path = Path(path)
    seen: dict[str, int] = {}
    malformed = duplicates = 0
    problems: list[CorpusProblem] = []
    repeated: list[CorpusProblem] = []
    for line, item in read_corpus(path):
        if on_lines is not None and line % every == 0:
            on_lines(line)
        if isinstance(item, CorpusProblem):
            malformed += 1
            if len(problems) < keep:
                problems.append(item)
        elif (first := seen.get(item.id)) is not None:
            duplicates += 1
            if len(repeated) < keep:
                repeated.append(CorpusProblem(line, f"id {item.id!r} already on line {first}", path))
        else:
            seen[item.id] = line
    return CorpusScan(path, len(seen), malformed, problems, duplicates, repeated)


def count_lines(path: Path) -> int:
    """Number of lines in a corpus (decompressed), for a progress bar total."""
    path = Path(path)
    count, last = 0, b"\n"
    with _open_binary(path) as handle:
        try:
            while block := handle.read(_CHUNK_BYTES):
                count += block.count(b"\n")
                last = block[-1:]
        except (OSError, EOFError, zlib.error) as exc:
            raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc}") from exc
    return count + (last != b"\n")


def corpus_fingerprint(path: Path) -> str:
    """Identity of a corpus file for resume checks: ``"sha256:<hex>"`` of its bytes.

    Hashing the whole file (streamed in 1 MiB blocks) is cheap at the sizes we
    index and, unlike size + mtime, cannot be fooled by a copy or an edit that
    keeps the size.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"corpus file {str(path)!r} does not exist or is not a regular file")
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            while block := handle.read(_CHUNK_BYTES):
                digest.update(block)
    except OSError as exc:
        raise CorpusError(f"cannot read corpus file {str(path)!r}: {exc}") from exc
    return f"sha256:{digest.hexdigest()}"
