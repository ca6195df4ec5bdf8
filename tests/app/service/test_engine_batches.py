"""The engine under the service: per-request options in one micro-batch, and unloading only after in-flight searches."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from app.engine.engine import EmbedJob, SearchEngine, SearchJob
from app.engine.loading import load_expert
from app.engine.snapshots import SnapshotHolder
from experts import Encoder, UnknownExpertError
from router import NoExpertsError, RoutePolicy


@pytest.fixture()
def engine(experts_root: Path, tiny_bert_path: Path):
    # An encoder of its own: the adapters this test loads and unloads are all there is to see.
    encoder = Encoder(tiny_bert_path, max_length=64)
    engine = SearchEngine(encoder)
    for name in ("alpha", "beta"):
        engine.add(load_expert(experts_root / name, encoder))
    yield engine
    engine.close()


def ids(result) -> list[tuple[str, str]]:
    return [(hit.expert, hit.id) for hit in result.hits]


def test_one_batch_with_different_options_per_request_matches_separate_searches(engine: SearchEngine) -> None:
    jobs = [
        SearchJob(("wing lift", "compiler parser"), k=3),
        SearchJob(("shock wave",), k=7, expert="beta"),
        SearchJob(("memory cache",), k=5, policy=RoutePolicy(top_k=2)),
        SearchJob(("sorting",), k=2, expert="nobody"),
        SearchJob(("boundary layer",), k=4, policy=RoutePolicy(min_score=1.0)),
    ]
    outcomes = engine.search_jobs(jobs)
    assert isinstance(outcomes[3], UnknownExpertError) and "nobody" in str(outcomes[3])
    for job, outcome in zip(jobs, outcomes):
        if isinstance(outcome, Exception):
            continue
        alone = engine.search(list(job.queries), k=job.k, expert=job.expert, policy=job.policy)
        assert outcome.batch_requests == 5 and outcome.batch_queries == 6
        for together, single in zip(outcome.results, alone.results):
            a, b = together.decision, single.decision
            assert (a.experts, a.mode, a.use_adapters, [n for n, _ in a.scores]) == (
                b.experts,
                b.mode,
                b.use_adapters,
                [n for n, _ in b.scores],
            )
            np.testing.assert_allclose([v for _, v in a.scores], [v for _, v in b.scores], rtol=1e-4, atol=1e-5)
            assert ids(together) == ids(single) and len(together.hits) <= job.k
            np.testing.assert_allclose(
                [h.score for h in together.hits], [h.score for h in single.hits], rtol=1e-4, atol=1e-5
            )
    assert outcomes[2].results[0].decision.mode == "fanout"
    assert outcomes[4].results[0].decision.mode == "fallback"


def test_nothing_to_route_to_fails_only_the_routed_jobs(tiny_bert_path: Path, experts_root: Path) -> None:
    encoder = Encoder(tiny_bert_path, max_length=64)
    engine = SearchEngine(encoder)
    outcomes = engine.search_jobs([SearchJob(("x",)), SearchJob(("y",), expert="alpha")])
    assert isinstance(outcomes[0], NoExpertsError) and isinstance(outcomes[1], UnknownExpertError)
    engine.add(load_expert(experts_root / "alpha", encoder))
    assert engine.search(["y"], expert="alpha", k=2).results[0].hits


class GatedEncoder:
    """The real encoder, except that its first ``embed`` waits at a gate: a search caught in flight."""

    def __init__(self, encoder: Encoder) -> None:
        self._encoder = encoder
        self.entered, self.gate = threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)

    def embed(self, *args, **kwargs):
        if not self.entered.is_set():
            self.entered.set()
            assert self.gate.wait(timeout=60)
        return self._encoder.embed(*args, **kwargs)


def test_a_removed_expert_is_unloaded_only_after_the_search_holding_it_finishes(engine: SearchEngine) -> None:
    real = engine.encoder
    beta_adapter = engine.experts["beta"].adapter
    assert beta_adapter in real.adapters
    gated = GatedEncoder(real)
    engine.encoder = gated  # type: ignore[assignment]
    outcome: dict[str, object] = {}
    searching = threading.Thread(
        target=lambda: outcome.update(result=engine.search(["shock wave"], k=3, expert="beta"))
    )
    searching.start()
    assert gated.entered.wait(timeout=60)  # the search holds a snapshot with beta in it

    unloaded = engine.remove("beta")
    assert "beta" not in engine.experts  # unpublished at once: new searches no longer see it
    assert isinstance(engine.search_jobs([SearchJob(("x",), expert="beta")])[0], UnknownExpertError)
    assert not unloaded.is_set() and beta_adapter in real.adapters  # but not torn down under the search

    gated.gate.set()
    searching.join(timeout=60)
    assert unloaded.wait(timeout=60)
    assert beta_adapter not in real.adapters
    result = outcome["result"].results[0]  # type: ignore[union-attr]
    assert [hit.expert for hit in result.hits] == ["beta"] * 3  # answered from the snapshot it held
    engine.encoder = real  # type: ignore[assignment]


def test_replacing_an_expert_swaps_adapters_without_a_name_clash(engine: SearchEngine, experts_root: Path) -> None:
    old = engine.experts["beta"].adapter
    done = engine.add(load_expert(experts_root / "beta", engine.encoder))  # same name and version
    assert done.wait(timeout=10)
    new = engine.experts["beta"].adapter
    assert new != old and engine.encoder.adapters == (new,)
    assert engine.search(["x"], expert="beta", k=1).results[0].hits


def test_embeddings_base_expert_auto_and_document_side(engine: SearchEngine) -> None:
    base = engine.embed(["wing lift"]).vectors
    query = engine.embed(["wing lift"], model="beta")
    document = engine.embed(["wing lift"], model="beta", input_type="document")
    assert query.adapters_of == ["beta"] and document.adapters_of == [None]
    assert not np.allclose(query.vectors, base, atol=1e-4)
    np.testing.assert_allclose(document.vectors, engine.encoder.embed(["wing lift"]), atol=1e-5)
    routed = engine.embed(["wing lift", "parser"], model="auto")
    assert routed.decisions is not None and len(routed.decisions) == 2
    outcomes = engine.embed_jobs(
        [EmbedJob(("a", "b"), model="base"), EmbedJob(("c",), model="nobody"), EmbedJob(("d",))]
    )
    assert [len(o.vectors) for o in (outcomes[0], outcomes[2])] == [2, 1] and isinstance(
        outcomes[1], UnknownExpertError
    )


def test_snapshot_holder_releases_after_every_older_lease() -> None:
    released: list[str] = []
    holder: SnapshotHolder[str] = SnapshotHolder("v0")
    first = holder.lease()
    assert first.__enter__() == "v0"
    drop_a = holder.publish("v1", releases=[lambda: released.append("a")])
    second = holder.lease()
    assert second.__enter__() == "v1"
    drop_b = holder.publish("v2", releases=[lambda: released.append("b")])
    assert holder.in_flight == 2 and holder.pending_releases == 2 and released == []
    second.__exit__(None, None, None)  # v1's reader is done, but v0's still holds what "a" and "b" free
    assert released == [] and not drop_b.is_set()
    first.__exit__(None, None, None)
    assert released == ["a", "b"] and drop_a.is_set() and drop_b.is_set() and holder.pending_releases == 0
    assert holder.publish("v3").is_set()  # nobody reading: at once
