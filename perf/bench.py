"""`make bench`: adrank against the engine-only limit and the baselines, measured in one run on pinned cores.

For each model (ctr, relevance) the run measures, one system after another:
- engine-only: the model in ONNX Runtime with no server (perf/engine.py) on the servers' core: the candidates/s
  ceiling and the direct per-request latency;
- adrank (`adrank serve`, this model only), the naive grpc.aio baseline (perf/baselines/naive_server.py) and, for
  ctr, PyTriton (perf/baselines/pytriton/, in a throwaway environment; 'not run: <reason>' if it cannot be had).

Each server runs under `taskset -c <server core>`; the load generator (perf/loadgen.py) runs in this process,
pinned to the other core. Per server: wait until it says it is serving, find its throughput with a short
closed-loop probe, then sweep open-loop Poisson rates from light load to overload (fractions of that throughput,
plus the rate at 10 % of adrank's capacity for the same model), each point bounded in seconds and requests; the
full sweep then bisects between the last point within the bound and the first beyond it. Servers are stopped
with SIGTERM and killed if they linger or anything fails.

The limit (perf/limit_model.py): after the systems ran, an ideal one-core server is simulated on the exact arrival
trace of every open-loop point of a model (send times, candidates and payload bytes as the generator sent them),
with the engine-only batch sweep as its batch-time curve and the grpc++ echo's CPU per call and per byte (measured
over two closed-loop runs, small and large payloads) as its transport; the sweep goes on with the generator's own
draws past the measured rates until the ideal server breaks the bound. Each point gets its `ideal` figures, each
system its `vs_limit` (max candidates/s over the limit's), and the naive server is simulated on its own traces
against its measurement (the simulator's validation).

Output in --out (default perf/results/): <date>-<git sha>.json (everything), .png (p99 latency against
candidates/s per system, the engine-only ceiling, the limit and the 10 ms bound drawn across) and .md (per system:
max candidates/s with p99 <= 10 ms, p50/p99 at 10 % of adrank's capacity, ratio to engine-only and to the limit;
the limit's inputs, per-point figures and validation; the targets pass/fail; the command, machine and pinning).
Modes: default (full, ~7 min here), --quick (< 3 min; files end in -quick), --smoke (CI: seconds, ctr only, no
PyTriton; files end in -smoke).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout, not perf/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from adrank import histogram
from perf import limit_model
from perf import requests as request_sets
from perf.loadgen import LoadGenerator, RunResult, find_built, find_sender
from perf.report import MAX_ERROR_FRACTION, P99_BOUND_MS, finite, markdown, plot, save, targets

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
READY_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class Settings:
    mode: str
    models: tuple[str, ...]
    pytriton: bool
    fractions: tuple[float, ...]  # of the probed capacity (requests/s)
    point_s: float  # open-loop seconds per point
    point_max_requests: int
    probe_s: float
    probe_concurrency: int
    refine_steps: int  # bisection points between the last rate within the bound and the first beyond
    settle_s: float  # pause after each point, for the server to drain what the generator gave up on
    requests: dict[str, int]  # distinct requests per model's set
    engine_sizes: tuple[int, ...]  # also the points of the batch-time curve the limit model interpolates
    engine_s: float  # per batch size
    engine_direct: int
    timeout_s: float = 1.0  # each call's deadline
    server_core: int = 0
    generator_core: int = 1
    adrank_workers: int = 1
    mix: str = "lognormal"  # candidates per request (perf/requests.py Mix): lognormal, ads, uniform:A-B, fixed:N
    queries: str = "texts"  # relevance's query mix (perf/requests.py QueryMix): texts, zipf, zipf:N:S


MODES = {
    "full": Settings(
        mode="full",
        models=("ctr", "relevance"),
        pytriton=True,
        fractions=(0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3),
        point_s=5.0,
        point_max_requests=50_000,
        probe_s=3.0,
        probe_concurrency=16,
        refine_steps=2,
        settle_s=1.0,
        requests={"ctr": 1000, "relevance": 400},
        engine_sizes=(32, 64, 128, 256, 512, 1024, 2048),
        engine_s=1.0,
        engine_direct=1000,
    ),
    "quick": Settings(
        mode="quick",
        models=("ctr", "relevance"),
        pytriton=True,
        fractions=(0.1, 0.4, 0.7, 1.0, 1.3),
        point_s=2.0,
        point_max_requests=20_000,
        probe_s=1.5,
        probe_concurrency=16,
        refine_steps=2,
        settle_s=0.5,
        requests={"ctr": 1000, "relevance": 300},
        engine_sizes=(32, 64, 256, 1024, 2048),
        engine_s=0.4,
        engine_direct=400,
    ),
    "smoke": Settings(
        mode="smoke",
        models=("ctr",),
        pytriton=False,
        fractions=(0.1, 0.5),
        point_s=0.5,
        point_max_requests=2_000,
        probe_s=0.5,
        probe_concurrency=8,
        refine_steps=0,
        settle_s=0.2,
        requests={"ctr": 200, "relevance": 100},
        engine_sizes=(64, 256, 1024),
        engine_s=0.2,
        engine_direct=100,
    ),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- machine and provenance -------------------------------------------------------------------------------------


def _run_text(command: Sequence[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict[str, object]:
    lscpu = _run_text(["lscpu"])
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    return {
        "cpu_model": model.group(1).strip() if model else platform.processor(),
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def git_info() -> dict[str, object]:
    sha = _run_text(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"]) or "nogit"
    dirty = bool(_run_text(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]))
    return {"sha": sha, "dirty": dirty}


def run_header(script: str, mode: str, argv: Sequence[str] | None) -> dict[str, object]:
    """What every bench's result opens with: the date, the commit, the mode and the command that made it."""
    command = [sys.executable.replace(str(REPO) + "/", ""), script, *(argv if argv is not None else sys.argv[1:])]
    return {"date": dt.date.today().isoformat(), "git": git_info(), "mode": mode, "command": " ".join(command)}


# --- servers as processes ---------------------------------------------------------------------------------------


class ServerProcess:
    """A server started under taskset; ready when its stderr prints the ready line; stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], ready: str, core: int, log_file: Path, env: dict | None) -> None:
        self.name = name
        self.command = ["taskset", "-c", str(core), *command]
        self._ready = re.compile(ready)
        self.log_file = log_file
        self.target: str | None = None
        self._lines: list[str] = []
        self._seen = threading.Event()
        self.process = subprocess.Popen(
            self.command,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: tritonserver and friends go with it
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        with self.log_file.open("w") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                if self.target is None:
                    match = self._ready.search(line)
                    if match:
                        self.target = f"{match.group('host')}:{match.group('port')}"
                        self._seen.set()
                self._lines = [*self._lines[-40:], line.rstrip()]
        self._seen.set()

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> str:
        if not self._seen.wait(timeout_s) or self.target is None:
            tail = " | ".join(self._lines[-5:])
            raise RuntimeError(f"{self.name} did not become ready (exit {self.process.poll()}): {tail}")
        return self.target

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines the server printed (at most 40 are kept)."""
        return self._lines[-lines:]

    def cpu_s(self) -> float:
        """The server's CPU time so far (user + system, all threads): taskset exec'd it, so the pid is the server's."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        """The server's resident set size now (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"{self.name}: no VmRSS in /proc/{self.process.pid}/status (exit {self.process.poll()})")

    def stop(self, grace_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL to its process group if it is still there after `grace_s`."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                log(f"{self.name} still running {grace_s:.0f} s after SIGTERM: killing it")
        self._kill_group()
        self._reader.join(timeout=5)
        return self.process.returncode

    def _kill_group(self) -> None:
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


ADRANK_READY = r"adrank: SERVING .* on grpc (?P<host>[\d.]+):(?P<port>\d+)"
NAIVE_READY = r"naive: SERVING .* on grpc (?P<host>[\d.]+):(?P<port>\d+)"


def adrank_server(name: str, repository: Path, options: list[str], core: int, log_file: Path) -> ServerProcess:
    """`adrank serve` of `repository` on loopback, any free gRPC and HTTP port unless `options` name them."""
    command = [*_console_script("adrank"), "serve", "--repository", str(repository), "--host", "127.0.0.1"]
    command += ["--grpc-port", "0", "--http-port", "0", *options]  # click takes the last of a repeated option
    return ServerProcess(name, command, ADRANK_READY, core, log_file, None)


@contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        code = server.stop()
        log(f"{server.name} stopped (exit {code})")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _console_script(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", f"import sys; from adrank.cli import main; sys.argv[0] = '{name}'; main()"]


# --- PyTriton ------------------------------------------------------------------------------------------------------


@dataclass
class PyTriton:
    """The throwaway environment, its KServe payloads and the files Triton leaves behind to clean up."""

    interpreter: Path
    library_dir: str
    payloads: list[bytes]
    candidates: object
    home: Path

    @staticmethod
    def leftovers() -> set[Path]:
        return set(Path("/dev/shm").glob("pytrtion*")) | set(Path("/tmp").glob("folder*"))


def prepare_pytriton(requests: request_sets.RequestSet, work: Path, venv: Path) -> PyTriton:
    import onnxruntime

    from perf.baselines.pytriton import setup_venv

    started = time.perf_counter()
    interpreter = setup_venv.ensure(venv, onnxruntime.__version__)
    log(f"pytriton environment {venv} ready ({time.perf_counter() - started:.0f} s)")
    payloads = request_sets.kserve_payloads(requests, requests.model)
    library_dir = setup_venv.library_dir(interpreter)
    return PyTriton(interpreter, library_dir, payloads, requests.candidates, work / "pytriton-home")


def check_reply(target: str, method: str, payload: bytes, candidates: int, kind: str) -> None:
    """One call off the clock: the server answers with a score per candidate (the generator never parses)."""
    import grpc

    from adrank.v1 import ranking_pb2 as pb

    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        reply = channel.unary_unary(method)(payload, timeout=60)
    if kind in ("echo", "echo-cpp"):
        return
    if method == request_sets.KSERVE_METHOD:
        scores = len(reply) // 4  # ModelInferResponse: the raw float32 output is most of it
    else:
        response = pb.RankResponse.FromString(reply)
        scores = len(response.results[0].scores) // 4 if response.results else 0
    if scores < candidates:
        raise RuntimeError(f"a request of {candidates} candidates got {scores} scores back")


# --- one system: probe, sweep, summary --------------------------------------------------------------------------


@dataclass
class SystemResult:
    name: str
    model: str
    status: str = "ok"
    server: str = ""
    probe: dict[str, object] | None = None
    points: list[dict[str, object]] = field(default_factory=list)
    max_candidates_per_s: float | None = None  # with p99 <= bound and errors <= MAX_ERROR_FRACTION
    at_10pct: dict[str, object] | None = None
    generator_saturated_points: int = 0
    seconds: float = 0.0
    probe_server_cpu_s: float | None = None  # the server's CPU time over its closed-loop probe
    transport: dict[str, object] | None = None  # echo servers: CPU per call and per byte (measure_transport)
    vs_limit: float | None = None  # max_candidates_per_s / the simulated ideal server's (perf/limit_model.py)
    # Echo servers: every OK call's latency at the 10 % point (the transport's floor, as a distribution).
    floor_latency_s: np.ndarray | None = None
    # adrank, a model with a context tower: its cache's hits and misses over the whole run (/metrics at the end).
    context_cache: dict[str, float] | None = None
    # The arrival traces of its open-loop points (in the order of `points`) and of its probe: inputs of the limit
    # model, kept out of the JSON.
    traces: list[limit_model.Trace] = field(default_factory=list, repr=False)
    probe_trace: limit_model.Trace | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("traces", "probe_trace", "floor_latency_s")}


def within_bound(point: dict[str, object]) -> bool:
    p99 = point["latency_ms"]["p99"]  # type: ignore[index]
    return (
        isinstance(p99, float)
        and math.isfinite(p99)
        and p99 <= P99_BOUND_MS
        and float(point["error_fraction"]) <= MAX_ERROR_FRACTION  # type: ignore[arg-type]
    )


def _point(result: RunResult, fraction: float | None, label: str) -> dict[str, object]:
    point = result.to_json()
    point["fraction_of_capacity"] = fraction
    point["label"] = label
    point["within_bound"] = within_bound(point)
    return point


def measure_floor(result: SystemResult, generator: LoadGenerator, settings: Settings, rate: float) -> None:
    """The echo server: only the point at 10 % of adrank's capacity (latency floor of transport + generator).
    Its max candidates/s is that point's when within the bound: one point, so a lower bound."""
    point = _point(_open(generator, settings, rate, result), None, "10% of adrank")
    _, latency_s, ok = generator.record()
    result.floor_latency_s = latency_s[ok & np.isfinite(latency_s)]
    point["at_10pct_of_adrank"] = True
    result.at_10pct = point
    result.points.append(point)
    _log_point(result.name, point)
    result.generator_saturated_points = int(bool(point["generator_saturated"]))
    result.max_candidates_per_s = float(point["candidates_per_s"]) if point["within_bound"] else 0.0  # type: ignore[arg-type]


def measure_transport(
    result: SystemResult, server: ServerProcess, generator: LoadGenerator, settings: Settings
) -> None:
    """The echo server's CPU per call and per byte: its process CPU over two closed-loop runs, one of the request
    set's smallest quarter of payloads and one of its largest, fitted as per_call + per_byte x bytes."""
    by_size = sorted(range(len(generator.payloads)), key=lambda i: len(generator.payloads[i]))
    quarter = max(1, len(by_size) // 4)
    runs: list[tuple[int, int, float]] = []
    for chosen in (by_size[:quarter], by_size[-quarter:]):
        sized = LoadGenerator(
            generator.target,
            generator.method,
            [generator.payloads[i] for i in chosen],
            generator.candidates[chosen],
            timeout_s=generator.timeout_s,
            sender=generator.sender,
        )
        before = server.cpu_s()
        sized.closed_loop(settings.probe_concurrency, settings.probe_s, 1_000_000)
        cpu = server.cpu_s() - before
        _, _, sizes = sized.trace()
        runs.append((len(sizes), int(sizes.sum()), cpu))
    cost = limit_model.TransportCost.fitted(runs, result.name)
    result.transport = {
        "per_call_us": cost.per_call_s * 1e6,
        "per_byte_ns": cost.per_byte_s * 1e9,
        "runs": [{"calls": c, "bytes": b, "server_cpu_s": t} for c, b, t in runs],
    }
    log(f"  {result.name} transport: {cost.per_call_s * 1e6:.1f} us per call + {cost.per_byte_s * 1e9:.3f} ns per byte")


def measure_system(
    result: SystemResult,
    generator: LoadGenerator,
    settings: Settings,
    at_10pct_rate: float | None,
    server: ServerProcess | None = None,
    metrics_url: str | None = None,
) -> float:
    """Probes, sweeps and summarizes into `result`; returns the probed capacity in requests/s. With `server`, its
    CPU time over the probe is recorded too; with `metrics_url` (adrank's /metrics), the 10 % point gets the
    server's own latency quantiles (`server_ms`), so that a light-load tail is placed in or outside the server."""
    before = server.cpu_s() if server else None
    probe = generator.closed_loop(settings.probe_concurrency, settings.probe_s, 1_000_000)
    if server and before is not None:
        result.probe_server_cpu_s = server.cpu_s() - before
    result.probe_trace = _trace(generator, settings)
    result.probe = probe.to_json()
    capacity = probe.achieved_rate
    log(
        f"  {result.name} probe: {capacity:.0f} req/s, {probe.candidates_per_s:.0f} cand/s"
        f" (closed loop, {settings.probe_concurrency} in flight, p99 {probe.latency_ms['p99']:.1f} ms)"
    )
    if capacity <= 0:
        raise RuntimeError(f"the probe got no successful reply ({probe.errors})")
    own_10pct = at_10pct_rate if at_10pct_rate is not None else 0.1 * capacity
    rates = {round(f * capacity, 3): (f, f"{f:.0%}") for f in settings.fractions}
    if not any(abs(r - own_10pct) <= 0.02 * own_10pct for r in rates):
        rates[round(own_10pct, 3)] = (own_10pct / capacity, "10% of adrank")
    failed_in_row = 0
    for rate in sorted(rates):
        fraction, label = rates[rate]
        light = abs(rate - own_10pct) <= 0.02 * own_10pct
        before = server_latency_counts(metrics_url) if light and metrics_url else None
        point = _point(_open(generator, settings, rate, result), fraction, label)
        if light:
            point["at_10pct_of_adrank"] = True
            if before is not None and metrics_url:
                point["server_ms"] = server_phase_quantiles(before, server_latency_counts(metrics_url))
            result.at_10pct = point
        result.points.append(point)
        _log_point(result.name, point)
        time.sleep(settings.settle_s)
        failed_in_row = 0 if point["within_bound"] else failed_in_row + 1
        if failed_in_row >= 2 and rate >= capacity and (result.at_10pct is not None):
            break  # deep in overload: more points only measure the queue
    _refine(result, generator, settings)
    ok = [p for p in result.points if p["within_bound"]]
    result.max_candidates_per_s = max((float(p["candidates_per_s"]) for p in ok), default=0.0)  # type: ignore[arg-type]
    result.generator_saturated_points = sum(1 for p in result.points if p["generator_saturated"])
    return capacity


def _open(generator: LoadGenerator, settings: Settings, rate: float, result: SystemResult) -> RunResult:
    """One open-loop point at `rate`; its arrival trace goes to `result.traces`."""
    count = _point_requests(settings, rate)
    run = generator.open_loop(rate, count / rate, count)
    result.traces.append(_trace(generator, settings))
    return run


def _point_requests(settings: Settings, rate: float) -> int:
    return min(settings.point_max_requests, max(20, int(rate * settings.point_s)))


def _trace(generator: LoadGenerator, settings: Settings) -> limit_model.Trace:
    return limit_model.Trace.of(*generator.trace(), deadline_s=settings.timeout_s)


def _refine(result: SystemResult, generator: LoadGenerator, settings: Settings) -> None:
    """Bisects the offered rate between the highest rate within the bound and the lowest beyond it.

    A system beyond the bound at every rate gets half its lowest rate instead (a heavy-tailed request mix can
    break a 10 ms p99 at light load already).
    """
    for _ in range(settings.refine_steps):
        by_rate = sorted(result.points, key=lambda p: float(p["target_rate"]))  # type: ignore[arg-type]
        good = [float(p["target_rate"]) for p in by_rate if p["within_bound"]]  # type: ignore[arg-type]
        if not good:
            time.sleep(2 * settings.settle_s)
            rate = float(by_rate[0]["target_rate"]) / 2  # type: ignore[arg-type]
            point = _point(_open(generator, settings, rate, result), None, "halve")
            result.points.append(point)
            _log_point(result.name, point)
            continue
        beyond = [float(p["target_rate"]) for p in by_rate if not p["within_bound"] and p["target_rate"] > max(good)]  # type: ignore[arg-type, operator]
        if not beyond:
            return
        rate = (max(good) + min(beyond)) / 2
        time.sleep(2 * settings.settle_s)  # the overload points just before left a queue behind
        point = _point(_open(generator, settings, rate, result), None, "bisect")
        result.points.append(point)
        _log_point(result.name, point)


def _log_point(name: str, point: dict[str, object]) -> None:
    lat = point["latency_ms"]
    flags = f" gen-cpu {point['generator_cpu']:.0%}"
    flags += " GENERATOR-SATURATED" if point["generator_saturated"] else ""
    flags += f" errors={point['errors']}" if point["errors"] else ""
    log(
        f"  {name} {point['label']:>14} offered {point['target_rate']:8.1f}/s: {point['candidates_per_s']:9.0f} cand/s"
        f" p50 {lat['p50']:6.2f} p99 {lat['p99']:7.2f} ms{flags}"  # type: ignore[index]
    )


# --- the run ----------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, settings: Settings, out: Path, pytriton_venv: Path, repository: Path = REPO / "models") -> None:
        self.settings = settings
        self.out = out
        self.pytriton_venv = pytriton_venv
        self.work = Path(tempfile.mkdtemp(prefix="adrank-bench-"))
        self.repository = repository.resolve()
        self.systems: dict[str, SystemResult] = {}
        self.engine: dict[str, dict[str, object]] = {}
        self.request_sets: dict[str, request_sets.RequestSet] = {}
        self.sender: Path | None = None
        self.limits: dict[str, dict[str, object]] = {}

    def run(self) -> dict[str, object]:
        s = self.settings
        started = time.perf_counter()
        os.sched_setaffinity(0, {s.generator_core})
        log(f"mode {s.mode}: servers and engine on core {s.server_core}, generator on core {s.generator_core}")
        for model in s.models:
            built = time.perf_counter()
            self.request_sets[model] = request_sets.build(model, s.requests[model], **self._mixes(model))
            log(f"{model}: {self.request_sets[model].summary()} ({time.perf_counter() - built:.1f} s to build)")
        for model in s.models:
            self.engine[model] = self._engine(model)
        sender = find_sender()
        self.sender = sender
        log(f"load generator: {sender or 'grpc.aio in this process (adrank_loadgen is not built)'}")
        for model in s.models:
            adrank = self._system(f"adrank-{model}", model, "adrank", None)
            rate_10 = 0.1 * adrank[1] if adrank[1] else None
            if rate_10:
                self.engine[model]["direct_paced"] = self._engine_paced(model, rate_10)
            self._system("naive" if model == "ctr" else f"naive-{model}", model, "naive", rate_10)
            # The transport's floor and costs, once per run (the limit of every model takes them): with ctr's
            # requests, or the first model's where ctr is not in the run.
            if model == ("ctr" if "ctr" in s.models else s.models[0]) and rate_10:
                self._system("grpc-echo", model, "echo", rate_10)
                if find_built("adrank_echo"):
                    self._system("grpc-echo-cpp", model, "echo-cpp", rate_10)
            if model == "ctr":
                if s.pytriton:
                    self._system("pytriton", model, "pytriton", rate_10)
                else:
                    reason = "--smoke mode" if s.mode == "smoke" else "--no-pytriton"
                    self.systems["pytriton"] = SystemResult("pytriton", model, status=f"not run: {reason}")
        for model in s.models:
            try:
                self._limit(model)
            except Exception as error:  # the measurements stand without their limit: reported, never lost
                self.limits[model] = {"status": f"failed: {error!r}"}
                log(f"limit {model}: failed: {error!r}")
        shutil.rmtree(self.work, ignore_errors=True)
        return {"seconds": time.perf_counter() - started}

    def _limit(self, model: str) -> None:
        """The simulated ideal server (perf/limit_model.py) on every trace of `model` this run sent, extended past
        them by the load generator's own draws; each point gets its `ideal` figures, each system its `vs_limit`,
        and the naive server is simulated on its own traces against its measurement."""
        s = self.settings
        started = time.perf_counter()
        curve = batch_curve(self.engine[model])
        transport = self._transport_cost()
        systems = [r for r in self.systems.values() if r.model == model and r.traces]
        for system in systems:
            if len(system.traces) != len(system.points):
                raise RuntimeError(f"{system.name}: {len(system.traces)} traces for {len(system.points)} points")
        traces = [t for r in systems for t in r.traces]
        if not traces:
            return
        requests = self.request_sets[model]
        planner = LoadGenerator("127.0.0.1:0", requests.method, requests.payloads, requests.candidates)  # never sends
        sizes = np.array([len(payload) for payload in requests.payloads], dtype=np.int64)

        def draw(rate: float) -> limit_model.Trace:
            count = _point_requests(s, rate)
            schedule, order = planner.plan(rate, count / rate, count)
            return limit_model.Trace.of(schedule, requests.candidates[order], sizes[order], s.timeout_s)

        sweep = limit_model.sweep(traces, curve, transport, P99_BOUND_MS, draw)
        measured = sweep.points[: len(traces)]  # the drawn points follow the measured ones
        for point, ideal in zip((p for r in systems for p in r.points), measured, strict=True):
            point["ideal"] = ideal.to_json()
        limit = sweep.limit_candidates_per_s
        for system in self.systems.values():
            if system.model == model and system.max_candidates_per_s is not None and limit > 0:
                system.vs_limit = system.max_candidates_per_s / limit
        self.limits[model] = {
            "limit_candidates_per_s": limit,
            "transport": {
                "source": transport.source,
                "per_call_us": transport.per_call_s * 1e6,
                "per_byte_ns": transport.per_byte_s * 1e9,
                "latency_us": transport.latency_s * 1e6,
                # The off-core latencies the ideal server drew from (the echo's at 10 % load, less its CPU).
                "latency_samples": len(transport.latency_samples_s),
                "latency_p99_us": (
                    float(np.percentile(transport.latency_samples_s, 99)) * 1e6 if transport.latency_samples_s else None
                ),
            },
            "batch_curve": {
                "rows": list(curve.rows),
                "ms": [t * 1e3 for t in curve.seconds],
                "requests": list(curve.requests) if curve.requests else None,
                "per_request_ms": curve.per_request_s * 1e3,
            },
            "sweep": sweep.to_json(),
            "naive_validation": self._validate_naive(model, curve),
        }
        log(
            f"limit {model}: {limit:.0f} cand/s with p99 <= {P99_BOUND_MS:g} ms (policy wins"
            f" {sweep.to_json()['policy_wins']}, {sweep.drawn} drawn points, {time.perf_counter() - started:.1f} s)"
        )

    def _transport_cost(self) -> limit_model.TransportCost:
        """The grpc++ echo's CPU per call and per byte, and its p50 at light load less that CPU (the latency off the
        server's core); the grpc.aio echo's where grpc++ is not built."""
        for name in ("grpc-echo-cpp", "grpc-echo"):
            system = self.systems.get(name)
            if system and system.transport and system.at_10pct and system.traces:
                per_call = float(system.transport["per_call_us"]) / 1e6  # type: ignore[arg-type]
                per_byte = float(system.transport["per_byte_ns"]) / 1e9  # type: ignore[arg-type]
                cpu_s = per_call + per_byte * float(system.traces[0].payload_bytes.mean())
                p50_s = _number(system.at_10pct["latency_ms"]["p50"]) / 1e3  # type: ignore[index]
                latency = max(0.0, p50_s - cpu_s) if math.isfinite(p50_s) else 0.0
                floor = system.floor_latency_s if system.floor_latency_s is not None else np.empty(0)
                samples = tuple(float(x) for x in np.maximum(floor - cpu_s, 0.0))
                return limit_model.TransportCost(per_call, per_byte, name, latency, samples)
        return limit_model.TransportCost(0.0, 0.0, "none: no echo server was measured")

    def _validate_naive(self, model: str, curve: limit_model.BatchCurve) -> dict[str, dict[str, object]] | None:
        """The naive server simulated on its own traces, its time per call beyond the engine taken from its probe
        as CPU time (what the limit's costs are) and as wall time (what its share of a busy core gave it)."""
        naive = self.systems.get("naive" if model == "ctr" else f"naive-{model}")
        if not naive or not naive.traces or naive.probe_trace is None or naive.probe_server_cpu_s is None:
            return None
        probe_wall_s = float(naive.probe["elapsed_s"])  # type: ignore[index, arg-type]
        overheads = {
            "cpu": limit_model.per_call_overhead(naive.probe_trace, naive.probe_server_cpu_s, curve),
            "wall": limit_model.per_call_overhead(naive.probe_trace, probe_wall_s, curve),
        }
        measured = [
            limit_model.MeasuredPoint(
                _number(p["latency_ms"]["p50"]),  # type: ignore[index]
                _number(p["latency_ms"]["p99"]),  # type: ignore[index]
                _number(p["candidates_per_s"]),
                bool(p["within_bound"]),
            )
            for p in naive.points
        ]
        off_core = self._transport_cost()
        validations = {}
        for basis, overhead in overheads.items():
            simulated = limit_model.validate_naive(naive.traces, measured, overhead, curve, P99_BOUND_MS, off_core)
            validation = simulated.to_json()
            validations[basis] = validation
            log(
                f"limit {model}: the naive server ({basis} per call: {overhead * 1e6:.0f} us beyond the engine)"
                f" simulated / measured: max cand/s {validation['max_candidates_ratio']},"
                f" p50 median {validation['p50_ratio_median']}, p99 median {validation['p99_ratio_median']}"
            )
        return validations

    def _mixes(self, model: str) -> dict[str, Any]:
        """The request set's draws for `model`: the candidate mix, and relevance's query mix."""
        queries = request_sets.QueryMix.parse(self.settings.queries)
        return {
            "mix": request_sets.Mix.parse(self.settings.mix),
            "queries": queries if model == "relevance" else request_sets.QueryMix(),
        }

    def _run_engine(self, model: str, label: str, options: list[str]) -> dict[str, object]:
        """perf/engine.py for `model` on the servers' core with `options`; its JSON."""
        s = self.settings
        out = self.work / f"{label.replace(' ', '-')}-{model}.json"
        command = ["taskset", "-c", str(s.server_core), sys.executable, str(REPO / "perf" / "engine.py")]
        command += ["--model", model, "--requests", str(s.requests[model]), "--out", str(out), *options]
        command += ["--repository", str(self.repository), "--mix", s.mix]
        command += ["--queries", s.queries] if model == "relevance" else []
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{label} {model} failed: {done.stderr.strip()[-500:]}")
        return json.loads(out.read_text())

    def _engine(self, model: str) -> dict[str, object]:
        s = self.settings
        started = time.perf_counter()
        options = ["--sizes", ",".join(map(str, s.engine_sizes)), "--seconds", str(s.engine_s)]
        result = self._run_engine(model, "engine-only", [*options, "--direct", str(s.engine_direct)])
        best = result["best"]
        log(
            f"engine-only {model}: ceiling {result['ceiling_candidates_per_s']:.0f} cand/s at batch"
            f" {best['batch_rows']}, direct p50 {result['direct']['p50_ms']:.3f} ms"
            f" p99 {result['direct']['p99_ms']:.3f} ms ({time.perf_counter() - started:.1f} s)"
        )
        return result

    def _engine_paced(self, model: str, rate: float) -> dict[str, object]:
        """Direct ONNX Runtime latency with calls paced as the 10 % point's arrivals (engine.py: why it differs)."""
        count = max(50, min(self.settings.engine_direct, round(rate * self.settings.point_s)))
        options = ["--direct", str(count), "--paced", f"{rate:.3f}"]
        paced = self._run_engine(model, "engine-only paced", options)["direct"]
        log(f"engine-only {model}: direct paced at {rate:.1f}/s p50 {paced['p50_ms']:.3f} ms p99 {paced['p99_ms']:.3f}")
        return paced

    def _system(self, name: str, model: str, kind: str, at_10pct_rate: float | None) -> tuple[str, float | None]:
        s = self.settings
        result = SystemResult(name, model)
        self.systems[name] = result
        started = time.perf_counter()
        requests = self.request_sets[model]
        payloads, candidates, method = requests.payloads, requests.candidates, requests.method
        leftovers: set[Path] = set()
        try:
            env: dict[str, str] | None = None
            if kind == "adrank":
                repository = self.work / f"repository-{model}"
                repository.mkdir(exist_ok=True)
                link = repository / model
                if not link.exists():
                    link.symlink_to(self.repository / model)
                command = [*_console_script("adrank"), "serve", "--repository", str(repository)]
                http_port = free_port()  # known, to read the server's /metrics after the run
                command += ["--host", "127.0.0.1", "--grpc-port", "0", "--http-port", str(http_port)]
                command += ["--workers", str(s.adrank_workers)]
                ready = ADRANK_READY
            elif kind == "echo-cpp":
                command = [str(find_built("adrank_echo")), "0"]
                ready = r"echo: SERVING on grpc (?P<host>[\d.]+):(?P<port>\d+)"
            elif kind in ("naive", "echo"):
                command = [sys.executable, str(REPO / "perf" / "baselines" / "naive_server.py"), "--models", model]
                command += ["--host", "127.0.0.1", "--port", "0", *(["--echo"] if kind == "echo" else [])]
                ready = NAIVE_READY
            else:
                triton = prepare_pytriton(requests, self.work, self.pytriton_venv)
                payloads, candidates, method = triton.payloads, triton.candidates, request_sets.KSERVE_METHOD
                leftovers = PyTriton.leftovers()
                command = [str(triton.interpreter), str(REPO / "perf" / "baselines" / "pytriton" / "server.py")]
                command += ["--model-dir", str(REPO / "models" / model / "1"), "--name", model]
                command += ["--grpc-port", str(free_port()), "--http-port", str(free_port())]
                command += ["--workspace", str(self.work / "pytriton-workspace")]
                env = {"LD_LIBRARY_PATH": triton.library_dir, "PYTRITON_HOME": str(triton.home)}
                ready = r"pytriton: SERVING .* on grpc (?P<host>[\d.]+):(?P<port>\d+)"
            log(f"{name}: starting {' '.join(command[:3])} ...")
            server = ServerProcess(name, command, ready, s.server_core, self.work / f"{name}.log", env)
            with running(server):
                target = server.wait_ready()
                result.server = target
                log(f"{name}: serving on {target} ({time.perf_counter() - started:.1f} s)")
                check_reply(target, method, payloads[0], int(candidates[0]), kind)  # type: ignore[index]
                generator = LoadGenerator(
                    target,
                    method,
                    payloads,  # type: ignore[arg-type]
                    candidates,  # type: ignore[arg-type]
                    timeout_s=s.timeout_s,
                    sender=self.sender,
                )
                metrics_url = f"http://127.0.0.1:{http_port}/metrics" if kind == "adrank" else None
                if kind in ("echo", "echo-cpp"):
                    assert at_10pct_rate is not None
                    measure_floor(result, generator, s, at_10pct_rate)
                    measure_transport(result, server, generator, s)
                    capacity = None
                else:
                    capacity = measure_system(result, generator, s, at_10pct_rate, server, metrics_url)
                if metrics_url:
                    result.context_cache = context_cache_figures(metrics_url)
        except Exception as error:  # one system failing is recorded, and the run goes on
            result.status = f"not run: {error}" if not result.points else f"failed: {error}"
            log(f"{name}: {result.status}")
            capacity = None
        finally:
            if kind == "pytriton":
                for path in PyTriton.leftovers() - leftovers:
                    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        result.seconds = time.perf_counter() - started
        return name, capacity


def metric_samples(url: str) -> list[Any]:
    """Every sample (prometheus_client's: name, labels, value) a server's /metrics shows; read once per call."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=10) as reply:  # loopback: the server under test
        text = reply.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def context_cache_figures(url: str) -> dict[str, float] | None:
    """Hits, misses and the hit ratio of every context cache a server's /metrics shows (None: no cache)."""
    totals = {"hits": 0.0, "misses": 0.0}
    seen = False
    for sample in metric_samples(url):
        for kind in totals:
            if sample.name == f"adrank_context_cache_{kind}_total":  # no samples where no version has a cache
                seen = True
                totals[kind] += sample.value
    if not seen:
        return None
    looked_up = totals["hits"] + totals["misses"]
    return {**totals, "hit_ratio": totals["hits"] / looked_up if looked_up else math.nan}


SERVER_PHASES = ("request", "queue", "compute")  # adrank_{phase}_latency_seconds: see metrics/exporter.py


def server_latency_counts(url: str) -> dict[str, dict[float, float]]:
    """Cumulative bucket counts by `le` (seconds) of adrank's request, queue and compute latency histograms, summed
    over every model and version a server's /metrics shows (one model serves in a bench run)."""
    counts: dict[str, dict[float, float]] = {phase: {} for phase in SERVER_PHASES}
    for sample in metric_samples(url):
        for phase in SERVER_PHASES:
            if sample.name == f"adrank_{phase}_latency_seconds_bucket":
                le = float(sample.labels["le"])
                counts[phase][le] = counts[phase].get(le, 0.0) + sample.value
    return counts


def server_phase_quantiles(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """p50 and p99 (ms) of what each phase histogram counted between two reads: the server's own view of the calls
    of one point (arrival to answer, queueing, the batch's execution), to set beside the client's latency."""
    quantiles: dict[str, dict[str, float]] = {}
    for phase, cumulative in after.items():
        bounds = sorted(le for le in cumulative if math.isfinite(le))
        les = [*bounds, math.inf]
        cum = np.array([cumulative.get(le, 0.0) - before.get(phase, {}).get(le, 0.0) for le in les])
        per_bucket = np.diff(cum, prepend=0.0)
        if not bounds or cum[-1] <= 0:
            continue
        edges = np.array(bounds) * 1e3
        quantiles[phase] = {
            "p50": float(histogram.quantile(per_bucket, 0.5, edges)),
            "p99": float(histogram.quantile(per_bucket, 0.99, edges)),
            "calls": float(cum[-1]),
        }
    return quantiles


def batch_curve(engine_result: dict[str, object]) -> limit_model.BatchCurve:
    """The engine-only batch sweep at its best thread count as seconds per run (the median run: the ideal server
    gets its core to itself, which the engine-only run on a busy machine did only most of the time) against rows
    per run, with the fitted cost per request."""
    threads = engine_result["best"]["intra_op_threads"]  # type: ignore[index]
    sweep = [p for p in engine_result["batch_sweep"] if p["intra_op_threads"] == threads]  # type: ignore[attr-defined]
    rows = [float(p.get("rows_per_run", p["batch_rows"])) for p in sweep]
    requests = [float(p["requests_per_run"]) for p in sweep] if all("requests_per_run" in p for p in sweep) else None
    seconds = [float(p.get("ms_per_run_p50", p["ms_per_run"])) / 1e3 for p in sweep]
    curve = limit_model.BatchCurve.measured(rows, seconds, requests)
    samples = engine_result["direct"].get("samples") or []  # type: ignore[attr-defined]
    return curve.fit_per_request([(float(n), float(ms) / 1e3) for n, ms in samples])


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


# --- the report -------------------------------------------------------------------------------------------------


def _limit_ratio(candidates_per_s: float, limit: dict[str, object] | None) -> float | None:
    value = float(limit["limit_candidates_per_s"]) if limit else 0.0  # type: ignore[arg-type]
    return candidates_per_s / value if value > 0 else None


def _mix_suffix(settings: Settings) -> str:
    """'' for the default mixes; otherwise the file names say which (a mix never overwrites another's run)."""
    parts = [part for part, default in ((settings.mix, "lognormal"), (settings.queries, "texts")) if part != default]
    return "".join("-" + re.sub(r"[^A-Za-z0-9.]+", "-", part) for part in parts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="fewer, shorter points (< 3 minutes)")
    group.add_argument("--smoke", action="store_true", help="seconds: ctr only, no PyTriton (the CI smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .json, .png and .md go")
    parser.add_argument("--no-pytriton", action="store_true", help="skip PyTriton")
    parser.add_argument("--pytriton-venv", type=Path, default=None, help="throwaway environment for PyTriton")
    parser.add_argument("--models", default=None, help="comma-separated subset of ctr,relevance")
    parser.add_argument(
        "--repository",
        type=Path,
        default=REPO / "models",
        help="the repository adrank and the engine-only session load the models from (e.g. one whose configs "
        "run on a GPU: README, GPU serving)",
    )
    parser.add_argument("--adrank-workers", type=int, default=1, help="adrank serve --workers")
    parser.add_argument(
        "--mix",
        type=request_sets.Mix.parse,
        default=request_sets.Mix(),
        help="candidates per request: lognormal (default: median 100, p99 ~1000), ads (100-700 uniform), fixed:N",
    )
    parser.add_argument(
        "--queries",
        type=request_sets.QueryMix.parse,
        default=request_sets.QueryMix(),
        help="relevance's queries: texts (default: its 25 evaluation queries) or zipf[:DISTINCT[:S]]",
    )
    args = parser.parse_args(argv)
    settings = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    settings = replace(settings, mix=args.mix.label, queries=args.queries.label)
    if args.no_pytriton:
        settings = replace(settings, pytriton=False)
    if args.models:
        settings = replace(settings, models=tuple(args.models.split(",")))
    settings = replace(settings, adrank_workers=args.adrank_workers)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        log(f"only core {cores[0]} is available: the server and the generator will share it")
    settings = replace(settings, server_core=cores[0], generator_core=cores[min(1, len(cores) - 1)])
    from perf.baselines.pytriton.setup_venv import DEFAULT_VENV

    bench = Bench(settings, args.out, args.pytriton_venv or DEFAULT_VENV, args.repository)
    report: dict[str, object] = {
        **run_header("perf/bench.py", settings.mode, argv),
        "machine": machine_info(),
        "pinning": {
            "server_core": settings.server_core,
            "engine_core": settings.server_core,
            "generator_core": settings.generator_core,
            "adrank_workers": settings.adrank_workers,
            "how": "servers and engine-only under `taskset -c`, the generator process via sched_setaffinity",
        },
        "settings": asdict(settings),
        "p99_bound_ms": P99_BOUND_MS,
        "max_error_fraction": MAX_ERROR_FRACTION,
    }
    try:
        report.update(bench.run())
    finally:
        shutil.rmtree(bench.work, ignore_errors=True)
    report["generator"] = str(bench.sender).replace(f"{REPO}/", "") if bench.sender else "grpc.aio (perf/loadgen.py)"
    report["request_sets"] = {m: r.summary() for m, r in bench.request_sets.items()}
    report["engine_only"] = bench.engine
    report["limit"] = bench.limits
    report["systems"] = {name: system.to_json() for name, system in bench.systems.items()}
    # The engine-only figures also appear as a system, so that every system has one entry to look up.
    for model, result in bench.engine.items():
        name = "engine-only" if model == "ctr" else f"engine-only-{model}"
        report["systems"][name] = {  # type: ignore[index]
            "name": name,
            "model": model,
            "status": "ok",
            "max_candidates_per_s": result["ceiling_candidates_per_s"],
            "direct": result["direct"],
            "best": result["best"],
            "points": [],
            "vs_limit": _limit_ratio(result["ceiling_candidates_per_s"], bench.limits.get(model)),  # type: ignore[arg-type]
        }
    report["targets"] = targets(report["systems"], bench.engine, bench.limits, asdict(settings))  # type: ignore[arg-type]
    report = finite(report)  # type: ignore[assignment]
    args.out.mkdir(parents=True, exist_ok=True)
    # The full sweep owns <date>-<sha>; a quick or smoke run never overwrites it.
    mode = "" if settings.mode == "full" else "-" + settings.mode
    stem = args.out / f"{report['date']}-{report['git']['sha']}{_mix_suffix(settings)}{mode}"
    save(report, stem, markdown(report))
    plot(report, stem.with_suffix(".png"))
    log(f"wrote {stem}.json, .md, .png in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
