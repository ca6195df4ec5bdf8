"""Shadow mode over HTTP: a candidate searched beside the serving beta on live queries, compared, never answering.

On a real ``rr serve`` (uvicorn, tiny BERT): an identical candidate (a copy of beta's directory) agrees on every
top 10; one whose texts are shuffled between ids disagrees, and is recorded so; every answer equals what the
serving version alone returns (its scores to 1e-6: a search's forward pass beside the candidate's runs on
fewer threads, which rounds differently). Refusals run in-process.
"""

from __future__ import annotations

import math
import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.engine.shadow_compare import compare_top
from experts import Encoder, ExpertDir
from tests.app.service.conftest import ADMIN, wait_for
from tests.app.service.test_gate import build_shuffled
from tests.app.service.test_gate_api import bump

#: Routed queries (the tiny random model sends them to beta first, some fanned out to alpha too), two named (one
#: to alpha: never shadowed), one hybrid and one with k below 10.
SEARCHES: list[dict[str, Any]] = [
    *({"query": f"{topic} {i}", "k": 10} for i in (1, 2) for topic in ("compiler parser", "memory cache", "wing lift")),
    {"query": "sorting algorithm", "expert": "beta", "k": 10},
    {"query": "supersonic drag", "expert": "alpha", "k": 10},
    {"query": "database query 7", "k": 10, "mode": "hybrid"},
    {"query": "operating system", "k": 3},
]


@pytest.fixture(scope="module")
def candidates(tmp_path_factory: pytest.TempPathFactory, template_root: Path, tiny_encoder: Encoder) -> Path:
    """``same/beta`` (a copy of the serving beta, a later version number) and ``shuffled/beta`` (texts shuffled)."""
    root = tmp_path_factory.mktemp("shadow-candidates")
    shutil.copytree(template_root / "beta", root / "same" / "beta")
    bump(ExpertDir(root / "same" / "beta"), 2)
    build_shuffled(root / "shuffled", "beta", tiny_encoder, source=template_root / "beta")
    return root


@pytest.fixture()
def root(experts_root: Path, candidates: Path) -> Path:
    for folder in ("same", "shuffled"):
        shutil.copytree(candidates / folder, experts_root / folder)
    return experts_root


def answers(http: httpx.Client) -> list[list[dict[str, Any]]]:
    """Every search's results (timings and batch sizes aside: they describe the micro-batch)."""
    out = []
    for body in SEARCHES:
        response = http.post("/search", json=body)
        assert response.status_code == 200, response.text
        out.append(response.json()["results"])
    return out


def assert_same_answers(got: Any, expected: Any, where: str = "answers") -> None:
    """Equal, numbers to 1e-6 (the last bits of a float depend on the threads a pass ran on)."""
    if isinstance(expected, float) and isinstance(got, float):
        assert math.isclose(got, expected, rel_tol=0, abs_tol=1e-6), f"{where}: {got} != {expected}"
    elif isinstance(expected, dict) and isinstance(got, dict):
        assert got.keys() == expected.keys(), f"{where}: keys {sorted(got)} != {sorted(expected)}"
        for key in expected:
            assert_same_answers(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list) and isinstance(got, list):
        assert len(got) == len(expected), f"{where}: {len(got)} items != {len(expected)}"
        for i, (item, wanted) in enumerate(zip(got, expected)):
            assert_same_answers(item, wanted, f"{where}[{i}]")
    else:
        assert got == expected, f"{where}: {got!r} != {expected!r}"


def answered_by_beta(results: list[list[dict[str, Any]]]) -> int:
    return sum(result["route"]["experts"][0] == "beta" for batch in results for result in batch)


def shadowed(http: httpx.Client, count: int) -> dict[str, Any]:
    """The shadow's report once ``count`` queries are compared."""
    wait_for(lambda: http.get("/admin/experts/beta/shadow", headers=ADMIN).json()["shadowed"] >= count, timeout=60)
    return http.get("/admin/experts/beta/shadow", headers=ADMIN).json()


def test_a_shadow_records_agreement_and_difference_and_never_changes_an_answer(root: Path, start_server) -> None:
    server = start_server(root)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        alone = answers(http)
        expected = answered_by_beta(alone)
        assert 5 <= expected < len(SEARCHES), alone  # the query alpha answers is not shadowed

        started = http.post("/admin/experts/beta/shadow", json={"path": "same/beta", "share": 1.0}, headers=ADMIN)
        assert started.status_code == 201, started.text
        report = started.json()
        assert report["candidate"]["path"] == "same/beta" and report["running"] is True and report["shadowed"] == 0
        assert report["candidate"]["version"] == report["serving_version"] + 2 and report["share"] == 1.0
        again = http.post("/admin/experts/beta/shadow", json={"path": "shuffled/beta", "share": 0.5}, headers=ADMIN)
        assert again.status_code == 409 and "already shadowed" in again.json()["error"]["message"], again.text

        assert_same_answers(answers(http), alone)
        report = shadowed(http, expected)
        assert report["shadowed"] == expected and report["dropped"] == 0 and report["errors"] == 0
        assert report["mean_overlap"] == 1.0 and report["differing"] == 0.0 and report["top1_differing"] == 0.0
        assert report["mean_displacement"] == 0.0

        stopped = http.delete("/admin/experts/beta/shadow", headers=ADMIN)
        assert stopped.status_code == 200 and stopped.json()["running"] is False
        assert stopped.json()["shadowed"] == expected
        assert http.get("/admin/experts/beta/shadow", headers=ADMIN).status_code == 404

        started = http.post("/admin/experts/beta/shadow", json={"path": "shuffled/beta", "share": 1.0}, headers=ADMIN)
        assert started.status_code == 201, started.text
        assert_same_answers(answers(http), alone)  # a differing candidate changes no answer either
        report = shadowed(http, expected)
        assert report["shadowed"] == expected and report["errors"] == 0
        assert report["differing"] > 0.5 and report["mean_overlap"] < 1.0, report

        metrics = http.get("/metrics").text
        assert f'rr_shadow_queries_total{{expert="beta"}} {float(2 * expected)}' in metrics
        assert 'rr_shadow_top10_overlap_bucket{expert="beta",le="1.0"}' in metrics
        assert 'rr_shadow_differing_queries_total{expert="beta"}' in metrics

        # A replace of beta ends its shadow, and the log says so.
        replaced = http.post("/admin/experts", json={"path": "same/beta", "replace": True}, headers=ADMIN)
        assert replaced.status_code == 201, replaced.text
        wait_for(lambda: http.get("/admin/experts/beta/shadow", headers=ADMIN).status_code == 404, timeout=30)
    assert server.stopped_cleanly(), server.log()
    assert "stopped the shadow of expert 'beta'" in server.log() and "the expert now serves v" in server.log()


def test_bad_shadows_are_refused_and_change_nothing(root: Path, make_client) -> None:
    client = make_client(root)

    def shadow(name: str, path: str, share: float = 1.0) -> httpx.Response:
        return client.post(f"/admin/experts/{name}/shadow", json={"path": path, "share": share}, headers=ADMIN)

    for share in (0.0, -0.1, 1.5):
        assert shadow("beta", "same/beta", share).status_code == 422
    unknown = shadow("nosuch", "same/beta")
    assert unknown.status_code == 404 and "Published experts: ['alpha', 'beta']" in unknown.text
    outside = shadow("beta", "../../beta")
    assert outside.status_code == 403 and outside.json()["error"]["type"] == "path_not_allowed"
    other = shadow("beta", "staging/gamma")
    assert other.status_code == 422 and "holds expert 'gamma', not 'beta'" in other.text
    serving = shadow("beta", "beta")
    assert serving.status_code == 422 and "serves from" in serving.text
    alien = shadow("alien", "staging/alien")
    assert alien.status_code == 404
    shutil.copytree(root / "same" / "beta", root / "broken" / "beta")
    pilots = next((root / "broken" / "beta").glob("pilots-*.npy"))
    pilots.write_bytes(pilots.read_bytes() + b"tampered")
    refused = shadow("beta", "broken/beta")
    assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_expert", refused.text
    assert pilots.name in refused.json()["error"]["message"]  # the loader's own error
    assert client.get("/admin/experts/beta/shadow", headers=ADMIN).status_code == 404
    assert client.delete("/admin/experts/beta/shadow", headers=ADMIN).status_code == 404
    assert client.post("/admin/experts/beta/shadow", json={"path": "same/beta"}, headers=ADMIN).status_code == 422

    assert shadow("beta", "same/beta", 0.5).status_code == 201
    assert shadow("beta", "same/beta").status_code == 409
    assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 409  # nothing kept: no change
    assert client.get("/admin/experts/beta/shadow", headers=ADMIN).json()["running"] is True


def ended(client: TestClient) -> None:
    wait_for(lambda: client.get("/admin/experts/beta/shadow", headers=ADMIN).status_code == 404, timeout=30)


def test_replace_rollback_and_removal_each_end_the_shadow(root: Path, make_client) -> None:
    client = make_client(root)

    def shadow(path: str) -> None:
        response = client.post("/admin/experts/beta/shadow", json={"path": path, "share": 1.0}, headers=ADMIN)
        assert response.status_code == 201, response.text

    shadow("shuffled/beta")
    assert client.post("/admin/experts", json={"path": "same/beta", "replace": True}, headers=ADMIN).status_code == 201
    ended(client)
    shadow("shuffled/beta")
    assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200
    ended(client)
    shadow("shuffled/beta")
    assert client.delete("/admin/experts/beta", headers=ADMIN).status_code == 200
    ended(client)
    assert "beta" not in client.app.state.service.runtime.engine.shadows.experts


def test_a_seeded_share_is_shadowed_and_a_full_queue_drops(root: Path, make_client) -> None:
    client = make_client(root)
    queries = [f"compiler parser {i}" for i in range(40)]
    body = {"path": "same/beta", "share": 0.5, "seed": 7}
    assert client.post("/admin/experts/beta/shadow", json=body, headers=ADMIN).status_code == 201
    assert client.post("/search", json={"queries": queries, "expert": "beta", "k": 5}).status_code == 200
    draws = random.Random(7)
    expected = sum(draws.random() < 0.5 for _ in queries)
    assert 10 < expected < 30
    wait_for(lambda: client.get("/admin/experts/beta/shadow", headers=ADMIN).json()["shadowed"] == expected)
    report = client.get("/admin/experts/beta/shadow", headers=ADMIN).json()
    assert report["mean_overlap"] == 1.0 and report["dropped"] == 0

    client.app.state.service.runtime.engine.shadows.limit = 0  # a full queue: the work is dropped, and counted
    assert client.post("/search", json={"queries": queries, "expert": "beta", "k": 5}).status_code == 200
    report = client.get("/admin/experts/beta/shadow", headers=ADMIN).json()
    assert report["shadowed"] == expected and report["dropped"] == sum(draws.random() < 0.5 for _ in queries) > 0
    assert f'rr_shadow_dropped_queries_total{{expert="beta"}} {float(report["dropped"])}' in client.get("/metrics").text


def test_compare_top() -> None:
    ids = [f"d{i}" for i in range(10)]
    assert compare_top(ids, ids).overlap == 1.0 and not compare_top(ids, ids).differs
    swapped = compare_top(ids, [ids[1], ids[0], *ids[2:]])
    assert swapped.overlap == 1.0 and swapped.differs and swapped.top1_differs and swapped.displacement == 0.2
    half = compare_top(ids, [*ids[:5], *(f"x{i}" for i in range(5))])
    assert half.overlap == 0.5 and not half.top1_differs
    assert compare_top(["a", "b"], ["a"]).overlap == 0.5  # fewer hits: by the union's size
    assert compare_top([], []).overlap == 1.0
