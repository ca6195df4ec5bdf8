"""The admin API in-process: publishing by path and by archive, refusals that change nothing, unpublishing."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from experts import Encoder
from tests.app.service.conftest import ADMIN, SEARCH_KEY, wait_for
from tests.app.service.test_search_api import error_of


def published(client: TestClient) -> list[str]:
    return [expert["name"] for expert in client.get("/experts").json()["experts"]]


def registry_names(root: Path) -> list[str]:
    return [entry["name"] for entry in json.loads((root / "registry.json").read_text())["experts"]]


def tar_gz(members: dict[str, bytes | Path | None], *, links: dict[str, str] | None = None) -> bytes:
    """An archive from name -> bytes (a file), Path (a tree added under that name) or None (a directory)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            if isinstance(content, Path):
                tar.add(content, arcname=name)
            elif content is None:
                info = tarfile.TarInfo(name)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def test_publish_by_path_then_search_it_then_unpublish(
    client: TestClient, experts_root: Path, tiny_encoder: Encoder
) -> None:
    response = client.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "gamma" and body["state"] == "loaded" and body["path"] == "staging/gamma"
    assert body["documents"] == 24 and body["adapter"]["trained"] and body["manifest"]["name"] == "gamma"
    assert published(client) == ["alpha", "beta", "gamma"] and registry_names(experts_root) == [
        "alpha",
        "beta",
        "gamma",
    ]
    hits = client.post("/search", json={"query": "blood pressure", "expert": "gamma", "k": 3}).json()["results"][0][
        "hits"
    ]
    assert [hit["expert"] for hit in hits] == ["gamma"] * 3
    assert "gamma" in client.post("/search", json={"query": "x"}).json()["results"][0]["route"]["router_scores"]

    response = client.delete("/admin/experts/gamma", headers=ADMIN)
    assert response.status_code == 200 and response.json() == {"name": "gamma", "unpublished": True, "unloaded": True}
    assert not any(name.startswith("gamma@") for name in tiny_encoder.adapters)
    assert error_of(client.post("/search", json={"query": "x", "expert": "gamma"}))["type"] == "unknown_expert"
    assert registry_names(experts_root) == ["alpha", "beta"] and (experts_root / "staging" / "gamma").is_dir()
    assert client.delete("/admin/experts/gamma", headers=ADMIN).status_code == 404


def test_a_published_name_needs_replace(client: TestClient, experts_root: Path, tiny_encoder: Encoder) -> None:
    shutil.copytree(experts_root / "beta", experts_root / "v2" / "beta")
    response = client.post("/admin/experts", json={"path": "v2/beta"}, headers=ADMIN)
    assert response.status_code == 409 and "already published" in error_of(response)["message"]
    before = [name for name in tiny_encoder.adapters if name.startswith("beta@")]
    response = client.post("/admin/experts", json={"path": "v2/beta", "replace": True}, headers=ADMIN)
    assert response.status_code == 201 and response.json()["path"] == "v2/beta"
    after = [name for name in tiny_encoder.adapters if name.startswith("beta@")]
    assert len(after) == 1 and after != before  # the old adapter was unloaded, the new one loaded
    assert json.loads((experts_root / "registry.json").read_text())["experts"][1]["path"] == "v2/beta"


@pytest.mark.parametrize(
    ("path", "status", "kind", "says"),
    [
        ("../../etc", 403, "path_not_allowed", "outside the data root"),
        ("/etc", 403, "path_not_allowed", "outside the data root"),
        ("escape", 403, "path_not_allowed", "outside the data root"),  # a symlink out of the root
        ("staging/alien", 422, "invalid_expert", "built for base model"),
        ("staging/corrupt", 422, "invalid_expert", "does not match its checksum"),
        ("staging/empty", 422, "invalid_expert", "manifest.json is missing"),
        ("staging/base", 422, "invalid_expert", "reserved"),
        ("no/such/dir", 422, "invalid_expert", "not a directory"),
        ("registry.json", 422, "invalid_expert", "not a directory"),
        (".", 422, "invalid_request", "data root itself"),
        ("bad\x00name", 422, "invalid_request", "cannot be resolved"),
    ],
)
def test_a_refused_add_says_why_and_changes_nothing(
    make_client, experts_root: Path, tmp_path: Path, tiny_encoder: Encoder, path: str, status: int, kind: str, says: str
) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(experts_root / "staging" / "gamma", outside / "gamma")
    (experts_root / "escape").symlink_to(outside / "gamma")
    corrupt = experts_root / "staging" / "corrupt"
    shutil.copytree(experts_root / "staging" / "gamma", corrupt)
    manifest = json.loads((corrupt / "manifest.json").read_text())
    (corrupt / "manifest.json").write_text(json.dumps({**manifest, "name": "corrupt"}))
    pilots = corrupt / manifest["pilots"]["file"]
    pilots.write_bytes(pilots.read_bytes()[:-4] + b"\0\0\0\0")
    (experts_root / "staging" / "empty").mkdir()
    reserved = experts_root / "staging" / "base"
    shutil.copytree(experts_root / "staging" / "gamma", reserved)
    (reserved / "manifest.json").write_text(json.dumps({**manifest, "name": "base"}))

    client = make_client(experts_root)
    registry_before = (experts_root / "registry.json").read_bytes()
    adapters_before = tiny_encoder.adapters
    response = client.post("/admin/experts", json={"path": path}, headers=ADMIN)
    assert response.status_code == status, response.text
    error = error_of(response)
    assert error["type"] == kind and says in error["message"], error
    assert (experts_root / "registry.json").read_bytes() == registry_before
    assert published(client) == ["alpha", "beta"] and tiny_encoder.adapters == adapters_before
    assert client.get("/readyz").status_code == 200


def test_admin_auth(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, search_key=SEARCH_KEY)
    body = {"path": "staging/gamma"}
    response = client.post("/admin/experts", json=body)
    assert response.status_code == 401 and error_of(response)["type"] == "unauthenticated"
    assert client.post("/admin/experts", json=body, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert (
        client.post("/admin/experts", json=body, headers={"Authorization": f"Bearer {SEARCH_KEY}"}).status_code == 403
    )
    assert client.delete("/admin/experts/alpha").status_code == 401
    assert client.delete("/admin/experts/alpha", headers={"Authorization": f"Bearer {SEARCH_KEY}"}).status_code == 403

    disabled = make_client(experts_root, admin_key=None)
    response = disabled.post("/admin/experts", json=body, headers=ADMIN)
    assert response.status_code == 403 and "RR_ADMIN_KEY" in error_of(response)["message"]


def test_admin_validation(client: TestClient) -> None:
    for body in ({}, {"path": ""}, {"path": 3}, {"path": "x", "bogus": 1}):
        response = client.post("/admin/experts", json=body, headers=ADMIN)
        assert response.status_code == 422 and error_of(response)["type"] == "validation_error", body
    response = client.post("/admin/experts", content=b"{oops", headers={**ADMIN, "Content-Type": "application/json"})
    assert response.status_code == 422
    response = client.post("/admin/experts", content=b"path=x", headers={**ADMIN, "Content-Type": "text/plain"})
    assert response.status_code == 415 and error_of(response)["type"] == "unsupported_media_type"
    assert client.delete("/admin/experts/Bad Name", headers=ADMIN).status_code == 422


def test_publish_an_uploaded_archive(client: TestClient, experts_root: Path) -> None:
    archive = tar_gz({"gamma": experts_root / "staging" / "gamma"})
    response = client.post("/admin/experts", content=archive, headers={**ADMIN, "Content-Type": "application/gzip"})
    assert response.status_code == 201, response.text
    path = response.json()["path"]
    assert (
        path.startswith("uploads/gamma-")
        and path.endswith("/gamma")
        and (experts_root / path / "manifest.json").is_file()
    )
    assert client.post("/search", json={"query": "x", "expert": "gamma", "k": 2}).status_code == 200
    assert not [p for p in (experts_root / "uploads").iterdir() if p.name.startswith(".")]  # staging cleaned up
    again = client.post("/admin/experts", content=archive, headers={**ADMIN, "Content-Type": "application/gzip"})
    assert again.status_code == 409
    replaced = client.post(
        "/admin/experts?replace=true", content=archive, headers={**ADMIN, "Content-Type": "application/gzip"}
    )
    assert replaced.status_code == 201 and replaced.json()["path"] != path


@pytest.mark.parametrize(
    ("members", "links", "status", "says"),
    [
        ({"../evil.txt": b"x"}, None, 422, "'..' is not allowed"),
        ({"/abs/evil.txt": b"x"}, None, 422, "absolute paths are not allowed"),
        ({"gamma": None}, {"gamma/link": "/etc/passwd"}, 422, "is a link"),
        ({"readme.txt": b"hello"}, None, 422, "holds no expert"),
        ({"big.bin": b"0" * 5000}, None, 413, "unpacks to more than"),
    ],
)
def test_a_bad_archive_is_refused_and_leaves_nothing(
    make_client, experts_root: Path, tmp_path: Path, members: dict, links: dict | None, status: int, says: str
) -> None:
    client = make_client(experts_root, max_extracted_bytes=4096)
    response = client.post(
        "/admin/experts", content=tar_gz(members, links=links), headers={**ADMIN, "Content-Type": "application/gzip"}
    )
    assert response.status_code == status, response.text
    assert says in error_of(response)["message"]
    assert not (experts_root.parent / "evil.txt").exists() and not Path("/abs/evil.txt").exists()
    assert list((experts_root / "uploads").iterdir()) == []
    assert published(client) == ["alpha", "beta"]


def test_not_an_archive_and_an_oversize_upload(make_client, experts_root: Path) -> None:
    client = make_client(experts_root, max_upload_bytes=2048)
    response = client.post(
        "/admin/experts", content=b"not a tar file at all", headers={**ADMIN, "Content-Type": "application/gzip"}
    )
    assert response.status_code == 422 and "not a tar" in error_of(response)["message"]
    response = client.post("/admin/experts", content=b"0" * 4096, headers={**ADMIN, "Content-Type": "application/gzip"})
    assert response.status_code == 413
    assert list((experts_root / "uploads").iterdir()) == []


def test_a_published_expert_that_fails_to_load_keeps_the_service_unready_until_removed(
    make_client, experts_root: Path
) -> None:
    manifest = json.loads((experts_root / "alpha" / "manifest.json").read_text())
    pilots = experts_root / "alpha" / manifest["pilots"]["file"]
    pilots.write_bytes(pilots.read_bytes()[:-4] + b"\1\1\1\1")
    client = make_client(experts_root, wait=False)
    # Wait for the failure itself: while loading, /readyz already names alpha ("loading experts (1/2: alpha)").
    wait_for(lambda: "checksum" in client.get("/readyz").text, what="start-up to report alpha's failure")
    response = client.get("/readyz")
    assert (
        response.status_code == 503
        and "alpha" in error_of(response)["message"]
        and "checksum" in error_of(response)["message"]
    )
    listed = {e["name"]: e for e in client.get("/experts").json()["experts"]}
    assert (
        listed["alpha"]["state"] == "failed"
        and "checksum" in listed["alpha"]["error"]
        and listed["beta"]["state"] == "loaded"
    )
    assert client.post("/search", json={"query": "x"}).json()["results"][0]["expert"] == "beta"  # the others serve
    assert client.delete("/admin/experts/alpha", headers=ADMIN).status_code == 200
    assert client.get("/readyz").json() == {"status": "ready", "experts": ["beta"]}
