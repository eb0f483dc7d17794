"""The live dashboard (`/dashboard`) in a real headless Chromium, against a real server under ctr traffic.

The page must draw every chart from `/dashboard/data`, name models and versions in its legends, label
its axes with units and clock times, hide what the selectors hide, show a failed fetch on the page and
recover from it, and do all of it without a console error, an uncaught exception or a failed request. Its
summary row holds each model's traffic, error ratio and p99 against its latency budget; its calls-by-code
chart shows refused calls, those to unknown models included; and a second server with a canary shows the
rollout panel: traffic per role and each guardrail's figure against its limit.
A screenshot of the page is saved to $ADRANK_TEST_ARTIFACTS (else the test's temporary folder).

Needs Python Playwright (the test extra) and Debian's Chromium at /usr/bin/chromium, never a browser
downloaded by Playwright: without them the test is skipped, except where CI=true (CI installs both).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from references import latest_version
from rollout_models import ctr_repository, publish_version

import adrank._core as core
from adrank.client import RankClient, RankError
from examples.criteo import read_rows
from served import CRITEO, ServerThread, missing

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's services, which this closed
# network refuses; the rest keep a headless run quiet and reproducible.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LINE_CHARTS = ["latency", "throughput", "candidates", "errors", "queue-compute", "queue-rows"]
CLOCK = re.compile(r"^\d\d:\d\d:\d\d$")
INJECTED = "x-adrank-test-injected"  # marks the replies this test fails on purpose


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("Python Playwright is not installed (pip install playwright==1.65.2: the test extra)")
    if not CHROMIUM.is_file():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    running = ServerThread(frontend="python").start()
    yield running
    running.stop()


class Traffic:
    """ctr requests of real Criteo rows, 1 to 64 candidates each; every 10th one has a deadline too short
    for its 64 rows, so the server sheds it and the errors-and-shed chart has something to show."""

    def __init__(self, target: str) -> None:
        path = CRITEO / "sample_200.csv"
        if not path.is_file():
            pytest.fail(f"{path} is missing: the Criteo rows live in ../shared/data/criteo beside the checkout")
        self.rows = read_rows(path)
        self.target = target
        self.ok = 0
        self.refused = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dashboard-traffic", daemon=True)

    def _run(self) -> None:
        try:
            with RankClient(self.target) as client:
                client.wait_until_serving(timeout=60)
                for i in range(1_000_000):
                    if self._stop.is_set():
                        return
                    self._send(client, i)
                    time.sleep(0.004)
        except BaseException as error:  # reported by the test, not lost in a thread
            self.failure = error

    def _send(self, client: RankClient, i: int) -> None:
        shed = i % 10 == 9
        n = 64 if shed else (1, 3, 8, 20, 40, 64)[i % 6]
        start = (i * 7) % (len(self.rows) - n)
        batch = self.rows.take(slice(start, start + n))
        try:
            client.rank(["ctr"], {"dense": batch.dense, "sparse": batch.sparse}, timeout=0.0003 if shed else 5)
            self.ok += 1
        except RankError:
            if not shed:
                raise
            self.refused += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def traffic(server) -> Iterator[Traffic]:
    with Traffic(server.target) as sending:
        yield sending


@dataclass
class Dashboard:
    """The open page and everything bad it reported: console errors, uncaught errors, failed requests."""

    page: Any
    url: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)

    def watch(self) -> None:
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self.page_errors.append(str(error)))
        self.page.on("requestfailed", lambda request: self.failed_requests.append(f"{request.url}: {request.failure}"))
        self.page.on("response", self._on_response)

    def _on_console(self, message: Any) -> None:
        if message.type != "error":
            return
        # Chromium itself logs the 503s this test injects; only those are expected.
        if "status of 503" in message.text and "/dashboard/data" in message.location.get("url", ""):
            return
        self.console_errors.append(f"{message.text} at {message.location}")

    def _on_response(self, response: Any) -> None:
        if response.status >= 400 and INJECTED not in response.headers:
            self.failed_requests.append(f"{response.url}: HTTP {response.status}")

    def assert_clean(self) -> None:
        assert self.console_errors == []
        assert self.page_errors == []
        assert self.failed_requests == []

    def count(self, selector: str) -> int:
        return self.page.locator(selector).count()

    def texts(self, selector: str) -> list[str]:
        return [text.strip() for text in self.page.locator(selector).all_text_contents()]


CTR_P99_DRAWN = """() => {
  const path = document.querySelector(
    'section.chart[data-chart="latency"][data-model="ctr"] path.series[data-metric="request_p99_ms"]');
  return Boolean(path && path.getAttribute("d")) && document.querySelector("rect.bar") !== null;
}"""


@pytest.fixture(scope="module")
def dashboard(playwright, server, traffic, tmp_path_factory) -> Iterator[Dashboard]:
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.set_default_timeout(15_000)
    opened = Dashboard(page, f"http://127.0.0.1:{server.server.http_port}/dashboard")
    opened.watch()
    page.goto(opened.url)
    page.select_option("#window-minutes", "1")  # the traffic is seconds old: the shortest window shows it best
    # The server samples every 2 s and the page polls every 2 s: the first figures take a few seconds.
    page.wait_for_function(CTR_P99_DRAWN, timeout=20_000)
    yield opened
    folder = Path(os.environ.get("ADRANK_TEST_ARTIFACTS") or tmp_path_factory.mktemp("dashboard"))
    folder.mkdir(parents=True, exist_ok=True)
    screenshot = folder / "dashboard.png"
    page.screenshot(path=str(screenshot), full_page=True)
    print(f"dashboard screenshot: {screenshot}")
    browser.close()


def test_every_chart_draws_the_live_traffic_with_legends_and_axes(dashboard, traffic):
    assert traffic.failure is None and traffic.ok > 0
    version = str(latest_version("ctr"))
    ctr = 'section.chart[data-model="ctr"]'
    for chart in LINE_CHARTS:
        paths = dashboard.page.locator(f'{ctr}[data-chart="{chart}"] path.series[data-version="{version}"]')
        assert paths.count() > 0, chart
        assert all(d for d in (paths.nth(i).get_attribute("d") for i in range(paths.count()))), chart

    bars = dashboard.page.locator(f'{ctr}[data-chart="batch-rows"] rect.bar[data-version="{version}"]')
    assert bars.count() > 0
    assert sum(int(bars.nth(i).get_attribute("data-count")) for i in range(bars.count())) > 0
    assert all(float(bars.nth(i).get_attribute("height")) > 0 for i in range(bars.count()))

    memory = dashboard.page.locator('section.chart[data-chart="memory-pool"] path.series')
    assert sorted(memory.nth(i).get_attribute("data-metric") for i in range(memory.count())) == [
        "in_use_bytes",
        "locked_bytes",
        "total_bytes",
    ]
    assert all(memory.nth(i).get_attribute("d") for i in range(memory.count()))

    # Legends name the model and the version; the latency one lists each quantile.
    legend = dashboard.texts(f'{ctr}[data-chart="latency"] .legend-label')
    assert {label.split()[-1] for label in legend} == {"p50", "p95", "p99"}
    assert all(label.startswith(f"ctr v{version}") for label in legend)
    assert any(f"ctr v{version}" in label for label in dashboard.texts(f'{ctr}[data-chart="batch-rows"] .legend-label'))

    # Axes: clock times along x, numbers along y, the unit as the y axis' title.
    ticks = dashboard.texts(f'{ctr}[data-chart="latency"] .axis[data-axis="x"] .tick-label')
    assert len(ticks) >= 3 and all(CLOCK.match(t) for t in ticks), ticks
    values = dashboard.texts(f'{ctr}[data-chart="latency"] .axis[data-axis="y"] .tick-label')
    assert len(values) >= 3 and all(float(v) >= 0 for v in values), values
    units = {
        chart: dashboard.texts(f'section.chart[data-chart="{chart}"] .axis-title[data-axis="y"]')[0]
        for chart in ["latency", "throughput", "batch-rows", "queue-rows", "memory-pool"]
    }
    assert units["latency"] == "ms" and units["throughput"] == "req/s" and units["queue-rows"] == "rows"
    assert units["batch-rows"] == "batches" and units["memory-pool"] in {"B", "KiB", "MiB", "GiB"}

    # No relevance traffic: its quantiles are null, drawn as a gap and not as zeros.
    assert dashboard.count('section.chart[data-chart="latency"][data-model="relevance"] path.series') == 0
    assert dashboard.texts('section.chart[data-chart="latency"][data-model="relevance"] .empty') == [
        "no traffic in this window"
    ]

    assert dashboard.page.get_attribute("#status", "data-state") == "live"
    assert CLOCK.match(dashboard.page.text_content("#last-update") or "")
    dashboard.assert_clean()


def test_a_model_with_a_context_tower_shows_its_cache_and_the_others_do_not(dashboard):
    # Relevance declares a context tower: its cache holds the warm-up's query from the first sample on.
    relevance = 'section.chart[data-model="relevance"]'
    held = dashboard.page.locator(f'{relevance}[data-chart="context-cache-bytes"] path.series')
    assert held.count() > 0 and all(held.nth(i).get_attribute("d") for i in range(held.count()))
    assert dashboard.count(f'{relevance}[data-chart="context-cache"]') == 1
    unit = dashboard.texts(f'{relevance}[data-chart="context-cache-bytes"] .axis-title[data-axis="y"]')
    assert unit == ["MiB"]
    assert dashboard.count('section.chart[data-model="ctr"][data-chart^="context-cache"]') == 0
    dashboard.assert_clean()


def test_unchecking_a_version_or_a_model_hides_its_series_across_polls(dashboard):
    page, version = dashboard.page, str(latest_version("ctr"))
    series = f'path.series[data-model="ctr"][data-version="{version}"]'
    toggle = f'input.version-toggle[data-model="ctr"][data-version="{version}"]'
    assert page.is_checked(toggle) and dashboard.count(series) > 0

    page.uncheck(toggle)  # the page redraws at once from the data it holds
    assert dashboard.count(series) == 0
    assert dashboard.count(f'.legend-item[data-model="ctr"][data-version="{version}"]') == 0
    wait_for_next_poll(page)  # which must not bring them back
    assert dashboard.count(series) == 0
    page.check(toggle)
    assert dashboard.count(series) > 0

    page.uncheck('input.model-toggle[data-model="ctr"]')
    assert page.locator('section.panel[data-model="ctr"]').is_hidden()
    assert dashboard.count('path.series[data-model="ctr"]') == 0
    assert dashboard.count('section.chart[data-model="relevance"] path.series') > 0  # the other model stays
    page.check('input.model-toggle[data-model="ctr"]')
    assert page.locator('section.panel[data-model="ctr"]').is_visible()
    assert dashboard.count(series) > 0
    dashboard.assert_clean()


def wait_for_next_poll(page: Any) -> None:
    before = page.get_attribute("#last-update", "data-fetched-at")
    page.wait_for_function(
        "(before) => document.getElementById('last-update').dataset.fetchedAt !== before", arg=before
    )


def clock_span(labels: list[str]) -> int:
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) for h, m, s in (label.split(":") for label in labels)]
    return (seconds[-1] - seconds[0]) % 86400


def test_the_window_selector_fetches_and_draws_that_many_minutes(dashboard):
    page = dashboard.page
    ticks = 'section.chart[data-chart="memory-pool"] .axis[data-axis="x"] .tick-label'
    assert clock_span(dashboard.texts(ticks)) <= 60
    with page.expect_request(lambda request: "/dashboard/data?minutes=5" in request.url):
        page.select_option("#window-minutes", "5")
    page.wait_for_function(
        """(selector) => {
             const labels = [...document.querySelectorAll(selector)].map((t) => t.textContent);
             const s = labels.map((l) => l.split(":").reduce((a, p) => a * 60 + Number(p), 0));
             return s.length >= 3 && (s[s.length - 1] - s[0] + 86400) % 86400 >= 180;
           }""",
        arg=ticks,
    )
    with page.expect_request(lambda request: "/dashboard/data?minutes=1" in request.url):
        page.select_option("#window-minutes", "1")
    page.wait_for_function(CTR_P99_DRAWN)
    dashboard.assert_clean()


def test_a_failed_fetch_is_shown_on_the_page_and_the_page_recovers(dashboard):
    page = dashboard.page

    def unavailable(route: Any) -> None:
        route.fulfill(status=503, body="down for the test\n", headers={INJECTED: "1"})

    page.route("**/dashboard/data*", unavailable)
    try:
        page.wait_for_selector('#status[data-state="error"]')
        assert "503" in (page.text_content("#status") or "")
        # The last figures stay on screen while the server cannot be read.
        assert dashboard.count('section.chart[data-chart="latency"][data-model="ctr"] path.series') > 0
    finally:
        page.unroute("**/dashboard/data*", unavailable)
    page.wait_for_selector('#status[data-state="live"]')
    assert page.text_content("#status") == "live"
    dashboard.assert_clean()


def test_a_version_that_no_longer_serves_shows_its_history_and_no_current_figures(dashboard):
    """A version unloaded within the window (a rollback) stays drawn for the time it served, but its legends
    show no figure: the server gives it no `current` figures, and the page must not show its last ones."""
    page, served = dashboard.page, latest_version("ctr")
    gone = served + 1000  # a version the server never had, made to look unloaded

    def with_an_unloaded_version(route: Any) -> None:
        data = route.fetch().json()
        ctr = next(s for s in data["series"] if s["model"] == "ctr" and s["version"] == served)
        points = {name: [*values[:-1], None] for name, values in ctr["points"].items() if name != "t"}
        unloaded = {
            **ctr,
            "version": gone,
            "role": "",
            "state": "UNLOADED",
            "current": None,
            "points": {"t": ctr["points"]["t"], **points},
            "batch_rows": {"bounds": ctr["batch_rows"]["bounds"], "counts": None},
        }
        data["series"].append(unloaded)
        route.fulfill(json=data, headers={INJECTED: "1"})

    page.route("**/dashboard/data*", with_an_unloaded_version)
    label = f'label.version-label[data-model="ctr"][data-version="{gone}"]'
    try:
        page.wait_for_selector(label)
        wait_for_next_poll(page)
        assert page.text_content(f"{label} .version-info") == "UNLOADED"
        ctr = 'section.chart[data-model="ctr"]'
        assert dashboard.count(f'{ctr} path.series[data-version="{gone}"]') > 0  # its history is drawn
        assert dashboard.count(f'{ctr} rect.bar[data-version="{gone}"]') == 0  # no batches of the last minute
        gone_values = dashboard.texts(f'{ctr} .legend-item[data-version="{gone}"] .legend-value')
        assert gone_values and all(value == "" for value in gone_values), gone_values
        served_values = dashboard.texts(
            f'{ctr}[data-chart="throughput"] .legend-item[data-version="{served}"] .legend-value'
        )
        assert served_values and all(value.endswith("req/s") for value in served_values), served_values
    finally:
        page.unroute("**/dashboard/data*", with_an_unloaded_version)
    page.wait_for_selector(label, state="detached")  # gone from the server's reply: gone from the page
    dashboard.assert_clean()


TRAFFIC_SHOWN = """(card) => {
  const figure = document.querySelector(`${card} [data-figure="traffic"] dd`)?.textContent ?? "";
  return /^[0-9.]+ req[/]s$/.test(figure) && Number(figure.split(" ")[0]) > 0;
}"""


def test_the_summary_row_holds_each_models_traffic_errors_and_p99_against_its_budget(dashboard):
    page, version = dashboard.page, str(latest_version("ctr"))
    ctr = f'#summary .summary-card[data-model="ctr"][data-version="{version}"]'
    page.wait_for_function(TRAFFIC_SHOWN, arg=ctr)
    assert page.text_content(f"{ctr} .summary-title") == f"ctr v{version}"
    traffic = page.text_content(f'{ctr} [data-figure="traffic"] dd') or ""
    assert float(traffic.split()[0]) > 0, traffic
    errors = page.text_content(f'{ctr} [data-figure="error-ratio"] dd') or ""
    assert re.fullmatch(r"[0-9.]+ %", errors), errors
    p99 = page.text_content(f'{ctr} [data-figure="p99"] dd') or ""
    figure, budget = re.fullmatch(r"([0-9.]+) ms / ([0-9.]+) ms", p99).groups()  # type: ignore[union-attr]
    assert float(figure) > 0 and float(budget) == 10.0  # config.yaml's latency_budget_ms, by default
    within = page.get_attribute(f'{ctr} [data-figure="p99"]', "data-within-budget")
    assert within == ("true" if float(figure) <= 10.0 else "false")
    # relevance serves but has no traffic: no ratio, no p99, and no verdict on its budget.
    relevance = '#summary .summary-card[data-model="relevance"]'
    assert page.text_content(f'{relevance} [data-figure="error-ratio"] dd') == "no data"
    assert page.get_attribute(f'{relevance} [data-figure="p99"]', "data-within-budget") == "unknown"
    dashboard.assert_clean()


def refused_calls(target: str, count: int) -> None:
    """`count` calls to a model no version serves (NOT_FOUND) and `count` with a NaN ctr refuses."""
    nan = np.zeros((2, 13), np.float32)
    nan[1, 3] = np.nan
    with RankClient(target) as client:
        for _ in range(count):
            for models, dense, code in ((["no_such_model"], nan * 0, "NOT_FOUND"), (["ctr"], nan, "INVALID_ARGUMENT")):
                with pytest.raises(RankError) as refused:
                    client.rank(models, {"dense": dense, "sparse": np.zeros((2, 26), np.int64)}, timeout=5)
                assert refused.value.code.name == code


CALL_LINES_DRAWN = """(metrics) => metrics.every((m) => document.querySelector(
  `section.chart[data-chart="calls-by-code"] path.series[data-metric="${m}"]`)?.getAttribute("d"))"""


def test_the_status_code_chart_shows_refused_calls_and_calls_to_unknown_models(dashboard, server):
    page = dashboard.page
    refused_calls(server.target, 20)
    page.wait_for_function(CALL_LINES_DRAWN, arg=["OK", "NOT_FOUND", "INVALID_ARGUMENT", "unknown_model"])
    chart = 'section.chart[data-chart="calls-by-code"]'
    assert dashboard.texts(f'{chart} .axis-title[data-axis="y"]') == ["calls/s"]
    labels = dashboard.texts(f"{chart} .legend-label")
    assert {"OK", "NOT_FOUND", "INVALID_ARGUMENT", "NOT_FOUND: unknown model"} <= set(labels), labels
    assert page.get_attribute(f'{chart} path.series[data-metric="unknown_model"]', "stroke-dasharray")
    values = dict(zip(labels, dashboard.texts(f"{chart} .legend-value"), strict=True))
    assert all(value.endswith("calls/s") for value in values.values()), values
    # The unknown model is nowhere else on the page: no panel, no summary, no checkbox.
    assert dashboard.count('[data-model="no_such_model"]') == 0
    dashboard.assert_clean()


# Guardrails that judge within seconds of traffic, with limits this healthy canary (ctr republished: the same
# scores, the same speed) stays far inside on a loaded test machine, so it is never rolled back mid-test.
CANARY_ROLLOUT = {
    "stable": 1,
    "canary": {"version": 2, "percent": 50},
    "guardrails": {
        "window_s": 10,
        "interval_s": 0.5,
        "min_requests": 20,
        "max_latency_ratio": 25.0,
        "max_error_rate": 0.5,
    },
}


@pytest.fixture(scope="module")
def canary_server(tmp_path_factory) -> Iterator[ServerThread]:
    repo = ctr_repository(tmp_path_factory.mktemp("canary") / "repo")
    assert publish_version(repo) == 2
    (repo / "ctr" / "rollout.yaml").write_text(yaml.safe_dump(CANARY_ROLLOUT))
    running = ServerThread(repo, frontend="cpp" if core.HAS_RANK_SERVER else "python").start()
    yield running
    running.stop()


class KeyedTraffic(Traffic):
    """ctr requests with a fresh routing key each, so that the canary takes its share."""

    def _send(self, client: RankClient, i: int) -> None:
        batch = self.rows.take(slice(i % 100, i % 100 + 4))
        client.rank(["ctr"], {"dense": batch.dense, "sparse": batch.sparse}, routing_key=f"user-{i}", timeout=5)
        self.ok += 1


GUARDRAILS_JUDGED = """() => document.querySelector(
  'section[data-rollout="ctr"] table.guardrails[data-role="canary"][data-judged="true"]') !== null"""


def test_the_rollout_panel_shows_traffic_per_role_and_each_guardrail_against_its_limit(
    playwright, canary_server, tmp_path_factory
):
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
    try:
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(30_000)
        opened = Dashboard(page, f"http://127.0.0.1:{canary_server.server.http_port}/dashboard")
        opened.watch()
        with KeyedTraffic(canary_server.target) as traffic:
            page.goto(opened.url)
            page.select_option("#window-minutes", "1")
            page.wait_for_function(GUARDRAILS_JUDGED)
        assert traffic.failure is None and traffic.ok > 0
        panel = 'section.panel[data-rollout="ctr"]'
        assert page.text_content(f"{panel} h2") == "Rollout ctr"
        rows = {
            role: opened.texts(f'{panel} table.rollout-traffic tr[data-role="{role}"] td')
            for role in ("stable", "canary")
        }
        assert rows["stable"][:3] == ["stable", "v1", "50 %"] and rows["canary"][:3] == ["canary", "v2", "50 %"]
        for role, cells in rows.items():
            assert cells[3].endswith("req/s") and float(cells[3].split()[0]) > 0, (role, cells)
        guardrails = f'{panel} table.guardrails[data-role="canary"][data-version="2"]'
        limits = dict(
            zip(
                [page.get_attribute(f"{guardrails} tbody tr >> nth={i}", "data-guardrail") for i in range(3)],
                opened.texts(f"{guardrails} td.limit"),
                strict=True,
            )
        )
        assert limits == {"latency": "≤ 25", "error_rate": "≤ 0.5", "psi": "≤ 0.25"}  # max_psi: the default
        figures = dict(zip(limits, opened.texts(f"{guardrails} td.figure"), strict=True))
        assert float(figures["latency"]) > 0, figures  # the candidate's p99 over stable's
        assert float(figures["error_rate"]) == 0 and 0 <= float(figures["psi"]) < 0.25, figures
        for name in limits:
            row = f'{guardrails} tr[data-guardrail="{name}"]'
            assert page.get_attribute(row, "data-breached") == "false"
            assert page.text_content(f"{row} td:last-child") == "within"
        assert "10 s window" in (page.text_content(f"{guardrails} caption") or "")
        opened.assert_clean()
        folder = Path(os.environ.get("ADRANK_TEST_ARTIFACTS") or tmp_path_factory.mktemp("dashboard"))
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / "dashboard-rollout.png"), full_page=True)
    finally:
        browser.close()
