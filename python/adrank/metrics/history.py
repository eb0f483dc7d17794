"""MetricsHistory: the last minutes of samples, for the live dashboard (`/dashboard/data`).

Every `interval_s` a thread takes a Sample (sample.py) and keeps, per served version, its cumulative
counters and histograms and their increase since the sample before; samples older than `history_s` are
dropped. A point's figures cover the `window_s` before it: the increases of the samples in that window,
summed — rates per second, and p50/p95/p99 read from the summed histograms — computed once, when the
sample is taken (~0.2 ms a version at the defaults' 5 samples a window). Summing sample by sample is
what makes the rates survive counter resets: a version unloaded and loaded again (a rollback) starts its
counters at 0, and such a fall counts the new value from 0, as Prometheus's rate() does (increase.py),
so no rate is ever negative. A dashboard request only lays the stored figures out as JSON, cached until
the next sample, so any number of open dashboards cost one layout per tick.

What `/dashboard/data` gives per version (series): its figures at every sample shown (null where it was
not loaded or had no traffic; with a context tower, also its cache's hit ratio, evictions/s and bytes),
`current` — its figures at the newest sample, or null for a version that no longer serves (UNLOADED: not
in the newest sample), so that a page shows no stale "current" figure — and `batch_rows`, its batches of
the last minute (counts null for a version that no longer serves). Beside the series:
- `summary`: per model, its stable version at the newest sample — requests/s, error ratio (failed over all
  its requests in the window), request p99 against its config's `latency_budget_ms`;
- `calls`: the front ends' answers per second by status code at every sample, and the requests that named a
  model no version serves (calls.py);
- `rollouts`: per model with a canary or shadow, each role's share and requests/s, and each guardrail's
  latest figure against its limit (rollout_panel.py: the guardrail monitor's own figures, read lock-free).

Options (defaults and why):
  enabled = True       False (`adrank serve --no-metrics`): no /metrics, no dashboard, no history
                       thread, and the core counts only versions a rollout compares.
  interval_s = 2       The dashboard's resolution and polling period: fine enough to watch a rollout,
                       a sample costs ~100 us of Python every 2 s.
  history_s = 600      Ten minutes at 2 s are 300 samples, ~4 KB per version each.
  window_s = 10        Each point's figures cover 10 s: a p99 of 100 req/s rests on 1000 requests.

Thread-safety: `dashboard` may be called from any thread (the HTTP server's); one lock guards the
samples and the cache.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from adrank.histogram import BATCH_ROWS_BOUNDS, LATENCY_BOUNDS_US, quantile
from adrank.metrics.calls import call_counts, call_rates, calls_layout
from adrank.metrics.increase import VersionCounts, increase, total
from adrank.metrics.rollout_panel import rollout_panels
from adrank.metrics.sample import MetricsSource, Sample, Traffic, VersionSample
from adrank.rollout.guardrails import Verdict
from adrank.rollout.policy import GuardrailPolicy
from adrank.ticker import Ticker

log = logging.getLogger("adrank.metrics")

PHASES = ("request", "queue", "compute")
QUANTILES = {"request": (50, 95, 99), "queue": (50, 99), "compute": (50, 99)}
RATES = ("requests_per_s", "errors_per_s", "shed_per_s", "candidates_per_s")  # of VersionCounts.counters
# A context-tower cache's counters (cpp/context_cache.h), kept per version as its other counts are.
CACHE_COUNTERS = ("hits", "misses", "evictions")
# Its figures: the share of lookups that hit and the evictions/s over the window, the bytes it holds now (null for a
# version without a cache).
CACHE_FIELDS = ("context_cache_hit_ratio", "context_cache_evictions_per_s", "context_cache_bytes")
FIELDS = (
    *RATES,
    *(f"{phase}_p{q}_ms" for phase in PHASES for q in QUANTILES[phase]),
    "queue_rows",
    "error_ratio",
    *CACHE_FIELDS,
)
BATCH_ROWS_WINDOW_S = 60.0


@dataclass(frozen=True)
class MetricsOptions:
    enabled: bool = True
    interval_s: float = 2.0
    history_s: float = 600.0
    window_s: float = 10.0


@dataclass(frozen=True)
class _VersionPoint:
    role: str
    latency_budget_ms: float
    counts: VersionCounts  # cumulative, as the core reported them: the next sample's increase starts here
    increase: VersionCounts  # since the sample before (a reset or a fresh load: counted from 0)
    figures: dict[str, float | None]  # FIELDS over the window before this point
    # Its context cache's CACHE_COUNTERS, cumulative and their increase since the sample before (None: no cache).
    cache: np.ndarray | None = None
    cache_increase: np.ndarray | None = None


@dataclass(frozen=True)
class _CallsPoint:
    """The front ends' answers by code (calls.py), kept as a version's counts are."""

    counts: VersionCounts
    increase: VersionCounts
    rates: dict[str, float | None]  # calls/s by code name over the window before this point


@dataclass(frozen=True)
class _Point:
    time: float
    versions: dict[tuple[str, int], _VersionPoint]
    memory: tuple[int, int, int]  # total, in use, locked bytes
    allocator: str
    states: dict[tuple[str, int], str]
    calls: _CallsPoint
    traffic: list[Traffic]
    verdicts: list[tuple[str, int, str, Verdict]]
    guardrails: dict[str, GuardrailPolicy]


def _rounded(value: float, digits: int = 3) -> float | None:
    """JSON-ready: NaN (no data in the window) becomes null."""
    return round(float(value), digits) if np.isfinite(value) else None


def _figures(window: VersionCounts | None, queue_rows: int, seconds: float) -> dict[str, float | None]:
    """The window's figures from the version's increase over its `seconds` (None: no window yet)."""
    figures: dict[str, float | None] = dict.fromkeys(FIELDS)
    figures["queue_rows"] = queue_rows
    if window is None or seconds <= 0:
        return figures
    for name, rate in zip(RATES, window.counters / seconds, strict=True):
        figures[name] = _rounded(float(rate), 1 if name == "candidates_per_s" else 3)
    requests, failed = int(window.counters[0]), int(window.counters[1])
    figures["error_ratio"] = round(failed / requests, 5) if requests else None
    for p, phase in enumerate(PHASES):
        for q in QUANTILES[phase]:
            figures[f"{phase}_p{q}_ms"] = _rounded(
                float(quantile(window.latency[p], q / 100, LATENCY_BOUNDS_US)) / 1000.0
            )
    return figures


def _counts(v: VersionSample) -> VersionCounts:
    stats = v.stats
    requests = int(np.sum(stats["codes"])) + int(stats["shadow_shed"])
    # shed: deadline, queue full, cancelled, unavailable, and shed mirrors
    counters = np.array([requests, int(stats["failed"]), int(stats["dropped"]), int(stats["candidates"])])
    latency = np.stack([np.asarray(stats[f"{p}_counts"], dtype=np.int64) for p in PHASES])
    return VersionCounts(counters, latency, np.asarray(v.queue["batch_rows_counts"], dtype=np.int64))


def _cache_counts(v: VersionSample, before: _VersionPoint | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The version's cache counters and their increase since `before` (a fall: a reset, counted from 0)."""
    if v.context_cache is None:
        return None, None
    counts = np.array([v.context_cache[name] for name in CACHE_COUNTERS], dtype=np.int64)
    previous = before.cache if before is not None else None
    if previous is None or bool(np.any(counts < previous)):
        return counts, counts
    return counts, counts - previous


def _cache_figures(window: np.ndarray | None, v: VersionSample, seconds: float) -> dict[str, float | None]:
    """CACHE_FIELDS from the cache counters' increase over the window (None: no window yet)."""
    assert v.context_cache is not None  # only a version with a cache has cache figures
    figures: dict[str, float | None] = {"context_cache_bytes": int(v.context_cache["bytes"])}
    if window is None or seconds <= 0:
        return figures
    hits, misses, evictions = (int(c) for c in window)
    figures["context_cache_hit_ratio"] = round(hits / (hits + misses), 5) if hits + misses else None
    figures["context_cache_evictions_per_s"] = _rounded(evictions / seconds)
    return figures


def _point(sample: Sample, previous: _Point | None, start: _Point | None, within: list[_Point]) -> _Point:
    """The sample's point. `previous`: the sample before (None: the first); `start`: the window's start
    (None: the first sample, no window yet); `within`: the points after `start`, before this one."""
    versions = {}
    seconds = sample.time - start.time if start is not None else 0.0
    for v in sample.versions:
        key = (v.model, v.version)
        counts = _counts(v)
        before = previous.versions.get(key) if previous is not None else None
        grown = increase(counts, before.counts if before is not None else None)
        window = total([p.versions[key].increase for p in within if key in p.versions] + [grown])
        figures = _figures(window if start is not None else None, int(v.queue["queued_rows"]), seconds)
        cache, cache_grown = _cache_counts(v, before)
        if cache_grown is not None:
            earlier = [p.versions[key].cache_increase for p in within if key in p.versions]
            cache_window = sum((c for c in earlier if c is not None), start=cache_grown)
            figures.update(_cache_figures(cache_window if start is not None else None, v, seconds))
        versions[key] = _VersionPoint(v.role, v.latency_budget_ms, counts, grown, figures, cache, cache_grown)
    pool = sample.memory_pool
    return _Point(
        sample.time,
        versions,
        (pool["total_bytes"], pool["in_use_bytes"], pool["locked_bytes"]),
        pool["allocator"],
        {(m, v): s for m, v, s in sample.states},
        _calls_point(sample, previous, start, within, seconds),
        sample.traffic,
        sample.verdicts,
        sample.guardrails,
    )


def _calls_point(
    sample: Sample, previous: _Point | None, start: _Point | None, within: list[_Point], seconds: float
) -> _CallsPoint:
    """The front ends' answers by code at this sample, and their rates over the window (as _point's versions)."""
    counts = call_counts(sample)
    grown = increase(counts, previous.calls.counts if previous is not None else None)
    window = total([p.calls.increase for p in within] + [grown])
    rates = call_rates(window if start is not None else None, seconds)
    return _CallsPoint(counts, grown, rates)


class MetricsHistory:
    def __init__(self, source: MetricsSource, options: MetricsOptions | None = None) -> None:
        self.options = options or MetricsOptions()
        self._source = source
        self._lock = threading.Lock()
        self._points: deque[_Point] = deque()
        self._cache: dict[int, tuple[float, bytes]] = {}
        self._ticker = Ticker("adrank-metrics-history", self.options.interval_s, self.take, log)

    def start(self) -> None:
        self.take()
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def take(self) -> None:
        """Adds a sample now (the thread does it every interval_s)."""
        sample = self._source.sample()
        with self._lock:
            start, within = self._window(sample.time)
            previous = self._points[-1] if self._points else None
            point = _point(sample, previous, start, within)
            self._points.append(point)
            while self._points and self._points[0].time < point.time - self.options.history_s:
                self._points.popleft()
            self._cache.clear()

    def _window(self, now: float) -> tuple[_Point | None, list[_Point]]:
        """The window's start — the newest sample at least window_s old; the first one while the history is
        younger — and the samples after it, oldest first."""
        within: list[_Point] = []
        for point in reversed(self._points):
            if point.time <= now - self.options.window_s:
                return point, within[::-1]
            within.append(point)
        if not within:
            return None, []
        within.reverse()
        return within[0], within[1:]

    def dashboard(self, minutes: int = 10) -> bytes:
        """The JSON of `/dashboard/data` over the last `minutes` (python/adrank/dashboard/ draws it)."""
        minutes = max(1, min(minutes, int(self.options.history_s // 60) or 1))
        with self._lock:
            points = list(self._points)
            newest = points[-1].time if points else 0.0
            cached = self._cache.get(minutes)
            if cached is not None and cached[0] == newest:
                return cached[1]
        body = json.dumps(self._layout(points, minutes), separators=(",", ":")).encode()
        with self._lock:
            self._cache[minutes] = (newest, body)
        return body

    def _layout(self, points: list[_Point], minutes: int) -> dict[str, Any]:
        options = {"interval_s": self.options.interval_s, "window_s": self.options.window_s}
        if not points:
            return {
                "now": None,
                **options,
                "series": [],
                "memory_pool": None,
                "summary": [],
                "calls": None,
                "rollouts": [],
            }
        shown = [p for p in points if p.time >= points[-1].time - minutes * 60.0]
        keys = sorted({k for p in points for k in p.versions})
        newest = points[-1]
        requests_per_s = {key: v.figures["requests_per_s"] for key, v in newest.versions.items()}
        return {
            "now": newest.time,
            **options,
            "series": [self._series(points, shown, key) for key in keys],
            "summary": _summary(newest),
            "calls": calls_layout([p.time for p in shown], [p.calls.rates for p in shown]),
            "rollouts": rollout_panels(newest.traffic, newest.verdicts, newest.guardrails, requests_per_s),
            "memory_pool": {
                "allocator": points[-1].allocator,
                "t": [round(p.time, 3) for p in shown],
                "total_bytes": [p.memory[0] for p in shown],
                "in_use_bytes": [p.memory[1] for p in shown],
                "locked_bytes": [p.memory[2] for p in shown],
            },
        }

    @staticmethod
    def _series(points: list[_Point], shown: list[_Point], key: tuple[str, int]) -> dict[str, Any]:
        at = [p.versions.get(key) for p in shown]
        out: dict[str, Any] = {"t": [round(p.time, 3) for p in shown]}
        for name in FIELDS:
            out[name] = [v.figures[name] if v is not None else None for v in at]
        newest = points[-1]
        latest = newest.versions.get(key)  # None: the version no longer serves, it has no current figures
        # Batches of the last minute: the increases since the sample a minute before.
        older = next((p for p in reversed(points) if p.time <= newest.time - BATCH_ROWS_WINDOW_S), points[0])
        minute = total([p.versions[key].increase for p in points if p.time > older.time and key in p.versions])
        batch_rows = None
        if latest is not None:
            batch_rows = (minute.batch_rows if minute is not None else np.zeros_like(latest.counts.batch_rows)).tolist()
        return {
            "model": key[0],
            "version": key[1],
            "role": latest.role if latest is not None else "",
            "state": newest.states.get(key, "UNLOADED"),
            "current": dict(latest.figures) if latest is not None else None,
            "points": out,
            "batch_rows": {"bounds": [int(b) for b in BATCH_ROWS_BOUNDS], "counts": batch_rows},
        }


def _summary(newest: _Point) -> list[dict[str, Any]]:
    """Per model, its stable version's traffic, error ratio and p99 against its latency budget, by name."""
    out = []
    for (model, version), v in sorted(newest.versions.items()):
        if v.role != "stable":
            continue
        p99 = v.figures["request_p99_ms"]
        out.append(
            {
                "model": model,
                "version": version,
                "requests_per_s": v.figures["requests_per_s"],
                "error_ratio": v.figures["error_ratio"],
                "request_p99_ms": p99,
                "latency_budget_ms": v.latency_budget_ms,
                "within_budget": p99 <= v.latency_budget_ms if p99 is not None else None,
            }
        )
    return out
