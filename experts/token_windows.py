"""Splitting long passages into token windows: character spans from the fast tokenizer's offsets.

The encoder embeds at most ``max_length`` tokens of a passage (256 for our
default) and silently drops the rest, so a phrase in the tail of a long
document is invisible to dense search. :func:`token_spans` cuts a passage
into windows of at most ``max_tokens`` tokens *including* the special tokens
the encoder adds (``[CLS]`` and ``[SEP]`` for BERT), each overlapping the
previous one by ``overlap`` tokens, so that a sentence cut at a window's end
is whole in the next one. The windows come back as character spans
``(start, end)`` of the text (from the tokenizer's offset mapping), not as
tokens: the index stores and returns spans of the stored text, and each
span's text is embedded like any other passage.

Windows start and end on word boundaries (the tokenizer's ``word_ids``) where
they can: a window that began inside a word (``"##ing"``) would be tokenised
differently when its text is embedded on its own, and could come out a token
longer than the limit. A single "word" longer than a window (a URL, a run of
digits) is cut at token boundaries instead.

A text that fits is one span, ``(0, len(text))``: exactly what the encoder
embeds without chunking, so short documents embed the same either way.

Only this module (in ``experts/``) knows the tokenizer; ``index/`` receives
:func:`make_split_fn`'s result as a plain function (``index.SplitFn``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from experts.errors import ChunkingError

__all__ = ["DEFAULT_OVERLAP", "make_split_fn", "split_passages", "token_spans"]

#: Tokens shared by consecutive windows: about two sentences of technical prose.
DEFAULT_OVERLAP = 32

Span = tuple[int, int]


def _tokenizer(tokenizer_or_encoder: Any) -> Any:
    tokenizer = getattr(tokenizer_or_encoder, "tokenizer", tokenizer_or_encoder)
    if not getattr(tokenizer, "is_fast", False):
        raise ChunkingError(
            f"chunking needs a fast (Rust) tokenizer for its offset mapping; got {type(tokenizer).__name__}"
        )
    return tokenizer


def _window(tokenizer: Any, max_tokens: int, overlap: int) -> int:
    """Content tokens per window: ``max_tokens`` less the special tokens the encoder adds."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or isinstance(overlap, bool):
        raise ChunkingError(f"max_tokens and overlap must be integers, got {max_tokens!r} and {overlap!r}")
    window = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    if window < 1:
        raise ChunkingError(f"max_tokens={max_tokens} leaves no room for text beside the special tokens")
    if not isinstance(overlap, int) or not 0 <= overlap < window:
        raise ChunkingError(
            f"overlap must be an integer in [0, {window - 1}] (below the {window} text tokens of a "
            f"{max_tokens}-token window), got {overlap!r}"
        )
    return window


def _word_start(words: list[int | None], i: int, floor: int) -> int:
    """The first token of the word holding token ``i``, but not at or before ``floor`` (then ``i`` itself)."""
    word = words[i]
    j = i
    while word is not None and j > floor + 1 and words[j - 1] == word:
        j -= 1
    return j if j > floor else i


def _spans_of(text: str, offsets: list[Span], words: list[int | None], window: int, overlap: int) -> list[Span]:
    n = len(offsets)
    if n <= window:
        return [(0, len(text))]
    spans: list[Span] = []
    start = 0
    while True:
        end = min(start + window, n)
        if end < n:  # do not cut the last word in two: end before it, unless that leaves the window empty
            cut = _word_start(words, end, start)
            end = cut if cut > start else end
        spans.append((offsets[start][0], offsets[end - 1][1]))
        if end == n:
            return spans
        step = max(end - overlap, start + 1)  # always move forward
        start = _word_start(words, step, start)


def split_passages(
    tokenizer_or_encoder: Any, texts: Sequence[str], *, max_tokens: int, overlap: int = DEFAULT_OVERLAP
) -> list[tuple[list[Span], int]]:
    """Each text's window spans and its token count as the encoder would see it whole: n texts -> n pairs.

    The count includes the special tokens, so that it compares with
    ``max_tokens``; it is what a ``long_documents="error"`` policy reports.
    The spans are :func:`token_spans`'s.
    """
    tokenizer = _tokenizer(tokenizer_or_encoder)
    window = _window(tokenizer, max_tokens, overlap)
    texts = list(texts)
    if not texts:
        return []
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    special = tokenizer.num_special_tokens_to_add(pair=False)
    out = []
    for i, text in enumerate(texts):
        offsets = [tuple(pair) for pair in encoded["offset_mapping"][i]]
        out.append((_spans_of(text, offsets, encoded.word_ids(i), window, overlap), len(offsets) + special))
    return out


def token_spans(
    tokenizer_or_encoder: Any, texts: Sequence[str], *, max_tokens: int, overlap: int = DEFAULT_OVERLAP
) -> list[list[Span]]:
    """Character spans of the token windows of each text: n texts -> n lists of ``(start, end)``.

    ``tokenizer_or_encoder`` is a fast Hugging Face tokenizer or an
    :class:`~experts.Encoder` (its tokenizer is used). Each window's text
    ``text[start:end]`` tokenises to at most ``max_tokens`` tokens with the
    special tokens; consecutive windows share about ``overlap`` tokens; a text
    that fits is the single span ``(0, len(text))``.

    >>> token_spans(encoder, ["short text", long_text], max_tokens=256, overlap=32)  # doctest: +SKIP
    [[(0, 10)], [(0, 1187), (1012, 2230), (2051, 2467)]]
    """
    return [spans for spans, _ in split_passages(tokenizer_or_encoder, texts, max_tokens=max_tokens, overlap=overlap)]


def make_split_fn(
    encoder: Any, *, max_tokens: int | None = None, overlap: int = DEFAULT_OVERLAP
) -> Callable[[list[str]], list[tuple[list[Span], int]]]:
    """The split function the indexing job and live upserts take (``index.SplitFn``): passages -> (spans, tokens).

    ``max_tokens`` defaults to the encoder's document limit (``encoder.max_length``).
    Settings are checked now, not at the first document.

    >>> split = make_split_fn(encoder, overlap=32)  # doctest: +SKIP
    >>> build_index(corpora, embed=..., split=split, chunking=ChunkSettings("chunk", 256, 32), ...)
    """
    limit = int(encoder.max_length) if max_tokens is None else max_tokens
    _window(_tokenizer(encoder), limit, overlap)
    return partial(split_passages, encoder, max_tokens=limit, overlap=overlap)
