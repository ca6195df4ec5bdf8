"""OpenAI's wire formats: ``/v1/embeddings`` and ``/v1/models``, as the OpenAI SDK, LangChain and LlamaIndex send them.

Unknown request fields are ignored (clients add fields over time); the
responses carry OpenAI's fields first and our extensions (``expert``) beside
them, which OpenAI's clients ignore.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.api.text_fields import InputText

#: What OpenAI also accepts as ``input``: token ids of the client's tokenizer (tiktoken), one list or one per input.
TokenIds = Annotated[list[int], Field(min_length=1)]


class EmbeddingsRequest(BaseModel):
    """OpenAI's ``POST /v1/embeddings`` body, plus ``input_type``."""

    model_config = ConfigDict(
        extra="ignore",  # OpenAI clients add fields over time; unknown ones must not break them
        json_schema_extra={
            "examples": [
                {"model": "auto", "input": ["heat transfer in laminar boundary layers"]},
                {"model": "cranfield", "input": "shock wave", "input_type": "query"},
                {"model": "base", "input": "A document title. Its text.", "input_type": "document"},
            ]
        },
    )

    input: (
        InputText
        | Annotated[list[InputText], Field(min_length=1)]
        | TokenIds
        | Annotated[list[TokenIds], Field(min_length=1)]
    ) = Field(
        description="A string, or a list of strings (at most RR_MAX_EMBEDDING_INPUTS). Token-id arrays, which "
        "OpenAI also takes, are answered 400: this server tokenizes text with its own encoder's tokenizer."
    )
    model: str = Field(description="An expert name, `base` (no adapter) or `auto` (routed per input).", max_length=64)
    input_type: Literal["query", "document"] = Field(
        "query", description="`document`: query-side experts embed documents with the base encoder, as their index."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the encoder's dimension when given.")
    user: str | None = None

    @property
    def holds_token_ids(self) -> bool:
        first = self.input[0] if isinstance(self.input, list) else self.input
        return not isinstance(first, str)

    @property
    def texts(self) -> list[str]:
        """The inputs as a list of strings (call after checking ``holds_token_ids``)."""
        inputs = [self.input] if isinstance(self.input, str) else self.input
        return [text for text in inputs if isinstance(text, str)]


class EmbeddingOut(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str = Field(
        description="Floats, or base64 of little-endian float32 with encoding_format=base64."
    )
    expert: str | None = Field(
        None, description="The expert whose adapter made this vector; null for the base encoder."
    )


class UsageOut(BaseModel):
    prompt_tokens: int = Field(description="Tokens the encoder read: each input's, after truncation to its limit.")
    total_tokens: int


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingOut]
    model: str = Field(
        description="The model that made the vectors: the requested expert or `base`; for `auto`, the one expert "
        "(or `base`) every input was routed to, else `auto` (each item's `expert` says which)."
    )
    usage: UsageOut


class ModelOut(BaseModel):
    """One entry of ``GET /v1/models``: OpenAI's fields, and ``parent``/``root`` as vLLM gives them for adapters."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time: when the expert was published (`base`, `auto`: service start).")
    owned_by: str = "router-retriever"
    root: str = Field(description="The base encoder every model runs on.")
    parent: str | None = Field(description="The base encoder for experts and `auto`; null for `base` itself.")


class ModelListOut(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelOut]
