"""`make bench-rollout`: what a version switch and a shadow cost the traffic a server is carrying.

One `adrank serve` (C++ front end, repository polled every 0.2 s, admin token) runs the ctr model under
`taskset -c 0`; this process and the load generator's C++ sender run on core 1. The load is open-loop
Poisson at `--rate` requests/s of the bench's ctr request set, bounded in time and count.

1. Switch: a steady run of 3 phases of `--phase-s` seconds. At the start of phases 2 and 3 a complete
   version folder (published beforehand with `adrank publish`, outside the served repository) is renamed
   into the repository — the last step of a publish — and the server loads, checks, switches to it and
   drains the old one. Figures: errors; p50/p99 of the calls sent before the first switch, and of those
   sent in the 2 s after each (the switch windows: poll, load, warm-up, parity, swap, drain, with a
   0.2 s margin for the sender's start-up); the p99 ratio during/before (target <= 1.5).
2. Shadow: stable pinned (promote), an identical version as shadow at 100 % (admin API). Two runs of
   `--phase-s` each at the same rate: without shadow, then with it. Figures: p50/p99 of stable traffic in
   each and their ratio, and the shadow's share of requests mirrored (its stats via the server log).

Output: perf/results/rollout-<date>-<sha>.{json,md}. Each run is seconds; the whole bench about a minute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import adrank_server, free_port, git_info, running
from perf.loadgen import LoadGenerator, find_sender
from perf.report import save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
TOKEN = "rollout-bench"
SWITCH_WINDOW_S = 2.0
START_MARGIN_S = 0.2  # the sender's start lags its launch by a few tens of ms: windows open this early


def prepare(work: Path) -> tuple[Path, list[Path]]:
    """The served repository (ctr version 1) and three complete versions published beside it."""
    from adrank.publish.pipeline import PublishOptions, publish

    served = work / "repo"
    shutil.copytree(REPO / "models" / "ctr", served / "ctr", ignore=shutil.ignore_patterns("*.py", "README.md"))
    staging = work / "staging"
    shutil.copytree(served, staging)
    ready = []
    for version in (2, 3, 4):
        report = publish(PublishOptions("ctr", REPO / "models" / "ctr" / "1" / "model.onnx", staging, version))
        ready.append(report.path)
    return served, ready


def percentiles(latency_s: np.ndarray) -> dict[str, float]:
    if latency_s.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "calls": 0}
    ms = latency_s * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "calls": int(ms.size)}


def window(generator: LoadGenerator, start: float, end: float) -> dict[str, float]:
    sent, latency, ok = generator.record()
    mask = ok & (sent >= start) & (sent < end)
    return percentiles(latency[mask])


def run_switch(generator: LoadGenerator, served: Path, ready: list[Path], rate: float, phase_s: float) -> dict:
    switches: list[float] = []
    launched = time.perf_counter()

    def publish_later() -> None:
        for i, folder in enumerate(ready[:2]):
            time.sleep(max(0.0, launched + phase_s * (i + 1) - time.perf_counter()))
            os.rename(folder, served / "ctr" / folder.name)
            switches.append(time.perf_counter() - launched)

    thread = threading.Thread(target=publish_later)
    thread.start()
    result = generator.open_loop(rate, 3 * phase_s, int(rate * phase_s * 4))
    thread.join()
    before = window(generator, 1.0, switches[0] - START_MARGIN_S)
    during = [window(generator, t - START_MARGIN_S, t + SWITCH_WINDOW_S) for t in switches]
    return {
        "sent": result.sent,
        "errors": result.errors,
        "switch_at_s": switches,
        "before": before,
        "during": during,
        "p99_ratio": [d["p99_ms"] / before["p99_ms"] for d in during],
    }


def admin(port: int, call: str, request: object) -> object:
    import grpc

    from adrank.v1 import admin_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        return getattr(stub, call)(request, metadata=[("authorization", f"Bearer {TOKEN}")], timeout=60)


def run_shadow(generator: LoadGenerator, served: Path, ready: list[Path], port: int, rate: float, phase_s: float):
    from adrank.v1 import admin_pb2 as pb

    admin(port, "Promote", pb.PromoteRequest(model="ctr", version=3, reason="rollout bench: pin stable"))
    os.rename(ready[2], served / "ctr" / ready[2].name)  # version 4: loaded by the watcher, not routed
    time.sleep(2.0)
    without = generator.open_loop(rate, phase_s, int(rate * phase_s * 2))
    base = window(generator, 0.5, phase_s)
    rollout = pb.Rollout(model="ctr", stable=3, shadow=pb.Shadow(version=4, sample_percent=100))
    admin(port, "SetRollout", pb.SetRolloutRequest(rollout=rollout, reason="rollout bench: shadow", action="shadow"))
    time.sleep(0.5)
    with_shadow = generator.open_loop(rate, phase_s, int(rate * phase_s * 2))
    shadowed = window(generator, 0.5, phase_s)
    return {
        "without_shadow": {**base, "errors": without.errors},
        "with_shadow": {**shadowed, "errors": with_shadow.errors},
        "p50_ratio": shadowed["p50_ms"] / base["p50_ms"],
        "p99_ratio": shadowed["p99_ms"] / base["p99_ms"],
    }


def markdown(report: dict) -> str:
    s, h = report["switch"], report["shadow"]
    lines = [
        f"# Rollout bench, {report['date']} at {report['commit']}",
        "",
        f"`{report['command']}` — server on core 0, load generator on core 1, ctr, {report['rate']:g} req/s "
        f"open-loop Poisson, {report['phase_s']:g} s phases.",
        "",
        "## Version switch under load",
        "",
        f"Requests sent: {s['sent']}; errors: {sum(s['errors'].values()) if s['errors'] else 0} {s['errors'] or ''}",
        "",
        "| window | calls | p50 ms | p99 ms | p99 / before |",
        "| --- | --- | --- | --- | --- |",
        f"| before the switches | {s['before']['calls']} | {s['before']['p50_ms']:.3f} | "
        f"{s['before']['p99_ms']:.3f} | 1.00 |",
    ]
    for i, (d, ratio) in enumerate(zip(s["during"], s["p99_ratio"], strict=True)):
        lines.append(
            f"| switch to v{i + 2} (t = {s['switch_at_s'][i]:.2f} s, +{SWITCH_WINDOW_S:g} s) | {d['calls']} | "
            f"{d['p50_ms']:.3f} | {d['p99_ms']:.3f} | {ratio:.2f} |"
        )
    lines += [
        "",
        "## Shadow at 100 % (identical version, lowest priority, background scheduling)",
        "",
        "| run | calls | p50 ms | p99 ms | errors |",
        "| --- | --- | --- | --- | --- |",
        f"| without shadow | {h['without_shadow']['calls']} | {h['without_shadow']['p50_ms']:.3f} | "
        f"{h['without_shadow']['p99_ms']:.3f} | {h['without_shadow']['errors'] or 0} |",
        f"| with shadow | {h['with_shadow']['calls']} | {h['with_shadow']['p50_ms']:.3f} | "
        f"{h['with_shadow']['p99_ms']:.3f} | {h['with_shadow']['errors'] or 0} |",
        "",
        f"Stable traffic with / without shadow: p50 {h['p50_ratio']:.2f}x, p99 {h['p99_ratio']:.2f}x.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s (open loop)")
    parser.add_argument("--phase-s", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    built = request_sets.build("ctr", 500)
    sender = find_sender()
    with tempfile.TemporaryDirectory(prefix="adrank-rollout-bench-") as tmp:
        served, ready = prepare(Path(tmp))
        admin_port = free_port()
        token_file = Path(tmp) / "admin-token"
        token_file.write_text(TOKEN)
        token_file.chmod(0o600)
        options = ["--admin-port", str(admin_port), "--admin-token-file", str(token_file), "--poll-interval", "0.2"]
        log_path = Path(tmp) / "server.log"
        with running(adrank_server("adrank", served, options, 0, log_path)) as server:
            target = server.wait_ready()
            generator = LoadGenerator(target, built.method, built.payloads, built.candidates, sender=sender)
            switch = run_switch(generator, served, ready, args.rate, args.phase_s)
            shadow = run_shadow(generator, served, ready, admin_port, args.rate, args.phase_s)
        server_log = log_path.read_text()
    report = {
        "date": dt.date.today().isoformat(),
        "commit": git_info()["sha"],
        "command": "python perf/rollout_bench.py " + " ".join(sys.argv[1:]),
        "rate": args.rate,
        "phase_s": args.phase_s,
        "sender": "grpc++ (adrank_loadgen)" if sender else "grpc.aio",
        "switch": switch,
        "shadow": shadow,
        "server_log_tail": server_log.splitlines()[-30:],
    }
    save(report, args.out / f"rollout-{report['date']}-{report['commit']}", markdown(report))


if __name__ == "__main__":
    main()
