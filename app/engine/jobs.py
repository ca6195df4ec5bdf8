"""What goes into the engine and what comes out: jobs of a micro-batch, hits, results, embeddings.

Plain frozen dataclasses, shared by the engine, the batcher's callers and the
output formatting; they know nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from app.engine.retrieval import ExpertHit, RetrievalOptions, SearchMode
from app.errors import PermissionDeniedError
from index import FilterExpr
from router import RouteDecision, RoutePolicy

#: ``model`` values of the embeddings API that are not expert names.
BASE_MODEL = "base"
AUTO_MODEL = "auto"
RESERVED_NAMES = (AUTO_MODEL, BASE_MODEL)

InputType = Literal["query", "document"]


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query, and the routing decision that produced them.

    ``truncated``: the query had more tokens than the query limit and was cut
    to it. ``matched``: with a filter, how many documents of the searched
    expert(s) match it (the hits are at most that many); None without one.
    """

    query: str
    hits: list[ExpertHit]
    decision: RouteDecision
    mode: SearchMode = "dense"
    truncated: bool = False
    matched: int | None = None


@dataclass(frozen=True)
class BatchResult:
    """One request's results. ``timings_ms`` and the batch sizes describe the micro-batch it ran in."""

    results: list[SearchResult]
    timings_ms: dict[str, float] = field(default_factory=dict)
    batch_requests: int = 1
    batch_queries: int = 0


@dataclass(frozen=True)
class SearchJob:
    """One request in a micro-batch: its queries and its own options.

    ``retrieval`` holds the options the request set, over each expert's own
    default (settings, then its manifest); None sets none. A default that
    needs a lexical index degrades to dense on an expert without one, while
    a request that sets any retrieval option and so needs BM25 there is refused.
    ``policy`` None routes by the engine's default policy. ``filter`` restricts the hits to documents whose metadata match it, inside
    the search of the chosen expert(s); routing does not look at it. ``allowed_experts`` (None: all) are the
    experts the caller may read: a routed query is routed among them alone, and naming another is refused.

    >>> SearchJob(("lift of a swept wing",), k=5, policy=RoutePolicy(top_k=2, fanout_margin=0.05))
    """

    queries: tuple[str, ...]
    k: int = 10
    expert: str | None = None
    policy: RoutePolicy | None = None
    retrieval: RetrievalOptions | None = None
    filter: FilterExpr | None = None
    allowed_experts: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_queries(self.queries)
        object.__setattr__(self, "queries", tuple(self.queries))
        object.__setattr__(self, "allowed_experts", _frozen(self.allowed_experts))
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ValueError(f"k must be a positive integer, got {self.k!r}")


@dataclass(frozen=True)
class EmbedJob:
    """One embeddings request: ``model`` is an expert name, ``base`` or ``auto`` (routed).

    ``allowed_experts`` (None: all): ``auto`` routes among these alone, and naming another is refused.
    """

    texts: tuple[str, ...]
    model: str = BASE_MODEL
    input_type: InputType = "query"
    #: A turn of a large request: its passes let searches' passes go first (``Encoder.embed(bulk=True)``).
    bulk: bool = False
    allowed_experts: frozenset[str] | None = None

    def __post_init__(self) -> None:
        check_queries(self.texts)
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "allowed_experts", _frozen(self.allowed_experts))
        if self.input_type not in ("query", "document"):
            raise ValueError(f"Invalid input_type {self.input_type!r}. Valid input types are: 'query', 'document'")


@dataclass(frozen=True)
class EmbedResult:
    """Vectors (n, dim); per row, the expert whose adapter made it (None: the base encoder) and the tokens it read."""

    vectors: np.ndarray
    adapters_of: list[str | None]
    decisions: list[RouteDecision] | None = None
    #: Per row, the tokens the encoder read (special tokens included, after truncation to the length limit).
    tokens: list[int] | None = None


def check_queries(queries: Sequence[str]) -> None:
    """Refuse a bare string (a common slip for a one-item list) and empty queries, naming the position."""
    if isinstance(queries, str) or not isinstance(queries, Sequence):
        raise TypeError("queries must be a list of strings")
    for position, query in enumerate(queries):
        if not isinstance(query, str) or not query.strip():
            raise ValueError(f"query {position} is empty: every query needs some text")


def _frozen(names: Iterable[str] | None) -> frozenset[str] | None:
    """A job's ``allowed_experts`` as a frozenset (hashable: batches group jobs by it); a bare string is refused."""
    if names is None:
        return None
    if isinstance(names, str):
        raise TypeError("allowed_experts must be a collection of expert names, not a string")
    return frozenset(names)


def not_allowed(name: str, allowed: frozenset[str]) -> PermissionDeniedError:
    """The error of a job naming an expert outside its ``allowed_experts``."""
    return PermissionDeniedError(
        f"expert {name!r} is not among the experts this request may use: {sorted(allowed)}",
        details={"expert": name, "allowed": sorted(allowed)},
    )
