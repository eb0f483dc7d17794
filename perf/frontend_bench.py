"""Both front ends side by side on one core: closed-loop Rank calls answered per second of server CPU.

    .venv/bin/python perf/frontend_bench.py [--runs 3] [--duration 10] [--concurrency 16]
        [--frontends cpp,python] [--builds before=/tmp/old/.venv/bin/adrank,after=.venv/bin/adrank]

Each front end (`adrank serve --frontend cpp|python --workers 1`) of each build is pinned to core 0 and loaded
from core 1 by the project's sender (perf/loadgen.py) with `--concurrency` callers for `--duration` seconds, on
the bundled ctr model's Criteo requests. Runs alternate between builds and front ends (a fresh server each), so
that the machine's drift falls on all of them alike. It reports per run the calls answered OK, their p50 and
p99, and the server's CPU seconds (from /proc). Bounded: runs x builds x front ends x duration, each server
stopped after its run. Loopback only.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from perf import requests as request_sets  # noqa: E402
from perf.bench import ADRANK_READY, ServerProcess, running  # noqa: E402
from perf.loadgen import LoadGenerator, find_sender  # noqa: E402

SERVER_CORE, SENDER_CORE = 0, 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--frontends", default="cpp,python")
    parser.add_argument("--builds", default=f"this={Path(sys.executable).parent / 'adrank'}", help="LABEL=ADRANK,...")
    args = parser.parse_args(argv)
    os.sched_setaffinity(0, {SENDER_CORE})
    built = request_sets.build("ctr", 1000)
    builds = dict(item.split("=", 1) for item in args.builds.split(","))
    print("| build | front end | run | OK calls/s | p50 (ms) | p99 (ms) | server CPU (s) | OK calls per CPU s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(1, args.runs + 1):
            for label, adrank in builds.items():
                for frontend in args.frontends.split(","):
                    command = [adrank, "serve", "--repository", str(REPO / "models"), "--host", "127.0.0.1"]
                    command += ["--grpc-port", "0", "--http-port", "0", "--workers", "1", "--frontend", frontend]
                    log_file = Path(scratch) / f"{label}-{frontend}-{run}.log"
                    server = ServerProcess(f"{label}-{frontend}", command, ADRANK_READY, SERVER_CORE, log_file, None)
                    with running(server):
                        target = server.wait_ready()
                        sender = find_sender()
                        generator = LoadGenerator(target, built.method, built.payloads, built.candidates, sender=sender)
                        before = server.cpu_s()
                        result = generator.closed_loop(args.concurrency, args.duration, 1_000_000)
                        cpu = server.cpu_s() - before
                    rate = result.ok / result.elapsed_s
                    p50, p99 = result.latency_ms["p50"], result.latency_ms["p99"]
                    row = [label, frontend, run, f"{rate:,.0f}", f"{p50:.2f}", f"{p99:.2f}", f"{cpu:.2f}"]
                    print("| " + " | ".join(map(str, [*row, f"{result.ok / cpu:,.0f}"])) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
