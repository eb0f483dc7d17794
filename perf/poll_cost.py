"""How long one repository poll holds the GIL: the CPU time of `ModelManager.reconcile()` with nothing changed.

Why it matters (issue 35, the light-load tail): the repository watcher polls every `--poll-interval` (2 s) on a
Python thread, holding the GIL for the whole pass, and a model worker needs the GIL twice a batch (before and after
ONNX Runtime). A batch that arrives during a poll waits for it. The figure is the thread's CPU time (time.thread_time)
per poll, after one reconcile that loads the repository's models, so it is what a steady server pays at each poll.
It measured 13.8 ms on the bundled repository with PyYAML's pure-Python parser and 3.3 ms with libyaml's (2-core
AMD EPYC).

    .venv/bin/python perf/poll_cost.py [--repository models] [--polls 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def poll_cpu_ms(repository: Path, polls: int) -> list[float]:
    """The CPU time of each of `polls` reconciles of `repository` after the one that loads it, in ms."""
    import adrank._core as core
    from adrank.lifecycle.manager import ManagerOptions, ModelManager
    from adrank.repository import ModelRepository

    pool = core.ThreadPool(num_workers=1)
    manager = ModelManager(pool, ModelRepository(repository), ManagerOptions(poll_interval_s=0))
    manager.reconcile()  # loads and warms every model: not a steady poll
    times = []
    for _ in range(polls):
        started = time.thread_time()
        manager.reconcile()
        times.append((time.thread_time() - started) * 1e3)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repository", type=Path, default=REPO / "models")
    parser.add_argument("--polls", type=int, default=40)
    args = parser.parse_args(argv)
    if args.polls < 1:
        parser.error("--polls: at least 1")
    times = poll_cpu_ms(args.repository, args.polls)
    print(
        f"reconcile of {args.repository} with nothing changed: median {statistics.median(times):.2f} ms of CPU,"
        f" max {max(times):.2f} ms ({args.polls} polls)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
