"""``/admin/experts/{name}/shadow``: start, read and stop a shadow (a candidate version searched beside the serving
one on a share of live queries, compared, never answering: :mod:`app.engine.shadow`)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends

from app.api.auth import require_admin
from app.api.schemas import ExpertName, error_responses
from app.api.schemas_shadow import ShadowOut, ShadowRequest
from app.api.state import Serving
from app.publishing.shadowing import start_shadow

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post(
    "/experts/{name}/shadow",
    status_code=201,
    response_model=ShadowOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def start(name: ExpertName, body: ShadowRequest, runtime: Serving) -> ShadowOut:
    """Load the candidate at `path` beside the serving version and search `share` of this expert's queries with it.

    The candidate is validated as a replace would be (a bad one is refused with the loader's error and
    nothing changes). Of the queries this expert answers, a seeded share is searched with the candidate
    too, after the answer is out and in a thread of its own, and the two top 10s are compared; no answer
    changes. One shadow per expert (409); a replace, rollback or removal of the expert stops it; a
    restart ends it.
    """
    report = await asyncio.to_thread(start_shadow, runtime.publisher, name, body.path, share=body.share, seed=body.seed)
    return ShadowOut.of(report)


@router.get("/experts/{name}/shadow", response_model=ShadowOut, responses=error_responses(401, 403, 404, 422, 503))
async def read(name: ExpertName, runtime: Serving) -> ShadowOut:
    """What the shadow has seen: queries shadowed, mean top-10 overlap, share differing, drops."""
    return ShadowOut.of(runtime.engine.shadows.get(name).report())


@router.delete("/experts/{name}/shadow", response_model=ShadowOut, responses=error_responses(401, 403, 404, 422, 503))
async def stop(name: ExpertName, runtime: Serving) -> ShadowOut:
    """Stop the shadow and unload the candidate; the answer holds its final figures."""
    report = await asyncio.to_thread(runtime.engine.shadows.stop, name, reason="stopped by an admin")
    return ShadowOut.of(report)
