"""The dashboard's history (metrics/history.py) fed samples by hand: rates survive a counter reset (a version
unloaded and loaded again counts from 0) and are never negative, and a version that no longer serves has no
current figures, only its history."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from adrank.histogram import BATCH_ROWS_BOUNDS, LATENCY_BOUNDS_US
from adrank.metrics.history import FIELDS, RATES, MetricsHistory, MetricsOptions
from adrank.metrics.sample import Sample, VersionSample

MEMORY = {"total_bytes": 1 << 20, "in_use_bytes": 0, "locked_bytes": 0, "allocator": "malloc"}
FAST = int(np.searchsorted(LATENCY_BOUNDS_US, 2_000))  # the bucket of 2 ms
SLOW = int(np.searchsorted(LATENCY_BOUNDS_US, 20_000))  # the bucket of 20 ms


def version(model: str, number: int, ok: int, *, bucket: int = FAST, role: str = "stable") -> VersionSample:
    """A version's cumulative counts: `ok` requests of 10 candidates each, every one in latency `bucket`
    and in a batch of its own (one row)."""
    latency = np.zeros(len(LATENCY_BOUNDS_US) + 1, dtype=np.int64)
    latency[bucket] = ok
    batch_rows = np.zeros(len(BATCH_ROWS_BOUNDS) + 1, dtype=np.int64)
    batch_rows[0] = ok
    stats = {
        "codes": [ok, 0],
        "shadow_shed": 0,
        "failed": 0,
        "dropped": 0,
        "candidates": 10 * ok,
        "request_counts": latency,
        "queue_counts": latency,
        "compute_counts": latency,
    }
    return VersionSample(model, number, role, stats, {"batch_rows_counts": batch_rows, "queued_rows": 0}, [])


@dataclass
class Samples:
    """A MetricsSource that hands out the samples given to it, in order."""

    queued: list[Sample] = field(default_factory=list)

    def add(self, time: float, *versions: VersionSample) -> None:
        states = [(v.model, v.version, "AVAILABLE") for v in versions]
        self.queued.append(Sample(time, list(versions), states, [], [], MEMORY, []))

    def sample(self) -> Sample:
        return self.queued.pop(0)


def history_of(samples: Samples, window_s: float = 4.0) -> dict[tuple[str, int], dict[str, Any]]:
    """Takes every sample, then reads `/dashboard/data`'s series by (model, version)."""
    history = MetricsHistory(samples, MetricsOptions(interval_s=2.0, window_s=window_s))  # type: ignore[arg-type]
    while samples.queued:
        history.take()
    data = json.loads(history.dashboard(minutes=10))
    return {(s["model"], s["version"]): s for s in data["series"]}


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
