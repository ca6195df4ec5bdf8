"""Corrupted or truncated files of published experts at start-up: those experts fail, the others serve.

Each broken expert is a copy of ``beta`` with one file damaged (bytes flipped
in place, or the file cut in half). The server must start, report every
broken expert with the reason (in ``/readyz``, ``GET /experts`` and its log),
and serve the intact ``alpha`` and ``beta`` as usual.

With ``RR_VERIFY_CHECKSUMS=true`` (the default) every damage is caught by the
manifest's checksums. With it off, the loader's own checks (sizes recorded
in ``index.json``, file headers, counts that must agree) still catch the
truncations and damaged headers; damage inside the data of a file of the
right size is then not detected (see docs/reliability.md).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.publishing.registry import RegistryEntry, RegistryFile
from tests.app.service.conftest import ServerProcess
from tests.reliability.forked import ForkedProcess


def flip(path: Path, *, at: float = 0.5, count: int = 64) -> None:
    """Invert ``count`` bytes from ``at`` (a fraction of the size) on: same size, different content."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(start + count, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe\x00 not json at all \x80")


def _pilots(directory: Path) -> str:
    return json.loads((directory / "manifest.json").read_text())["pilots"]["file"]


#: expert name -> (file damaged, how, caught even without checksums)
DAMAGE: dict[str, tuple[str, Callable[[Path], None], bool]] = {
    "dense-flipped": ("dense.faiss", flip, False),
    "dense-header": ("dense.faiss", lambda p: flip(p, at=0, count=16), True),
    "dense-truncated": ("dense.faiss", truncate, True),
    "docs-flipped": ("docs.sqlite", lambda p: flip(p, at=0.4, count=256), False),
    "docs-header": ("docs.sqlite", lambda p: flip(p, at=0, count=100), True),
    "docs-truncated": ("docs.sqlite", truncate, True),
    "lexical-flipped": ("lexical-data.npy", flip, False),
    "lexical-header": ("lexical-data.npy", lambda p: flip(p, at=0, count=16), True),
    "lexical-truncated": ("lexical-vocab.json", truncate, True),
    "info-truncated": ("index.json", truncate, True),
    "manifest-truncated": ("manifest.json", truncate, True),
    "manifest-garbage": ("manifest.json", garbage, True),
    "pilots-truncated": ("pilots", truncate, True),
    "adapter-flipped": ("adapter/adapter_model.safetensors", flip, False),
}


def _says_why(name: str, reason: str, *, verify: bool) -> bool:
    """The reason names the damaged file, and with checksums on, the check that caught it."""
    relative = DAMAGE[name][0]
    if relative == "manifest.json":
        return "manifest.json is not a valid manifest" in reason
    named = "pilots-" in reason if relative == "pilots" else Path(relative).name in reason
    return named and (not verify or "does not match its checksum" in reason)


def damaged_root(root: Path, *, verify: bool) -> list[str]:
    """Copy beta once per damage, damage the copy, publish them all beside alpha and beta."""
    names = [name for name, (_, _, caught) in DAMAGE.items() if verify or caught]
    for name in names:
        relative, damage, _ = DAMAGE[name]
        directory = root / name
        shutil.copytree(root / "beta", directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        (directory / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
        index = directory / manifest["index"]["directory"]
        if relative == "pilots":
            target = directory / _pilots(directory)
        elif relative in ("manifest.json",) or "/" in relative:
            target = directory / relative
        else:
            target = index / relative
        damage(target)
    RegistryFile(root).write([RegistryEntry(name=name, path=name) for name in ["alpha", "beta", *names]])
    return names


@pytest.mark.timeout(120)
@pytest.mark.parametrize("verify", [True, False], ids=["checksums", "no-checksums"])
def test_broken_experts_are_reported_and_the_others_serve(
    experts_root: Path, tmp_path: Path, tiny_bert_path: Path, verify: bool, figures
) -> None:
    broken = damaged_root(experts_root, verify=verify)
    env = {"RR_VERIFY_CHECKSUMS": str(verify).lower()}
    server = ServerProcess(
        experts_root, tmp_path / "server.log", base_model=tiny_bert_path, env=env, launch=ForkedProcess
    )
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            deadline = time.monotonic() + 90
            while True:  # start-up finishes (loading every expert) even though some fail
                assert server.process.poll() is None and time.monotonic() < deadline, server.log()
                try:
                    ready = http.get("/readyz")
                    if ready.json()["error"]["details"]["phase"] == "serving":
                        break
                except (httpx.TransportError, KeyError, TypeError):
                    pass
                time.sleep(0.1)
            assert ready.status_code == 503 and ready.headers["Retry-After"] == "1"
            details = ready.json()["error"]["details"]
            assert details["experts"] == ["alpha", "beta"]
            assert sorted(details["failed"]) == sorted(broken)
            for name in broken:
                assert _says_why(name, details["failed"][name], verify=verify), (name, details["failed"][name])
                assert f"published expert {name!r} cannot be loaded" in server.log_path.read_text()

            listed = {e["name"]: e for e in http.get("/experts").json()["experts"]}
            assert {name for name, e in listed.items() if e["state"] == "failed"} == set(broken)
            assert all(listed[name]["error"] == details["failed"][name] for name in broken)
            for name in ("alpha", "beta"):  # the intact experts serve, by name and routed
                hits = http.post("/search", json={"query": "a study", "expert": name, "k": 5}).json()["results"][0][
                    "hits"
                ]
                assert len(hits) == 5 and {hit["expert"] for hit in hits} == {name}
            routed = http.post("/search", json={"queries": ["wing lift", "compiler parser"], "k": 3}).json()["results"]
            assert {r["expert"] for r in routed} <= {"alpha", "beta"}
            refused = http.post("/search", json={"query": "x", "expert": broken[0]})
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "expert_unavailable"
            assert details["failed"][broken[0]] in refused.json()["error"]["message"]
            embedded = http.post("/v1/embeddings", json={"model": broken[0], "input": "x"})
            assert embedded.status_code == 503
    finally:
        server.stop()
    figures(verify_checksums=verify, broken=len(broken), serving=2)
