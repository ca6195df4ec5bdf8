"""``/admin/uploads``: send a job's files (corpus, queries, qrels) to a server whose disk the client cannot reach.

``POST /admin/uploads?name=corpus.jsonl.gz`` takes the file's bytes as the
raw request body (as GitHub's release-asset upload does: no multipart form),
streams them to ``<data root>/.uploads/`` under a temporary name, fsyncs and
renames the file once complete, and answers with its data-root path, size and
SHA-256; ``POST /admin/jobs`` then names that path. Over RR_MAX_UPLOAD_BYTES
is a 413 and leaves no file (:mod:`app.publishing.data_uploads`). ``GET``
lists the uploaded files, ``DELETE`` removes one.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from app.api.auth import require_admin
from app.api.routes.jobs import Jobs
from app.api.schemas import error_responses
from app.api.schemas_jobs import UploadListOut, UploadOut
from app.api.state import Serving
from app.errors import UnsupportedMediaTypeError
from app.publishing.data_uploads import UPLOAD_NAME_PATTERN, DataUploads

router = APIRouter(prefix="/admin", tags=["jobs"], dependencies=[Depends(require_admin)])

#: Form encodings would wrap (or mangle) the file's bytes: the body must be the file itself.
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

UploadName = Annotated[
    str,
    Query(
        pattern=UPLOAD_NAME_PATTERN,
        description="The file's name; its suffix says the format: corpus.jsonl, corpus.jsonl.gz, queries.jsonl, "
        "qrels.tsv.",
        examples=["corpus.jsonl.gz"],
    ),
]
UploadFileName = Annotated[
    str, Path(min_length=1, max_length=256, description="The last part of an uploaded file's path.")
]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            "application/gzip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def _uploads(runtime: Serving) -> DataUploads:
    return DataUploads(runtime.settings.data_dir, max_bytes=runtime.settings.max_upload_bytes)


Uploads = Annotated[DataUploads, Depends(_uploads)]


@router.post(
    "/uploads",
    status_code=201,
    response_model=UploadOut,
    openapi_extra=_UPLOAD_BODY,
    responses=error_responses(401, 403, 413, 415, 422, 501, 507),
)
async def upload_file(request: Request, response: Response, name: UploadName, uploads: Uploads, _: Jobs) -> UploadOut:
    """Receive one file for a job: the request body is the file (`Content-Type: application/octet-stream`,
    or `application/gzip` for a `.gz`).

    Answers 201 with the path to name in `POST /admin/jobs` (`corpus`, `queries`, `qrels`). 413 over
    RR_MAX_UPLOAD_BYTES; 422 for an empty file, or one whose `.gz` suffix misstates its compression; 415
    for a form encoding. Nothing is kept from a refused or broken-off upload.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type in FORM_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {content_type!r} is not accepted: send the file's bytes as the body "
            "(application/octet-stream, or application/gzip), and its name as ?name="
        )
    receiving = await asyncio.to_thread(uploads.receive, name)
    try:
        async for chunk in request.stream():  # the body-size middleware stops it at the limit too
            receiving.write(chunk)  # small sequential writes; the page cache absorbs them
        uploaded = await asyncio.to_thread(receiving.commit)
    except BaseException:
        receiving.discard()
        raise
    response.headers["Location"] = f"/admin/uploads/{uploaded.path.rsplit('/', 1)[-1]}"
    return UploadOut.model_validate(uploaded, from_attributes=True)


@router.get("/uploads", response_model=UploadListOut, responses=error_responses(401, 403, 501))
async def list_uploads(uploads: Uploads, _: Jobs) -> UploadListOut:
    """The files uploaded and not deleted, newest first."""
    files = await asyncio.to_thread(uploads.files)
    return UploadListOut(uploads=[UploadOut.model_validate(f, from_attributes=True) for f in files])


@router.delete("/uploads/{file_name}", response_model=UploadOut, responses=error_responses(401, 403, 404, 501))
async def delete_upload(file_name: UploadFileName, uploads: Uploads, _: Jobs) -> UploadOut:
    """Delete an uploaded file (a job queued or running on it may then fail)."""
    return UploadOut.model_validate(await asyncio.to_thread(uploads.remove, file_name), from_attributes=True)
