"""A rollout policy in one line, `stable 3, canary 4 at 5 %, shadow 5 (100 % mirrored)`, from its JSON form
(RolloutPolicy.model_dump(mode="json"), the shape rollout.yaml, the audit log and the admin client carry).

`route_change_summary` does the same for an audit entry's route change ({"before", "after"}, each a route as
routes.py's route_summary makes it, or None): `stable 2 -> stable 3, canary 4 at 5 %`.

Contract: `summary(policy.model_dump(mode="json")) == policy.summary()` for every RolloutPolicy. Plain
dictionaries and no pydantic, so that `adrank models --server` shows a server's rollout without loading the
policy's schemas (the server has validated it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def summary(policy: Mapping[str, Any]) -> str:
    stable = policy.get("stable")
    # Not "latest": without a stable named, servers keep the version serving now (routes.py: route_for) unless
    # the model's config.yaml says latest_serves; which one serves is each server's route, not the policy's.
    parts = [f"stable {stable if stable is not None else 'not named'}"]
    canary, shadow = policy.get("canary"), policy.get("shadow")
    if canary is not None:
        parts.append(f"canary {canary['version']} at {canary['percent']:g} %")
    if shadow is not None:
        parts.append(f"shadow {shadow['version']} ({shadow['sample_percent']:g} % mirrored)")
    return ", ".join(parts)


def route_change_summary(change: Mapping[str, Any]) -> str:
    return f"{route_text(change.get('before'))} -> {route_text(change.get('after'))}"


def route_text(route: Mapping[str, Any] | None) -> str:
    """A route as route_summary gives it, in one line: "stable 3, canary 4 at 5 %, shadow 5 (100 %)"."""
    if not route or not route.get("stable"):
        return "nothing"
    parts = [f"stable {route['stable']}"]
    if route.get("canary"):
        parts.append(f"canary {route['canary']} at {route['canary_percent']:g} %")
    if route.get("shadow"):
        parts.append(f"shadow {route['shadow']} ({route['shadow_sample_percent']:g} %)")
    return ", ".join(parts)
