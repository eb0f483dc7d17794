"""VersionCounts and their increase between two samples, surviving counter resets.

Contract: `increase(now, before)` is how much a version's cumulative counts grew from the sample `before`
to the sample `now`, never negative. A version unloaded and loaded again (a rollback reloading it, a
repository change) starts its counters at 0, so its counts can fall between two samples. As Prometheus's
rate() does, a count lower than before means a reset, and the new value is counted from 0: the increase
is then the new value itself. A version's counters reset together (they live in one VersionStats and
one queue), so a fall in any of them — a counter or a histogram bucket — counts all of them from 0;
checking them one by one would miss the reset wherever a new count had already passed its old one.
A version absent from the sample before (loaded since) counts from 0 too.

A reset between two samples loses what the old load counted after the first of them, as with
Prometheus: sampling every 2 s keeps that small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COUNTERS = ("requests", "errors", "shed", "candidates")


@dataclass(frozen=True)
class VersionCounts:
    """A version's counts, cumulative as the core reports them or the increase of two samples."""

    counters: np.ndarray  # int64 [len(COUNTERS)]
    latency: np.ndarray  # int64 [phases, latency buckets]: histograms
    batch_rows: np.ndarray  # int64 [batch-rows buckets]: histogram

    def __add__(self, other: VersionCounts) -> VersionCounts:
        return VersionCounts(
            self.counters + other.counters, self.latency + other.latency, self.batch_rows + other.batch_rows
        )

    def __sub__(self, other: VersionCounts) -> VersionCounts:
        return VersionCounts(
            self.counters - other.counters, self.latency - other.latency, self.batch_rows - other.batch_rows
        )

    def fell_below(self, before: VersionCounts) -> bool:
        """Whether any count is lower than in `before`: the version's counters were reset in between."""
        return bool(
            np.any(self.counters < before.counters)
            or np.any(self.latency < before.latency)
            or np.any(self.batch_rows < before.batch_rows)
        )


def increase(now: VersionCounts, before: VersionCounts | None) -> VersionCounts:
    """The growth from `before` (None: the version was not there) to `now`; a reset counts `now` from 0."""
    if before is None or now.fell_below(before):
        return now
    return now - before


def total(increases: list[VersionCounts]) -> VersionCounts | None:
    """The sum of consecutive increases: the growth over their whole span (None: no increase given)."""
    if not increases:
        return None
    out = increases[0]
    for more in increases[1:]:
        out = out + more
    return out
