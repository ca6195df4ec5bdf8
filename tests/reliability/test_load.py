"""32 clients search a real server for a minute while experts are published and unpublished every 2 s.

Every response is checked, not sampled: a 200 must validate against the
response schema and hold only the answering expert's documents (a query
forced to X gets X's documents, a routed one those of the experts its route
names, and ids carry their collection's prefix); a search naming the expert
that comes and goes is a 200 or a 404 ``unknown_expert``, nothing else; no
5xx and no dropped connection at all. Meanwhile the admin client adds
``gamma``, swaps ``beta`` for a copy of itself (``replace``), and removes
``gamma`` again, every ``CHURN_S`` seconds; each of those calls must succeed.

Memory: the server's RSS (``/proc/<pid>/status``) is read once the service is
warm (one churn cycle and a few seconds of traffic done), every second of
the run, and after the last removal; it must come back near the warm
figure. The structural checks are exact: every adapter the server loaded was
removed again (its log), and no file of a removed expert is still open or
mapped (``/proc/<pid>/fd`` and ``/proc/<pid>/maps``).

``RELIABILITY_LOAD_S`` shortens the run locally (CI runs the default, 60 s;
see docs/reliability.md).
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from app.api.schemas import SearchResponse
from tests.app.service.conftest import ADMIN, TOPICS, ServerProcess
from tests.reliability.conftest import read_rss_bytes
from tests.reliability.forked import ForkedProcess

LOAD_S = float(os.environ.get("RELIABILITY_LOAD_S", "60"))
CLIENTS = 32
CHURN_S = 2.0
STABLE = ("alpha", "beta")
CHURNED = "gamma"
RSS_BOUND = 96 << 20  # generous: what a leak of every gamma and beta load would pass within a minute


def _problems(kind: str, body: dict, forced: str | None) -> list[str]:
    """What is wrong with a 200 body: malformed, or documents from an expert that did not answer."""
    try:
        SearchResponse.model_validate(body)
    except ValueError as exc:
        return [f"{kind}: malformed body: {exc}"]
    found = []
    for result in body["results"]:
        route = result["route"]
        allowed = {forced} if forced is not None else set(route["experts"])
        if result["expert"] != route["experts"][0] or (forced is not None and route["mode"] != "forced"):
            found.append(f"{kind}: answered by {result['expert']} on route {route}")
        for hit in result["hits"]:
            if hit["expert"] not in allowed or not hit["id"].startswith(f"{hit['expert']}-"):
                found.append(f"{kind}: hit {hit['id']} of {hit['expert']} on route {route['experts']}")
    return found


class Traffic:
    """The 32 clients: each a thread with its own connection, sending a seeded mix of searches."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: Counter[tuple[str, int | str]] = Counter()
        self.problems: list[str] = []
        self.latencies: list[float] = []

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        topics = [topic for name in (*STABLE, CHURNED) for topic in TOPICS[name]]
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                kind = rng.choices(["routed", "forced", "churned", "fanout", "batch"], [40, 25, 15, 10, 10])[0]
                forced = rng.choice(STABLE) if kind == "forced" else CHURNED if kind == "churned" else None
                body: dict = {"query": rng.choice(topics), "k": rng.randint(1, 8)}
                if forced is not None:
                    body["expert"] = forced
                if kind == "fanout":
                    body["route"] = {"top_k": 2}
                if kind == "batch":
                    body = {"queries": rng.sample(topics, 3), "k": 3}
                started = time.perf_counter()
                try:
                    response = http.post("/search", json=body)
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.statuses[kind, type(exc).__name__] += 1
                        self.problems.append(f"{kind}: {exc!r}")
                    continue
                elapsed = time.perf_counter() - started
                found: list[str] = []
                if response.status_code == 200:
                    found = _problems(kind, response.json(), forced)
                elif not (
                    kind == "churned"
                    and response.status_code == 404
                    and response.json()["error"]["type"] == "unknown_expert"
                ):
                    found = [f"{kind}: {response.status_code} {response.text[:200]}"]
                with self.lock:
                    self.statuses[kind, response.status_code] += 1
                    self.latencies.append(elapsed)
                    self.problems.extend(found)


def _churn(server: ServerProcess, cycles: range, results: list[str], *, stop: threading.Event | None = None) -> None:
    """Add gamma, swap beta (odd cycles), remove gamma; ``CHURN_S`` between steps. Records every call."""
    with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as admin:
        for cycle in cycles:
            steps = [("POST", {"path": f"staging/{CHURNED}"}, 201)]
            if cycle % 2 == 1:
                steps.append(("POST", {"path": "v2/beta" if cycle % 4 == 1 else "beta", "replace": True}, 201))
            steps.append(("DELETE", None, 200))
            for method, body, expected in steps:
                if stop is not None and stop.is_set() and method == "POST":
                    return
                if method == "POST":
                    response = admin.post("/admin/experts", json=body)
                else:
                    response = admin.delete(f"/admin/experts/{CHURNED}")
                results.append(f"{method} {body or CHURNED}: {response.status_code}")
                if response.status_code != expected:
                    results.append(f"FAILED: {response.text[:300]}")
                time.sleep(CHURN_S)


def _open_files_under(pid: int, directory: Path) -> list[str]:
    """Paths under ``directory`` that the process holds open or mapped."""
    prefix = str(directory.resolve())
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(prefix):
            held.append(target)
    held += [line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if prefix in line]
    return held


@pytest.mark.timeout(int(LOAD_S) + 180)
def test_32_clients_while_experts_come_and_go(
    experts_root: Path, tmp_path: Path, tiny_bert_path: Path, figures
) -> None:
    shutil.copytree(experts_root / "beta", experts_root / "v2" / "beta")
    server = ServerProcess(
        experts_root,
        tmp_path / "server.log",
        base_model=tiny_bert_path,
        launch=ForkedProcess,
        env={"RR_BATCH_WAIT_MS": "2", "RR_DRAIN_TIMEOUT_S": "10"},
    )
    traffic = Traffic(server.url)
    admin_log: list[str] = []
    clients = [threading.Thread(target=traffic.client, args=(seed,)) for seed in range(CLIENTS)]
    try:
        server.wait_ready(timeout=90)
        pid = server.process.pid
        rss_start = read_rss_bytes(pid)
        for client in clients:
            client.start()
        _churn(server, range(1, 2), admin_log)  # warm-up: add, replace, remove once, under traffic
        rss_warm = read_rss_bytes(pid)
        started = time.monotonic()
        churner = threading.Thread(
            target=_churn, args=(server, range(2, 10_000), admin_log), kwargs={"stop": traffic.stop}
        )
        churner.start()
        rss_peak = rss_warm
        while time.monotonic() - started < LOAD_S:
            time.sleep(1.0)
            rss_peak = max(rss_peak, read_rss_bytes(pid))
        traffic.stop.set()
        churner.join(timeout=120)
        for client in clients:
            client.join(timeout=60)
        seconds = time.monotonic() - started
        with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as admin:
            if CHURNED in admin.get("/readyz").json()["experts"]:
                assert admin.delete(f"/admin/experts/{CHURNED}").json()["unloaded"] is True
            assert admin.post("/admin/experts", json={"path": "beta", "replace": True}).status_code == 201
            assert admin.get("/readyz").json() == {"status": "ready", "experts": list(STABLE)}
        time.sleep(1.0)
        rss_end = read_rss_bytes(pid)
        held = _open_files_under(pid, experts_root / "staging" / CHURNED) + _open_files_under(pid, experts_root / "v2")
    finally:
        traffic.stop.set()
        for client in clients:
            if client.is_alive():
                client.join(timeout=60)
        stopped = server.stopped_cleanly()
    log = server.log_path.read_text()

    assert not [line for line in admin_log if line.startswith("FAILED")], admin_log
    assert traffic.problems == [], traffic.problems[:20]
    server_errors = sum(n for (_, status), n in traffic.statuses.items() if isinstance(status, int) and status >= 500)
    assert server_errors == 0 and stopped
    loaded = {name for name in _adapter_names(log, "loaded adapter")}
    removed = {name for name in _adapter_names(log, "removed adapter")}
    assert loaded == removed, f"adapters never removed: {sorted(loaded - removed)}"
    assert held == [], held
    assert rss_end - rss_warm < RSS_BOUND, (rss_start, rss_warm, rss_peak, rss_end)

    requests = sum(traffic.statuses.values())
    latencies = sorted(traffic.latencies)
    mib = lambda value: round(value / (1 << 20), 1)  # noqa: E731
    figures(
        seconds=round(seconds),
        clients=CLIENTS,
        requests=requests,
        per_second=round(requests / seconds),
        statuses=dict(sorted((f"{k}:{s}", n) for (k, s), n in traffic.statuses.items())),
        p50_ms=round(statistics.median(latencies) * 1000, 1),
        p99_ms=round(latencies[int(len(latencies) * 0.99)] * 1000, 1),
        admin_calls=len(admin_log),
        adapters_loaded=len(loaded),
        rss_mib=f"start {mib(rss_start)} warm {mib(rss_warm)} peak {mib(rss_peak)} end {mib(rss_end)}",
    )


def _adapter_names(log: str, what: str) -> list[str]:
    """Adapter names from the encoder's log lines ("loaded adapter 'gamma@v3-1a2b3c4d' from ...")."""
    return [line.split("'")[1] for line in log.splitlines() if f"{what} '" in line]
