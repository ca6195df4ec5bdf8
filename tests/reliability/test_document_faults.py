"""``kill -9`` the server right after document writes are acknowledged, and while merges run, then restart it.

The live log is the commit point of the document API: whatever instant the
process dies at (right after an acknowledgement, while a background merge
writes the next generation, between the merge's manifest and its log
truncation), the restarted server must serve every acknowledged write exactly
once (upserted documents found, deleted ones gone, the count right) and be
ready. The merge policy is set so low that every write starts a merge, and
the kills come at a fixed plan of delays after the acknowledgement, so the
test is the same on every run.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx

from tests.app.service.conftest import ADMIN, ServerProcess
from tests.reliability.forked import ForkedProcess

#: Seconds between an acknowledgement and the SIGKILL; 0 kills before the merge thread has even started.
KILL_DELAYS = [0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.35, 0.6]
BATCH = 6
TEMPLATE_DOCUMENTS = 24  # alpha's documents in the template


def _start(root: Path, log: Path, tiny_bert_path: Path) -> ServerProcess:
    env = {"RR_MERGE_MIN_CHANGES": "1", "RR_MERGE_MAX_DELTA_DOCS": "4"}
    server = ServerProcess(root, log, base_model=tiny_bert_path, launch=ForkedProcess, env=env)
    server.wait_ready(timeout=120)  # a ceiling, not a timing assertion
    return server


def _check(server: ServerProcess, present: set[str], deleted: set[str]) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        expert = http.get("/experts/alpha").json()
        assert expert["documents"] == TEMPLATE_DOCUMENTS + len(present) - len(
            deleted & {f"alpha-{i}" for i in range(24)}
        )
        for doc_id in sorted(present):
            response = http.get(f"/experts/alpha/documents/{doc_id}")
            assert response.status_code == 200, (doc_id, response.text)
        for doc_id in sorted(deleted):
            assert http.get(f"/experts/alpha/documents/{doc_id}").status_code == 404, doc_id
        found = http.post("/search", json={"query": "zyxqwv", "expert": "alpha", "mode": "lexical", "k": 1000})
        hits = [hit["id"] for hit in found.json()["results"][0]["hits"]]
        assert sorted(hits) == sorted(present), "each acknowledged upsert found exactly once by BM25"


def test_acknowledged_writes_survive_kill_9_at_any_point_of_a_merge(
    template_root: Path, tiny_bert_path: Path, tmp_path: Path, figures
) -> None:
    root = tmp_path / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    present: set[str] = set()
    deleted: set[str] = set()
    versions = []
    server = _start(root, tmp_path / "server-0.log", tiny_bert_path)
    try:
        for round_, delay in enumerate(KILL_DELAYS):
            docs = [{"id": f"r{round_}-{i}", "text": f"zyxqwv round {round_} doc {i}"} for i in range(BATCH)]
            with httpx.Client(base_url=server.url, timeout=60, headers=ADMIN) as http:
                response = http.put("/admin/experts/alpha/documents", json={"documents": docs})
                assert response.status_code == 200, response.text
                present |= {doc["id"] for doc in docs}
                gone = [f"alpha-{round_}", f"r{round_ - 1}-0"] if round_ else [f"alpha-{round_}"]
                response = http.request("DELETE", "/admin/experts/alpha/documents", json={"ids": gone})
                assert response.status_code == 200, response.text
                present -= set(gone)
                deleted |= set(gone)
            time.sleep(delay)
            server.process.kill()
            server.process.wait(timeout=30)
            server = _start(root, tmp_path / f"server-{round_ + 1}.log", tiny_bert_path)
            _check(server, present, deleted)
            with httpx.Client(base_url=server.url, timeout=30) as http:
                versions.append(http.get("/experts/alpha").json()["version"])
        assert versions[-1] > versions[0], "merges were published along the way"
    finally:
        stopped = server.stopped_cleanly()  # waits for a running merge
    assert stopped, server.log()
    generations = sorted(p.name for p in (root / "alpha").iterdir() if p.name.startswith(("index-", ".index-")))
    assert len(generations) <= 3 and not [g for g in generations if g.startswith(".")], generations
    figures(kills=len(KILL_DELAYS), upserts=BATCH * len(KILL_DELAYS), deletes=len(deleted), versions=versions)
