"""Expert versions: a replace keeps the old version (RR_KEEP_VERSIONS), the listing shows them, a rollback swaps back."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.engine.documents import LIVE_DIR
from app.publishing.versions import archive_replaced
from experts import Encoder, ExpertDir
from tests.app.conftest import run_cli
from tests.app.service.conftest import ADMIN, build_expert, service_settings, wait_ready
from tests.app.service.test_admin_api import tar_gz
from tests.conftest import save_random_adapter

QUERY = "beta document about topic 3"


def error_of(response) -> dict:
    return response.json()["error"]


@pytest.fixture(scope="module")
def beta_versions(tmp_path_factory: pytest.TempPathFactory, tiny_encoder: Encoder, tiny_bert_path: Path) -> Path:
    """``v2/beta`` and ``v3/beta``: beta with other adapters (other answers), and higher manifest versions."""
    root = tmp_path_factory.mktemp("beta-versions")
    for bump, folder in enumerate(("v2", "v3"), start=1):
        adapter = save_random_adapter(tiny_bert_path, root / f"adapter-{folder}", seed=40 + bump)
        expert = build_expert(root / folder, "beta", tiny_encoder, adapter=adapter)
        for _ in range(bump * 5):  # clear of the template's version, whatever it is
            expert.publish(pilots=expert.read_manifest().pilots)
    return root


@pytest.fixture()
def root(experts_root: Path, beta_versions: Path) -> Path:
    for folder in ("v2", "v3"):
        shutil.copytree(beta_versions / folder, experts_root / folder)
    return experts_root


def hits(client: TestClient, expert: str = "beta") -> list[tuple[str, float]]:
    response = client.post("/search", json={"query": QUERY, "expert": expert, "k": 5})
    assert response.status_code == 200, response.text
    return [(hit["id"], round(hit["score"], 5)) for hit in response.json()["results"][0]["hits"]]


def replace(client: TestClient, path: str) -> dict:
    response = client.post("/admin/experts", json={"path": path, "replace": True}, headers=ADMIN)
    assert response.status_code == 201, response.text
    return response.json()


def versions(client: TestClient, name: str = "beta") -> list[dict]:
    response = client.get(f"/experts/{name}")
    assert response.status_code == 200, response.text
    return response.json()["versions"]


def manifest_version(root: Path, path: str) -> int:
    return ExpertDir(root / path).read_manifest().version


def test_a_replace_keeps_the_old_version_and_a_rollback_restores_its_answers(make_client, root: Path) -> None:
    client = make_client(root)
    before = hits(client)
    v1, v2 = manifest_version(root, "beta"), manifest_version(root, "v2/beta")
    replace(client, "v2/beta")
    assert hits(client) != before  # another adapter: other scores
    listed = versions(client)
    assert [(v["version"], v["path"], v["serving"]) for v in listed] == [(v2, "v2/beta", True), (v1, "beta", False)]
    assert listed[1]["documents"] == 24 and listed[1]["trained"] is True and "training" in listed[1]
    assert (root / "beta" / "manifest.json").is_file()  # kept on disk

    response = client.post("/admin/experts/beta/rollback", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["path"] == "beta" and response.json()["version"] == v1
    assert hits(client) == before
    assert [(v["version"], v["serving"]) for v in versions(client)] == [(v1, True), (v2, False)]

    # A rollback is undone by another (to a named version); the registry survives a restart.
    assert client.post("/admin/experts/beta/rollback", json={"version": v2}, headers=ADMIN).status_code == 200
    restarted = make_client(root)
    assert [(v["version"], v["serving"]) for v in versions(restarted)] == [(v2, True), (v1, False)]


def test_rollback_to_a_version_not_kept_is_404_naming_the_kept_ones(make_client, root: Path) -> None:
    client = make_client(root)
    v1 = manifest_version(root, "beta")
    replace(client, "v2/beta")
    response = client.post("/admin/experts/beta/rollback", json={"version": 999}, headers=ADMIN)
    assert response.status_code == 404 and error_of(response)["type"] == "unknown_version"
    assert f"Kept versions: [{v1}]" in error_of(response)["message"]
    response = client.post("/admin/experts/alpha/rollback", headers=ADMIN)  # never replaced: nothing kept
    assert response.status_code == 409 and "keeps no older version" in error_of(response)["message"]
    assert client.post("/admin/experts/nope/rollback", headers=ADMIN).status_code == 404
    assert client.post("/admin/experts/beta/rollback").status_code == 401
    response = client.post("/admin/experts/beta/rollback", json={"version": -1}, headers=ADMIN)
    assert response.status_code == 422


def test_a_broken_kept_version_is_refused_and_the_serving_one_stays(make_client, root: Path) -> None:
    client = make_client(root)
    replace(client, "v2/beta")
    serving = hits(client)
    shutil.rmtree(root / "beta" / "adapter")
    response = client.post("/admin/experts/beta/rollback", headers=ADMIN)
    assert response.status_code == 422, response.text
    assert hits(client) == serving and versions(client)[0]["path"] == "v2/beta"


def test_retention_prunes_beyond_keep_versions(make_client, root: Path) -> None:
    client = make_client(root, keep_versions=2)
    replace(client, "v2/beta")
    replace(client, "v3/beta")
    assert [v["path"] for v in versions(client)] == ["v3/beta", "v2/beta"]
    assert (root / "beta").is_dir()  # a directory an admin placed is forgotten, never deleted
    response = client.post(
        "/admin/experts/beta/rollback", json={"version": manifest_version(root, "beta")}, headers=ADMIN
    )
    assert response.status_code == 404


def test_uploaded_versions_are_kept_then_pruned(make_client, root: Path) -> None:
    client = make_client(root, keep_versions=2)
    paths = []
    for folder in ("v2", "v3", "v2"):
        archive = tar_gz({"beta": root / folder / "beta"})
        response = client.post(
            "/admin/experts?replace=true", content=archive, headers={**ADMIN, "Content-Type": "application/gzip"}
        )
        assert response.status_code == 201, response.text
        paths.append(response.json()["path"])
    assert [v["path"] for v in versions(client)] == [paths[2], paths[1]]
    assert not (root / paths[0]).exists()  # pruned once released
    assert (root / paths[1]).is_dir() and (root / paths[2]).is_dir()
    restarted = make_client(root)  # start-up keeps the uploads a kept version uses
    assert (root / paths[1]).is_dir()
    assert restarted.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200
    assert versions(restarted)[0]["path"] == paths[1]


def test_a_version_replaced_in_place_is_found_under_dot_versions(make_client, root: Path) -> None:
    """`rr train-expert --replace` moves the old version to .versions/ and the new one to <root>/<name>."""
    client = make_client(root)
    before = hits(client)
    v1 = manifest_version(root, "beta")
    kept = archive_replaced(root / "beta", root, "beta", v1)
    shutil.copytree(root / "v2" / "beta", root / "beta")
    replace(client, "beta")
    assert [v["path"] for v in versions(client)] == ["beta", kept.relative_to(root).as_posix()]
    assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200
    assert hits(client) == before


def test_writes_since_the_swap_are_carried_to_the_version_rolled_back_to(make_client, root: Path) -> None:
    """Upserts, a replace of a document and deletes acknowledged between a swap and a rollback, a merge between
    them too: after the rollback every one is there (or gone) in the kept version, dense and lexical."""
    client = make_client(root)
    v1 = manifest_version(root, "beta")
    replace(client, "v2/beta")
    docs = [
        {"id": "new-1", "title": "zyxqwv", "text": "written after the swap", "metadata": {"year": 2026}},
        {"id": "beta-3", "text": "beta-3 rewritten after the swap"},
        {"id": "new-2", "text": "written, then deleted"},
    ]
    response = client.put("/admin/experts/beta/documents", json={"documents": docs}, headers=ADMIN)
    assert response.status_code == 200, response.text
    assert client.post("/admin/experts/beta/merge", headers=ADMIN).status_code == 200  # folded into v2's index
    response = client.request(
        "DELETE", "/admin/experts/beta/documents", json={"ids": ["beta-4", "new-2"]}, headers=ADMIN
    )
    assert response.status_code == 200 and response.json()["deleted"] == ["beta-4", "new-2"], response.text

    response = client.post("/admin/experts/beta/rollback", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == v1 and response.json()["documents"] == 24  # 24 + new-1 - beta-4

    def document(doc_id: str) -> dict | None:
        got = client.get(f"/experts/beta/documents/{doc_id}")
        assert got.status_code in (200, 404), got.text
        return got.json() if got.status_code == 200 else None

    assert document("new-1") is not None and document("new-1")["metadata"] == {"year": 2026}
    assert document("beta-3")["text"] == "beta-3 rewritten after the swap"
    assert document("beta-4") is None and document("new-2") is None
    lexical = client.post("/search", json={"query": "zyxqwv", "expert": "beta", "mode": "lexical", "k": 1}).json()
    assert lexical["results"][0]["hits"][0]["id"] == "new-1"
    # In v1's dense index too (embedded there, through v1's live-write path): its own text finds it first.
    dense = client.post("/search", json={"query": "zyxqwv\nwritten after the swap", "expert": "beta", "k": 1})
    assert dense.json()["results"][0]["hits"][0]["id"] == "new-1"

    # Back again: v2's log holds them already and nothing was written since, so nothing more is carried.
    assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200
    assert document("new-1") is not None and document("beta-4") is None
    assert client.get("/experts/beta").json()["documents"] == 24


def test_writes_acknowledged_before_a_replace_are_carried_to_the_new_version(make_client, root: Path) -> None:
    """A replace built before some writes (as ``rr demo`` trains while documents are written) loses none of them."""
    client = make_client(root)
    docs = [
        {"id": "new-1", "title": "zyxqwv", "text": "written before the replace"},
        {"id": "beta-3", "text": "beta-3 rewritten before the replace"},
    ]
    response = client.put("/admin/experts/beta/documents", json={"documents": docs}, headers=ADMIN)
    assert response.status_code == 200, response.text
    response = client.request("DELETE", "/admin/experts/beta/documents", json={"ids": ["beta-4"]}, headers=ADMIN)
    assert response.status_code == 200, response.text

    assert replace(client, "v2/beta")["documents"] == 24  # 24 + new-1 - beta-4
    assert client.get("/experts/beta/documents/new-1").status_code == 200
    assert client.get("/experts/beta/documents/beta-3").json()["text"] == "beta-3 rewritten before the replace"
    assert client.get("/experts/beta/documents/beta-4").status_code == 404
    lexical = client.post("/search", json={"query": "zyxqwv", "expert": "beta", "mode": "lexical", "k": 1}).json()
    assert lexical["results"][0]["hits"][0]["id"] == "new-1"
    # Replaced again, by v3: v2's writes since it began serving are none, its carried ones are in v3 via v2's view.
    assert replace(client, "v3/beta")["documents"] == 24
    assert client.get("/experts/beta/documents/new-1").status_code == 200


def test_writes_that_cannot_be_carried_refuse_the_rollback_and_the_serving_version_stays(
    make_client, root: Path
) -> None:
    """Another process holds the kept version's live log: it opens read-only there, so the write is not carried."""
    client = make_client(root)
    replace(client, "v2/beta")
    response = client.put(
        "/admin/experts/beta/documents", json={"documents": [{"id": "new", "text": "written after"}]}, headers=ADMIN
    )
    assert response.status_code == 200, response.text
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(root / "beta" / LIVE_DIR)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        response = client.post("/admin/experts/beta/rollback", headers=ADMIN)
    finally:
        holder.kill()
        holder.wait()
    assert response.status_code == 409, response.text
    assert "could not be carried to the new one" in error_of(response)["message"]
    assert error_of(response)["details"] == {"reason": "DocumentsReadOnlyError"}
    assert versions(client)[0]["path"] == "v2/beta" and client.get("/experts/beta/documents/new").status_code == 200
    assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200  # the lock is free again
    assert client.get("/experts/beta/documents/new").status_code == 200


def test_searches_never_fail_during_replaces_and_rollbacks(make_client, root: Path) -> None:
    client = make_client(root)
    answers = {tuple(hits(client))}
    replace(client, "v2/beta")
    answers.add(tuple(hits(client)))
    failures: list[str] = []
    seen: set[tuple] = set()
    stop = threading.Event()

    def searching() -> None:
        while not stop.is_set():
            response = client.post("/search", json={"query": QUERY, "expert": "beta", "k": 5})
            if response.status_code != 200:
                failures.append(response.text)
                continue
            seen.add(tuple((h["id"], round(h["score"], 5)) for h in response.json()["results"][0]["hits"]))

    threads = [threading.Thread(target=searching) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(3):
            assert client.post("/admin/experts/beta/rollback", headers=ADMIN).status_code == 200
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == [] and seen and seen <= answers  # every answer is one version's, whole


def test_an_old_registry_file_loads(make_client, root: Path) -> None:
    (root / "registry.json").write_text(
        json.dumps({"format_version": 1, "experts": [{"name": "beta", "path": "beta", "version": 1}]})
    )
    client = make_client(root)
    assert [v["path"] for v in versions(client)] == ["beta"]
    replace(client, "v2/beta")
    written = json.loads((root / "registry.json").read_text())["experts"][0]
    assert written["versions"][0]["path"] == "beta" and written["live_seq"] == 0


def test_the_cli_lists_versions_and_rolls_back_at_rest(
    root: Path, tiny_encoder: Encoder, tiny_bert_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("RR_DATA_DIR", str(root))
    monkeypatch.setenv("RR_BASE_MODEL", str(tiny_bert_path))
    with TestClient(create_app(service_settings(root), encoder=tiny_encoder)) as client:
        wait_ready(client)
        before = hits(client)
        replace(client, "v2/beta")
    v1, v2 = manifest_version(root, "beta"), manifest_version(root, "v2/beta")
    code, out, err = run_cli(["experts", "versions", "beta", "--json"], capsys)
    assert code == 0, err
    assert [(row["version"], row["path"], row["serving"]) for row in json.loads(out)] == [
        (v2, "v2/beta", True),
        (v1, "beta", False),
    ]
    assert run_cli(["experts", "--json"], capsys)[0] == 0  # the bare group still lists the experts

    code, _, err = run_cli(["experts", "rollback", "beta", "--version", "999"], capsys)
    assert code == 2 and f"Kept versions: [{v1}]" in err
    holder = subprocess.Popen(  # another process holds the serving version's live log, as a running service does
        [sys.executable, "-c", HOLD_LOCK, str(root / "v2" / "beta" / LIVE_DIR)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        code, _, err = run_cli(["experts", "rollback", "beta"], capsys)
        assert code == 2 and "running service" in err
    finally:
        holder.kill()
        holder.wait()
    code, out, err = run_cli(["experts", "rollback", "beta"], capsys)
    assert code == 0 and f"version {v1} from beta" in out, err
    with TestClient(create_app(service_settings(root), encoder=tiny_encoder)) as client:
        wait_ready(client)
        assert hits(client) == before
        assert [(v["version"], v["serving"]) for v in versions(client)] == [(v1, True), (v2, False)]


HOLD_LOCK = (  # plain fcntl, as WriterLock takes it: no import of the project in the child
    "import fcntl, os, sys, time\n"
    "os.makedirs(sys.argv[1], exist_ok=True)\n"
    "f = open(os.path.join(sys.argv[1], 'writer.lock'), 'a+'); fcntl.flock(f, fcntl.LOCK_EX)\n"
    "print('held', flush=True); time.sleep(60)"
)


def test_a_retrain_in_place_while_the_service_was_down_is_recorded_at_start(make_client, root: Path) -> None:
    v1 = manifest_version(root, "beta")
    (root / "registry.json").write_text(
        json.dumps({"format_version": 1, "experts": [{"name": "beta", "path": "beta", "version": v1}]})
    )
    kept = archive_replaced(root / "beta", root, "beta", v1)  # what `rr train-expert --replace` leaves
    shutil.copytree(root / "v2" / "beta", root / "beta")
    client = make_client(root)
    listed = versions(client)
    assert [(v["version"], v["path"]) for v in listed] == [
        (manifest_version(root, "beta"), "beta"),
        (v1, kept.relative_to(root).as_posix()),
    ]
    assert json.loads((root / "registry.json").read_text())["experts"][0]["versions"][0]["version"] == v1
