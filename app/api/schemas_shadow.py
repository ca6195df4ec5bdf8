"""Bodies of ``/admin/experts/{name}/shadow``: a shadow's start and what it has seen (:mod:`app.engine.shadow`)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field

from app.engine.shadow import SHADOW_SEED, ShadowReport
from app.engine.shadow_compare import SHADOW_DEPTH


class ShadowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"path": "v2/cranfield", "share": 0.1}]})

    path: str = Field(
        min_length=1,
        max_length=4096,
        description="The candidate expert directory, under the data root (as for a replace); it must hold this expert.",
    )
    share: float = Field(gt=0, le=1, description="The part of the queries this expert answers also searched with it.")
    seed: int = Field(SHADOW_SEED, ge=0, description="Seed of the draws: which queries are shadowed.")


class CandidateOut(BaseModel):
    path: str = Field(description="The candidate's directory, relative to the data root.")
    version: int = Field(description="The candidate's manifest version.")


class ShadowOut(BaseModel):
    expert: str
    candidate: CandidateOut
    serving_version: int = Field(description="The manifest version that answers (and that was shadowed).")
    share: float
    seed: int
    started_at: str = Field(description="When the shadow started (UTC, ISO 8601).")
    running: bool = Field(description="False in the answer of a DELETE: the shadow has stopped.")
    shadowed: int = Field(description="Queries searched with the candidate too and compared.")
    pending: int = Field(description="Queries waiting for the shadow worker.")
    dropped: int = Field(description="Queries drawn for the shadow but dropped: its queue was full.")
    errors: int = Field(description="Queries the candidate could not search that way (e.g. hybrid without BM25).")
    mean_overlap: float | None = Field(
        description=f"Mean |A∩B| / {SHADOW_DEPTH} of the two top {SHADOW_DEPTH}s (by |A∪B| when fewer hits); "
        "null before the first query."
    )
    differing: float | None = Field(description=f"Share of shadowed queries whose top {SHADOW_DEPTH} differs at all.")
    top1_differing: float | None = Field(description="Share of shadowed queries whose first hit differs.")
    mean_displacement: float | None = Field(
        description="Mean rank distance of the documents both top lists hold (0: none moved)."
    )

    @classmethod
    def of(cls, report: ShadowReport) -> ShadowOut:
        return cls(
            expert=report.expert,
            candidate=CandidateOut(path=report.path, version=report.version),
            serving_version=report.serving_version,
            share=report.share,
            seed=report.seed,
            started_at=datetime.fromtimestamp(report.started_at, UTC).isoformat(),
            running=report.running,
            shadowed=report.shadowed,
            pending=report.pending,
            dropped=report.dropped,
            errors=report.errors,
            mean_overlap=report.mean_overlap,
            differing=report.differing,
            top1_differing=report.top1_differing,
            mean_displacement=report.mean_displacement,
        )
