"""One micro-batch of search jobs through the engine's stages, over one snapshot of the experts.

Flow: one base-encoder pass over every query that is routed → the corpus
votes (optional: the union of every routed collection searched once with the
base vector and the text, plus each expert's live delta) → the router, each request with its own policy → one
mixed-adapter pass for the rows that need a query vector → per expert, one
dense and one BM25 search for all its rows (each job's metadata filter inside
them), fused per row where hybrid (:mod:`app.engine.retrieval`) → documents → fusion
for fanned-out rows. Every stage reads the same live view of each expert,
taken when the batch starts.

:class:`~app.engine.engine.SearchEngine` owns the encoder, the settings and the
snapshots; this module is what it does with them for one batch.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from app.engine.jobs import BatchResult, ExpertHit, SearchJob, SearchResult, not_allowed
from app.engine.merging import list_depth, merge_expert_lists
from app.engine.retrieval import Retrieval, SearchMode, check_lexical, expert_retrieval, search_collection
from app.engine.shadow_compare import SHADOW_DEPTH, ShadowQuery
from app.engine.snapshots import Snapshot
from app.engine.votes import corpus_votes
from app.errors import PayloadTooLargeError
from experts import UnknownExpertError
from index import (
    FieldInfo,
    IndexFileError,
    InvalidFilterError,
    LiveView,
    NoLexicalIndexError,
    check_fields,
)
from router import NoExpertsError, RouteDecision, RoutePolicy, forced_decision

if TYPE_CHECKING:
    from app.engine.engine import SearchEngine

__all__ = ["BatchRun", "unknown_expert"]

logger = logging.getLogger(__name__)

#: A tokenizer makes at most one token per UTF-8 byte, plus a word-start marker and special tokens.
_TOKEN_SLACK = 4


class BatchRun:
    """One micro-batch through the stages; rows are the queries of every runnable job, flattened."""

    def __init__(self, engine: SearchEngine, snapshot: Snapshot, jobs: Sequence[SearchJob]) -> None:
        self.engine, self.snapshot, self.jobs = engine, snapshot, jobs
        self.outcomes: list[BatchResult | Exception | None] = [None] * len(jobs)
        for position, job in enumerate(jobs):
            allowed = job.allowed_experts
            if job.expert is not None and allowed is not None and job.expert not in allowed:
                self.outcomes[position] = not_allowed(job.expert, allowed)  # before existence: nothing leaks
            elif job.expert is not None and job.expert not in snapshot.experts:
                self.outcomes[position] = unknown_expert(snapshot, job.expert)
            elif job.expert is None and not len(snapshot.router):
                self.outcomes[position] = NoExpertsError(
                    "no experts to route to: add an expert with pilots first, or name one with `expert`"
                )
            elif job.expert is None and allowed is not None and not snapshot.router.routable(allowed):
                self.outcomes[position] = NoExpertsError(
                    f"none of the experts this request may use ({sorted(allowed)}) can be routed to: "
                    "name one with `expert`, or publish one with pilots"
                )
        #: Each expert's live view, taken once: every stage of the batch sees the same documents.
        self.views: dict[str, LiveView] = {name: expert.view() for name, expert in snapshot.experts.items()}
        self.truncated = self._check_lengths()
        self._check_filters()
        self.live = [p for p, outcome in enumerate(self.outcomes) if outcome is None]
        self.rows: list[tuple[int, str]] = [(p, query) for p in self.live for query in jobs[p].queries]
        self.rows_of: dict[int, list[int]] = defaultdict(list)
        for row, (position, _) in enumerate(self.rows):
            self.rows_of[position].append(row)
        self._allowed: dict[tuple[int, str], np.ndarray] = {}  # (job, expert) -> row ids its filter allows

    def _check_lengths(self) -> dict[int, list[bool]]:
        """Per job, which queries are over the token limit; with ``long_queries="error"`` such a job fails (413)."""
        engine, over = self.engine, {}
        limit = engine.query_max_length
        positions = [p for p, outcome in enumerate(self.outcomes) if outcome is None]
        # Short queries (most of them) cannot be over the limit (see _TOKEN_SLACK): not tokenized again.
        texts = [q for p in positions for q in self.jobs[p].queries if len(q.encode()) + _TOKEN_SLACK > limit]
        counted = dict(zip(texts, engine.encoder.token_counts(texts) if texts else []))
        for p in positions:
            tokens = [counted.get(query, 0) for query in self.jobs[p].queries]
            over[p] = [n > limit for n in tokens]
            if engine.long_queries == "error" and any(over[p]):
                first = over[p].index(True)
                self.outcomes[p] = PayloadTooLargeError(
                    f"query {first} has {tokens[first]} tokens; the limit is {limit} (RR_QUERY_MAX_LENGTH); "
                    "shorten it, or let the server truncate long queries (RR_LONG_QUERIES=truncate)",
                    details={"query": first, "tokens": tokens[first], "limit": limit},
                )
        return over

    def _check_filters(self) -> None:
        """A filter naming a field that no expert it may search has (or malformed for them) fails its job (422).

        A job sent to one expert is checked against that expert's fields; a
        routed one against every expert's, since routing picks the expert
        later: a field only some experts have simply matches nothing in the others.
        """
        union: dict[str, FieldInfo] | None = None
        for p, job in enumerate(self.jobs):
            if job.filter is None or self.outcomes[p] is not None:
                continue
            if job.expert is not None:
                fields = self.views[job.expert].metadata_fields()
            elif job.allowed_experts is not None:  # only the experts it may read: the others' fields stay unseen
                fields = _fields_of(view for name, view in self.views.items() if name in job.allowed_experts)
            else:
                if union is None:
                    union = _fields_of(self.views.values())
                fields = union
            try:
                check_fields(job.filter, fields)
            except InvalidFilterError as exc:
                self.outcomes[p] = exc

    def allowed(self, position: int, name: str) -> np.ndarray | None:
        """The row ids of expert ``name`` that job ``position``'s filter allows (None: no filter); resolved once."""
        expression = self.jobs[position].filter
        if expression is None:
            return None
        key = (position, name)
        if key not in self._allowed:
            self._allowed[key] = self.views[name].select(expression, check=False)
        return self._allowed[key]

    def run(self) -> list[BatchResult | Exception]:
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        encoder, max_length = self.engine.encoder, self.engine.query_max_length
        base = np.zeros((len(self.rows), encoder.dim), dtype=np.float32)
        routed = [row for row, (p, _) in enumerate(self.rows) if self.jobs[p].expert is None]
        if routed:
            base[routed] = encoder.embed([self.rows[row][1] for row in routed], max_length=max_length, cache=True)
        timings["base_ms"] = _elapsed(clock)

        clock = time.perf_counter()
        evidence = self._evidence(routed, base)
        decisions: list[RouteDecision] = [forced_decision("")] * len(self.rows)
        for position in self.live:
            job, rows = self.jobs[position], self.rows_of[position]
            if job.expert is not None:
                decided = [forced_decision(job.expert)] * len(rows)
            else:
                votes = np.stack([evidence[row] for row in rows]) if evidence else None
                decided = self.snapshot.router.route(
                    base[rows], policy=self._policy(position), evidence=votes, only=job.allowed_experts
                )
            for row, decision in zip(rows, decided):
                decisions[row] = decision
        timings["route_ms"] = _elapsed(clock)
        self._refuse_missing_lexical(decisions)

        clock = time.perf_counter()
        pairs = [
            (row, name)
            for row, decision in enumerate(decisions)
            if self.outcomes[self.rows[row][0]] is None
            for name in decision.experts
        ]
        asks = [self._retrieval(row, name) for row, name in pairs]
        vectors = self._pair_vectors(pairs, asks, decisions, base, set(routed))
        timings["expert_ms"] = _elapsed(clock)

        clock = time.perf_counter()
        depths = [self._depth(row, decisions[row]) for row, _ in pairs]
        hits_of = self._search(pairs, asks, vectors, depths)
        timings["search_ms"] = _elapsed(clock)

        lists_of: dict[int, list[list[ExpertHit]]] = defaultdict(list)
        shares_of: dict[int, list[float]] = defaultdict(list)
        mode_of: dict[int, SearchMode] = {}
        for position, (row, _) in enumerate(pairs):
            lists_of[row].append(hits_of[position])
            shares_of[row].append(asks[position].dense_share)
            mode_of.setdefault(row, asks[position].mode)
        n_queries = sum(len(job.queries) for job in self.jobs)
        for position in self.live:
            if self.outcomes[position] is not None:
                continue
            k, results = self.jobs[position].k, []
            for i, row in enumerate(self.rows_of[position]):
                hits = merge_expert_lists(lists_of[row], shares_of[row], decisions[row], self._policy(position), k=k)
                matched: int | None = None
                if self.jobs[position].filter is not None:  # then allowed() is never None
                    allowed = [self.allowed(position, name) for name in decisions[row].experts]
                    matched = sum(len(ids) for ids in allowed if ids is not None)
                truncated = self.truncated[position][i]
                results.append(SearchResult(self.rows[row][1], hits, decisions[row], mode_of[row], truncated, matched))
            self.outcomes[position] = BatchResult(results, dict(timings), len(self.jobs), n_queries)
        if self.engine.shadows.experts:  # answered: a share goes to the candidates, in the shadows' own thread
            self.engine.shadows.offer(self._shadowed(pairs, depths, hits_of, decisions))
        return self.outcomes  # type: ignore[return-value]

    def _shadowed(
        self,
        pairs: list[tuple[int, str]],
        depths: list[int],
        hits_of: dict[int, list[ExpertHit]],
        decisions: list[RouteDecision],
    ) -> list[ShadowQuery]:
        """The answered queries of shadowed experts, each with how its expert (the first it was sent to) searched it."""
        shadowed, queries = self.engine.shadows.experts, []
        for position, (row, name) in enumerate(pairs):
            job_position, text = self.rows[row]
            if name not in shadowed or decisions[row].experts[:1] != (name,):
                continue
            if not isinstance(self.outcomes[job_position], BatchResult):
                continue
            job = self.jobs[job_position]
            served = tuple(hit.id for hit in hits_of[position][:SHADOW_DEPTH])
            use_adapter = decisions[row].use_adapters
            queries.append(ShadowQuery(name, text, depths[position], job.retrieval, job.filter, use_adapter, served))
        return queries

    def _evidence(self, rows: list[int], base: np.ndarray) -> dict[int, np.ndarray]:
        """Each routed row's votes from the collections it may be routed to (empty when evidence is off).

        :func:`app.engine.votes.corpus_votes` on this batch's views: the same
        function ``SearchEngine.route`` calls, so both make one decision. Rows
        are grouped by the experts their job may read: a restricted job's votes
        come from its experts' collections alone, one column per
        ``router.routable(allowed)``, as :meth:`router.Router.route` takes them.
        With a shared IDF, its BM25 scores keep the one IDF of every routed
        collection: a term statistic, so that a restricted search ranks its
        experts as an unrestricted one would; no other collection's document votes.
        """
        if self.engine.evidence == "none" or not rows:
            return {}
        groups: dict[frozenset[str] | None, list[int]] = defaultdict(list)
        for row in rows:
            job = self.jobs[self.rows[row][0]]
            if job.allowed_experts is None or self.snapshot.router.routable(job.allowed_experts):
                groups[job.allowed_experts].append(row)
        votes_of: dict[int, np.ndarray] = {}
        for allowed, members in groups.items():
            views = [self.views[name] for name in self.snapshot.router.routable(allowed)]
            texts = [self.rows[row][1] for row in members]
            votes = corpus_votes(
                views,
                base[members],
                texts,
                evidence=self.engine.evidence,
                depth=self.engine.vote_depth,
                shared_idf=self.engine.shared_idf(self.snapshot),
                union=self.snapshot.union,
                rule=self.engine.vote_rule,
            )
            if votes is not None:
                votes_of.update(zip(members, votes))
        return votes_of

    def _depth(self, row: int, decision: RouteDecision) -> int:
        """Hits to fetch for one (row, expert) pair: the job's ``k``, or the merge depth when a score merge follows."""
        position = self.rows[row][0]
        return list_depth(self.jobs[position].k, decision, self._policy(position))

    def _policy(self, position: int) -> RoutePolicy:
        """Job ``position``'s routing policy: its own, else the engine's default."""
        return self.jobs[position].policy or self.engine.policy

    def _expert_default(self, name: str) -> Retrieval:
        """How ``name`` is searched when a request says nothing: the settings, then its manifest's tuned fusion."""
        return expert_retrieval(self.engine.retrieval, self.snapshot.experts[name].manifest.retrieval)

    def _retrieval(self, row: int, name: str) -> Retrieval:
        """The job's options over the expert's default, made dense where the default needs a missing lexical index."""
        job = self.jobs[self.rows[row][0]]
        default = self._expert_default(name)
        if job.retrieval is not None:
            return job.retrieval.over(default)
        if default.needs_lexical and not self.views[name].has_lexical:
            return replace(default, mode="dense")
        return default

    def _refuse_missing_lexical(self, decisions: list[RouteDecision]) -> None:
        """A job that asked for lexical or hybrid search of an expert without a BM25 index fails, with the reason."""
        for position in self.live:
            options = self.jobs[position].retrieval
            if options is None:
                continue
            names = dict.fromkeys(name for row in self.rows_of[position] for name in decisions[row].experts)
            for name in names:
                try:
                    check_lexical(name, self.views[name], options.over(self._expert_default(name)))
                except NoLexicalIndexError as exc:
                    self.outcomes[position] = exc
                    break

    def _pair_vectors(
        self,
        pairs: list[tuple[int, str]],
        asks: list[Retrieval],
        decisions: list[RouteDecision],
        base: np.ndarray,
        have_base: set[int],
    ) -> np.ndarray:
        """One vector per (row, expert): the base vector, or one mixed-adapter pass for all adapter rows.

        Rows sent to an expert by name have no base vector yet; where they need
        one (an untrained adapter) it is computed in the same pass, as a base
        row. A lexical-only pair needs no vector at all (its row stays zero).
        """
        experts = self.snapshot.experts
        adapters = [
            experts[name].adapter if decisions[row].use_adapters else None for row, name in pairs
        ]  # fmt: skip
        need = [i for i, adapter in enumerate(adapters) if adapter is not None and asks[i].needs_vector]
        missing = sorted(
            {row for i, (row, _) in enumerate(pairs) if adapters[i] is None and asks[i].needs_vector} - have_base
        )
        texts = [self.rows[pairs[i][0]][1] for i in need] + [self.rows[row][1] for row in missing]
        names = [adapters[i] for i in need] + [None] * len(missing)
        vectors_out = np.zeros((0, base.shape[1]), dtype=np.float32)
        if texts:
            vectors_out = self.engine.encoder.embed(texts, expert=names, max_length=self.engine.query_max_length)
        base[missing] = vectors_out[len(need) :]
        vectors = base[[row for row, _ in pairs]] if pairs else np.zeros((0, base.shape[1]), dtype=np.float32)
        vectors[need] = vectors_out[: len(need)]
        return vectors

    def _search(
        self, pairs: list[tuple[int, str]], asks: list[Retrieval], vectors: np.ndarray, depths: list[int]
    ) -> dict[int, list[ExpertHit]]:
        """Per expert, one search of its collection for every pair routed there, each with its own depth and mode."""
        by_expert: dict[str, list[int]] = defaultdict(list)
        for position, (_, name) in enumerate(pairs):
            by_expert[name].append(position)
        hits_of: dict[int, list[ExpertHit]] = {}
        for name, positions in by_expert.items():
            texts = [self.rows[pairs[p][0]][1] for p in positions]
            jobs = [self.rows[pairs[p][0]][0] for p in positions]
            expert = self.snapshot.experts[name]
            try:
                wanted = [(depths[p], asks[p], self.allowed(j, name)) for j, p in zip(jobs, positions)]
                found = search_collection(self.views[name], texts, vectors[positions], wanted, expert=name)
            except IndexFileError as exc:  # its files broke after loading: its queries fail, not the whole batch
                failure = self.engine.broken(expert, exc)
                for position in positions:
                    self.outcomes[self.rows[pairs[position][0]][0]] = failure
                    hits_of[position] = []
                continue
            for position, hits in zip(positions, found, strict=True):
                hits_of[position] = hits
        return hits_of


def _fields_of(views: Iterable[LiveView]) -> dict[str, FieldInfo]:
    """The metadata fields of several collections together: a field is known if any has it."""
    fields: dict[str, FieldInfo] = {}
    for view in views:
        for name, info in view.metadata_fields().items():
            seen = fields.get(name)
            if seen is not None:
                info = FieldInfo(
                    name, seen.types | info.types, seen.documents + info.documents, seen.indexed and info.indexed
                )
            fields[name] = info
    return fields


def unknown_expert(snapshot: Snapshot, name: str) -> UnknownExpertError:
    return UnknownExpertError(f"Expert {name!r} not found. Published experts: {sorted(snapshot.experts)}")


def _elapsed(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
