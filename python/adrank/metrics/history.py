"""MetricsHistory: the last minutes of samples, for the live dashboard (`/dashboard/data`).

Every `interval_s` a thread takes a Sample (sample.py) and keeps, per served version, its cumulative
counters and histograms; samples older than `history_s` are dropped. The dashboard's figures for a
point are the newest-minus-older difference over the `window_s` before it — rates per second and
p50/p95/p99 read from the difference of histograms — computed for every point of every series in a
few array operations, and cached until the next sample, so any number of open dashboards cost one
computation per tick.

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

from adrank.metrics.histogram import BATCH_ROWS_BOUNDS, LATENCY_BOUNDS_US, quantile
from adrank.metrics.sample import MetricsSource, Sample

log = logging.getLogger("adrank.metrics")

PHASES = ("request", "queue", "compute")
QUANTILES = {"request": (50, 95, 99), "queue": (50, 99), "compute": (50, 99)}
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
    counters: np.ndarray  # requests, errors, shed, candidates
    latency: np.ndarray  # [len(PHASES), buckets]
    batch_rows: np.ndarray
    queue_rows: int


@dataclass(frozen=True)
class _Point:
    time: float
    versions: dict[tuple[str, int], _VersionPoint]
    memory: tuple[int, int, int]  # total, in use, locked bytes
    allocator: str
    states: dict[tuple[str, int], str]


def _point(sample: Sample) -> _Point:
    versions = {}
    for v in sample.versions:
        stats = v.stats
        requests = int(np.sum(stats["codes"]))
        shed = int(stats["dropped"])  # deadline, queue full, cancelled, unavailable, and shed mirrors
        counters = np.array(
            [requests + int(stats["shadow_shed"]), int(stats["failed"]), shed, int(stats["candidates"])]
        )
        latency = np.stack([np.asarray(stats[f"{p}_counts"], dtype=np.int64) for p in PHASES])
        versions[(v.model, v.version)] = _VersionPoint(
            v.role, counters, latency, np.asarray(v.queue["batch_rows_counts"], dtype=np.int64), v.queue["queued_rows"]
        )
    pool = sample.memory_pool
    return _Point(
        sample.time,
        versions,
        (pool["total_bytes"], pool["in_use_bytes"], pool["locked_bytes"]),
        pool["allocator"],
        {(m, v): s for m, v, s in sample.states},
    )


def _rounded(values: np.ndarray, digits: int = 3) -> list[float | None]:
    """A JSON-ready list: NaN (no data in the window) becomes null."""
    return [None if not np.isfinite(x) else round(float(x), digits) for x in values]


class MetricsHistory:
    def __init__(self, source: MetricsSource, options: MetricsOptions | None = None) -> None:
        self.options = options or MetricsOptions()
        self._source = source
        self._lock = threading.Lock()
        self._points: deque[_Point] = deque()
        self._cache: dict[int, tuple[float, bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="adrank-metrics-history", daemon=True)

    def start(self) -> None:
        self.take()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.options.interval_s):
            try:
                self.take()
            except Exception:  # a bug here must not end the history for good
                log.exception("metrics sample failed")

    def take(self) -> None:
        """Adds a sample now (the thread does it every interval_s)."""
        point = _point(self._source.sample())
        with self._lock:
            self._points.append(point)
            while self._points and self._points[0].time < point.time - self.options.history_s:
                self._points.popleft()
            self._cache.clear()

    def dashboard(self, minutes: int = 10) -> bytes:
        """The JSON of `/dashboard/data` over the last `minutes` (python/adrank/dashboard/ draws it)."""
        minutes = max(1, min(minutes, int(self.options.history_s // 60) or 1))
        with self._lock:
            points = list(self._points)
            newest = points[-1].time if points else 0.0
            cached = self._cache.get(minutes)
            if cached is not None and cached[0] == newest:
                return cached[1]
        body = json.dumps(self._figures(points, minutes), separators=(",", ":")).encode()
        with self._lock:
            self._cache[minutes] = (newest, body)
        return body

    def _figures(self, points: list[_Point], minutes: int) -> dict[str, Any]:
        if not points:
            return {
                "now": None,
                "interval_s": self.options.interval_s,
                "window_s": self.options.window_s,
                "series": [],
                "memory_pool": None,
            }
        times = np.array([p.time for p in points])
        shown = np.flatnonzero(times >= times[-1] - minutes * 60.0)
        # Each shown point's window starts at the newest sample at least window_s older (or at the first
        # sample, while the history is younger than a window).
        start = np.maximum(np.searchsorted(times, times[shown] - self.options.window_s, side="right") - 1, 0)
        keys = sorted({k for p in points for k in p.versions})
        last = points[-1]
        memory = np.array([points[i].memory for i in shown])
        return {
            "now": float(times[-1]),
            "interval_s": self.options.interval_s,
            "window_s": self.options.window_s,
            "series": [self._series(points, key, shown, start, times) for key in keys],
            "memory_pool": {
                "allocator": last.allocator,
                "t": _rounded(times[shown]),
                "total_bytes": memory[:, 0].tolist(),
                "in_use_bytes": memory[:, 1].tolist(),
                "locked_bytes": memory[:, 2].tolist(),
            },
        }

    def _series(
        self, points: list[_Point], key: tuple[str, int], shown: np.ndarray, start: np.ndarray, times: np.ndarray
    ) -> dict[str, Any]:
        present = np.array([key in p.versions for p in points])
        first = next(p.versions[key] for p in points if key in p.versions)
        zero = _VersionPoint(
            "", np.zeros_like(first.counters), np.zeros_like(first.latency), np.zeros_like(first.batch_rows), 0
        )
        at = [p.versions.get(key, zero) for p in points]  # a version counts from zero before it loaded
        counters = np.stack([a.counters for a in at]).astype(np.float64)
        latency = np.stack([a.latency for a in at])
        seconds = times[shown] - times[start]
        valid = present[shown] & (seconds > 0)
        span = np.where(valid, seconds, np.nan)
        rates = (counters[shown] - counters[start]) / span[:, None]
        window = latency[shown] - latency[start]
        out: dict[str, Any] = {
            "t": _rounded(times[shown]),
            "requests_per_s": _rounded(rates[:, 0]),
            "errors_per_s": _rounded(rates[:, 1]),
            "shed_per_s": _rounded(rates[:, 2]),
            "candidates_per_s": _rounded(rates[:, 3], 1),
        }
        for p, phase in enumerate(PHASES):
            for q in QUANTILES[phase]:
                ms = quantile(window[:, p], q / 100, LATENCY_BOUNDS_US) / 1000.0
                out[f"{phase}_p{q}_ms"] = _rounded(np.where(valid, ms, np.nan))
        out["queue_rows"] = [at[i].queue_rows if present[i] else None for i in shown]
        newest = points[-1]
        older = np.searchsorted(times, times[-1] - BATCH_ROWS_WINDOW_S, side="right") - 1
        batch_rows = at[-1].batch_rows - at[max(older, 0)].batch_rows
        latest = newest.versions.get(key)
        return {
            "model": key[0],
            "version": key[1],
            "role": latest.role if latest is not None else "",
            "state": newest.states.get(key, "UNLOADED"),
            "points": out,
            "batch_rows": {"bounds": [int(b) for b in BATCH_ROWS_BOUNDS], "counts": batch_rows.tolist()},
        }
