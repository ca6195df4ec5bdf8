"""The log filter that keeps API keys out of every log line (the real server's log is checked in
tests/reliability/test_auth_secrets.py)."""

from __future__ import annotations

import io
import logging

import pytest
from uvicorn.logging import AccessFormatter

from app.api.log_redaction import REDACTED, RedactSecrets, redact, uvicorn_log_config

KEY = "admin-key-0123456789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("GET /search?api_key=abc&k=5 HTTP/1.1", "GET /search?api_key=[REDACTED]&k=5 HTTP/1.1"),
        (
            "/x?KEY=a&Access_Token=b&apikey=c&password=d",
            "/x?KEY=[REDACTED]&Access_Token=[REDACTED]&apikey=[REDACTED]&password=[REDACTED]",
        ),
        ("Authorization: Bearer abc.def", "Authorization: [REDACTED]"),
        ("sent 'Bearer   abc' twice", "sent 'Bearer   [REDACTED]' twice"),
        (f"GET /experts/{KEY} HTTP/1.1", "GET /experts/[REDACTED] HTTP/1.1"),
        (f"{KEY}{KEY}", f"{REDACTED}{REDACTED}"),
        ("monkey=1&keystone=2", "monkey=1&keystone=2"),  # only whole parameter names
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text, secrets=[KEY]) == expected


def test_messages_for_clients_keep_the_header_they_name() -> None:
    message = f"needs an 'Authorization: Bearer <key>' header; got {KEY}"
    assert (
        redact(message, secrets=[KEY], credentials=False)
        == "needs an 'Authorization: Bearer <key>' header; got [REDACTED]"
    )
    assert redact("a b", secrets=["a"], credentials=False) == "a b"  # too short to search for verbatim


def _handler(formatter: logging.Formatter) -> tuple[logging.Handler, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(RedactSecrets([KEY]))
    return handler, stream


def test_the_filter_keeps_uvicorns_access_record_readable() -> None:
    handler, stream = _handler(
        AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)
    )
    logger = logging.getLogger("tests.redaction.access")
    logger.addHandler(handler)
    try:
        logger.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/healthz?key={KEY}", "1.1", 200)
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == '127.0.0.1:5 - "GET /healthz?key=[REDACTED] HTTP/1.1" 200 OK\n'


def test_the_filter_redacts_messages_arguments_and_tracebacks() -> None:
    handler, stream = _handler(logging.Formatter("%(message)s"))
    logger = logging.getLogger("tests.redaction.app")
    logger.addHandler(handler)
    try:
        logger.warning("header %s", f"Bearer {KEY}")
        logger.warning("mapping %(k)s", {"k": KEY})
        try:
            raise ValueError(f"bad key {KEY}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert KEY not in stream.getvalue()
    assert "header Bearer [REDACTED]" in stream.getvalue() and "ValueError: bad key [REDACTED]" in stream.getvalue()


def test_uvicorns_config_gets_the_filter_on_every_handler() -> None:
    config = uvicorn_log_config([KEY])
    assert all(handler["filters"] == ["redact_secrets"] for handler in config["handlers"].values())
    assert config["filters"]["redact_secrets"]["secrets"] == [KEY]
