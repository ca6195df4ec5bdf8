"""The service's own errors: the tree, each with the HTTP status and ``type`` the API answers it with.

They know nothing of HTTP frameworks, so the engine and the offline jobs
raise them without importing one; :mod:`app.api.error_handlers` turns them
(and the domain errors of ``experts``, ``router`` and ``index``) into responses::

    ServiceError                      500 internal
    ├── UnsupportedInputError         400 unsupported_input   valid for OpenAI, not here: token ids for text
    ├── InvalidRequestError           422 invalid_request
    │   ├── ExpertRejectedError       422 invalid_expert      an expert failed validation on add
    │   └── KeyFileError              422 invalid_key_file    RR_KEYS_FILE unreadable or malformed (entry named)
    ├── PayloadTooLargeError          413 payload_too_large
    ├── UnsupportedMediaTypeError     415 unsupported_media_type
    ├── AuthenticationError           401 unauthenticated     no key, not a Bearer key, or a key not known
    ├── PermissionDeniedError         403 forbidden           key without the scope or the expert, API disabled
    │   └── PathNotAllowedError       403 path_not_allowed    outside the data root
    ├── UnknownDocumentError          404 unknown_document    no such document id in the expert
    ├── UnknownModelError             404 unknown_model       a reranker name this server does not serve
    ├── UnknownVersionError           404 unknown_version     a rollback to a version not kept (or pruned)
    ├── UnknownJobError               404 unknown_job         no such job id (``/admin/jobs/{id}``)
    ├── UnknownShadowError            404 unknown_shadow      no shadow runs for the expert
    ├── UnknownUploadError            404 unknown_upload      no such uploaded file (``/admin/uploads/{name}``)
    ├── ConflictError                 409 conflict            already published, reserved name, expert busy with a job
    │   ├── DocumentsReadOnlyError    409 documents_read_only another process writes the expert's live log
    │   └── GateRefusedError          409 gate_refused        a replace scored worse than the serving version
    ├── OverloadedError               429 overloaded          queue full (Retry-After)
    ├── FeatureUnavailableError       501 not_implemented     reranking without RR_RERANKER, or on Ray Serve
    ├── ExpertUnavailableError        503 expert_unavailable  published, but its files failed to load
    └── NotReadyError                 503 not_ready           still loading, shutting down (Retry-After)
"""

from __future__ import annotations

import errno
from typing import Any


class ServiceError(Exception):
    """Base of the service's errors: an HTTP status, a stable ``type`` and a message for people."""

    status: int = 500
    type: str = "internal"

    def __init__(self, message: str, *, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        self.headers = headers or {}


class UnsupportedInputError(ServiceError):
    """A request other servers take but this one cannot: it says what to send instead."""

    status, type = 400, "unsupported_input"


class InvalidRequestError(ServiceError):
    status, type = 422, "invalid_request"


class ExpertRejectedError(InvalidRequestError):
    type = "invalid_expert"


class KeyFileError(InvalidRequestError):
    """The API key file cannot be read or is malformed; the message names the entry (and line) and what is wrong."""

    type = "invalid_key_file"


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


class UnknownDocumentError(ServiceError):
    status, type = 404, "unknown_document"


class UnknownModelError(ServiceError):
    status, type = 404, "unknown_model"


class UnknownVersionError(ServiceError):
    status, type = 404, "unknown_version"


class UnknownJobError(ServiceError):
    status, type = 404, "unknown_job"


class UnknownShadowError(ServiceError):
    status, type = 404, "unknown_shadow"


class UnknownUploadError(ServiceError):
    status, type = 404, "unknown_upload"


class ConflictError(ServiceError):
    status, type = 409, "conflict"


class DocumentsReadOnlyError(ConflictError):
    """The expert is served read-only here: another process holds its live log's writer lock, or it cannot be written."""

    type = "documents_read_only"


class GateRefusedError(ConflictError):
    """A replace's candidate scored worse than the serving version by more than the margin: nothing was swapped.

    ``details`` holds both versions' figures, the set and the margin (see :mod:`app.publishing.gate`).
    """

    type = "gate_refused"


class OverloadedError(ServiceError):
    status, type = 429, "overloaded"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class FeatureUnavailableError(ServiceError):
    """A feature this server does not offer as configured; the message says how to get it (not a client mistake)."""

    status, type = 501, "not_implemented"


class ExpertUnavailableError(ServiceError):
    """Published (in the registry) but not loaded: its files are broken; retrying will not help until fixed."""

    status, type = 503, "expert_unavailable"


class NotReadyError(ServiceError):
    status, type = 503, "not_ready"

    def __init__(self, message: str, *, retry_after: int = 1, details: Any = None) -> None:
        super().__init__(message, details=details, headers={"Retry-After": str(retry_after)})


#: What a write gets when the disk (or the process's file-size limit) is full.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError that means "no room to write", not "this input is bad"."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS
