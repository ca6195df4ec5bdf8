"""Configuration, read once from ``RR_*`` environment variables (pydantic-settings).

Built by the CLI (or the app factory) and passed down; nothing deeper in the
code reads the environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.engine.config import EngineConfig
from app.engine.retrieval import Retrieval
from experts.torch_threads import cpu_quota
from index import MergePolicy
from router import PilotSearch, RoutePolicy


def _small_host() -> bool:
    """At most 2 cores, or a container's CPU quota of less than 3 CPUs."""
    quota = cpu_quota()
    return min(os.cpu_count() or 1, float("inf") if quota is None else quota) < 3


def _auto_on_small_hosts() -> Literal["auto"] | None:
    """torch's threads' default: chosen per pass on small hosts (see ``_small_host``), else None (torch's own)."""
    return "auto" if _small_host() else None


def _one_on_small_hosts() -> int | None:
    """The thread settings' default: 1 on small hosts (see ``_small_host``), else None (the library's own default)."""
    return 1 if _small_host() else None


class Settings(BaseSettings):
    """Every knob of the service and the CLI. Example: ``RR_DATA_DIR=/srv/experts rr search "..."``."""

    model_config = SettingsConfigDict(env_prefix="RR_", extra="ignore")

    data_dir: Path = Field(Path("data/experts"), description="Root holding one directory per expert.")
    base_model: str | None = Field(
        None, description="Hugging Face id or local path of the base encoder; unset = bundled all-MiniLM-L6-v2."
    )
    max_length: int = Field(256, ge=8, description="Token limit for documents.")
    query_max_length: int = Field(64, ge=8, description="Token limit for queries.")
    batch_size: int = Field(64, ge=1, description="Rows per forward pass.")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, mps.")
    encoder_backend: Literal["torch", "int8", "int8-full"] = Field(
        "torch",
        description="How the base encoder computes: torch (fp32), int8 (dynamic int8 linear layers but the "
        "feed-forward outputs; CPU only) or int8-full (every linear layer). Fingerprint and adapters are unchanged "
        "(docs/benchmarks.md, section 9).",
    )
    torch_threads: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default_factory=_auto_on_small_hosts,
        description="torch intra-op threads: a number, auto, or unset (torch's default). Defaults to auto on hosts "
        "with <= 2 cores (or a CPU quota under 3): forward passes share the cores that other processes (read from "
        "/proc/stat) and training leave free, several passes at once on the one model; a pass alone gets them all, "
        "passes of two search batches at once one each (experts/torch_threads.py, experts/model_lock.py). Two "
        "threads are faster on a quiet 2-core host, one when another process holds a core (docs/benchmarks.md, "
        "sections 6, 23, 24 and 27). With a number, passes run one at a time.",
    )  # fmt: skip
    faiss_threads: int | None = Field(
        default_factory=_one_on_small_hosts, ge=1,
        description="FAISS (OpenMP) search threads; unset = FAISS's default (one per core). Defaults to 1 on hosts "
        "with <= 2 cores: a single-query search of 11k vectors took 1.3-23 ms p50 with 2 threads on a busy 2-core "
        "host and 0.6 ms with 1 (docs/benchmarks.md, section 17).",
    )  # fmt: skip
    blas_threads: int | None = Field(
        default_factory=_one_on_small_hosts, ge=1,
        description="numpy's BLAS (OpenBLAS) threads, process-wide; unset = its default (one per core). Defaults to "
        "1 on hosts with <= 2 cores: after each of the router's matrix products an idle OpenBLAS worker spins on "
        "the other core, which a routed search at one client kept fully busy (docs/benchmarks.md, section 23).",
    )  # fmt: skip
    batch_tokens: int | None = Field(
        512, ge=1, description="Most padded tokens (rows x longest) in one forward pass: length bucketing."
    )
    bulk_model_copy: bool = Field(
        True,
        description="Keep a second copy of the base model for bulk passes (index and train jobs, document writes, "
        "large embeddings requests), so they run beside searches instead of between their passes; costs the base "
        "model's size in memory (MiniLM: ~90 MB). Measured: search p50 during an index job 7.9x idle with one "
        "shared model (docs/benchmarks.md, section 20).",
    )
    base_cache_size: int = Field(
        4096, ge=0, description="Base-encoder vectors of recent queries kept for routing (LRU; 0 = off)."
    )
    verify_checksums: bool = Field(True, description="Hash every file of an expert when loading it.")
    router_aggregate: Literal["max", "mean", "knn"] = Field(
        "knn",
        description="Expert score from its pilots: nearest pilot (max), mean similarity, or its share of the "
        "query's nearest pilots (knn; for pilots built with the `queries` method).",
    )
    router_neighbours: int = Field(5, ge=1, description="Nearest pilots that vote, with router_aggregate=knn.")
    router_evidence: Literal["none", "documents", "bm25", "documents+bm25"] = Field(
        "documents+bm25",
        description="Corpus evidence added to the pilot scores: votes of the best documents that the query's base "
        "vector finds over every expert's dense index, and/or that BM25 finds over their BM25 indexes (how they vote: "
        "router_vote_rule).",
    )
    router_vote_depth: int = Field(20, ge=1, le=1000, description="Documents that vote, per kind of evidence.")
    # Chosen on pseudo queries with their source document taken out of the votes (bench/late_domain.py --ad-hoc).
    router_vote_rule: Literal["best", "share"] = Field(
        "best",
        description="How the best documents vote: a softmax over the experts of the mean of each one's 5 best "
        "scores (best; hardly grows with a collection's size), or each expert's share of them (share).",
    )
    # Chosen on pseudo queries (bench/routing_evidence.py --split dev): 94.2% against 93.7% routing, macro.
    router_vote_idf: Literal["shared", "own"] = Field(
        "shared",
        description="BM25 votes weigh terms by the IDF of all routed collections together (comparable across "
        "collections), or by each collection's own.",
    )
    # Chosen on pseudo queries (bench/vote_probes.py, the five shared collections' 27,761 vectors): 64 lists keep
    # 99.8% of the routing decisions of the exact search at a third of its cost; exact up to 10,000 vectors
    # (about 0.7 ms a query on one thread), above which the exact search's cost grows with every expert added.
    router_vote_exact_max: int = Field(
        10_000,
        ge=0,
        description="Dense votes search the routed collections' union exactly up to this many vectors (chunks "
        "count), and above it as an inverted file (IVF, about 4 x sqrt(vectors) lists; near, not equal, votes; cost "
        "grows with the square root of the vectors instead of linearly). Exact: ~0.07 ms per 1,000 vectors per "
        "query here.",
    )
    router_vote_probes: int = Field(
        64,
        ge=1,
        le=4096,
        description="Inverted lists a query reads in an approximate union (router_vote_exact_max); it reads no more "
        "vectors than this many lists of the mean size hold, however uneven the lists.",
    )
    router_vote_lexical_exact_max: int = Field(
        50_000,
        ge=0,
        description="BM25 votes search the routed collections' union with every posting up to this many documents; "
        "above it each stem keeps its 1,024 highest-scoring postings (near, not equal, votes; a query reads at most "
        "that many postings a stem).",
    )
    # Chosen by speed (bench/pilot_crossover.py, one BLAS thread as on 2 cores): above 10,000 pilots a single query
    # and a batch of 8 are faster grouped; a batch of 32 is faster exact up to about 15,000.
    router_pilot_exact_max: int = Field(
        10_000,
        ge=0,
        description="The knn vote compares a query with every pilot up to this many pilots over all experts, and "
        "above it only with the pilots of its nearest groups (k-means per expert, ~64 pilots a group; near, not "
        "equal, votes; nearly flat in the number of experts). Exact: ~0.07 ms per 1,000 pilots for a single "
        "query here, less per query in a batch, which is why the limit is not lower.",
    )
    # Chosen on pseudo queries (bench/pilot_probes.py): the fewest groups whose vote puts first the exact vote's
    # collection for >= 98% of them, with 50 experts of 1,000 real pilots (24: 96.8%, 48: 98.0%, 96: 99.2%).
    router_pilot_probes: int = Field(
        48, ge=1, le=4096, description="Pilot groups a query reads above router_pilot_exact_max pilots."
    )
    # Chosen on the same pseudo queries: the fewest dimensions whose vote (the nearest 8 x k compared again in full)
    # keeps both agreements of every dimension's with the exact vote: same top collection 98.0%, same votes 94.0%
    # (96 dimensions: 98.0%, 93.0%; bench/pilot_probes.py --reduced-dims).
    router_pilot_reduced_dim: int | None = Field(
        128,
        ge=1,
        description="Above router_pilot_exact_max pilots, a query is first compared with the probed groups' pilots "
        "projected on their this many main directions, and the nearest of those again in full: a third of the "
        "memory read for 384-dim pilots. At or above the pilots' dimension: every dimension (docs/benchmarks.md, "
        "section 25).",
    )
    # Chosen on training and pseudo queries only (bench/merge_tuning.py --split dev / dev-real, untrained experts):
    # docs/eval-2026-12-03/README.md gives the grid and the rule that picked these.
    route_top_k: int = Field(
        3, ge=1, le=16, description="Most experts one query is searched in (see route_fanout_margin)."
    )
    route_fanout_margin: float | None = Field(
        1.5, ge=0, description="Search every expert among the top route_top_k whose router score is within this of "
        "the top one's (a score is at most 3: pilot votes plus two kinds of corpus votes); unset = always "
        "route_top_k experts.",
    )  # fmt: skip
    route_merge: Literal["score", "rrf"] = Field(
        "score", description="How the lists of a query searched in several experts become one: dense and BM25 "
        "scores min-max normalised over all the lists together, minus route_gap_weight x the expert's router-score "
        "gap to the top expert; or reciprocal rank fusion.",
    )  # fmt: skip
    route_gap_weight: float = Field(0.1, ge=0, description="Score merge: hit score lost per unit of router-score gap.")
    search_mode: Literal["dense", "lexical", "hybrid"] = Field(
        "hybrid",
        description="How a search that names no mode searches each expert: its dense index, its BM25 index, or "
        "both fused (an expert without a BM25 index is then searched dense).",
    )
    hybrid_fusion: Literal["weighted", "rrf"] = Field(
        "weighted", description="Hybrid fusion: min-max normalised weighted sum, or reciprocal rank fusion."
    )
    hybrid_weight: float = Field(
        0.5, ge=0, le=1, description="Dense share of a weighted hybrid fusion, for experts whose manifest tunes none."
    )
    hybrid_candidates: int = Field(200, ge=1, le=10_000, description="Candidates each side gives a hybrid fusion.")
    reranker: str | None = Field(
        None, description="Hugging Face id or local path of a cross-encoder for /v1/rerank and /search's `rerank` "
        "option; unset = reranking off (those answer 501). Its passes are bounded by batch_tokens too.",
    )  # fmt: skip
    reranker_max_length: int = Field(
        512, ge=8, description="Token limit of one (query, document) pair for the reranker (capped by the model's)."
    )
    max_rerank_documents: int = Field(
        1000, ge=1, description="Documents per /v1/rerank request, and queries x candidates per reranked search "
        "(413 above).",
    )  # fmt: skip
    datasets_dir: Path = Field(Path("../shared/datasets"), description="BEIR collections used by the demo.")

    # ------------------------------------------------------------------ service
    host: str = Field("127.0.0.1", description="Address `rr serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `rr serve` listens on (0: any free port).")
    # SecretStr: the keys never appear in a repr, a log line or a traceback.
    admin_key: SecretStr | None = Field(None, description="Bearer key for /admin; unset = admin API disabled.")
    search_key: SecretStr | None = Field(
        None, description="Bearer key required by search, embeddings and expert listings; unset = open."
    )
    keys_file: Path | None = Field(
        None, description="TOML file of API keys, each with a name, the SHA-256 of its secret, scopes and optionally "
        "experts (docs/configuration.md); reloaded by POST /admin/keys/reload or SIGHUP. Set, every route but the "
        "probes and metrics needs a key.",
    )  # fmt: skip
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Largest JSON request body (413 above).")
    max_upload_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="Largest uploaded expert archive (POST /admin/experts) or job file (POST /admin/uploads: a corpus, "
        "queries, qrels); 413 above.",
    )
    # 1 GiB: an expert takes ~2-5 KB per document (flat index, BM25, docstore; scifact's 5,183 abstracts: 25 MB
    # with its adapter and pilots), so this holds ~200k documents, and a bomb stops at 1 GiB (docs/reliability.md).
    max_extracted_bytes: int = Field(1 << 30, ge=1024, description="Largest unpacked expert archive (413 above).")
    keep_versions: int = Field(
        3, ge=1, description="Versions of an expert kept on disk for a rollback, the serving one included (1: none)."
    )
    gate_margin: float = Field(
        0.01, ge=0, le=1, description="A replace with a gate is refused (409) when the candidate's nDCG@10 is lower "
        "than the serving version's by more than this; a request may set its own (gate_margin).",
    )  # fmt: skip
    gate_queries: int = Field(200, ge=1, description="Queries a replace's gate scores at most (a seeded sample).")
    max_queries: int = Field(64, ge=1, description="Queries per search request (413 above).")
    # OpenAI's own limit: LlamaIndex's OpenAIEmbedding sends 100 texts per call, LangChain's OpenAIEmbeddings 1000.
    max_embedding_inputs: int = Field(2048, ge=1, description="Inputs per /v1/embeddings request (413 above).")
    embedding_turn_inputs: int = Field(
        32,
        ge=1,
        description="A large /v1/embeddings request is embedded this many inputs at a time; searches run between turns.",
    )
    max_embeddings_body_bytes: int = Field(
        16 << 20, ge=1024, description="Largest body of a /v1/embeddings request (413 above): 2048 inputs of ~8 KB."
    )
    batch_wait_ms: float = Field(
        5.0, ge=0, description="How long the micro-batcher waits for more requests after the first one."
    )
    batch_max_queries: int = Field(128, ge=1, description="Most queries in one micro-batch (one model pass).")
    search_batches_in_flight: int = Field(
        2, ge=1,
        description="Search micro-batches run at once, each on its own thread. With RR_TORCH_THREADS=auto their "
        "forward passes share the cores (two at once on one thread each on 2 cores), and one batch's routing and "
        "index searches run beside another's pass, so a routed search under load keeps every core busy "
        "(docs/benchmarks.md, sections 23 and 27). 1: one batch at a time.",
    )  # fmt: skip
    queue_max_queries: int = Field(
        1024, ge=1, description="Queries waiting for the model before new requests get 429 + Retry-After."
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After sent with 429/503.")
    drain_timeout_s: float = Field(
        30.0, ge=0, description="How long DELETE waits for in-flight searches before answering (unload still follows)."
    )
    long_queries: Literal["truncate", "error"] = Field(
        "truncate",
        description="A query over RR_QUERY_MAX_LENGTH tokens: cut to it (the result says `truncated`), or 413.",
    )
    max_upsert_documents: int = Field(
        1000, ge=1, description="Documents per upsert or ids per delete request (413 above)."
    )
    max_documents_body_bytes: int = Field(
        32 << 20, ge=1024, description="Largest body of a document upsert or delete (413 above)."
    )
    merge_max_delta_docs: int = Field(
        2000, ge=1, description="Merge an expert's live writes into a new index once this many documents were upserted."
    )
    merge_max_fraction: float = Field(
        0.10, gt=0, le=1, description="... or once the upserted (or deleted) documents reach this share of the index."
    )
    merge_min_changes: int = Field(100, ge=1, description="Never merge for fewer changed documents than this.")

    def engine_config(self) -> EngineConfig:
        """The search engine's configuration, so every place that builds one routes alike."""
        retrieval = Retrieval(
            mode=self.search_mode,
            fusion=self.hybrid_fusion,
            weight=self.hybrid_weight,
            candidates=self.hybrid_candidates,
        )
        return EngineConfig(
            query_max_length=self.query_max_length,
            aggregate=self.router_aggregate,
            neighbours=self.router_neighbours,
            retrieval=retrieval,
            evidence=self.router_evidence,
            vote_depth=self.router_vote_depth,
            vote_idf=self.router_vote_idf,
            vote_rule=self.router_vote_rule,
            vote_exact_max=self.router_vote_exact_max,
            vote_probes=self.router_vote_probes,
            vote_lexical_exact_max=self.router_vote_lexical_exact_max,
            pilot_search=PilotSearch(
                exact_max=self.router_pilot_exact_max,
                probes=self.router_pilot_probes,
                reduced_dim=self.router_pilot_reduced_dim,
            ),
            long_queries=self.long_queries,
            policy=self.route_policy(),
        )

    def route_policy(self) -> RoutePolicy:
        """The routing of a search that sets none of its own (requests override it field by field)."""
        return RoutePolicy(
            top_k=self.route_top_k, fanout_margin=self.route_fanout_margin, merge=self.route_merge,
            gap_weight=self.route_gap_weight,
        )  # fmt: skip

    def merge_policy(self) -> MergePolicy:
        """When the service folds an expert's live writes into a new index generation."""
        return MergePolicy(
            max_delta_docs=self.merge_max_delta_docs, max_fraction=self.merge_max_fraction,
            min_changes=self.merge_min_changes,
        )  # fmt: skip
