from __future__ import annotations

import numpy as np
import pytest

from router import NoExpertsError, PilotError, RoutePolicy, Router, forced_decision


def unit(*values: float) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture()
def router() -> Router:
    return Router(
        {
            "aero": np.stack([unit(1, 0, 0), unit(0.9, 0.1, 0)]),
            "cacm": np.stack([unit(0, 1, 0)]),
            "cisi": np.stack([unit(0, 0.8, 0.6)]),
        }
    )


def test_scores_are_nearest_pilot_by_default_and_mean_on_request(router: Router) -> None:
    query = unit(0.95, 0.05, 0)[None]
    pilots_aero = router.pilots("aero")
    np.testing.assert_allclose(router.scores(query)[0, 0], (pilots_aero @ query[0]).max(), rtol=1e-6)
    mean_router = Router({name: router.pilots(name) for name in router.experts}, aggregate="mean")
    np.testing.assert_allclose(mean_router.scores(query)[0, 0], (pilots_aero @ query[0]).mean(), rtol=1e-6)


def test_top1_decision_ranks_every_expert_and_gives_the_margin(router: Router) -> None:
    decisions = router.route(np.stack([unit(1, 0.05, 0), unit(0, 1, 0.1)]))
    assert [d.experts for d in decisions] == [("aero",), ("cacm",)]
    first = decisions[0]
    assert first.mode == "top1" and first.use_adapters
    assert [name for name, _ in first.scores] == ["aero", "cacm", "cisi"]
    assert first.margin == pytest.approx(first.scores[0][1] - first.scores[1][1])


def test_close_call_fans_out_when_the_margin_is_small(router: Router) -> None:
    between = unit(0, 0.95, 0.35)[None]  # close to both cacm and cisi
    decision = router.route(between, policy=RoutePolicy(top_k=2, fanout_margin=0.1))[0]
    assert decision.mode == "fanout" and set(decision.experts) == {"cacm", "cisi"}
    clear = router.route(unit(1, 0, 0)[None], policy=RoutePolicy(top_k=2, fanout_margin=0.1))[0]
    assert clear.mode == "top1" and clear.experts == ("aero",)
    always = router.route(unit(1, 0, 0)[None], policy=RoutePolicy(top_k=3))[0]
    assert always.mode == "fanout" and always.experts == ("aero", "cacm", "cisi")  # ties keep name order


def test_low_score_falls_back_to_the_base_encoder_and_says_so(router: Router) -> None:
    decision = router.route(unit(-1, -1, -1)[None], policy=RoutePolicy(min_score=0.2))[0]
    assert decision.mode == "fallback" and not decision.use_adapters
    assert "min_score" in decision.reason and len(decision.experts) == 1


def test_adding_and_removing_experts_needs_no_retraining_and_leaves_the_original(router: Router) -> None:
    bigger = router.with_expert("npl", unit(0, 0, 1)[None])
    assert bigger.route(unit(0, 0, 1)[None])[0].experts == ("npl",)
    assert "npl" not in router.experts  # the original is unchanged (copy-on-write)
    smaller = bigger.without_expert("aero")
    assert smaller.experts == ("cacm", "cisi", "npl")
    with pytest.raises(KeyError, match="Routed experts"):
        smaller.without_expert("aero")


def test_single_expert_has_an_infinite_margin() -> None:
    decision = Router({"only": unit(1, 0)[None]}).route(unit(0, 1)[None])[0]
    assert decision.experts == ("only",) and decision.margin == float("inf")


def test_bad_inputs_are_clear_errors(router: Router) -> None:
    with pytest.raises(NoExpertsError, match="no experts"):
        Router({}).route(unit(1, 0)[None])
    with pytest.raises(PilotError, match=r"shape \(n, 3\)"):
        router.route(np.zeros((2, 4), dtype=np.float32))
    with pytest.raises(PilotError, match="different dimensions"):
        Router({"a": np.ones((1, 3)), "b": np.ones((1, 4))})
    with pytest.raises(PilotError, match="non-empty"):
        Router({"a": np.zeros((0, 3))})
    with pytest.raises(PilotError, match="NaN"):
        Router({"a": np.full((1, 3), np.nan)})
    with pytest.raises(ValueError, match="top_k must be >= 1"):
        RoutePolicy(top_k=0)
    with pytest.raises(ValueError, match="Valid aggregates"):
        Router({"a": np.ones((1, 3))}, aggregate="median")  # type: ignore[arg-type]


def test_forced_decision_has_no_scores() -> None:
    decision = forced_decision("aero")
    assert decision.mode == "forced" and decision.experts == ("aero",) and decision.scores == ()


def test_knn_scores_are_each_experts_share_of_the_nearest_pilots() -> None:
    # Query points at aero's three pilots first, then at cacm's two: with 5 neighbours aero gets 3 votes, cacm 2.
    pilots = {
        "aero": np.stack([unit(1, 0, 0), unit(1, 0.1, 0), unit(1, 0, 0.1)]),
        "cacm": np.stack([unit(0.6, 0.8, 0), unit(0.6, 0, 0.8), unit(0, 1, 0)]),
        "cisi": np.stack([unit(0, 0, 1)]),
    }
    router = Router(pilots, aggregate="knn", neighbours=5)
    scores = router.scores(unit(1, 0.02, 0.02)[None])[0]
    assert scores == pytest.approx([0.6, 0.4, 0.0], abs=2e-3)  # votes / 5, plus a tie-break under one vote
    decision = router.route(unit(1, 0.02, 0.02)[None])[0]
    assert decision.experts == ("aero",) and decision.margin == pytest.approx(0.2, abs=2e-3)
    # Immutable copies keep the aggregate and the neighbour count.
    assert (
        router.without_expert("cisi").neighbours == 5
        and router.with_expert("x", unit(0, 1, 1)[None]).aggregate == "knn"
    )


def test_knn_ties_go_to_the_expert_with_the_nearest_pilot() -> None:
    # One pilot each and 2 neighbours: both experts get one vote; the nearer pilot decides, as with "max".
    router = Router({"a": unit(1, 0.2)[None], "b": unit(0.2, 1)[None]}, aggregate="knn", neighbours=2)
    assert router.route(unit(1, 0.5)[None])[0].experts == ("a",)
    assert router.route(unit(0.5, 1)[None])[0].experts == ("b",)


def test_knn_needs_at_least_one_neighbour() -> None:
    with pytest.raises(ValueError, match="neighbours"):
        Router({}, aggregate="knn", neighbours=0)
    with pytest.raises(ValueError, match="knn"):
        Router({}, aggregate="median")  # type: ignore[arg-type]


def test_a_margin_fans_out_only_to_the_experts_within_it_of_the_top(router: Router) -> None:
    between = unit(0, 0.95, 0.35)[None]
    scores = dict(router.route(between)[0].scores)
    width = abs(scores["cacm"] - scores["cisi"]) + 1e-3
    decision = router.route(between, policy=RoutePolicy(top_k=3, fanout_margin=width))[0]
    assert decision.mode == "fanout" and set(decision.experts) == {"cacm", "cisi"}  # aero is further than the margin


def test_policies_validate_their_merge_and_a_request_overrides_only_what_it_sets() -> None:
    with pytest.raises(ValueError, match="Valid merges are: score, rrf"):
        RoutePolicy(merge="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gap_weight must be >= 0"):
        RoutePolicy(gap_weight=float("nan"))
    default = RoutePolicy(top_k=3, fanout_margin=0.3, gap_weight=2.0)
    assert default.updated(top_k=1, fanout_margin=None, merge="rrf") == RoutePolicy(
        top_k=1, fanout_margin=0.3, merge="rrf", gap_weight=2.0
    )


def test_only_routes_among_the_experts_given_as_a_router_of_them_alone_would(router: Router) -> None:
    query = np.stack([unit(1, 0.05, 0), unit(0, 1, 0.1)])
    policy = RoutePolicy(top_k=3, fanout_margin=None)
    decisions = router.route(query, policy=policy, only={"cacm", "cisi", "nowhere"})
    alone = Router({name: router.pilots(name) for name in ("cacm", "cisi")})
    for decision, expected in zip(decisions, alone.route(query, policy=policy)):
        assert decision.experts == expected.experts and set(decision.experts) == {"cacm", "cisi"}
        assert [name for name, _ in decision.scores] == [name for name, _ in expected.scores]
        assert [score for _, score in decision.scores] == pytest.approx([score for _, score in expected.scores])
    assert router.routable({"cisi", "nowhere"}) == ("cisi",)
    assert router.routable() == router.experts


def test_only_with_knn_counts_only_the_allowed_experts_pilots() -> None:
    pilots = {"a": np.stack([unit(1, 0), unit(0.99, 0.1)]), "b": np.stack([unit(0.2, 1)]), "c": np.stack([unit(0, 1)])}
    full = Router(pilots, aggregate="knn", neighbours=2)
    alone = Router({name: pilots[name] for name in ("b", "c")}, aggregate="knn", neighbours=2)
    query = unit(1, 0.05)[None]
    np.testing.assert_allclose(full.scores(query, only={"b", "c"}), alone.scores(query), rtol=1e-6)
    (decision,) = full.route(query, only=["b", "c"])
    assert decision.experts == ("b",)


def test_only_with_evidence_takes_one_column_per_routable_expert(router: Router) -> None:
    query = unit(1, 0.05, 0)[None]
    (decision,) = router.route(query, evidence=np.array([[0.0, 5.0]]), only={"aero", "cisi"})
    assert decision.experts == ("cisi",)
    with pytest.raises(PilotError, match=r"\(1, 2\)"):
        router.route(query, evidence=np.zeros((1, 3)), only={"aero", "cisi"})


def test_only_naming_no_routable_expert_is_a_clear_error(router: Router) -> None:
    with pytest.raises(NoExpertsError, match=r"none of the experts \['nowhere'\] can be routed to"):
        router.route(unit(1, 0, 0)[None], only={"nowhere"})
