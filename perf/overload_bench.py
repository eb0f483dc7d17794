"""`make bench-overload`: adrank under open-loop overload with deadlines, beside the naive baseline.

Ads traffic does not slow down when the server does: past saturation a server must refuse what it cannot answer in
time and keep answering the rest, not queue everything and answer nothing in time. Per system (adrank, `adrank
serve` with one core worker; the naive grpc.aio + ONNX Runtime server of perf/baselines/), with the server under
`taskset -c <server core>` and this process and the load generator's sender on the other core:

1. saturation: closed loop, 16 callers, `--candidates`-candidate ctr requests over real rows: OK answers/s;
2. CPU per refusal: the server's idle CPU rate, then a closed loop of the same requests naming a model the server
   does not serve (every one refused at once, whatever the version of the server): the server's CPU time
   (/proc/PID/stat) over the run, less the idle rate, over the refusals;
3. idle probes: one request at a light rate (5 % of saturation, at most 200/s), 1 s deadline: the idle p50;
4. loads: open-loop Poisson at multiples of adrank's saturation (the naive server gets the same offered rates),
   20 ms deadlines; per load the goodput (OK/s), the status codes' fractions, p50/p99 of the OK answers, the
   server's CPU, its RSS before / peak (sampled) / after; light probes from shortly before the load's last send
   until `recovery_s` after it give the recovery time (perf/overload_report.py: how). Each of adrank's loads is
   run `repeats` times and reported as the median run; a run whose generator fell behind (schedule lag, send rate
   or CPU: perf/loadgen.py) is no result and is re-run with twice the connections, up to the ladder's last rung;
5. tenants (adrank): a heavy tenant (`x-adrank-tenant: heavy`) keeps 32 requests of 2048 rows in flight (closed
   loop, 1 s deadlines) while a light tenant (`x-adrank-tenant: light`) sends open loop with 20 ms deadlines:
   the light tenant's OK fraction and p99.

A server that exits during the run is a crash (its phase and the rest are not run); every server is stopped with
SIGTERM (killed if it lingers) and its exit code reported. Everything is loopback, bounded in time and count.

Output in --out (default perf/results/): overload-<date>-<git sha>.json (everything), .md (tables and the
targets pass/fail), .png (goodput against offered load, each system's ideal min(offered, saturation) and
adrank's refusal bound). Modes: default (full: 0.5x and 1x for 10 s, 1.5x and 2x for 20 s, adrank's three times
each; about 9 minutes), --smoke (seconds per phase, one run each; files end in -smoke).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: import the perf package from the checkout, not perf/ itself
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from perf import requests as request_sets
from perf.bench import (
    NAIVE_READY,
    ServerProcess,
    adrank_server,
    check_reply,
    log,
    machine_info,
    run_header,
    running,
)
from perf.loadgen import LoadGenerator, RunResult, find_sender
from perf.overload_report import (
    markdown,
    median_point,
    plot,
    probe_windows,
    recovery_time,
    refusal_bound,
    rss_growth,
    targets,
)
from perf.report import finite, save

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "perf" / "results"
TENANT_HEADER = "x-adrank-tenant"
UNKNOWN_MODEL = "overload-bench-no-such-model"
# Closed-loop runs are bounded in count as well as time; the C++ sender makes one call object per request
# beforehand (~0.75 KB each), so the count is what such a run could send at most, not a large round number.
CLOSED_LOOP_MAX_RATE = 50_000.0  # calls/s: refusals of 100-candidate requests stay well under it here
HEAVY_MAX_REQUESTS = 200_000


@dataclass(frozen=True)
class Settings:
    mode: str
    loads: tuple[tuple[float, float], ...]  # (multiple of adrank's saturation, seconds)
    saturation_s: float
    idle_s: float  # the server's idle CPU rate, subtracted from the refusal run's CPU
    refusal_s: float
    idle_probe_s: float
    recovery_s: float  # probing after a load's last send
    settle_s: float  # pause before each load, for what the last one left to drain
    tenant_s: float  # the light tenant's run
    requests: int  # distinct requests of the light set
    naive: bool = True
    deadline_s: float = 0.020  # the issue's: every overload call and the light tenant's
    candidates: int = 100  # per request: the reference figures' size
    concurrency: int = 16  # closed-loop callers (saturation, refusals): enough to keep one core busy
    saturation_timeout_s: float = 1.0
    probe_max_rate: float = 200.0  # probes and the light tenant: this fraction of saturation, at most this rate
    probe_fraction: float = 0.05
    probe_timeout_s: float = 1.0  # long enough that a probe measures the queue it meets instead of failing
    # Probes are launched with a load (so they connect while the server is idle) and begin this long before its
    # scheduled end; they go on `probe_margin_s` longer than `recovery_s` for the load sender's start-up, which
    # is later than theirs (it makes one call object per request first: ~1 s for 450k).
    probe_lead_s: float = 0.5
    probe_margin_s: float = 2.0
    recovery_window_s: float = 0.2  # ~25 probes at 130/s: a p50 that one slow call does not move
    rss_sample_s: float = 0.25
    heavy_in_flight: int = 32
    heavy_rows: int = 2048
    heavy_timeout_s: float = 1.0  # long enough to be admitted behind its own queue: the heavy tenant is served
    heavy_lead_s: float = 1.5  # the heavy tenant fills its queue before the light one starts
    server_core: int = 0
    generator_core: int = 1
    # Connections per generator (a client's channel pool) to start with. One: in 12 s runs 4 connections raised
    # adrank's goodput at 2x from 2,661 to 3,271/s, but the full run with 4 gave 0.65 of saturation at 1.5x against
    # 0.79 with one (2026-12-03/04, one run each): no gain shown beyond this machine's noise. A load whose generator
    # fell behind is re-run on the ladder's next rung; later runs of the load start from the rung that kept up.
    connections: int = 1
    connection_ladder: tuple[int, ...] = (1, 2, 4)
    repeats: int = 3  # runs of each of adrank's loads; the median run is reported (issue 35)
    adrank_workers: int = 1


MODES = {
    "full": Settings(
        mode="full",
        loads=((0.5, 10.0), (1.0, 10.0), (1.5, 20.0), (2.0, 20.0)),
        saturation_s=5.0,
        idle_s=2.0,
        refusal_s=5.0,
        idle_probe_s=3.0,
        recovery_s=3.0,
        settle_s=2.0,
        tenant_s=20.0,
        requests=400,
    ),
    "smoke": Settings(
        mode="smoke",
        loads=((1.5, 1.5), (2.0, 1.5)),
        saturation_s=1.0,
        idle_s=0.5,
        refusal_s=1.0,
        idle_probe_s=1.0,
        recovery_s=0.7,
        settle_s=0.3,
        tenant_s=1.5,
        requests=50,
        probe_lead_s=0.3,
        probe_margin_s=0.5,
        heavy_lead_s=0.8,
        repeats=1,
        connection_ladder=(1,),
    ),
}


class ServerDied(RuntimeError):
    pass


def refused_request(payload: bytes) -> bytes:
    """The same Rank request naming a model no server serves: refused once decoded, never computed."""
    from adrank.v1 import ranking_pb2 as pb

    request = pb.RankRequest.FromString(payload)
    for model in request.models:
        model.name = UNKNOWN_MODEL
    return request.SerializeToString()


def fractions(result: RunResult) -> dict[str, float]:
    """Share of the sent calls per status code, OK included."""
    counts = Counter({"OK": result.ok, **result.errors})
    return {code: n / result.sent for code, n in counts.items() if n} if result.sent else {}


class Sampler:
    """The server's (perf_counter, RSS bytes, CPU s) every `period_s` in a thread, from /proc."""

    def __init__(self, server: ServerProcess, period_s: float) -> None:
        self.server = server
        self.period_s = period_s
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-sampler", daemon=True)

    def __enter__(self) -> Sampler:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def _sample(self) -> None:
        with suppress(OSError, RuntimeError):  # the server is gone: the phase finds out and says so
            self.samples.append((time.perf_counter(), self.server.rss_bytes(), self.server.cpu_s()))

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self._sample()

    def between(self, start: float, end: float) -> list[tuple[float, int, float]]:
        return [sample for sample in self.samples if start <= sample[0] <= end]

    def cpu_fraction(self, start: float, end: float) -> float | None:
        """The server's CPU time over [start, end] per second, from the samples inside it."""
        inside = self.between(start, end)
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return None
        return (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0])


class Background:
    """`work()` in a thread, started now; its result or exception at join()."""

    def __init__(self, work: Callable[[], RunResult]) -> None:
        self.result: RunResult | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = work()
            except BaseException as error:  # handed to join(): a failed background run fails its phase
                self.error = error

        self._thread = threading.Thread(target=run, name="background-load", daemon=True)
        self._thread.start()

    def join(self) -> RunResult:
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class System:
    """One server under the bench's phases; `result` is its JSON."""

    def __init__(
        self,
        name: str,
        server: ServerProcess,
        settings: Settings,
        light: request_sets.RequestSet,
        heavy: request_sets.RequestSet | None,
        sender: Path | None,
    ) -> None:
        self.name = name
        self.server = server
        self.s = settings
        self.light = light
        self.heavy = heavy
        self.sender = sender
        self.target = ""
        self.saturation = 0.0
        self.cpu_per_refusal: float | None = None
        self.idle_p50_s = math.nan
        self.result: dict[str, object] = {"name": name, "status": "ok", "loads": [], "crashes": 0}

    def generator(
        self,
        requests: request_sets.RequestSet,
        timeout_s: float,
        tenant: str | None = None,
        payloads: Sequence[bytes] | None = None,
        connections: int | None = None,
    ) -> LoadGenerator:
        metadata = [(TENANT_HEADER, tenant)] if tenant else []
        return LoadGenerator(
            self.target,
            requests.method,
            list(payloads if payloads is not None else requests.payloads),
            requests.candidates[: len(payloads)] if payloads is not None else requests.candidates,
            timeout_s=timeout_s,
            sender=self.sender,
            metadata=metadata,
            connections=(connections or self.s.connections) if self.sender is not None else 1,
        )

    def probe_rate(self) -> float:
        return min(self.s.probe_max_rate, self.s.probe_fraction * self.saturation)

    def alive(self, phase: str) -> None:
        code = self.server.process.poll()
        if code is not None:
            self.result["crashes"] = 1
            raise ServerDied(f"{self.name} exited with {code} during {phase}")

    # --- phases ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.target = self.server.wait_ready()
        self.result["server"] = self.target
        check_reply(self.target, self.light.method, self.light.payloads[0], int(self.light.candidates[0]), "rank")
        self.result["rss_at_start"] = self.server.rss_bytes()

    def measure_saturation(self) -> None:
        s = self.s
        generator = self.generator(self.light, s.saturation_timeout_s)
        run = generator.closed_loop(s.concurrency, s.saturation_s, math.ceil(s.saturation_s * CLOSED_LOOP_MAX_RATE))
        self.alive("the saturation run")
        self.saturation = run.achieved_rate
        self.result["saturation"] = {"rate": run.achieved_rate, "run": run.to_json()}
        log(
            f"  {self.name} saturation: {run.achieved_rate:.0f} req/s (closed loop, {s.concurrency} callers,"
            f" p99 {run.latency_ms['p99']:.2f} ms, errors {run.errors or 0})"
        )
        if run.achieved_rate <= 0:
            raise RuntimeError(f"{self.name}: no OK answer in the saturation run ({run.errors})")

    def measure_refusals(self) -> None:
        s = self.s
        idle_cpu = self.server.cpu_s()
        idle_from = time.perf_counter()
        time.sleep(s.idle_s)
        idle_rate = (self.server.cpu_s() - idle_cpu) / (time.perf_counter() - idle_from)
        refused = [refused_request(p) for p in self.light.payloads[:16]]
        generator = self.generator(self.light, s.saturation_timeout_s, payloads=refused)
        cpu, started = self.server.cpu_s(), time.perf_counter()
        run = generator.closed_loop(s.concurrency, s.refusal_s, math.ceil(s.refusal_s * CLOSED_LOOP_MAX_RATE))
        cpu_s, wall_s = self.server.cpu_s() - cpu, time.perf_counter() - started
        self.alive("the refusal run")
        refusals = run.sent - run.ok
        self.cpu_per_refusal = max(0.0, cpu_s - idle_rate * wall_s) / refusals if refusals else None
        self.result["refusal"] = {
            "request": f"the light set's requests naming model '{UNKNOWN_MODEL}'",
            "refusals": refusals,
            "refusals_per_s": refusals / run.elapsed_s,
            "fractions": fractions(run),
            "server_cpu_s": cpu_s,
            "wall_s": wall_s,
            "idle_cpu_per_s": idle_rate,
            "cpu_per_refusal_s": self.cpu_per_refusal,
            "run": run.to_json(),
        }
        per = "-" if self.cpu_per_refusal is None else f"{self.cpu_per_refusal * 1e6:.1f} µs"
        log(
            f"  {self.name} refusals: {refusals} at {refusals / run.elapsed_s:.0f}/s, {per} of server CPU each"
            f" (idle {idle_rate:.1%} of a core subtracted; {fractions(run)})"
        )

    def measure_idle_probes(self) -> None:
        probe = self.generator(self.light, self.s.probe_timeout_s, payloads=self.light.payloads[:1])
        run = probe.open_loop(
            self.probe_rate(), self.s.idle_probe_s, math.ceil(self.probe_rate() * self.s.idle_probe_s) + 10
        )
        self.alive("the idle probes")
        self.idle_p50_s = run.latency_ms["p50"] / 1e3
        self.result["idle_probe"] = {
            "rate": self.probe_rate(),
            "p50_ms": run.latency_ms["p50"],
            "p99_ms": run.latency_ms["p99"],
            "run": run.to_json(),
        }
        log(f"  {self.name} idle probes at {self.probe_rate():.0f}/s: p50 {run.latency_ms['p50']:.3f} ms")

    def measure_load(self, multiple: float, seconds: float, rate: float) -> None:
        """`repeats` runs of the load, each re-run on more connections while its generator falls behind; the
        median run is the load's figure (overload_report.median_point)."""
        runs: list[dict[str, object]] = []
        rung = 0
        for _ in range(self.s.repeats):
            while True:
                connections = self.s.connection_ladder[rung] if self.sender is not None else 1
                load = self._load_once(multiple, seconds, rate, connections)
                runs.append(load)
                kept_up = not load["run"]["generator_saturated"]  # type: ignore[index]
                if kept_up or rung + 1 >= len(self.s.connection_ladder) or self.sender is None:
                    break
                rung += 1
        self.result["loads"].append(median_point(runs))  # type: ignore[attr-defined]

    def _load_once(self, multiple: float, seconds: float, rate: float, connections: int) -> dict[str, object]:
        s = self.s
        time.sleep(s.settle_s)
        generator = self.generator(self.light, s.deadline_s, connections=connections)
        probe = self.generator(self.light, s.probe_timeout_s, payloads=self.light.payloads[:1])
        probe_s = s.probe_lead_s + s.probe_margin_s + s.recovery_s
        probe_count = math.ceil(self.probe_rate() * probe_s) + 10
        rss_before = self.server.rss_bytes()
        with Sampler(self.server, s.rss_sample_s) as sampler:
            probes = Background(
                lambda: probe.open_loop(self.probe_rate(), probe_s, probe_count, start_s=seconds - s.probe_lead_s)
            )
            run = generator.open_loop(rate, seconds, math.ceil(rate * seconds * 1.2) + 100)
            probe_run = probes.join()
        self.alive(f"the {multiple:g}x load")
        rss_after = self.server.rss_bytes()
        sent, _, _ = generator.record()
        start = generator.started_at
        stop_at = start + float(np.nanmax(sent)) if run.sent else start + seconds
        load_samples = [(t, rss) for t, rss, _ in sampler.between(start, stop_at)]
        probe_sent, probe_latency, probe_ok = probe.record()
        probe_at = probe.started_at + probe_sent
        seen = ~np.isnan(probe_at)
        windows = probe_windows(probe_at[seen], probe_latency[seen], probe_ok[seen], stop_at, s.recovery_window_s)
        recovered = recovery_time(
            probe_at[seen], probe_latency[seen], probe_ok[seen], stop_at, self.idle_p50_s, s.recovery_window_s
        )
        peak = max((rss for _, rss in load_samples), default=None)
        notes = []
        if seen.any() and np.nanmin(probe_at) > stop_at:
            notes.append("the probes started after the load's last send")
        if not seen.any() or np.nanmax(probe_at) < stop_at + 0.9 * s.recovery_s:
            notes.append("the probes ended before the recovery window did")
        under_load = seen & (probe_at >= stop_at - s.probe_lead_s) & (probe_at < stop_at)
        refusals_per_s = (run.sent - run.ok) / run.elapsed_s
        bound = (
            refusal_bound(self.saturation, refusals_per_s, self.cpu_per_refusal)
            if self.cpu_per_refusal is not None
            else None
        )
        load: dict[str, object] = {
            "multiple": multiple,
            "seconds": seconds,
            "offered_rate": rate,
            "connections": connections,
            "goodput": run.achieved_rate,
            "refusals_per_s": refusals_per_s,
            "bound": bound,
            "fractions": fractions(run),
            "ok_latency_ms": run.latency_ms,
            "server_cpu": sampler.cpu_fraction(start, stop_at),
            "rss": {
                "before": rss_before,
                "peak": peak,
                "after": rss_after,
                "samples": [(round(t - start, 3), rss) for t, rss in load_samples],
            },
            "rss_growth": rss_growth(load_samples),
            "recovery": {
                "seconds": recovered,
                "note": "; ".join(notes),
                "probe_rate": self.probe_rate(),
                "idle_p50_ms": self.idle_p50_s * 1e3,
                "probe_p50_ms_under_load": (
                    float(np.median(np.where(probe_ok, probe_latency, np.inf)[under_load])) * 1e3
                    if under_load.any()
                    else None
                ),
                "probe_errors": probe_run.errors,
                "windows": [  # (start after the load's last send s, p50 ms, probes)
                    (round(start, 3), p50 * 1e3, count) for start, p50, count in windows
                ],
            },
            "run": run.to_json(),
        }
        recovery = "never" if recovered is None else f"{recovered:.1f} s"
        flag = " GENERATOR-SATURATED" if run.generator_saturated else ""
        log(
            f"  {self.name} {multiple:g}x ({rate:.0f}/s, {seconds:g} s): goodput {run.achieved_rate:.0f}/s"
            f" (bound {bound or 0:.0f}), OK p99 {run.latency_ms['p99']:.2f} ms, {fractions(run)},"
            f" RSS {rss_before / 2**20:.0f} -> {(peak or 0) / 2**20:.0f} -> {rss_after / 2**20:.0f} MB,"
            f" recovery {recovery}, {connections} connection(s){flag}"
        )
        return load

    def measure_tenants(self) -> None:
        s = self.s
        assert self.heavy is not None
        heavy = self.generator(self.heavy, s.heavy_timeout_s, tenant="heavy")
        light = self.generator(self.light, s.deadline_s, tenant="light")
        light_rate = min(s.probe_max_rate, s.probe_fraction * self.saturation)
        heavy_s = s.heavy_lead_s + s.tenant_s + s.probe_margin_s
        with Sampler(self.server, s.rss_sample_s) as sampler:
            heavy_run = Background(lambda: heavy.closed_loop(s.heavy_in_flight, heavy_s, HEAVY_MAX_REQUESTS))
            light_count = math.ceil(light_rate * s.tenant_s * 1.2) + 10
            light_run = light.open_loop(light_rate, s.tenant_s, light_count, start_s=s.heavy_lead_s)
            heavy_result = heavy_run.join()
        self.alive("the tenant scenario")
        if not light_run.sent or not heavy_result.sent:
            raise RuntimeError(f"the tenant scenario sent nothing (light {light_run.sent}, heavy {heavy_result.sent})")
        light_sent, _, _ = light.record()
        heavy_sent, _, _ = heavy.record()
        light_from = light.started_at + float(np.nanmin(light_sent))
        light_to = light.started_at + float(np.nanmax(light_sent))
        heavy_to = heavy.started_at + float(np.nanmax(heavy_sent))
        # The heavy tenant held its calls in flight over the whole light run: it had started (and was past its
        # own start-up) before the light tenant's first call, and sent its last after the light tenant's last.
        covered = heavy.started_at < light_from and heavy_to >= light_to

        def tenant(name: str, run: RunResult) -> dict[str, object]:
            return {
                "tenant": name,
                "sent": run.sent,
                "ok": run.ok,
                "ok_fraction": run.ok / run.sent if run.sent else None,
                "ok_rate": run.achieved_rate,
                "latency_ms": run.latency_ms,
                "fractions": fractions(run),
                "run": run.to_json(),
            }

        self.result["tenants"] = {
            "light": {**tenant("light", light_run), "rate": light_rate, "seconds": s.tenant_s},
            "heavy": {
                **tenant("heavy", heavy_result),
                "in_flight": s.heavy_in_flight,
                "rows": s.heavy_rows,
                "timeout_ms": s.heavy_timeout_s * 1e3,
                "covered_light_run": covered,
            },
            "timeline_s": {  # seconds after the heavy sender's start
                "light_first_send": light_from - heavy.started_at,
                "light_last_send": light_to - heavy.started_at,
                "heavy_last_send": heavy_to - heavy.started_at,
            },
            "server_cpu": sampler.cpu_fraction(light_from, light_to),
            "rss_peak": max((rss for _, rss, _ in sampler.samples), default=None),
        }
        log(
            f"  {self.name} tenants: light {light_run.ok}/{light_run.sent} OK,"
            f" p99 {light_run.latency_ms['p99']:.2f} ms;"
            f" heavy {heavy_result.ok}/{heavy_result.sent} OK {fractions(heavy_result)}"
            f"{'' if covered else ' (the heavy tenant did not cover the light run)'}"
        )


def run_system(
    name: str,
    server: ServerProcess,
    settings: Settings,
    light: request_sets.RequestSet,
    heavy: request_sets.RequestSet | None,
    sender: Path | None,
    reference_saturation: float | None,
) -> dict[str, object]:
    """All phases against `server`; loads are multiples of `reference_saturation` (None: the system's own)."""
    started = time.perf_counter()
    system = System(name, server, settings, light, heavy, sender)
    with running(server):
        try:
            system.start()
            log(f"{name}: serving on {system.target} ({time.perf_counter() - started:.1f} s)")
            system.measure_saturation()
            system.measure_refusals()
            system.measure_idle_probes()
            reference = reference_saturation or system.saturation
            for multiple, seconds in settings.loads:
                system.measure_load(multiple, seconds, multiple * reference)
            if heavy is not None:
                time.sleep(settings.settle_s)
                system.measure_tenants()
        except Exception as error:  # one system failing is recorded, and the run goes on
            if server.process.poll() is not None:  # whatever failed first, the server had exited on its own
                system.result["crashes"] = 1
            system.result["status"] = f"failed: {error}"
            log(f"{name}: {system.result['status']}")
    code = server.process.returncode
    system.result["exit_code"] = code
    if code != 0 and not system.result["crashes"]:
        system.result["crashes"] = 1  # it did not stop cleanly on SIGTERM (or was killed when it lingered)
        system.result["status"] += f"; exit {code} after SIGTERM"  # type: ignore[operator]
    system.result["log_tail"] = server.tail(20)
    system.result["seconds"] = time.perf_counter() - started
    return system.result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="seconds per phase (the CI smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the .json, .md and .png go")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive baseline")
    parser.add_argument("--adrank-workers", type=int, default=1, help="adrank serve --workers")
    parser.add_argument(
        "--load-s", type=float, default=None, help="seconds of every load instead of the mode's (a shorter trial)"
    )
    parser.add_argument(
        "--python-sender", action="store_true", help="send with grpc.aio even if adrank_loadgen is built"
    )
    args = parser.parse_args(argv)
    settings = MODES["smoke" if args.smoke else "full"]
    if args.load_s is not None:
        settings = replace(settings, loads=tuple((multiple, args.load_s) for multiple, _ in settings.loads))
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        log(f"only core {cores[0]} is available: the server and the generator will share it")
    settings = replace(
        settings,
        naive=not args.no_naive,
        adrank_workers=args.adrank_workers,
        server_core=cores[0],
        generator_core=cores[min(1, len(cores) - 1)],
    )
    started = time.perf_counter()
    machine = machine_info()  # the load average before the run: other work on the machine skews every figure
    os.sched_setaffinity(0, {settings.generator_core})
    log(f"mode {settings.mode}: servers on core {settings.server_core}, generator on core {settings.generator_core}")
    light = request_sets.build("ctr", settings.requests, candidates=settings.candidates)
    heavy = request_sets.build("ctr", 4, seed=3, candidates=settings.heavy_rows)
    sender = None if args.python_sender else find_sender()
    fallback = "grpc.aio in this process" + ("" if args.python_sender else " (adrank_loadgen is not built)")
    log(f"load generator: {sender or fallback}")
    work = Path(tempfile.mkdtemp(prefix="adrank-overload-"))
    systems: dict[str, dict[str, object]] = {}
    try:
        repository = work / "repository"
        repository.mkdir()
        (repository / "ctr").symlink_to(REPO / "models" / "ctr")
        options = ["--workers", str(settings.adrank_workers)]
        server = adrank_server("adrank", repository, options, settings.server_core, work / "adrank.log")
        systems["adrank"] = run_system("adrank", server, settings, light, heavy, sender, None)
        saturation = (systems["adrank"].get("saturation") or {}).get("rate")  # type: ignore[union-attr]
        if settings.naive:
            command = [sys.executable, str(REPO / "perf" / "baselines" / "naive_server.py"), "--models", "ctr"]
            command += ["--host", "127.0.0.1", "--port", "0"]
            naive = ServerProcess("naive", command, NAIVE_READY, settings.server_core, work / "naive.log", None)
            # The baseline is for comparison only, and its generator falls behind because the naive server does
            # (it queues everything): one run per load, no re-runs.
            baseline = replace(settings, repeats=1, connection_ladder=(settings.connections,))
            systems["naive"] = run_system("naive", naive, baseline, light, None, sender, saturation)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report: dict[str, object] = {
        **run_header("perf/overload_bench.py", settings.mode, argv),
        "machine": machine,
        "pinning": {
            "server_core": settings.server_core,
            "generator_core": settings.generator_core,
            "adrank_workers": settings.adrank_workers,
            "how": "servers under `taskset -c`, this process and the sender via sched_setaffinity",
        },
        "settings": asdict(settings),
        "generator": (
            f"{str(sender).replace(f'{REPO}/', '')}, {settings.connections} connection(s) per client to start with,"
            f" up to {settings.connection_ladder[-1]} on re-runs; {settings.repeats} runs per adrank load, median"
            if sender
            else "grpc.aio (perf/loadgen.py), one connection per client"
        ),
        "deadline_ms": settings.deadline_s * 1e3,
        "candidates": settings.candidates,
        "request_sets": {"light": light.summary(), "heavy": heavy.summary()},
        "systems": systems,
        "seconds": time.perf_counter() - started,
    }
    report["targets"] = targets(report)
    report = finite(report)  # type: ignore[assignment]
    stem = (
        args.out
        / f"overload-{report['date']}-{report['git']['sha']}{'' if settings.mode == 'full' else '-' + settings.mode}"
    )
    save(report, stem, markdown(report))
    plot(report, stem.with_suffix(".png"))
    log(f"wrote {stem}.json, .md, .png in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
