"""The caller's key name in uvicorn's access log: ``... "POST /search HTTP/1.1" 200 OK key=ci-reader``.

uvicorn writes its access line from inside the ``send`` of the response's
start, with the request's client, method, path and status only. The metrics
middleware (:class:`app.api.metrics.MetricsMiddleware`), which sees every
response start, sets :data:`KEY_NAME` around that ``send``; :class:`KeyNameFilter`
on the access handler copies it onto the record, and the access format prints
it. Only the name is ever logged, never a secret or a hash.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

__all__ = ["KEY_NAME", "RECORD_FIELD", "KeyNameFilter", "with_key_names"]

#: The key name of the response being started in this task (``-`` outside a response).
KEY_NAME: ContextVar[str] = ContextVar("rr_access_key_name", default="-")
#: The record attribute the access format reads.
RECORD_FIELD = "rr_key"


class KeyNameFilter(logging.Filter):
    """Puts :data:`KEY_NAME` on each record as ``rr_key``; lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, RECORD_FIELD, KEY_NAME.get())
        return True


def with_key_names(config: dict[str, Any]) -> dict[str, Any]:
    """uvicorn's logging ``config`` with ``key=<name>`` at the end of every access line (changed in place)."""
    config.setdefault("filters", {})["key_name"] = {"()": KeyNameFilter}
    handler = config["handlers"]["access"]
    handler["filters"] = [*handler.get("filters", []), "key_name"]
    formatter = config["formatters"]["access"]
    formatter["fmt"] = formatter["fmt"] + f" key=%({RECORD_FIELD})s"
    return config
