"""The shared IDF of the Ray ingress's BM25 votes: every routed expert's document frequencies, pooled.

``rr serve`` scores its router's BM25 votes with one IDF over every routed
collection (``RR_ROUTER_VOTE_IDF=shared``, :mod:`index.store.shared_idf`), so
that scores compare across collections. The ingress holds no collection: it
asks the searcher replica of each expert once for that expert's statistics
(what its BM25 index counts: documents, and documents per stem, of its
published generation, as the engine's snapshot counts them), keeps them per
published version, and sends each vote call only the pooled frequencies of the
batch's query stems, which is all a shared-IDF search reads.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from index import Analyzer, Collection, LexicalSettings, LiveView, SharedIdf

__all__ = ["Key", "TermStatistics", "VoteIdf", "term_statistics", "vote_scores"]

#: One published version of an expert: its name and its registry entry.
Key = tuple[str, Hashable]


@dataclass(frozen=True)
class TermStatistics:
    """One expert's BM25 statistics as its searcher replica reports them; ``settings`` None: no BM25 index."""

    settings: LexicalSettings | None
    documents: int = 0
    frequencies: Mapping[str, int] | None = None


class VoteIdf:
    """Pooled statistics of the routed experts, kept per published version of each; thread-safe.

    >>> idf = VoteIdf()
    >>> idf.missing([("aero", "v1")])                      # ask their searchers for these  # doctest: +SKIP
    >>> idf.remember(("aero", "v1"), statistics)           # doctest: +SKIP
    >>> idf.for_queries([("aero", "v1")], ["lift of a swept wing"])  # doctest: +SKIP
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._statistics: dict[Key, TermStatistics] = {}
        self._pooled: tuple[tuple[Key, ...], SharedIdf, tuple[Analyzer, ...]] | None = None

    def missing(self, keys: Sequence[Key]) -> list[Key]:
        """The keys (one per routed expert and published version) whose statistics are not known yet."""
        with self._lock:
            return [key for key in keys if key not in self._statistics]

    def remember(self, key: Key, statistics: TermStatistics) -> None:
        with self._lock:
            self._statistics[key] = statistics

    def forget_all_but(self, keys: Sequence[Key]) -> None:
        """Drop the statistics of versions no longer routed (replaced or unpublished experts)."""
        with self._lock:
            kept = set(keys)
            self._statistics = {key: value for key, value in self._statistics.items() if key in kept}

    def for_queries(self, keys: Sequence[Key], texts: Sequence[str]) -> SharedIdf:
        """The pooled IDF of ``keys``' experts, restricted to the stems of ``texts`` (every analyser's)."""
        pooled, analysers = self._pool(tuple(keys))
        stems = {stem for analyse in analysers for text in texts for stem in analyse(text)}
        frequencies = {stem: pooled.frequencies[stem] for stem in stems if stem in pooled.frequencies}
        return SharedIdf(pooled.documents, frequencies)

    def _pool(self, keys: tuple[Key, ...]) -> tuple[SharedIdf, tuple[Analyzer, ...]]:
        with self._lock:
            if self._pooled is not None and self._pooled[0] == keys:
                return self._pooled[1], self._pooled[2]
            found = [self._statistics[key] for key in keys if key in self._statistics]
        lexical = [s for s in found if s.settings is not None and s.frequencies is not None]
        pooled = SharedIdf.over((s.documents, s.frequencies) for s in lexical if s.frequencies is not None)
        settings = {s.settings: None for s in lexical if s.settings is not None}  # each analysis once, in order
        analysers = tuple(Analyzer(setting) for setting in settings)
        with self._lock:
            self._pooled = (keys, pooled, analysers)
        return pooled, analysers


def term_statistics(collection: Collection) -> TermStatistics:
    """What a collection's published BM25 index counts (a searcher replica's answer; none: no BM25 index)."""
    if not collection.has_lexical:
        return TermStatistics(None)
    documents, frequencies = collection.lexical.document_frequencies()
    return TermStatistics(collection.lexical.settings, documents, frequencies)


def vote_scores(
    view: LiveView,
    base: np.ndarray,
    texts: list[str],
    depth: int,
    kinds: tuple[str, ...],
    shared_idf: SharedIdf | None = None,
) -> dict[str, np.ndarray]:
    """One expert's top-``depth`` dense and/or BM25 scores, as ``SearchEngine`` takes them for its corpus votes.

    The same calls as the engine's evidence step (:func:`app.engine.votes.per_expert_votes`), so the ingress's
    votes equal ``rr serve``'s: an expert without a BM25 index gives an (n, 0) array. ``shared_idf``: BM25
    scored with every routed expert's IDF (:meth:`VoteIdf.for_queries`), as ``RR_ROUTER_VOTE_IDF=shared`` does.
    """
    out = {}
    if "documents" in kinds:
        out["documents"] = view.search_dense(base, depth)[0]
    if "bm25" in kinds:
        none = np.zeros((len(texts), 0), dtype=np.float32)
        out["bm25"] = view.search_lexical(texts, depth, shared_idf=shared_idf)[0] if view.has_lexical else none
    return out
