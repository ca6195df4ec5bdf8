"""Talking to a running ``rr serve`` from a command (``--url``): one request function, one error.

Used by ``rr documents --url`` and ``rr add-domain --url``. Plain ``urllib``
(no extra dependency); the admin key goes in an ``Authorization: Bearer``
header, never in the URL. A refusal is raised with the server's own message
(its ``{"error": {"message": ...}}`` body), an unreachable server with what
the network said.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, BinaryIO

__all__ = ["RemoteError", "call_service"]


class RemoteError(OSError):
    """The service refused a request, or could not be reached; the message says which and why.

    ``status`` is the HTTP status of a refusal, None when no answer came.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def call_service(
    base: str,
    method: str,
    path: str,
    *,
    admin_key: str | None,
    body: bytes | BinaryIO | None = None,
    content_type: str = "application/json",
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Send one request to ``base + path`` and return its JSON answer; raise :class:`RemoteError` otherwise.

    ``body`` may be an open file, streamed rather than read into memory (an expert archive can be large).

    >>> call_service("http://127.0.0.1:8000", "GET", "/experts", admin_key=None)  # doctest: +SKIP
    {'experts': [...]}
    """
    request = urllib.request.Request(base.rstrip("/") + path, data=body, method=method)
    request.add_header("Content-Type", content_type)
    if body is not None and not isinstance(body, bytes):
        request.add_header("Content-Length", str(os.fstat(body.fileno()).st_size))
    if admin_key:
        request.add_header("Authorization", f"Bearer {admin_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the user's URL)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except Exception:  # noqa: BLE001 - not our error shape: say what came back
            message = exc.reason
        raise RemoteError(f"{method} {path}: HTTP {exc.code}: {message}", status=exc.code) from None
    except urllib.error.URLError as exc:
        raise RemoteError(f"cannot reach {base}: {exc.reason}") from None
    except (ConnectionError, TimeoutError) as exc:  # reset or timed out after connecting
        raise RemoteError(f"cannot reach {base}: {exc}") from None
