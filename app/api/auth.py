"""API keys: ``Authorization: Bearer <key>``, compared in constant time, never logged.

Admin routes need the admin key; with none configured the admin API is off
(403 says how to turn it on). Search-side routes need the search key only when
one is configured (the admin key is accepted there too). Probes and metrics
need no key.

The same dependencies guard ``rr serve`` and the Ray Serve ingress
(:mod:`app.ray_serve.routes`): both apps keep their state at ``app.state.service``,
and only its ``settings`` are read here.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from app.errors import AuthenticationError, PermissionDeniedError
from app.settings import Settings

# auto_error=False: a missing or non-Bearer header reaches us, and we answer in the API's error shape.
_bearer = HTTPBearer(auto_error=False, description="Admin or search API key.")


def _matches(given: str, keys: list[SecretStr]) -> bool:
    # Hash first so that compare_digest sees equal lengths: not even the key's length leaks through timing.
    digest = hashlib.sha256(given.encode()).digest()
    found = False
    for key in keys:
        found |= hmac.compare_digest(digest, hashlib.sha256(key.get_secret_value().encode()).digest())
    return found


def _check(credentials: HTTPAuthorizationCredentials | None, keys: list[SecretStr], what: str) -> None:
    if credentials is None:
        raise AuthenticationError(f"{what} needs an 'Authorization: Bearer <key>' header")
    if not _matches(credentials.credentials, keys):
        raise PermissionDeniedError(f"the key given is not valid for {what}")


def app_settings(request: Request) -> Settings:
    """The settings of the app answering: ``rr serve``'s ``ServiceState`` and the Serve ingress both hold them."""
    return request.app.state.service.settings


AppSettings = Annotated[Settings, Depends(app_settings)]


def require_admin(settings: AppSettings, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Admin routes: the admin key, always."""
    key = settings.admin_key
    if key is None or not key.get_secret_value():
        raise PermissionDeniedError("the admin API is disabled: set RR_ADMIN_KEY to enable it")
    _check(credentials, [key], "the admin API")


def require_search(settings: AppSettings, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> None:
    """Search, embeddings and listings: the search key (or the admin key) when a search key is set."""
    if settings.search_key is None or not settings.search_key.get_secret_value():
        return
    keys = [settings.search_key] + ([settings.admin_key] if settings.admin_key is not None else [])
    _check(credentials, keys, "this API")
