"""How text becomes BM25 terms: :class:`LexicalSettings` and the :class:`Analyzer` they describe.

Kept apart from the index itself because the settings are also part of
``index.json`` (:class:`~index.store.collection_info.IndexInfo`): whoever reads a
collection's info rebuilds the same analyzer from them, so a query meets the
stems its documents were indexed under.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import Stemmer
from bm25s.tokenization import Tokenizer

from index.errors import InvalidParameterError

__all__ = ["METHODS_WITH_NONOCCURRENCE", "Analyzer", "LexicalMethod", "LexicalSettings"]

logger = logging.getLogger(__name__)

LexicalMethod = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]
_METHODS: tuple[str, ...] = get_args(LexicalMethod)
METHODS_WITH_NONOCCURRENCE = ("bm25l", "bm25+")
"""BM25 variants that also score the terms a document lacks (bm25s stores one more array for them)."""


def _stopword_list(language: str | None) -> tuple[str, ...]:
    """bm25s's stopword list for ``language`` ("en", "english", "de", ...); empty for ``None``."""
    if language is None:
        return ()
    if not isinstance(language, str):
        raise InvalidParameterError(f"stopwords must name a language ('en', 'de', ...) or be None, got {language!r}")
    try:
        return tuple(Tokenizer(stopwords=language).stopwords)
    except ValueError as exc:  # bm25s's message lists the languages it has
        raise InvalidParameterError(f"unknown stopwords language {language!r}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class LexicalSettings:
    """How documents and queries are analysed and scored; recorded in ``index.json``.

    The defaults are the configuration of our reference figures (bm25s,
    English stopwords, Snowball English stemmer, k1 1.5, b 0.75, Lucene IDF).

    >>> LexicalSettings(stemmer=None)                 # no stemming  # doctest: +SKIP
    >>> LexicalSettings(stopwords="de", stemmer="german")            # doctest: +SKIP
    """

    stopwords: str | None = "en"  # a bm25s stopword list ("en", "de", "fr", ...), None for none
    stemmer: str | None = "english"  # a PyStemmer (Snowball) algorithm, None for none
    k1: float = 1.5  # term-frequency saturation
    b: float = 0.75  # document-length normalisation, 0 (none) .. 1 (full)
    method: LexicalMethod = "lucene"  # bm25s's BM25 variant
    token_pattern: str = r"(?u)\b\w\w+\b"  # words of 2+ word characters, as bm25s and scikit-learn split

    def __post_init__(self) -> None:
        _stopword_list(self.stopwords)
        if self.stemmer is not None and self.stemmer not in Stemmer.algorithms():
            raise InvalidParameterError(
                f"unknown stemmer {self.stemmer!r}; valid stemmers are None and {Stemmer.algorithms()}"
            )
        for name, value, low, high in (("k1", self.k1, 0.0, math.inf), ("b", self.b, 0.0, 1.0)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
                raise InvalidParameterError(f"{name} must be a number in [{low}, {high}], got {value!r}")
        if self.method not in _METHODS:
            raise InvalidParameterError(f"unknown BM25 method {self.method!r}; valid methods are {list(_METHODS)}")
        try:
            re.compile(self.token_pattern)
        except (re.error, TypeError) as exc:
            raise InvalidParameterError(
                f"token_pattern {self.token_pattern!r} is not a regular expression: {exc}"
            ) from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LexicalSettings:
        """Inverse of :meth:`to_dict`; unknown keys (from a newer writer) are dropped with a warning."""
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(data) - known):
            logger.warning("lexical settings: ignoring unknown keys %s", unknown)
        return cls(**{key: value for key, value in data.items() if key in known})


class Analyzer:
    """Text -> stems, identically for documents and queries: lowercase, split, drop stopwords, stem.

    Stateless apart from one stemmer per thread (PyStemmer objects are not
    thread-safe), so a server analyses queries from many threads at once and
    memory does not grow with the words it has seen.

    >>> Analyzer(LexicalSettings())("The runner runs")  # doctest: +SKIP
    ['runner', 'run']
    """

    def __init__(self, settings: LexicalSettings) -> None:
        self._split = re.compile(settings.token_pattern).findall
        self._stopwords = frozenset(_stopword_list(settings.stopwords))
        self._algorithm = settings.stemmer
        self._local = threading.local()

    def __call__(self, text: str) -> list[str]:
        words = [word for word in self._split(text.lower()) if word not in self._stopwords]
        if self._algorithm is None or not words:
            return words
        stemmer = getattr(self._local, "stemmer", None)
        if stemmer is None:
            stemmer = self._local.stemmer = Stemmer.Stemmer(self._algorithm)
        return stemmer.stemWords(words)
