"""``POST /admin/experts`` (publish a directory or an uploaded archive), ``DELETE /admin/experts/{name}`` and
``POST /admin/experts/{name}/rollback`` (serve a kept version again)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from app.api.auth import require_admin
from app.api.routes.experts import describe
from app.api.schemas import (
    AddExpertRequest,
    ExpertDetailOut,
    ExpertName,
    RemovedOut,
    RollbackRequest,
    error_responses,
)
from app.api.state import Runtime, Serving
from app.errors import PayloadTooLargeError, UnsupportedMediaTypeError

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])

#: Content types taken as an expert archive (tar, optionally gzip-compressed).
ARCHIVE_TYPES = ("application/gzip", "application/x-gzip", "application/x-tar", "application/octet-stream")


_ADD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": AddExpertRequest.model_json_schema(),
                "examples": {
                    "path": {"summary": "a directory under the data root", "value": {"path": "cranfield"}},
                    "replace": {
                        "summary": "swap a published expert",
                        "value": {"path": "v2/cranfield", "replace": True},
                    },
                },
            },
            "application/gzip": {
                "schema": {"type": "string", "format": "binary"},
                "example": "(tar.gz of an expert directory; ?replace=true to swap)",
            },
        },
    }
}


@router.post(
    "/experts",
    status_code=201,
    response_model=ExpertDetailOut,
    openapi_extra=_ADD_BODY,
    responses=error_responses(401, 403, 409, 413, 415, 422, 503, 507),
)
async def add_expert(
    request: Request,
    runtime: Serving,
    replace: bool = Query(False, description="For an archive: swap out a published expert of the same name."),
    gate: str | None = Query(
        None, min_length=1, max_length=8192, description="For an archive with replace: 'pseudo' or 'QUERIES:QRELS'."
    ),
    gate_margin: float | None = Query(None, ge=0, le=1, description="For an archive: the gate's margin."),
) -> ExpertDetailOut:
    """Validate everything (manifest, checksums, base-model fingerprint, dimension, pilots, index), load, publish.

    Send JSON `{"path": ...}` naming a directory under the data root, or the
    bytes of a tar(.gz) of an expert directory (`Content-Type:
    application/gzip`), which is unpacked under `<data root>/uploads/`. Any
    failure changes nothing and says why. Published experts survive a restart.

    A replace may name a quality gate (`gate`: `pseudo` or `QUERIES:QRELS`):
    both versions are scored (nDCG@10, Recall@100) and a candidate worse than
    the serving version by more than `gate_margin` (RR_GATE_MARGIN) is refused
    with 409 `gate_refused`, both figures in `details`; the figures of a
    passed gate are kept with the version (`versions[].gate`).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        payload = await _json_body(request, runtime.settings.max_body_bytes)
        entry = await asyncio.to_thread(
            runtime.publisher.add_path,
            payload.path,
            replace=payload.replace or replace,
            gate=payload.gate if payload.gate is not None else gate,
            gate_margin=payload.gate_margin if payload.gate_margin is not None else gate_margin,
        )
    elif content_type in ARCHIVE_TYPES:
        archive = await _receive_archive(request, runtime)
        try:
            entry = await asyncio.to_thread(
                runtime.publisher.add_archive,
                archive,
                replace=replace,
                max_bytes=runtime.settings.max_extracted_bytes,
                gate=gate,
                gate_margin=gate_margin,
            )
        finally:
            archive.unlink(missing_ok=True)
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type or '(none)'!r} is not accepted: send application/json with a path, "
            f"or a tar(.gz) archive as one of {list(ARCHIVE_TYPES)}"
        )
    return ExpertDetailOut.model_validate(describe(runtime, entry, with_manifest=True))


async def _json_body(request: Request, limit: int) -> AddExpertRequest:
    # This route's body limit is the archive's; a JSON body gets the ordinary one, checked as it streams.
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise PayloadTooLargeError(f"request body is larger than the limit of {limit} bytes")
    try:
        return AddExpertRequest.model_validate_json(bytes(body))
    except ValidationError as exc:
        raise RequestValidationError(
            [{**error, "loc": ("body", *error.get("loc", ()))} for error in exc.errors(include_url=False)]
        ) from exc


async def _receive_archive(request: Request, runtime: Runtime) -> Path:
    """Stream the body to a file under the data root (the body-size middleware stops it at the limit)."""
    target = runtime.publisher.receiving_path()
    try:
        with open(target, "xb") as sink:
            async for chunk in request.stream():
                sink.write(chunk)  # small sequential writes; the page cache absorbs them
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target


@router.delete("/experts/{name}", response_model=RemovedOut, responses=error_responses(401, 403, 404, 422, 503))
async def remove_expert(name: ExpertName, runtime: Serving) -> RemovedOut:
    """Unpublish at once: new requests no longer see it; searches in flight finish on their snapshot, then it unloads.

    Waits up to RR_DRAIN_TIMEOUT_S for those searches; `unloaded: false` means
    some were still running then (it unloads when they finish).
    """
    done = await asyncio.to_thread(runtime.publisher.remove, name)
    unloaded = await asyncio.to_thread(done.wait, runtime.settings.drain_timeout_s)
    return RemovedOut(name=name, unloaded=unloaded)


@router.post(
    "/experts/{name}/rollback",
    response_model=ExpertDetailOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
)
async def rollback_expert(name: ExpertName, runtime: Serving, body: RollbackRequest | None = None) -> ExpertDetailOut:
    """Serve a kept version of the expert again: by default the one served before, or `{"version": N}`.

    The same path as a replace: the kept version is loaded and validated
    first (a failure leaves the serving one untouched), then swapped in
    atomically; searches in flight finish on the version they started on.
    The version it replaces is kept in turn (a second rollback undoes the
    first). Documents upserted or deleted through the live API since the
    serving version began serving are carried to the kept version before the
    swap (upserted as they are now, embedded by its rules, or deleted), so no
    acknowledged write is lost. 404 naming the kept versions when `version` is
    not kept; 409 when none is kept, when those writes cannot be carried, or
    when the serving version's live log predates the record of them.
    """
    version = body.version if body is not None else None
    entry, _ = await asyncio.to_thread(runtime.publisher.rollback, name, version=version)
    return ExpertDetailOut.model_validate(describe(runtime, entry, with_manifest=True))
