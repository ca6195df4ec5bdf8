"""``GET /admin/keys`` and ``POST /admin/keys/reload``: the API keys in force, and reading RR_KEYS_FILE again.

A reload swaps the whole set of keys at once: a key removed from the file is
refused from the next request on, one added is accepted. A file that fails to
load (422 naming the entry) changes nothing. ``SIGHUP`` to ``rr serve`` does the
same reload (:func:`app.api.main.serve` installs the handler).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request

from app.api.auth import key_store, require_admin
from app.api.schemas import error_responses
from app.api.schemas_keys import KeyListOut

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.get("/keys", response_model=KeyListOut, responses=error_responses(401, 403))
async def list_keys(request: Request) -> KeyListOut:
    """Every key in force: name, scopes, experts and where it is configured (never its hash)."""
    store = key_store(request)
    return KeyListOut.of(store.current, store.settings.keys_file)


@router.post("/keys/reload", response_model=KeyListOut, responses=error_responses(401, 403, 422))
async def reload_keys(request: Request) -> KeyListOut:
    """Read RR_KEYS_FILE again and put its keys in force; 422 naming the bad entry leaves the keys in force as they are."""
    store = key_store(request)
    ring = await asyncio.to_thread(store.reload)
    return KeyListOut.of(ring, store.settings.keys_file)
