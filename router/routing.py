"""Routing a batch of base-encoder query embeddings to experts.

``Router`` is immutable: adding or removing an expert returns a new router, so
a server can swap it atomically while in-flight requests keep the one they
hold. Nothing here needs retraining when experts change: an expert is its
pilots.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from router.errors import NoExpertsError, PilotError
from router.pilot_groups import PilotGroups, PilotIndex, PilotSearch
from router.pilots import check_pilots

#: How an expert's score is taken from its pilots: the nearest pilot (the
#: released RouterRetriever code), the mean over pilots (the paper's text), or
#: the expert's share of the query's ``neighbours`` nearest pilots over every
#: expert (a k-nearest-neighbour vote; meant for pilots that are the experts'
#: training queries themselves, sampled to the same number per expert).
Aggregate = Literal["max", "mean", "knn"]
AGGREGATES: tuple[Aggregate, ...] = ("max", "mean", "knn")
#: A kNN score is ``votes / neighbours + TIE_BREAK * nearest-pilot similarity``:
#: small enough never to outweigh one vote, so it only orders experts with equal votes.
TIE_BREAK = 1e-3
#: What a decision does: the top expert; several, fused; the top collection(s)
#: searched with the base encoder because no expert was confident; or an
#: expert named by the caller.
RouteMode = Literal["top1", "fanout", "fallback", "forced"]
#: How the hit lists of a query sent to several experts become one ranking:
#: ``score``, each hit's dense and BM25 scores normalised over all the lists
#: together, minus ``gap_weight`` times its expert's router-score gap to the top
#: expert (a confident router keeps its top expert's hits in front, an unsure one
#: interleaves); ``rrf``, reciprocal rank fusion (ranks only, no prior).
MergeRule = Literal["score", "rrf"]
MERGE_RULES: tuple[MergeRule, ...] = ("score", "rrf")


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """When to search more than the top expert, and when to trust no adapter.

    - ``top_k``: how many experts a fan-out (or a fallback) searches at most.
    - ``fanout_margin``: fan out to the experts among the top ``top_k`` whose
      score is less than this below the top one's. With ``top_k > 1`` and no
      margin, always fan out to ``top_k``.
    - ``min_score``: when even the best expert scores below this, the query
      looks out of every domain; search the top ``top_k`` collections with the
      base encoder instead of an adapter.
    - ``merge`` and ``gap_weight``: how a fan-out's lists become one (see ``MergeRule``;
      0.1 was chosen on training and pseudo queries, docs/eval-2026-12-03).
    """

    top_k: int = 1
    fanout_margin: float | None = None
    min_score: float | None = None
    merge: MergeRule = "score"
    gap_weight: float = 0.1

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.fanout_margin is not None and self.fanout_margin < 0:
            raise ValueError(f"fanout_margin must be >= 0, got {self.fanout_margin}")
        if self.merge not in MERGE_RULES:
            raise ValueError(f"Invalid merge {self.merge!r}. Valid merges are: {', '.join(MERGE_RULES)}")
        if not self.gap_weight >= 0:  # also refuses NaN
            raise ValueError(f"gap_weight must be >= 0, got {self.gap_weight}")

    def updated(self, **changes: Any) -> RoutePolicy:
        """This policy with the fields given a value other than None replaced (a request over the server's default).

        >>> RoutePolicy(top_k=3, fanout_margin=0.2).updated(top_k=1, fanout_margin=None)
        RoutePolicy(top_k=1, fanout_margin=0.2, min_score=None, merge='score', gap_weight=0.1)
        """
        return replace(self, **{name: value for name, value in changes.items() if value is not None})


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one query goes, and why.

    ``experts`` are the collections to search, best first; ``use_adapters`` is
    False for a fallback (base query vector). ``scores`` holds every expert's
    router score, best first.
    """

    experts: tuple[str, ...]
    mode: RouteMode
    scores: tuple[tuple[str, float], ...]
    margin: float
    use_adapters: bool = True
    reason: str = field(default="")


class Router:
    """Scores queries against every expert's pilots.

    >>> router = Router({"cranfield": np.eye(2)[:1], "cacm": np.eye(2)[1:]})
    >>> router.route(np.array([[0.9, 0.1]]))[0].experts
    ('cranfield',)
    """

    def __init__(
        self,
        pilots: Mapping[str, np.ndarray],
        *,
        aggregate: Aggregate = "max",
        neighbours: int = 5,
        search: PilotSearch = PilotSearch(),
        groups: Mapping[str, PilotGroups] | None = None,
    ) -> None:
        """``search``: how a ``knn`` vote finds the nearest pilots (every one, or by groups above a size).

        ``groups``: groups already made for some of these experts' pilots (an
        older router's :attr:`groups`; :meth:`with_expert` and
        :meth:`without_expert` pass theirs on), so that only new pilots are
        grouped; an entry made from other pilots is made again.
        """
        if aggregate not in AGGREGATES:
            raise ValueError(f"Invalid aggregate {aggregate!r}. Valid aggregates are: {', '.join(AGGREGATES)}")
        if neighbours < 1:
            raise ValueError(f"neighbours must be >= 1, got {neighbours}")
        self.aggregate: Aggregate = aggregate
        self.neighbours = neighbours
        self.search = search
        self._pilots = {name: check_pilots(p, name=name) for name, p in sorted(pilots.items())}
        dims = {p.shape[1] for p in self._pilots.values()}
        if len(dims) > 1:
            raise PilotError(f"experts' pilots have different dimensions: {sorted(dims)}")
        self.dim: int | None = dims.pop() if dims else None
        self.experts: tuple[str, ...] = tuple(self._pilots)
        counts = [len(p) for p in self._pilots.values()]
        #: Each expert's pilot groups, when the knn vote searches by groups (else empty).
        self.groups: dict[str, PilotGroups] = {}
        self._index: PilotIndex | None = None
        if aggregate == "knn" and search.grouped(sum(counts)):
            known, size = groups or {}, search.group_size
            self.groups = {
                name: known[name] if name in known and known[name].made_from(p, size) else PilotGroups.of(p, size=size)
                for name, p in self._pilots.items()
            }
        if self._pilots:
            # Grouped: each expert's pilots in group order, so that a group is one slice of the matrix.
            ordered = [p[self.groups[name].order] if self.groups else p for name, p in self._pilots.items()]
            self._matrix = np.concatenate(ordered)
            self._starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
            self._counts = np.asarray(counts, dtype=np.float32)
            self._owner = np.repeat(np.arange(len(counts)), counts)
            if self.groups:
                self._index = PilotIndex(
                    list(self.groups.values()),
                    self._starts,
                    self._matrix,
                    reduced_dim=search.reduced_dim,
                    refine=search.refine,
                )

    def __len__(self) -> int:
        return len(self.experts)

    def pilots(self, name: str) -> np.ndarray:
        return self._pilots[name]

    def with_expert(self, name: str, pilots: np.ndarray) -> Router:
        """A new router with ``name`` added (or its pilots replaced)."""
        return self._with({**self._pilots, name: pilots}, self.groups)  # a replaced expert's groups are made again

    def without_expert(self, name: str) -> Router:
        """A new router without ``name``."""
        if name not in self._pilots:
            raise KeyError(f"Expert {name!r} is not routed. Routed experts: {list(self.experts)}")
        kept = {k: v for k, v in self._pilots.items() if k != name}
        return self._with(kept, self.groups)

    def _with(self, pilots: Mapping[str, np.ndarray], groups: Mapping[str, PilotGroups]) -> Router:
        return Router(pilots, aggregate=self.aggregate, neighbours=self.neighbours, search=self.search, groups=groups)

    def routable(self, only: Collection[str] | None = None) -> tuple[str, ...]:
        """The experts a decision may choose among, in ``experts`` order: all of them, or those also in ``only``.

        >>> Router({"a": np.eye(2)[:1], "b": np.eye(2)[1:]}).routable({"b", "zed"})
        ('b',)
        """
        if only is None:
            return self.experts
        return tuple(name for name in self.experts if name in only)

    def scores(self, queries: np.ndarray, *, only: Collection[str] | None = None) -> np.ndarray:
        """Router score of every expert for every query, (n, dim) -> (n, E), columns in ``experts`` order.

        With ``only``, (n, E') for the experts of :meth:`routable` alone, scored
        as a router holding only their pilots would score them: a kNN vote
        counts only their pilots, so the other experts' pilots neither win nor
        dilute a vote.
        """
        if not self._pilots:
            raise NoExpertsError("no experts to route to: add an expert with pilots first")
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise PilotError(f"queries must have shape (n, {self.dim}), got {queries.shape}")
        columns = self._columns(only)
        if self._index is not None:
            return self._grouped_votes(queries, columns)
        similarity = queries @ self._matrix.T  # (n, total pilots)
        if self.aggregate == "mean":
            return (np.add.reduceat(similarity, self._starts, axis=1) / self._counts)[:, columns]
        nearest = np.maximum.reduceat(similarity, self._starts, axis=1)[:, columns]
        if self.aggregate == "max":
            return nearest
        if only is not None:  # the others' pilots cannot be among the nearest
            similarity[:, ~np.isin(self._owner, columns)] = -np.inf
        return self._votes(similarity, columns) + TIE_BREAK * nearest

    def _columns(self, only: Collection[str] | None) -> np.ndarray:
        """Indices into ``experts`` of :meth:`routable`; NoExpertsError when ``only`` leaves none."""
        if only is None:
            return np.arange(len(self.experts))
        columns = np.asarray([i for i, name in enumerate(self.experts) if name in only], dtype=np.int64)
        if not len(columns):
            raise NoExpertsError(
                f"none of the experts {sorted(only)} can be routed to (none is published with pilots): "
                "name one with `expert`, or publish one"
            )
        return columns

    def _votes(self, similarity: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """Each expert's share of the ``neighbours`` pilots nearest to each query, (n, P) -> (n, len(columns)).

        Pilots of experts outside ``columns`` must have similarity ``-inf``; they are never counted.
        """
        n = similarity.shape[0]
        k = min(self.neighbours, int(self._counts[columns].sum()))
        nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        votes = np.zeros((n, len(self.experts)), dtype=np.float32)
        np.add.at(votes, (np.repeat(np.arange(n), k), self._owner[nearest].ravel()), 1.0)
        return votes[:, columns] / k

    def _grouped_votes(self, queries: np.ndarray, columns: np.ndarray) -> np.ndarray:
        """:meth:`_votes` (plus the tie-break) from the pilots of each query's nearest groups (:class:`PilotIndex`)."""
        assert self._index is not None
        allowed = np.zeros(len(self.experts), dtype=bool)
        allowed[columns] = True
        k = min(self.neighbours, int(self._counts[columns].sum()))
        nearest, best = self._index.search(queries, self._matrix, k, self.search.probes, allowed)
        votes = np.zeros((len(queries), len(self.experts)), dtype=np.float32)
        np.add.at(votes, (np.repeat(np.arange(len(queries)), k), self._owner[nearest].ravel()), 1.0)
        return votes[:, columns] / k + TIE_BREAK * best[:, columns]

    def route(
        self,
        queries: np.ndarray,
        *,
        policy: RoutePolicy = RoutePolicy(),
        evidence: np.ndarray | None = None,
        only: Collection[str] | None = None,
    ) -> list[RouteDecision]:
        """One decision per query row.

        ``evidence`` (n, E), columns in ``experts`` order, is added to the pilot
        scores: for instance the experts' shares of the documents the query
        finds (:func:`router.document_votes`). Margins and ``min_score`` then
        apply to the sum.

        ``only`` restricts the decision to those experts (a caller allowed to
        read some experts only): the others are dropped before anything is
        ranked, so they are never chosen, never fanned out to, never shown in
        ``scores``, and ``evidence`` then has one column per :meth:`routable`
        expert. NoExpertsError when none of ``only`` is routable.
        """
        names = self.routable(only)
        scores = self.scores(queries, only=only)
        if evidence is not None:
            evidence = np.asarray(evidence, dtype=np.float32)
            if evidence.shape != scores.shape:
                raise PilotError(f"evidence must have shape {scores.shape} (queries, experts), got {evidence.shape}")
            scores = scores + evidence
        order = np.argsort(-scores, axis=1, kind="stable")
        decisions = []
        for row, ranking in zip(scores, order):
            ranked = tuple((names[i], float(row[i])) for i in ranking)
            margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else float("inf")
            decisions.append(_decide(ranked, margin, policy))
        return decisions


def _decide(ranked: tuple[tuple[str, float], ...], margin: float, policy: RoutePolicy) -> RouteDecision:
    best_name, best_score = ranked[0]
    top = tuple(name for name, _ in ranked[: policy.top_k])
    if policy.min_score is not None and best_score < policy.min_score:
        return RouteDecision(
            top,
            "fallback",
            ranked,
            margin,
            use_adapters=False,
            reason=f"best score {best_score:.3f} < min_score {policy.min_score}: base encoder",
        )
    if policy.fanout_margin is not None:
        top = tuple(name for name, score in ranked[: policy.top_k] if best_score - score < policy.fanout_margin)
    if len(top) > 1:
        why = "always" if policy.fanout_margin is None else f"within {policy.fanout_margin} of the top score"
        return RouteDecision(top, "fanout", ranked, margin, reason=f"fan-out to {len(top)} experts ({why})")
    return RouteDecision((best_name,), "top1", ranked, margin, reason="top-1")


def forced_decision(name: str) -> RouteDecision:
    """The decision for a caller who named the expert: no routing scores."""
    return RouteDecision((name,), "forced", (), float("nan"), reason="expert named by the caller")
