"""Admin routes refuse every credential but the admin key, and no key ever shows in a log or a response.

A real server with both keys set (``RR_ADMIN_KEY``, ``RR_SEARCH_KEY``),
started with ``--log-level debug`` so that anything that would print a
header at any level shows up in its log.
Every admin route (publish by path, publish an archive, unpublish) is called
with no key, a wrong key, the search key, the admin key under another scheme,
the admin key cut short, lengthened, split by a space or repeated, and the
admin key in a cookie or another header: all refused, nothing published.
(Several spaces between ``Bearer`` and the right key are accepted, as RFC 7235
allows.)
Then keys are sent where the API never reads them but a log line would
print them (query strings, paths, an expert's name): the access log shows
those requests with ``[REDACTED]`` in their place (:mod:`app.api.log_redaction`).
Last, the whole server log and every response body are searched for both
keys and for each wrong key sent. (``tests/app/service/test_admin_api.py``
checks the plain no-key/wrong-key/search-key cases in-process.)
"""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.app.service.conftest import ADMIN_KEY, SEARCH_KEY
from tests.app.service.test_admin_api import tar_gz
from tests.reliability.conftest import forked_server

WRONG_KEYS = ["admin-key-for-test", "admin-key-for-testsX", "not-the-key-0123456789"]  # cut short, lengthened, other

#: label -> the Authorization header (None: no header) and its status: 401 without a known key, 403 for a
#: known key without the admin scope
CREDENTIALS: dict[str, tuple[str | None, int]] = {
    "none": (None, 401),
    "empty bearer": ("Bearer", 401),
    "wrong key": (f"Bearer {WRONG_KEYS[2]}", 401),
    "cut short": (f"Bearer {WRONG_KEYS[0]}", 401),
    "lengthened": (f"Bearer {WRONG_KEYS[1]}", 401),
    "search key": (f"Bearer {SEARCH_KEY}", 403),
    "basic scheme": (f"Basic {base64.b64encode(f'admin:{ADMIN_KEY}'.encode()).decode()}", 401),
    "token scheme": (f"Token {ADMIN_KEY}", 401),
    "bare key": (ADMIN_KEY, 401),
    "space inside the key": (f"Bearer {ADMIN_KEY[:5]} {ADMIN_KEY[5:]}", 401),
    "key and more": (f"Bearer {ADMIN_KEY} {ADMIN_KEY}", 401),
}


@pytest.mark.timeout(120)
def test_admin_refuses_all_but_its_key_and_keys_never_leak(
    template_root: Path, tmp_path: Path, tiny_bert_path: Path, figures
) -> None:
    bodies: list[str] = []
    wrong: list[tuple[str, str, int]] = []
    options = {"env": {"RR_SEARCH_KEY": SEARCH_KEY}, "log_level": "debug"}
    with forked_server(template_root, tiny_bert_path, tmp_path, **options) as server:
        archive = tar_gz({"gamma": tmp_path / "experts" / "staging" / "gamma"})
        with httpx.Client(base_url=server.url, timeout=30) as http:
            calls = {
                "add by path": lambda headers: http.post(
                    "/admin/experts", json={"path": "staging/gamma"}, headers=headers
                ),
                "add archive": lambda headers: http.post(
                    "/admin/experts", content=archive, headers={**headers, "Content-Type": "application/gzip"}
                ),
                "remove": lambda headers: http.delete("/admin/experts/beta", headers=headers),
            }
            for route, call in calls.items():
                for label, (authorization, status) in CREDENTIALS.items():
                    response = call({} if authorization is None else {"Authorization": authorization})
                    bodies.append(response.text)
                    if response.status_code != status:
                        wrong.append((route, label, response.status_code))
                # The key anywhere but the Authorization header does not count.
                response = call({"Cookie": f"Authorization=Bearer {ADMIN_KEY}", "X-API-Key": ADMIN_KEY})
                bodies.append(response.text)
                if response.status_code != 401:
                    wrong.append((route, "cookie or X-API-Key", response.status_code))
            assert wrong == [], wrong
            assert http.get("/readyz").json()["experts"] == ["alpha", "beta"]  # nothing was published or removed
            assert http.post("/search", json={"query": "x"}).status_code == 401  # the search key is enforced too
            ok = http.post("/search", json={"query": "x"}, headers={"Authorization": f"Bearer {SEARCH_KEY}"})
            assert ok.status_code == 200
            # Keys where the API never reads one, but the access log would print them: query strings and paths.
            search = {"Authorization": f"Bearer {SEARCH_KEY}"}
            leaky = [
                http.get("/healthz", params={"api_key": ADMIN_KEY}),
                http.post(
                    "/search", params={"key": SEARCH_KEY, "token": WRONG_KEYS[2]}, json={"query": "x"}, headers=search
                ),
                http.get("/readyz", params={"access_token": WRONG_KEYS[0], "k": "5"}),
                http.get(f"/experts/{ADMIN_KEY}", headers=search),  # a valid name: 404 unknown expert
                http.post("/search", json={"query": "x", "expert": SEARCH_KEY}, headers=search),
                http.get(f"/no/such/route/{SEARCH_KEY}"),
            ]
            assert [r.status_code for r in leaky] == [200, 200, 200, 404, 404, 404]
            bodies.extend(response.text for response in leaky)
            bodies.append(http.get("/metrics").text)
            bodies.append(http.get("/metrics/summary").text)
    log = server.log_path.read_text()
    for line in (
        '"GET /healthz?api_key=[REDACTED] HTTP/1.1" 200',
        '"POST /search?key=[REDACTED]&token=[REDACTED] HTTP/1.1" 200',
        '"GET /readyz?access_token=[REDACTED]&k=5 HTTP/1.1" 200',
        '"GET /experts/[REDACTED] HTTP/1.1" 404',
        '"GET /no/such/route/[REDACTED] HTTP/1.1" 404',
    ):
        assert line in log, f"{line!r} is not in the server log"
    assert log.count('"POST /admin/experts') >= 2 * (len(CREDENTIALS) + 1)  # every refused call is in it
    for secret in (ADMIN_KEY, SEARCH_KEY, *WRONG_KEYS):
        assert secret not in log, f"a key is in the server log: {secret!r}"
        assert not [body for body in bodies if secret in body], f"a key is in a response: {secret!r}"
    figures(refused=sum(len(CREDENTIALS) + 1 for _ in range(3)), log_lines=len(log.splitlines()), responses=len(bodies))
