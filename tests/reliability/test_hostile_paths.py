"""Hostile admin paths, expert names and archives: all refused, nothing written outside the data root.

``tests/app/service/test_admin_api.py`` already refuses ``../../etc``,
``/etc``, a symlink out of the root, a NUL byte, archive members with
``..``, an absolute name or a symlink, and an archive over the unpacked
limit. These go further: the prefix trick (a sibling directory whose name
starts like the root's), symlinks in the middle of a path and symlink loops
(also in the registry at start-up), names that only look valid, hard links,
devices, duplicate members, a manifest whose name climbs out, and bombs
(a 128 MiB member packed into 600 kB, thousands of small files, a zip file,
a gzip of zeros). After each refusal the test compares every file outside
the data root with a snapshot taken before.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.app.service.conftest import ADMIN, wait_for
from tests.app.service.test_admin_api import published, tar_gz
from tests.app.service.test_search_api import error_of


def snapshot(top: Path, *, skip: Path) -> dict[str, tuple[int, int]]:
    """Every file and directory under ``top`` but outside ``skip``: path -> (size, mtime in ns)."""
    found = {}
    for directory, names, files in os.walk(top):
        names[:] = [name for name in names if Path(directory, name) != skip]
        for name in [*names, *files]:
            info = Path(directory, name).lstat()
            found[str(Path(directory, name))] = (info.st_size, info.st_mtime_ns)
    return found


@pytest.fixture()
def outside(experts_root: Path, tmp_path: Path) -> Path:
    """Lures outside the data root: a sibling named like the root, and links out of and inside it."""
    sibling = tmp_path / f"{experts_root.name}-evil"
    shutil.copytree(experts_root / "staging" / "gamma", sibling / "gamma")
    (experts_root / "hop").symlink_to(tmp_path)  # a link in the middle of a path
    (experts_root / "loop").symlink_to(experts_root / "loop")
    return sibling


@pytest.mark.parametrize(
    ("path", "status", "kind", "says"),
    [
        ("../experts-evil/gamma", 403, "path_not_allowed", "outside the data root"),
        ("{sibling}/gamma", 403, "path_not_allowed", "outside the data root"),
        ("staging/gamma/../../../experts-evil/gamma", 403, "path_not_allowed", "outside the data root"),
        ("hop/experts-evil/gamma", 403, "path_not_allowed", "outside the data root"),
        ("hop/experts/staging/gamma/../../../experts-evil/gamma", 403, "path_not_allowed", "outside the data root"),
        ("/proc/self/root{sibling}/gamma", 403, "path_not_allowed", "outside the data root"),
        ("loop", 422, "invalid_request", "cannot be resolved"),
        ("loop/gamma", 422, "invalid_request", "cannot be resolved"),
        ("%2e%2e/%2e%2e/etc", 422, "invalid_expert", "not a directory"),
        ("~/gamma", 422, "invalid_expert", "not a directory"),
        ("staging/gamma/manifest.json", 422, "invalid_expert", "not a directory"),
        ("x" * 4096, 422, "invalid_request", "cannot be resolved"),
        ("x" * 4097, 422, "validation_error", "at most 4096 characters"),
    ],
)
def test_paths_that_leave_the_data_root_are_refused(
    make_client, experts_root: Path, tmp_path: Path, outside: Path, path: str, status: int, kind: str, says: str
) -> None:
    client = make_client(experts_root)
    registry = (experts_root / "registry.json").read_bytes()
    before = snapshot(tmp_path, skip=experts_root)
    response = client.post("/admin/experts", json={"path": path.format(sibling=outside)}, headers=ADMIN)
    assert (response.status_code, error_of(response)["type"]) == (status, kind), response.text
    assert says in error_of(response)["message"]
    assert (experts_root / "registry.json").read_bytes() == registry and published(client) == ["alpha", "beta"]
    assert snapshot(tmp_path, skip=experts_root) == before


@pytest.mark.parametrize(
    "name",
    [
        "UPPER",
        "-lead",
        "_lead",
        "a.b",
        "%2e%2e",
        "%2e",
        "a" * 65,
        "%C3%A9",
        "a%20b",
        "a%00b",
        "a%2Fb",
        "a\\b",
        "%252e%252e",
    ],
)
def test_names_that_are_not_expert_names_are_refused(client: TestClient, name: str) -> None:
    """Expert names are ``[a-z0-9][a-z0-9_-]{0,63}``: anything else is a 422 (or a 404 where it is no route)."""
    for method, url in (("DELETE", f"/admin/experts/{name}"), ("GET", f"/experts/{name}")):
        response = client.request(method, url, headers=ADMIN)
        assert response.status_code in (404, 422), (method, url, response.text)
        assert error_of(response)["type"] in ("validation_error", "not_found")
    decoded = name.replace("%2e", ".").replace("%C3%A9", "é").replace("%20", " ").replace("%00", "\x00")
    response = client.post("/search", json={"query": "x", "expert": decoded})
    assert response.status_code == 422 and error_of(response)["type"] == "validation_error"
    assert published(client) == ["alpha", "beta"]


def test_a_symlink_loop_in_the_registry_fails_that_expert_only(make_client, experts_root: Path, outside: Path) -> None:
    """Python 3.11 raises RuntimeError (not OSError) on a symlink loop: it once stopped the whole start-up."""
    registry = json.loads((experts_root / "registry.json").read_text())
    registry["experts"].append({"name": "loop", "path": "loop/x", "version": 1})
    (experts_root / "registry.json").write_text(json.dumps(registry))
    client = make_client(experts_root, wait=False)
    wait_for(lambda: "Symlink loop" in client.get("/readyz").text, what="start-up to report the loop")
    details = error_of(client.get("/readyz"))["details"]
    assert details["experts"] == ["alpha", "beta"] and "Symlink loop" in details["failed"]["loop"]
    assert client.post("/search", json={"query": "wing", "expert": "alpha"}).status_code == 200


def _member(name: str, data: bytes = b"", *, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    return info


def _raw_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks: a bomb is packed without holding it in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        count = min(len(buffer), self.left)
        buffer[:count] = bytes(count)
        self.left -= count
        return count


def _bomb(size: int) -> bytes:
    """A tar.gz whose one member unpacks to ``size`` zero bytes (about 1,000 to 1 packed)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo("gamma/dense.faiss")
        info.size = size
        tar.addfile(info, io.BufferedReader(_Zeros(size)))
    return buffer.getvalue()


def _evil_manifest(root: Path) -> bytes:
    manifest = json.loads((root / "staging" / "gamma" / "manifest.json").read_text())
    return tar_gz({"gamma": None, "gamma/manifest.json": json.dumps({**manifest, "name": "../../evil"}).encode()})


def _zip_of_zeros() -> bytes:
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("gamma/dense.faiss", "w") as member,
    ):
        for _ in range(64):
            member.write(bytes(1 << 20))
    return buffer.getvalue()


ARCHIVES = {
    "dot-dot inside a path": (lambda root: tar_gz({"gamma/../../evil.txt": b"x"}), 422, "'..' is not allowed"),
    "dot then dot-dot": (lambda root: tar_gz({"gamma/./../evil.txt": b"x"}), 422, "'..' is not allowed"),
    "hard link": (
        lambda root: _raw_tar([(_member("gamma/passwd", kind=tarfile.LNKTYPE, link="/etc/passwd"), b"")]),
        422,
        "is a link",
    ),
    "character device": (
        lambda root: _raw_tar([(_member("gamma/null", kind=tarfile.CHRTYPE), b"")]),
        422,
        "special file",
    ),
    "fifo": (lambda root: _raw_tar([(_member("gamma/pipe", kind=tarfile.FIFOTYPE), b"")]), 422, "special file"),
    "duplicate member": (
        lambda root: _raw_tar([(_member("gamma/a", b"1"), b"1"), (_member("gamma/a", b"2"), b"2")]),
        422,
        "appears twice",
    ),
    "manifest naming ../../evil": (_evil_manifest, 422, "Invalid expert name"),
    "128 MiB member in a small archive": (lambda root: _bomb(128 << 20), 413, "unpacks to more than"),
    "4,000 files of 1 kB": (
        lambda root: tar_gz({f"gamma/f{i}": b"z" * 1024 for i in range(4000)}),
        413,
        "unpacks to more than",
    ),
    "zip of 64 MiB of zeros": (lambda root: _zip_of_zeros(), 422, "not a tar or tar.gz archive"),
    "gzip of 64 MiB of zeros": (lambda root: gzip.compress(bytes(64 << 20), compresslevel=1), 422, "holds no expert"),
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(ARCHIVES))
def test_hostile_archives_are_refused_and_leave_nothing(
    make_client, experts_root: Path, tmp_path: Path, case: str, figures
) -> None:
    build, status, says = ARCHIVES[case]
    archive = build(experts_root)
    client = make_client(experts_root, max_extracted_bytes=1 << 20)
    registry = (experts_root / "registry.json").read_bytes()
    before = snapshot(tmp_path, skip=experts_root)
    started = time.perf_counter()
    response = client.post("/admin/experts", content=archive, headers={**ADMIN, "Content-Type": "application/gzip"})
    took = time.perf_counter() - started
    assert response.status_code == status and says in error_of(response)["message"], response.text
    assert list((experts_root / "uploads").iterdir()) == []  # the upload and its staging are gone
    assert (experts_root / "registry.json").read_bytes() == registry and published(client) == ["alpha", "beta"]
    assert snapshot(tmp_path, skip=experts_root) == before
    assert not any(Path(p).exists() for p in ("/etc/evil.txt", "/tmp/evil.txt", str(tmp_path / "evil.txt")))
    figures(case=case, archive_bytes=len(archive), status=status, seconds=round(took, 2))
