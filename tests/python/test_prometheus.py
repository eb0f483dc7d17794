"""The deploy files against a real Prometheus scraping a real adrank server.

A Prometheus process (Debian's `prometheus` package) runs with deploy/prometheus/prometheus.yml, its
targets pointed at an adrank server in this process and its intervals cut to 1 s, and the recording and
alerting rules of deploy/prometheus/adrank-rules.yml loaded. While ctr traffic flows, every PromQL
expression of the rules and of the Grafana dashboard must be accepted, the panels that ctr traffic feeds
must show data, and the fleet p99 query must give a finite positive latency. promtool checks the config
and the rules, and unit-tests the alerts on synthetic series.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from adrank.client import RankClient
from served import MODELS, REPO, ServerThread, missing

DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "adrank-rules.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "adrank-dashboard.json"

# What Grafana would put in place of the dashboard's variables: every model and version (the "All" value).
GRAFANA_VARIABLES = {
    "model": ".*",
    "version": ".*",
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
# The panels that steady ctr traffic must fill; the others (errors, shedding, rollouts) may rightly be empty.
PANELS_FED_BY_CTR_TRAFFIC = {
    "Request latency p50 / p95 / p99",
    "Queue vs compute latency p50 / p99",
    "Requests/s",
    "Candidates/s",
    "Rank calls/s by code",
    "Batch rows distribution",
    "Mean rows per batch",
    "Queue rows",
    "Memory pool bytes by state",
    "Model state (replicas per version and state)",
}
FLEET_P99 = "histogram_quantile(0.99, sum by (model, le) (rate(adrank_request_latency_seconds_bucket[30s])))"


def require_tool(name: str) -> str:
    """The tool's path; CI installs Debian's prometheus package, so there a missing tool is a failure."""
    path = shutil.which(name)
    if path is not None:
        return path
    missing(f"{name} is not installed (Debian: apt-get install prometheus)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------------
# The expressions in the deploy files


def substitute(expr: str) -> str:
    """The expression as Grafana sends it: $name and ${name} replaced (an unknown variable is an error)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: GRAFANA_VARIABLES[m.group(1) or m.group(2)], expr)


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_JSON.read_text())


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included, rows themselves left out."""
    panels = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel."""
    return [(p["title"], t["expr"]) for p in dashboard_panels(dashboard) for t in p["targets"]]


def variable_queries(dashboard: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """Query variables `label_values(selector, label)`, by name: (selector, label)."""
    queries = {}
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
            assert match, f"variable {var['name']}: {query!r} is not label_values(selector, label)"
            queries[var["name"]] = (match.group(1), match.group(2))
    return queries


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES_YML.read_text())["groups"] for rule in group["rules"]]


def referenced_metrics() -> set[str]:
    """The adrank_* names the dashboard and the rules read (recorded series, `level:name:op`, left out)."""
    exprs = [expr for _, expr in dashboard_expressions(load_dashboard())] + [r["expr"] for r in rules()]
    return set(re.findall(r"(?<![\w:])adrank_\w+", "\n".join(exprs)))


# ---------------------------------------------------------------------------------------------------------
# A Prometheus process


class Prometheus:
    """Prometheus on a free loopback port, its TSDB and log in `workdir`; stop() terminates and waits."""

    def __init__(self, binary: str, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = workdir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"prometheus exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        pytest.fail(f"prometheus not ready after {timeout} s:\n{self.log()}")

    def api(self, path: str, params: dict[str, Any] | None = None, *, post: bool = False) -> dict[str, Any]:
        """The API's JSON reply, errors (HTTP 4xx with status "error") included."""
        query = urllib.parse.urlencode(params or {}, doseq=True)
        if post:
            request = urllib.request.Request(f"{self.url}{path}", data=query.encode())
        else:
            request = urllib.request.Request(f"{self.url}{path}?{query}" if query else f"{self.url}{path}")
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return json.load(reply)
        except urllib.error.HTTPError as error:
            return json.load(error)

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("/api/v1/query", {"query": expr}, post=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()


def scrape_config_for(target: str, rule_file: Path) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with its adrank job pointed at `target`, everything every second."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    config["rule_files"] = [str(rule_file)]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "adrank"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"] = [{"targets": [target]}]
    return config


def rules_every_second(path: Path) -> Path:
    """The deploy rules, every group evaluated each second (a test cannot wait for 15 s intervals)."""
    groups = yaml.safe_load(RULES_YML.read_text())
    for group in groups["groups"]:
        group["interval"] = "1s"
    path.write_text(yaml.safe_dump(groups, sort_keys=False))
    return path


def wait_for(what: str, probe, timeout: float, prometheus: Prometheus, detail=None) -> Any:
    """probe() until it returns something truthy, or fail saying what detail() shows then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.25)
    shown = detail() if detail is not None else None
    pytest.fail(f"{what}: not within {timeout} s; {shown!r}\nprometheus log:\n{prometheus.log()}")


# ---------------------------------------------------------------------------------------------------------
# The files themselves


def test_promtool_accepts_the_config_and_the_rules():
    promtool = require_tool("promtool")
    for command in (["check", "config", str(PROMETHEUS_YML)], ["check", "rules", str(RULES_YML)]):
        done = subprocess.run([promtool, *command], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, f"promtool {' '.join(command)}:\n{done.stdout}{done.stderr}"


def alert_case(
    name: str, series: dict[str, str], quiet: str, fires: str, fired: list[dict[str, str]]
) -> dict[str, Any]:
    """promtool's unit test of one alert: nothing at `quiet` (its `for:` not yet elapsed), `fired` at `fires`."""
    return {
        "name": name,
        "interval": "15s",
        "input_series": [{"series": s, "values": v} for s, v in series.items()],
        "alert_rule_test": [
            {"eval_time": quiet, "alertname": name, "exp_alerts": []},
            {"eval_time": fires, "alertname": name, "exp_alerts": [{"exp_labels": f} for f in fired]},
        ],
    }


CTR = 'model="ctr",version="1"'
ALERT_CASES = [
    # All requests between 5 and 20 ms: p99 ~19.9 ms, above the 10 ms budget, under the 50 ms deadline.
    *(
        alert_case(
            alert,
            {
                f'adrank_request_latency_seconds_bucket{{{CTR},le="0.005"}}': "0x60",
                f'adrank_request_latency_seconds_bucket{{{CTR},le="0.02"}}': "0+600x60",
                f'adrank_request_latency_seconds_bucket{{{CTR},le="+Inf"}}': "0+600x60",
                f'adrank_requests_total{{{CTR},code="OK"}}': "0+600x60",
            },
            "9m",
            "12m",
            fired,
        )
        for alert, fired in (
            ("AdrankLatencyP99AboveBudget", [{"model": "ctr", "version": "1", "severity": "warning"}]),
            ("AdrankLatencyP99NearDeadline", []),
        )
    ),
    # 2 % INTERNAL pages; invalid requests are the callers' and shed requests the shed alert's.
    alert_case(
        "AdrankErrorRatioHigh",
        {
            f'adrank_requests_total{{{CTR},code="OK"}}': "0+980x40",
            f'adrank_requests_total{{{CTR},code="INTERNAL"}}': "0+20x40",
            'adrank_requests_total{model="relevance",version="1",code="OK"}': "0+700x40",
            'adrank_requests_total{model="relevance",version="1",code="INVALID_ARGUMENT"}': "0+200x40",
            'adrank_requests_total{model="relevance",version="1",code="RESOURCE_EXHAUSTED"}': "0+100x40",
        },
        "4m",
        "7m",
        [{"model": "ctr", "version": "1", "severity": "critical"}],
    ),
    # 10 % shed from a full queue alerts; shadow requests dropped at low priority do not.
    alert_case(
        "AdrankShedRatioHigh",
        {
            f'adrank_requests_total{{{CTR},code="OK"}}': "0+900x60",
            f'adrank_requests_total{{{CTR},code="RESOURCE_EXHAUSTED"}}': "0+100x60",
            f'adrank_shed_total{{{CTR},reason="queue_full"}}': "0+100x60",
            'adrank_requests_total{model="ctr",version="2",code="OK"}': "0+500x60",
            'adrank_shed_total{model="ctr",version="2",reason="shadow"}': "0+500x60",
        },
        "9m",
        "12m",
        [{"model": "ctr", "version": "1", "severity": "warning"}],
    ),
    alert_case(
        "AdrankModelVersionFailed",
        {
            'adrank_model_state{instance="a:8000",job="adrank",model="ctr",version="2",state="FAILED"}': "1x10",
            'adrank_model_state{instance="a:8000",job="adrank",model="ctr",version="1",state="FAILED"}': "0x10",
        },
        "30s",
        "2m",
        [
            {
                "instance": "a:8000",
                "job": "adrank",
                "model": "ctr",
                "version": "2",
                "state": "FAILED",
                "severity": "critical",
            }
        ],
    ),
    *(
        alert_case(
            alert,
            {'up{job="adrank",instance="a:8000"}': "0x30", 'up{job="adrank",instance="b:8000"}': "1x30"},
            "1m",
            "6m",
            fired,
        )
        for alert, fired in (
            ("AdrankReplicaDown", [{"job": "adrank", "instance": "a:8000", "severity": "warning"}]),
            ("AdrankReplicasDown", [{"severity": "critical"}]),
        )
    ),
    alert_case(
        "AdrankTargetsMissing",
        {'up{job="other",instance="c:9100"}': "1x30"},
        "4m",
        "6m",
        [{"job": "adrank", "severity": "critical"}],
    ),
]


def test_the_alerts_fire_on_synthetic_series(tmp_path):
    """promtool's rule unit tests: each alert fires where it should (labels; annotations are left out)."""
    promtool = require_tool("promtool")
    groups = yaml.safe_load(RULES_YML.read_text())
    for group in groups["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(groups, sort_keys=False))
    assert {c["name"] for c in ALERT_CASES} == {r["alert"] for r in rules() if "alert" in r}, "an alert lacks a case"
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "15s", "tests": ALERT_CASES}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = subprocess.run(
        [promtool, "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dashboard_is_well_formed():
    dashboard = load_dashboard()
    assert dashboard["schemaVersion"] >= 36 and dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        assert variables[name]["type"] == "query" and variables[name]["multi"] and variables[name]["includeAll"]
    assert set(variable_queries(dashboard)) == {"model", "version"}

    ids = [p["id"] for p in dashboard["panels"]] + [q["id"] for p in dashboard["panels"] for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {sorted(ids)}"
    for panel in dashboard_panels(dashboard):
        title = panel.get("title")
        assert title, f"panel {panel['id']} has no title"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"{title}: no unit"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel["targets"], f"{title}: no targets"
        for target in panel["targets"]:
            assert target["expr"].strip() and target["legendFormat"], f"{title}: a target without expr or legend"
            substitute(target["expr"])  # every variable it uses is one the dashboard has
            if "by (model, version" in target["expr"]:
                assert target["legendFormat"].startswith("{{model}} v{{version}}"), f"{title}: legend"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, f"{title}: {grid}"
    titles = [p["title"] for p in dashboard_panels(dashboard)]
    assert set(titles) >= PANELS_FED_BY_CTR_TRAFFIC and len(titles) == len(set(titles))


# ---------------------------------------------------------------------------------------------------------
# A real server under ctr traffic, scraped


class CtrTraffic:
    """A thread sending ctr requests of 1 to 16 candidates (the golden rows) until stopped."""

    def __init__(self, target: str) -> None:
        golden = json.loads((MODELS / "ctr" / "1" / "meta.json").read_text())["golden"]["inputs"]
        self.dense = np.array(golden["dense"], dtype=np.float32)
        self.sparse = np.array(golden["sparse"], dtype=np.int64)
        self.client = RankClient(target)
        self.sent = 0
        self.errors: list[Exception] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ctr-traffic", daemon=True)

    def start(self) -> CtrTraffic:
        self.client.wait_until_serving(timeout=30)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            n = 1 + self.sent % len(self.dense)
            try:
                self.client.rank(["ctr"], {"dense": self.dense[:n], "sparse": self.sparse[:n]}, timeout=5)
                self.sent += 1
            except Exception as error:
                self.errors.append(error)
            self._stop.wait(0.002)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.client.close()


@dataclass
class Scraped:
    server: ServerThread
    prometheus: Prometheus
    traffic: CtrTraffic


@pytest.fixture(scope="module")
def scraped(tmp_path_factory) -> Iterator[Scraped]:
    """An adrank server under ctr traffic, scraped by a Prometheus that evaluates the deploy rules."""
    binary = require_tool("prometheus")
    workdir = tmp_path_factory.mktemp("prometheus")
    server = traffic = prometheus = None
    try:
        server = ServerThread(frontend="python").start()
        assert server.server is not None
        traffic = CtrTraffic(server.target).start()
        rule_file = rules_every_second(workdir / "adrank-rules.yml")
        config = scrape_config_for(f"127.0.0.1:{server.server.http_port}", rule_file)
        prometheus = Prometheus(binary, workdir, config)
        prometheus.wait_ready()
        yield Scraped(server, prometheus, traffic)
    finally:
        if traffic is not None:
            traffic.stop()
        if prometheus is not None:
            prometheus.stop()
        if server is not None:
            server.stop()


def fleet_p99(prometheus: Prometheus, model: str) -> float | None:
    reply = prometheus.query(FLEET_P99)
    assert reply["status"] == "success", reply
    values = [float(s["value"][1]) for s in reply["data"]["result"] if s["metric"].get("model") == model]
    return values[0] if values else None


def test_prometheus_scrapes_the_server_and_computes_the_fleet_p99(scraped):
    prometheus = scraped.prometheus

    def target_health():
        targets = prometheus.api("/api/v1/targets")["data"]["activeTargets"]
        return [(t["labels"]["job"], t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]

    http_port = scraped.server.server.http_port
    up = wait_for(
        "the adrank target up", lambda: [t for t in target_health() if t[2] == "up"], 15, prometheus, target_health
    )
    assert up == target_health() == [("adrank", f"http://127.0.0.1:{http_port}/metrics", "up", "")]

    p99 = wait_for("a p99 for model ctr", lambda: fleet_p99(prometheus, "ctr"), 20, prometheus)
    assert math.isfinite(p99) and 0 < p99 < 5, p99
    assert scraped.traffic.sent > 0 and not scraped.traffic.errors, scraped.traffic.errors[:3]


def test_every_rule_expression_runs_and_the_rules_evaluate_cleanly(scraped):
    prometheus = scraped.prometheus
    for rule in rules():
        name = rule.get("record") or rule["alert"]
        reply = prometheus.query(rule["expr"])
        assert reply["status"] == "success", f"{name}: {reply.get('error')}"

    # Loaded into Prometheus, each rule is evaluated every second without error ...
    def evaluated_rules():
        groups = prometheus.api("/api/v1/rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        if len(loaded) == len(rules()) and all(r["lastEvaluation"] > "0001-01-01T00:00:00Z" for r in loaded):
            return loaded
        return None

    loaded = wait_for("every rule evaluated once", evaluated_rules, 15, prometheus)
    assert {r["name"]: (r["health"], r.get("lastError", "")) for r in loaded} == {r["name"]: ("ok", "") for r in loaded}

    # ... and records the fleet p99 of ctr.
    def recorded_p99():
        reply = prometheus.query('model_version:adrank_request_latency_seconds:p99_1m{model="ctr"}')
        return [float(s["value"][1]) for s in reply["data"]["result"]]

    (p99,) = wait_for("the recorded ctr p99", recorded_p99, 15, prometheus)
    assert math.isfinite(p99) and 0 < p99 < 5, p99


def test_every_dashboard_expression_runs_and_ctr_traffic_fills_its_panels(scraped):
    prometheus = scraped.prometheus
    dashboard = load_dashboard()
    wait_for("a p99 for model ctr", lambda: fleet_p99(prometheus, "ctr"), 20, prometheus)

    # The variables list ctr and its version from the live series.
    values = {}
    for name, (selector, label) in variable_queries(dashboard).items():
        reply = prometheus.api(f"/api/v1/label/{label}/values", {"match[]": substitute(selector)})
        assert reply["status"] == "success", f"variable {name}: {reply.get('error')}"
        values[name] = reply["data"]
    assert "ctr" in values["model"] and "1" in values["version"], values

    empty = []
    for title, expr in dashboard_expressions(dashboard):
        reply = prometheus.query(substitute(expr))
        assert reply["status"] == "success", f"panel {title!r}: {reply.get('error')}\n{substitute(expr)}"
        if not reply["data"]["result"]:
            empty.append(title)
    assert not set(empty) & PANELS_FED_BY_CTR_TRAFFIC, f"panels without data under ctr traffic: {empty}"


def test_the_deploy_files_read_only_metrics_the_server_declares(scraped):
    url = f"http://127.0.0.1:{scraped.server.server.http_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        exposition = reply.read().decode()
    declared = dict(re.findall(r"^# TYPE (\S+) (\S+)$", exposition, re.MULTILINE))

    def family(name: str) -> str | None:
        """The declared family a sample name belongs to: itself (gauges, counters' _total), or a histogram's."""
        if name in declared:
            return name
        if name.endswith("_total") and declared.get(name.removesuffix("_total")) == "counter":
            return name.removesuffix("_total")  # OpenMetrics names the family without _total
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and declared.get(name.removesuffix(suffix)) == "histogram":
                return name.removesuffix(suffix)
        return None

    undeclared = sorted(name for name in referenced_metrics() if family(name) is None)
    assert not undeclared, f"the dashboard or rules read metrics /metrics does not declare: {undeclared}"
