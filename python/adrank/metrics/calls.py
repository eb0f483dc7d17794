"""Calls by status code over time, for the dashboard's status-code chart: what the front ends answered.

Contract: `call_counts(sample)` is the server's cumulative answers by gRPC status code — every Rank and KServe
inference call of either front end, refused or not (the core's RankAdmission counts each once) — plus the
requests that named a model no version serves (the core registry's count; they are among the NOT_FOUND
calls and in no version's counts, so this is the only place they show). `call_rates` turns the increase of
those counts over a window into calls per second; the increase is increase.py's, so a count that falls
(a new server behind the same page) starts from 0 and no rate is ever negative.

Pure functions over samples; thread-safety is the caller's (history.py takes them under its lock).
"""

from __future__ import annotations

import numpy as np

from adrank.metrics.increase import VersionCounts
from adrank.metrics.sample import Sample
from adrank.status import StatusCode

CODES = tuple(code.name for code in StatusCode)  # gRPC's numbering: CODES[n] is code n
UNKNOWN_MODEL = "unknown_model"  # the NOT_FOUND requests that named a model no version serves
_NO_HISTOGRAM = np.zeros((0, 0), np.int64)
_NO_BUCKETS = np.zeros(0, np.int64)


def call_counts(sample: Sample) -> VersionCounts:
    """The sample's answers by code (CODES order), then its unknown-model requests, as one counter row."""
    by_code = np.zeros(len(CODES), np.int64)
    known = min(len(CODES), len(sample.calls))
    by_code[:known] = sample.calls[:known]
    counters = np.append(by_code, np.int64(sample.unknown_model_requests))
    return VersionCounts(counters, _NO_HISTOGRAM, _NO_BUCKETS)


def call_rates(window: VersionCounts | None, seconds: float) -> dict[str, float | None]:
    """Calls per second by code name, and UNKNOWN_MODEL, over a window (all None: no window yet)."""
    names = (*CODES, UNKNOWN_MODEL)
    if window is None or seconds <= 0:
        return dict.fromkeys(names)
    return {name: round(float(count) / seconds, 3) for name, count in zip(names, window.counters, strict=True)}


def calls_layout(times: list[float], rates: list[dict[str, float | None]]) -> dict[str, object]:
    """The chart's series: per code answered at least once in the points shown (OK always), and the
    unknown-model requests, their rates at each point; `current` is the newest point's."""
    shown = [name for name in CODES if name == "OK" or any(r[name] for r in rates)]
    return {
        "t": [round(t, 3) for t in times],
        "codes": {name: [r[name] for r in rates] for name in shown},
        UNKNOWN_MODEL: [r[UNKNOWN_MODEL] for r in rates],
        "current": dict(rates[-1]) if rates else None,
    }
