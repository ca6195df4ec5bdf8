"""``manifest.json``: what an expert directory holds and what it was built for.

The manifest is the single commit point of an expert: every other file is
written first, then the manifest is replaced atomically. A reader that loads
the manifest therefore sees one consistent version, and the checksums let it
refuse files that changed or broke underneath.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MANIFEST_VERSION = 1
#: Expert names are used in URLs, file names and metric labels.
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

AdapterSide = Literal["query", "both"]


def check_expert_name(name: str) -> str:
    """Return ``name`` if it is a valid expert name, else raise ValueError saying what is valid."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"Invalid expert name {name!r}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        )
    return name


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class _Section(BaseModel):
    # Unknown keys are kept out rather than failing, so a newer writer's
    # manifest still loads here (the PEFT convention for configs).
    model_config = ConfigDict(extra="ignore", frozen=True)


class BaseModelInfo(_Section):
    id: str = Field(description="Hub id or path the base encoder was loaded from (informational).")
    fingerprint: str = Field(description="sha256 of the base weights; this is what must match.")
    dim: int = Field(gt=0, description="Embedding dimension.")


class AdapterInfo(_Section):
    side: AdapterSide = Field("query", description="'query': documents are embedded by the base encoder.")
    rank: int = Field(gt=0)
    alpha: float
    dropout: float = 0.0
    target_modules: tuple[str, ...]
    trained: bool = Field(description="False for a freshly initialised adapter, which equals the base model.")

    @property
    def embeds_documents(self) -> bool:
        """Whether this adapter embeds the expert's documents, not the base encoder: the one rule, for builds,
        live upserts, Ray actors and the embeddings API. Only a trained symmetric ('both') adapter does; a
        query-side one leaves documents to the base encoder, and an untrained one equals the base model."""
        return self.side == "both" and self.trained


class IndexSection(_Section):
    directory: str = Field(description="The published index generation, relative to the expert directory.")
    factory: str
    count: int = Field(ge=0)
    lexical: dict[str, Any] | None = Field(
        None, description="How the BM25 index analyses text (stopwords, stemmer, k1, b, ...); None: no BM25 index."
    )
    chunking: dict[str, Any] | None = Field(
        None,
        description="Long-document policy of the index (policy: truncate | chunk | error, max_tokens, overlap), "
        "as its index.json records it; None: built before the policy existed (truncate).",
    )


class PilotsSection(_Section):
    file: str
    count: int = Field(gt=0)
    method: str
    source: str = Field("", description="Where the pilot queries came from.")


class RetrievalSection(_Section):
    """How this expert is searched when a request does not say: the hybrid fusion weight tuned for it.

    The dense share of a weighted fusion is tuned on the expert's own training
    queries (labelled ones where it had them, else pseudo queries from its
    documents), never on test queries, with its adapter's query vectors: the
    best weight differs per domain (more lexical where terms are technical and
    rare), and with the adapter the dense side deserves more than with the base.
    """

    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="This expert's default search mode; None: the service's setting."
    )
    fusion: Literal["weighted", "rrf"] = "weighted"
    weight: float = Field(ge=0.0, le=1.0, description="Dense share of the weighted fusion, tuned.")
    tuned_on: str = Field(description="What the weight was tuned on: 'labelled' or 'pseudo' queries, and how many.")
    queries: int = Field(ge=0, description="Tuning queries used.")
    curve: dict[str, float] = Field(
        default_factory=dict, description="nDCG@10 on the tuning queries for each weight tried ('0.50': 0.71)."
    )
    tuned_at: str = Field(default_factory=utc_now)


class TrainingSection(_Section):
    """How the adapter was trained (absent for an untrained or imported adapter). Informational."""

    recipe: dict[str, Any] = Field(description="The TrainConfig fields (steps, lr, temperature, LoRA, seed, ...).")
    mode: str = Field(description="'full_softmax' (every document scored) or 'in_batch' (+ mined negatives).")
    pairs: int = Field(ge=0, description="Training queries available (pseudo + supervised, repeats counted).")
    pair_kinds: dict[str, int] = Field(default_factory=dict, description="Pairs per kind: title, span, supervised.")
    documents: int = Field(ge=0)
    first_loss: float
    final_loss: float
    seconds: float
    trained_at: str = Field(default_factory=utc_now)
    corpora: tuple[str, ...] = Field((), description="Fingerprints of the corpus files trained on.")
    labelled: str = Field("", description="Labelled queries and qrels used, if any.")


class Manifest(_Section):
    format_version: int = MANIFEST_VERSION
    name: str
    version: int = Field(1, ge=1, description="Bumped on every publish.")
    description: str = ""
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)
    base_model: BaseModelInfo
    pooling: Literal["mean", "cls"] = "mean"
    max_length: int = Field(256, gt=1)
    adapter: AdapterInfo
    index: IndexSection | None = None
    pilots: PilotsSection | None = None
    training: TrainingSection | None = None
    retrieval: RetrievalSection | None = None
    files: dict[str, str] = Field(default_factory=dict, description="Relative path -> sha256 of every file.")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_expert_name(value)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value > MANIFEST_VERSION:
            raise ValueError(f"manifest format {value} is newer than this release understands ({MANIFEST_VERSION})")
        return value

    def next_version(self, **changes: object) -> Manifest:
        """A copy with ``changes`` applied, the version bumped and the time stamped."""
        return self.model_copy(update={**changes, "version": self.version + 1, "updated_at": utc_now()})
