"""How an engine routes and searches: one typed, frozen value, built from the settings in one place.

``Settings.engine_config()`` builds it for the service, the CLI, the Ray
deployment and the offline jobs, so they all route alike; tests and
benchmarks build their own, or ``replace`` one field of the settings' one::

    SearchEngine.open(root, encoder, replace(settings.engine_config(), evidence="none"))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from app.engine.retrieval import Retrieval
from app.engine.votes import ROUTE_EVIDENCE, RouteEvidence
from router import AGGREGATES, BEST_OF, VOTE_RULES, Aggregate, PilotSearch, RoutePolicy, VoteRule

__all__ = ["LONG_QUERIES", "EngineConfig", "LongQueries"]

#: How BM25 votes weigh a term: by the IDF of all routed collections together, or by each collection's own.
VoteIdf = Literal["shared", "own"]
VOTE_IDF: tuple[VoteIdf, ...] = ("shared", "own")

#: What a query over the token limit gets: cut to the limit (and told so), or refused (413).
LongQueries = Literal["truncate", "error"]
LONG_QUERIES: tuple[LongQueries, ...] = ("truncate", "error")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """Everything a :class:`~app.engine.engine.SearchEngine` is told at construction.

    >>> EngineConfig(evidence="documents+bm25", policy=RoutePolicy(top_k=3, fanout_margin=1.5)).vote_depth
    20
    """

    #: Token limit of queries (longer ones: see ``long_queries``).
    query_max_length: int = 64
    #: How the router scores an expert from its pilots (see ``router.Router``).
    aggregate: Aggregate = "max"
    neighbours: int = 5
    #: How a search with no retrieval of its own searches an expert whose manifest sets none.
    retrieval: Retrieval = field(default_factory=Retrieval)
    #: Corpus evidence added to the pilot scores: votes of the best documents in every expert's dense
    #: index (base vector) and/or BM25 index, ``vote_depth`` deep.
    evidence: RouteEvidence = "none"
    vote_depth: int = 20
    #: BM25 votes: scored with every routed collection's IDF together (comparable across collections), or each
    #: collection's own (see :mod:`index.store.shared_idf`).
    vote_idf: VoteIdf = "shared"
    #: How each kind of evidence becomes votes: a softmax of each expert's best scores, or its share of the
    #: best documents (see :data:`router.VoteRule`).
    vote_rule: VoteRule = "best"
    #: Dense votes: the union of more vectors than this is searched as an inverted file, ``vote_probes`` lists
    #: deep (near, not equal, votes; :class:`~index.store.union_dense.UnionDense`); None: always exact.
    vote_exact_max: int | None = None
    vote_probes: int = 64
    #: BM25 votes: the union of more documents than this keeps each stem's best postings only; None: always exact.
    vote_lexical_exact_max: int | None = None
    #: How the knn vote finds a query's nearest pilots: every pilot, or by groups above a size.
    pilot_search: PilotSearch = field(default_factory=PilotSearch)
    long_queries: LongQueries = "truncate"
    #: How a search with no routing policy of its own is routed and merged.
    policy: RoutePolicy = field(default_factory=RoutePolicy)

    def __post_init__(self) -> None:
        if self.evidence not in ROUTE_EVIDENCE:
            raise ValueError(f"Invalid evidence {self.evidence!r}. Valid choices are: {', '.join(ROUTE_EVIDENCE)}")
        if self.vote_rule not in VOTE_RULES:
            raise ValueError(f"Invalid vote_rule {self.vote_rule!r}. Valid choices are: {', '.join(VOTE_RULES)}")
        if self.evidence != "none" and self.vote_rule == "best" and self.vote_depth < BEST_OF:
            raise ValueError(
                f"vote_depth must be >= {BEST_OF} with vote_rule 'best' (each expert's {BEST_OF} best documents "
                f"among the vote_depth best make its score), got {self.vote_depth}; or set vote_rule 'share'"
            )
        if self.vote_idf not in VOTE_IDF:
            raise ValueError(f"Invalid vote_idf {self.vote_idf!r}. Valid choices are: {', '.join(VOTE_IDF)}")
        if self.long_queries not in LONG_QUERIES:
            valid = ", ".join(LONG_QUERIES)
            raise ValueError(f"Invalid long_queries {self.long_queries!r}. Valid choices are: {valid}")
        if self.aggregate not in AGGREGATES:
            raise ValueError(f"Invalid aggregate {self.aggregate!r}. Valid aggregates are: {', '.join(AGGREGATES)}")
        maxima = (self.vote_exact_max, self.vote_lexical_exact_max)
        if any(m is not None and m < 0 for m in maxima) or self.vote_probes < 1:
            raise ValueError(
                "vote_exact_max and vote_lexical_exact_max must be >= 0 or None and vote_probes >= 1; got "
                f"{self.vote_exact_max}, {self.vote_lexical_exact_max}, {self.vote_probes}"
            )
        if self.query_max_length < 2 or self.neighbours < 1 or self.vote_depth < 1:
            raise ValueError(
                "query_max_length must be >= 2, neighbours and vote_depth >= 1; got "
                f"{self.query_max_length}, {self.neighbours}, {self.vote_depth}"
            )
