"""The job records file: a round trip, keys from a newer version dropped, an unreadable file set aside, pruning."""

from __future__ import annotations

import json
from pathlib import Path

from app.offline.job_store import JOBS_DIR, JOBS_FILE, LOG_TAIL_LINES, JobProgress, JobRecord, JobStore


def test_records_round_trip(tmp_path: Path) -> None:
    record = JobRecord(id="job-1", kind="index", expert="gamma", request={"corpus": "c.jsonl"})
    record.progress = JobProgress(phase="indexing", done=3, total=9, unit="documents", rate=1.5, eta_s=4.0)
    for n in range(LOG_TAIL_LINES + 5):
        record.log(f"line {n}")
    store = JobStore(tmp_path)
    store.save([record])
    (loaded,) = store.load()
    assert loaded == record and len(loaded.log_tail) == LOG_TAIL_LINES and loaded.log_tail[-1].endswith("line 24")


def test_unknown_keys_are_dropped_and_a_broken_file_is_set_aside(tmp_path: Path) -> None:
    path = tmp_path / JOBS_DIR / JOBS_FILE
    path.parent.mkdir()
    future = {"id": "job-2", "kind": "train", "expert": "x", "request": {}, "priority": 3, "progress": {"shard": 1}}
    path.write_text(json.dumps({"jobs": [future]}))
    (loaded,) = JobStore(tmp_path).load()
    assert loaded.id == "job-2" and loaded.progress == JobProgress()

    path.write_text("{not json")
    assert JobStore(tmp_path).load() == [] and not path.exists()
    assert [p.name.startswith("jobs.unreadable-") for p in path.parent.iterdir()] == [True]


def test_the_oldest_finished_records_are_pruned(tmp_path: Path) -> None:
    records = [JobRecord(id=f"job-{n}", kind="index", expert="x", request={}, state="succeeded") for n in range(4)]
    records.append(JobRecord(id="job-running", kind="index", expert="y", request={}, state="running"))
    store = JobStore(tmp_path, keep_finished=2)
    store.save(records)
    assert [r.id for r in store.load()] == ["job-2", "job-3", "job-running"]
