"""Request and response bodies of the HTTP API, with their limits and the examples shown at /docs.

Limits that protect the model (text length, ``k``, fan-out width) live here,
so an oversize field is a 422 before anything runs. The number of queries per
request is a setting, checked by the route (413 over it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasChoices, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.api.schemas_rerank import SearchRerankOptions
from app.api.text_fields import QueryText
from app.engine.jobs import ExpertHit, SearchResult
from app.engine.output import decision_dict
from experts import check_expert_name
from index import Filter
from router import RoutePolicy

MAX_K = 1_000
MAX_FANOUT = 16
#: Pilot score (<= 1) plus dense and BM25 corpus votes (<= 1 each), with the knn tie-breaker's 0.001 on top.
MAX_ROUTER_SCORE = 3.01


ExpertName = Annotated[str, StringConstraints(max_length=64), AfterValidator(check_expert_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


# ---------------------------------------------------------------------- search
class RouteOptions(_Strict):
    """How the router may widen or drop its choice; a field left unset keeps the server's default (RR_ROUTE_*)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    top_k: int | None = Field(
        None,
        ge=1,
        le=MAX_FANOUT,
        description="Most experts searched when fanning out or falling back (RR_ROUTE_TOP_K).",
    )
    fanout_margin: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("threshold", "fanout_margin"),
        description="Alias `threshold`. Fan out to the experts among the top `top_k` whose router score is within "
        "this of the top one's (RR_ROUTE_FANOUT_MARGIN); with top_k > 1 and no margin anywhere, always fan out.",
    )
    min_score: float | None = Field(
        None,
        ge=-1,
        le=MAX_ROUTER_SCORE,
        allow_inf_nan=False,
        description="Below this best router score, search with the base encoder (mode `fallback`). A score is the "
        "pilot score (a cosine, or a share of the nearest pilots: at most 1) plus, with corpus votes "
        "(RR_ROUTER_EVIDENCE), up to 1 for each kind of vote: at most 3 with `documents+bm25`.",
    )
    merge: Literal["score", "rrf"] | None = Field(
        None,
        description="How a fan-out's lists become one: `score` (each hit's fused score minus `gap_weight` x "
        "its expert's router-score gap to the top expert) or `rrf` (reciprocal rank fusion) (RR_ROUTE_MERGE).",
    )
    gap_weight: float | None = Field(
        None, ge=0, le=100, allow_inf_nan=False, description="Score merge: score lost per unit of router-score gap."
    )

    def policy(self, default: RoutePolicy) -> RoutePolicy:
        """The server's default policy with the fields this request set."""
        return default.updated(
            top_k=self.top_k,
            fanout_margin=self.fanout_margin,
            min_score=self.min_score,
            merge=self.merge,
            gap_weight=self.gap_weight,
        )


class SearchRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"query": "what is the drag of a slender wing at supersonic speed", "k": 5},
                {
                    "queries": ["boundary layer transition", "vitamin D and fractures"],
                    "k": 3,
                    "route": {"top_k": 2, "threshold": 0.05},
                },
                {"query": "compiler optimisation", "k": 10, "expert": "cacm"},
                {"query": "vitamin D and fractures", "k": 5, "filter": {"year": {"gte": 2010}, "lang": "en"}},
                {"query": "vitamin D and fractures", "k": 10, "rerank": {"top_n": 50}},
            ]
        },
    )

    query: QueryText | None = Field(None, description="One query. Give this or `queries`.")
    queries: list[QueryText] | None = Field(
        None, min_length=1, description="Several queries, answered in one batch (at most RR_MAX_QUERIES)."
    )
    k: int = Field(10, ge=1, le=MAX_K, description="Hits per query.")
    expert: ExpertName | None = Field(None, description="Search this expert, bypassing the router.")
    route: RouteOptions = Field(default_factory=RouteOptions)
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None,
        description="Within the chosen expert: `dense` (its FAISS index, the adapter's query vector), `lexical` "
        "(its BM25 index) or `hybrid` (both, fused). Default: the expert's manifest, else RR_SEARCH_MODE (`hybrid`; "
        "an expert without a BM25 index is then searched dense). Asking for `lexical`/`hybrid` of an expert without one is a 409.",
    )
    fusion: Literal["weighted", "rrf"] | None = Field(
        None,
        description="Hybrid fusion: min-max normalised weighted sum, or reciprocal rank fusion (RR_HYBRID_FUSION).",
    )
    hybrid_weight: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Dense share of a weighted fusion, 0 to 1. Default: the expert's tuned weight "
        "(`rr tune-fusion`), else RR_HYBRID_WEIGHT.",
    )
    filter: Filter | None = Field(
        None,
        description="Only documents whose metadata match: equality, `in`, numeric or ISO-date ranges "
        "(`gt`, `gte`, `lt`, `lte`), combined with `and` / `or` / `not`. Applied inside the search, so a query "
        "gets `k` hits whenever `k` documents match. A field no expert has is a 422 naming the clause.",
    )
    rerank: SearchRerankOptions | None = Field(
        None, description="Rescore each query's best `top_n` candidates with the cross-encoder (RR_RERANKER; 501 "
        "without one) and return the best `k` by its score (`rerank_score`).",
    )  # fmt: skip

    @model_validator(mode="after")
    def _one_of_query_or_queries(self) -> SearchRequest:
        if (self.query is None) == (self.queries is None):
            raise ValueError("give exactly one of `query` (a string) or `queries` (a list of strings)")
        return self

    @property
    def texts(self) -> list[str]:
        return [self.query] if self.query is not None else list(self.queries or [])


class HitOut(BaseModel):
    id: str
    score: float
    title: str
    text: str
    metadata: dict[str, Any]
    expert: str = Field(description="The collection the document belongs to (ids are unique per collection).")
    dense_score: float | None = Field(
        None, description="Cosine of the query vector and the document (null: not a dense hit)."
    )
    lexical_score: float | None = Field(
        None, description="BM25 score (null: not a lexical hit, or lexical search did not run)."
    )
    span: tuple[int, int] | None = Field(
        None,
        description="Character offsets [start, end) in `text` of the chunk that matched best, for documents "
        "split into chunks (null: the document was searched whole).",
    )
    rerank_score: float | None = Field(None, description="The cross-encoder's relevance, 0 to 1 (null: not reranked).")


class RouteOut(BaseModel):
    experts: list[str] = Field(description="Experts searched, best first.")
    mode: Literal["top1", "fanout", "fallback", "forced"]
    use_adapters: bool = Field(description="False when the router fell back to the base encoder.")
    margin: float | None = Field(description="Top-1 minus top-2 router score (null with one expert or when forced).")
    router_scores: dict[str, float] = Field(description="Every routable expert's score, best first.")
    reason: str


class QueryResultOut(BaseModel):
    query: str
    expert: str = Field(description="The expert that answered (the first searched).")
    mode: Literal["dense", "lexical", "hybrid"] = Field(description="How the (first) expert was searched.")
    route: RouteOut
    hits: list[HitOut]
    truncated: bool = Field(
        False, description="The query was longer than RR_QUERY_MAX_LENGTH tokens and was cut to it."
    )
    matched: int | None = Field(
        None, description="With a filter: documents of the searched expert(s) that match it (null without one)."
    )


class BatchOut(BaseModel):
    requests: int = Field(description="Requests answered together in this request's micro-batch.")
    queries: int = Field(description="Queries in that micro-batch.")


class SearchResponse(BaseModel):
    results: list[QueryResultOut]
    timings_ms: dict[str, float] = Field(description="queue, base, route, expert, search, rerank and total, in ms.")
    batch: BatchOut

    @classmethod
    def of(
        cls, results: Sequence[SearchResult], *, timings_ms: dict[str, float], requests: int, queries: int
    ) -> SearchResponse:
        """The response to one ``/search`` request, for ``rr serve`` and the Ray Serve ingress alike.

        Built field by field from the engine's frozen, typed results, without a
        validation pass over them: validating a dict of 32 queries x 10 hits
        cost 8-9 ms, against 0.7 ms to write its JSON.
        ``tests/app/api/test_search_response.py`` holds it equal to the validated form.
        """
        batch = BatchOut.model_construct(requests=requests, queries=queries)
        return cls.model_construct(results=[_result_out(r) for r in results], timings_ms=timings_ms, batch=batch)


def _result_out(result: SearchResult) -> QueryResultOut:
    decision = result.decision
    route = RouteOut.model_construct(**decision_dict(decision))
    return QueryResultOut.model_construct(
        query=result.query,
        expert=decision.experts[0],
        mode=result.mode,
        route=route,
        hits=[_hit_out(hit) for hit in result.hits],
        truncated=result.truncated,
        matched=result.matched,
    )


def _hit_out(hit: ExpertHit) -> HitOut:
    return HitOut.model_construct(
        id=hit.id,
        score=float(hit.score),
        title=hit.title,
        text=hit.text,
        metadata=hit.metadata,
        expert=hit.expert,
        dense_score=None if hit.dense_score is None else float(hit.dense_score),
        lexical_score=None if hit.lexical_score is None else float(hit.lexical_score),
        span=hit.span,
        rerank_score=None if hit.rerank_score is None else float(hit.rerank_score),
    )


# ---------------------------------------------------------------------- experts
class AddExpertRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"path": "cranfield"},
                {"path": "staging/cacm", "replace": True},
                {"path": "staging/cacm", "replace": True, "gate": "pseudo", "gate_margin": 0.02},
            ]
        },
    )

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="Expert directory, absolute or relative to the data root; must lie under it.",
    )
    replace: bool = Field(False, description="Swap out a published expert of the same name.")
    gate: str | None = Field(
        None,
        min_length=1,
        max_length=8192,
        description="With replace: score both versions first and refuse (409) a candidate whose nDCG@10 is lower "
        "by more than the margin. 'pseudo' (pseudo queries from the serving version's documents) or "
        "'QUERIES:QRELS' (a BEIR queries.jsonl and qrels .tsv, relative to the data root).",
    )
    gate_margin: float | None = Field(
        None, ge=0, le=1, description="The gate's margin in nDCG@10 points (default RR_GATE_MARGIN)."
    )


class RollbackRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"version": 2}]})

    version: int | None = Field(
        None, ge=0, description="Manifest version to serve again; unset: the version served before this one."
    )


class IndexOut(BaseModel):
    factory: str
    directory: str
    documents: int


class AdapterOut(BaseModel):
    trained: bool
    side: str
    rank: int
    alpha: float


class LiveOut(BaseModel):
    """The expert's documents since its last merge: searched at once, folded into the index by a background merge."""

    documents: int = Field(description="Live documents (the index's, minus deleted, plus upserted).")
    main_documents: int = Field(description="Rows of the published index generation, deleted ones included.")
    delta_documents: int = Field(description="Documents upserted since the last merge.")
    tombstones: int = Field(description="Rows of the published generation deleted or replaced since.")
    seq: int = Field(description="Sequence number of the last acknowledged write.")
    writable: bool = Field(description="False when this server may not write them (another process holds the log).")
    read_only_reason: str | None = None
    merging: bool = Field(description="A background merge is running.")


class ExpertOut(BaseModel):
    name: str
    state: Literal["loaded", "failed", "building"] = Field(
        description="loaded: serving; failed: published but not loaded (see error); "
        "building: not published yet, built in the background by the serving process (`rr demo`)."
    )
    error: str | None = None
    building: str | None = Field(
        None,
        description="What the background build of this expert is doing now, e.g. 'indexing (first 400 documents)'; "
        "set on a building row, and on a serving expert that is being rebuilt.",
    )
    path: str = Field(description="Relative to the data root.")
    version: int | None = None
    description: str = ""
    documents: int | None = None
    index: IndexOut | None = None
    adapter: AdapterOut | None = None
    pilots: int | None = None
    routable: bool = False
    base_model: str | None = None
    live: LiveOut | None = None


class GateFiguresOut(BaseModel):
    version: int
    ndcg_at_10: float
    recall_at_100: float


class GateOut(BaseModel):
    """A replace's quality gate: both versions' figures on one query set, the margin, the outcome."""

    set: str = Field(description="'pseudo' or 'QUERIES:QRELS'.")
    queries: int
    mode: str = Field(description="How both versions were searched: 'hybrid' (as served), or 'dense' without BM25.")
    margin: float
    candidate: GateFiguresOut
    serving: GateFiguresOut | None = Field(None, description="None when no version was serving.")
    passed: bool
    measured_at: str


class ExpertVersionOut(BaseModel):
    """One version of an expert on disk: the serving one, or one kept for a rollback (RR_KEEP_VERSIONS)."""

    version: int
    path: str = Field(description="Its expert directory, relative to the data root.")
    published_at: str = Field(description="When it began serving.")
    serving: bool
    documents: int | None = Field(None, description="Documents: live ones when serving, else its index's.")
    trained: bool | None = Field(None, description="Whether its adapter is trained (None: its files are unreadable).")
    training: dict[str, Any] | None = Field(None, description="Its manifest's training section (the recipe).")
    gate: GateOut | None = Field(None, description="The quality gate it passed when a replace published it, if any.")
    error: str | None = Field(None, description="Why its manifest cannot be read, if it cannot.")


class ExpertDetailOut(ExpertOut):
    manifest: dict[str, Any] | None = Field(None, description="The expert's manifest.json.")
    versions: list[ExpertVersionOut] = Field(
        default_factory=list, description="The serving version, then those kept for a rollback, newest served first."
    )


class ExpertListOut(BaseModel):
    experts: list[ExpertOut]


class RemovedOut(BaseModel):
    name: str
    unpublished: bool = True
    unloaded: bool = Field(
        description="False if searches still held it when the drain timeout passed; it unloads when they finish."
    )


# ---------------------------------------------------------------------- probes
class HealthOut(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyOut(BaseModel):
    status: Literal["ready"] = "ready"
    experts: list[str]
    building: dict[str, str] | None = Field(
        None,
        description="Experts still being built beside the service (`rr demo`), and what each is doing; absent: none.",
    )


class RouteTrafficOut(BaseModel):
    route: str = Field(description="The route template (`/experts/{name}`), or `unmatched`.")
    method: str
    requests: int
    server_errors: int = Field(description="Answers with a 5xx status.")
    p50_ms: float | None = Field(description="Median latency, estimated from the histogram buckets.")
    p95_ms: float | None


class RoutedCountOut(BaseModel):
    expert: str = Field(description="The expert that answered (the first searched).")
    mode: str = Field(description="`top1`, `fanout`, `fallback` or `forced`.")
    queries: int


class MetricsSummaryOut(BaseModel):
    """What ``/metrics`` holds, digested for people; every count is since the process started."""

    requests: int
    server_errors: int
    routes: list[RouteTrafficOut] = Field(description="Per route and method, busiest first.")
    routed: list[RoutedCountOut] = Field(description="Queries per answering expert and routing mode, most first.")
    queue_depth: dict[str, int] = Field(description="Queries waiting for the model, by kind (search, embeddings).")
    rejected: dict[str, int] = Field(description="Requests refused with 429 (queue full), by kind.")


class ErrorDetail(BaseModel):
    type: str
    message: str
    details: Any = None


class ErrorOut(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route: the error statuses it can answer, all with :class:`ErrorOut`."""
    return {code: {"model": ErrorOut} for code in codes}
