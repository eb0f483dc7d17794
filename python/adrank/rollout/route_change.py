"""RouteChange: a change of which versions serve a model, and its cause, for the audit log.

Every route change is audited with its cause (issue 34: publishing never changes what serves without
saying so). The causes:

- `explicit`: someone asked (the admin API's rollout calls, a rollout command, a guardrail's rollback, an
  operator's unload or load of the model); the entry is that change's own (its action names it).
- `rollout_file`: the server applied a rollout.yaml changed on disk (by the rollout commands against the
  repository, another replica's admin API, or an editor).
- `load_failure`: a version the rollout asks for FAILED, so another one serves (or, at start-up, the newest
  version FAILED and an older one serves).
- `version_removed`: a version the route named left the repository.
- `model_removed`: the model's folder left the repository: nothing of it serves.
- `latest_serves`: the model's config.yaml says `latest_serves: true` and a newer version became AVAILABLE.
- `version_loaded`: a version the rollout names became AVAILABLE (a retried load, a restored file), and
  the route now is what the rollout asks for.

`implicit_cause` is a pure function of what the manager knows when it re-routes; it returns None for a first
route that is simply what the rollout asks for (a start-up, a model added): nothing changed that served.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import adrank._core as core
from adrank.rollout.policy import RolloutPolicy
from adrank.rollout.routes import describe_route, route_summary

EXPLICIT = "explicit"
ROLLOUT_FILE = "rollout_file"
LOAD_FAILURE = "load_failure"
VERSION_REMOVED = "version_removed"
MODEL_REMOVED = "model_removed"
LATEST_SERVES = "latest_serves"
VERSION_LOADED = "version_loaded"


@dataclass(frozen=True)
class RouteChange:
    model: str
    before: core.RolloutRoute | None  # None: nothing of the model was routed
    after: core.RolloutRoute | None  # None: nothing of it is routed any more
    cause: str
    reason: str

    def record(self) -> dict[str, Any]:
        """The route before and after, as the audit entry's `route` field holds them (shares in percent)."""
        return route_record(self.before, self.after)

    def describe(self) -> str:
        before = describe_route(self.before) if self.before else "nothing"
        after = describe_route(self.after) if self.after else "nothing"
        return f"{before} -> {after} ({self.cause}: {self.reason})"


def route_record(before: core.RolloutRoute | None, after: core.RolloutRoute | None) -> dict[str, Any]:
    return {
        "before": route_summary(before) if before else None,
        "after": route_summary(after) if after else None,
    }


@dataclass(frozen=True)
class RouteContext:
    """What the manager knows of the model when it re-routes."""

    policy: RolloutPolicy
    policy_changed: bool  # rollout.yaml on disk differs from the policy applied before
    latest_serves: bool  # config.yaml's latest_serves
    on_disk: frozenset[int]
    failed: Mapping[int, str]  # FAILED versions -> their reason


def _named(route: core.RolloutRoute | None) -> set[int]:
    return set() if route is None else {route.stable, route.canary, route.shadow} - {0}


def implicit_cause(
    before: core.RolloutRoute | None, after: core.RolloutRoute, context: RouteContext
) -> tuple[str, str] | None:
    """(cause, reason) of a route change nobody asked for through the admin API; None for a first route that is
    what the rollout asks for."""
    removed = sorted(v for v in _named(before) - _named(after) if v not in context.on_disk)
    if removed:
        return VERSION_REMOVED, f"version {removed[0]} left the repository"
    if context.policy_changed and before is not None:
        return ROLLOUT_FILE, f"rollout.yaml changed: {context.policy.summary()}"
    failure = _failure(after, context)
    if failure is not None:
        return LOAD_FAILURE, failure
    if before is None:
        return None
    if context.latest_serves and after.stable > before.stable:
        return LATEST_SERVES, f"version {after.stable} is the newest AVAILABLE and config.yaml says latest_serves"
    return VERSION_LOADED, f"the rollout's versions are AVAILABLE: {context.policy.summary()}"


def _failure(after: core.RolloutRoute, context: RouteContext) -> str | None:
    """Why the route is not what the rollout asks for because a version FAILED, if it is so."""
    asked = sorted(v for v in context.policy.versions() if v in context.failed and v not in _named(after))
    if asked:
        return f"version {asked[0]} FAILED: {context.failed[asked[0]]}"
    newer = sorted(v for v in context.failed if v > after.stable and context.policy.stable is None)
    if newer:
        return f"version {newer[-1]} FAILED: {context.failed[newer[-1]]}"
    return None
