"""``GET /experts`` and ``GET /experts/{name}``: what is published, what each holds, whether it loaded."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter

from app.api.auth import ListingCaller
from app.api.schemas import ExpertDetailOut, ExpertListOut, ExpertName, ExpertOut, error_responses
from app.api.state import Runtime, Service, Serving
from app.publishing.registry import KeptVersion, RegistryEntry
from experts import ExpertDir, Manifest, UnknownExpertError

router = APIRouter(tags=["experts"])


def describe(runtime: Runtime, entry: RegistryEntry, *, with_manifest: bool = False) -> dict[str, Any]:
    """One published expert as the API shows it; a failed one shows what its files still say."""
    loaded = runtime.engine.experts.get(entry.name)
    manifest: Manifest | None = loaded.manifest if loaded is not None else None
    row: dict[str, Any] = {"name": entry.name, "path": entry.path, "state": "loaded" if loaded else "failed"}
    if loaded is None:
        row["error"] = runtime.publisher.failed.get(entry.name, "not loaded")
        try:
            manifest = ExpertDir(runtime.publisher.registry.resolve(entry)).read_manifest()
        except Exception:  # the listing shows a broken expert rather than failing  # noqa: BLE001
            manifest = None
    if manifest is not None:
        row.update(
            version=manifest.version,
            description=manifest.description,
            base_model=manifest.base_model.id,
            pilots=manifest.pilots.count if manifest.pilots else None,
            adapter={
                "trained": manifest.adapter.trained,
                "side": manifest.adapter.side,
                "rank": manifest.adapter.rank,
                "alpha": manifest.adapter.alpha,
            },
        )
        if manifest.index is not None:
            row["documents"] = manifest.index.count
            row["index"] = {
                "factory": manifest.index.factory,
                "directory": manifest.index.directory,
                "documents": manifest.index.count,
            }
        if with_manifest:
            row["manifest"] = manifest.model_dump(mode="json")
    if loaded is not None:
        live = loaded.documents.state()
        row["documents"] = live.documents
        row["routable"] = loaded.routable
        row["live"] = asdict(live)
    if with_manifest:
        serving = _version_row(runtime, entry.kept(), manifest, serving=True)
        if "documents" in row:
            serving["documents"] = row["documents"]
        row["versions"] = [serving, *(_version_row(runtime, kept) for kept in entry.versions)]
    return row


def _version_row(
    runtime: Runtime, kept: KeptVersion, manifest: Manifest | None = None, *, serving: bool = False
) -> dict[str, Any]:
    """One version on disk as ``GET /experts/{name}`` lists it; a kept one's manifest is read from its directory."""
    row: dict[str, Any] = {**kept.model_dump(), "serving": serving}
    if manifest is None:
        try:
            manifest = ExpertDir(runtime.publisher.root / kept.path).read_manifest()
        except Exception as exc:  # a listing shows a damaged version rather than failing  # noqa: BLE001
            row["error"] = str(exc)
            return row
    row["documents"] = manifest.index.count if manifest.index is not None else None
    row["trained"] = manifest.adapter.trained
    row["training"] = manifest.training.model_dump(mode="json") if manifest.training is not None else None
    return row


def building_row(name: str, doing: str) -> dict[str, Any]:
    """An expert the serving process is still building (``rr demo``), not published yet.

    The demo reports a build it gave up on as ``"failed: <why>"``: that row says ``failed``, with the reason.
    """
    if doing.startswith("failed"):
        return {"name": name, "path": name, "state": "failed", "error": doing}
    return {"name": name, "path": name, "state": "building", "building": doing}


@router.get("/experts", response_model=ExpertListOut, responses=error_responses(401, 403, 503))
async def list_experts(runtime: Serving, service: Service, caller: ListingCaller) -> ExpertListOut:
    """Every published expert (that the key may use): documents, index type, adapter, pilots and load state.

    While `rr demo` builds experts beside the service, those not published yet are listed too, with
    `state: building` and `building` saying what each is doing (`indexing (first 400 documents)`, ...).
    """
    published = runtime.publisher.entries
    building = service.building  # replaced whole on each change: one read is one consistent view
    rows = []
    for name in caller.visible({*published, *building}):
        if name in published:
            row = describe(runtime, published[name])
            if name in building:
                row["building"] = building[name]
        else:
            row = building_row(name, building[name])
        rows.append(ExpertOut.model_validate(row))
    return ExpertListOut(experts=rows)


@router.get("/experts/{name}", response_model=ExpertDetailOut, responses=error_responses(401, 403, 404, 422, 503))
async def get_expert(name: ExpertName, runtime: Serving, caller: ListingCaller) -> ExpertDetailOut:
    """One published expert, with its manifest."""
    caller.check_expert(name)
    entries = runtime.publisher.entries
    if name not in entries:
        raise UnknownExpertError(f"Expert {name!r} not found. Published experts: {caller.visible(entries)}")
    return ExpertDetailOut.model_validate(describe(runtime, entries[name], with_manifest=True))
