"""The document API: upsert and delete batches, read one document, force a merge.

An acknowledged write is durable (committed to the expert's write-ahead log
with fsync) and visible to every search that starts after it, dense and
lexical alike; it survives ``kill -9`` and a restart. Writes and merges need
scope ``documents:write``, reads ``documents:read``, and a key limited to some
experts reaches only theirs.
"""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, Path

from app.api.auth import DocumentsReadCaller, DocumentsWriteCaller
from app.api.schemas import ExpertName, error_responses
from app.api.schemas_documents import (
    MAX_DOCUMENT_ID_CHARS,
    DeleteOut,
    DeleteRequest,
    DocumentOut,
    MergeOut,
    UpsertOut,
    UpsertRequest,
)
from app.api.state import Runtime, Serving
from app.errors import PayloadTooLargeError
from index import Document

router = APIRouter(tags=["documents"])

#: Paths whose bodies get RR_MAX_DOCUMENTS_BODY_BYTES instead of the ordinary limit (see app.api.body_limit).
DOCUMENT_BODY_ROUTES = tuple((method, re.compile(r"/admin/experts/[^/]+/documents")) for method in ("PUT", "DELETE"))

_WRITE_ERRORS = error_responses(401, 403, 404, 409, 413, 415, 422, 503, 507)


def _check_count(runtime: Runtime, count: int, what: str) -> None:
    limit = runtime.settings.max_upsert_documents
    if count > limit:
        raise PayloadTooLargeError(
            f"{count} {what} in one request; the limit is {limit} (RR_MAX_UPSERT_DOCUMENTS): send them in batches"
        )


@router.put(
    "/admin/experts/{name}/documents",
    response_model=UpsertOut,
    responses=_WRITE_ERRORS,
)
async def upsert_documents(
    name: ExpertName, body: UpsertRequest, runtime: Serving, caller: DocumentsWriteCaller
) -> UpsertOut:
    """Insert or replace a batch of documents (all or nothing); searchable as soon as this answers.

    Documents are embedded with the base encoder (the expert's adapter is on
    the query side), so an upsert never touches the adapter. A background
    merge folds the writes into a new index generation when enough piled up.
    """
    caller.check_expert(name)
    _check_count(runtime, len(body.documents), "documents")
    docs = [Document(d.id, d.title, d.text, dict(d.metadata)) for d in body.documents]
    written = await asyncio.to_thread(runtime.documents.upsert, name, docs)
    report = written.report
    return UpsertOut(
        expert=name,
        seq=report.seq,
        created=report.created,
        replaced=report.replaced,
        documents=written.documents,
        merging=written.merging,
    )


@router.delete(
    "/admin/experts/{name}/documents",
    response_model=DeleteOut,
    responses=_WRITE_ERRORS,
)
async def delete_documents(
    name: ExpertName, body: DeleteRequest, runtime: Serving, caller: DocumentsWriteCaller
) -> DeleteOut:
    """Delete a batch of documents by id; gone from every search as soon as this answers. Unknown ids are listed."""
    caller.check_expert(name)
    _check_count(runtime, len(body.ids), "ids")
    written = await asyncio.to_thread(runtime.documents.delete, name, body.ids)
    report = written.report
    return DeleteOut(
        expert=name,
        seq=report.seq,
        deleted=report.deleted,
        missing=report.missing,
        documents=written.documents,
        merging=written.merging,
    )


@router.get(
    "/experts/{name}/documents/{doc_id:path}",
    response_model=DocumentOut,
    responses=error_responses(401, 403, 404, 422, 503),
)
async def get_document(
    name: ExpertName,
    runtime: Serving,
    caller: DocumentsReadCaller,
    doc_id: str = Path(min_length=1, max_length=MAX_DOCUMENT_ID_CHARS, description="The document's id."),
) -> DocumentOut:
    """One document as searches see it now (upserts and deletes included)."""
    caller.check_expert(name)
    document = await asyncio.to_thread(runtime.documents.get, name, doc_id)
    return DocumentOut(
        expert=name, id=document.id, title=document.title, text=document.text, metadata=document.metadata
    )


@router.post(
    "/admin/experts/{name}/merge",
    response_model=MergeOut,
    responses=error_responses(401, 403, 404, 409, 422, 503, 507),
)
async def merge_documents(name: ExpertName, runtime: Serving, caller: DocumentsWriteCaller) -> MergeOut:
    """Fold the live writes into a new index generation now and wait for it (searches go on meanwhile)."""
    caller.check_expert(name)
    report, expert = await asyncio.to_thread(runtime.documents.merge, name)
    return MergeOut(
        expert=name,
        merged=report is not None,
        directory=None if report is None else report.directory.name,
        documents=len(expert.documents),
        from_delta=0 if report is None else report.from_delta,
        tombstones_applied=0 if report is None else report.tombstones_applied,
        version=expert.manifest.version,
    )
