"""What metrics cost at saturation, interleaved second by second inside one server.

perf/metrics_bench.py compares two server processes, and on these virtual machines two processes (and
two rounds a few seconds apart) differ by 5-15 % on their own, more than the cost being measured. Here
one server (the ctr model, C++ front end, one core worker) runs in this process on core 0 and the load
generator's C++ sender on core 1, a closed loop of `--concurrency` callers keeping the core busy for the
whole run. A control thread flips the metrics every `--slot-s` (0.5 s):
- on: every version's counting in the core enabled (VersionStats.enabled), /metrics scraped every
  `--scrape-s` (1 s; Prometheus' default is 15 s) and /dashboard/data polled every 2 s;
- off: counting disabled, nobody scraping: what `adrank serve --no-metrics` runs.
The dashboard's sampler runs in both (one sample every 2 s, ~0.7 ms): it is the only part not switched.

Throughput per slot is read from the core's own batch counters (rows computed, which are counted with
or without metrics), so no clock is shared with the sender. Slots alternate, so drift of the machine
falls on both alike; the first `--settle-s` of each slot is left out (the switch itself). The figure is
the ratio of mean rows/s over on slots to off slots, with the spread of per-pair ratios.

Output: perf/results/metrics-cost-<date>-<sha>.{json,md}. Bounded: `--duration-s` (60 s) of load.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import statistics
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import git_info
from perf.loadgen import LoadGenerator, find_sender
from perf.metrics_bench import Watcher
from perf.report import save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
sys.path.insert(0, str(REPO / "tests" / "python"))


def rows_done(servables: list) -> int:
    return sum(int(s.model.stats()["batch_rows"]) for s in servables)


def run_slots(servables: list, active: threading.Event, args: argparse.Namespace, stop: threading.Event) -> list:
    """Flips the metrics every slot; the rows computed in each slot after its settling time."""
    slots = []
    on = False
    # Slots only while the sender is sending: from its first rows until a second before it stops.
    first = rows_done(servables)
    while rows_done(servables) == first and not stop.wait(0.01):
        pass
    end = time.monotonic() + args.duration_s - 1.0
    while not stop.is_set() and time.monotonic() + args.slot_s < end:
        on = not on
        for s in servables:
            s.stats.enabled = on
        (active.set if on else active.clear)()
        if stop.wait(args.settle_s):
            break
        start_rows, start = rows_done(servables), time.perf_counter()
        if stop.wait(args.slot_s - args.settle_s):
            break
        slots.append({"on": on, "rows_per_s": (rows_done(servables) - start_rows) / (time.perf_counter() - start)})
    for s in servables:
        s.stats.enabled = True
    active.clear()
    return slots


def summarize(slots: list) -> dict:
    pairs = [(a, b) for a, b in zip(slots[::2], slots[1::2], strict=False) if a["on"] and not b["on"]]
    ratios = [a["rows_per_s"] / b["rows_per_s"] for a, b in pairs]
    on = [s["rows_per_s"] for s in slots if s["on"]]
    off = [s["rows_per_s"] for s in slots if not s["on"]]
    return {
        "slots_on": len(on),
        "slots_off": len(off),
        "mean_rows_per_s_on": statistics.fmean(on),
        "mean_rows_per_s_off": statistics.fmean(off),
        "ratio_of_means": statistics.fmean(on) / statistics.fmean(off),
        "median_pair_ratio": statistics.median(ratios),
        "pair_ratio_p10_p90": [statistics.quantiles(ratios, n=10)[0], statistics.quantiles(ratios, n=10)[-1]],
    }


def markdown(report: dict) -> str:
    s = report["summary"]
    return "\n".join(
        [
            f"# Metrics cost at saturation, interleaved, {report['date']} at {report['commit']}",
            "",
            f"`{report['command']}` — one server in the bench process on core 0 (ctr, C++ front end, one worker), "
            f"C++ sender on core 1, closed loop of {report['concurrency']} callers for {report['duration_s']:g} s; "
            f"metrics flipped every {report['slot_s']:g} s (first {report['settle_s']:g} s of each slot left out); "
            f"on: core counting, /metrics every {report['scrape_s']:g} s and /dashboard/data every 2 s.",
            "",
            "| metrics | slots | mean candidates/s |",
            "| --- | ---: | ---: |",
            f"| on | {s['slots_on']} | {s['mean_rows_per_s_on']:,.0f} |",
            f"| off | {s['slots_off']} | {s['mean_rows_per_s_off']:,.0f} |",
            "",
            f"On / off: ratio of means {s['ratio_of_means']:.4f}; median of per-pair ratios "
            f"{s['median_pair_ratio']:.4f} (p10 {s['pair_ratio_p10_p90'][0]:.3f}, "
            f"p90 {s['pair_ratio_p10_p90'][1]:.3f}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=60.0)
    parser.add_argument("--slot-s", type=float, default=0.5)
    parser.add_argument("--settle-s", type=float, default=0.05)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scrape-s", type=float, default=1.0, help="0: no scraping or dashboard (counting only)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    from adrank.metrics.history import MetricsOptions
    from served import MODELS, ServerThread

    # Threads inherit the affinity of the thread that creates them: the server's from core 0, then this
    # thread moves to core 1, where the sender process and the control threads start.
    os.sched_setaffinity(0, {0})
    repo = Path(os.environ.get("TMPDIR", "/tmp")) / f"adrank-metrics-cost-{os.getpid()}"
    repo.mkdir()
    (repo / "ctr").symlink_to(MODELS / "ctr")
    server = ServerThread(repo, workers=1, frontend="cpp", metrics=MetricsOptions()).start()
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    try:
        built = request_sets.build("ctr", 500)
        generator = LoadGenerator(server.target, built.method, built.payloads, built.candidates, sender=find_sender())
        generator.closed_loop(args.concurrency, 2.0, 40000)  # warm
        servables = server.server.models.servables()
        stop, active = threading.Event(), threading.Event()
        slots: list = []
        control = threading.Thread(target=lambda: slots.extend(run_slots(servables, active, args, stop)))
        watcher = None
        with contextlib.ExitStack() as watching:
            if args.scrape_s > 0:
                watcher = watching.enter_context(Watcher(server.server.http_port, args.scrape_s, active))
            control.start()
            result = generator.closed_loop(args.concurrency, args.duration_s, int(args.duration_s * 20000))
            stop.set()
            control.join()
    finally:
        server.stop()
        (repo / "ctr").unlink()
        repo.rmdir()
    report = {
        "date": dt.date.today().isoformat(),
        "commit": git_info()["sha"],
        "command": "python perf/metrics_cost.py " + " ".join(sys.argv[1:]),
        "concurrency": args.concurrency,
        "duration_s": args.duration_s,
        "slot_s": args.slot_s,
        "settle_s": args.settle_s,
        "scrape_s": args.scrape_s,
        "errors": result.errors,
        "summary": summarize(slots),
        "scrapes": watcher.scrapes if watcher else 0,
        "dashboard_polls": watcher.dashboard_polls if watcher else 0,
        "slots": slots,
    }
    save(report, args.out / f"metrics-cost-{report['date']}-{report['commit']}", markdown(report))


if __name__ == "__main__":
    main()
