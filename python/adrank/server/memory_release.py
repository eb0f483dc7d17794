"""MemoryRelease: gives the heap's free pages back to the system after request bytes have been freed.

Why: glibc's malloc keeps freed memory in its arenas for reuse and returns little of it on its own; a
burst of large requests (or a client whose calls are cancelled en masse when it disconnects) would leave
the process's RSS at its peak for good. Every `interval_s`, once at least `after_bytes` of request bytes
have been released by the front end since the last time (its `released_bytes`, C++ or Python),
`malloc_trim(0)` returns the free pages. It walks the arenas in a few milliseconds at most, and runs
at most once an interval, off the serving threads. Without glibc (no malloc_trim), it does nothing.

Thread-safety: start once, stop from any thread (Ticker).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

from adrank.ticker import Ticker

log = logging.getLogger("adrank.memory")


@dataclass(frozen=True)
class MemoryReleaseOptions:
    # Often enough that memory is back within seconds of a burst, rarely enough to cost nothing.
    interval_s: float = 1.0
    # Two of the largest bundled requests' worth of churn at least: below it there is little to return.
    after_bytes: int = 8 << 20


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryRelease:
    def __init__(self, released_bytes: Callable[[], int], options: MemoryReleaseOptions | None = None) -> None:
        self._options = options or MemoryReleaseOptions()
        self._released_bytes = released_bytes
        self._trim = _malloc_trim()
        self._trimmed_at = 0
        self.trims = 0
        self._ticker = Ticker("adrank-memory-release", self._options.interval_s, self.tick, log)

    def start(self) -> None:
        if self._trim is not None:
            self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()

    def tick(self) -> None:
        released = self._released_bytes()
        if self._trim is None or released - self._trimmed_at < self._options.after_bytes:
            return
        self._trimmed_at = released
        self._trim(0)
        self.trims += 1
