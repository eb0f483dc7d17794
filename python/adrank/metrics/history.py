"""MetricsHistory: the last minutes of samples, for the live dashboard (`/dashboard/data`).

Every `interval_s` a thread takes a Sample (sample.py) and keeps, per served version, its cumulative
counters and histograms; samples older than `history_s` are dropped. A point's figures are the
difference between its sample and the one `window_s` before it — rates per second, and p50/p95/p99
read from the difference of histograms — computed once, when the sample is taken (~0.2 ms a version).
A dashboard request only lays the stored figures out as JSON, cached until the next sample, so any
number of open dashboards cost one layout per tick.

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
from adrank.metrics.sample import MetricsSource, Sample
from adrank.ticker import Ticker

log = logging.getLogger("adrank.metrics")

PHASES = ("request", "queue", "compute")
QUANTILES = {"request": (50, 95, 99), "queue": (50, 99), "compute": (50, 99)}
RATES = ("requests_per_s", "errors_per_s", "shed_per_s", "candidates_per_s")  # of _VersionPoint.counters
FIELDS = (
    *RATES,
    *(f"{phase}_p{q}_ms" for phase in PHASES for q in QUANTILES[phase]),
    "queue_rows",
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
    counters: np.ndarray  # cumulative: requests, errors, shed, candidates
    latency: np.ndarray  # cumulative histograms, [len(PHASES), buckets]
    batch_rows: np.ndarray  # cumulative histogram
    figures: dict[str, float | None]  # FIELDS over the window before this point


@dataclass(frozen=True)
class _Point:
    time: float
    versions: dict[tuple[str, int], _VersionPoint]
    memory: tuple[int, int, int]  # total, in use, locked bytes
    allocator: str
    states: dict[tuple[str, int], str]


def _rounded(value: float, digits: int = 3) -> float | None:
    """JSON-ready: NaN (no data in the window) becomes null."""
    return round(float(value), digits) if np.isfinite(value) else None


def _figures(
    counters: np.ndarray, latency: np.ndarray, queue_rows: int, before: _VersionPoint | None, seconds: float
) -> dict[str, float | None]:
    """The window's figures: this version's counters and histograms minus those `seconds` earlier (a
    version absent then counts from zero: it was loaded within the window)."""
    figures: dict[str, float | None] = dict.fromkeys(FIELDS)
    figures["queue_rows"] = queue_rows
    if seconds <= 0:
        return figures
    rates = (counters - (before.counters if before else 0)) / seconds
    for name, rate in zip(RATES, rates, strict=True):
        figures[name] = _rounded(float(rate), 1 if name == "candidates_per_s" else 3)
    window = latency - (before.latency if before else 0)
    for p, phase in enumerate(PHASES):
        for q in QUANTILES[phase]:
            figures[f"{phase}_p{q}_ms"] = _rounded(float(quantile(window[p], q / 100, LATENCY_BOUNDS_US)) / 1000.0)
    return figures


def _point(sample: Sample, start: _Point | None) -> _Point:
    """The sample's point, its figures over the window since `start` (None: the first sample)."""
    versions = {}
    seconds = sample.time - start.time if start is not None else 0.0
    for v in sample.versions:
        key = (v.model, v.version)
        stats = v.stats
        requests = int(np.sum(stats["codes"])) + int(stats["shadow_shed"])
        # shed: deadline, queue full, cancelled, unavailable, and shed mirrors
        counters = np.array([requests, int(stats["failed"]), int(stats["dropped"]), int(stats["candidates"])])
        latency = np.stack([np.asarray(stats[f"{p}_counts"], dtype=np.int64) for p in PHASES])
        before = start.versions.get(key) if start is not None else None
        versions[key] = _VersionPoint(
            v.role,
            counters,
            latency,
            np.asarray(v.queue["batch_rows_counts"], dtype=np.int64),
            _figures(counters, latency, int(v.queue["queued_rows"]), before, seconds),
        )
    pool = sample.memory_pool
    return _Point(
        sample.time,
        versions,
        (pool["total_bytes"], pool["in_use_bytes"], pool["locked_bytes"]),
        pool["allocator"],
        {(m, v): s for m, v, s in sample.states},
    )


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
            point = _point(sample, self._window_start(sample.time))
            self._points.append(point)
            while self._points and self._points[0].time < point.time - self.options.history_s:
                self._points.popleft()
            self._cache.clear()

    def _window_start(self, now: float) -> _Point | None:
        """The newest sample at least window_s old; the first one while the history is younger."""
        start = None
        for point in reversed(self._points):
            start = point
            if point.time <= now - self.options.window_s:
                break
        return start

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
            return {"now": None, **options, "series": [], "memory_pool": None}
        shown = [p for p in points if p.time >= points[-1].time - minutes * 60.0]
        keys = sorted({k for p in points for k in p.versions})
        return {
            "now": points[-1].time,
            **options,
            "series": [self._series(points, shown, key) for key in keys],
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
        latest = newest.versions.get(key)
        # Batches of the last minute: the newest histogram minus the one a minute before.
        older = next((p for p in reversed(points) if p.time <= newest.time - BATCH_ROWS_WINDOW_S), points[0])
        if latest is not None:
            before = older.versions.get(key)
            batch_rows = latest.batch_rows - (before.batch_rows if before is not None else 0)
        else:
            batch_rows = np.zeros(len(BATCH_ROWS_BOUNDS) + 1, dtype=np.int64)
        return {
            "model": key[0],
            "version": key[1],
            "role": latest.role if latest is not None else "",
            "state": newest.states.get(key, "UNLOADED"),
            "points": out,
            "batch_rows": {"bounds": [int(b) for b in BATCH_ROWS_BOUNDS], "counts": batch_rows.tolist()},
        }
