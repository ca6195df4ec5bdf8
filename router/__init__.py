"""Routing queries to experts by their pilot embeddings and corpus votes (numpy only; no torch, no HTTP)."""

from router.errors import NoExpertsError, PilotError, RouterError
from router.evidence import (
    BEST_OF,
    VOTE_RULES,
    EvidenceKind,
    VoteRule,
    best_score_votes,
    candidate_votes,
    document_votes,
    expert_list_votes,
    ranked_votes,
)
from router.pilot_groups import PilotGroups, PilotSearch
from router.pilots import assigned_pilots, best_experts, centroid_pilots, check_pilots, kmeans_pilots, query_pilots
from router.routing import (
    AGGREGATES,
    MERGE_RULES,
    Aggregate,
    MergeRule,
    RouteDecision,
    RouteMode,
    RoutePolicy,
    Router,
    forced_decision,
)

__all__ = [
    "AGGREGATES",
    "Aggregate",
    "BEST_OF",
    "EvidenceKind",
    "MERGE_RULES",
    "MergeRule",
    "NoExpertsError",
    "PilotError",
    "PilotGroups",
    "PilotSearch",
    "RouteDecision",
    "RouteMode",
    "RoutePolicy",
    "Router",
    "RouterError",
    "VOTE_RULES",
    "VoteRule",
    "assigned_pilots",
    "best_experts",
    "best_score_votes",
    "candidate_votes",
    "centroid_pilots",
    "check_pilots",
    "document_votes",
    "expert_list_votes",
    "forced_decision",
    "kmeans_pilots",
    "query_pilots",
    "ranked_votes",
]
