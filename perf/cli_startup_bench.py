"""How long an admin command takes to start: the CPU time (user + system) of `adrank models --server ADDR`.

Issue 34's target is at most 0.5 s of process time (it was 1.8-2.4 s when every command imported numpy, onnx,
ONNX Runtime and the core). The command runs against the tests' stand-in admin server (tests/python/fake_admin.py:
one model, no models loaded), so only the client's own start is measured. Runs alternate with `--baseline`'s
`adrank` (another checkout's venv), when given, so that the machine's load hits both alike; prints each run and
the medians. Loopback only; a bounded number of runs.

    .venv/bin/python perf/cli_startup_bench.py [--runs 7] [--baseline /path/to/other/.venv/bin/adrank]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "python"))
from fake_admin import TOKEN, fake_admin_server


def process_cpu_s(adrank: Path, address: str) -> float:
    env = {**os.environ, "ADRANK_ADMIN_TOKEN": TOKEN}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [str(adrank), "models", "--server", address], capture_output=True, text=True, env=env, timeout=60
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{adrank} models --server {address} failed: {done.stderr.strip()}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--baseline", type=Path, help="another build's adrank, run alternately")
    args = parser.parse_args()
    builds = {"this": Path(sys.executable).with_name("adrank")}
    if args.baseline is not None:
        builds["baseline"] = args.baseline
    times: dict[str, list[float]] = {name: [] for name in builds}
    with fake_admin_server() as address:
        for _ in range(args.runs):
            for name, adrank in builds.items():
                times[name].append(process_cpu_s(adrank, address))
    for name, runs in times.items():
        shown = ", ".join(f"{t:.2f}" for t in runs)
        print(f"{name}: median {statistics.median(runs):.2f} s CPU, max {max(runs):.2f} s ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
