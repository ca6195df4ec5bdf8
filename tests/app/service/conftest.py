"""Fixtures for the HTTP service: small experts on the tiny BERT, an in-process client, a real server.

The experts root is built once per session (a template) and copied for every
test that changes it, so each test starts from the same published set:

    <root>/registry.json      publishes alpha and beta
    <root>/alpha/             untrained adapter (base vectors), pilots
    <root>/beta/              trained (random) adapter, pilots
    <root>/staging/gamma/     trained adapter, pilots, no BM25 index; not published: admin tests add it
    <root>/staging/alien/     built on another base model: must be refused
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.offline.building import build_pilots, index_expert, pilot_texts_from_documents
from app.offline.job_runner import job_runner_factory
from app.publishing.registry import RegistryEntry, RegistryFile
from app.settings import Settings
from experts import Encoder, ExpertDir, create_expert
from index import LexicalSettings
from tests.conftest import save_random_adapter

REPO = Path(__file__).resolve().parents[3]
ADMIN_KEY = "admin-key-for-tests"
SEARCH_KEY = "search-key-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

TOPICS = {
    "alpha": ["wing lift", "supersonic drag", "boundary layer", "shock wave", "jet engine"],
    "beta": ["compiler parser", "operating system", "sorting algorithm", "database query", "memory cache"],
    "gamma": ["blood pressure", "vitamin therapy", "cancer cells", "immune response", "gene expression"],
    "alien": ["anything at all"],
}


def write_corpus(path: Path, name: str, count: int = 24) -> Path:
    topics = TOPICS[name]
    rows = [
        {
            "_id": f"{name}-{i}",
            "title": f"{topics[i % len(topics)]} {i}",
            "text": f"a study of {topics[i % len(topics)]} number {i}",
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_expert(
    root: Path, name: str, encoder: Encoder, *, adapter: Path | None = None, lexical: bool = True
) -> ExpertDir:
    """A complete expert (adapter, index, pilots) on ``encoder``, like `rr create-expert/index/pilots` would."""
    expert = create_expert(root, name, encoder=encoder, adapter_from=adapter, description=f"test expert {name}")
    corpus = write_corpus(root / f"{name}.jsonl", name)
    index_expert(
        expert, encoder, [corpus], progress=False, chunk_size=8, lexical=LexicalSettings() if lexical else None
    )
    # One centroid pilot, routed by the nearest pilot (``service_settings``): the routing tests
    # below were written against its margins; the knn default is covered by the MiniLM tests.
    build_pilots(expert, encoder, pilot_texts_from_documents(expert, sample=12), method="centroid")
    (root / f"{name}.jsonl").unlink()
    return expert


@pytest.fixture(scope="session")
def tiny_encoder(tiny_bert_path: Path) -> Encoder:
    return Encoder(tiny_bert_path, max_length=64, batch_size=16)


@pytest.fixture(scope="session")
def template_root(
    tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Encoder, tiny_bert_path: Path, other_bert_path: Path
) -> Path:
    root = tmp_path_factory.mktemp("template") / "experts"
    adapters = tmp_path_factory.mktemp("adapters")
    build_expert(root, "alpha", tiny_encoder)
    build_expert(root, "beta", tiny_encoder, adapter=save_random_adapter(tiny_bert_path, adapters / "beta", seed=11))
    gamma_adapter = save_random_adapter(tiny_bert_path, adapters / "gamma", seed=12)
    build_expert(root / "staging", "gamma", tiny_encoder, adapter=gamma_adapter, lexical=False)
    build_expert(root / "staging", "alien", Encoder(other_bert_path, max_length=64))
    RegistryFile(root).write([RegistryEntry(name="alpha", path="alpha"), RegistryEntry(name="beta", path="beta")])
    return root


@pytest.fixture()
def experts_root(template_root: Path, tmp_path: Path) -> Path:
    """A fresh copy of the template root for one test."""
    root = tmp_path / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    return root


def service_settings(root: Path, **overrides: object) -> Settings:
    # Every setting the tests rely on is passed explicitly (init arguments win over RR_* variables).
    # Dense search and nearest-pilot routing unless a test asks otherwise: the tests below check
    # routing and search mechanics against exact cosine scores; hybrid search has its own tests.
    defaults = {
        "data_dir": root,
        "admin_key": ADMIN_KEY,
        "router_aggregate": "max",
        "router_evidence": "none",
        "search_mode": "dense",
    }
    return Settings(**{**defaults, **overrides})  # type: ignore[arg-type]


def wait_for(condition, *, timeout: float = 120.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail (never hang) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout}s")
        time.sleep(0.02)


def wait_ready(client: TestClient | httpx.Client, *, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200:
            return response.json()
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout}s: {response.text}")
        time.sleep(0.05)


@pytest.fixture()
def make_client(tiny_encoder: Encoder) -> Iterator:
    """``make_client(root, **settings) -> TestClient`` for a ready in-process app; closed after the test."""
    stack: list[TestClient] = []

    def make(root: Path, *, wait: bool = True, **overrides: object) -> TestClient:
        client = TestClient(create_app(service_settings(root, **overrides), encoder=tiny_encoder))
        client.__enter__()
        stack.append(client)
        if wait:
            wait_ready(client)
        return client

    yield make
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client, experts_root: Path) -> TestClient:
    return make_client(experts_root)


# ---------------------------------------------------------------------- /admin/jobs
FINISHED = {"succeeded", "failed", "cancelled", "interrupted"}


def wait_job(http: httpx.Client | TestClient, job_id: str, *, until=lambda job: job["state"] in FINISHED, timeout=90.0):
    """Poll ``GET /admin/jobs/{id}`` until ``until(job)``; every answer seen is checked to be a whole record."""
    deadline = time.monotonic() + timeout
    while True:
        response = http.get(f"/admin/jobs/{job_id}", headers=ADMIN)
        assert response.status_code == 200, response.text
        job = response.json()
        if until(job):
            return job
        if job["state"] in FINISHED or time.monotonic() > deadline:
            raise AssertionError(f"job never reached the awaited state: {job}")
        time.sleep(0.05)


@pytest.fixture()
def make_jobs_client(tiny_encoder: Encoder) -> Iterator:
    """``make_jobs_client(root, **settings) -> TestClient``: a ready in-process app that runs jobs."""
    stack: list[TestClient] = []

    def make(root: Path, **overrides: object) -> TestClient:
        settings = service_settings(root, **overrides)
        client = TestClient(create_app(settings, encoder=tiny_encoder, jobs=job_runner_factory(settings)))
        client.__enter__()
        stack.append(client)
        wait_ready(client)
        return client

    yield make
    for client in reversed(stack):
        client.__exit__(None, None, None)


@pytest.fixture()
def jobs_client(make_jobs_client, experts_root: Path) -> TestClient:
    return make_jobs_client(experts_root)


def submit(http: httpx.Client | TestClient, **body: Any) -> httpx.Response:
    return http.post("/admin/jobs", json=body, headers=ADMIN)


# ---------------------------------------------------------------------- a real server
def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch_subprocess(argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> subprocess.Popen:
    """``python -m app ARGV`` in a fresh interpreter, its stdout and stderr appended to ``log``."""
    with open(log, "ab") as sink:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "app", *argv], cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT
        )


class ServerProcess:
    """``rr serve`` in a subprocess on a free loopback port; its log goes to a file shown on failure.

    ``launch`` starts the process (default: a fresh interpreter); the reliability tests pass one that
    forks a preloaded interpreter, to restart servers many times in little time.
    """

    def __init__(
        self,
        root: Path,
        log: Path,
        *,
        base_model: Path | None,
        env: dict[str, str] | None = None,
        launch: Callable[..., Any] = launch_subprocess,
        log_level: str = "info",
    ) -> None:
        self.root, self.log_path = root, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        environment = {k: v for k, v in os.environ.items() if not k.startswith("RR_")}
        environment.update(
            PYTHONPATH=str(REPO),
            RR_ADMIN_KEY=ADMIN_KEY,
            RR_ROUTER_AGGREGATE="max",
            RR_ROUTER_EVIDENCE="none",
            RR_SEARCH_MODE="dense",
            **(env or {}),
        )
        if base_model is not None:
            environment["RR_BASE_MODEL"] = str(base_model)
        argv = ["serve", "--data", str(root), "--port", str(self.port), "--log-level", log_level]
        self.process = launch(argv, env=environment, cwd=REPO, log=log)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def wait_ready(self, *, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5.0) as probe:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
                try:
                    if probe.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, as a process manager would; returns the exit status (uvicorn re-raises the signal: -15)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully: lifespan end, experts closed
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        return self.process.returncode

    def stopped_cleanly(self) -> bool:
        """Stopped, and the lifespan's shutdown (batchers drained, experts unloaded) ran to its end."""
        code = self.stop()
        return code in (0, -signal.SIGTERM) and "Application shutdown complete" in self.log()


@pytest.fixture()
def start_server(tmp_path: Path, tiny_bert_path: Path) -> Iterator:
    """``start_server(root, base_model=tiny, env=...) -> ServerProcess`` (ready); every one is stopped after the test."""
    servers: list[ServerProcess] = []

    def start(
        root: Path,
        *,
        base_model: Path | None = tiny_bert_path,
        env: dict[str, str] | None = None,
        launch: Callable[..., Any] = launch_subprocess,
    ) -> ServerProcess:
        server = ServerProcess(
            root, tmp_path / f"server-{len(servers)}.log", base_model=base_model, env=env, launch=launch
        )
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()
