"""Routed search over the loaded experts, for one query, one request or a micro-batch of requests.

Flow of a batch: one base-encoder pass over every query that is routed → the
corpus votes (optional: every expert's dense and BM25 index searched with the
base vector and the text) → the router, each request with its own policy →
one mixed-adapter pass for the rows that need a query vector → per expert,
one dense and one BM25 search for all its rows, fused per row where hybrid
(:mod:`app.retrieval`) → documents → fusion for fanned-out rows.

The set of experts is an immutable snapshot held by a
:class:`~app.snapshots.SnapshotHolder`: ``add``/``remove`` publish a new one,
a search leases the current one for its whole batch, and an expert that is
removed or replaced is unloaded only when the last search holding it is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np

from app.errors import ExpertUnavailableError, PayloadTooLargeError
from app.jobs import (
    AUTO_MODEL,
    BASE_MODEL,
    RESERVED_NAMES,
    BatchResult,
    EmbedJob,
    EmbedResult,
    ExpertHit,
    InputType,
    SearchJob,
    SearchResult,
    check_queries,
)
from app.loading import LoadedExpert, load_expert, unload_expert
from app.retrieval import Retrieval, RetrievalOptions, check_lexical, expert_retrieval, search_collection
from app.snapshots import SnapshotHolder
from experts import Encoder, Manifest, UnknownExpertError, list_expert_dirs
from index import (
    FieldInfo,
    FilterExpr,
    IndexFileError,
    InvalidFilterError,
    LiveView,
    NoLexicalIndexError,
    check_fields,
    reciprocal_rank_fusion,
)
from router import NoExpertsError, RouteDecision, RoutePolicy, Router, document_votes, forced_decision

logger = logging.getLogger(__name__)

#: What a query over the token limit gets: cut to the limit (and told so), or refused (413).
LongQueries = Literal["truncate", "error"]
LONG_QUERIES: tuple[LongQueries, ...] = ("truncate", "error")
_TOKEN_SLACK = 4

#: Corpus evidence the router may add to pilot scores (see ``SearchEngine``).
RouteEvidence = Literal["none", "documents", "bm25", "documents+bm25"]
ROUTE_EVIDENCE: tuple[RouteEvidence, ...] = ("none", "documents", "bm25", "documents+bm25")

# Re-exported: callers have always imported the engine's inputs and outputs from here.
__all__ = [
    "AUTO_MODEL",
    "BASE_MODEL",
    "RESERVED_NAMES",
    "BatchResult",
    "EmbedJob",
    "EmbedResult",
    "ExpertHit",
    "SearchEngine",
    "SearchJob",
    "SearchResult",
]

@dataclass(frozen=True)
class _Snapshot:
    experts: Mapping[str, LoadedExpert]
    router: Router


class SearchEngine:
    """Holds the encoder and a snapshot of loaded experts; thread-safe.

    >>> engine = SearchEngine.open(Path("data/experts"), Encoder())
    >>> engine.search(["lift of a swept wing"], k=5).results[0].decision.experts
    ('cranfield',)
    """

    def __init__(
        self,
        encoder: Encoder,
        *,
        query_max_length: int = 64,
        aggregate: str = "max",
        neighbours: int = 5,
        retrieval: Retrieval = Retrieval(),
        evidence: RouteEvidence = "none",
        vote_depth: int = 20,
        long_queries: LongQueries = "truncate",
    ) -> None:
        if evidence not in ROUTE_EVIDENCE:
            raise ValueError(f"Invalid evidence {evidence!r}. Valid choices are: {', '.join(ROUTE_EVIDENCE)}")
        if long_queries not in LONG_QUERIES:
            raise ValueError(f"Invalid long_queries {long_queries!r}. Valid choices are: {', '.join(LONG_QUERIES)}")
        self.long_queries: LongQueries = long_queries
        self.encoder = encoder
        self.query_max_length = query_max_length
        #: Corpus evidence added to the pilot scores: votes of the best documents in every
        #: expert's dense index (base vector) and/or BM25 index, ``vote_depth`` deep.
        self.evidence: RouteEvidence = evidence
        self.vote_depth = vote_depth
        #: How a search with no retrieval of its own searches an expert whose manifest sets none.
        self.retrieval = retrieval
        empty = _Snapshot({}, Router({}, aggregate=aggregate, neighbours=neighbours))  # type: ignore[arg-type]
        self._holder: SnapshotHolder[_Snapshot] = SnapshotHolder(empty)
        self._write_lock = threading.Lock()
        self._document_locks: dict[str, threading.Lock] = {}
        #: Experts found on disk that could not be loaded, with the reason.
        self.unavailable: dict[str, str] = {}
        #: Told (expert, reason) when a loaded expert's files fail during a search (the publisher takes it out).
        self.on_expert_failure: Callable[[LoadedExpert, str], None] | None = None

    @classmethod
    def open(cls, root: Path, encoder: Encoder, *, verify_checksums: bool = True, **options: object) -> SearchEngine:
        """Load every expert under ``root``; a broken one is reported in ``unavailable``, the rest serve."""
        engine = cls(encoder, **options)  # type: ignore[arg-type]
        for directory in list_expert_dirs(root):
            try:
                engine.add(load_expert(directory, encoder, verify_checksums=verify_checksums))
            except Exception as exc:  # one bad expert must not stop the others
                logger.error("expert %s is unavailable: %s", directory.path.name, exc)
                engine.unavailable[directory.path.name] = str(exc)
        return engine

    # ------------------------------------------------------------------ experts
    @property
    def experts(self) -> Mapping[str, LoadedExpert]:
        """The published experts (for listings; a search leases its own snapshot)."""
        return self._holder.current.experts

    @property
    def router(self) -> Router:
        """The current router (immutable; a search leases its own snapshot)."""
        return self._holder.current.router

    @property
    def in_flight(self) -> int:
        """Searches holding a snapshot right now."""
        return self._holder.in_flight

    def add(self, expert: LoadedExpert) -> threading.Event:
        """Publish a loaded expert (replacing one of the same name) with one snapshot swap.

        A replaced expert is unloaded once the searches still holding it finish;
        the returned event is set then.
        """
        with self._write_lock:
            old = self._holder.current
            router = old.router.without_expert(expert.name) if expert.name in old.router.experts else old.router
            if expert.pilots is not None:
                router = router.with_expert(expert.name, expert.pilots)
            replaced = old.experts.get(expert.name)
            releases = [partial(unload_expert, replaced, self.encoder)] if replaced is not None else []
            done = self._holder.publish(_Snapshot({**old.experts, expert.name: expert}, router), releases=releases)
            self.unavailable.pop(expert.name, None)
        expert.documents.on_merged = self._merged  # no cycle: the engine holds experts only through snapshots
        return done

    def _merged(self, documents: object, manifest: Manifest) -> None:
        """A merge published a new manifest version of a loaded expert: show it, without reloading anything.

        The live collection already searches the merged generation; only the
        manifest the listing shows (version, index directory, count) changes.
        """
        with self._write_lock:
            old = self._holder.current
            current = next((e for e in old.experts.values() if e.documents is documents), None)
            if current is None:
                return  # removed or replaced meanwhile
            refreshed = replace(current, manifest=manifest)
            self._holder.publish(_Snapshot({**old.experts, current.name: refreshed}, old.router))

    def remove(self, name: str) -> threading.Event:
        """Unpublish an expert at once; it is unloaded when the searches holding it finish (event set then)."""
        with self._write_lock:
            old = self._holder.current
            expert = self._require(old, name)
            router = old.router.without_expert(name) if name in old.router.experts else old.router
            remaining = {key: value for key, value in old.experts.items() if key != name}
            return self._holder.publish(
                _Snapshot(remaining, router), releases=[partial(unload_expert, expert, self.encoder)]
            )

    def document_lock(self, name: str) -> threading.Lock:
        """Serialises the document writes of expert ``name`` with each other and with its replacement.

        Writers to different experts never wait on each other; searches never take it.
        """
        with self._write_lock:
            return self._document_locks.setdefault(name, threading.Lock())

    def close(self) -> None:
        """Unpublish everything; each expert is unloaded once nothing holds it."""
        with self._write_lock:
            old = self._holder.current
            releases = [partial(unload_expert, expert, self.encoder) for expert in old.experts.values()]
            empty = Router({}, aggregate=old.router.aggregate, neighbours=old.router.neighbours)
            self._holder.publish(_Snapshot({}, empty), releases=releases)

    @staticmethod
    def _require(snapshot: _Snapshot, name: str) -> LoadedExpert:
        try:
            return snapshot.experts[name]
        except KeyError:
            raise _unknown(snapshot, name) from None

    # ------------------------------------------------------------------ search
    def route(self, queries: Sequence[str], *, policy: RoutePolicy = RoutePolicy()) -> list[RouteDecision]:
        """Routing decisions only (no search): what ``rr route`` shows."""
        check_queries(queries)
        with self._holder.lease() as snapshot:
            base = self.encoder.embed(queries, max_length=self.query_max_length)
            return snapshot.router.route(base, policy=policy)

    def search(
        self,
        queries: Sequence[str],
        *,
        k: int = 10,
        expert: str | None = None,
        policy: RoutePolicy = RoutePolicy(),
        retrieval: RetrievalOptions | None = None,
        filter: FilterExpr | None = None,
    ) -> BatchResult:
        """Search a batch of queries, each routed on its own (or all sent to ``expert``)."""
        check_queries(queries)
        job = SearchJob(tuple(queries), k=k, expert=expert, policy=policy, retrieval=retrieval, filter=filter)
        (outcome,) = self.search_jobs([job])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def search_jobs(self, jobs: Sequence[SearchJob]) -> list[BatchResult | Exception]:
        """Answer several requests in one pass of each stage; one outcome per job, in order.

        A job that cannot run (an unknown expert, nothing to route to) gets its
        exception as its outcome; the others are answered as usual.
        """
        with self._holder.lease() as snapshot:  # one consistent view for the whole batch
            return _BatchRun(self, snapshot, jobs).run()

    # ------------------------------------------------------------------ embeddings
    def embed(self, texts: Sequence[str], *, model: str = BASE_MODEL, input_type: InputType = "query") -> EmbedResult:
        """Embed texts with the base encoder, a named expert's adapter, or the routed expert's (``auto``)."""
        (outcome,) = self.embed_jobs([EmbedJob(tuple(texts), model=model, input_type=input_type)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def embed_jobs(self, jobs: Sequence[EmbedJob]) -> list[EmbedResult | Exception]:
        """One outcome per job; jobs asking for the same model and input type share one pass."""
        outcomes: list[EmbedResult | Exception | None] = [None] * len(jobs)
        groups: dict[tuple[str, str], list[int]] = defaultdict(list)
        for position, job in enumerate(jobs):
            groups[job.model, job.input_type].append(position)
        with self._holder.lease() as snapshot:
            for (model, input_type), positions in groups.items():
                texts = [text for p in positions for text in jobs[p].texts]
                try:
                    result = self._embed(snapshot, texts, model, input_type)  # type: ignore[arg-type]
                except (UnknownExpertError, NoExpertsError) as exc:
                    for p in positions:
                        outcomes[p] = exc
                    continue
                start = 0
                for p in positions:
                    end = start + len(jobs[p].texts)
                    decisions = result.decisions[start:end] if result.decisions is not None else None
                    outcomes[p] = EmbedResult(result.vectors[start:end], result.adapters_of[start:end], decisions)
                    start = end
        return outcomes  # type: ignore[return-value]

    def _embed(self, snapshot: _Snapshot, texts: list[str], model: str, input_type: InputType) -> EmbedResult:
        max_length = self.query_max_length if input_type == "query" else None
        if model == BASE_MODEL:
            return EmbedResult(self.encoder.embed(texts, max_length=max_length), [None] * len(texts))
        decisions = None
        if model == AUTO_MODEL:
            base = self.encoder.embed(texts, max_length=self.query_max_length)
            decisions = snapshot.router.route(base)
            names = [decision.experts[0] for decision in decisions]
        else:
            self._require(snapshot, model)
            names = [model] * len(texts)
        adapters = [_adapter_for(snapshot.experts[name], input_type) for name in names]
        vectors = self.encoder.embed(texts, expert=adapters, max_length=max_length)
        return EmbedResult(vectors, [name if adapter else None for name, adapter in zip(names, adapters)], decisions)


def _adapter_for(expert: LoadedExpert, input_type: InputType) -> str | None:
    """A query-side expert embeds documents with the base encoder: that is what its index holds."""
    if input_type == "document" and expert.manifest.adapter.side == "query":
        return None
    return expert.adapter


class _BatchRun:
    """One micro-batch through the stages; rows are the queries of every runnable job, flattened."""

    def __init__(self, engine: SearchEngine, snapshot: _Snapshot, jobs: Sequence[SearchJob]) -> None:
        self.engine, self.snapshot, self.jobs = engine, snapshot, jobs
        self.outcomes: list[BatchResult | Exception | None] = [None] * len(jobs)
        for position, job in enumerate(jobs):
            if job.expert is not None and job.expert not in snapshot.experts:
                self.outcomes[position] = _unknown(snapshot, job.expert)
            elif job.expert is None and not len(snapshot.router):
                self.outcomes[position] = NoExpertsError(
                    "no experts to route to: add an expert with pilots first, or name one with `expert`"
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
        # A tokenizer makes at most one token per UTF-8 byte, plus a word-start marker and the special
        # tokens: short queries (most of them) cannot be over the limit and are not tokenized again.
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
        evidence_row = {row: i for i, row in enumerate(routed)}
        decisions: list[RouteDecision] = [forced_decision("")] * len(self.rows)
        for position in self.live:
            job, rows = self.jobs[position], self.rows_of[position]
            if job.expert is not None:
                decided = [forced_decision(job.expert)] * len(rows)
            else:
                votes = None if evidence is None else evidence[[evidence_row[row] for row in rows]]
                decided = self.snapshot.router.route(base[rows], policy=job.policy, evidence=votes)
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
        hits_of = self._search(pairs, asks, vectors)
        timings["search_ms"] = _elapsed(clock)

        lists_of: dict[int, list[list[ExpertHit]]] = defaultdict(list)
        mode_of: dict[int, str] = {}
        for position, (row, _) in enumerate(pairs):
            lists_of[row].append(hits_of[position])
            mode_of.setdefault(row, asks[position].mode)
        n_queries = sum(len(job.queries) for job in self.jobs)
        for position in self.live:
            if self.outcomes[position] is not None:
                continue
            k, results = self.jobs[position].k, []
            for i, row in enumerate(self.rows_of[position]):
                lists = lists_of[row]
                hits = lists[0] if len(lists) == 1 else reciprocal_rank_fusion(lists, limit=k, key=_expert_and_id)
                matched = None
                if self.jobs[position].filter is not None:
                    matched = sum(len(self.allowed(position, name)) for name in decisions[row].experts)  # type: ignore[arg-type]
                truncated = self.truncated[position][i]
                results.append(SearchResult(self.rows[row][1], hits, decisions[row], mode_of[row], truncated, matched))  # type: ignore[arg-type]
            self.outcomes[position] = BatchResult(results, dict(timings), len(self.jobs), n_queries)
        return self.outcomes  # type: ignore[return-value]

    def _evidence(self, rows: list[int], base: np.ndarray) -> np.ndarray | None:
        """(len(rows), E) votes of the routable experts' collections for the routed rows, or None when off."""
        router, kind = self.snapshot.router, self.engine.evidence
        if kind == "none" or not rows or not len(router):
            return None
        depth = self.engine.vote_depth
        collections = [self.views[name] for name in router.experts]
        votes = np.zeros((len(rows), len(router)), dtype=np.float32)
        if kind in ("documents", "documents+bm25"):
            votes += document_votes([c.search_dense(base[rows], depth)[0] for c in collections], depth=depth)
        if kind in ("bm25", "documents+bm25"):
            texts = [self.rows[row][1] for row in rows]
            none = np.zeros((len(rows), 0), dtype=np.float32)  # an expert without BM25 gets no lexical votes
            scores = [c.search_lexical(texts, depth)[0] if c.has_lexical else none for c in collections]
            votes += document_votes(scores, depth=depth)
        return votes

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

    def _search(self, pairs: list[tuple[int, str]], asks: list[Retrieval], vectors: np.ndarray) -> dict[int, list[ExpertHit]]:
        """Per expert, one search of its collection for every pair routed there, each with its own k and mode."""
        by_expert: dict[str, list[int]] = defaultdict(list)
        for position, (_, name) in enumerate(pairs):
            by_expert[name].append(position)
        hits_of: dict[int, list[ExpertHit]] = {}
        for name, positions in by_expert.items():
            texts = [self.rows[pairs[p][0]][1] for p in positions]
            jobs = [self.rows[pairs[p][0]][0] for p in positions]
            expert = self.snapshot.experts[name]
            try:
                wanted = [(self.jobs[j].k, asks[p], self.allowed(j, name)) for j, p in zip(jobs, positions)]
                found = search_collection(self.views[name], texts, vectors[positions], wanted)
            except IndexFileError as exc:  # its files broke after loading: its queries fail, not the whole batch
                failure = self._expert_failed(expert, exc)
                for position in positions:
                    self.outcomes[self.rows[pairs[position][0]][0]] = failure
                    hits_of[position] = []
                continue
            for position, hits in zip(positions, found, strict=True):
                hits_of[position] = [ExpertHit.of(name, hit) for hit in hits]
        return hits_of

    def _expert_failed(self, expert: LoadedExpert, exc: IndexFileError) -> Exception:
        """The outcome of the jobs that searched a broken expert: a 503 for the service, the index's error for
        the CLI (no one to take the expert out of service; `rr` prints that error as one line)."""
        logger.error("expert %r cannot be searched: %s", expert.name, exc)
        if self.engine.on_expert_failure is None:
            return exc
        reason = f"its files failed while searching: {exc}"
        self.engine.on_expert_failure(expert, reason)
        return ExpertUnavailableError(
            f"expert {expert.name!r} is published but cannot be searched: {reason}; it is out of service until an "
            "admin publishes it again (POST /admin/experts with replace)",
            details={"expert": expert.name},
        )


def _fields_of(views: Iterable[LiveView]) -> dict[str, FieldInfo]:
    """The metadata fields of several collections together: a field is known if any has it."""
    fields: dict[str, FieldInfo] = {}
    for view in views:
        for name, info in view.metadata_fields().items():
            seen = fields.get(name)
            if seen is not None:
                info = FieldInfo(name, seen.types | info.types, seen.documents + info.documents, seen.indexed and info.indexed)
            fields[name] = info
    return fields


def _unknown(snapshot: _Snapshot, name: str) -> UnknownExpertError:
    return UnknownExpertError(f"Expert {name!r} not found. Published experts: {sorted(snapshot.experts)}")


def _expert_and_id(hit: ExpertHit) -> tuple[str, str]:
    return hit.expert, hit.id


def _elapsed(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)
