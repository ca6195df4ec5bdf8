"""``/admin/jobs``: index, train and tune-fusion jobs run beside the service, followed, cancelled, refused, kept
across restarts (uploaded job files: ``test_uploads_api.py``).

Nothing is mocked: the jobs index and train on the tiny random BERT, publish
through the publisher, and are searched afterwards. The flow and the restart
run against a real ``rr serve``; the refusals and the train jobs run in-process
(the same app and job thread, started faster).
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.api.main import create_app
from app.offline.job_runner import job_runner_factory
from experts import Encoder
from tests.app.service.conftest import ADMIN, service_settings, submit, wait_job, wait_ready, write_corpus

#: The corpus of the job killed mid-way: large enough that the kill lands while it indexes.
DELTA_DOCUMENTS = 30_000


def checkpointed_lines(root: Path) -> int:
    """Corpus lines a build checkpoint under ``root`` has committed (0 while there is none)."""
    for path in root.rglob("build.sqlite"):
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT line FROM build_progress").fetchone()
        except sqlite3.Error:
            continue  # being created
        if row is not None:
            return int(row[0])
    return 0


def left_behind(root: Path) -> list[str]:
    """Staging a job could leave: its work directory, and train_expert's hidden staging directories."""
    work = root / ".jobs" / "work"
    return sorted([*(p.name for p in work.glob("*") if work.is_dir()), *(p.name for p in root.glob(".*.train-*"))])


# ---------------------------------------------------------------------- a real server
def test_an_index_job_publishes_a_new_expert_and_the_list_survives_a_restart(experts_root: Path, start_server) -> None:
    write_corpus((experts_root / "incoming").mkdir() or experts_root / "incoming" / "gamma.jsonl", "gamma", count=40)
    server = start_server(experts_root)
    with httpx.Client(base_url=server.url, timeout=30.0) as http:
        started = submit(http, kind="index", expert="gamma", corpus="incoming/gamma.jsonl")
        assert started.status_code == 202, started.text
        job = started.json()
        assert job["state"] == "queued" and job["kind"] == "index" and job["expert"] == "gamma"

        done = wait_job(http, job["id"])
        assert done["state"] == "succeeded", done
        assert done["progress"]["phase"] == "publishing"  # where it ended (a failed job: where it failed)
        assert any(line.endswith("indexing (40 documents)") for line in done["log_tail"])
        assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
        assert done["published_version"] >= 1 and any("indexed 40 documents" in line for line in done["log_tail"])

        hits = http.post("/search", json={"query": "blood pressure", "expert": "gamma", "k": 3}).json()
        assert [hit["id"].startswith("gamma-") for hit in hits["results"][0]["hits"]] == [True] * 3
        assert http.get("/experts/gamma").status_code == 200
        assert left_behind(experts_root) == []

        # Killed while indexing (a job queued behind it): both are shown interrupted after the restart, and
        # the index job is resumed by a new job from its build checkpoint (chunks of 256 documents).
        write_corpus(experts_root / "incoming" / "delta.jsonl", "gamma", count=DELTA_DOCUMENTS)
        long = submit(http, kind="index", expert="delta", corpus="incoming/delta.jsonl").json()
        queued = submit(http, kind="train", expert="epsilon", corpus="incoming/gamma.jsonl", steps=5).json()
        # Killed once its checkpoint holds a committed chunk (progress counts passages embedded, which runs
        # ahead of the commits); the tiny model indexes some 4,000 documents a second, so most are still to do.
        wait_job(http, long["id"], until=lambda job: checkpointed_lines(experts_root) >= 256, timeout=120)
    server.process.kill()  # SIGKILL: no shutdown runs
    server.process.wait(timeout=30)

    again = start_server(experts_root)
    with httpx.Client(base_url=again.url, timeout=30.0) as http:
        jobs = {j["id"]: j for j in http.get("/admin/jobs", headers=ADMIN).json()["jobs"]}
        assert jobs[job["id"]]["state"] == "succeeded"
        assert jobs[long["id"]]["state"] == jobs[queued["id"]]["state"] == "interrupted"
        assert "server stopped" in jobs[queued["id"]]["error"]
        resumed_id = jobs[long["id"]]["request"]["resumed_by"]
        assert jobs[resumed_id]["request"]["resumes"] == long["id"] and len(jobs) == 4
        resumed = wait_job(http, resumed_id, timeout=120)
        assert resumed["state"] == "succeeded", resumed
        assert any(
            f"indexed {DELTA_DOCUMENTS} documents" in line and "resumed at line" in line for line in resumed["log_tail"]
        ), resumed["log_tail"]
        hits = http.post("/search", json={"query": "cancer cells", "expert": "delta", "k": 3}).json()
        assert len(hits["results"][0]["hits"]) == 3
        assert left_behind(experts_root) == []
        assert http.get("/experts/epsilon").status_code == 404


# ---------------------------------------------------------------------- in-process
def test_a_train_job_replaces_a_published_expert(jobs_client: TestClient, experts_root: Path) -> None:
    before = jobs_client.get("/experts/alpha").json()["version"]
    write_corpus(experts_root / "alpha-more.jsonl", "alpha", count=30)
    job = submit(jobs_client, kind="train", expert="alpha", corpus="alpha-more.jsonl", replace=True, steps=3).json()
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"]["phase"] == "publishing" and done["published_version"] > before
    assert any("trained" in line for line in done["log_tail"])
    served = jobs_client.get("/experts/alpha").json()
    assert served["version"] == done["published_version"] and served["version"] > before
    hits = jobs_client.post("/search", json={"query": "wing lift", "expert": "alpha", "k": 2}).json()
    assert len(hits["results"][0]["hits"]) == 2
    assert left_behind(experts_root) == []


def test_a_cancelled_job_publishes_nothing_and_leaves_nothing(jobs_client: TestClient, experts_root: Path) -> None:
    write_corpus(experts_root / "delta.jsonl", "gamma", count=30)
    registry = (experts_root / "registry.json").read_text()
    job = submit(jobs_client, kind="train", expert="delta", corpus="delta.jsonl", steps=100_000).json()
    running = wait_job(
        jobs_client, job["id"], until=lambda j: j["progress"]["phase"] == "training" and j["progress"]["done"] > 0
    )
    assert (
        running["state"] == "running" and running["progress"]["total"] == 100_000 and running["progress"]["eta_s"] > 0
    )

    # One job per expert at a time: a second one is refused, naming the first.
    busy = submit(jobs_client, kind="train", expert="delta", corpus="delta.jsonl")
    assert busy.status_code == 409 and job["id"] in busy.json()["error"]["message"]
    # One job at a time over all experts: another expert's job waits, and is cancelled at once.
    waiting = submit(jobs_client, kind="index", expert="epsilon", corpus="delta.jsonl").json()
    assert waiting["state"] == "queued"
    gone = jobs_client.delete(f"/admin/jobs/{waiting['id']}", headers=ADMIN).json()
    assert gone["state"] == "cancelled" and gone["started_at"] is None and gone["error"] is None

    assert jobs_client.delete(f"/admin/jobs/{job['id']}", headers=ADMIN).status_code == 200
    cancelled = wait_job(jobs_client, job["id"])
    assert cancelled["state"] == "cancelled" and cancelled["error"] is None
    assert jobs_client.get("/experts/delta").status_code == 404
    assert not (experts_root / "delta").exists() and left_behind(experts_root) == []
    assert (experts_root / "registry.json").read_text() == registry
    # The expert is free again once the job ended.
    again = submit(jobs_client, kind="index", expert="delta", corpus="delta.jsonl")
    assert again.status_code == 202 and wait_job(jobs_client, again.json()["id"])["state"] == "succeeded"


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        ({"kind": "reindex", "expert": "x", "corpus": "c.jsonl"}, 422, "'index', 'train' or 'tune-fusion'"),
        ({"kind": "index", "expert": "x"}, 422, "needs a corpus"),
        ({"kind": "tune-fusion", "expert": "alpha", "corpus": "c.jsonl"}, 422, "do not apply to tune-fusion jobs"),
        ({"kind": "tune-fusion", "expert": "alpha", "steps": 3}, 422, "do not apply to tune-fusion jobs"),
        ({"kind": "tune-fusion", "expert": "alpha", "queries": "c.jsonl"}, 422, "both queries and qrels"),
        ({"kind": "tune-fusion", "expert": "nope"}, 404, "not published, so there is nothing to tune"),
        ({"kind": "tune-fusion", "expert": "alpha", "queries": "/etc/passwd", "qrels": "c.jsonl"}, 403, "outside"),
        ({"kind": "index", "expert": "x", "corpus": "../outside.jsonl"}, 403, "outside the data root"),
        ({"kind": "index", "expert": "x", "corpus": "/etc/passwd"}, 403, "outside the data root"),
        ({"kind": "index", "expert": "x", "corpus": "missing.jsonl"}, 422, "does not exist under the data root"),
        ({"kind": "index", "expert": "x", "corpus": "c.jsonl", "steps": 3}, 422, "apply to train jobs only"),
        ({"kind": "train", "expert": "x", "corpus": "c.jsonl", "queries": "c.jsonl"}, 422, "both queries and qrels"),
        ({"kind": "index", "expert": "alpha", "corpus": "c.jsonl"}, 409, "already exists"),
        ({"kind": "train", "expert": "beta", "corpus": "c.jsonl"}, 409, "replace=true"),
        ({"kind": "train", "expert": "nope", "corpus": "c.jsonl", "replace": True}, 404, "not published"),
        ({"kind": "index", "expert": "bad name!", "corpus": "c.jsonl"}, 422, "expert"),
        ({"kind": "index", "expert": "alpha", "corpus": "c.jsonl", "mode": "create"}, 409, "send mode=add"),
        ({"kind": "index", "expert": "nope", "corpus": "c.jsonl", "mode": "add"}, 404, "nothing to add to"),
        ({"kind": "index", "expert": "x", "corpus": "c.jsonl", "mode": "append"}, 422, "'create' or 'add'"),
        ({"kind": "train", "expert": "x", "corpus": "c.jsonl", "mode": "add"}, 422, "applies to index jobs only"),
        ({"kind": "tune-fusion", "expert": "alpha", "skip_malformed": True}, 422, "jobs with a corpus (index, train)"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    jobs_client: TestClient, experts_root: Path, body: dict, status: int, says: str
) -> None:
    write_corpus(experts_root / "c.jsonl", "gamma", count=4)
    (experts_root.parent / "outside.jsonl").write_text("{}\n")
    response = submit(jobs_client, **body)
    assert response.status_code == status, response.text
    assert says in response.text
    assert jobs_client.get("/admin/jobs", headers=ADMIN).json() == {"jobs": []}


# ---------------------------------------------------------------------- bad corpora
def bad_corpus(path: Path) -> Path:
    """Ten lines of gamma documents, three of them malformed: lines 4 (not JSON), 7 (empty) and 9 (no id)."""
    lines = write_corpus(path, "gamma", count=10).read_text().splitlines()
    lines[3] = '{"_id": "gamma-3", "text": '
    lines[6] = json.dumps({"_id": "gamma-6", "title": "", "text": "  "})
    lines[8] = json.dumps({"title": "no id", "text": "some text"})
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_malformed_corpus_fails_the_job_before_indexing_and_changes_nothing(
    jobs_client: TestClient, experts_root: Path
) -> None:
    bad_corpus(experts_root / "bad.jsonl")
    registry = (experts_root / "registry.json").read_text()
    failed = wait_job(jobs_client, submit(jobs_client, kind="index", expert="delta", corpus="bad.jsonl").json()["id"])
    assert failed["state"] == "failed" and failed["progress"]["phase"] == "checking the corpus", failed
    assert failed["error"].startswith(
        "CorpusError: bad.jsonl: 3 malformed lines: line 4: invalid JSON: Expecting value (column 27); "
        "line 7: 'title' and 'text' are both empty; line 9: missing '_id'; nothing was changed"
    ), failed["error"]
    assert "skip_malformed=true" in failed["error"]
    assert not (experts_root / "delta").exists() and left_behind(experts_root) == []
    assert jobs_client.get("/experts/delta").status_code == 404
    assert (experts_root / "registry.json").read_text() == registry

    # The same into a published expert: nothing is written either.
    added = wait_job(
        jobs_client, submit(jobs_client, kind="index", expert="alpha", corpus="bad.jsonl", mode="add").json()["id"]
    )
    assert added["state"] == "failed" and "3 malformed lines: line 4" in added["error"]
    assert jobs_client.get("/experts/alpha").json()["documents"] == 24

    # Not gzip behind a .gz name: unreadable, and said so.
    (experts_root / "fake.jsonl.gz").write_text((experts_root / "bad.jsonl").read_text())
    fake = wait_job(jobs_client, submit(jobs_client, kind="index", expert="delta", corpus="fake.jsonl.gz").json()["id"])
    assert fake["state"] == "failed" and "cannot read corpus file" in fake["error"] and "gzip" in fake["error"]
    assert left_behind(experts_root) == [] and not (experts_root / "delta").exists()


def test_skip_malformed_indexes_the_good_lines(jobs_client: TestClient, experts_root: Path) -> None:
    corpus = bad_corpus(experts_root / "bad.jsonl")
    (experts_root / "bad.jsonl.gz").write_bytes(gzip.compress(corpus.read_bytes()))
    job = submit(jobs_client, kind="index", expert="delta", corpus="bad.jsonl.gz", skip_malformed=True).json()
    assert job["request"]["skip_malformed"] is True and job["request"]["mode"] == "create"
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert any("skipping (skip_malformed) bad.jsonl.gz: 3 malformed lines: line 4" in line for line in done["log_tail"])
    assert any(line.endswith("indexing (7 documents)") for line in done["log_tail"]), done["log_tail"]
    assert jobs_client.get("/experts/delta").json()["documents"] == 7
    assert left_behind(experts_root) == []


def test_a_train_job_checks_its_corpus_as_an_index_job_does(jobs_client: TestClient, experts_root: Path) -> None:
    bad_corpus(experts_root / "bad.jsonl")
    registry = (experts_root / "registry.json").read_text()
    failed = wait_job(jobs_client, submit(jobs_client, kind="train", expert="delta", corpus="bad.jsonl").json()["id"])
    assert failed["state"] == "failed" and failed["progress"]["phase"] == "checking the corpus", failed
    assert "3 malformed lines: line 4: invalid JSON" in failed["error"] and "skip_malformed=true" in failed["error"]
    assert not (experts_root / "delta").exists() and left_behind(experts_root) == []
    assert (experts_root / "registry.json").read_text() == registry

    job = submit(jobs_client, kind="train", expert="delta", corpus="bad.jsonl", steps=2, skip_malformed=True).json()
    assert job["request"]["skip_malformed"] is True and "mode" not in job["request"]
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert any("skipping (skip_malformed) bad.jsonl: 3 malformed lines: line 4" in line for line in done["log_tail"])
    assert jobs_client.get("/experts/delta").json()["documents"] == 7
    assert left_behind(experts_root) == []


# ---------------------------------------------------------------------- mode=add
def scramjets(path: Path, count: int, *, start: int = 0) -> Path:
    rows = [
        {"_id": f"new-{i}", "title": f"scramjet {i}", "text": f"hypersonic scramjet combustion {i}"}
        for i in range(start, start + count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_an_add_job_upserts_into_a_published_expert_and_keeps_its_documents(
    jobs_client: TestClient, experts_root: Path
) -> None:
    before = jobs_client.get("/experts/alpha").json()
    assert before["documents"] == 24
    corpus = scramjets(experts_root / "more.jsonl", 9)
    with corpus.open("a") as more:  # one replaces a document alpha has
        more.write(json.dumps({"_id": "alpha-3", "title": "replaced", "text": "a new text for alpha-3"}) + "\n")
    job = submit(jobs_client, kind="index", expert="alpha", corpus="more.jsonl", mode="add").json()
    assert job["request"]["mode"] == "add"
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["published_version"] is None
    progress = done["progress"]
    assert (progress["phase"], progress["done"], progress["total"], progress["unit"]) == ("adding", 10, 10, "documents")
    assert any(
        "added 10 documents to 'alpha' (9 new, 1 replaced); it holds 33 now" in line for line in done["log_tail"]
    )

    after = jobs_client.get("/experts/alpha").json()
    assert after["documents"] == 33 and after["version"] == before["version"]  # live writes to the version served
    read = lambda doc_id: jobs_client.get(f"/experts/alpha/documents/{doc_id}", headers=ADMIN)  # noqa: E731
    assert read("new-4").json()["title"] == "scramjet 4"
    assert read("alpha-3").json()["title"] == "replaced" and read("alpha-0").status_code == 200
    hits = jobs_client.post(
        "/search", json={"query": "scramjet 4 hypersonic scramjet combustion 4", "expert": "alpha", "k": 3}
    ).json()
    assert "new-4" in [hit["id"] for hit in hits["results"][0]["hits"]], hits
    assert left_behind(experts_root) == []


def test_a_cancelled_add_job_keeps_the_batches_it_wrote(jobs_client: TestClient, experts_root: Path) -> None:
    scramjets(experts_root / "many.jsonl", 5120)  # twenty batches of 256: the cancel lands after two or three
    job = submit(jobs_client, kind="index", expert="alpha", corpus="many.jsonl", mode="add").json()
    wait_job(jobs_client, job["id"], until=lambda j: j["progress"]["phase"] == "adding" and j["progress"]["done"] > 0)
    jobs_client.delete(f"/admin/jobs/{job['id']}", headers=ADMIN)
    cancelled = wait_job(jobs_client, job["id"])
    assert cancelled["state"] == "cancelled", cancelled
    stopped = [line for line in cancelled["log_tail"] if "stopped after" in line]
    assert stopped and "the batches written stay written" in stopped[0], cancelled["log_tail"]
    written = int(stopped[0].split("stopped after ")[1].split(" ")[0])
    assert 0 < written < 5120 and written % 256 == 0
    assert jobs_client.get("/experts/alpha").json()["documents"] == 24 + written


def test_unknown_jobs_and_keys(jobs_client: TestClient) -> None:
    missing = jobs_client.get("/admin/jobs/job-nope", headers=ADMIN)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "unknown_job"
    assert jobs_client.delete("/admin/jobs/job-nope", headers=ADMIN).status_code == 404
    assert jobs_client.get("/admin/jobs").status_code == 401
    assert jobs_client.post("/admin/jobs", json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_an_index_job_cancelled_midway_while_searches_go_on(jobs_client: TestClient, experts_root: Path) -> None:
    write_corpus(experts_root / "big.jsonl", "gamma", count=1536)  # six batches of 256
    job = submit(jobs_client, kind="index", expert="delta", corpus="big.jsonl").json()
    searched = []
    while (now := jobs_client.get(f"/admin/jobs/{job['id']}", headers=ADMIN).json())["progress"]["done"] < 256:
        assert now["state"] in {"queued", "running"}, now
        started = time.monotonic()
        answer = jobs_client.post("/search", json={"query": "wing lift", "k": 2})
        searched.append((answer.status_code, time.monotonic() - started))
    assert searched and {status for status, _ in searched} == {200}  # served beside the job's bulk passes
    assert (
        jobs_client.delete(f"/admin/jobs/{job['id']}", headers=ADMIN)
        .json()["log_tail"][-1]
        .endswith("cancel requested: stopping at the next batch or step")
    )
    cancelled = wait_job(jobs_client, job["id"])
    assert cancelled["state"] == "cancelled" and cancelled["progress"]["phase"] == "indexing"
    assert cancelled["progress"]["done"] < 1536
    assert not (experts_root / "delta").exists() and left_behind(experts_root) == []
    assert jobs_client.get("/experts/delta").status_code == 404


def test_an_index_job_stopped_with_the_server_resumes_at_the_next_start(
    experts_root: Path, tiny_encoder: Encoder
) -> None:
    write_corpus(experts_root / "big.jsonl", "gamma", count=2560)  # ten batches: the stop comes before the end
    settings = service_settings(experts_root)
    with TestClient(create_app(settings, encoder=tiny_encoder, jobs=job_runner_factory(settings))) as client:
        wait_ready(client)
        job = submit(client, kind="index", expert="delta", corpus="big.jsonl").json()
        wait_job(client, job["id"], until=lambda j: j["progress"]["done"] >= 256)
    # The server stopped gracefully: the job is interrupted at its next batch, its checkpoint kept.
    with TestClient(create_app(settings, encoder=tiny_encoder, jobs=job_runner_factory(settings))) as client:
        wait_ready(client)
        stopped = client.get(f"/admin/jobs/{job['id']}", headers=ADMIN).json()
        assert stopped["state"] == "interrupted" and stopped["error"] == "the server stopped"
        resumed = wait_job(client, stopped["request"]["resumed_by"])
        assert resumed["state"] == "succeeded", resumed
        assert any("resumed at line" in line for line in resumed["log_tail"])
        assert client.get("/experts/delta").json()["documents"] == 2560
        assert left_behind(experts_root) == []


def test_a_train_job_stopped_with_the_server_trains_on_from_its_checkpoint(
    experts_root: Path, tiny_encoder: Encoder
) -> None:
    from safetensors.torch import load_file

    write_corpus(experts_root / "delta.jsonl", "gamma", count=40)
    settings = service_settings(experts_root)
    steps = 400
    with TestClient(create_app(settings, encoder=tiny_encoder, jobs=job_runner_factory(settings))) as client:
        wait_ready(client)
        job = submit(client, kind="train", expert="delta", corpus="delta.jsonl", steps=steps).json()
        # Past the first checkpoint (every 25 steps), well before the end.
        wait_job(
            client, job["id"], until=lambda j: j["progress"]["phase"] == "training" and j["progress"]["done"] >= 30
        )
    # The server stopped gracefully: the job is interrupted at its next step, its checkpoint kept.
    assert (experts_root / ".jobs" / "work" / job["id"] / "train-checkpoint.pt").is_file()
    with TestClient(create_app(settings, encoder=tiny_encoder, jobs=job_runner_factory(settings))) as client:
        wait_ready(client)
        stopped = client.get(f"/admin/jobs/{job['id']}", headers=ADMIN).json()
        assert stopped["state"] == "interrupted" and stopped["progress"]["done"] < steps, stopped
        resumed = wait_job(client, stopped["request"]["resumed_by"])
        assert resumed["state"] == "succeeded" and resumed["kind"] == "train", resumed
        assert any("training goes on from it" in line for line in resumed["log_tail"]), resumed["log_tail"]
        resumed_at = [line for line in resumed["log_tail"] if "training resumed from its checkpoint after step" in line]
        assert resumed_at and resumed_at[0].endswith(f"of {steps}"), resumed["log_tail"]
        assert int(resumed_at[0].split("after step ")[1].split()[0]) % 25 == 0  # a checkpoint's step, not 0
        # The same corpus trained without a stop, under another name: the same adapter.
        whole = wait_job(
            client, submit(client, kind="train", expert="omega", corpus="delta.jsonl", steps=steps).json()["id"]
        )
        assert whole["state"] == "succeeded" and not any("resumed" in line for line in whole["log_tail"])
        assert left_behind(experts_root) == []
    a, b = (load_file(experts_root / name / "adapter" / "adapter_model.safetensors") for name in ("delta", "omega"))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ---------------------------------------------------------------------- tune-fusion
def test_a_tune_fusion_job_publishes_the_tuned_weight_then_finds_it_unchanged(
    jobs_client: TestClient, experts_root: Path
) -> None:
    before = jobs_client.get("/experts/beta").json()
    assert before["manifest"].get("retrieval") is None  # untuned: the service's RR_HYBRID_WEIGHT applies
    job = submit(jobs_client, kind="tune-fusion", expert="beta").json()
    assert job["request"] == {"replace": False, "steps": None, "batch_size": None}
    done = wait_job(jobs_client, job["id"])
    assert done["state"] == "succeeded", done
    assert done["progress"]["phase"] == "publishing" and done["published_version"] > before["version"]
    served = jobs_client.get("/experts/beta").json()
    retrieval = served["manifest"]["retrieval"]
    assert served["version"] == done["published_version"]
    assert retrieval["tuned_on"] == f"{retrieval['queries']} pseudo queries" and len(retrieval["curve"]) == 11
    assert any(line.endswith(f"embedding queries ({retrieval['queries']} queries)") for line in done["log_tail"])
    assert any(f"dense weight untuned -> {retrieval['weight']}" in line for line in done["log_tail"])
    hits = jobs_client.post("/search", json={"query": "compiler parser", "expert": "beta", "k": 2, "mode": "hybrid"})
    assert hits.status_code == 200 and len(hits.json()["results"][0]["hits"]) == 2

    # The same queries (seeded) pick the same weight: nothing to publish, and the job says so.
    again = wait_job(jobs_client, submit(jobs_client, kind="tune-fusion", expert="beta").json()["id"])
    assert again["state"] == "succeeded" and again["published_version"] is None
    assert any("unchanged" in line and "nothing published" in line for line in again["log_tail"]), again
    assert jobs_client.get("/experts/beta").json()["version"] == served["version"]
    assert left_behind(experts_root) == []


def test_a_failed_tune_fusion_job_changes_nothing(jobs_client: TestClient, experts_root: Path) -> None:
    # gamma has no BM25 index: there is no fusion to tune.
    added = jobs_client.post("/admin/experts", json={"path": "staging/gamma"}, headers=ADMIN)
    assert added.status_code == 201, added.text
    manifest = (experts_root / "staging" / "gamma" / "manifest.json").read_text()
    done = wait_job(jobs_client, submit(jobs_client, kind="tune-fusion", expert="gamma").json()["id"])
    assert done["state"] == "failed" and "no lexical (BM25) index" in done["error"], done
    assert done["published_version"] is None
    assert jobs_client.get("/experts/gamma").json()["version"] == added.json()["version"]
    assert (experts_root / "staging" / "gamma" / "manifest.json").read_text() == manifest
