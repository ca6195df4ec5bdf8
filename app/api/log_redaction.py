"""Keeping API keys out of the logs: a filter on every log handler that redacts secrets before a line is written.

The API reads keys only from the ``Authorization`` header, which nothing
logs. But a client may still put a key where a log line shows it: in a query
string (``/search?api_key=...``) or a path, both of which uvicorn's access log
prints verbatim, or in a header echoed into an error message. The filter
rewrites every record on its way out, whoever logged it:

- the configured keys themselves (``RR_ADMIN_KEY``, ``RR_SEARCH_KEY``), wherever they appear (the keys of
  ``RR_KEYS_FILE`` are stored as hashes: their secrets are never in the process but in a request's header);
- the value of a query parameter whose name says it holds a secret (``key``, ``api_key``, ``token``, ...);
- what follows ``Bearer``/``Basic`` or an ``Authorization:`` header name.

It sits on the *handlers* (not the loggers), because records that propagate
from a child logger skip the filters of the loggers they pass through.

>>> redact("GET /search?api_key=s3cret&k=5 HTTP/1.1", secrets=())
'GET /search?api_key=[REDACTED]&k=5 HTTP/1.1'
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "[REDACTED]"

#: Query or form parameters whose value is a credential (case-insensitive), e.g. ``?api_key=``, ``&access_token=``.
_PARAMETER = re.compile(
    r"(?i)(\b(?:api[_-]?key|apikey|key|access[_-]?token|token|secret|password|auth|authorization)=)[^&\s\"']*"
)
#: An HTTP credential as written in a header: ``Bearer <key>``, ``Authorization: <anything>``.
_CREDENTIAL = re.compile(r"(?i)(\b(?:bearer|basic)\s+)[^\s\"',;]+|(\bauthorization[\"']?\s*[:=]\s*[\"']?)[^\"'\n]+")
#: Shorter configured keys are not searched for verbatim: redacting every "ab" would garble the log.
MIN_SECRET_LENGTH = 6


def redact(text: str, *, secrets: Iterable[str], credentials: bool = True) -> str:
    """``text`` with every secret replaced by ``[REDACTED]``, and with ``credentials`` every credential parameter
    and header value too (off for messages to clients, which name the header they expect)."""
    for secret in secrets:
        if len(secret) >= MIN_SECRET_LENGTH and secret in text:
            text = text.replace(secret, REDACTED)
    if not credentials:
        return text
    text = _PARAMETER.sub(lambda m: m.group(1) + REDACTED, text)
    return _CREDENTIAL.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


class RedactSecrets(logging.Filter):
    """A handler filter that redacts the message, its arguments and any traceback text of every record.

    Arguments are redacted one by one (not folded into the message) because
    some formatters read them by position: uvicorn's access formatter unpacks
    ``(client, method, path, http_version, status)``.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # Longest first: a key that contains another is replaced whole.
        self.secrets = tuple(sorted({s for s in secrets if s}, key=len, reverse=True))

    def _clean(self, value: Any) -> Any:
        return redact(value, secrets=self.secrets) if isinstance(value, str) else value

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self._clean(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._clean(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._clean(value) for key, value in record.args.items()}
        if record.exc_info and not record.exc_text:
            # Format the traceback now, so that what the handler prints is the redacted text.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        return True


def install_on_root(secrets: Iterable[str]) -> RedactSecrets:
    """Add the filter to every handler of the root logger (where the service's own loggers end up)."""
    secret_filter = RedactSecrets(secrets)
    for handler in logging.getLogger().handlers:
        handler.addFilter(secret_filter)
    return secret_filter


def uvicorn_log_config(secrets: Iterable[str]) -> dict[str, Any]:
    """uvicorn's own logging configuration with the filter on each of its handlers (the access log included)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_secrets": {"()": RedactSecrets, "secrets": list(secrets)}}
    for handler in config["handlers"].values():
        handler["filters"] = [*handler.get("filters", []), "redact_secrets"]
    return config
