"""The load generator: open-loop Poisson arrivals or closed-loop fixed concurrency, over pre-serialized gRPC bytes.

Ads traffic arrives whether or not the server kept up, so the headline mode is open loop: request i is sent at
its scheduled time t_i (exponential gaps at the target rate, drawn before the clock starts), however many calls
are still in flight. Closed loop (C callers, each sending its next request when the previous one answers) is the
comparison: it finds a server's throughput but hides queueing (a slow server slows its own load).

Two senders carry out the same plan (schedule, order, deadline, bounds, the gRPC metadata every call carries,
e.g. the tenant header) and fill the same record:
- `adrank_loadgen` (perf/loadgen_client.cc, built by `make bench` and by the C++ test build): grpc++ on a completion
  queue, tens of microseconds of CPU per call. Used whenever it is built (`find_sender`), because a grpc.aio client
  adds a few hundred microseconds of its own to every latency it records and saturates its core at a few thousand
  calls/s;
- asyncio + grpc.aio, in this process: the fallback where grpc++ is not installed.

What keeps the generator out of the measurement:
- payloads are bytes serialized beforehand (perf/requests.py); the call is a generic method call with no
  serializers, so no protobuf work happens on the clock, and replies are not parsed (only the status);
- the order of requests for a run is drawn before the clock starts, and the garbage collector is off during it;
- the generator watches itself: each open-loop request's schedule lag (actual send - scheduled send), the
  achieved send rate and the generator's own CPU use are recorded, and a run whose generator fell behind (lag p99
  over 5 ms, under 95 % of the scheduled sends, or over 90 % of its core busy) is flagged `generator_saturated`.

Latency is per request from send to reply (perf_counter); percentiles come from the full record. The record's times
are seconds after the run's start, `started_at` on perf_counter's clock (CLOCK_MONOTONIC, which the C++ sender's
steady_clock shares), so the records of generators run side by side share one time line. Failed calls
are counted by status code and kept out of the latency percentiles; `error_fraction` tells them apart. `trace()`
gives the last run's arrivals as sent (send time, candidates, payload bytes): perf/limit_model.py replays them.
Everything is bounded: a run stops sending at `duration_s` or `max_requests`, whichever comes first, and each
call has a deadline (`timeout_s`). Targets must be loopback addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import grpc
import numpy as np

_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", -1),
    # One connection, as a real ads server's client would hold; no proxy on loopback.
    ("grpc.enable_http_proxy", 0),
]
# A generator whose p99 schedule lag is above this, or whose send rate falls below SEND_RATE_FLOOR of the target,
# did not offer the load it was asked to: its point is flagged. (asyncio's timers alone lag by 1-2 ms here.)
LAG_LIMIT_S = 0.005
SEND_RATE_FLOOR = 0.95
# The generator's own CPU time over the run's wall time (all its threads, on its one core): above this it is the
# bottleneck, whatever the lag says.
CPU_LIMIT = 0.9
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
REPO = Path(__file__).resolve().parents[1]
# Where the C++ sender (and echo server) are built: `make bench` (build/bench) or `make test-cpp` (build/tests).
SENDER_BUILDS = (REPO / "build" / "bench", REPO / "build" / "tests")
SENDER_NAME = "adrank_loadgen"
_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def find_built(name: str) -> Path | None:
    """The newest build of one of perf/'s C++ programs in the build folders, or None."""
    built = [d / name for d in SENDER_BUILDS if (d / name).is_file()]
    return max(built, key=lambda p: p.stat().st_mtime) if built else None


def find_sender() -> Path | None:
    """The built C++ sender: $ADRANK_LOADGEN if set, else the newest of the build folders', else None."""
    if os.environ.get("ADRANK_LOADGEN"):
        return Path(os.environ["ADRANK_LOADGEN"])
    return find_built(SENDER_NAME)


@dataclass
class RunResult:
    mode: str  # "open" or "closed"
    target_rate: float | None  # requests/s offered (open loop)
    concurrency: int | None  # closed loop
    sent: int
    ok: int
    errors: dict[str, int]
    elapsed_s: float  # first send to last reply
    achieved_rate: float  # successful requests/s
    candidates_per_s: float  # candidates of successful requests/s
    send_rate: float  # requests/s actually sent
    latency_ms: dict[str, float]  # of successful requests
    mean_ms: float
    lag_ms: dict[str, float]  # open loop: actual - scheduled send
    generator_cpu: float  # the generator process's CPU time / wall time during the run (1.0 = its whole core)
    generator_saturated: bool
    error_fraction: float
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def _check_loopback(target: str) -> None:
    host = target.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"target {target}: the load generator only talks to loopback addresses")


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {name: float("nan") for name in PERCENTILES}
    return {name: float(np.percentile(values, q)) for name, q in PERCENTILES.items()}


class LoadGenerator:
    """Sends pre-serialized requests to one gRPC method of a loopback server."""

    def __init__(
        self,
        target: str,
        method: str,
        payloads: Sequence[bytes],
        candidates: np.ndarray,
        *,
        timeout_s: float = 1.0,
        seed: int = 7,
        sender: Path | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        connections: int = 1,
    ) -> None:
        """`sender`: the C++ sender's binary (find_sender()); None sends from this process with grpc.aio.
        `metadata`: gRPC metadata (lower-case keys) sent with every call, warm-up included: one generator is one
        client, e.g. one tenant (`x-adrank-tenant`). `connections`: the C++ sender spreads its calls round-robin
        over this many HTTP/2 connections, as a client's channel pool does; the grpc.aio sender has one."""
        _check_loopback(target)
        if connections < 1 or (connections > 1 and sender is None):
            raise ValueError(f"connections={connections}: >= 1, and more than one needs the C++ sender")
        if len(payloads) != len(candidates) or not payloads:
            raise ValueError("payloads and candidates must be non-empty and of the same length")
        self.target = target
        self.method = method
        self.payloads = list(payloads)
        self.candidates = np.asarray(candidates, dtype=np.int64)
        self.timeout_s = timeout_s
        self.seed = seed
        self.sender = sender
        self.metadata = tuple((str(key), str(value)) for key, value in metadata)
        self.connections = connections
        self.started_at = 0.0  # perf_counter seconds at which the last run's record times are 0
        self._start = 0.0
        self._cpu = 0.0
        self._scheduled_rate = 0.0
        self._done_at = 0.0
        self._latency = self._sent_at = self._lag = np.empty(0)
        self._order = np.empty(0, dtype=np.int64)
        self._codes: list[grpc.StatusCode | None] = []

    def record(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last run's calls: send time (s after its start), latency (s) and whether each was OK."""
        ok = np.array([code == grpc.StatusCode.OK for code in self._codes], dtype=bool)
        # The grpc.aio sender keeps perf_counter readings, the C++ one seconds after its start (self._start = 0).
        return self._sent_at - self._start, self._latency, ok

    def plan(self, rate: float, duration_s: float, max_requests: int) -> tuple[np.ndarray, np.ndarray]:
        """An open-loop run's schedule (s after its start) and payload order, as `open_loop` draws them."""
        count = max(1, min(max_requests, int(np.ceil(rate * duration_s))))
        # Drawn from the seed and the rate alone: every system offered the same rate gets the same requests at the
        # same moments, whatever ran before.
        rng = np.random.default_rng([self.seed, round(rate * 1000)])
        schedule = np.cumsum(rng.exponential(1.0 / rate, size=count))
        schedule = schedule[schedule <= duration_s] if schedule[0] <= duration_s else schedule[:1]
        return schedule, rng.integers(0, len(self.payloads), size=len(schedule))

    def trace(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The last run's sent requests in send order: send time (s after its start), candidates, payload bytes."""
        sent_at = self._sent_at - self._start
        sent = np.flatnonzero(~np.isnan(sent_at))
        sent = sent[np.argsort(sent_at[sent], kind="stable")]
        order = self._order[sent]
        sizes = np.fromiter((len(self.payloads[i]) for i in order), dtype=np.int64, count=len(order))
        return sent_at[sent], self.candidates[order], sizes

    def open_loop(self, rate: float, duration_s: float, max_requests: int, start_s: float = 0.0) -> RunResult:
        """Poisson arrivals at `rate` requests/s for at most `duration_s` seconds and `max_requests` requests.

        With `start_s`, the arrivals begin that long after the run's start. The sender connects and warms up at
        once: a run meant to begin while another loads the server is launched beside it, not into its queue.
        """
        schedule, order = self.plan(rate, duration_s, max_requests)
        # Poisson counts vary (+-5 % over 400 arrivals): the send rate is checked against this draw, not `rate`.
        self._scheduled_rate = (len(schedule) - 1) / (schedule[-1] - schedule[0]) if len(schedule) > 2 else rate
        schedule = schedule + start_s
        if self.sender is not None:
            return self._run_sender("open", rate, None, order, schedule, start_s + duration_s)
        return asyncio.run(self._run("open", rate, None, order, lambda: self._open(schedule, order)))

    def closed_loop(self, concurrency: int, duration_s: float, max_requests: int) -> RunResult:
        """`concurrency` callers back to back for at most `duration_s` seconds and `max_requests` requests."""
        rng = np.random.default_rng([self.seed, concurrency])
        order = rng.integers(0, len(self.payloads), size=max(1, max_requests))
        if self.sender is not None:
            return self._run_sender("closed", None, concurrency, order, np.zeros(len(order)), duration_s)
        body = lambda: self._closed(concurrency, duration_s, order)  # noqa: E731
        return asyncio.run(self._run("closed", None, concurrency, order, body))

    async def _run(
        self,
        mode: str,
        rate: float | None,
        concurrency: int | None,
        order: np.ndarray,
        body: Callable[[], Awaitable[None]],
    ) -> RunResult:
        self._order = order
        self._latency = np.full(len(order), np.nan)
        self._sent_at = np.full(len(order), np.nan)
        self._lag = np.full(len(order), np.nan)
        self._codes = [None] * len(order)
        self._done_at = 0.0
        async with grpc.aio.insecure_channel(self.target, options=_CHANNEL_OPTIONS) as channel:
            self._call = channel.unary_unary(self.method)  # no serializers: bytes in, bytes out
            await self._warm_up(channel)
            gc.collect()
            gc.disable()
            try:
                cpu = time.process_time()
                self._start = self.started_at = time.perf_counter()
                await body()
                self._cpu = (time.process_time() - cpu) / max(time.perf_counter() - self._start, 1e-9)
            finally:
                gc.enable()
        return self._summarize(mode, rate, concurrency, order)

    def _run_sender(
        self,
        mode: str,
        rate: float | None,
        concurrency: int | None,
        order: np.ndarray,
        schedule: np.ndarray,
        duration_s: float,
    ) -> RunResult:
        """Runs the plan in the C++ sender (a child process, so on this process's core) and reads its record."""
        count = len(order)
        self._order = order
        with tempfile.TemporaryDirectory(prefix="adrank-loadgen-") as work:
            plan, record = Path(work) / "plan.bin", Path(work) / "record.bin"
            self._write_plan(plan, order, schedule, concurrency or 0, duration_s)
            done = subprocess.run(
                [str(self.sender), self.target, self.method, str(plan), str(record), str(self.connections)],
                capture_output=True,
                text=True,
                timeout=duration_s + self.timeout_s + 120,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"{self.sender} exited with {done.returncode}: {done.stderr.strip()}")
            columns = np.fromfile(record, dtype=np.float64).reshape(4, count)
        summary = json.loads(done.stdout)
        self._start = 0.0  # the record's times are seconds after the sender's start
        self.started_at = summary["start_s"]
        self._sent_at, self._latency, self._lag, codes = columns
        self._codes = [None if code < 0 else _STATUS_BY_VALUE[int(code)] for code in codes]
        self._done_at = summary["done_at_s"]
        self._cpu = summary["cpu_s"] / max(summary["wall_s"], 1e-9)
        return self._summarize(mode, rate, concurrency, order)

    def _write_plan(
        self, path: Path, order: np.ndarray, schedule: np.ndarray, concurrency: int, duration_s: float
    ) -> None:
        """The plan file loadgen_client.cc reads (its header comment gives the layout)."""
        offsets = np.cumsum([0, *(len(p) for p in self.payloads)]).astype("<i8")
        header = np.array(
            [
                len(self.payloads),
                len(order),
                concurrency,
                round(self.timeout_s * 1e6),
                round(duration_s * 1e6),
                len(self.metadata),
            ],
            dtype="<i8",
        )
        with path.open("wb") as out:
            out.write(header.tobytes())
            for key, value in self.metadata:
                encoded = key.encode(), value.encode()
                out.write(np.array([len(encoded[0]), len(encoded[1])], dtype="<i8").tobytes())
                out.write(encoded[0] + encoded[1])
            for array in (schedule.astype("<f8"), order.astype("<i8"), offsets):
                out.write(array.tobytes())
            for payload in self.payloads:
                out.write(payload)

    async def _warm_up(self, channel: grpc.aio.Channel) -> None:
        """Connects and sends a few requests off the clock (the channel's first call pays for the connection)."""
        await asyncio.wait_for(channel.channel_ready(), 30)
        for i in range(min(4, len(self.payloads))):
            with contextlib.suppress(grpc.aio.AioRpcError):
                await self._call(self.payloads[i], timeout=max(self.timeout_s, 5.0), metadata=self.metadata or None)

    async def _one(self, slot: int, payload: bytes) -> None:
        sent = time.perf_counter()
        self._sent_at[slot] = sent
        try:
            await self._call(payload, timeout=self.timeout_s, metadata=self.metadata or None)
            code = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            code = error.code()
        done = time.perf_counter()
        self._latency[slot] = done - sent
        self._codes[slot] = code
        self._done_at = max(self._done_at, done)

    async def _open(self, schedule: np.ndarray, order: np.ndarray) -> None:
        payloads = self.payloads
        tasks = []
        start = self._start
        for slot, due in enumerate(schedule):
            delay = start + due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            self._lag[slot] = time.perf_counter() - (start + due)
            tasks.append(asyncio.ensure_future(self._one(slot, payloads[order[slot]])))
        if tasks:
            await asyncio.wait(tasks)

    async def _closed(self, concurrency: int, duration_s: float, order: np.ndarray) -> None:
        payloads = self.payloads
        stop = self._start + duration_s
        next_slot = 0

        async def caller() -> None:
            nonlocal next_slot
            while next_slot < len(order) and time.perf_counter() < stop:
                slot = next_slot
                next_slot += 1
                await self._one(slot, payloads[order[slot]])

        await asyncio.gather(*(caller() for _ in range(concurrency)))

    def _summarize(self, mode: str, rate: float | None, concurrency: int | None, order: np.ndarray) -> RunResult:
        sent_mask = ~np.isnan(self._sent_at)
        sent = int(sent_mask.sum())
        codes = Counter(code.name for code in self._codes if code is not None)
        ok_mask = np.array([code == grpc.StatusCode.OK for code in self._codes])
        ok = int(ok_mask.sum())
        first = float(np.nanmin(self._sent_at)) if sent else self._start
        elapsed = max(self._done_at - first, 1e-9)
        last_send = float(np.nanmax(self._sent_at)) if sent else first
        send_rate = (sent - 1) / (last_send - first) if sent > 1 and last_send > first else float("nan")
        latency = self._latency[ok_mask] * 1e3
        lag = self._lag[~np.isnan(self._lag)] * 1e3
        lag_pct = _percentiles(lag) if mode == "open" else {}
        notes: list[str] = []
        saturated = False
        if mode == "open" and rate is not None:
            if lag_pct and lag_pct["p99"] > LAG_LIMIT_S * 1e3:
                saturated = True
                notes.append(f"generator schedule lag p99 {lag_pct['p99']:.2f} ms > {LAG_LIMIT_S * 1e3:.0f} ms")
            if sent > 10 and send_rate < SEND_RATE_FLOOR * self._scheduled_rate:
                saturated = True
                notes.append(f"generator sent {send_rate:.0f}/s of {self._scheduled_rate:.0f}/s scheduled")
            if self._cpu > CPU_LIMIT:
                saturated = True
                notes.append(f"generator process used {self._cpu:.0%} of its core")
        errors = {name: n for name, n in codes.items() if name != "OK"}
        return RunResult(
            mode=mode,
            target_rate=rate,
            concurrency=concurrency,
            sent=sent,
            ok=ok,
            errors=errors,
            elapsed_s=elapsed,
            achieved_rate=ok / elapsed,
            candidates_per_s=float(self.candidates[order[ok_mask]].sum()) / elapsed,
            send_rate=send_rate,
            latency_ms=_percentiles(latency),
            mean_ms=float(latency.mean()) if len(latency) else float("nan"),
            lag_ms=lag_pct,
            generator_cpu=self._cpu,
            generator_saturated=saturated,
            error_fraction=(sent - ok) / sent if sent else 1.0,
            notes=notes,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Standalone use: `python -m perf.loadgen --target 127.0.0.1:8500 --model ctr --rate 500`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port of a loopback gRPC server")
    parser.add_argument("--model", default="ctr", help="request set to send (ctr or relevance)")
    parser.add_argument("--payloads", type=Path, help="a perf.requests save_payloads file instead of --model")
    parser.add_argument("--method", default=None, help="gRPC method (default: adrank.v1.Ranking/Rank)")
    parser.add_argument("--requests", type=int, default=1000, help="distinct requests to build")
    parser.add_argument("--rate", type=float, help="open loop: requests/s (Poisson)")
    parser.add_argument("--concurrency", type=int, help="closed loop: callers")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument(
        "--python-sender", action="store_true", help="send with grpc.aio even if adrank_loadgen is built"
    )
    args = parser.parse_args(argv)
    from perf import requests as request_sets

    if args.payloads:
        payloads, candidates = request_sets.load_payloads(args.payloads)
        method = args.method or request_sets.KSERVE_METHOD
    else:
        built = request_sets.build(args.model, args.requests)
        payloads, candidates, method = built.payloads, built.candidates, args.method or built.method
    sender = None if args.python_sender else find_sender()
    generator = LoadGenerator(args.target, method, payloads, candidates, timeout_s=args.timeout, sender=sender)
    if args.rate:
        result = generator.open_loop(args.rate, args.duration, args.max_requests)
    else:
        result = generator.closed_loop(args.concurrency or 8, args.duration, args.max_requests)
    json.dump(result.to_json(), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
