"""The dashboard's history (metrics/history.py) fed samples by hand: rates survive a counter reset (a version
unloaded and loaded again counts from 0) and are never negative, and a version that no longer serves has no
current figures, only its history. The panels beside the series: the summary row (each model's stable
version against its latency budget), the calls by status code (requests to unknown models included) and the
rollout panel (traffic per role, each guardrail's figure against its limit)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from adrank.histogram import BATCH_ROWS_BOUNDS, LATENCY_BOUNDS_US
from adrank.metrics.history import FIELDS, RATES, MetricsHistory, MetricsOptions
from adrank.metrics.rollout_panel import guardrail_checks
from adrank.metrics.sample import Sample, Traffic, VersionSample
from adrank.rollout.guardrails import Verdict
from adrank.rollout.policy import GuardrailPolicy
from adrank.status import StatusCode

MEMORY = {"total_bytes": 1 << 20, "in_use_bytes": 0, "locked_bytes": 0, "allocator": "malloc"}
FAST = int(np.searchsorted(LATENCY_BOUNDS_US, 2_000))  # the bucket of 2 ms
SLOW = int(np.searchsorted(LATENCY_BOUNDS_US, 20_000))  # the bucket of 20 ms


def version(
    model: str,
    number: int,
    ok: int,
    *,
    bucket: int = FAST,
    role: str = "stable",
    failed: int = 0,
    budget_ms: float = 10.0,
) -> VersionSample:
    """A version's cumulative counts: `ok` requests of 10 candidates each, every one in latency `bucket`
    and in a batch of its own (one row), and `failed` requests answered UNKNOWN."""
    latency = np.zeros(len(LATENCY_BOUNDS_US) + 1, dtype=np.int64)
    latency[bucket] = ok
    batch_rows = np.zeros(len(BATCH_ROWS_BOUNDS) + 1, dtype=np.int64)
    batch_rows[0] = ok
    stats = {
        "codes": [ok, 0, failed],
        "shadow_shed": 0,
        "failed": failed,
        "dropped": 0,
        "candidates": 10 * ok,
        "request_counts": latency,
        "queue_counts": latency,
        "compute_counts": latency,
    }
    queue = {"batch_rows_counts": batch_rows, "queued_rows": 0}
    return VersionSample(model, number, role, stats, queue, [], budget_ms)


@dataclass
class Samples:
    """A MetricsSource that hands out the samples given to it, in order."""

    queued: list[Sample] = field(default_factory=list)

    def add(self, time: float, *versions: VersionSample, **more: Any) -> None:
        states = [(v.model, v.version, "AVAILABLE") for v in versions]
        sample = Sample(time, list(versions), states, traffic=[], verdicts=[], memory_pool=MEMORY, calls=[])
        self.queued.append(replace(sample, **more))

    def sample(self) -> Sample:
        return self.queued.pop(0)


def dashboard_of(samples: Samples, window_s: float = 4.0) -> dict[str, Any]:
    """Takes every sample, then reads `/dashboard/data`."""
    history = MetricsHistory(samples, MetricsOptions(interval_s=2.0, window_s=window_s))  # type: ignore[arg-type]
    while samples.queued:
        history.take()
    return json.loads(history.dashboard(minutes=10))


def history_of(samples: Samples, window_s: float = 4.0) -> dict[tuple[str, int], dict[str, Any]]:
    """Takes every sample, then reads `/dashboard/data`'s series by (model, version)."""
    return {(s["model"], s["version"]): s for s in dashboard_of(samples, window_s)["series"]}


def assert_never_negative(series: dict[str, Any]) -> None:
    for name in FIELDS:
        assert all(v is None or v >= 0 for v in series["points"][name]), name
    counts = series["batch_rows"]["counts"]
    assert counts is None or min(counts) >= 0


def test_rates_survive_a_counter_reset_and_are_never_negative():
    samples = Samples()
    for t, ok in [(100, 100), (102, 200), (104, 30), (106, 80)]:  # reloaded between 102 and 104: from 0 to 30
        samples.add(t, version("ctr", 1, ok))
    ctr = history_of(samples)[("ctr", 1)]
    points = ctr["points"]
    assert points["t"] == [100, 102, 104, 106]
    # 102: 100 more in 2 s; 104: the 100 before the reset and the 30 after it, in 4 s; 106: 30 + 50 in 4 s
    assert points["requests_per_s"] == [None, 50.0, 32.5, 20.0]
    assert points["candidates_per_s"] == [None, 500.0, 325.0, 200.0]
    assert points["errors_per_s"][1:] == points["shed_per_s"][1:] == [0.0, 0.0, 0.0]
    assert all(p is not None and 1.5 < p < 2.5 for p in points["request_p99_ms"][1:])  # the 2 ms bucket
    assert ctr["current"]["requests_per_s"] == 20.0
    assert sum(ctr["batch_rows"]["counts"]) == 100 + 80  # the last minute, across the reset
    assert_never_negative(ctr)


def test_a_reset_hidden_from_the_request_count_is_seen_in_the_histograms():
    samples = Samples()
    samples.add(100, version("ctr", 1, 100, bucket=FAST))
    # Reloaded, and already past its old count: only the fast bucket falling shows the reset.
    samples.add(102, version("ctr", 1, 150, bucket=SLOW))
    points = history_of(samples, window_s=2.0)[("ctr", 1)]["points"]
    assert points["requests_per_s"] == [None, 75.0]  # 150 new requests, not 50
    assert 15 < points["request_p50_ms"][1] < 25  # all of them slow: none of the old fast ones


def test_an_unloaded_version_has_history_but_no_current_figures():
    samples = Samples()
    samples.add(100, version("ctr", 1, 0), version("ctr", 2, 0, role="canary"))
    samples.add(102, version("ctr", 1, 40), version("ctr", 2, 20, role="canary"))
    samples.add(104, version("ctr", 2, 60))  # version 1 unloaded (a rollback); 2 serves alone
    series = history_of(samples, window_s=2.0)
    gone, serving = series[("ctr", 1)], series[("ctr", 2)]

    assert (gone["state"], gone["role"], gone["current"]) == ("UNLOADED", "", None)
    assert gone["batch_rows"]["counts"] is None
    assert gone["points"]["requests_per_s"] == [None, 20.0, None]  # its history stays, nothing now
    assert all(gone["points"][name][-1] is None for name in FIELDS)

    assert (serving["state"], serving["role"]) == ("AVAILABLE", "stable")
    assert serving["current"] == {name: serving["points"][name][-1] for name in FIELDS}
    assert serving["current"]["requests_per_s"] == 20.0
    assert sum(serving["batch_rows"]["counts"]) == 60
    assert_never_negative(gone)
    assert_never_negative(serving)


def test_a_version_loaded_again_after_an_unload_counts_from_zero():
    samples = Samples()
    samples.add(100, version("ctr", 1, 500))
    samples.add(102, version("ctr", 1, 600))
    samples.add(104)  # unloaded
    samples.add(106, version("ctr", 1, 12))  # loaded again: its counters start at 0
    ctr = history_of(samples, window_s=2.0)[("ctr", 1)]
    assert ctr["points"]["requests_per_s"] == [None, 50.0, None, 6.0]
    assert ctr["current"]["requests_per_s"] == 6.0 and ctr["state"] == "AVAILABLE"
    assert ctr["points"]["candidates_per_s"][-1] == pytest.approx(60.0)
    assert_never_negative(ctr)


def test_rates_without_a_reset_are_the_counters_difference():
    samples = Samples()
    for i, ok in enumerate([0, 7, 7, 30, 31, 90]):
        samples.add(100 + 2 * i, version("ctr", 1, ok))
    points = history_of(samples, window_s=4.0)[("ctr", 1)]["points"]
    # each point against the sample 4 s before it (the first one while the history is younger)
    assert points["requests_per_s"] == [None, 3.5, 1.75, 5.75, 6.0, 15.0]
    assert set(RATES) <= set(points)


# ---- the panels beside the series --------------------------------------------------------------------


def test_the_summary_holds_each_stable_versions_p99_against_its_budget_with_its_error_ratio():
    samples = Samples()
    for t, ok in [(100, 0), (102, 80), (104, 200)]:
        samples.add(
            t,
            version("ctr", 1, ok, failed=ok // 4, budget_ms=10.0),  # 2 ms: within 10 ms; 1 failed in 5
            version("ctr", 2, ok, role="canary"),  # not stable: not in the summary
            version("relevance", 3, ok, bucket=SLOW, budget_ms=5.0),  # 20 ms: over its 5 ms
        )
    summary = {row["model"]: row for row in dashboard_of(samples)["summary"]}
    assert sorted(summary) == ["ctr", "relevance"]
    ctr, relevance = summary["ctr"], summary["relevance"]
    assert ctr["version"] == 1 and ctr["latency_budget_ms"] == 10.0
    assert ctr["requests_per_s"] == pytest.approx(250 / 4)  # 200 OK and 50 failed over the 4 s window
    assert ctr["error_ratio"] == pytest.approx(0.2)
    assert 1.0 < ctr["request_p99_ms"] < 3.0 and ctr["within_budget"] is True
    assert relevance["version"] == 3 and relevance["latency_budget_ms"] == 5.0
    assert relevance["error_ratio"] == 0 and relevance["request_p99_ms"] > 5.0
    assert relevance["within_budget"] is False


def test_a_summary_without_traffic_has_no_ratio_and_no_verdict_on_the_budget():
    samples = Samples()
    for t in (100, 102):
        samples.add(t, version("ctr", 1, 0))
    (ctr,) = dashboard_of(samples)["summary"]
    assert ctr["requests_per_s"] == 0 and ctr["error_ratio"] is None
    assert ctr["request_p99_ms"] is None and ctr["within_budget"] is None


def calls(**by_code: int) -> list[int]:
    counts = [0] * len(StatusCode)
    for name, count in by_code.items():
        counts[StatusCode[name]] = count
    return counts


def test_calls_by_status_code_include_requests_to_unknown_models_and_survive_a_reset():
    samples = Samples()
    for t, answered, unknown in [
        (100, calls(OK=10, NOT_FOUND=2), 2),
        (102, calls(OK=30, NOT_FOUND=8, INVALID_ARGUMENT=4), 6),
        (104, calls(OK=70, NOT_FOUND=8, INVALID_ARGUMENT=4), 6),
        (106, calls(OK=5), 0),  # a new server behind the page: its counts start again
    ]:
        samples.add(t, version("ctr", 1, 0), calls=answered, unknown_model_requests=unknown)
    data = dashboard_of(samples)["calls"]
    assert data["t"] == [100, 102, 104, 106]
    codes = data["codes"]
    assert sorted(codes) == ["INVALID_ARGUMENT", "NOT_FOUND", "OK"]  # codes never answered are left out
    assert codes["OK"] == [None, 10.0, 15.0, pytest.approx(45 / 4)]  # 106: 40 before the reset, 5 after
    assert codes["NOT_FOUND"] == [None, 3.0, 1.5, 0.0]
    assert codes["INVALID_ARGUMENT"] == [None, 2.0, 1.0, 0.0]
    assert data["unknown_model"] == [None, 2.0, 1.0, 0.0]
    assert all(v is None or v >= 0 for values in codes.values() for v in values)
    assert data["current"]["OK"] == pytest.approx(45 / 4) and data["current"]["unknown_model"] == 0


def verdict(p99_ratio: float, canary_errors: float, psi: float) -> Verdict:
    figures = {
        "role": "canary",
        "window_requests": {"stable": 900, "canary": 100},
        "latency": "queue+compute",
        "p99_ratio": p99_ratio,
        "error_rate": {"stable": 0.01, "canary": canary_errors},
        "psi": psi,
    }
    return Verdict(False, [], figures)


def test_the_rollout_panel_shows_traffic_per_role_and_each_guardrails_figure_against_its_limit():
    policy = GuardrailPolicy(max_latency_ratio=1.5, max_error_rate=0.01, max_psi=0.25, min_requests=50)
    traffic = [
        Traffic("ctr", 1, "stable", 90.0),
        Traffic("ctr", 2, "canary", 10.0),
        Traffic("ctr", 3, "shadow", 50.0),
        Traffic("relevance", 1, "stable", 100.0),  # no canary or shadow: no panel
    ]
    samples = Samples()
    for t, ok in [(100, 0), (102, 36), (104, 72)]:
        samples.add(
            t,
            version("ctr", 1, ok),
            version("ctr", 2, ok // 9, role="canary"),
            version("ctr", 3, ok // 2, role="shadow"),
            version("relevance", 1, 0),
            traffic=traffic,
            verdicts=[("ctr", 2, "canary", verdict(1.2, 0.03, 0.4))],
            guardrails={"ctr": policy},
        )
    (panel,) = dashboard_of(samples)["rollouts"]
    assert panel["model"] == "ctr"
    roles = {r["role"]: r for r in panel["roles"]}
    assert [r["role"] for r in panel["roles"]] == ["stable", "canary", "shadow"]
    assert (roles["stable"]["version"], roles["stable"]["percent"], roles["stable"]["requests_per_s"]) == (1, 90, 18)
    assert (roles["canary"]["version"], roles["canary"]["percent"], roles["canary"]["requests_per_s"]) == (2, 10, 2)
    assert roles["shadow"]["requests_per_s"] == 9
    canary, shadow = panel["guardrails"]
    assert canary["role"] == "canary" and canary["judged"] and canary["window_requests"]["canary"] == 100
    checks = {c["name"]: c for c in canary["checks"]}
    assert (checks["latency"]["figure"], checks["latency"]["limit"], checks["latency"]["breached"]) == (1.2, 1.5, False)
    error = checks["error_rate"]
    assert error["figure"] == pytest.approx(0.02) and error["limit"] == 0.01 and error["breached"] is True
    assert (checks["psi"]["figure"], checks["psi"]["limit"], checks["psi"]["breached"]) == (0.4, 0.25, True)
    # Not judged yet (its window holds too few requests): its limits, no figures.
    assert shadow["role"] == "shadow" and shadow["version"] == 3 and not shadow["judged"]
    assert shadow["min_requests"] == 50
    assert [(c["figure"], c["limit"], c["breached"]) for c in shadow["checks"]] == [
        (None, 1.5, None),
        (None, 0.01, None),
        (None, 0.25, None),
    ]
    assert "compute" in shadow["checks"][0]["label"] and "queue" not in shadow["checks"][0]["label"]


def test_a_guardrail_figure_that_is_not_a_number_is_shown_as_none():
    checks = guardrail_checks("canary", verdict(math.nan, 0.01, math.nan), GuardrailPolicy())
    assert [(c["name"], c["figure"], c["breached"]) for c in checks] == [
        ("latency", None, None),
        ("error_rate", 0.0, False),
        ("psi", None, None),
    ]


def test_a_context_cache_shows_its_hit_ratio_evictions_and_bytes_and_survives_a_reset():
    samples = Samples()

    def relevance(ok: int, hits: int, misses: int, evictions: int, held: int) -> VersionSample:
        cache = {"hits": hits, "misses": misses, "evictions": evictions, "bytes": held}
        return replace(version("relevance", 2, ok), context_cache=cache)

    samples.add(100, relevance(0, 0, 0, 0, 0), version("ctr", 1, 0))
    samples.add(102, relevance(100, 60, 40, 0, 4000), version("ctr", 1, 10))
    samples.add(104, relevance(200, 150, 50, 4, 5000), version("ctr", 1, 20))
    samples.add(106, relevance(20, 5, 15, 0, 1500), version("ctr", 1, 30))  # reloaded: from 0
    series = history_of(samples, window_s=2.0)
    points = series[("relevance", 2)]["points"]
    assert points["context_cache_hit_ratio"] == [None, 0.6, 0.9, 0.25]
    assert points["context_cache_evictions_per_s"] == [None, 0.0, 2.0, 0.0]
    assert points["context_cache_bytes"] == [0, 4000, 5000, 1500]
    assert series[("relevance", 2)]["current"]["context_cache_hit_ratio"] == 0.25
    assert_never_negative(series[("relevance", 2)])
    ctr = series[("ctr", 1)]["points"]  # no context tower: no cache figures
    assert all(ctr[name] == [None] * 4 for name in ("context_cache_hit_ratio", "context_cache_bytes"))
