"""Bodies of the document API: upsert, delete, read one, merge; with the limits that keep a batch bounded.

The number of documents per request is a setting (``RR_MAX_UPSERT_DOCUMENTS``,
checked by the route: 413 over it), like the number of queries per search;
everything about one document is bounded here, so a bad one is a 422 naming
its position before anything is embedded.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

#: Characters of a document's text. Long documents are split into chunks (or truncated) by the index.
MAX_DOCUMENT_CHARS = 1_000_000
MAX_TITLE_CHARS = 4_000
MAX_DOCUMENT_ID_CHARS = 512
#: Bytes of a document's metadata as JSON.
MAX_METADATA_BYTES = 16_384


def _no_control_characters(value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError("document ids may not contain control characters")
    if value != value.strip():
        raise ValueError("document ids may not start or end with spaces")
    return value


DocumentId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_DOCUMENT_ID_CHARS), AfterValidator(_no_control_characters)
]


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    return True


def _bounded_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    if not _finite(metadata):
        raise ValueError("metadata values must be finite numbers (no NaN or Infinity)")
    size = len(json.dumps(metadata, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return metadata


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Strict):
    """One document: replaced whole if its id exists, created otherwise."""

    id: DocumentId = Field(description="The document's id, unique within the expert.")
    title: str = Field("", max_length=MAX_TITLE_CHARS)
    text: str = Field("", max_length=MAX_DOCUMENT_CHARS, description="Long texts follow the expert's chunking policy.")
    metadata: Annotated[dict[str, Any], AfterValidator(_bounded_metadata)] = Field(
        default_factory=dict, description="A JSON object; its top-level fields can be filtered on in /search."
    )

    @model_validator(mode="after")
    def _has_text(self) -> DocumentIn:
        if not (self.title.strip() or self.text.strip()):
            raise ValueError("a document needs a title or a text that is not only spaces")
        return self


class UpsertRequest(_Strict):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "documents": [
                        {
                            "id": "memo-17",
                            "title": "Wing flutter test",
                            "text": "Flutter onset was observed at ...",
                            "metadata": {"year": 2026, "source": "lab"},
                        },
                    ]
                }
            ]
        },
    )

    documents: list[DocumentIn] = Field(min_length=1, description="At most RR_MAX_UPSERT_DOCUMENTS; ids must differ.")

    @model_validator(mode="after")
    def _distinct_ids(self) -> UpsertRequest:
        seen: set[str] = set()
        for position, doc in enumerate(self.documents):
            if doc.id in seen:
                raise ValueError(f"documents[{position}]: id {doc.id!r} appears twice in this request")
            seen.add(doc.id)
        return self


class DeleteRequest(_Strict):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"ids": ["memo-17", "memo-18"]}]})

    ids: list[DocumentId] = Field(min_length=1, description="At most RR_MAX_UPSERT_DOCUMENTS ids.")


class UpsertOut(BaseModel):
    expert: str
    seq: int = Field(description="The write's sequence number; every later search sees it.")
    created: int
    replaced: int
    documents: int = Field(description="Live documents of the expert after the write.")
    merging: bool = Field(description="A background merge into a new index generation is running.")


class DeleteOut(BaseModel):
    expert: str
    seq: int
    deleted: list[str]
    missing: list[str] = Field(description="Ids that were not in the expert (nothing to delete).")
    documents: int
    merging: bool


class DocumentOut(BaseModel):
    expert: str
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class MergeOut(BaseModel):
    expert: str
    merged: bool = Field(description="False: there were no live writes to fold in.")
    directory: str | None = Field(None, description="The new index generation.")
    documents: int
    from_delta: int = 0
    tombstones_applied: int = 0
    version: int = Field(description="The expert's manifest version now.")
