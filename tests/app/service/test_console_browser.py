"""The console in a real browser: headless Chromium driven by Selenium against a real ``rr serve``.

The server is the service tests' one (tiny random BERT, experts alpha and
beta, gamma and alien waiting under staging/). Selenium never downloads
anything: the driver's path is given and SE_OFFLINE=true; Chromium runs with
its background networking off (this network refuses the hosts it would try).

Without Chromium, ChromeDriver or Selenium the tests skip and say what is
missing; with RR_REQUIRE_BROWSER=1 (set by .ci/run) they fail instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import httpx
import pytest

from experts import ExpertDir
from tests.app.service.conftest import ADMIN, ADMIN_KEY, SEARCH_KEY, TOPICS, ServerProcess

if TYPE_CHECKING:  # selenium is imported only once the browser is known to be there
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,1400",
)
TIMING_STAGES = ["queue", "base", "route", "expert", "search", "total"]


def require_browser() -> None:
    """Skip (or, under CI, fail) when the browser or its driver is missing."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    reason = f"the console's browser tests need {' and '.join(missing)}; apt-get install chromium chromium-driver"
    if os.environ.get("RR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (RR_REQUIRE_BROWSER=1: missing is a failure)", pytrace=False)
    pytest.skip(reason)


class Console:
    """A browser on the console of one server, and the checks every test repeats."""

    def __init__(self, driver: WebDriver, server: ServerProcess) -> None:
        self.driver, self.server = driver, server
        self.requested: list[str] = []

    def open(self) -> None:
        """Load the page afresh (``/console`` redirects to ``/console/``) and wait for the experts list."""
        self.driver.get(f"{self.server.url}/console")
        self.wait(lambda: len(self.listed()) >= 2, "the experts table to fill")

    def listed(self) -> list[str]:
        """The experts in the page's table."""
        return [row.get_attribute("data-expert") for row in self.rows("#experts-rows tr")]

    def by_id(self, element_id: str) -> WebElement:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.ID, element_id)

    def rows(self, selector: str) -> list[WebElement]:
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def type_into(self, element_id: str, *text: str) -> None:
        field = self.by_id(element_id)
        field.clear()
        field.send_keys(*text)

    def submit(self, form_id: str) -> None:
        """Click the form's submit button, as a person would."""
        self.by_id(form_id).find_element("css selector", "button[type=submit]").click()

    def use_key(self, key: str) -> None:
        """Forget the page's key, then type ``key`` in and use it, as a person would."""
        self.by_id("forget-key").click()
        assert self.by_id("key-state").text == "No key set."
        self.type_into("key", key)
        self.submit("key-form")
        self.wait(lambda: self.by_id("key-state").text == "A key is set for this page.", "the key to be set")
        assert self.by_id("key").get_attribute("value") == ""  # only the script's variable holds it

    def facts(self, element_id: str) -> dict[str, str]:
        terms = [dt.text for dt in self.rows(f"#{element_id} dt")]
        return dict(zip(terms, [dd.text for dd in self.rows(f"#{element_id} dd")]))

    def wait(self, condition: Callable[[], object], what: str, *, timeout: float = 60) -> None:
        """Wait for ``condition``; on timeout fail with what the page's error boxes say."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        # An element the page replaced while it was being read is read again.
        waiting = WebDriverWait(
            self.driver, timeout, poll_frequency=0.05, ignored_exceptions=[StaleElementReferenceException]
        )
        try:
            waiting.until(lambda _: condition())
        except TimeoutException:
            errors = [e.text for e in self.rows(".error") if e.text]
            log = self.server.log()
            raise AssertionError(f"waited {timeout}s for {what}; errors on the page: {errors}\n{log}") from None

    def check_requests(self) -> None:
        """Every request the page made went to the server's origin, and the browser saw no policy violation.

        Requests are attributed by the document that made them: Chromium's own
        start page (chrome://new-tab-page) loads its resources too, in the same log.
        """
        origin = urlsplit(self.server.url)[:2]
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                params = message["params"]
                if urlsplit(params.get("documentURL", ""))[:2] == origin:
                    self.requested.append(params["request"]["url"])
        assert any(url.endswith("/console/console.js") for url in self.requested), self.requested
        foreign = [url for url in self.requested if urlsplit(url)[:2] != origin]
        assert foreign == [], f"requests outside {self.server.url}: {foreign}"
        violations = [e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]]
        assert violations == [], violations


@pytest.fixture(scope="module")
def console(template_root: Path, tiny_bert_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    require_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = tmp_path_factory.mktemp("console")
    root = work / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    server = ServerProcess(root, work / "server.log", base_model=tiny_bert_path, env={"RR_BATCH_WAIT_MS": "2"})
    try:
        server.wait_ready()
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={work / 'chromium-profile'}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers online
            service = Service(str(CHROMEDRIVER), log_output=str(work / "chromedriver.log"))
            driver = webdriver.Chrome(service=service, options=options)
        try:
            yield Console(driver, server)
        finally:
            driver.quit()
    finally:
        assert server.stopped_cleanly(), server.log()
    assert ADMIN_KEY not in server.log()


@pytest.fixture(scope="module")
def home_document(console: Console) -> tuple[str, str]:
    """(query, document id): an alpha document's own text, which the router sends to alpha with a clear margin.

    The experts sit on a tiny *random* BERT, so no query routes by meaning;
    but a document's exact text embeds (alpha's adapter is untrained) to that
    document's own vector. The ones the router sends home are found by asking
    the API; the page must then show that route and that document first.
    """
    topics = TOPICS["alpha"]
    texts = [f"{topics[i % len(topics)]} {i} a study of {topics[i % len(topics)]} number {i}" for i in range(24)]
    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        results = http.post("/search", json={"queries": texts, "k": 1}).json()["results"]
    home = [
        (result["route"]["margin"], text, f"alpha-{i}")
        for i, (text, result) in enumerate(zip(texts, results))
        if result["expert"] == "alpha" and result["hits"][0]["id"] == f"alpha-{i}"
    ]
    assert home, "no alpha document routes to alpha: the service tests' experts have changed"
    _, text, doc_id = max(home)
    return text, doc_id


def test_search_shows_the_route_the_hits_and_the_timings(console: Console, home_document, tmp_path: Path) -> None:
    from PIL import Image
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    query, doc_id = home_document
    console.open()
    modes = [option.get_attribute("value") for option in Select(console.by_id("mode")).options]
    assert modes == ["default", "dense", "lexical", "hybrid"]
    assert [option.text for option in Select(console.by_id("expert")).options][1:] == ["alpha", "beta"]
    console.rows("#search-form summary")[0].click()  # open the routing options
    console.type_into("top-k", "1")  # the top expert only (the service's default may also search a close second)
    console.type_into("k", "5")
    console.type_into("query", query, Keys.ENTER)  # the keyboard submits
    console.wait(lambda: console.facts("route-facts").get("Expert") == "alpha", "the route to show alpha")

    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        body = {"query": query, "k": 5, "route": {"top_k": 1}}
        expected = http.post("/search", json=body).json()["results"][0]
    facts = console.facts("route-facts")
    assert facts["Mode"].startswith("top1") and facts["Reason"] == expected["route"]["reason"]
    assert float(facts["Margin"]) == pytest.approx(expected["route"]["margin"], abs=1e-4)
    hits = console.rows("#hits li")
    assert [hit.get_attribute("data-id") for hit in hits] == [hit["id"] for hit in expected["hits"]]
    assert hits[0].get_attribute("data-id") == doc_id and hits[0].text.startswith("#1 ")
    assert f"id {doc_id} · expert alpha · score 1.0000" in hits[0].text
    marked = {mark.text.lower() for mark in console.rows("#hits li:first-child mark")}
    assert {"study", "number"} <= marked and marked <= set(query.lower().split())

    bars = {row.get_attribute("data-expert"): row for row in console.rows("#router-chart li")}
    assert set(bars) == set(expected["route"]["router_scores"]) == {"alpha", "beta"}
    assert "chosen" in bars["alpha"].get_attribute("class") and bars["alpha"].text.startswith("alpha (chosen)")
    assert "chosen" not in bars["beta"].get_attribute("class")
    for name, score in expected["route"]["router_scores"].items():
        assert float(bars[name].text.split()[-1]) == pytest.approx(score, abs=6e-4)
    timings = console.facts("timings")
    assert list(timings) == [*TIMING_STAGES, "batch"] and all(timings[stage].endswith(" ms") for stage in TIMING_STAGES)

    shot = tmp_path / "console-search.png"
    assert console.driver.save_screenshot(str(shot))
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert image.width >= 600 and (colours is None or len(colours) > 50), "the screenshot is blank"

    def mode() -> str:
        return console.facts("route-facts").get("Mode", "")

    console.type_into("top-k", "2")
    console.type_into("threshold", "1")  # every margin is below 1: fan out
    console.submit("search-form")
    console.wait(lambda: mode().startswith("fanout: fanned out"), "the fan-out")
    assert console.facts("route-facts")["Expert"] == "alpha, beta"
    assert all("chosen" in row.get_attribute("class") for row in console.rows("#router-chart li"))
    console.type_into("top-k", "1")
    console.by_id("threshold").clear()
    console.type_into("min-score", "0.999")  # no expert scores that high: the base encoder answers
    console.submit("search-form")
    console.wait(lambda: mode().startswith("fallback: fell back to the base encoder"), "the fallback")
    assert console.facts("route-facts")["Adapters"] == "not used (base encoder)"
    console.by_id("min-score").clear()

    Select(console.by_id("expert")).select_by_value("beta")  # bypass the router
    console.submit("search-form")
    console.wait(lambda: console.facts("route-facts").get("Mode", "").startswith("forced"), "the forced route")
    assert console.by_id("chart-empty").is_displayed() and console.rows("#router-chart li") == []
    assert all(hit.get_attribute("data-id").startswith("beta-") for hit in console.rows("#hits li"))
    Select(console.by_id("mode")).select_by_value("lexical")  # BM25 only: hits show their BM25 score
    console.submit("search-form")
    console.wait(lambda: "BM25" in console.rows("#hits li")[0].text, "the lexical hits")
    assert "dense" not in console.rows("#hits li")[0].text.split("·")[-1]
    Select(console.by_id("mode")).select_by_value("default")

    console.type_into("k", "0")  # the browser refuses it; nothing is sent
    console.type_into("query", "x", Keys.ENTER)
    assert console.by_id("k").get_attribute("validationMessage")
    console.check_requests()


def test_add_and_remove_an_expert_with_the_admin_key(console: Console) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    console.open()
    assert console.by_id("key-state").text == "No key set."

    def refused(error: str) -> None:
        console.type_into("add-path", "staging/gamma")
        console.submit("add-form")
        console.wait(lambda: console.by_id("admin-error").text.startswith(error), f"the refusal {error!r}")

    refused("401 unauthenticated: the admin API needs an 'Authorization: Bearer <key>' header")
    console.use_key("not-the-admin-key")
    refused("401 unauthenticated: the key given is not valid")

    console.use_key(ADMIN_KEY)
    console.type_into("add-path", "staging/alien")  # built on another base model: refused, in words
    console.submit("add-form")
    console.wait(lambda: console.by_id("admin-error").text.startswith("422 invalid_expert: "), "the alien's refusal")
    console.type_into("add-path", "staging/gamma")
    console.submit("add-form")
    console.wait(lambda: "gamma" in console.listed(), "gamma listed")
    assert console.by_id("admin-status").text == "Published gamma (24 documents, loaded)."
    assert not console.by_id("admin-error").is_displayed()
    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        listed = http.get("/experts/gamma").json()
    gamma = [cell.text for cell in console.rows("#experts-rows tr[data-expert=gamma] td")]
    assert gamma[:8] == [
        "gamma",
        "loaded",
        "24",
        "Flat",
        f"{listed['adapter']['side']}, trained",
        str(listed["version"]),
        "yes",
        "",
    ]
    assert "gamma" in [option.text for option in console.rows("#expert option")]

    console.rows("#experts-rows tr[data-expert=gamma] button[aria-label='Remove expert gamma']")[0].click()
    WebDriverWait(console.driver, 10).until(expected_conditions.alert_is_present())
    console.driver.switch_to.alert.accept()
    console.wait(lambda: console.by_id("admin-status").text == "Removed gamma.", "gamma removed")
    console.wait(lambda: console.listed() == ["alpha", "beta"], "the table without gamma")
    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        assert http.get("/readyz").json()["experts"] == ["alpha", "beta"]

    storage = console.driver.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie, location.href]"
    )
    assert storage[:3] == [0, 0, ""] and ADMIN_KEY not in storage[3]
    assert all(ADMIN_KEY not in entry["message"] for entry in console.driver.get_log("browser"))
    console.open()  # a reload forgets the key
    assert console.by_id("key-state").text == "No key set."
    console.check_requests()


def test_health_shows_readiness_and_the_metrics(console: Console) -> None:
    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        http.post("/search", json={"queries": ["wing lift", "compiler parser"], "k": 2})
    console.open()
    readiness = console.by_id("readiness")
    console.wait(lambda: readiness.get_attribute("data-state") == "ready", "readiness")
    assert readiness.text == "Ready: serving 2 expert(s): alpha, beta."
    console.wait(lambda: console.facts("health-facts").get("Requests"), "the metrics")
    facts = console.facts("health-facts")
    with httpx.Client(base_url=console.server.url, timeout=60) as http:
        summary = http.get("/metrics/summary").json()
    assert 5 < int(facts["Requests"]) <= summary["requests"]
    assert facts["Server errors (5xx)"] == str(summary["server_errors"])  # /readyz's 503s while the server loaded
    p50, p95 = (float(part) for part in facts["Search p50 / p95"].removesuffix(" ms").split(" / "))
    assert 0 < p50 <= p95
    routes = [row.text for row in console.rows("#routes-rows tr")]
    assert any(row.startswith("POST /search ") for row in routes)
    assert any(row.startswith("GET /console/ ") for row in routes)
    assert {row.get_attribute("data-expert") for row in console.rows("#routed-rows tr")} >= {"alpha"}
    console.check_requests()


def test_an_expert_still_building_shows_what_it_is_doing(console: Console) -> None:
    """A ``GET /experts`` row with ``state: building`` (``rr demo`` building beside the service), rendered as is."""
    console.open()
    shown = console.driver.execute_script(
        """
        const row = expertRow({name: "cisi", path: "cisi", state: "building",
                               building: "indexing (first 400 documents)", routable: false});
        return [row.className, Array.from(row.children, (cell) => cell.textContent),
                row.querySelectorAll("button").length];
        """
    )
    assert shown == [
        "building",
        ["cisi", "building", "n/a", "n/a", "n/a", "n/a", "no", "indexing (first 400 documents)", ""],
        0,  # nothing to remove: it is published when complete
    ]


def test_a_serving_expert_in_training_shows_its_step_and_a_failed_training_stops_the_refresh(console: Console) -> None:
    """``rr demo`` trains a serving expert: its row says the step; a failed training is shown, not waited for."""
    console.open()
    shown = console.driver.execute_script(
        """
        const row = expertRow({name: "cisi", path: "cisi", state: "loaded", version: 3, routable: true,
                               adapter: {side: "query", trained: false, rank: 8, alpha: 32},
                               building: "training: step 30/300"});
        return [Array.from(row.children, (cell) => cell.textContent).slice(0, 8),
                stillAtWork("training: step 30/300"), stillAtWork("queued for training"),
                stillAtWork("training failed (the untrained version serves): no train.tsv"), stillAtWork(null)];
        """
    )
    assert shown == [
        ["cisi", "loaded", "n/a", "n/a", "query, untrained", "3", "yes", "training: step 30/300"],
        True,
        True,
        False,
        False,
    ]


def utc(iso: str) -> str:
    """An API timestamp as the page shows it."""
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def test_a_version_row_shows_its_training_and_a_damaged_one_says_why(console: Console) -> None:
    """Rows of ``GET /experts/{name}``'s ``versions`` rendered as is: a trained one, and one whose files are unreadable."""
    console.open()
    shown = console.driver.execute_script(
        """
        const trained = versionRow("cacm", {version: 4, path: "v4/cacm", serving: false, documents: 3204,
            trained: true, published_at: "2026-12-01T09:30:00+00:00", gate: null,
            training: {mode: "in_batch", pairs: 9000, recipe: {steps: 300}, first_loss: 2.5, final_loss: 0.75,
                       documents: 3204, trained_at: "2026-11-30T22:00:05+00:00"}});
        const damaged = versionRow("cacm", {version: 2, path: "cacm-old", serving: false,
            published_at: "2026-11-01T08:00:00+00:00", error: "manifest.json is missing"});
        return [trained, damaged].map((row) => Array.from(row.children, (cell) => cell.textContent));
        """
    )
    assert shown == [
        [
            "4",
            "kept",
            "2026-12-01 09:30:00 UTC",
            "3204",
            "trained",
            "in_batch, 9000 pairs, 300 steps, loss 2.500 → 0.750, 3204 documents, 2026-11-30 22:00:05 UTC",
            "no gate",
            "Roll back",
        ],
        [
            "2",
            "kept",
            "2026-11-01 08:00:00 UTC",
            "n/a",
            "n/a",
            "files unreadable: manifest.json is missing",
            "no gate",
            "Roll back",
        ],
    ]


def test_versions_the_gate_figures_and_a_rollback_with_the_admin_key(
    console: Console, template_root: Path, tiny_bert_path: Path, tmp_path: Path
) -> None:
    """beta replaced through a passing gate keeps its first version: the page lists both, and a rollback
    needs the admin key, asks first, swaps, and says so; a refused one shows the API's message.

    A server of its own, with a search key: a key without the admin scope then lists the experts and
    their versions but its Roll back buttons stay disabled, saying why.
    """
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "experts"
    shutil.copytree(template_root, root, symlinks=True)
    shutil.copytree(root / "beta", root / "v2" / "beta")
    candidate = ExpertDir(root / "v2" / "beta")
    for _ in range(5):  # a higher manifest version, the same files: the gate passes
        candidate.publish(pilots=candidate.read_manifest().pilots)
    v1, v2 = ExpertDir(root / "beta").read_manifest().version, candidate.read_manifest().version
    server = ServerProcess(root, tmp_path / "server.log", base_model=tiny_bert_path, env={"RR_SEARCH_KEY": SEARCH_KEY})
    try:
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=120, headers=ADMIN)
        replaced = http.post("/admin/experts", json={"path": "v2/beta", "replace": True, "gate": "pseudo"})
        assert replaced.status_code == 201, replaced.text
        page = Console(console.driver, server)
        page.driver.get(f"{server.url}/console/")
        page.wait(lambda: page.by_id("experts-error").text.startswith("401 unauthenticated"), "the listing's 401")

        def shown() -> list[tuple[str, str]]:
            return [
                (row.get_attribute("data-version"), row.find_element("css selector", "td:nth-child(2)").text)
                for row in page.rows("#versions-rows tr")
            ]

        def rollback_button(version: int) -> WebElement:
            return page.rows(f"#versions-rows button[data-version='{version}']")[0]

        page.use_key(SEARCH_KEY)  # lists, but may not roll back
        page.wait(lambda: page.listed() == ["alpha", "beta"], "the experts table")
        opener = page.rows("#experts-rows tr[data-expert=beta] button[aria-controls=versions]")[0]
        assert opener.get_attribute("aria-expanded") == "false"
        opener.click()
        page.wait(lambda: shown() == [(str(v2), "serving"), (str(v1), "kept")], "both versions listed")
        assert page.by_id("versions-title").text == "Versions of beta"
        assert page.driver.switch_to.active_element == page.by_id("versions-title")
        assert (
            page.rows("#experts-rows tr[data-expert=beta] button[aria-controls=versions]")[0].get_attribute(
                "aria-expanded"
            )
            == "true"
        )
        page.wait(lambda: "403 forbidden" in page.by_id("rollback-access").text, "the reason it may not")
        assert page.by_id("rollback-access").text.startswith(
            "Rolling back needs a key with the admin scope: 403 forbidden: key 'search' lacks scope 'admin'"
        )
        assert not rollback_button(v1).is_enabled()
        assert rollback_button(v1).get_attribute("aria-describedby") == "rollback-access"
        assert page.rows("#versions-rows tr[data-version] button")[0].get_attribute("data-version") == str(v1)

        detail = http.get("/experts/beta").json()
        serving, kept = ([cell.text for cell in page.rows(f"#versions-rows tr:nth-child({n}) > td")] for n in (1, 2))
        gate = detail["versions"][0]["gate"]
        assert gate["passed"] and gate["set"] == "pseudo"
        assert serving[:5] == [str(v2), "serving", utc(detail["versions"][0]["published_at"]), "24", "trained"]
        assert serving[-1] == "serving now"
        assert kept[:5] == [str(v1), "kept", utc(detail["versions"][1]["published_at"]), "24", "trained"]
        assert kept[5] == "trained elsewhere (no training section)" and kept[6] == "no gate"
        figures = page.facts("versions-rows tr:nth-child(1) td.gate dl")
        assert figures == {
            "Set": f"pseudo ({gate['queries']} queries, {gate['mode']})",
            "Candidate": f"v{v2}: nDCG@10 {gate['candidate']['ndcg_at_10']:.4f}, "
            f"R@100 {gate['candidate']['recall_at_100']:.4f}",
            "Serving": f"v{v1}: nDCG@10 {gate['serving']['ndcg_at_10']:.4f}, "
            f"R@100 {gate['serving']['recall_at_100']:.4f}",
            "Margin": f"{gate['margin']:.4f}",
            "Outcome": "passed",
            "Measured": utc(gate["measured_at"]),
        }

        page.use_key(ADMIN_KEY)
        page.wait(lambda: rollback_button(v1).is_enabled(), "the Roll back button to be enabled")
        assert page.by_id("rollback-access").text.startswith("This key has the admin scope")
        rollback_button(v1).click()
        WebDriverWait(page.driver, 10).until(expected_conditions.alert_is_present())
        assert f'Roll expert "beta" back to version {v1}?' in page.driver.switch_to.alert.text
        page.driver.switch_to.alert.dismiss()  # a change of mind sends nothing
        assert shown() == [(str(v2), "serving"), (str(v1), "kept")] and page.by_id("versions-status").text == ""
        rollback_button(v1).click()
        WebDriverWait(page.driver, 10).until(expected_conditions.alert_is_present())
        page.driver.switch_to.alert.accept()
        page.wait(
            lambda: page.by_id("versions-status").text == f"Rolled back beta: now serving version {v1} (beta).",
            "the rollback's result",
        )
        page.wait(lambda: shown() == [(str(v1), "serving"), (str(v2), "kept")], "the list refreshed")
        detail = http.get("/experts/beta").json()
        assert [(v["version"], v["serving"]) for v in detail["versions"]] == [(v1, True), (v2, False)]
        assert detail["version"] == v1 and detail["path"] == "beta"
        page.wait(lambda: page.rows("#experts-rows tr[data-expert=beta] td")[5].text == str(v1), "the table's version")
        assert page.rows("#versions-rows tr:nth-child(2) td.gate dd")[-2].text == "passed"  # v2 keeps its figures
        page.driver.execute_script("document.getElementById('versions').scrollIntoView()")
        assert page.driver.save_screenshot(str(tmp_path / "console-versions.png"))

        # A document written since the swap is carried to v2 by the next rollback.
        written = http.put("/admin/experts/beta/documents", json={"documents": [{"id": "new-1", "text": "x"}]})
        assert written.status_code == 200, written.text
        rollback_button(v2).click()
        WebDriverWait(page.driver, 10).until(expected_conditions.alert_is_present())
        page.driver.switch_to.alert.accept()
        page.wait(lambda: shown() == [(str(v2), "serving"), (str(v1), "kept")], "the second rollback")
        assert page.by_id("versions-status").text == f"Rolled back beta: now serving version {v2} (v2/beta)."
        assert http.get("/experts/beta/documents/new-1").status_code == 200

        # A kept version that cannot load: the API's refusal, in words; nothing changes.
        shutil.rmtree(root / "beta" / "adapter")
        rollback_button(v1).click()
        WebDriverWait(page.driver, 10).until(expected_conditions.alert_is_present())
        page.driver.switch_to.alert.accept()
        page.wait(lambda: page.by_id("versions-error").text.startswith("422 invalid_expert: "), "the refusal")
        assert f"was not rolled back to version {v1}" in page.by_id("versions-error").text
        assert page.by_id("versions-status").text == ""
        page.wait(lambda: rollback_button(v1).is_enabled(), "the list refreshed")
        assert shown() == [(str(v2), "serving"), (str(v1), "kept")]
        assert http.get("/experts/beta").json()["version"] == v2

        page.by_id("forget-key").click()  # no key: disabled again, saying why
        page.wait(lambda: not rollback_button(v1).is_enabled(), "the button disabled")
        assert page.by_id("rollback-access").text.endswith("no key is set.")
        page.by_id("versions-close").click()
        assert not page.by_id("versions").is_displayed()
        page.check_requests()
        http.close()
    finally:
        assert server.stopped_cleanly(), server.log()
    assert ADMIN_KEY not in server.log()


def test_the_page_reflows_at_400_percent_zoom(console: Console, home_document, tmp_path: Path) -> None:
    """1280 CSS pixels at 400% zoom leave 320: nothing may need sideways scrolling (tables scroll in their box)."""
    from selenium.webdriver.common.keys import Keys

    driver = console.driver
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 320, "height": 900, "deviceScaleFactor": 1, "mobile": False}
    )
    try:
        console.open()
        console.type_into("query", home_document[0], Keys.ENTER)
        console.wait(lambda: console.facts("route-facts").get("Expert", "").startswith("alpha"), "the route")
        widths = driver.execute_script(
            "const page = document.documentElement; return [page.scrollWidth, page.clientWidth, window.innerWidth]"
        )
        assert widths[0] <= widths[1] and widths[2] == 320, widths  # (clientWidth leaves out a scroll bar)
        driver.save_screenshot(str(tmp_path / "console-narrow.png"))
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    console.check_requests()


def test_a_missing_browser_skips_here_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(f"{__name__}.CHROMEDRIVER", tmp_path / "no-chromedriver")
    monkeypatch.delenv("RR_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromedriver"):
        require_browser()
    monkeypatch.setenv("RR_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="RR_REQUIRE_BROWSER=1"):
        require_browser()
