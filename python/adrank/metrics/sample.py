"""Sample: one bulk read of everything the metrics show, taken in a few calls into the core.

The core counts per request and per batch, in C++ and without the GIL (cpp/version_stats.h,
cpp/batcher.h, cpp/memory_pool.h, the front ends' call counts); a sample copies those cumulative
counters once — a snapshot per served version, its queue's stats, the memory pool, the routes — so a
scrape or a dashboard tick costs a handful of calls, whatever the traffic.

Reading never waits for the model manager's lock (a version may take seconds to load): the version
list and states, the guardrail limits and their latest verdicts are read from the manager's atomically
replaced mappings; nothing is recomputed here.

Thread-safety: `MetricsSource.sample` may be called from any thread, concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import adrank._core as core
from adrank.lifecycle.manager import ModelManager
from adrank.rollout.guardrails import Verdict
from adrank.rollout.policy import GuardrailPolicy
from adrank.rollout.routes import BASIS_POINTS_PER_PERCENT, route_role


@dataclass(frozen=True)
class VersionSample:
    model: str
    version: int
    role: str  # "stable", "canary", "shadow", or "" (loaded, not routed)
    stats: dict[str, Any]  # VersionStats.snapshot(): outcomes by code, histograms
    queue: dict[str, Any]  # the version's core queue: Model.stats()
    tenants: list[dict[str, Any]]  # the queue's tenants: Model.tenant_stats()
    latency_budget_ms: float = 10.0  # its config's latency_budget_ms: what its p99 is held against
    # Its context-tower cache's ContextCache.stats() (hits, misses, evictions, bytes, ...); None without one.
    context_cache: dict[str, int] | None = None


@dataclass(frozen=True)
class Traffic:
    """A model's rollout: the share of routing keys each routed version takes."""

    model: str
    version: int
    role: str
    percent: float


@dataclass(frozen=True)
class Sample:
    time: float  # unix seconds
    versions: list[VersionSample]
    states: list[tuple[str, int, str]]  # (model, version, lifecycle state) of every known version
    traffic: list[Traffic]
    verdicts: list[tuple[str, int, str, Verdict]]  # (model, version, role, the guardrails' latest verdict)
    memory_pool: dict[str, Any]
    calls: list[int]  # Rank and KServe inference calls by status code (both front ends)
    repository_errors: int = 0  # polls that could not read the repository
    # Requests naming a model no version serves (the core registry's count): answered NOT_FOUND, in `calls`,
    # and in no version's stats.
    unknown_model_requests: int = 0
    # Calls that were a client's retry or hedged copy (grpc-previous-rpc-attempts or x-adrank-previous-attempts
    # metadata), both front ends.
    retried_calls: int = 0
    # The guardrail limits of every model with a canary or shadow (its rollout policy's).
    guardrails: dict[str, GuardrailPolicy] = field(default_factory=dict)


def route_traffic(model: str, route: core.RolloutRoute) -> list[Traffic]:
    if not route.stable:
        return []
    canary = route.canary_basis_points / BASIS_POINTS_PER_PERCENT if route.canary else 0.0
    out = [Traffic(model, route.stable, "stable", 100.0 - canary)]
    if route.canary:
        out.append(Traffic(model, route.canary, "canary", canary))
    if route.shadow:
        out.append(Traffic(model, route.shadow, "shadow", route.shadow_basis_points / BASIS_POINTS_PER_PERCENT))
    return out


class MetricsSource:
    def __init__(
        self,
        manager: ModelManager,
        pool: core.ThreadPool,
        call_counts: Callable[[], list[int]],
        retried_calls: Callable[[], int] = lambda: 0,
    ) -> None:
        self._manager = manager
        self._pool = pool
        self._call_counts = call_counts
        self._retried_calls = retried_calls

    def sample(self) -> Sample:
        registry = self._manager.registry
        routes = {name: registry.rollout(name) for name in self._manager.model_names()}
        versions = []
        for servable in self._manager.servables():
            route = routes.get(servable.name)
            versions.append(
                VersionSample(
                    servable.name,
                    servable.version,
                    route_role(route, servable.version) if route is not None else "",
                    servable.stats.snapshot(),
                    servable.model.stats(),
                    servable.model.tenant_stats(),
                    servable.config.latency_budget_ms,
                    servable.context_cache.stats() if servable.context_cache is not None else None,
                )
            )
        traffic = [t for name, route in routes.items() for t in route_traffic(name, route)]
        compared = {t.model for t in traffic if t.role != "stable"}
        policies = self._manager.guardrail_policies()
        return Sample(
            time=time.time(),
            versions=versions,
            states=[(m, v, state.value) for m, v, state in self._manager.version_states()],
            traffic=traffic,
            verdicts=self._verdicts(traffic),
            memory_pool=self._pool.memory_pool.stats(),
            calls=self._call_counts(),
            repository_errors=self._manager.repository_errors,
            unknown_model_requests=registry.unknown_model_requests,
            retried_calls=self._retried_calls(),
            guardrails={name: policy for name, policy in policies.items() if name in compared},
        )

    def _verdicts(self, traffic: list[Traffic]) -> list[tuple[str, int, str, Verdict]]:
        """The guardrails' latest verdict on each canary and shadow still routed."""
        latest = dict(self._manager.guardrails.last_verdicts)
        out = []
        for t in traffic:
            verdict = latest.get((t.model, t.role, t.version))
            if t.role != "stable" and verdict is not None:
                out.append((t.model, t.version, t.role, verdict))
        return out
