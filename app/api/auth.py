"""Who is calling, and may they: ``Authorization: Bearer <key>`` checked against the keys in force, per scope.

Each route depends on one ``require_<scope>`` dependency, which answers:

- 401 when the route needs a key and none was sent, or the key sent is not known;
- 403 when the key lacks the route's scope (the message names it), or when no key
  at all holds the scope (the admin API is then off: the message says how to turn it on);
- otherwise the :class:`Caller`, whose ``experts`` the route then checks (403 naming the expert).

Search-side scopes (``search``, ``embed``, ``documents:read``) are open to anyone
while neither ``RR_SEARCH_KEY`` nor ``RR_KEYS_FILE`` is set, as before keys had
scopes. Probes and metrics need no key. The caller's key name (``anonymous``
without one, ``unknown`` for a key not known) is left in the request's state,
where the metrics and the access log read it.

The same dependencies guard ``rr serve`` and the Ray Serve ingress
(:mod:`app.ray_serve.routes`): both apps keep their :class:`~app.api.keys.KeyStore` at ``app.state.keys``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.api.keys import ANONYMOUS, KEY_NAME_STATE, SEARCH_SCOPES, UNKNOWN, ApiKey, KeyStore, Scope
from app.errors import AuthenticationError, PermissionDeniedError

__all__ = [
    "AdminCaller",
    "Caller",
    "DocumentsReadCaller",
    "DocumentsWriteCaller",
    "EmbedCaller",
    "KEY_NAME_STATE",
    "ListingCaller",
    "SearchCaller",
    "key_store",
    "require_admin",
    "require_documents_read",
    "require_documents_write",
    "require_embed",
    "require_listing",
    "require_search",
]

# auto_error=False: a missing or non-Bearer header reaches us, and we answer in the API's error shape.
_bearer = HTTPBearer(auto_error=False, description="An API key: RR_ADMIN_KEY, RR_SEARCH_KEY or one of RR_KEYS_FILE.")


@dataclass(frozen=True)
class Caller:
    """Who made a request: the key's name and scopes, and the experts it may touch (None: every expert)."""

    name: str
    experts: frozenset[str] | None = None

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        return cls(key.name, key.experts)

    def may_use(self, expert: str) -> bool:
        return self.experts is None or expert in self.experts

    def check_expert(self, expert: str) -> None:
        """403 naming the expert when this key may not touch it (whether or not it exists: nothing leaks)."""
        if not self.may_use(expert):
            raise PermissionDeniedError(
                f"key {self.name!r} may not use expert {expert[:80]!r}; it may use: {sorted(self.experts or ())}",
                details={"expert": expert[:80]},
            )

    def visible(self, experts: Iterable[str]) -> list[str]:
        """Of ``experts``, those this key may see, sorted (listings show no others)."""
        return sorted(name for name in experts if self.may_use(name))


def key_store(request: Request) -> KeyStore:
    """The keys of the app answering (``create_app`` and ``create_ingress_app`` put them at ``app.state.keys``)."""
    return request.app.state.keys


def _label(request: Request, name: str) -> None:
    setattr(request.state, KEY_NAME_STATE, name)


def authenticate(
    request: Request, credentials: HTTPAuthorizationCredentials | None, scopes: tuple[Scope, ...], guards: str
) -> Caller:
    """The caller if it holds one of ``scopes`` (what ``guards`` names); else 401 or 403 as the module says."""
    ring = key_store(request).current
    key = ring.lookup(credentials.credentials) if credentials is not None else None
    if key is None:
        if ring.open_access and SEARCH_SCOPES.intersection(scopes):
            _label(request, ANONYMOUS)  # open, as without keys; a key not known is ignored here, as it always was
            return Caller(ANONYMOUS)
        _label(request, ANONYMOUS if credentials is None else UNKNOWN)
        if not any(ring.has_scope(scope) for scope in scopes):
            raise PermissionDeniedError(_disabled(scopes, guards))
        if credentials is None:
            raise AuthenticationError(f"{guards} needs an 'Authorization: Bearer <key>' header")
        raise AuthenticationError("the key given is not valid: no key of this server matches it")
    _label(request, key.name)
    if not key.scopes.intersection(scopes):
        needed = " or ".join(repr(scope) for scope in scopes)
        raise PermissionDeniedError(
            f"key {key.name!r} lacks scope {needed}, which {guards} needs; it has: {sorted(key.scopes)}",
            details={"key": key.name, "scopes": list(scopes)},
        )
    return Caller.of(key)


def _disabled(scopes: tuple[Scope, ...], guards: str) -> str:
    if scopes == ("admin",):
        return (
            "the admin API is disabled: set RR_ADMIN_KEY (or give a key in RR_KEYS_FILE the admin scope) to enable it"
        )
    needed = " or ".join(repr(scope) for scope in scopes)
    return (
        f"{guards} is disabled: no key has scope {needed}; set RR_ADMIN_KEY, or give a key in RR_KEYS_FILE that scope"
    )


Dependency = Callable[..., Coroutine[Any, Any, Caller]]


def _requirement(*scopes: Scope, guards: str) -> Dependency:
    """A dependency admitting a key with any of ``scopes``; ``guards`` says what it guards, for messages."""

    async def require(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Caller:
        return authenticate(request, credentials, scopes, guards)

    require.__name__ = require.__qualname__ = "require_" + "_or_".join(s.replace(":", "_") for s in scopes)
    require.__doc__ = f"A key with scope {' or '.join(scopes)} (or none, where that scope is open)."
    return require


require_admin = _requirement("admin", guards="the admin API")
require_search = _requirement("search", guards="search")
require_embed = _requirement("embed", guards="embeddings")
require_documents_read = _requirement("documents:read", guards="reading documents")
require_documents_write = _requirement("documents:write", guards="writing documents")
#: Expert listings: what a search client and a document reader both need to see.
require_listing = _requirement("search", "documents:read", guards="expert listings")

AdminCaller = Annotated[Caller, Depends(require_admin)]
SearchCaller = Annotated[Caller, Depends(require_search)]
EmbedCaller = Annotated[Caller, Depends(require_embed)]
DocumentsReadCaller = Annotated[Caller, Depends(require_documents_read)]
DocumentsWriteCaller = Annotated[Caller, Depends(require_documents_write)]
ListingCaller = Annotated[Caller, Depends(require_listing)]
