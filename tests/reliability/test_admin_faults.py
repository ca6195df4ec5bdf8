"""``kill -9`` the server while it publishes or unpublishes an expert, then restart it.

The registry file is the commit point of the admin API: whatever instant the
process dies at, the restarted server must publish either the set from
before the request or the set after it, never a mixture, a half-written file
or an expert whose files are half there, and ``/readyz`` must name exactly
the experts that are up. A disk that fills up during an upload is a 507
that changes nothing.
"""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.app.service.conftest import ADMIN, ServerProcess
from tests.app.service.test_admin_api import tar_gz
from tests.reliability.forked import ForkedProcess

BEFORE = ["alpha", "beta"]
AFTER = ["alpha", "beta", "gamma"]
KILLS_PER_OPERATION = 6
SEED = 7


def registry_names(root: Path) -> list[str]:
    return [entry["name"] for entry in json.loads((root / "registry.json").read_text())["experts"]]


class Restarts:
    """The server of one data root, killed and started again; every one is stopped at the end."""

    def __init__(self, root: Path, logs: Path, tiny_bert_path: Path) -> None:
        self.root, self.logs, self.base = root, logs, tiny_bert_path
        self.servers: list[ServerProcess] = []

    def start(self) -> ServerProcess:
        server = ServerProcess(
            self.root, self.logs / f"server-{len(self.servers)}.log", base_model=self.base, launch=ForkedProcess
        )
        self.servers.append(server)
        server.wait_ready(timeout=120)  # a ceiling, not a timing assertion
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


def _request(server: ServerProcess, operation: str, archive: bytes) -> None:
    """The admin call; the server may die under it, so a transport error is expected."""
    with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as http:
        try:
            if operation == "delete":
                http.delete("/admin/experts/gamma")
            elif operation == "add-path":
                http.post("/admin/experts", json={"path": "staging/gamma"})
            else:
                http.post("/admin/experts", content=archive, headers={"Content-Type": "application/gzip"})
        except httpx.TransportError:
            pass


def _timed(server: ServerProcess, operation: str, archive: bytes) -> float:
    started = time.perf_counter()
    _request(server, operation, archive)
    return time.perf_counter() - started


#: The calls interrupted, in order: 6 publishes (alternately by path and by archive) and 6 unpublishes.
PLAN = ["add-path", "delete", "add-archive", "delete"] * (KILLS_PER_OPERATION // 2)


def uploads_in_use(root: Path) -> tuple[set[str], set[str]]:
    """(directories under uploads/, those the registry names, serving or kept): equal when none is orphaned."""
    uploads = root / "uploads"
    present = {entry.name for entry in uploads.iterdir()} if uploads.is_dir() else set()
    entries = json.loads((root / "registry.json").read_text())["experts"]
    paths = [path for entry in entries for path in (entry["path"], *(v["path"] for v in entry.get("versions", [])))]
    named = {Path(path).parts[1] for path in paths if Path(path).parts[0] == "uploads"}
    return present, named


@pytest.mark.timeout(300)
def test_kill_9_during_publish_and_unpublish_leaves_the_old_or_the_new_set(
    experts_root: Path, tmp_path: Path, tiny_bert_path: Path, figures
) -> None:
    """Each call of :data:`PLAN` is killed at a seeded instant in 0-120% of how long that call takes.

    The call needs a starting state (a publish starts from BEFORE, an
    unpublish from AFTER); when the previous kill left the other one, an
    uninterrupted call gets there first. (The first version instead chose the
    next call from the state the last kill left: under heavy load, when calls
    took longer than measured, kills kept landing before the publish was done,
    no unpublish was ever reached, and it ran out of rounds.) The durations
    are the longest seen so far, updated by every uninterrupted call, so the
    kills stay spread over the call when the machine slows down.
    """
    archive = tar_gz({"gamma": experts_root / "staging" / "gamma"})
    restarts = Restarts(experts_root, tmp_path, tiny_bert_path)
    rng = random.Random(SEED)
    observed: dict[str, list[str]] = {"add-path": [], "add-archive": [], "delete": []}
    try:
        server = restarts.start()
        # How long each call takes when nothing goes wrong: the kills are spread over 0-120% of that.
        duration = {"add-path": _timed(server, "add-path", archive), "delete": _timed(server, "delete", archive)}
        duration["add-archive"] = _timed(server, "add-archive", archive)
        duration["delete"] = max(duration["delete"], _timed(server, "delete", archive))
        assert registry_names(experts_root) == BEFORE

        for operation in PLAN:
            start_from = BEFORE if operation.startswith("add") else AFTER
            if registry_names(experts_root) != start_from:
                setup = "delete" if operation.startswith("add") else "add-path"
                duration[setup] = max(duration[setup], _timed(server, setup, archive))
                assert registry_names(experts_root) == start_from
            caller = threading.Thread(target=_request, args=(server, operation, archive))
            # Stratified: the i-th of n kills of a call lands in the i-th n-th of 0-120% of its duration, so
            # the early, middle and late instants (before and after the registry is written) are all tried.
            stratum, strata = len(observed[operation]), PLAN.count(operation)
            delay = 1.2 * duration[operation] * (stratum + rng.random()) / strata
            caller.start()
            time.sleep(delay)
            server.process.kill()
            assert server.process.wait(timeout=30) == -signal.SIGKILL
            caller.join(timeout=30)

            after = registry_names(experts_root)  # parses: never a half-written file
            assert after in (BEFORE, AFTER), after
            server = restarts.start()  # ready means every published expert loaded
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/readyz").json() == {"status": "ready", "experts": after}
                for name in after:
                    hits = http.post("/search", json={"query": "a study", "expert": name, "k": 3}).json()
                    assert {hit["expert"] for hit in hits["results"][0]["hits"]} == {name}
            # Temporary files of the interrupted write are gone, and so is any unpacked upload no longer published.
            assert not list(experts_root.glob(".registry.json.*")) and not list(experts_root.glob("uploads/.*"))
            present, named = uploads_in_use(experts_root)
            assert present == named, (present, named)
            state = "new" if after != start_from else "old"
            observed[operation].append(f"{delay * 1000:.0f}ms:{state}")
    finally:
        restarts.stop_all()
    cleaned = sum(server.log().count("that was interrupted") for server in restarts.servers)
    orphans = sum(server.log().count("no longer published") for server in restarts.servers)
    figures(
        restarts=len(restarts.servers) - 1,
        leftovers_removed_at_start=cleaned,
        orphaned_uploads_removed=orphans,
        call_ms={key: round(value * 1000) for key, value in duration.items()},
        **{key.replace("-", "_"): " ".join(values) for key, values in observed.items()},
    )


def serving_path(root: Path, name: str) -> tuple[str, list[str]]:
    """(the path ``name`` serves from, the paths of its kept versions) as the registry says."""
    entry = next(e for e in json.loads((root / "registry.json").read_text())["experts"] if e["name"] == name)
    return entry["path"], [v["path"] for v in entry.get("versions", [])]


@pytest.mark.timeout(300)
def test_kill_9_during_a_rollback_leaves_either_version_serving(
    experts_root: Path, tmp_path: Path, tiny_bert_path: Path, figures
) -> None:
    """Rollbacks between ``beta`` and ``v2/beta``, each killed at a seeded instant in 0-120% of a rollback's
    duration: the restarted server serves one of the two, keeps the other, and answers searches of beta."""
    shutil.copytree(experts_root / "beta", experts_root / "v2" / "beta")
    restarts = Restarts(experts_root, tmp_path, tiny_bert_path)
    rng = random.Random(SEED)
    observed = []
    try:
        server = restarts.start()
        with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as http:
            response = http.post("/admin/experts", json={"path": "v2/beta", "replace": True})
            assert response.status_code == 201, response.text
        duration = 0.0
        for kill in range(KILLS_PER_OPERATION):
            started = time.perf_counter()  # an uninterrupted one first: the longest seen spreads the kills
            _rollback(server)
            duration = max(duration, time.perf_counter() - started)
            before = serving_path(experts_root, "beta")
            caller = threading.Thread(target=_rollback, args=(server,))
            delay = 1.2 * duration * (kill + rng.random()) / KILLS_PER_OPERATION
            caller.start()
            time.sleep(delay)
            server.process.kill()
            assert server.process.wait(timeout=30) == -signal.SIGKILL
            caller.join(timeout=30)
            after = serving_path(experts_root, "beta")  # parses: never a half-written file
            assert after[0] in ("beta", "v2/beta") and after[1] == [p for p in ("beta", "v2/beta") if p != after[0]]
            server = restarts.start()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                assert http.get("/readyz").json() == {"status": "ready", "experts": BEFORE}
                hits = http.post("/search", json={"query": "a study", "expert": "beta", "k": 3}).json()
                assert {hit["expert"] for hit in hits["results"][0]["hits"]} == {"beta"}
                assert http.get("/experts/beta").json()["path"] == after[0]
            observed.append(f"{delay * 1000:.0f}ms:{'new' if after != before else 'old'}")
    finally:
        restarts.stop_all()
    figures(rollback_ms=round(duration * 1000), kills=" ".join(observed))


def _rollback(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as http:
        try:
            http.post("/admin/experts/beta/rollback")
        except httpx.TransportError:
            pass


@pytest.mark.timeout(120)
@pytest.mark.parametrize("stage", ["receiving", "unpacking"])
def test_a_full_disk_during_an_upload_is_a_507_and_changes_nothing(
    template_root: Path, tmp_path: Path, tiny_bert_path: Path, stage: str, figures
) -> None:
    """The server's RLIMIT_FSIZE is lowered while it runs (``prlimit``): writing past 512 KiB fails with
    EFBIG, as on a full disk. ``receiving``: 1 MiB of random bytes, the archive itself is too big to
    store. ``unpacking``: 1 MiB of zeros, a small archive whose member is too big to unpack."""
    root = tmp_path / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    padding = os.urandom(1 << 20) if stage == "receiving" else bytes(1 << 20)
    archive = tar_gz({"gamma": root / "staging" / "gamma", "gamma/padding.bin": padding})
    server = ServerProcess(root, tmp_path / "server.log", base_model=tiny_bert_path, launch=ForkedProcess)
    try:
        server.wait_ready(timeout=90)
        registry = (root / "registry.json").read_bytes()
        limit = 512 << 10
        resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
        with httpx.Client(base_url=server.url, timeout=30, headers=ADMIN) as http:
            response = http.post("/admin/experts", content=archive, headers={"Content-Type": "application/gzip"})
            assert response.status_code == 507, response.text
            error = response.json()["error"]
            assert error["type"] == "insufficient_storage" and "File too large" in error["message"]
            assert (root / "registry.json").read_bytes() == registry
            assert list((root / "uploads").iterdir()) == []  # the partial upload and its staging are gone
            assert http.post("/search", json={"query": "wing lift", "k": 2}).status_code == 200
            assert http.get("/readyz").json()["experts"] == BEFORE

            resource.prlimit(
                server.process.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
            )
            retried = http.post("/admin/experts", content=archive, headers={"Content-Type": "application/gzip"})
            assert retried.status_code == 201, retried.text
    finally:
        assert server.stopped_cleanly(), server.log()
    assert "out of disk space on POST /admin/experts" in server.log_path.read_text()
    figures(stage=stage, archive_bytes=len(archive), limit_bytes=limit, message=error["message"][:90])
