"""Search results and routing decisions as JSON-ready dicts and as text (CLI and, later, the API)."""

from __future__ import annotations

import math
import textwrap
from dataclasses import asdict
from typing import Any

from app.engine.engine import SearchResult
from router import RouteDecision


def _finite_or_none(value: float) -> float | None:
    """``value`` rounded to 6 places, or None where it is infinite or NaN (JSON has neither)."""
    return None if math.isinf(value) or math.isnan(value) else round(value, 6)


def decision_dict(decision: RouteDecision) -> dict[str, Any]:
    return {
        "experts": list(decision.experts),
        "mode": decision.mode,
        "use_adapters": decision.use_adapters,
        "margin": _finite_or_none(decision.margin),
        "router_scores": {
            name: round(float(score), 6) for name, score in decision.scores
        },  # a float32 would round as one
        "reason": decision.reason,
    }


def result_dict(result: SearchResult) -> dict[str, Any]:
    return {
        "query": result.query,
        "mode": result.mode,
        "route": decision_dict(result.decision),
        "hits": [asdict(hit) for hit in result.hits],
        "truncated": result.truncated,
        "matched": result.matched,
    }


def result_text(result: SearchResult, *, width: int = 100) -> str:
    decision = result.decision
    lines = [
        f"query: {result.query}",
        f"  expert: {', '.join(decision.experts)} ({decision.reason}), {result.mode} search",
    ]
    if result.truncated:
        lines.append("  (the query was longer than the query token limit and was cut to it)")
    if result.matched is not None:
        lines.append(f"  filter: {result.matched} matching document(s)")
    if decision.scores:
        lines.append("  router: " + ", ".join(f"{name} {score:.3f}" for name, score in decision.scores))
    for rank, hit in enumerate(result.hits, start=1):
        snippet = textwrap.shorten(f"{hit.title} | {hit.text}" if hit.title else hit.text, width=width)
        lines.append(f"  {rank:>2}. {hit.score:.4f}  [{hit.expert}/{hit.id}] {snippet}")
    return "\n".join(lines)
