"""The one place where every error becomes an HTTP response (``rr serve`` and the Ray Serve ingress).

Every error body has one shape::

    {"error": {"type": "unknown_expert", "message": "Expert 'lawx' not found. ...", "details": null}}

The service's own errors (:mod:`app.errors`) carry their status and type;
domain errors from ``experts``, ``router`` and ``index`` are translated in
:func:`install_error_handlers`. Translated here too: a JSON route sent another Content-Type is a 415; a body
that is not JSON (a syntax error, not UTF-8, nested too deeply, an integer
of thousands of digits) is a 422 ``validation_error`` that says why, whichever
parser found it; a full disk (``ENOSPC``, ``EDQUOT``, ``EFBIG``) is a 507; a
malformed metadata filter, or one naming a field no document has, is a 422
``invalid_filter`` naming the clause; a bad document in an upsert is a 422
``invalid_document``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.log_redaction import redact
from app.errors import (
    ServiceError,
    is_disk_full,
)
from experts import UnknownExpertError
from index import CorpusError, InvalidFilterError, NoLexicalIndexError
from router import NoExpertsError

logger = logging.getLogger(__name__)


def error_response(
    status: int, type_: str, message: str, *, details: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The one error body of the API."""
    body = {"error": {"type": type_, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_TYPES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


#: Validation errors listed in a 422's details; a list of 100,000 wrong items has 200,000 of them.
MAX_VALIDATION_DETAILS = 20


def _validation_details(exc: RequestValidationError) -> tuple[list[dict[str, Any]], int]:
    """The first :data:`MAX_VALIDATION_DETAILS` errors, and how many there are in all.

    Only where, what and why: never the input back (it may be large, or a secret
    pasted by mistake), and never all of them: the answer to a bad body must
    stay small, whatever the body.
    """
    errors = exc.errors()
    details = [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")).removeprefix("Value error, "),
            "type": error.get("type", ""),
        }
        for error in errors[:MAX_VALIDATION_DETAILS]
    ]
    return details, len(errors)


def _unparsable_body(exc: StarletteHTTPException) -> str | None:
    """Why FastAPI could not parse a JSON body, for the bare 400 it answers (it keeps the cause); else None.

    A syntax error reaches us as a 422 ``json_invalid``; these are the other
    ways ``json.loads`` fails, and they get the same status.
    """
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply to be parsed"
    if isinstance(cause, UnicodeDecodeError):
        return f"the body is not UTF-8 (byte {cause.start}: {cause.reason}); JSON must be sent as UTF-8"
    return f"the body could not be parsed as JSON: {str(cause)[:200]}"


def _scrubbed(request: Request, message: str) -> str:
    """``message`` without the service's API keys: a client that sent one as an expert name or a path gets no echo."""
    service = getattr(request.app.state, "service", None)
    settings = getattr(service, "settings", None)
    keys = [getattr(settings, name, None) for name in ("admin_key", "search_key")]
    return redact(message, secrets=[key.get_secret_value() for key in keys if key is not None], credentials=False)


def install_error_handlers(app: FastAPI) -> None:
    """Translate every error that can reach a route into the one JSON shape."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        message = _scrubbed(request, exc.message)
        details = exc.details if message == exc.message else None  # details may quote what the message quoted
        return error_response(exc.status, exc.type, message, details=details, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if isinstance(exc.body, bytes | bytearray) and exc.body:
            # FastAPI validates the raw bytes when the Content-Type is not JSON; "should be a valid
            # dictionary" would send the client looking in the wrong place.
            sent = request.headers.get("content-type") or "(none)"
            return error_response(
                415,
                "unsupported_media_type",
                f"Content-Type {sent!r} is not accepted here: send the body as JSON with 'Content-Type: application/json'",
            )
        details, total = _validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"][1:] or first["loc"]) or "request"
        more = (
            f" (and {total - 1} more errors; the first {len(details)} are in details)" if total > len(details) else ""
        )
        return error_response(422, "validation_error", f"{where}: {first['msg']}{more}", details=details)

    @app.exception_handler(UnknownExpertError)
    async def _unknown(request: Request, exc: UnknownExpertError) -> JSONResponse:
        return error_response(404, "unknown_expert", _scrubbed(request, str(exc)))

    @app.exception_handler(NoExpertsError)
    async def _no_experts(request: Request, exc: NoExpertsError) -> JSONResponse:
        return error_response(409, "no_experts", str(exc))

    @app.exception_handler(NoLexicalIndexError)
    async def _no_lexical(request: Request, exc: NoLexicalIndexError) -> JSONResponse:
        return error_response(409, "no_lexical_index", str(exc))

    @app.exception_handler(InvalidFilterError)
    async def _invalid_filter(request: Request, exc: InvalidFilterError) -> JSONResponse:
        message = _scrubbed(request, str(exc))
        details = {"clause": exc.path, "reason": exc.reason} if message == str(exc) else None
        return error_response(422, "invalid_filter", message, details=details)

    @app.exception_handler(CorpusError)
    async def _invalid_document(request: Request, exc: CorpusError) -> JSONResponse:
        return error_response(422, "invalid_document", _scrubbed(request, str(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        unparsable = _unparsable_body(exc)
        if unparsable is not None:
            details = [{"loc": ["body"], "msg": unparsable, "type": "json_invalid"}]
            return error_response(422, "validation_error", f"body: {unparsable}", details=details)
        return error_response(
            exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
        )

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> JSONResponse:
        if not is_disk_full(exc):
            return await _internal(request, exc)
        logger.error("out of disk space on %s %s: %s", request.method, request.url.path, exc)
        return error_response(
            507,
            "insufficient_storage",
            f"the server ran out of disk space while writing ({exc.strerror}); nothing was changed: "
            "free some space on the server and retry",
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")
