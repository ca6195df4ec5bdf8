"""``SearchResponse.of`` builds the response without a validation pass: it must equal the validated form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.api.schemas import SearchResponse
from app.engine.jobs import ExpertHit, SearchResult
from app.engine.output import result_dict
from router import RouteDecision


def _validated(results: list[SearchResult], timings: dict[str, float], requests: int, queries: int) -> SearchResponse:
    """The response as pydantic validates it from the engine's dicts (how it was built before)."""
    rows = [{**result_dict(result), "expert": result.decision.experts[0]} for result in results]
    batch = {"requests": requests, "queries": queries}
    return SearchResponse.model_validate({"results": rows, "timings_ms": timings, "batch": batch})


def _results() -> list[SearchResult]:
    fanout = RouteDecision(("cacm", "cisi"), "fanout", (("cacm", 2.25), ("cisi", 1.7), ("npl", 0.1)), 0.55)
    forced = RouteDecision(("npl",), "forced", (), math.inf)
    fallback = RouteDecision(("cisi",), "fallback", (("cisi", 0.2),), math.nan, use_adapters=False)
    hits = [
        ExpertHit("cacm", "12", np.float32(0.8125), "Title", "text", {"year": 1970, "tags": ["a", "b"]}, 0.61, 7.5),
        ExpertHit("cisi", "7", 0.5, "", "a longer text", {}, None, np.float64(3.25), span=(2, 8)),
        ExpertHit("cacm", "3", 0.25, "T", "x", {"nested": {"k": None}}, np.float32(0.4), None, rerank_score=0.93),
    ]
    return [
        SearchResult("a query", hits, fanout, "hybrid", truncated=True, matched=40),
        SearchResult("another", hits[:1], forced, "dense"),
        SearchResult("nothing found", [], fallback, "lexical", matched=0),
    ]


@pytest.mark.parametrize("count", [0, 1, 3])
def test_built_response_equals_the_validated_one(count: int) -> None:
    results = _results()[:count]
    timings = {"queue_ms": 0.5, "total_ms": 12.0}
    built = SearchResponse.of(results, timings_ms=timings, requests=2, queries=4)
    validated = _validated(results, timings, 2, 4)
    assert json.loads(built.model_dump_json()) == json.loads(validated.model_dump_json())
    assert built == validated
    if count:
        route = json.loads(built.model_dump_json())["results"][0]["route"]
        assert route["router_scores"] == {"cacm": 2.25, "cisi": 1.7, "npl": 0.1}


def test_built_response_has_plain_floats() -> None:
    """numpy scalars from FAISS come out as Python floats, so the JSON writer never meets a type it must guess."""
    built = SearchResponse.of(_results(), timings_ms={}, requests=1, queries=3)
    hits = built.results[0].hits
    assert all(type(hit.score) is float for hit in hits)
    assert [type(hit.dense_score) for hit in hits] == [float, type(None), float]
    assert built.results[1].route.margin is None and built.results[2].route.margin is None
    numpy_scores = RouteDecision(("cisi",), "top1", (("cisi", np.float32(1.7)),), 1.7)
    routed = SearchResponse.of([SearchResult("q", [], numpy_scores)], timings_ms={}, requests=1, queries=1)
    assert routed.results[0].route.router_scores == {"cisi": 1.7}  # rounded as a float, not as a float32
