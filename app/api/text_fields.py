"""The text field types the request bodies share: a query, an embeddings input, each bounded and never blank.

Apart from :mod:`app.api.schemas` so that every body module (search, OpenAI,
rerank) takes them from one place without importing the others.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, StringConstraints

__all__ = ["MAX_INPUT_CHARS", "MAX_QUERY_CHARS", "InputText", "QueryText", "not_blank"]

#: Characters per query; queries are cut at RR_QUERY_MAX_LENGTH tokens anyway.
MAX_QUERY_CHARS = 2_000
#: Characters per embeddings input (documents are longer than queries).
MAX_INPUT_CHARS = 20_000


def not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must contain some text, not only spaces")
    return text


QueryText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_QUERY_CHARS), AfterValidator(not_blank)]
InputText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_INPUT_CHARS), AfterValidator(not_blank)]
