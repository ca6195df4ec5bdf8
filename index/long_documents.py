"""What to do with documents longer than the encoder's limit: the per-expert policy and the split contract.

The encoder embeds at most ``max_tokens`` tokens of a passage (title + " " +
text; 256 by default) and drops the rest, so before this policy a phrase in
the tail of a long document was invisible to dense search. Each collection
records one policy (:class:`ChunkSettings`, in ``index.json``):

* ``"chunk"`` (the default of new builds): the passage is cut into windows of
  at most ``max_tokens`` tokens, ``overlap`` tokens shared by neighbours; each
  window is embedded and stored as its own vector; dense search scores
  windows and returns each document once, with its best window's score (and,
  as :attr:`~index.Hit.span`, where that window lies in the text).
* ``"truncate"``: one vector per document from its first ``max_tokens``
  tokens (the behaviour of every collection built before this policy, and of
  collections without recorded settings).
* ``"error"``: a document longer than the limit is refused, by id and token
  count. In the batch job it is reported like a malformed corpus line
  (skipped, counted, listed in :class:`~index.BuildReport.problems`) rather
  than failing the build: one over-long document among a million should not
  throw away hours of embedding, and the report names every one of them at
  once instead of one per failed run. A live upsert is all-or-nothing, so
  there it raises :class:`~index.errors.LongDocumentError` (a 422 for the API).

Token windows need the tokenizer, which lives in ``experts/``; this package
only receives a :data:`SplitFn` (``experts.make_split_fn(encoder)``) and
works on the character spans it returns.

BM25 stays per document: it has no window (bm25s scores whole documents of
any length, with length normalisation), so cutting documents for it would only
change its statistics, and it keeps the one id space that fusion needs
without a second collapse.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

from index.corpus import Document
from index.errors import InvalidParameterError

__all__ = [
    "LONG_DOCUMENT_POLICIES",
    "ChunkSettings",
    "LongDocuments",
    "Span",
    "SplitFn",
    "plan_chunks",
    "text_span",
    "too_long_message",
]

LongDocuments = Literal["truncate", "chunk", "error"]
LONG_DOCUMENT_POLICIES: tuple[LongDocuments, ...] = get_args(LongDocuments)

Span = tuple[int, int]

SplitFn = Callable[[list[str]], list[tuple[list[Span], int]]]
"""Splits passages into token windows: n strings -> n pairs (character spans ``(start, end)``, token count).

Each passage's spans cover it in order, each ``passage[start:end]`` fits the
encoder's limit, and a passage that fits is the single span ``(0, len)``; the
count is its length in tokens, special tokens included (as ``max_tokens`` counts). ``experts.make_split_fn(encoder)``
makes one.
"""


@dataclass(frozen=True)
class ChunkSettings:
    """A collection's long-document policy, as ``index.json`` records it.

    ``max_tokens`` is the encoder's document limit (special tokens included)
    and ``overlap`` the tokens shared by neighbouring windows; both are
    informational for ``"truncate"``.
    """

    policy: LongDocuments = "chunk"
    max_tokens: int = 256
    overlap: int = 32

    def __post_init__(self) -> None:
        if self.policy not in LONG_DOCUMENT_POLICIES:
            raise InvalidParameterError(
                f"invalid long-document policy {self.policy!r}; valid policies: {', '.join(LONG_DOCUMENT_POLICIES)}"
            )
        for name in ("max_tokens", "overlap"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "max_tokens" else 0):
                raise InvalidParameterError(
                    f"{name} must be an integer >= {2 if name == 'max_tokens' else 0}, got {value!r}"
                )
        if self.overlap >= self.max_tokens:
            raise InvalidParameterError(f"overlap ({self.overlap}) must be below max_tokens ({self.max_tokens})")

    @property
    def splits(self) -> bool:
        """True when the policy needs a :data:`SplitFn` (``chunk`` and ``error``)."""
        return self.policy != "truncate"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChunkSettings:
        """Read what :meth:`to_dict` wrote; unknown keys (a newer writer's) are ignored."""
        known = {"policy", "max_tokens", "overlap"}
        return cls(**{key: value for key, value in data.items() if key in known})


def plan_chunks(
    docs: Sequence[Document], settings: ChunkSettings | None, split: SplitFn | None
) -> tuple[list[list[Span]], list[tuple[int, int]]]:
    """Each document's windows under ``settings``, and the documents ``"error"`` refuses.

    Returns (spans per document, in passage characters; ``(position, tokens)``
    of each refused document, whose spans are then empty). ``truncate`` (or
    no settings) gives every document the one span of its whole passage, so
    it embeds exactly as before.
    """
    passages = [doc.passage() for doc in docs]
    if settings is None or not settings.splits:
        return [[(0, len(p))] for p in passages], []
    if split is None:
        raise InvalidParameterError(
            f"long-document policy {settings.policy!r} needs a split function (experts.make_split_fn(encoder))"
        )
    planned = split(passages) if passages else []
    if len(planned) != len(passages):
        raise InvalidParameterError(f"split returned {len(planned)} results for {len(passages)} passages")
    spans: list[list[Span]] = []
    refused: list[tuple[int, int]] = []
    for position, ((windows, tokens), passage) in enumerate(zip(planned, passages, strict=True)):
        windows = [(int(s), int(e)) for s, e in windows]
        if not windows or any(not 0 <= s < e <= len(passage) for s, e in windows if (s, e) != (0, 0)):
            raise InvalidParameterError(
                f"split returned invalid spans {windows[:4]} for a passage of {len(passage)} characters"
            )
        if len(windows) > 1 and settings.policy == "error":
            refused.append((position, int(tokens)))
            windows = []
        spans.append(windows)
    return spans, refused


def too_long_message(doc_id: str, tokens: int, settings: ChunkSettings) -> str:
    """What the ``"error"`` policy says about a refused document."""
    return (
        f"document {doc_id!r} is {tokens} tokens long, more than the encoder's limit of {settings.max_tokens} "
        f"under long-document policy 'error'; shorten it, or build with "
        f"long_documents 'chunk' (or 'truncate')"
    )


def text_span(doc: Document, start: int, end: int) -> Span:
    """A span of ``doc.passage()`` as offsets into ``doc.text`` (the title and its space come first; clipped at 0)."""
    if not doc.title:
        return start, end
    if not doc.text:
        return 0, 0
    offset = len(doc.title) + 1
    return max(start - offset, 0), max(end - offset, 0)
