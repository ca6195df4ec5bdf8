"""``/admin/jobs``: index, train or tune an expert in the background, follow it, cancel it.

``POST`` answers 202 with the job's record at once; the job runs in the
server's job thread (one at a time, beside the searches, its model passes in
bulk so searches go first) and publishes the expert atomically when it is
done. ``GET`` lists the jobs (kept across restarts) or shows one, with its
progress and the tail of its log; ``DELETE`` cancels one (between batches or
training steps: a cancelled job publishes nothing and leaves nothing behind;
except an index job with ``mode=add``, whose batches written before the cancel
stay written, as its log says).
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path

from app.api.auth import require_admin
from app.api.schemas import error_responses
from app.api.schemas_jobs import JobListOut, JobOut, JobRequest, JobService
from app.api.state import Serving
from app.errors import FeatureUnavailableError

router = APIRouter(prefix="/admin", tags=["jobs"], dependencies=[Depends(require_admin)])

JobId = Annotated[str, Path(min_length=1, max_length=128, description="A job id from POST /admin/jobs.")]


def _jobs(runtime: Serving) -> JobService:
    if runtime.jobs is None:
        raise FeatureUnavailableError(
            "this server runs no jobs: the job runner is made by `rr serve` (create_app(..., jobs=...))"
        )
    return runtime.jobs


Jobs = Annotated[JobService, Depends(_jobs)]


@router.post("/jobs", status_code=202, response_model=JobOut, responses=error_responses(401, 403, 404, 409, 422, 501))
async def start_job(body: JobRequest, jobs: Jobs) -> JobOut:
    """Queue a job: `index` a corpus into a new expert (or, `mode=add`, into a published one), `train` one
    (optionally replacing the published one), or `tune-fusion`: tune a published expert's hybrid fusion weight.

    Paths are relative to the data root and must lie under it (403 otherwise)
    and exist (422); a client without access to the server's disk uploads its
    files first (`POST /admin/uploads`) and names the paths it gets back. 409
    names the job when the expert already has one queued or running, or when
    an index job (`mode=create`) names an expert that exists; 404 when an add
    job adds to, a train job replaces, or a tune-fusion job tunes, an expert
    that is not published. An index or train job reads its corpus through
    before it embeds anything: a malformed line (not JSON, no `_id`, no title
    nor text) or a repeated id fails the job, its error naming the line
    numbers, and nothing changes; `skip_malformed=true` skips malformed lines
    instead.
    """
    record = await asyncio.to_thread(
        jobs.submit,
        kind=body.kind,
        expert=body.expert,
        corpus=body.corpus,
        queries=body.queries,
        qrels=body.qrels,
        replace=body.replace,
        steps=body.steps,
        batch_size=body.batch_size,
        mode=body.mode,
        skip_malformed=body.skip_malformed,
    )
    return JobOut.model_validate(record)


@router.get("/jobs", response_model=JobListOut, responses=error_responses(401, 403, 501))
async def list_jobs(jobs: Jobs) -> JobListOut:
    """Every job kept (newest first): running, queued, and finished ones, also from before a restart."""
    records = await asyncio.to_thread(jobs.records)  # off the loop: the job thread may hold the records' lock
    return JobListOut(jobs=[JobOut.model_validate(r) for r in records])


@router.get("/jobs/{job_id}", response_model=JobOut, responses=error_responses(401, 403, 404, 501))
async def get_job(job_id: JobId, jobs: Jobs) -> JobOut:
    """One job: state, progress (phase, n/N, rate, ETA), times, error, and the last lines it logged."""
    return JobOut.model_validate(await asyncio.to_thread(jobs.record, job_id))


@router.delete("/jobs/{job_id}", response_model=JobOut, responses=error_responses(401, 403, 404, 409, 501))
async def cancel_job(job_id: JobId, jobs: Jobs) -> JobOut:
    """Cancel: a queued job at once, a running one at its next batch or step (poll until `cancelled`).

    A finished job is answered as it is. 409 once a job is publishing.
    """
    return JobOut.model_validate(await asyncio.to_thread(jobs.cancel, job_id))
