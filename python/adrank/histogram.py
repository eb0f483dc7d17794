"""Histogram arithmetic over the core's cumulative bucket counts (cpp/version_stats.h, cpp/batcher.h).

The core counts each histogram in fixed buckets, `counts[i]` holding the observations in
(bounds[i-1], bounds[i]] and a last count above every bound. From them:
- `quantile`: the q-quantile, interpolated linearly within its bucket as Prometheus' histogram_quantile
  does, over any leading axes at once (the dashboard computes hundreds of windows in one call);
- `cumulative`: Prometheus `le` buckets at a subset of the bounds, which is exact: a cumulative count at
  a bound the core has is a plain sum.

The latency histograms have 20 buckets per decade (a bucket is 12 % wide), 141 bounds from 10 us to
100 s. Exported to Prometheus: every bound from 0.1 ms to 100 ms, where ads ranking latencies live (the
p99 of the 0.2-50 ms range read within a 12 % bucket, interpolated), and 2 per decade outside, so that
a version costs 70 series per latency histogram rather than 142.
"""

from __future__ import annotations

import numpy as np

import adrank._core as core

LATENCY_BOUNDS_US = np.asarray(core.VersionStats.latency_bounds_us, dtype=np.float64)
BATCH_ROWS_BOUNDS = np.asarray(core.BATCH_ROWS_BOUNDS, dtype=np.float64)

_PER_DECADE = 20  # the core's latency buckets (cpp/version_stats.cc)
# Bound indices exported: bound i is 10 us * 10^(i/20); i = 20 is 0.1 ms, i = 80 is 100 ms.
EXPORTED_LATENCY_INDEX = np.asarray(
    [i for i in range(len(LATENCY_BOUNDS_US)) if 20 <= i <= 80 or i % (_PER_DECADE // 2) == 0], dtype=np.int64
)


def quantile(counts: np.ndarray, q: float, bounds: np.ndarray) -> np.ndarray:
    """The q-quantile of histograms `counts[..., len(bounds) + 1]`; NaN where a histogram is empty.

    Within its bucket the quantile is interpolated linearly (the first bucket from 0); one in the
    bucket above every bound is that last bound, as histogram_quantile answers for +Inf.
    """
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum(axis=-1)
    rank = q * total
    cum = np.cumsum(counts, axis=-1)
    # The first bucket whose cumulative count reaches the rank.
    i = np.argmax(cum >= rank[..., None] - 1e-9, axis=-1)
    i_bound = np.minimum(i, len(bounds) - 1)
    upper = bounds[i_bound]
    lower = np.where(i > 0, bounds[np.maximum(i_bound - 1, 0)], 0.0)
    before = np.where(i > 0, np.take_along_axis(cum, np.maximum(i - 1, 0)[..., None], axis=-1)[..., 0], 0.0)
    in_bucket = np.take_along_axis(counts, i[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(in_bucket > 0, (rank - before) / in_bucket, 1.0)
    value = np.where(i >= len(bounds), bounds[-1], lower + (upper - lower) * np.clip(share, 0.0, 1.0))
    return np.where(total > 0, value, np.nan)


def cumulative(counts: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Cumulative counts at the bounds `index` picks, then the total (the +Inf bucket)."""
    cum = np.cumsum(np.asarray(counts, dtype=np.int64))
    return np.append(cum[index], cum[-1])
