"""A document store damaged where the loader cannot see it, with ``RR_VERIFY_CHECKSUMS=false``.

Checksums are the only check that reads every byte; with them off, a damaged
page of ``docs.sqlite`` is found when a query reads it. Two places:

- the page of the ``doc_id`` index, which counting the documents reads at load: that expert fails at start-up, with
  the reason, and the others serve (it stopped the whole start-up: ``sqlite3.DatabaseError`` was not a load error);
- the page holding the documents' rows, read only by a search: that search gets a 503 ``expert_unavailable`` naming
  the file (it was a 500 with a traceback), the expert is taken out of service and reported like one that failed at
  start-up (``/readyz``, ``GET /experts``, the log), and the other experts' queries, even those in the same
  micro-batch, are answered as usual.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.engine.engine import SearchJob
from app.errors import ExpertUnavailableError
from app.publishing.registry import RegistryEntry, RegistryFile
from tests.app.service.conftest import ADMIN, wait_for

PAGE = 4096  # SQLite's default page size, which the docstore keeps


def _copy_of_beta(root: Path, name: str) -> Path:
    directory = root / name
    shutil.copytree(root / "beta", directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "name": name}))
    return directory / manifest["index"]["directory"] / "docs.sqlite"


def _flip_page(path: Path, *, holding: bytes, without: bytes | None = None) -> int:
    """Invert every byte of the first page that holds ``holding`` (and not ``without``); returns its number.

    Found by content, not by position, so that a change of the docstore's layout moves the damage with it.
    """
    data = bytearray(path.read_bytes())
    for number in range(1, len(data) // PAGE):  # page 0 is the header and the schema
        page = data[number * PAGE : (number + 1) * PAGE]
        if holding in page and (without is None or without not in page):
            data[number * PAGE : (number + 1) * PAGE] = bytes(byte ^ 0xFF for byte in page)
            path.write_bytes(bytes(data))
            return number
    raise AssertionError(f"no page of {path} holds {holding!r} without {without!r}")


@pytest.mark.timeout(120)
def test_a_docstore_damaged_unseen_fails_its_expert_only(experts_root: Path, make_client, caplog) -> None:
    rows_damaged = _copy_of_beta(experts_root, "rows-damaged")
    _flip_page(rows_damaged, holding=b"compiler parser")  # the table's leaf: titles and texts
    index_damaged = _copy_of_beta(experts_root, "index-damaged")
    _flip_page(index_damaged, holding=b"beta-1", without=b"compiler parser")  # the doc_id index, not the rows
    names = ["alpha", "beta", "index-damaged", "rows-damaged"]
    RegistryFile(experts_root).write([RegistryEntry(name=name, path=name) for name in names])

    client = make_client(experts_root, verify_checksums=False, wait=False)
    wait_for(
        lambda: client.get("/readyz").json().get("error", {}).get("details", {}).get("phase") == "serving",
        timeout=60,
        what="start-up",
    )
    details = client.get("/readyz").json()["error"]["details"]
    # Counting the documents at load reads the damaged index: that expert alone fails, and says why.
    assert details["experts"] == ["alpha", "beta", "rows-damaged"]
    assert list(details["failed"]) == ["index-damaged"]
    assert "docs.sqlite" in details["failed"]["index-damaged"] and "malformed" in details["failed"]["index-damaged"]

    # The rows' page is read only by a search. In one micro-batch with a healthy expert's query, only its own fails.
    engine = client.app.state.service.runtime.engine
    outcomes = engine.search_jobs(
        [SearchJob(("a study",), k=3, expert="rows-damaged"), SearchJob(("a study",), k=3, expert="alpha")]
    )
    assert isinstance(outcomes[0], ExpertUnavailableError), outcomes[0]
    assert "docs.sqlite" in outcomes[0].message and "malformed" in outcomes[0].message
    assert [hit.expert for hit in outcomes[1].results[0].hits] == ["alpha"] * 3

    # It is taken out of service and reported like an expert that failed at start-up.
    wait_for(lambda: "rows-damaged" not in engine.experts, timeout=30, what="taking the expert out of service")
    details = client.get("/readyz").json()["error"]["details"]
    assert details["experts"] == ["alpha", "beta"]
    assert sorted(details["failed"]) == ["index-damaged", "rows-damaged"]
    reason = details["failed"]["rows-damaged"]
    assert "failed while searching" in reason and "docs.sqlite" in reason
    listed = {e["name"]: e for e in client.get("/experts").json()["experts"]}
    assert listed["rows-damaged"]["state"] == "failed" and listed["rows-damaged"]["error"] == reason
    assert "expert 'rows-damaged' taken out of service" in caplog.text

    refused = client.post("/search", json={"query": "a study", "expert": "rows-damaged"})
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["type"] == "expert_unavailable" and reason in refused.json()["error"]["message"]
    for name in ("alpha", "beta"):  # the others serve, by name and routed
        hits = client.post("/search", json={"query": "a study", "expert": name, "k": 5}).json()["results"][0]["hits"]
        assert {hit["expert"] for hit in hits} == {name}
    routed = client.post("/search", json={"queries": ["wing lift", "compiler parser", "a study"], "k": 3})
    assert routed.status_code == 200 and {r["expert"] for r in routed.json()["results"]} <= {"alpha", "beta"}

    # The way back: fix the files and publish again with replace; or unpublish it.
    shutil.copy2(experts_root / "beta" / rows_damaged.parent.name / "docs.sqlite", rows_damaged)
    again = client.post("/admin/experts", json={"path": "rows-damaged", "replace": True}, headers=ADMIN)
    assert again.status_code == 201, again.text
    assert client.post("/search", json={"query": "a study", "expert": "rows-damaged"}).status_code == 200
    assert client.delete("/admin/experts/index-damaged", headers=ADMIN).status_code == 200
    assert client.get("/readyz").json() == {"status": "ready", "experts": ["alpha", "beta", "rows-damaged"]}
