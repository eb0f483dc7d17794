"""`make bench-metrics`: what metrics cost at saturation — the same server with metrics on and off.

Two `adrank serve` processes of this checkout run the ctr model on core 0 (`taskset -c 0`, one core
worker each): one with metrics (`--metrics`, the default), one with `--no-metrics` (no per-version
counting in the core, no /metrics, no dashboard history). This process and the load generator's C++
sender run on core 1. Only one server is loaded at a time; the other idles.

Rounds alternate on / off (`--rounds` of each, `--round-s` seconds), each a closed loop of
`--concurrency` callers over the bench's ctr request set (the same set the perf harness uses): enough
callers to keep the server's core busy, so the achieved candidates/s is its throughput ceiling. While
the metrics server is loaded it is scraped as a demanding Prometheus would be and watched by an open
dashboard: GET /metrics every `--scrape-s` (1 s; Prometheus' default is 15 s) and /dashboard/data every
2 s. Alternating rounds spread the machine's drift over both; the figures are medians over rounds.

Output: perf/results/metrics-<date>-<sha>.{json,md}: per round candidates/s, the server's CPU time per
request (from /proc: time the hypervisor steals from the core is not in it, so it is the steadier
figure on a noisy virtual machine), p50 and p99; the on/off ratios of the medians (target: throughput
>= 0.98, CPU per request <= 1.02). `--scrape-s 0` leaves the metrics server unscraped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import adrank_server, free_port, git_info
from perf.loadgen import LoadGenerator, find_sender
from perf.report import save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
METRICS = ("candidates_per_s", "server_cpu_us_per_request", "p50_ms", "p99_ms")


class Served:
    """One `adrank serve` of the bundled ctr model on core 0, with or without metrics."""

    def __init__(self, work: Path, metrics: bool) -> None:
        self.metrics = metrics
        self.http_port = free_port()
        repo = work / "repo"
        if not repo.exists():
            repo.mkdir(parents=True)
            (repo / "ctr").symlink_to(REPO / "models" / "ctr")
        options = ["--http-port", str(self.http_port), "--workers", "1", "--poll-interval", "0"]
        options.append("--metrics" if metrics else "--no-metrics")
        name = f"adrank-metrics-{'on' if metrics else 'off'}"
        self.process = adrank_server(name, repo, options, 0, work / f"{name}.log")
        self.target = ""

    def wait_serving(self) -> None:
        self.target = self.process.wait_ready()

    def cpu_s(self) -> float:
        return self.process.cpu_s()

    def stop(self) -> None:
        self.process.stop()


class Watcher:
    """A scraper and an open dashboard on a metrics server: GET /metrics every `scrape_s` and
    /dashboard/data every 2 s, as Prometheus and an open page would; with `active`, only while it is set."""

    def __init__(self, http_port: int, scrape_s: float, active: threading.Event | None = None) -> None:
        self._base = f"http://127.0.0.1:{http_port}"
        self._scrape_s = scrape_s
        self._active = active
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.scrapes = 0
        self.scrape_bytes = 0
        self.dashboard_polls = 0

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        next_scrape = next_poll = 0.0
        # Gated, it looks again every 20 ms, so that it stops soon after `active` is cleared.
        step = 0.02 if self._active is not None else math.inf
        while not self._stop.is_set():
            if self._active is not None and not self._active.wait(0.05):
                continue
            now = time.monotonic()
            if now >= next_scrape:
                request = urllib.request.Request(f"{self._base}/metrics", headers={"Accept-Encoding": "gzip"})
                with urllib.request.urlopen(request, timeout=5) as reply:
                    self.scrape_bytes += len(reply.read())
                self.scrapes += 1
                next_scrape = now + self._scrape_s
            if now >= next_poll:
                with urllib.request.urlopen(f"{self._base}/dashboard/data?minutes=10", timeout=5) as reply:
                    reply.read()
                self.dashboard_polls += 1
                next_poll = now + 2.0
            self._stop.wait(min(step, max(0.0, min(next_scrape, next_poll) - time.monotonic())))


def one_round(server: Served, generator: LoadGenerator, args: argparse.Namespace) -> dict[str, float]:
    cpu_before = server.cpu_s()
    result = generator.closed_loop(args.concurrency, args.round_s, int(args.round_s * 20000))
    cpu = server.cpu_s() - cpu_before
    errors = sum(result.errors.values()) if result.errors else 0
    return {
        "candidates_per_s": result.candidates_per_s,
        "requests_per_s": result.achieved_rate,
        "p50_ms": result.latency_ms["p50"],
        "p99_ms": result.latency_ms["p99"],
        "errors": errors,
        "generator_cpu": result.generator_cpu,
        # CPU the server spent per request answered: unlike throughput, it does not count time the
        # machine's hypervisor took the core away (these machines are virtual and noisy).
        "server_cpu_us_per_request": cpu * 1e6 / max(result.ok, 1),
    }


def median(rounds: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def markdown(report: dict) -> str:
    on, off = report["on"], report["off"]
    lines = [
        f"# Metrics cost at saturation, {report['date']} at {report['commit']}",
        "",
        f"`{report['command']}` — two servers of this checkout on core 0 (one worker each), load generator on "
        f"core 1, ctr, closed loop of {report['concurrency']} callers, {report['rounds']} alternating rounds of "
        f"{report['round_s']:g} s each. With metrics, /metrics scraped every {report['scrape_s']:g} s and "
        "/dashboard/data polled every 2 s during its rounds.",
        "",
        "| round | metrics | candidates/s | requests/s | server CPU us/request | p50 ms | p99 ms | errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, (a, b) in enumerate(zip(on, off, strict=True)):
        for name, r in (("on", a), ("off", b)):
            lines.append(
                f"| {i + 1} | {name} | {r['candidates_per_s']:,.0f} | {r['requests_per_s']:,.0f} | "
                f"{r['server_cpu_us_per_request']:.1f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |"
            )
    ratio = report["ratio"]
    lines += [
        "",
        "| median | candidates/s | server CPU us/request | p50 ms | p99 ms |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| metrics {name} | {median(rounds, 'candidates_per_s'):,.0f} | "
            f"{median(rounds, 'server_cpu_us_per_request'):.1f} | {median(rounds, 'p50_ms'):.3f} | "
            f"{median(rounds, 'p99_ms'):.3f} |"
            for name, rounds in (("on", on), ("off", off))
        ),
        f"| on / off | {ratio['candidates_per_s']:.3f} | {ratio['server_cpu_us_per_request']:.3f} | "
        f"{ratio['p50_ms']:.3f} | {ratio['p99_ms']:.3f} |",
        "",
        f"Scrapes during the metrics rounds: {report['scrapes']} ({report['scrape_kib']:.0f} KiB gzipped each); "
        f"dashboard polls: {report['dashboard_polls']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each, alternating")
    parser.add_argument("--round-s", type=float, default=6.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scrape-s", type=float, default=1.0, help="0: no scraper, no dashboard")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    built = request_sets.build("ctr", 500)
    sender = find_sender()
    on: list[dict[str, float]] = []
    off: list[dict[str, float]] = []
    scrapes = scrape_bytes = polls = 0
    with tempfile.TemporaryDirectory(prefix="adrank-metrics-bench-") as tmp:
        servers = [Served(Path(tmp), metrics=True), Served(Path(tmp), metrics=False)]
        try:
            for server in servers:
                server.wait_serving()
            generators = [
                LoadGenerator(s.target, built.method, built.payloads, built.candidates, sender=sender) for s in servers
            ]
            for g in generators:  # warm both: connections, allocator, the predictor's samples
                g.closed_loop(args.concurrency, 2.0, 40000)
            for i in range(args.rounds):
                # Alternate which goes first, so neither always follows the other.
                order = (0, 1) if i % 2 == 0 else (1, 0)
                for k in order:
                    if not servers[k].metrics:
                        off.append(one_round(servers[k], generators[k], args))
                    elif args.scrape_s <= 0:
                        on.append(one_round(servers[k], generators[k], args))
                    else:
                        with Watcher(servers[k].http_port, args.scrape_s) as watcher:
                            on.append(one_round(servers[k], generators[k], args))
                        scrapes += watcher.scrapes
                        scrape_bytes += watcher.scrape_bytes
                        polls += watcher.dashboard_polls
                print(f"round {i + 1}: on {on[-1]['candidates_per_s']:,.0f}, off {off[-1]['candidates_per_s']:,.0f}")
        finally:
            for server in servers:
                server.stop()
    report = {
        "date": dt.date.today().isoformat(),
        "commit": git_info()["sha"],
        "command": "python perf/metrics_bench.py " + " ".join(sys.argv[1:]),
        "sender": "grpc++ (adrank_loadgen)" if sender else "grpc.aio",
        "rounds": args.rounds,
        "round_s": args.round_s,
        "concurrency": args.concurrency,
        "scrape_s": args.scrape_s,
        "on": on,
        "off": off,
        "ratio": {k: median(on, k) / median(off, k) for k in METRICS},
        "scrapes": scrapes,
        "scrape_kib": scrape_bytes / max(scrapes, 1) / 1024,
        "dashboard_polls": polls,
    }
    save(report, args.out / f"metrics-{report['date']}-{report['commit']}", markdown(report))


if __name__ == "__main__":
    main()
