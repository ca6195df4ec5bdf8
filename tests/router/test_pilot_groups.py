"""The knn vote by pilot groups (router/pilot_groups.py): exact when every group is read, near it when a few are."""

from __future__ import annotations

import numpy as np
import pytest

from router import PilotSearch, Router
from router.pilot_groups import PilotGroups, main_directions

EXACT = PilotSearch(exact_max=None)


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _experts(count: int, *, pilots: int = 300, dim: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
    """Experts whose pilots gather around a few topics of their own, as real pseudo queries do."""
    rng = np.random.default_rng(seed)
    out = {}
    for e in range(count):
        topics = _unit(rng.standard_normal((6, dim)))
        out[f"e{e:02d}"] = _unit(topics[rng.integers(6, size=pilots)] + 0.15 * rng.standard_normal((pilots, dim)))
    return out


def _queries(experts: dict[str, np.ndarray], count: int, *, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    names = sorted(experts)
    picked = [experts[names[i % len(names)]][rng.integers(len(experts[names[0]]))] for i in range(count)]
    return _unit(np.stack(picked) + 0.15 * rng.standard_normal((count, picked[0].shape[0])))


def test_reading_every_group_gives_the_exact_votes() -> None:
    experts = _experts(6)
    queries = _queries(experts, 40)
    exact = Router(experts, aggregate="knn", search=EXACT)
    grouped = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0, probes=10_000))
    assert grouped.groups and not exact.groups
    np.testing.assert_allclose(grouped.scores(queries), exact.scores(queries), atol=1e-6)
    only = {"e01", "e04", "zed"}
    np.testing.assert_allclose(grouped.scores(queries, only=only), exact.scores(queries, only=only), atol=1e-6)
    assert [d.experts for d in grouped.route(queries)] == [d.experts for d in exact.route(queries)]


def test_a_few_groups_find_nearly_the_same_votes() -> None:
    experts = _experts(30)
    queries = _queries(experts, 300)
    exact = Router(experts, aggregate="knn", search=EXACT).scores(queries)
    assert np.mean(exact.argmax(axis=1) == np.arange(300) % 30) < 0.9  # routing these is not trivial
    grouped = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0, probes=24)).scores(queries)
    assert np.mean(exact.argmax(axis=1) == grouped.argmax(axis=1)) >= 0.97  # 98.3% when written
    assert np.mean(np.abs(exact - grouped).sum(axis=1) < 1e-2) >= 0.9  # the same votes, tie-break aside (92.7%)


def test_the_size_decides_which_search() -> None:
    experts = _experts(4, pilots=100)
    assert not Router(experts, aggregate="knn", search=PilotSearch(exact_max=400)).groups
    assert Router(experts, aggregate="knn", search=PilotSearch(exact_max=399)).groups
    assert not Router(experts, aggregate="max", search=PilotSearch(exact_max=0)).groups  # knn only


def test_more_groups_are_read_until_enough_pilots_vote() -> None:
    experts = _experts(3, pilots=200)
    router = Router(experts, aggregate="knn", neighbours=150, search=PilotSearch(exact_max=0, probes=1))
    scores = router.scores(_queries(experts, 5))
    np.testing.assert_allclose(np.floor(scores * 150 + 1e-3).sum(axis=1), 150)  # 150 votes were cast per query
    one = Router(experts, aggregate="knn", neighbours=150, search=PilotSearch(exact_max=0, probes=1))
    assert np.allclose(one.scores(_queries(experts, 5), only={"e01"}), 1.0, atol=2e-3)


def test_groups_are_made_once_per_pilots() -> None:
    experts = _experts(3)
    router = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0))
    added = router.with_expert("new", _experts(1, seed=7)["e00"])
    assert all(added.groups[name] is router.groups[name] for name in experts)
    changed = added.with_expert("e01", _experts(1, seed=8)["e00"])
    assert changed.groups["e01"] is not router.groups["e01"] and changed.groups["e01"].made_from(changed.pilots("e01"))
    assert changed.without_expert("e00").groups["e02"] is router.groups["e02"]
    rebuilt = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0), groups=router.groups)
    assert rebuilt.groups["e00"] is router.groups["e00"]
    coarser = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0, group_size=150), groups=router.groups)
    assert coarser.groups["e00"] is not router.groups["e00"] and len(coarser.groups["e00"].centres) == 2


def test_groups_cover_every_pilot_once() -> None:
    pilots = _experts(1, pilots=500)["e00"]
    groups = PilotGroups.of(pilots)
    assert sorted(groups.order.tolist()) == list(range(500))
    assert groups.bounds[0] == 0 and groups.bounds[-1] == 500 and np.all(np.diff(groups.bounds) > 0)
    assert len(groups.centres) == len(groups.bounds) - 1


@pytest.mark.parametrize(
    "kwargs", [{"exact_max": -1}, {"probes": 0}, {"group_size": 0}, {"reduced_dim": 0}, {"refine": 0}]
)
def test_bad_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="exact_max must be"):
        PilotSearch(**kwargs)


def test_a_reduced_first_comparison_refined_in_full_gives_the_exact_votes_when_it_refines_every_pilot() -> None:
    experts = _experts(6, dim=48)
    queries = _queries(experts, 40)
    exact = Router(experts, aggregate="knn", search=EXACT)
    everything = PilotSearch(exact_max=0, probes=10_000, reduced_dim=8, refine=10_000)
    reduced = Router(experts, aggregate="knn", search=everything)
    assert reduced._index is not None and reduced._index.basis is not None and reduced._index.basis.shape == (48, 8)
    np.testing.assert_allclose(reduced.scores(queries), exact.scores(queries), atol=1e-6)


def test_a_reduced_first_comparison_finds_nearly_the_same_votes() -> None:
    rng = np.random.default_rng(3)
    lift = np.linalg.qr(rng.standard_normal((64, 24)))[0].astype(np.float32)  # pilots near a 24-dim subspace
    experts = {
        name: _unit(p @ lift.T + 0.02 * rng.standard_normal((len(p), 64))) for name, p in _experts(30, dim=24).items()
    }
    queries = _unit(_queries(_experts(30, dim=24), 300) @ lift.T)
    exact = Router(experts, aggregate="knn", search=EXACT).scores(queries)
    full = Router(experts, aggregate="knn", search=PilotSearch(exact_max=0, probes=24, reduced_dim=None))
    reduced = Router(
        experts, aggregate="knn", search=PilotSearch(exact_max=0, probes=24, reduced_dim=24), groups=full.groups
    )
    assert full._index is not None and full._index.basis is None
    same_full = np.mean(exact.argmax(axis=1) == full.scores(queries).argmax(axis=1))
    same_reduced = np.mean(exact.argmax(axis=1) == reduced.scores(queries).argmax(axis=1))
    assert same_reduced >= same_full - 0.01 and same_reduced >= 0.95


def test_main_directions_are_orthonormal_and_hold_a_subspace_s_inner_products() -> None:
    rng = np.random.default_rng(4)
    inside = rng.standard_normal((500, 6)) @ np.linalg.qr(rng.standard_normal((20, 6)))[0].T
    basis = main_directions(inside.astype(np.float32), 6)
    np.testing.assert_allclose(basis.T @ basis, np.eye(6), atol=1e-5)
    projected = inside @ basis
    np.testing.assert_allclose(projected @ projected[:5].T, inside @ inside[:5].T, atol=1e-4)
