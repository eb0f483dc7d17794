"""The fleet benchmark (`make bench-fleet`): candidates/s and latency with 1, 2 and 3 `adrank serve` replicas
behind one AsyncRankClient with a target list (round_robin, retries: python/adrank/client_retry.py), and the
curve expected for N replicas (perf/fleet_model.py) from what one replica measured.

What runs: each replica serves the bundled ctr model (`--workers 1`: one core's worth each) on loopback; the
client sends ctr auctions of `--candidates` candidates (Criteo-shaped features, drawn once before the clock
starts) in closed loop, `--concurrency` calls in flight per replica, for `--duration` seconds after a warm-up.
Per replica count: calls/s, candidates/s, p50/p99 latency, failed calls, and how the calls spread over the
replicas (each replica's own adrank_rank_calls_total, so the client's balancing is measured, not assumed).

On a machine with fewer cores than replicas + client (this project's: 2 cores), the replicas share cores with
each other and with the client: the measured curve flattens where the cores run out, not where the fleet
would. That is why the expected curve for N replicas is computed (fleet_model.py) from the single-replica
capacity and latency distribution measured here, with the client's round_robin, rather than read off the
measured points. The report says both, and the core count.

Bounded: every run stops at --duration; every call has a deadline; replicas are stopped with SIGTERM (SIGKILL
after 30 s). Loopback only.

    python perf/fleet_bench.py [--replicas 1 2 3] [--duration 10] [--candidates 100] [--concurrency 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perf.fleet_model import FleetModel, expected_curve  # noqa: E402

SERVING = re.compile(r"SERVING .* on grpc (?P<grpc>\S+), http (?P<http>\S+)")


@dataclass(frozen=True)
class FleetPoint:
    replicas: int
    calls_per_s: float
    candidates_per_s: float
    p50_ms: float
    p99_ms: float
    failed: int
    calls_per_replica: list[float]  # from each replica's own counter


class Replica:
    def __init__(self, repository: Path, workers: int) -> None:
        command = [
            sys.executable,
            "-c",
            "from adrank.cli import main; main()",
            "serve",
            "--repository",
            str(repository),
            "--grpc-port",
            "0",
            "--http-port",
            "0",
            "--workers",
            str(workers),
        ]
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
        assert self.process.stderr is not None
        deadline = time.monotonic() + 180
        while True:
            line = self.process.stderr.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"adrank serve did not reach SERVING (exit {self.process.poll()})")
            match = SERVING.search(line)
            if match:
                self.grpc, self.http = match["grpc"], match["http"]
                break
        threading.Thread(target=self.process.stderr.read, daemon=True).start()

    def ok_calls(self) -> float:
        with urllib.request.urlopen(f"http://{self.http}/metrics", timeout=10) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith('adrank_rank_calls_total{code="OK"}'):
                    return float(line.split()[-1])
        return 0.0

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def auctions(candidates: int, count: int = 64, seed: int = 11) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {
            "dense": rng.integers(0, 100, size=(candidates, 13)).astype(np.float32),
            "sparse": rng.integers(0, 2**40, size=(candidates, 26), dtype=np.int64),
        }
        for _ in range(count)
    ]


async def closed_loop(targets: list[str], concurrency: int, duration_s: float, candidates: int) -> tuple:
    from adrank.client import AsyncRankClient, RankError

    requests = auctions(candidates)
    latencies: list[float] = []
    failed = 0
    async with AsyncRankClient(targets) as client:
        for features in requests[:8]:  # warm-up: connections up, every replica's batch sizes touched
            await client.rank(["ctr"], features, timeout=10)
        stop_at = time.perf_counter() + duration_s

        async def caller(index: int) -> None:
            nonlocal failed
            i = index
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    await client.rank(["ctr"], requests[i % len(requests)], timeout=5)
                    latencies.append(time.perf_counter() - started)
                except RankError:
                    failed += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return np.array(latencies), failed, elapsed


def measure(replicas: list[Replica], concurrency: int, duration_s: float, candidates: int) -> FleetPoint:
    before = [r.ok_calls() for r in replicas]
    latency, failed, elapsed = asyncio.run(
        closed_loop([r.grpc for r in replicas], concurrency * len(replicas), duration_s, candidates)
    )
    spread = [r.ok_calls() - b for r, b in zip(replicas, before, strict=True)]
    calls = len(latency) / elapsed
    return FleetPoint(
        replicas=len(replicas),
        calls_per_s=round(calls, 1),
        candidates_per_s=round(calls * candidates, 0),
        p50_ms=round(float(np.percentile(latency, 50)) * 1000, 3),
        p99_ms=round(float(np.percentile(latency, 99)) * 1000, 3),
        failed=failed,
        calls_per_replica=spread,
    )


def run(args: argparse.Namespace) -> dict:
    import shutil
    import tempfile

    repository = Path(tempfile.mkdtemp(prefix="adrank-fleet-")) / "repo"
    shutil.copytree(REPO / "models" / "ctr", repository / "ctr", ignore=shutil.ignore_patterns("*.py", "*.md"))
    points: list[FleetPoint] = []
    single_latency = np.empty(0)
    for count in args.replicas:
        replicas = [Replica(repository, args.workers) for _ in range(count)]
        try:
            points.append(measure(replicas, args.concurrency, args.duration, args.candidates))
            if count == 1:  # one replica's latency distribution feeds the model
                single_latency, _, _ = asyncio.run(closed_loop([replicas[0].grpc], 1, args.duration, args.candidates))
        finally:
            for replica in replicas:
                replica.stop()
        print(json.dumps(asdict(points[-1])), flush=True)
    one = next(p for p in points if p.replicas == 1)
    model = FleetModel(
        service_times_s=single_latency,
        capacity_calls_per_s=one.calls_per_s,
        client_overhead_s=args.client_overhead_us / 1e6,
    )
    curve = expected_curve(model, [1, 2, 4, 8, 16, 32, 64, 128], utilisation=args.utilisation, seed=5)
    return {
        "machine": {"cpus": os.cpu_count(), "note": "replicas and client share these cores"},
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "measured": [asdict(p) for p in points],
        "expected": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds measured per replica count.")
    parser.add_argument("--candidates", type=int, default=100, help="Candidates per auction.")
    parser.add_argument("--concurrency", type=int, default=4, help="Calls in flight per replica.")
    parser.add_argument("--workers", type=int, default=1, help="Core worker threads per replica.")
    parser.add_argument("--utilisation", type=float, default=0.7, help="Per-replica load of the expected curve.")
    parser.add_argument(
        "--client-overhead-us", type=float, default=300.0, help="Client CPU per call in the model (grpc.aio)."
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default: perf/results/fleet-<date>.json).")
    args = parser.parse_args()
    if 1 not in args.replicas:
        parser.error("--replicas must include 1: the expected curve is built from one replica's figures")
    report = run(args)
    out = args.out or REPO / "perf" / "results" / f"fleet-{time.strftime('%Y-%m-%d')}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"fleet report: {out}")


if __name__ == "__main__":
    main()
