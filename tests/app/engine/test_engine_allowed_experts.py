"""A job's ``allowed_experts``: routed among those alone (corpus votes too), others refused, batches mixed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.engine.config import EngineConfig
from app.engine.engine import EmbedJob, SearchEngine, SearchJob
from app.errors import PermissionDeniedError
from experts import Encoder
from router import NoExpertsError, RoutePolicy
from tests.app.engine.test_engine import AERO, COMPUTING, make_expert

AERO_QUERY = "lift and drag of swept wings"


@pytest.fixture(params=["none", "documents+bm25"])
def engine(request: pytest.FixtureRequest, tmp_path: Path, tiny_bert_path: Path) -> Iterator[SearchEngine]:
    encoder = Encoder(tiny_bert_path)
    root = tmp_path / "experts"
    make_expert(root, "aero", AERO, encoder)
    make_expert(root, "computing", COMPUTING, encoder)
    make_expert(root, "nopilots", AERO, encoder, pilots=False)
    engine = SearchEngine.open(root, encoder, EngineConfig(evidence=request.param))
    yield engine
    engine.close()


def test_a_restricted_routed_search_routes_and_answers_among_its_experts_only(engine: SearchEngine) -> None:
    free = engine.search([AERO_QUERY], k=3).results[0]
    assert free.decision.experts == ("aero",)
    policy = RoutePolicy(top_k=3, fanout_margin=None)  # would fan out to every expert if it could
    (result,) = engine.search_jobs(
        [SearchJob((AERO_QUERY,), k=3, policy=policy, allowed_experts=frozenset({"computing", "nopilots"}))]
    )[0].results
    assert result.decision.experts == ("computing",)
    assert [name for name, _ in result.decision.scores] == ["computing"]  # the others are not even shown
    assert result.hits and {hit.expert for hit in result.hits} == {"computing"}


def test_one_batch_mixes_restricted_and_free_jobs_and_fails_only_the_bad_ones(engine: SearchEngine) -> None:
    jobs = [
        SearchJob((AERO_QUERY, "sorting on tape"), k=2, allowed_experts=frozenset({"computing"})),
        SearchJob((AERO_QUERY,), k=2),
        SearchJob((AERO_QUERY,), k=2, expert="aero", allowed_experts=frozenset({"computing"})),
        SearchJob((AERO_QUERY,), k=2, allowed_experts=frozenset({"nopilots", "ghost"})),
        SearchJob((AERO_QUERY,), k=2, expert="nopilots", allowed_experts=frozenset({"nopilots"})),
    ]
    restricted, free, named, unroutable, by_name = engine.search_jobs(jobs)
    assert not isinstance(restricted, Exception) and not isinstance(free, Exception)
    assert [r.decision.experts for r in restricted.results] == [("computing",), ("computing",)]
    assert free.results[0].decision.experts == ("aero",)
    assert isinstance(named, PermissionDeniedError) and "'aero' is not among" in named.message
    assert isinstance(unroutable, NoExpertsError) and "['ghost', 'nopilots']" in str(unroutable)
    assert not isinstance(by_name, Exception) and {h.expert for h in by_name.results[0].hits} == {"nopilots"}


def test_auto_embeddings_route_among_the_allowed_experts_and_named_ones_are_checked(engine: SearchEngine) -> None:
    jobs = [
        EmbedJob((AERO_QUERY,), model="auto", allowed_experts=frozenset({"computing"})),
        EmbedJob((AERO_QUERY,), model="auto"),
        EmbedJob((AERO_QUERY,), model="aero", allowed_experts=frozenset({"computing"})),
    ]
    restricted, free, named = engine.embed_jobs(jobs)
    assert not isinstance(restricted, Exception) and restricted.decisions is not None
    assert restricted.decisions[0].experts == ("computing",)
    assert not isinstance(free, Exception) and free.decisions is not None
    assert free.decisions[0].experts == ("aero",)
    assert isinstance(named, PermissionDeniedError)


def test_allowed_experts_must_be_a_collection_of_names() -> None:
    with pytest.raises(TypeError, match="not a string"):
        SearchJob(("q",), allowed_experts="aero")  # type: ignore[arg-type]
    assert SearchJob(("q",), allowed_experts=["a"]).allowed_experts == frozenset({"a"})  # type: ignore[arg-type]
