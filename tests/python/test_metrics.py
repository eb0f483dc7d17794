"""Metrics on a running server: `/metrics` names every figure with the right labels and moves by exactly
what was served (on both front ends), sheds are counted, the dashboard's data follows the traffic, and a
server without metrics serves neither page and counts nothing."""

from __future__ import annotations

import gzip
import itertools
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from rollout_models import ctr_repository

from adrank.client import RankClient, RankError
from adrank.cpu_features import FEATURES, cpu_features
from adrank.histogram import (
    BATCH_ROWS_BOUNDS,
    EXPORTED_LATENCY_INDEX,
    LATENCY_BOUNDS_US,
    cumulative,
    quantile,
)
from adrank.metrics.exporter import rollout_metrics
from adrank.metrics.history import MetricsOptions
from adrank.metrics.sample import Sample, Traffic
from adrank.rollout.guardrails import Verdict
from served import FRONTENDS, ServerThread

RNG = np.random.default_rng(11)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def ctr_candidates(n: int) -> dict[str, np.ndarray]:
    dense = RNG.integers(0, 30, size=(n, 13)).astype(np.float32)
    sparse = RNG.integers(0, 1 << 20, size=(n, 26)).astype(np.int64)
    return {"dense": dense, "sparse": sparse}


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def scrape(port: int) -> Samples:
    """Every sample of /metrics by (name, sorted labels)."""
    status, headers, body = get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def buckets(samples: Samples, name: str, **labels: str) -> list[tuple[float, float]]:
    """A histogram's (le, cumulative count) pairs, ascending."""
    want = set(labels.items())
    found = [
        (float(dict(key)["le"]), v) for (n, key), v in samples.items() if n == f"{name}_bucket" and want <= set(key)
    ]
    return sorted(found)


@pytest.fixture(scope="module", params=FRONTENDS)
def server(request, tmp_path_factory) -> Iterator[ServerThread]:
    repo = ctr_repository(tmp_path_factory.mktemp("repo"))
    # Windows longer than the module runs: each dashboard point covers everything since the start.
    srv = ServerThread(repo, frontend=request.param, metrics=MetricsOptions(window_s=3600)).start()
    yield srv
    srv.stop()


def test_metrics_move_by_exactly_what_was_served(server):
    port = server.server.http_port
    ctr = {"model": "ctr", "version": "1"}
    before = scrape(port)
    sizes = [1, 7, 64, 300, 2048, 5, 512]
    with RankClient(server.target) as client:
        for n in sizes:
            assert len(client.rank(["ctr"], ctr_candidates(n), timeout=10)["ctr"].scores) == n
        with pytest.raises(RankError) as unknown:
            client.rank(["no_such_model"], ctr_candidates(2), timeout=10)
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        bad = ctr_candidates(3)
        bad["dense"][1, 4] = np.nan
        with pytest.raises(RankError) as invalid:
            client.rank(["ctr"], bad, timeout=10)
        assert invalid.value.code == grpc.StatusCode.INVALID_ARGUMENT
    after = scrape(port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("adrank_requests_total", code="OK", **ctr) == len(sizes)
    assert moved("adrank_candidates_total", **ctr) == sum(sizes)
    for phase in ("request", "queue", "compute"):
        name = f"adrank_{phase}_latency_seconds"
        assert moved(f"{name}_count", **ctr) == len(sizes)
        counts = [c for _, c in buckets(after, name, **ctr)]
        assert counts == sorted(counts), f"{name}: cumulative buckets must not decrease"
        assert buckets(after, name, **ctr)[-1] == (float("inf"), value(after, f"{name}_count", **ctr))
        assert moved(f"{name}_sum", **ctr) > 0
    # request latency covers queue and compute, request by request, so its sum does too
    assert moved("adrank_request_latency_seconds_sum", **ctr) >= moved("adrank_compute_latency_seconds_sum", **ctr)
    # 0.2-50 ms is read at 20 buckets per decade
    les = [le for le, _ in buckets(after, "adrank_request_latency_seconds", **ctr)]
    fine = [le for le in les if 0.0002 <= le <= 0.05]
    assert max(b / a for a, b in itertools.pairwise(fine)) < 1.13
    # every request rode in at least one batch; 2048 rows split into batches of at most 512
    batches = moved("adrank_batches_total", **ctr)
    assert moved("adrank_batch_rows_count", **ctr) == batches >= len(sizes) + 3
    assert moved("adrank_batch_rows_sum", **ctr) == sum(sizes)
    assert value(after, "adrank_batch_rows_bucket", le="512.0", **ctr) == value(after, "adrank_batch_rows_count", **ctr)
    # whole calls, including the two refused before any model ran
    assert moved("adrank_rank_calls_total", code="OK") == len(sizes)
    assert moved("adrank_rank_calls_total", code="NOT_FOUND") == 1
    assert moved("adrank_rank_calls_total", code="INVALID_ARGUMENT") == 1
    # the NaN was refused by ctr's own checks: counted at the version too; the unknown model is not a version
    assert moved("adrank_requests_total", code="INVALID_ARGUMENT", **ctr) == 1
    assert value(after, "adrank_queue_rows", **ctr) == 0
    assert value(after, "adrank_model_state", state="AVAILABLE", **ctr) == 1
    assert value(after, "adrank_model_state", state="FAILED", **ctr) == 0
    assert value(after, "adrank_rollout_traffic_percent", role="stable", **ctr) == 100
    total = value(after, "adrank_memory_pool_bytes", state="total")
    assert total > 0
    assert 0 <= value(after, "adrank_memory_pool_bytes", state="locked") <= total
    assert value(after, "adrank_memory_pool_leases_total") > value(before, "adrank_memory_pool_leases_total")
    for reason in ("queue_full", "deadline_expired", "deadline_unreachable", "shadow"):
        assert ("adrank_shed_total", tuple(sorted({**ctr, "reason": reason}.items()))) in after
    assert value(after, "process_resident_memory_bytes") > 0


def post(port: int, path: str, document: dict) -> int:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(document).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def test_requests_to_unknown_models_are_counted_by_code_and_drawn_by_the_dashboard(server):
    """Neither a version's counts nor the per-version series can show a call to a model no version serves:
    the core's registry counts them (Rank on this front end, and KServe inference over HTTP), /metrics exports
    them by code, and the dashboard's calls-by-code data shows them beside the NOT_FOUND calls."""
    port = server.server.http_port
    registry = server.server.models.registry
    history = server.server.history
    history.take()
    before, unknown_before = scrape(port), registry.unknown_model_requests
    with RankClient(server.target) as client:
        for _ in range(3):
            with pytest.raises(RankError) as refused:
                client.rank(["no_such_model"], ctr_candidates(2), timeout=10)
            assert refused.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(RankError) as pinned:  # a version ctr does not have: ctr is known
            client.rank([("ctr", 99)], ctr_candidates(2), timeout=10)
        assert pinned.value.code == grpc.StatusCode.NOT_FOUND
    document = {"inputs": [{"name": "dense", "datatype": "FP32", "shape": [1, 13], "data": [0.0] * 13}]}
    assert post(port, "/v2/models/no_such_model/infer", document) == 404
    assert get(port, "/v2/models/no_such_model")[0] == 404  # its metadata: not a request, not counted
    history.take()
    after = scrape(port)
    assert registry.unknown_model_requests - unknown_before == 4
    moved = value(after, "adrank_unknown_model_requests_total", code="NOT_FOUND") - value(
        before, "adrank_unknown_model_requests_total", code="NOT_FOUND"
    )
    assert moved == 4
    assert (
        value(after, "adrank_rank_calls_total", code="NOT_FOUND")
        - value(before, "adrank_rank_calls_total", code="NOT_FOUND")
        == 5
    )  # the four unknown-model calls and the unknown version
    status, _, body = get(port, "/dashboard/data?minutes=1")
    assert status == 200
    calls = json.loads(body)["calls"]
    assert len(calls["t"]) == len(calls["unknown_model"]) == len(calls["codes"]["NOT_FOUND"]) >= 2
    assert calls["current"]["unknown_model"] > 0
    assert calls["current"]["NOT_FOUND"] >= calls["current"]["unknown_model"]


def test_metrics_carry_the_cpu_and_its_integer_kernel_features(server):
    samples = scrape(server.server.http_port)
    (info,) = [(dict(labels), v) for (name, labels), v in samples.items() if name == "adrank_cpu_info"]
    labels, one = info
    assert one == 1 and labels == cpu_features().labels()
    assert set(labels) == {"vendor", "model_name", *FEATURES}
    assert {labels[f] for f in FEATURES} <= {"true", "false", "unknown"}
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), None)
    if flags is not None:  # x86 Linux: the labels are what the kernel reports, whatever this CPU is
        assert all(labels[f] == str(f in flags).lower() for f in FEATURES), (labels, flags)


def test_metrics_are_gzipped_and_speak_openmetrics_when_asked(server):
    port = server.server.http_port
    status, headers, body = get(port, "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers.get("Content-Encoding") == "gzip"
    assert b"adrank_requests_total" in gzip.decompress(body)
    status, headers, body = get(port, "/metrics", {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


def test_dashboard_data_follows_the_traffic(server):
    port = server.server.http_port
    history = server.server.history
    history.take()
    with RankClient(server.target) as client:
        for _ in range(40):
            client.rank(["ctr"], ctr_candidates(100), timeout=10)
    history.take()
    status, headers, body = get(port, "/dashboard/data?minutes=1")
    assert status == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    (ctr,) = [s for s in data["series"] if s["model"] == "ctr"]
    assert (ctr["version"], ctr["role"], ctr["state"]) == (1, "stable", "AVAILABLE")
    points = ctr["points"]
    assert len(points["t"]) == len(points["request_p99_ms"]) == len(points["requests_per_s"]) >= 2
    assert points["requests_per_s"][-1] > 0
    # the window reaches back to the server's start: the rates' ratio is the totals'
    totals = scrape(port)
    ctr_labels = {"model": "ctr", "version": "1"}
    requests = sum(
        v
        for (name, labels), v in totals.items()
        if name == "adrank_requests_total" and set(ctr_labels.items()) <= set(labels)
    )
    per_request = value(totals, "adrank_candidates_total", **ctr_labels) / requests
    assert points["candidates_per_s"][-1] == pytest.approx(per_request * points["requests_per_s"][-1], rel=0.01)
    p50, p95, p99 = (points[f"request_p{q}_ms"][-1] for q in (50, 95, 99))
    assert 0 < p50 <= p95 <= p99
    assert points["compute_p99_ms"][-1] <= p99 * 1.13  # within one bucket: request time includes compute
    assert sum(ctr["batch_rows"]["counts"]) > 0
    assert len(ctr["batch_rows"]["counts"]) == len(ctr["batch_rows"]["bounds"]) + 1
    assert data["memory_pool"]["total_bytes"][-1] > 0
    status, _, body = get(port, "/dashboard/data?minutes=soon")
    assert status == 400 and b"minutes" in body
    status, _, body = get(port, "/dashboard/data?minutes=99")
    assert status == 400 and b"minutes" in body


def test_the_dashboard_page_and_its_files_are_served_and_nothing_else(server):
    port = server.server.http_port
    status, headers, body = get(port, "/dashboard")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"/dashboard/dashboard.js" in body
    status, headers, _ = get(port, "/dashboard/dashboard.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    for path in ("/dashboard/../server.py", "/dashboard/%2e%2e/server.py", "/dashboard/nope.js", "/metricz"):
        assert get(port, path)[0] == 404, path


def test_a_full_queue_is_counted_as_shed(tmp_path: Path):
    repo = ctr_repository(tmp_path / "repo")
    config = yaml.safe_load((repo / "ctr" / "config.yaml").read_text())
    config["batching"]["max_queue_rows"] = 2048  # one largest request fits; a second waits its turn or is refused
    (repo / "ctr" / "config.yaml").write_text(yaml.safe_dump(config))
    server = ServerThread(repo, frontend="python", workers=1).start()
    try:
        refused: list[int] = []
        barrier = threading.Barrier(16)

        def one() -> None:
            with RankClient(server.target, retry=None) as client:  # each refusal once: no retry elsewhere
                barrier.wait(timeout=30)
                try:
                    client.rank(["ctr"], ctr_candidates(2048), timeout=30)
                except RankError as error:
                    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
                    refused.append(1)

        threads = [threading.Thread(target=one) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        after = scrape(server.server.http_port)
        ctr = {"model": "ctr", "version": "1"}
        assert refused, "16 simultaneous requests of 2048 rows into a 2048-row queue: some must be refused"
        assert value(after, "adrank_shed_total", reason="queue_full", **ctr) == len(refused)
        assert value(after, "adrank_requests_total", code="RESOURCE_EXHAUSTED", **ctr) == len(refused)
        assert value(after, "adrank_requests_total", code="OK", **ctr) == 16 - len(refused)
    finally:
        server.stop()


def test_a_server_without_metrics_serves_no_metrics_and_counts_nothing(tmp_path: Path):
    server = ServerThread(ctr_repository(tmp_path / "repo"), metrics=MetricsOptions(enabled=False)).start()
    try:
        with RankClient(server.target) as client:
            client.rank(["ctr"], ctr_candidates(10), timeout=10)
        port = server.server.http_port
        for path in ("/metrics", "/dashboard", "/dashboard/data"):
            assert get(port, path)[0] == 404
        assert get(port, "/healthz")[0] == 200
        (servable,) = server.server.models.servables()
        assert not servable.stats.enabled
        assert servable.stats.snapshot()["ok"] == 0
    finally:
        server.stop()


def test_quantiles_match_numpy_within_a_bucket_and_exported_buckets_are_exact():
    rng = np.random.default_rng(3)
    latencies_us = rng.lognormal(mean=np.log(2000), sigma=0.6, size=20000)
    index = np.searchsorted(LATENCY_BOUNDS_US, latencies_us, side="left")
    counts = np.bincount(index, minlength=len(LATENCY_BOUNDS_US) + 1)
    for q in (0.5, 0.95, 0.99):
        assert quantile(counts, q, LATENCY_BOUNDS_US) == pytest.approx(np.quantile(latencies_us, q), rel=0.06)
    assert np.isnan(quantile(np.zeros_like(counts), 0.99, LATENCY_BOUNDS_US))
    # many windows at once give what one at a time gives
    windows = np.stack([counts, counts // 2, np.zeros_like(counts)])
    together = quantile(windows, 0.99, LATENCY_BOUNDS_US)
    assert together[0] == quantile(counts, 0.99, LATENCY_BOUNDS_US) and np.isnan(together[2])
    exported = cumulative(counts, EXPORTED_LATENCY_INDEX)
    bounds = LATENCY_BOUNDS_US[EXPORTED_LATENCY_INDEX]
    assert list(exported[:-1]) == [int(np.sum(latencies_us <= b)) for b in bounds]
    assert exported[-1] == len(latencies_us)
    assert list(BATCH_ROWS_BOUNDS[:6]) == [1, 2, 3, 4, 6, 8] and BATCH_ROWS_BOUNDS[-1] == 4096


def test_rollout_figures_are_exported_for_the_routed_candidates():
    figures = {"p99_ratio": 1.25, "error_rate": {"stable": 0.01, "canary": 0.03}, "psi": 0.04}
    sample = Sample(
        time=0.0,
        versions=[],
        states=[],
        traffic=[Traffic("ctr", 1, "stable", 90.0), Traffic("ctr", 2, "canary", 10.0)],
        verdicts=[("ctr", 2, "canary", Verdict(False, [], figures))],
        memory_pool={},
        calls=[],
    )
    exported = {
        (m.name, s.labels["version"], s.labels["role"]): s.value for m in rollout_metrics(sample) for s in m.samples
    }
    assert exported == {
        ("adrank_rollout_traffic_percent", "1", "stable"): 90.0,
        ("adrank_rollout_traffic_percent", "2", "canary"): 10.0,
        ("adrank_rollout_p99_ratio", "2", "canary"): 1.25,
        ("adrank_rollout_error_rate_excess", "2", "canary"): pytest.approx(0.02),
        ("adrank_rollout_psi", "2", "canary"): 0.04,
    }
