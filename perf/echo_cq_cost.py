"""Issue 35's lever "gRPC's async completion-queue API in place of the callback reactors", measured on echoes.

What one call costs a grpc++ echo server on the callback API (perf/echo_server.cc, adrank_echo: adrank's front
end's API) against the same echo on the async completion-queue API (perf/echo_server_cq.cc, adrank_echo_cq), with
perf/call_cost.py's machinery: the server on one core under `perf stat -p` (idle rates subtracted), the C++ sender
on the other, closed loops of the same pre-serialized ctr requests (N = 100) at 1 and 16 callers. Per call: CPU µs,
context switches (voluntary / involuntary), libc mallocs, by thread name too. Beside them, p50 latency at 1 caller
from a closed loop of its own, run with no perf attached.

Systems (`make loadgen` builds both binaries):
- echo: the callback echo (reactors on gRPC's threads);
- echo-worker: the callback echo, OnReadDone handing each request to a worker thread that starts the reply (the
  hand-off adrank's front end makes to its core's batch worker);
- echo-cq: one completion queue drained by one thread of ours, every step of a call handled inline on it;
- echo-cq-health: echo-cq with gRPC's default health service registered beside it (a callback service, as in
  adrank's front end): whether gRPC's callback threads, idle, still take part in each call;
- echo-cq-2: two completion queues, a thread each;
- echo-cq-worker: one CQ thread, the reply written by a worker thread that the CQ thread hands each request to
  (WriteAndFinish from the worker: adrank's core's worker completing the reply);
- echo-cq-alarm: the same hand-off, the worker waking the CQ thread with an expired grpc::Alarm and the CQ thread
  writing the reply.
Every system's loads run interleaved in rounds with all servers up, each figure the median of its rounds.

Output in --out (default perf/results/): echo-cq-<date>-<git sha>.json and .md. --smoke: one short round, one
caller, echo and echo-cq only (the test). About 7 minutes in full.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout, not perf/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import ServerProcess, log, machine_info, run_header
from perf.call_cost import (
    ECHO_READY,
    MODES,
    Load,
    Server,
    Settings,
    by_thread_table,
    ctr_payloads,
    interleaved,
    started,
)
from perf.loadgen import LoadGenerator, find_built, find_sender
from perf.perf_stat import MallocProbe, cpu_flags, perf_unusable, process_libc
from perf.report import finite, save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
# name: (binary, arguments before the port)
SYSTEMS: dict[str, tuple[str, list[str]]] = {
    "echo": ("adrank_echo", []),
    "echo-worker": ("adrank_echo", ["--reply", "worker"]),
    "echo-cq": ("adrank_echo_cq", ["--cq-threads", "1"]),
    "echo-cq-health": ("adrank_echo_cq", ["--health"]),
    "echo-cq-2": ("adrank_echo_cq", ["--cq-threads", "2"]),
    "echo-cq-worker": ("adrank_echo_cq", ["--reply", "worker"]),
    "echo-cq-alarm": ("adrank_echo_cq", ["--reply", "alarm"]),
}
SMOKE_SYSTEMS = ("echo", "echo-cq")
FULL = replace(MODES["full"], mode="full", rounds=5, sizes=(), models_table=False)
SMOKE = replace(MODES["smoke"], mode="smoke", sizes=(), models_table=False)
P50_S = {"full": 2.0, "smoke": 0.5}  # the closed loop of one caller, no perf attached, per round
P50_MAX_RATE = 20_000.0  # calls/s: the most one caller could send, to size the sender's plan


def p50_ms(server: Server, payloads: list[bytes], candidates: int, seconds: float, sender: Path | None) -> float:
    """p50 latency (ms) of one caller back to back on `server`, with nothing counting it."""
    generator = LoadGenerator(
        server.target,
        request_sets.RANK_METHOD,
        payloads,
        np.full(len(payloads), candidates),
        timeout_s=1.0,
        sender=sender,
    )
    result = generator.closed_loop(1, seconds, math.ceil(seconds * P50_MAX_RATE))
    return float(result.latency_ms["p50"])


def run(
    settings: Settings, systems: Sequence[str], work: Path, sender: Path | None, env: dict[str, str] | None = None
) -> dict[str, object]:
    s = settings
    payloads = ctr_payloads(s, s.candidates)
    with MallocProbe(process_libc(os.getpid())) as probe, ExitStack() as stack:
        if probe.reason:
            log(f"allocations {probe.reason}")
        servers: dict[str, Server] = {}
        for name in systems:
            binary_name, arguments = SYSTEMS[name]
            binary = find_built(binary_name)
            if binary is None:
                raise RuntimeError(f"build/bench/{binary_name} is not built (make loadgen)")
            command = [str(binary), *arguments, "0"]
            process = ServerProcess(name, command, ECHO_READY, s.server_core, work / f"{name}.log", env)
            servers[name] = stack.enter_context(started(name, process, s, probe, None))
        plan = [
            (f"{name}/{n}", servers[name], Load(name, payloads, s.candidates, n)) for n in s.callers for name in systems
        ]
        loads = interleaved(plan, s, probe, sender)
        latency: dict[str, list[float]] = {name: [] for name in systems}
        for number in range(s.rounds):
            for name in systems:
                latency[name].append(p50_ms(servers[name], payloads, s.candidates, P50_S[s.mode], sender))
            log(
                f" p50 round {number + 1}: "
                + ", ".join(f"{name} {values[-1]:.3f} ms" for name, values in latency.items())
            )
        mallocs = probe.reason
    return {
        "loads": loads,
        "p50_ms_1_caller": {name: float(np.median(values)) for name, values in latency.items()},
        "p50_ms_rounds": latency,
        "mallocs": mallocs,
    }


def _show(value: object, digits: int = 1) -> str:
    return "-" if not isinstance(value, int | float) or not math.isfinite(value) else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"# Callback API against completion-queue API, grpc++ echo ({report['mode']}), {report['date']},"
        f" {report['git']['sha']}",
        "",
        f"`{report['command']}` on {machine['cpu_model']} ({machine['nproc']} cores, load average at start"
        f" {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}); servers on core"
        f" {report['pinning']['server_core']}, sender on core {report['pinning']['generator_core']};"
        f" {report['settings']['rounds']} interleaved rounds, medians. Requests: ctr, N ="
        f" {report['settings']['candidates']} ({report['request_bytes']:.0f} bytes), the reply empty."
        + (
            f" Servers' environment: {' '.join(f'{k}={v}' for k, v in report['server_env'].items())}."
            if report.get("server_env")
            else ""
        ),
        "",
        "Per call, from `perf stat -p` on the server (idle rates subtracted); p50: one caller back to back, no perf"
        " attached; mallocs: " + (report["mallocs"] or "libc malloc calls, a uprobe in a window of their own"),
        "",
        "| system | callers | calls/s | CPU µs | context switches (vol / invol) | mallocs | p50 ms (1 caller) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, figures in report["loads"].items():
        name = key.split("/")[0]
        c = figures["per_call"]
        p50 = report["p50_ms_1_caller"].get(name) if figures["callers"] == 1 else None
        lines.append(
            f"| {name} | {figures['callers']} | {figures['calls_per_s']:.0f} | {_show(c['cpu_us'])} |"
            f" {_show(c['context_switches'], 2)} ({_show(c['voluntary_switches'], 2)} /"
            f" {_show(c['involuntary_switches'], 2)}) | {_show(c['mallocs'])} | {_show(p50, 3)} |"
        )
    lines += by_thread_table(report["loads"])
    notes = [f"{key}: {note}" for key, figures in report["loads"].items() for note in figures["notes"]]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="one short round, one caller, echo and echo-cq")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .json and .md go")
    parser.add_argument("--systems", nargs="+", choices=sorted(SYSTEMS), help="a subset of the systems")
    parser.add_argument(
        "--server-env",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="environment of the servers only (e.g. GRPC_POLL_STRATEGY=poll), not of the sender",
    )
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.server_env)
    unusable = perf_unusable()
    if unusable:
        log(f"cannot measure: {unusable}")
        return 2
    settings = SMOKE if args.smoke else FULL
    systems = args.systems or (SMOKE_SYSTEMS if args.smoke else tuple(SYSTEMS))
    cores = sorted(os.sched_getaffinity(0))
    settings = replace(settings, server_core=cores[0], generator_core=cores[min(1, len(cores) - 1)])
    started_at = time.perf_counter()
    machine = {**machine_info(), "cpu_flags": cpu_flags()}
    os.sched_setaffinity(0, {settings.generator_core})
    sender = find_sender()
    log(f"mode {settings.mode}: servers on core {settings.server_core}, sender {sender or 'grpc.aio'}")
    work = Path(tempfile.mkdtemp(prefix="adrank-echo-cq-"))
    try:
        measured = run(settings, systems, work, sender, env or None)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payloads = ctr_payloads(settings, settings.candidates)
    report: dict[str, object] = {
        **run_header("perf/echo_cq_cost.py", settings.mode, argv),
        "machine": machine,
        "pinning": {"server_core": settings.server_core, "generator_core": settings.generator_core},
        "settings": asdict(settings),
        "systems": {name: [SYSTEMS[name][0], *SYSTEMS[name][1]] for name in systems},
        "server_env": env,
        "generator": str(sender).replace(f"{REPO}/", "") if sender else "grpc.aio (perf/loadgen.py)",
        "request_bytes": float(np.mean([len(p) for p in payloads])),
        **measured,
        "seconds": time.perf_counter() - started_at,
    }
    report = finite(report)  # type: ignore[assignment]
    suffix = "".join(f"-{value.lower()}" for value in env.values())
    mode = "" if settings.mode == "full" else "-" + settings.mode
    stem = args.out / f"echo-cq-{report['date']}-{report['git']['sha']}{mode}{suffix}"
    save(report, stem, markdown(report))
    log(f"wrote {stem}.json, .md in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
