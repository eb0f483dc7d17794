"""Ticker: calls a function every `interval_s` on a daemon thread of its own, until stopped.

The server's periodic work — the repository watcher, the rollout guardrails, the metrics history —
runs this way. A tick that raises is logged with its traceback and the next tick goes on: a bug in one
pass must not end the loop for good. The first tick comes one interval after `start`.

Thread-safety: `start` once; `stop` from any thread, any number of times (it waits for a tick under way).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable


class Ticker:
    def __init__(self, name: str, interval_s: float, tick: Callable[[], None], log: logging.Logger) -> None:
        self._interval_s = interval_s
        self._tick = tick
        self._log = log
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._tick()
            except Exception:
                self._log.exception("%s: a tick failed; the next one goes on", self._name)
