"""Bodies of ``POST /v1/rerank`` (the shape Cohere's and Jina's rerank APIs share) and ``/search``'s ``rerank`` option.

The number of documents per request is a setting (``RR_MAX_RERANK_DOCUMENTS``,
checked by the route: 413 over it); the length of each text is bounded here, so
an oversize one is a 422 before anything is tokenized. The model cuts every
(query, document) pair to ``RR_RERANKER_MAX_LENGTH`` tokens anyway.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.api.text_fields import QueryText

#: Characters of one document; the request body's limit (RR_MAX_BODY_BYTES) bounds them all together.
MAX_RERANK_DOCUMENT_CHARS = 100_000
#: Candidates a reranked search may ask for per query (as ``k``'s bound; RR_MAX_RERANK_DOCUMENTS may be lower).
MAX_RERANK_TOP_N = 1_000


DocumentText = Annotated[str, StringConstraints(max_length=MAX_RERANK_DOCUMENT_CHARS)]


class RerankDocument(BaseModel):
    """A document as an object (Jina, Cohere v1): its ``text`` is scored; other fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    text: DocumentText


class RerankRequest(BaseModel):
    """Cohere's and Jina's rerank body: a query, documents, and how many results to return."""

    model_config = ConfigDict(
        extra="ignore",  # clients add fields (rank_fields, max_chunks_per_doc, ...): unknown ones must not break them
        json_schema_extra={
            "examples": [
                {
                    "query": "lift of a swept wing at supersonic speed",
                    "documents": ["Swept wings at transonic speeds.", "A one-pass compiler for ALGOL."],
                    "top_n": 1,
                },
                {
                    "model": "default",
                    "query": "vitamin D and fractures",
                    "documents": [{"text": "Vitamin D supplements and the risk of bone fractures."}],
                    "return_documents": True,
                },
            ]
        },
    )

    model: str | None = Field(
        None,
        max_length=256,
        description="The reranker: its id (RR_RERANKER) or `default`; left out, the server's reranker.",
    )
    query: QueryText
    documents: list[DocumentText | RerankDocument] = Field(
        min_length=1,
        description="Strings, or objects with a `text` field; at most RR_MAX_RERANK_DOCUMENTS.",
    )
    top_n: int | None = Field(
        None, ge=1, description="Results to return, best first; more than there are documents returns them all."
    )
    return_documents: bool = Field(False, description="Give each result its document's `text`.")

    @property
    def texts(self) -> list[str]:
        return [doc if isinstance(doc, str) else doc.text for doc in self.documents]


class RerankDocumentOut(BaseModel):
    text: str


class RerankResultOut(BaseModel):
    index: int = Field(description="Position of the document in the request's `documents`.")
    relevance_score: float = Field(description="The cross-encoder's relevance, 0 to 1.")
    document: RerankDocumentOut | None = Field(None, description="With `return_documents`; else null.")


class RerankUsageOut(BaseModel):
    total_tokens: int = Field(description="Tokens the model read: every (query, document) pair after truncation.")


class BilledUnitsOut(BaseModel):
    search_units: int = 1


class RerankMetaOut(BaseModel):
    billed_units: BilledUnitsOut = Field(default_factory=BilledUnitsOut)


class RerankResponse(BaseModel):
    id: str = Field(description="A fresh id for this answer.")
    model: str = Field(description="The reranker that scored the documents (RR_RERANKER).")
    results: list[RerankResultOut] = Field(description="Best first.")
    usage: RerankUsageOut
    meta: RerankMetaOut = Field(default_factory=RerankMetaOut)


class SearchRerankOptions(BaseModel):
    """``/search``'s ``rerank``: rescore each query's best candidates with the cross-encoder, return the best ``k``."""

    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, as in the rest of SearchRequest

    top_n: int = Field(
        50,
        ge=1,
        le=MAX_RERANK_TOP_N,
        description="Candidates per query that the cross-encoder rescores (`max(k, top_n)` are retrieved); queries "
        "x candidates at most RR_MAX_RERANK_DOCUMENTS.",
    )
