"""``/console/``: the browser console, three static files shipped inside the package (``app/console/``).

Each file has its own route rather than a ``StaticFiles`` mount, so nothing
else under ``app/`` can be fetched and the request metrics label them by route.
Every answer carries a Content-Security-Policy of ``default-src 'self'``: the
page may talk only to this service, and inline script cannot run, so text
from the API can never become code even if the page had a bug.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

#: Beside this module, in the wheel too (pyproject's package-data). ``importlib.resources`` cannot be
#: used: ``app`` is a namespace package, which it cannot read under an editable install.
CONSOLE_DIR = Path(__file__).resolve().parents[1] / "console"

#: The files the console is made of, with their media types; nothing else is served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}

#: Headers of every console file: requests only to this origin, no framing, no referrer, always revalidated.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _read(name: str) -> bytes:
    # Read once per process: the files ship with the package and change only with it.
    return (CONSOLE_DIR / name).read_bytes()


def _asset(name: str) -> Response:
    return Response(_read(name), media_type=ASSETS[name], headers=HEADERS)


@router.get("/console")
async def console_redirect() -> RedirectResponse:
    """The page's relative URLs (``console.js``, ``../search``) need the trailing slash."""
    # A relative Location keeps working behind a proxy that serves the API under a path prefix.
    return RedirectResponse("console/", status_code=308)


@router.get("/console/")
async def console_page() -> Response:
    return _asset("index.html")


@router.get("/console/{name}")
async def console_file(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no console file {name!r}; the console has {sorted(ASSETS)}")  # the API's 404 shape
    return _asset(name)
