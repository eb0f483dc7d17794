"""The expected fleet curve: candidates/s and latency for N replicas behind one client's round_robin, by a
discrete-event simulation fed with what one replica measured (perf/fleet_bench.py).

Why a simulation: a 2-core machine cannot run more than a replica or two at full speed, so the measured points
flatten where its cores run out. The fleet's own limits are the per-replica capacity and how the client spreads
calls; both are measured on one replica and combined here.

The model:
- calls arrive as a Poisson stream at `utilisation` x N x the measured single-replica capacity (calls/s): an
  ads server's auctions do not wait for the previous ones;
- the client sends call k to replica k mod N (round_robin over READY replicas), or, for comparison, to a
  replica drawn at random (what a connection-level balancer in front of long-lived HTTP/2 connections does at
  best);
- each replica is one FIFO server whose service times are the measured single-call latencies (their shape:
  batching and the model's own variance) scaled to the measured capacity's mean (1 / capacity), so that the
  replica saturates where it was measured to; the waiting time follows Lindley's recursion;
- a call's latency is its wait + service + the client's own CPU per call.
What it leaves out: batching gets more efficient under load (real replicas do better than a FIFO server near
saturation), network hops beyond loopback, and a replica's failures (retries: client_retry.py).

Thread-safety: pure functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FleetModel:
    service_times_s: np.ndarray  # one replica's measured latencies at concurrency 1
    capacity_calls_per_s: float  # one replica's measured throughput at saturation
    client_overhead_s: float = 0.0003


def _replica_latencies(arrivals: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Response times of one FIFO server: Lindley's recursion over its arrival times and service times."""
    out = np.empty(len(arrivals))
    wait = 0.0
    for k in range(len(arrivals)):
        if k:
            wait = max(0.0, wait + service[k - 1] - (arrivals[k] - arrivals[k - 1]))
        out[k] = wait + service[k]
    return out


def simulate(model: FleetModel, replicas: int, utilisation: float, calls: int, policy: str, seed: int) -> dict:
    if not 0 < utilisation < 1:
        raise ValueError(f"utilisation {utilisation}: in (0, 1), else the queues grow without bound")
    rng = np.random.default_rng([seed, replicas, 0 if policy == "round_robin" else 1])
    rate = utilisation * replicas * model.capacity_calls_per_s
    arrivals = np.cumsum(rng.exponential(1.0 / rate, size=calls))
    shape = model.service_times_s / model.service_times_s.mean()
    service = rng.choice(shape, size=calls) / model.capacity_calls_per_s
    chosen = np.arange(calls) % replicas if policy == "round_robin" else rng.integers(0, replicas, size=calls)
    latency = np.empty(calls)
    for replica in range(replicas):
        mine = np.flatnonzero(chosen == replica)
        latency[mine] = _replica_latencies(arrivals[mine], service[mine])
    latency += model.client_overhead_s
    settled = latency[calls // 10 :]  # the first tenth fills the queues
    return {
        "replicas": replicas,
        "policy": policy,
        "calls_per_s": round(rate, 1),
        "p50_ms": round(float(np.percentile(settled, 50)) * 1000, 3),
        "p99_ms": round(float(np.percentile(settled, 99)) * 1000, 3),
    }


def expected_curve(model: FleetModel, counts: list[int], utilisation: float, seed: int, calls: int = 60_000) -> list:
    """For each replica count: throughput at `utilisation` and p50/p99, with round_robin and with random."""
    return [
        simulate(model, n, utilisation, calls * max(1, n // 8), policy, seed)
        for n in counts
        for policy in ("round_robin", "random")
    ]
