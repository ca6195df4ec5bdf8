"""Fixtures for the reliability tests: the service fixtures, a fast launcher, and a figures report.

The small experts (alpha, beta published; staging/gamma not; staging/alien
built on another base model), the in-process client and the real-server
helpers are those of ``tests/app/service`` (imported here, so they are the
same fixtures). What this folder adds:

- ``launch``: starts ``rr`` commands as real child processes forked from a
  preloaded interpreter (:mod:`tests.reliability.forked`), so that a test can
  kill and restart the server or the indexing job a dozen times in seconds;
- ``figures``: each test records what it measured (kill points, requests,
  memory); the figures are printed at the end of the run, under
  "reliability figures", and docs/reliability.md quotes them.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.app.service.conftest import (  # noqa: F401  (fixtures, re-exported for this folder)
    ServerProcess,
    client,
    experts_root,
    make_client,
    start_server,
    template_root,
    tiny_encoder,
)
from tests.reliability.forked import ForkedProcess

_FIGURES: list[str] = []


@pytest.fixture(scope="session")
def launch() -> Callable[..., ForkedProcess]:
    """``launch(argv, env=..., cwd=..., log=...)``: ``rr argv`` in a fresh child process, started in ~0.3 s."""
    return ForkedProcess


@pytest.fixture()
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``figures(key=value, ...)``: record what this test measured, for the end-of-run report."""

    def record(**values: Any) -> None:
        text = ", ".join(f"{key}={value}" for key, value in values.items())
        _FIGURES.append(f"{request.node.name}: {text}")

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _FIGURES:
        terminalreporter.section("reliability figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)


def read_rss_bytes(pid: int) -> int:
    """Resident set size of a process, from ``/proc/<pid>/status`` (``VmRSS``, in kB there)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


@contextmanager
def forked_server(template: Path, base_model: Path, work: Path, **options: Any) -> Iterator[ServerProcess]:
    """A real ``rr serve`` on a fresh copy of ``template`` (an experts root) in ``work/experts``, forked (ready in
    ~0.5 s); it must stop cleanly. ``options`` go to :class:`ServerProcess` (``env``, ``log_level``)."""
    root = work / "experts"
    shutil.copytree(template, root, symlinks=True)
    server = ServerProcess(root, work / "server.log", base_model=base_model, launch=ForkedProcess, **options)
    try:
        server.wait_ready(timeout=90)
        yield server
    finally:
        assert server.stopped_cleanly(), server.log()
