"""The server's log of the calls it failed: one error record per call answered INTERNAL (a backend that raised,
an output that is not what the model declares), with the `model`, `version`, `tenant` and `request_id` fields
a JSON log line carries (log_format.py), so that an operator finds the call a caller complains about.

The core reports them (cpp/server_errors.h, from the one Rank contract both front ends and KServe v2 share);
`install` makes this module's `log_call_error` the process's sink, at each server's start (idempotent: the sink
is this one function, whichever server set it). Only INTERNAL is logged: a caller's mistake or a refusal is its
answer and a metric, never a server log line.

A backend that fails every batch fails every call: at most RATE_PER_S records a second are written (a token
bucket of BURST), and the next record written says how many were left out meanwhile, so the log stays readable
and the GIL the sink takes on a worker stays rare. Thread-safety: called from the core's workers, any number.
"""

from __future__ import annotations

import logging
import threading
import time

import adrank._core as core
from adrank.log_format import log_fields

log = logging.getLogger("adrank.calls")

# 10 a second, after a burst of 20: enough to see which models, tenants and requests fail, not a flood.
RATE_PER_S = 10.0
BURST = 20.0


class _Budget:
    """A token bucket: whether a record may be written now, and how many were refused since the last one."""

    def __init__(self, rate_per_s: float, burst: float) -> None:
        self._rate, self._burst = rate_per_s, burst
        self._tokens, self._at = burst, time.monotonic()
        self._left_out = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """The number left out before this record, or None if this one is left out too."""
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
            self._at = now
            if self._tokens < 1:
                self._left_out += 1
                return None
            self._tokens -= 1
            left_out, self._left_out = self._left_out, 0
            return left_out


_budget = _Budget(RATE_PER_S, BURST)


def log_call_error(model: str, version: int, tenant: str, request_id: str, message: str) -> None:
    left_out = _budget.take()
    if left_out is None:
        return
    more = f" ({left_out} more not logged since the last)" if left_out else ""
    log.error(
        "%s version %d answered a call INTERNAL: %s%s",
        model,
        version,
        message,
        more,
        extra=log_fields(model=model, version=version, tenant=tenant or "default", request_id=request_id or None),
    )


def install() -> None:
    """Makes `log_call_error` the core's sink for the calls it answers INTERNAL."""
    core.set_server_error_log(log_call_error)
