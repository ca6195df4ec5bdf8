"""The console's files and ``/metrics/summary``, in process (the browser test is test_console_browser.py)."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from app.api.routes.console import ASSETS
from app.api.routes.console import CONSOLE_DIR as CONSOLE


def test_console_files_are_served_with_a_same_origin_policy(client: TestClient) -> None:
    redirect = client.get("/console", follow_redirects=False)
    assert redirect.status_code == 308 and redirect.headers["location"] == "console/"
    files = {"/console/": "text/html", "/console/console.js": "text/javascript", "/console/console.css": "text/css"}
    for path, media in files.items():
        response = client.get(path)
        assert response.status_code == 200 and response.headers["content-type"].startswith(media), path
        policy = response.headers["content-security-policy"]
        assert policy.startswith("default-src 'self'") and "frame-ancestors 'none'" in policy, path
        assert response.headers["x-content-type-options"] == "nosniff"
    page = client.get("/console/").text
    assert '<script src="console.js" defer></script>' in page and '<link rel="stylesheet" href="console.css">' in page
    missing = client.get("/console/registry.json")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
    assert client.get("/console/..%2Fmain.py").status_code == 404
    assert "/console/" not in client.get("/openapi.json").json()["paths"]


def test_the_page_has_no_inline_code_and_labels_every_control() -> None:
    page = CONSOLE.joinpath("index.html").read_text()
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None and "<style" not in page and " style=" not in page
    assert re.search(r"\bon[a-z]+=", page) is None  # no inline event handlers: the CSP would block them anyway
    labelled = set(re.findall(r'<label for="([^"]+)"', page))
    controls = set(re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', page))
    assert controls and controls <= labelled, controls - labelled
    assert set(ASSETS) == {path.name for path in CONSOLE.iterdir() if path.is_file()}


def test_the_script_uses_relative_urls_and_keeps_the_key_in_memory() -> None:
    script = CONSOLE.joinpath("console.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    assert re.search(r"https?:|wss?:|['\"`]//", code) is None  # no absolute URL, no scheme-relative one
    assert re.findall(r"fetch\(([^,]+),", code) == ["`../${path}`"]  # the one place that talks to the network
    for forbidden in (
        "localStorage",
        "sessionStorage",
        "document.cookie",
        "console.log",
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ):
        assert forbidden not in code, forbidden


def test_metrics_summary_digests_requests_latency_and_routes(client: TestClient) -> None:
    client.post("/search", json={"queries": ["wing", "parser", "drag"]})
    client.post("/search", json={"query": "wing", "expert": "beta"})
    client.post("/search", json={"query": "wing", "expert": "lawx"})
    summary = client.get("/metrics/summary").json()
    search = next(row for row in summary["routes"] if row["route"] == "/search")
    assert search["method"] == "POST" and search["requests"] == 3 and search["server_errors"] == 0
    assert 0 < search["p50_ms"] <= search["p95_ms"]
    readyz = next(row for row in summary["routes"] if row["route"] == "/readyz")  # 503 while the fixture waited
    assert summary["requests"] == sum(row["requests"] for row in summary["routes"]) >= 4
    assert summary["server_errors"] == readyz["server_errors"] == readyz["requests"] - 1
    routed = {(row["expert"], row["mode"]): row["queries"] for row in summary["routed"]}
    assert (
        routed[("beta", "forced")] == 1 and sum(q for (_, mode), q in routed.items() if mode in {"top1", "fanout"}) == 3
    )
    assert summary["queue_depth"]["search"] == 0 and summary["rejected"] == {}
    assert client.get("/metrics/summary").json()["requests"] == summary["requests"] + 1
