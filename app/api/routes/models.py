"""``GET /v1/models``: the models ``/v1/embeddings`` takes, in OpenAI's shape (clients and gateways list them first).

``base`` and ``auto`` always; then every expert that serves now, so the list
changes live as experts are published and removed. An expert published but
failed to load is left out: ``/v1/embeddings`` would refuse it (503).
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter

from app.api.auth import Caller, EmbedCaller
from app.api.schemas import error_responses
from app.api.schemas_openai import ModelListOut, ModelOut
from app.api.state import Runtime, Serving
from app.engine.engine import AUTO_MODEL, BASE_MODEL, RESERVED_NAMES
from experts import UnknownExpertError

router = APIRouter(tags=["embeddings"])


def _models(runtime: Runtime, caller: Caller) -> list[ModelOut]:
    base = runtime.engine.encoder.model_id
    started = int(runtime.started_at)
    models = [
        ModelOut(id=BASE_MODEL, created=started, root=base, parent=None),
        ModelOut(id=AUTO_MODEL, created=started, root=base, parent=base),
    ]
    entries = runtime.publisher.entries
    for name in caller.visible(runtime.engine.experts):  # a key limited to some experts sees only those
        entry = entries.get(name)
        published = int(datetime.fromisoformat(entry.published_at).timestamp()) if entry is not None else started
        models.append(ModelOut(id=name, created=published, root=base, parent=base))
    return models


@router.get("/v1/models", response_model=ModelListOut, responses=error_responses(401, 403, 503))
async def list_models(runtime: Serving, caller: EmbedCaller) -> ModelListOut:
    """`base`, `auto` and every serving expert, each with the base encoder as `root`."""
    return ModelListOut(data=_models(runtime, caller))


@router.get("/v1/models/{model}", response_model=ModelOut, responses=error_responses(401, 403, 404, 503))
async def get_model(model: str, runtime: Serving, caller: EmbedCaller) -> ModelOut:
    """One model of the list (the OpenAI SDK's `models.retrieve`)."""
    if model not in RESERVED_NAMES:
        caller.check_expert(model)
    models = {entry.id: entry for entry in _models(runtime, caller)}
    if model not in models:
        raise UnknownExpertError(f"Model {model[:80]!r} not found. Valid models: {sorted(models)}")
    return models[model]
