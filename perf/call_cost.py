"""`make bench-cost`: what one call costs the server, counted by `perf stat` on the server's process.

Contract. For each system below the server runs under `taskset -c <server core>` and this process and the load
generator's sender on the other core (perf/bench.py's pinning). While a closed loop of pre-serialized calls runs,
`perf stat -p <server pid>` counts the server's threads over fixed windows (the instrument: perf/perf_stat.py):
- a counting window: task-clock, context-switches, cpu-migrations, page-faults (and the voluntary / involuntary
  split of the context switches from /proc/PID/task/*/status);
- an allocation window: a uprobe on the malloc of the libc the server maps (`perf probe -x <libc>`), in a window
  of its own because each probe hit traps into the kernel and would inflate the first window's CPU time. Where
  the probe cannot be made, the allocations are "not measured: <reason>". Only libc malloc is counted (C++'s
  operator new reaches it; calloc, realloc, Python's small-object allocator and ONNX Runtime's arena do not).
The calls of a window are those whose reply arrived inside it. The server's idle rates (the same windows with no
load) are subtracted, so background threads are not charged to calls. Per call: CPU µs, context switches,
page faults, allocations.

Systems and loads (closed loop; 1 caller: each call alone, "serial"; 16 callers: the server's core saturated and
calls merged into batches, the overload bench's load). The three systems' loads run interleaved in rounds with all
three up (served, refused, echo; then again), and each per-call figure is the median of its rounds:
- adrank serving `ctr` (`adrank serve`, one worker): `--candidates` (100) candidates of real rows per call;
- adrank refusing: the same requests naming a model it does not serve (perf/overload_bench.py's refused_request);
- the grpc++ echo server (perf/echo_server.cc, `make loadgen`): the same request bytes, nothing run;
- engine-only: the ctr backend session (perf/engine.py's Engine) in a child process on the server core, run right
  after each adrank ctr load on a batch of the mean rows per batch that adrank's /metrics reported for that load
  (CPU time of the process over the runs); a call's engine share is that batch's CPU times the call's rows over
  the batch's rows.

Derived, for each load: transport CPU per served call = adrank's CPU per call less its engine share; the ratios
to the echo's CPU per call, and the issue's targets pass/fail: <= 4 context switches per served call, transport
CPU per served call <= 2x the echo's, CPU per refusal <= 1.5x the echo's. Scale: CPU per call and per candidate
against N (1 to 2,000, serial) and against the models per request (ctr alone, ctr + relevance in one Rank
request, serial, one server holding both), in rounds as well.

Output in --out (default perf/results/): call-cost-<date>-<git sha>.json (everything) and .md (tables and the
targets). Modes: default (full: 2 s counting windows, 3 rounds, about 4.5 minutes), --smoke (fractions of a second,
one round, serial only, N 1 and 100, no models-per-request rows; files end in -smoke). On a busy shared machine
every figure is a few short windows: only the ratios inside one run mean much.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout, not perf/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import (
    ServerProcess,
    adrank_server,
    check_reply,
    log,
    machine_info,
    metric_samples,
    run_header,
    running,
)
from perf.loadgen import LoadGenerator, find_built, find_sender
from perf.overload_bench import UNKNOWN_MODEL, Background, refused_request
from perf.perf_stat import COUNTING_EVENTS, MallocProbe, Window, cpu_flags, perf_unusable, perf_window, process_libc
from perf.report import finite, save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
ECHO_READY = r"echo: SERVING on grpc (?P<host>[\d.]+):(?P<port>\d+)"
# The C++ sender makes one call object per request before it starts (~0.75 KB each): the count is the most a
# closed loop of this length could send here, not a round number.
MAX_RATE = {1: 10_000.0, 16: 30_000.0}  # calls/s by callers
TARGET_SWITCHES = 4.0  # context switches per served call, at most
TARGET_TRANSPORT_VS_ECHO = 2.0  # transport CPU per served call / echo CPU per call, at most
TARGET_REFUSAL_VS_ECHO = 1.5  # CPU per refusal / echo CPU per call, at most


@dataclass(frozen=True)
class Settings:
    mode: str
    callers: tuple[int, ...]  # closed-loop loads of the target systems
    sizes: tuple[int, ...]  # N of the scale table (serial)
    models_table: bool  # ctr alone against ctr + relevance in one request
    idle_s: float  # each idle window (counting, then allocations)
    warm_s: float  # load before the first window: the sender's start-up and the server's warm caches
    count_s: float  # the counting window
    malloc_s: float  # the allocation window
    engine_s: float  # engine CPU seconds per batch size
    # Target and models-per-request loads run this many times, interleaved (served, refused, echo; then again) with
    # every server of the comparison up at once, and each figure is the median of its rounds: this machine's speed
    # drifts from minute to minute, and a drift must not land on one system only.
    rounds: int
    requests: int = 16  # distinct requests per set (the generator cycles over them)
    candidates: int = 100  # N of the target systems' requests: the issue's reference size
    timeout_s: float = 1.0
    server_core: int = 0
    generator_core: int = 1


MODES = {
    "full": Settings(
        mode="full",
        callers=(1, 16),
        sizes=(1, 10, 50, 100, 200, 500, 1000, 2000),
        models_table=True,
        idle_s=1.5,
        warm_s=0.8,
        count_s=2.0,
        malloc_s=1.2,
        engine_s=0.5,
        rounds=3,
    ),
    "smoke": Settings(
        mode="smoke",
        callers=(1,),
        sizes=(1, 100),
        models_table=False,
        idle_s=0.3,
        warm_s=0.8,
        count_s=0.5,
        malloc_s=0.3,
        engine_s=0.1,
        rounds=1,
    ),
}


# --- per call -------------------------------------------------------------------------------------------------


def net_per_call(window: Window, event: str, idle: Window | None, calls: int) -> float | None:
    """The window's count of `event` less the idle rate over the window's length, per call."""
    value = window.counts.get(event)
    if value is None or calls <= 0:
        return None
    idle_rate = (idle.rate(event) or 0.0) if idle is not None else 0.0
    return max(0.0, value - idle_rate * window.seconds) / calls


def net_by_thread(window: Window, event: str, idle: Window | None, calls: int) -> dict[str, float]:
    """`net_per_call` for each thread name of a --per-thread window, less that name's idle rate."""
    figures: dict[str, float] = {}
    for name, counts in window.threads.items():
        value = counts.get(event)
        if value is None or calls <= 0:
            continue
        idle_value = (idle.threads.get(name, {}).get(event) or 0.0) if idle is not None else 0.0
        idle_rate = idle_value / idle.seconds if idle is not None else 0.0
        figures[name] = max(0.0, value - idle_rate * window.seconds) / calls
    return figures


def calls_in(done_at: np.ndarray, window: Window) -> int:
    """Calls whose reply arrived inside the window (perf_counter seconds)."""
    return int(((done_at >= window.start) & (done_at <= window.end)).sum())


def covered(sent_at: np.ndarray, done_at: np.ndarray, window: Window) -> bool:
    """The load ran over the whole window: a call was sent before it began and one answered after it ended."""
    return bool(len(sent_at)) and float(np.min(sent_at)) <= window.start and float(np.max(done_at)) >= window.end


@dataclass
class Load:
    """One closed loop against one server: what is sent, by how many callers, and which replies count."""

    name: str
    payloads: list[bytes]
    candidates: int  # per call
    callers: int
    refused: bool = False  # count the refused calls (every call should be) instead of the OK ones


@dataclass
class Server:
    """A running server, its gRPC target, /metrics address (adrank) and idle windows."""

    name: str
    process: ServerProcess
    target: str
    metrics_url: str | None
    idle: Window
    idle_malloc: Window | None
    # The name of the process's own threads (adrank: the batch worker and Python); every other thread is gRPC's
    # (its pollers and callback threads: the transport and, in adrank, the C++ Rank contract run there).
    own_threads: str
    engine: EngineOnly | None = None  # adrank serving ctr alone: the engine's share of each load's calls


def grpc_threads_cpu_us(by_thread: dict[str, float], own_threads: str) -> float | None:
    """CPU µs per call of the transport's threads (every thread not named as the process: gRPC's, and the C++ front
    end's adrank-grpc-N), from --per-thread ms."""
    if not by_thread:
        return None
    return sum(ms for name, ms in by_thread.items() if name != own_threads) * 1e3


def batch_totals(metrics_url: str | None) -> dict[str, tuple[float, float]]:
    """adrank's batches and rows so far per model, from /metrics' adrank_batch_rows histogram."""
    if metrics_url is None:
        return {}
    totals: dict[str, list[float]] = {}
    for sample in metric_samples(metrics_url):
        if sample.name in ("adrank_batch_rows_count", "adrank_batch_rows_sum"):
            entry = totals.setdefault(sample.labels["model"], [0.0, 0.0])
            entry[0 if sample.name.endswith("_count") else 1] += sample.value
    return {model: (batches, rows) for model, (batches, rows) in totals.items()}


def measure(server: Server, load: Load, settings: Settings, probe: MallocProbe, sender: Path | None) -> dict:
    """The load's per-call figures on `server`: a closed loop, a counting window, then an allocation window."""
    s = settings
    generator = LoadGenerator(
        server.target,
        request_sets.RANK_METHOD,
        load.payloads,
        np.full(len(load.payloads), load.candidates),
        timeout_s=s.timeout_s,
        sender=sender,
    )
    total_s = s.warm_s + s.count_s + (s.malloc_s if probe.event else 0.0) + 0.5
    batches_before = batch_totals(server.metrics_url)
    pid = server.process.process.pid
    run = Background(lambda: generator.closed_loop(load.callers, total_s, math.ceil(total_s * MAX_RATE[load.callers])))
    time.sleep(s.warm_s)
    counting = perf_window(pid, COUNTING_EVENTS, s.count_s, per_thread=True)
    allocating = perf_window(pid, [probe.event], s.malloc_s) if probe.event else None
    result = run.join()
    batches_after = batch_totals(server.metrics_url)
    if server.process.process.poll() is not None:
        raise RuntimeError(f"{server.name} exited during {load.name}")
    sent, latency, ok = generator.record()
    answered = ~np.isnan(latency)
    counted = answered & (~ok if load.refused else ok)
    sent_at = generator.started_at + sent[answered]
    answered_at = sent_at + latency[answered]
    done_at = generator.started_at + sent[counted] + latency[counted]
    calls = calls_in(done_at, counting)
    notes = [
        f"the load did not cover the {label} window"
        for label, window in (("counting", counting), ("allocation", allocating))
        if window is not None and not covered(sent_at, answered_at, window)
    ]
    per_call = {
        "cpu_us": _scaled(net_per_call(counting, "task-clock", server.idle, calls), 1e3),
        "cpu_us_raw": _scaled(net_per_call(counting, "task-clock", None, calls), 1e3),
        "context_switches": net_per_call(counting, "context-switches", server.idle, calls),
        "voluntary_switches": _switches(counting.voluntary, server.idle.voluntary, counting, server.idle, calls),
        "involuntary_switches": _switches(counting.involuntary, server.idle.involuntary, counting, server.idle, calls),
        "cpu_migrations": net_per_call(counting, "cpu-migrations", server.idle, calls),
        "page_faults": net_per_call(counting, "page-faults", server.idle, calls),
        "grpc_threads_cpu_us": None,
        "engine_cpu_us": None,
        "transport_cpu_us": None,
        "mallocs": None,
    }
    by_thread = net_by_thread(counting, "task-clock", server.idle, calls)
    per_call["grpc_threads_cpu_us"] = grpc_threads_cpu_us(by_thread, server.own_threads)
    if allocating is not None and probe.event is not None:
        per_call["mallocs"] = net_per_call(allocating, probe.event, server.idle_malloc, calls_in(done_at, allocating))
    batches = {
        model: {"batches": after[0] - before[0], "rows": after[1] - before[1]}
        for model, after in batches_after.items()
        for before in [batches_before.get(model, (0.0, 0.0))]
        if after[0] > before[0]
    }
    rows = engine_rows({"batches": batches})
    engine = None
    if server.engine is not None and rows is not None:
        engine = {"batch_rows": rows, "batch_cpu_us": server.engine.batch_cpu_us(rows)}
        share = engine_share({"batches": batches, "candidates": load.candidates}, engine["batch_cpu_us"])
        per_call["engine_cpu_us"] = share
        per_call["transport_cpu_us"] = None if per_call["cpu_us"] is None else per_call["cpu_us"] - share
    figures = {
        "load": load.name,
        "server": server.name,
        "callers": load.callers,
        "candidates": load.candidates,
        "refused": load.refused,
        "request_bytes": float(np.mean([len(p) for p in load.payloads])),
        "calls": calls,
        "calls_per_s": calls / counting.seconds,
        "per_call": per_call,
        "cpu_us_by_thread": {name: ms * 1e3 for name, ms in sorted(by_thread.items(), key=lambda item: -item[1])},
        "switches_by_thread": net_by_thread(counting, "context-switches", server.idle, calls),
        "mallocs_note": "" if probe.event else probe.reason,
        "batches": batches,
        "engine": engine,
        "counting_window": {"seconds": counting.seconds, "counts": counting.counts},
        "allocation_window": None
        if allocating is None
        else {"seconds": allocating.seconds, "counts": allocating.counts},
        "run": {"sent": result.sent, "ok": result.ok, "errors": result.errors, "p50_ms": result.latency_ms["p50"]},
        "notes": notes,
    }
    log(
        f"  {server.name} {load.name} ({load.callers} caller{'s' if load.callers > 1 else ''}): {calls} calls,"
        f" {_show(per_call['cpu_us'])} µs CPU, {_show(per_call['context_switches'])} switches,"
        f" {_show(per_call['mallocs'])} mallocs per call{' (' + '; '.join(notes) + ')' if notes else ''}"
    )
    return figures


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _switches(count: int, idle_count: int, window: Window, idle: Window, calls: int) -> float | None:
    if calls <= 0:
        return None
    return max(0.0, count - idle_count / idle.seconds * window.seconds) / calls


def _show(value: object, digits: int = 1) -> str:
    return "-" if not isinstance(value, int | float) or not math.isfinite(value) else f"{value:.{digits}f}"


# --- servers --------------------------------------------------------------------------------------------------


def idle_windows(
    name: str, process: ServerProcess, settings: Settings, probe: MallocProbe
) -> tuple[Window, Window | None]:
    """The server's counts with no load: what its background threads cost, subtracted from every load's."""
    time.sleep(settings.idle_s)  # let the start-up's last work (warm-up, first metrics) finish
    idle = perf_window(process.process.pid, COUNTING_EVENTS, settings.idle_s, per_thread=True)
    idle_malloc = perf_window(process.process.pid, [probe.event], settings.idle_s) if probe.event else None
    log(
        f"  {name} idle: {(idle.rate('task-clock') or 0.0) / 10:.2f} % of a core,"
        f" {idle.rate('context-switches') or 0:.0f} switches/s"
    )
    return idle, idle_malloc


@contextmanager
def started(
    name: str, process: ServerProcess, settings: Settings, probe: MallocProbe, check: bytes | None
) -> Iterator[Server]:
    """A server ready to measure: serving, answering one call, its idle windows taken; stopped after."""
    with running(process):
        target = process.wait_ready()
        log(f"{name}: serving on {target}")
        if check is not None:
            check_reply(target, request_sets.RANK_METHOD, check, 1, "rank")
        http = next(
            (m.group(1) for line in process.tail(40) for m in [re.search(r"http ([\d.]+:\d+)", line)] if m), None
        )
        metrics_url = f"http://{http}/metrics" if http else None
        idle, idle_malloc = idle_windows(name, process, settings, probe)
        own = Path(f"/proc/{process.process.pid}/comm").read_text().strip()
        yield Server(name, process, target, metrics_url, idle, idle_malloc, own)


def ctr_payloads(settings: Settings, candidates: int) -> list[bytes]:
    return request_sets.build("ctr", settings.requests, candidates=candidates).payloads


def two_model_payloads(settings: Settings, candidates: int) -> list[bytes]:
    """Rank requests naming ctr and relevance: ctr's rows, the same number of ad embeddings, one query each."""
    from adrank.client import build_request

    ctr = request_sets.build("ctr", settings.requests, candidates=candidates)
    queries, ads = request_sets.relevance_texts()
    embeddings = request_sets.ad_embeddings(ads)
    rng = np.random.default_rng(5)
    payloads = []
    for i, feed in enumerate(ctr.feeds):
        rows = {**feed, "ad_embedding": np.ascontiguousarray(embeddings[rng.integers(0, len(embeddings), candidates)])}
        query = queries[int(rng.integers(0, len(queries)))]
        request = build_request(["ctr", "relevance"], rows, {"query": [query]}, request_id=f"two-{i}")
        payloads.append(request.SerializeToString())
    return payloads


def repository(work: Path, models: Sequence[str]) -> Path:
    path = work / "-".join(models)
    path.mkdir()
    for model in models:
        (path / model).symlink_to(REPO / "models" / model)
    return path


# --- engine-only ------------------------------------------------------------------------------------------------


def engine_worker(seconds: float) -> None:
    """The engine-only child: for each batch size read on stdin, the CPU µs of one run of the ctr backend session
    on a batch of that many rows, printed on a line. CPU time of this process (CLOCK_PROCESS_CPUTIME_ID, all its
    threads): what perf's task-clock counts."""
    from perf.engine import Engine

    engine = Engine("ctr")
    feeds: dict[int, dict[str, np.ndarray]] = {}
    for line in sys.stdin:
        rows = int(line)
        if rows not in feeds:
            feeds[rows] = request_sets.build("ctr", 1, seed=9, candidates=rows).feeds[0]
            for _ in range(5):
                engine.run(feeds[rows])  # the first runs at a shape allocate
        runs, cpu = 0, time.process_time()
        while time.process_time() - cpu < seconds or runs < 5:
            engine.run(feeds[rows])
            runs += 1
        print((time.process_time() - cpu) / runs * 1e6, flush=True)


class EngineOnly:
    """engine_worker in a child process on the server core, asked between loads, so that the engine's figure for a
    load is measured minutes apart from it at most: this machine's speed drifts."""

    def __init__(self, settings: Settings, log_file: Path) -> None:
        command = ["taskset", "-c", str(settings.server_core), sys.executable, str(Path(__file__).resolve())]
        command += ["--engine-worker", "--engine-s", str(settings.engine_s)]
        self._log = log_file.open("w")
        self.process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True
        )

    def batch_cpu_us(self, rows: int) -> float:
        """CPU µs of one run on a batch of `rows` rows."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{rows}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the engine-only child exited ({self.process.poll()}); see {self._log.name}")
        return float(line)

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self._log.close()


def engine_rows(figures: dict) -> int | None:
    """The mean ctr rows per batch adrank ran during a load, rounded: the engine's batch for that load."""
    ctr = figures["batches"].get("ctr")
    if not ctr or ctr["batches"] <= 0:
        return None
    return max(1, round(ctr["rows"] / ctr["batches"]))


def engine_share(figures: dict, batch_cpu_us: float) -> float:
    """The engine's CPU µs for one call of the load: its batch's CPU times the call's share of the batch's rows."""
    ctr = figures["batches"]["ctr"]
    return batch_cpu_us * figures["candidates"] / (ctr["rows"] / ctr["batches"])


# --- derived figures and targets --------------------------------------------------------------------------------


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def derive(loads: dict[str, dict], callers: Sequence[int]) -> list[dict]:
    """Per caller count: engine share, transport CPU, the ratios to the echo, and the targets pass/fail.

    `loads` is keyed "<system>/<callers>" (system: served, refused, echo); the served load's per-call figures hold
    its engine share and transport CPU (each the median of its rounds). A missing figure leaves its target
    unevaluated (pass None), never passed.
    """
    rows = []
    for n in callers:
        served, refused, echo = (loads.get(f"{system}/{n}") for system in ("served", "refused", "echo"))
        cpu = lambda figures: None if figures is None else figures["per_call"]["cpu_us"]  # noqa: E731
        share = None if served is None else served["per_call"].get("engine_cpu_us")
        transport = None if served is None else served["per_call"].get("transport_cpu_us")
        switches = None if served is None else served["per_call"]["context_switches"]
        served_grpc = None if served is None else served["per_call"].get("grpc_threads_cpu_us")
        rows.append(
            {
                "callers": n,
                "served_cpu_us": cpu(served),
                "engine_cpu_us": share,
                "transport_cpu_us": transport,
                "refusal_cpu_us": cpu(refused),
                "echo_cpu_us": cpu(echo),
                "transport_vs_echo": ratio(transport, cpu(echo)),
                "refusal_vs_echo": ratio(cpu(refused), cpu(echo)),
                "served_vs_echo": ratio(cpu(served), cpu(echo)),
                "served_grpc_threads_cpu_us": served_grpc,
                "grpc_threads_vs_echo": ratio(served_grpc, cpu(echo)),
                "targets": [
                    _target("context switches per served call", switches, TARGET_SWITCHES, ""),
                    _target(
                        "transport CPU per served call / echo's",
                        ratio(transport, cpu(echo)),
                        TARGET_TRANSPORT_VS_ECHO,
                        "x",
                    ),
                    _target("CPU per refusal / echo's", ratio(cpu(refused), cpu(echo)), TARGET_REFUSAL_VS_ECHO, "x"),
                ],
            }
        )
    return rows


def _target(name: str, value: float | None, threshold: float, unit: str) -> dict:
    return {
        "target": name,
        "value": value,
        "threshold": threshold,
        "unit": unit,
        "pass": None if value is None else value <= threshold,
    }


# --- the report -------------------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [
        f"# Per-call cost ({report['mode']}), {report['date']}, {report['git']['sha']}",
        "",
        f"`{report['command']}` on {report['machine']['cpu_model']} ({report['machine']['nproc']} cores,"
        f" load average at start {', '.join(f'{x:.2f}' for x in report['machine']['load_average_at_start'])};"
        f" flags {' '.join(report['machine'].get('cpu_flags', [])) or '-'});"
        f" servers on core {report['pinning']['server_core']}, sender on core {report['pinning']['generator_core']}."
        " One short run on a shared, busy machine: figures are noisy, the ratios inside the run mean most.",
        "",
        "Per call, from `perf stat -p` on the server (idle rates subtracted); allocations: "
        + (report["mallocs"] or "libc malloc calls, a uprobe in a window of their own"),
        "",
        "| system | callers | N | calls | calls/s | CPU µs | of it gRPC's threads | context switches (vol / invol)"
        " | page faults | mallocs |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for key, figures in report["loads"].items():
        c = figures["per_call"]
        lines.append(
            f"| {key.split('/')[0]} | {figures['callers']} | {figures['candidates']} | {figures['calls']} |"
            f" {figures['calls_per_s']:.0f} | {_show(c['cpu_us'])} | {_show(c.get('grpc_threads_cpu_us'))} |"
            f" {_show(c['context_switches'], 2)}"
            f" ({_show(c['voluntary_switches'], 2)} / {_show(c['involuntary_switches'], 2)}) |"
            f" {_show(c['page_faults'], 2)} | {_show(c['mallocs'])} |"
        )
    lines += ["", "## Derived, and the issue's targets", ""]
    lines += [
        "| callers | served CPU µs | engine µs (batch rows) | transport µs | refusal µs | echo µs |"
        " transport / echo | refusal / echo | served, gRPC's threads µs / echo |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["derived"]:
        served = report["loads"].get(f"served/{row['callers']}")
        rows = engine_rows(served) if served else None
        lines.append(
            f"| {row['callers']} | {_show(row['served_cpu_us'])} | {_show(row['engine_cpu_us'])} ({rows or '-'}) |"
            f" {_show(row['transport_cpu_us'])} | {_show(row['refusal_cpu_us'])} | {_show(row['echo_cpu_us'])} |"
            f" {_show(row['transport_vs_echo'], 2)} | {_show(row['refusal_vs_echo'], 2)} |"
            f" {_show(row.get('served_grpc_threads_cpu_us'))} / {_show(row['echo_cpu_us'])}"
            f" = {_show(row.get('grpc_threads_vs_echo'), 2)} |"
        )
    lines += [
        "",
        "Engine µs: the ctr session alone (perf/engine.py's Engine, core 0, CPU time of its process), run right after"
        " each round of the load on a batch of the mean rows adrank ran per batch in it, times the call's share of"
        " those rows; transport µs is each round's served less engine, the median of the rounds. It runs back to back"
        " with warm caches; the transport figure (served less engine) therefore also holds whatever more the same"
        " session costs inside the server. gRPC's threads: the server's threads not named as its process (gRPC's,"
        " and the C++ front end's completion-queue threads adrank-grpc-N: the transport and adrank's C++ Rank"
        " contract), against the echo server, all of whose work is there.",
    ]
    lines += ["", "| callers | target | value | bound | result |", "| --- | --- | --- | --- | --- |"]
    for row in report["derived"]:
        for target in row["targets"]:
            verdict = {True: "pass", False: "FAIL", None: "not evaluated"}[target["pass"]]
            lines.append(
                f"| {row['callers']} | {target['target']} | {_show(target['value'], 2)}{target['unit']} |"
                f" <= {target['threshold']:g}{target['unit']} | {verdict} |"
            )
    lines += ["", "## Scale: adrank serving ctr, one caller", ""]
    lines += [
        "| N | CPU µs / call | CPU µs / candidate | engine µs / call | rest µs / call | switches / call"
        " | mallocs / call |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report["scale"]:
        lines.append(
            f"| {row['candidates']} | {_show(row['cpu_us'])} | {_show(row['cpu_us_per_candidate'], 3)} |"
            f" {_show(row['engine_cpu_us'])} | {_show(row['rest_cpu_us'])} | {_show(row['context_switches'], 2)} |"
            f" {_show(row['mallocs'])} |"
        )
    if report["models"]:
        lines += [
            "",
            f"## Models per request, N = {report['settings']['candidates']}, one caller, one server holding both",
            "",
        ]
        lines += [
            "| models | CPU µs / call | CPU µs / candidate | switches / call | mallocs / call |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in report["models"]:
            lines.append(
                f"| {row['models']} | {_show(row['cpu_us'])} | {_show(row['cpu_us_per_candidate'], 3)} |"
                f" {_show(row['context_switches'], 2)} | {_show(row['mallocs'])} |"
            )
    lines += by_thread_table(report["loads"])
    notes = [f"{key}: {note}" for key, figures in report["loads"].items() for note in figures["notes"]]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def by_thread_table(loads: dict[str, dict]) -> list[str]:
    """Per call, by thread name: CPU µs / context switches, for the threads that did any work in some load."""
    names = sorted(
        {name for figures in loads.values() for name, us in figures["cpu_us_by_thread"].items() if us >= 1.0},
        key=lambda name: -max(figures["cpu_us_by_thread"].get(name, 0.0) for figures in loads.values()),
    )
    if not names:
        return []
    lines = ["", "## By thread name, per call: CPU µs / context switches", ""]
    lines += ["| system | callers | " + " | ".join(names) + " |", "| --- | --- |" + " --- |" * len(names)]
    for key, figures in loads.items():
        cells = [
            f"{_show(figures['cpu_us_by_thread'].get(name))} / {_show(figures['switches_by_thread'].get(name), 2)}"
            for name in names
        ]
        lines.append(f"| {key.split('/')[0]} | {figures['callers']} | " + " | ".join(cells) + " |")
    return lines


def scale_row(figures: dict) -> dict:
    c = figures["per_call"]
    return {
        "candidates": figures["candidates"],
        "cpu_us": c["cpu_us"],
        "cpu_us_per_candidate": ratio(c["cpu_us"], figures["candidates"]),
        "engine_cpu_us": c.get("engine_cpu_us"),
        "rest_cpu_us": c.get("transport_cpu_us"),
        "context_switches": c["context_switches"],
        "mallocs": c["mallocs"],
    }


def models_row(name: str, figures: dict) -> dict:
    c = figures["per_call"]
    return {
        "models": name,
        "cpu_us": c["cpu_us"],
        "cpu_us_per_candidate": ratio(c["cpu_us"], figures["candidates"]),
        "context_switches": c["context_switches"],
        "mallocs": c["mallocs"],
    }


# --- the run ------------------------------------------------------------------------------------------------------


def median_of_rounds(rounds: Sequence[dict]) -> dict:
    """One load measured in several rounds: each per-call figure the median of the rounds that have it, calls and
    batches added up, every round's figures kept under "rounds"."""
    first = rounds[0]
    per_call = {}
    for name in first["per_call"]:
        values = [r["per_call"][name] for r in rounds if r["per_call"][name] is not None]
        per_call[name] = float(np.median(values)) if values else None
    threads = sorted({name for r in rounds for name in r["cpu_us_by_thread"]})
    switching = sorted({name for r in rounds for name in r["switches_by_thread"]})
    batches: dict[str, dict[str, float]] = {}
    for r in rounds:
        for model, counts in r["batches"].items():
            total = batches.setdefault(model, {"batches": 0.0, "rows": 0.0})
            total["batches"] += counts["batches"]
            total["rows"] += counts["rows"]
    return {
        **first,
        "calls": sum(r["calls"] for r in rounds),
        "calls_per_s": float(np.median([r["calls_per_s"] for r in rounds])),
        "per_call": per_call,
        "switches_by_thread": {
            name: float(np.median([r["switches_by_thread"].get(name, 0.0) for r in rounds])) for name in switching
        },
        "cpu_us_by_thread": {
            name: float(np.median([r["cpu_us_by_thread"].get(name, 0.0) for r in rounds])) for name in threads
        },
        "batches": batches,
        "notes": [f"round {i + 1}: {note}" for i, r in enumerate(rounds) for note in r["notes"]],
        "rounds": [
            {key: r[key] for key in ("calls", "calls_per_s", "per_call", "batches", "engine", "run")} for r in rounds
        ],
    }


def interleaved(
    plan: Sequence[tuple[str, Server, Load]], settings: Settings, probe: MallocProbe, sender: Path | None
) -> dict[str, dict]:
    """Each (key, server, load) of `plan` measured in turn, `settings.rounds` times over: {key: median figures}."""
    rounds: dict[str, list[dict]] = {key: [] for key, _, _ in plan}
    for number in range(settings.rounds):
        if settings.rounds > 1:
            log(f" round {number + 1} of {settings.rounds}")
        for key, server, load in plan:
            rounds[key].append(measure(server, load, settings, probe, sender))
    return {key: median_of_rounds(figures) for key, figures in rounds.items()}


def run(settings: Settings, work: Path, sender: Path | None) -> dict[str, object]:
    """Every server and load of `settings`; the per-load figures, the engine's, and the derived tables."""
    s = settings
    served = ctr_payloads(s, s.candidates)
    refused = [refused_request(p) for p in served]
    scale: dict[int, dict] = {}
    models: dict[str, dict] = {}
    echo_binary = find_built("adrank_echo")
    if echo_binary is None:
        log("echo: not run: build/bench/adrank_echo is not built (make loadgen)")
    with MallocProbe(process_libc(os.getpid())) as probe, ExitStack() as servers:
        if probe.reason:
            log(f"allocations {probe.reason}")
        engine = EngineOnly(s, work / "engine.log")
        servers.callback(engine.close)
        process = adrank_server(
            "adrank", repository(work, ["ctr"]), ["--workers", "1"], s.server_core, work / "adrank.log"
        )
        adrank = servers.enter_context(started("adrank", process, s, probe, served[0]))
        adrank.engine = engine
        plan = []
        for n in s.callers:
            plan.append((f"served/{n}", adrank, Load("served", served, s.candidates, n)))
            plan.append((f"refused/{n}", adrank, Load("refused", refused, s.candidates, n, refused=True)))
        if echo_binary is not None:
            process = ServerProcess("echo", [str(echo_binary), "0"], ECHO_READY, s.server_core, work / "echo.log", None)
            echo = servers.enter_context(started("echo", process, s, probe, None))
            plan += [(f"echo/{n}", echo, Load("echo", served, s.candidates, n)) for n in s.callers]
        loads = interleaved(plan, s, probe, sender)
        reused = s.candidates if 1 in s.callers else None  # the served load is the scale's row for its N
        plan = [(str(n), adrank, Load(f"N={n}", ctr_payloads(s, n), n, 1)) for n in s.sizes if n != reused]
        scale = {int(n): figures for n, figures in interleaved(plan, s, probe, sender).items()}
        if reused in s.sizes:
            scale[reused] = loads["served/1"]
        servers.close()
        if s.models_table:
            two = two_model_payloads(s, s.candidates)
            process = adrank_server(
                "adrank-2",
                repository(work, ["ctr", "relevance"]),
                ["--workers", "1"],
                s.server_core,
                work / "adrank-2.log",
            )
            with started("adrank-2", process, s, probe, served[0]) as both:
                plan = [("ctr", both, Load("ctr", served, s.candidates, 1))]
                plan.append(("ctr+relevance", both, Load("ctr+relevance", two, s.candidates, 1)))
                models = interleaved(plan, s, probe, sender)
        mallocs = probe.reason
    return {
        "loads": loads,
        "derived": derive(loads, s.callers),
        "scale": [scale_row(scale[size]) for size in s.sizes],
        "scale_loads": {str(size): figures for size, figures in scale.items()},
        "models": [models_row(name, figures) for name, figures in models.items()],
        "models_loads": models,
        "mallocs": mallocs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="fractions of a second per window (the CI smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .json and .md go")
    parser.add_argument(
        "--python-sender", action="store_true", help="send with grpc.aio even if adrank_loadgen is built"
    )
    parser.add_argument("--engine-worker", action="store_true", help=argparse.SUPPRESS)  # EngineOnly's child
    parser.add_argument("--engine-s", type=float, default=1.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.engine_worker:
        engine_worker(args.engine_s)
        return 0
    unusable = perf_unusable()
    if unusable:
        log(f"cannot measure: {unusable}")
        return 2
    settings = MODES["smoke" if args.smoke else "full"]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        log(f"only core {cores[0]} is available: the server and the generator will share it")
    settings = replace(settings, server_core=cores[0], generator_core=cores[min(1, len(cores) - 1)])
    started_at = time.perf_counter()
    machine = {**machine_info(), "cpu_flags": cpu_flags()}  # the load average before the run: other work skews it
    os.sched_setaffinity(0, {settings.generator_core})
    sender = None if args.python_sender else find_sender()
    log(
        f"mode {settings.mode}: servers on core {settings.server_core},"
        f" sender {sender or 'grpc.aio'} on core {settings.generator_core}"
    )
    work = Path(tempfile.mkdtemp(prefix="adrank-call-cost-"))
    try:
        measured = run(settings, work, sender)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, object] = {
        **run_header("perf/call_cost.py", settings.mode, argv),
        "machine": machine,
        "pinning": {"server_core": settings.server_core, "generator_core": settings.generator_core},
        "settings": asdict(settings),
        "generator": str(sender).replace(f"{REPO}/", "") if sender else "grpc.aio (perf/loadgen.py)",
        "refused_request": f"the served requests naming model '{UNKNOWN_MODEL}'",
        **measured,
        "seconds": time.perf_counter() - started_at,
    }
    report = finite(report)  # type: ignore[assignment]
    stem = (
        args.out
        / f"call-cost-{report['date']}-{report['git']['sha']}{'' if settings.mode == 'full' else '-' + settings.mode}"
    )
    save(report, stem, markdown(report))
    log(f"wrote {stem}.json, .md in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
