"""Refuse request bodies over the configured size before anything parses them (413).

A declared ``Content-Length`` over the limit is answered at once, without
reading a byte. A body without one (chunked) is counted as it streams in, and
reading stops with a 413 at the first byte over the limit, so a client cannot
make the server buffer more than the limit whatever it sends.
"""

from __future__ import annotations

import re

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.error_handlers import error_response


class BodyTooLarge(StarletteHTTPException):
    """Raised from ``receive`` when the streamed body passes the limit.

    An ``HTTPException`` on purpose: FastAPI re-raises those from body
    parsing (any other error there would become a 400), and the app's
    handler turns it into the one error shape.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """``max_bytes`` for every request; ``upload_max_bytes`` for the routes in ``upload_routes``; and, for
    paths that match a pattern of ``pattern_limits`` (method, compiled regex, limit), that limit."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        upload_max_bytes: int,
        upload_routes: frozenset[tuple[str, str]],
        pattern_limits: tuple[tuple[str, re.Pattern[str], int], ...] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_max_bytes = upload_max_bytes
        self.upload_routes = upload_routes
        self.pattern_limits = pattern_limits

    def limit_for(self, scope: Scope) -> int:
        method, path = scope.get("method", ""), scope.get("path", "").rstrip("/")
        if (method, path) in self.upload_routes:
            return self.upload_max_bytes
        for wanted, pattern, limit in self.pattern_limits:
            if method == wanted and pattern.fullmatch(path):
                return limit
        return self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(limit, scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, counting_receive, send)


async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = error_response(
        413,
        "payload_too_large",
        f"request body is larger than the limit of {limit} bytes",
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)
