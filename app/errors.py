"""The service's errors, and the one place where every error becomes an HTTP response.

Every error body has one shape::

    {"error": {"type": "unknown_expert", "message": "Expert 'lawx' not found. ...", "details": null}}

The tree of the service's own errors (domain errors from ``experts``,
``router`` and ``index`` are translated in :func:`install_error_handlers`)::

    ServiceError                      500 internal
    ├── InvalidRequestError           422 invalid_request
    │   └── ExpertRejectedError       422 invalid_expert      an expert failed validation on add
    ├── PayloadTooLargeError          413 payload_too_large
    ├── UnsupportedMediaTypeError     415 unsupported_media_type
    ├── AuthenticationError           401 unauthenticated     no key, or not a Bearer key
    ├── PermissionDeniedError         403 forbidden           wrong key, admin API disabled
    │   └── PathNotAllowedError       403 path_not_allowed    outside the data root
    ├── ConflictError                 409 conflict            already published, reserved name
    ├── OverloadedError               429 overloaded          queue full (Retry-After)
    └── NotReadyError                 503 not_ready           still loading, shutting down (Retry-After)
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from experts import UnknownExpertError
from router import NoExpertsError

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """Base of the service's errors: an HTTP status, a stable ``type`` and a message for people."""

    status: int = 500
    type: str = "internal"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class InvalidRequestError(ServiceError):
    status, type = 422, "invalid_request"


class ExpertRejectedError(InvalidRequestError):
    type = "invalid_expert"


class PayloadTooLargeError(ServiceError):
    status, type = 413, "payload_too_large"


class UnsupportedMediaTypeError(ServiceError):
    status, type = 415, "unsupported_media_type"


class AuthenticationError(ServiceError):
    status, type = 401, "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class PermissionDeniedError(ServiceError):
    status, type = 403, "forbidden"


class PathNotAllowedError(PermissionDeniedError):
    type = "path_not_allowed"


class ConflictError(ServiceError):
    status, type = 409, "conflict"


class OverloadedError(ServiceError):
    status, type = 429, "overloaded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class NotReadyError(ServiceError):
    status, type = 503, "not_ready"

    def __init__(self, message: str, *, retry_after: int = 1, details: Any = None) -> None:
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after)})


def error_response(
    status: int, type_: str, message: str, *, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The one error body of the API."""
    body = {"error": {"type": type_, "message": message, "details": jsonable_encoder(details)}}
    return JSONResponse(body, status_code=status, headers=headers)


_HTTP_TYPES = {
    400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    413: "payload_too_large", 415: "unsupported_media_type",
}  # fmt: skip


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Only where, what and why: never the input back (it may be large, or a secret pasted by mistake).
    return [
        {
            "loc": list(error.get("loc", ())),
            "msg": str(error.get("msg", "")).removeprefix("Value error, "),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Translate every error that can reach a route into the one JSON shape."""

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc.status, exc.type, exc.message, details=exc.details, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = _validation_details(exc)
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(part) for part in first["loc"][1:] or first["loc"]) or "request"
        return error_response(422, "validation_error", f"{where}: {first['msg']}", details=details)

    @app.exception_handler(UnknownExpertError)
    async def _unknown(request: Request, exc: UnknownExpertError) -> JSONResponse:
        return error_response(404, "unknown_expert", str(exc))

    @app.exception_handler(NoExpertsError)
    async def _no_experts(request: Request, exc: NoExpertsError) -> JSONResponse:
        return error_response(409, "no_experts", str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, _HTTP_TYPES.get(exc.status_code, "http_error"), str(exc.detail), headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal error; the server log has the details")
