"""Guardrails: a canary or shadow version compared with stable over a sliding window, and rolled back
when it is slower, fails more, or scores differently.

Every `interval_s` the monitor snapshots each compared version's VersionStats (cpp/version_stats.h:
cumulative counters and histograms) and keeps the snapshots of the last `window_s`; the window's figures
are the newest snapshot minus the oldest, so a window costs a subtraction. Then, for each candidate
with at least `min_requests` requests in the window (and stable with some):
- latency: p99 of the candidate over p99 of stable — service latency (queue + compute) for a canary,
  compute alone for a shadow, whose queueing is deferred by design — above `max_latency_ratio`;
- errors: the candidate's failure rate minus stable's above `max_error_rate` (dropped requests —
  deadlines, full queues, shed shadows — are load, not failures);
- score shift: the population stability index of the candidate's scores against stable's, over the
  deciles of stable's scores, above `max_psi`.
Any breach calls `on_breach(model, role, verdict)`, which rolls the candidate back and audits it with
the verdict's figures. A candidate is judged against the window it has, not before: a version that
just started has no verdict.

Thread-safety: the monitor runs on its own thread; `evaluate` and the figures are pure functions.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import adrank._core as core
from adrank.histogram import LATENCY_BOUNDS_US, quantile
from adrank.log_format import log_fields
from adrank.rollout.policy import GuardrailPolicy
from adrank.ticker import Ticker

log = logging.getLogger("adrank.guardrails")

# A proportion of 0 would make the PSI infinite; 1e-4 is the customary floor.
PSI_FLOOR = 1e-4


@dataclass(frozen=True)
class Figures:
    """One version's requests and histograms over a window."""

    ok: int = 0
    failed: int = 0
    dropped: int = 0
    latency_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    compute_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    score_counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def requests(self) -> int:
        return self.ok + self.failed + self.dropped

    @property
    def error_rate(self) -> float:
        answered = self.ok + self.failed
        return self.failed / answered if answered else 0.0

    @staticmethod
    def of(snapshot: dict[str, Any]) -> Figures:
        return Figures(
            int(snapshot["ok"]),
            int(snapshot["failed"]),
            int(snapshot["dropped"]),
            np.asarray(snapshot["latency_counts"], np.int64),
            np.asarray(snapshot["compute_counts"], np.int64),
            np.asarray(snapshot["score_counts"], np.int64),
        )

    def __sub__(self, older: Figures) -> Figures:
        return Figures(
            self.ok - older.ok,
            self.failed - older.failed,
            self.dropped - older.dropped,
            self.latency_counts - older.latency_counts,
            self.compute_counts - older.compute_counts,
            self.score_counts - older.score_counts,
        )


def quantile_us(counts: np.ndarray, q: float) -> float:
    """The q-quantile of a latency histogram (VersionStats buckets), interpolated within its bucket."""
    return float(quantile(counts, q, LATENCY_BOUNDS_US))


def population_stability_index(expected: np.ndarray, actual: np.ndarray, groups: int = 10) -> float:
    """PSI of `actual` against `expected` (fine histograms on the same bins), over `groups` quantile
    groups of `expected`: sum of (a - e) * ln(a / e) over the groups' proportions."""
    e_total, a_total = expected.sum(), actual.sum()
    if e_total == 0 or a_total == 0:
        return math.nan
    # Group boundaries where expected's cumulative share crosses k / groups: each group holds ~1/groups of
    # stable's scores, however its scores are spread over the fine bins.
    cumulative = np.cumsum(expected) / e_total
    edges = np.unique(np.searchsorted(cumulative, np.arange(1, groups) / groups, side="left") + 1)
    e = np.add.reduceat(expected, np.concatenate([[0], edges[edges < len(expected)]])) / e_total
    a = np.add.reduceat(actual, np.concatenate([[0], edges[edges < len(actual)]])) / a_total
    e = np.maximum(e, PSI_FLOOR)
    a = np.maximum(a, PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class Verdict:
    breached: bool
    reasons: list[str]
    figures: dict[str, Any]


def evaluate(role: str, stable: Figures, candidate: Figures, policy: GuardrailPolicy) -> Verdict | None:
    """The guardrails' verdict on a candidate ("canary" or "shadow"); None until the window holds enough."""
    if candidate.requests < policy.min_requests or stable.ok == 0:
        return None
    histogram = "compute_counts" if role == "shadow" else "latency_counts"
    stable_p99 = quantile_us(getattr(stable, histogram), 0.99)
    candidate_p99 = quantile_us(getattr(candidate, histogram), 0.99)
    ratio = candidate_p99 / stable_p99 if candidate.ok and stable_p99 > 0 else math.nan
    error_excess = candidate.error_rate - stable.error_rate
    psi = population_stability_index(stable.score_counts, candidate.score_counts)
    figures = {
        "role": role,
        "window_requests": {"stable": stable.requests, role: candidate.requests},
        "p99_us": {"stable": round(stable_p99, 1), role: round(candidate_p99, 1)},
        "latency": "compute" if role == "shadow" else "queue+compute",
        "p99_ratio": round(ratio, 3),
        "error_rate": {"stable": round(stable.error_rate, 5), role: round(candidate.error_rate, 5)},
        "psi": round(psi, 4),
        "limits": {
            "max_latency_ratio": policy.max_latency_ratio,
            "max_error_rate": policy.max_error_rate,
            "max_psi": policy.max_psi,
        },
    }
    reasons = []
    if ratio > policy.max_latency_ratio:
        reasons.append(f"p99 {candidate_p99:.0f} us is {ratio:.2f}x stable's {stable_p99:.0f} us")
    if error_excess > policy.max_error_rate:
        reasons.append(f"error rate {candidate.error_rate:.2%} vs stable {stable.error_rate:.2%}")
    if psi > policy.max_psi:
        reasons.append(f"score distribution shifted: PSI {psi:.3f} > {policy.max_psi}")
    return Verdict(bool(reasons), reasons, figures)


@dataclass(frozen=True)
class Comparison:
    """A candidate to judge: the model, its role, and the stats of it and of stable."""

    model: str
    role: str
    stable: core.VersionStats
    candidate: core.VersionStats
    policy: GuardrailPolicy
    key: tuple[str, str, int, int]  # (model, role, stable version, candidate version): a new window per pair


class GuardrailMonitor:
    """Runs the guardrails every `interval_s` over what `comparisons()` returns, on its own thread."""

    def __init__(
        self,
        comparisons: Callable[[], list[Comparison]],
        on_breach: Callable[[Comparison, Verdict], None],
        tick_s: float = 0.25,
    ) -> None:
        self._comparisons = comparisons
        self._on_breach = on_breach
        self._windows: dict[tuple[str, str, int, int], deque[tuple[float, Figures, Figures]]] = {}
        self._last_run: dict[tuple[str, str, int, int], float] = {}
        self._ticker = Ticker("adrank-guardrails", tick_s, lambda: self.check(time.monotonic()), log)
        # The latest verdict by (model, role, candidate version) while the comparison lasts: the metrics.
        self.last_verdicts: dict[tuple[str, str, int], Verdict] = {}

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def check(self, now: float) -> None:
        """One pass: snapshot every compared version that is due, judge the windows."""
        comparisons = self._comparisons()
        live = {c.key for c in comparisons}
        for key in list(self._windows):
            if key not in live:
                del self._windows[key]
                self._last_run.pop(key, None)
        live_candidates = {(model, role, version) for model, role, _, version in live}
        for verdict_key in list(self.last_verdicts):
            if verdict_key not in live_candidates:
                del self.last_verdicts[verdict_key]
        for c in comparisons:
            if not c.policy.enabled or now - self._last_run.get(c.key, -math.inf) < c.policy.interval_s:
                continue
            self._last_run[c.key] = now
            window = self._windows.setdefault(c.key, deque())
            window.append((now, Figures.of(c.stable.snapshot()), Figures.of(c.candidate.snapshot())))
            while len(window) > 2 and window[1][0] <= now - c.policy.window_s:
                window.popleft()
            if len(window) < 2:
                continue
            _, stable_old, candidate_old = window[0]
            _, stable_new, candidate_new = window[-1]
            verdict = evaluate(c.role, stable_new - stable_old, candidate_new - candidate_old, c.policy)
            if verdict is None:
                continue
            self.last_verdicts[(c.model, c.role, c.key[3])] = verdict
            if verdict.breached:
                log.warning(
                    "guardrail breach: %s %s: %s",
                    c.model,
                    c.role,
                    "; ".join(verdict.reasons),
                    extra=log_fields(model=c.model, version=c.key[3]),
                )
                del self._windows[c.key]
                self._on_breach(c, verdict)
