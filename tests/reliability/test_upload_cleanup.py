"""Uploaded expert archives leave nothing behind under ``<data root>/uploads/`` but the experts that are published.

- the received archive (``uploads/.upload-*.tar``) and its staging directory are deleted whether the add succeeds or
  fails;
- an unpacked expert stays while it is published or kept as an older version (RR_KEEP_VERSIONS; 1 here, so a replace
  keeps nothing: retention is tested in tests/app/service/test_versions_api.py), and is deleted once it is unpublished
  or replaced, but only after the last search holding it has finished (it reads those files);
- at start-up, unpacked experts that the registry does not name (removed or replaced while the server was down, or
  unpacked by a call that a crash interrupted before the registry named them) are deleted; without a registry
  (a fresh root) nothing is.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from tests.app.service.conftest import ADMIN, wait_for
from tests.app.service.test_admin_api import tar_gz

GZIP = {**ADMIN, "Content-Type": "application/gzip"}


def uploads(root: Path) -> list[str]:
    directory = root / "uploads"
    return sorted(entry.name for entry in directory.iterdir()) if directory.is_dir() else []


def published_path(root: Path, name: str) -> str:
    entries = json.loads((root / "registry.json").read_text())["experts"]
    return next(entry["path"] for entry in entries if entry["name"] == name)


@pytest.mark.timeout(120)
def test_uploads_are_deleted_once_not_published(experts_root: Path, make_client, caplog) -> None:
    caplog.set_level(logging.INFO, logger="app.publishing.discards")
    archive = tar_gz({"gamma": experts_root / "staging" / "gamma"})
    client = make_client(experts_root, drain_timeout_s=0.2, keep_versions=1)

    # A failed add (not an archive) leaves nothing: neither the received file nor a staging directory.
    assert client.post("/admin/experts", content=b"not a tar", headers=GZIP).status_code == 422
    assert uploads(experts_root) == []

    # A successful add keeps the unpacked expert only; a second one of the same name is a 409 that leaves nothing.
    assert client.post("/admin/experts", content=archive, headers=GZIP).status_code == 201
    first = published_path(experts_root, "gamma")
    assert first.startswith("uploads/") and uploads(experts_root) == [Path(first).parts[1]]
    assert client.post("/admin/experts", content=archive, headers=GZIP).status_code == 409
    assert uploads(experts_root) == [Path(first).parts[1]]

    # Replaced by another upload: the first one's files go once it is unloaded.
    replaced = client.post("/admin/experts", params={"replace": "true"}, content=archive, headers=GZIP)
    assert replaced.status_code == 201, replaced.text
    second = published_path(experts_root, "gamma")
    wait_for(lambda: uploads(experts_root) == [Path(second).parts[1]], timeout=30, what="the replaced upload's removal")

    # Unpublished while a search still holds it: its files stay until that search is done.
    engine = client.app.state.service.runtime.engine
    with engine._holder.lease():  # what a search in flight holds
        removed = client.delete("/admin/experts/gamma", headers=ADMIN)
        assert removed.status_code == 200 and removed.json()["unloaded"] is False
        assert uploads(experts_root) == [Path(second).parts[1]]
        assert (experts_root / second / "manifest.json").is_file()
    wait_for(lambda: uploads(experts_root) == [], timeout=30, what="the removed upload's removal")

    # Unpublished with nothing in flight: gone when DELETE answers.
    assert client.post("/admin/experts", content=archive, headers=GZIP).status_code == 201
    removed = client.delete("/admin/experts/gamma", headers=ADMIN)
    assert removed.json()["unloaded"] is True and uploads(experts_root) == []
    assert "no longer published" in caplog.text
    assert client.get("/readyz").json() == {"status": "ready", "experts": ["alpha", "beta"]}


@pytest.mark.timeout(120)
def test_start_up_deletes_the_uploads_the_registry_does_not_name(experts_root: Path, make_client) -> None:
    archive = tar_gz({"gamma": experts_root / "staging" / "gamma"})
    client = make_client(experts_root)
    assert client.post("/admin/experts", content=archive, headers=GZIP).status_code == 201
    kept = Path(published_path(experts_root, "gamma")).parts[1]
    # What a crash between unpacking and publishing leaves, and an expert removed while the server was down.
    orphan = experts_root / "uploads" / "delta-20261123T120000Z-abcdef" / "delta"
    shutil.copytree(experts_root / "staging" / "gamma", orphan)
    (experts_root / "uploads" / "stray-file").write_bytes(b"x")

    make_client(experts_root)  # a second service on the same root, as after a restart
    assert uploads(experts_root) == [kept]
    assert (experts_root / "uploads" / kept / "gamma" / "manifest.json").is_file()

    # A fresh root (no registry yet) says nothing about what was published: its uploads are all kept.
    (experts_root / "registry.json").unlink()
    shutil.copytree(experts_root / "staging" / "gamma", orphan)
    fresh = make_client(experts_root)
    assert sorted(uploads(experts_root)) == sorted([kept, orphan.parent.name])
    assert fresh.get("/readyz").json()["experts"] == ["alpha", "beta"]
