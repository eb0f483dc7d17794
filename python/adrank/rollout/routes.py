"""A model's route in the core (core.RolloutRoute: stable, canary and its share, shadow and its sample)
as the rest of the server builds, names and reports it. Routing itself is the core's (cpp/model_registry.h).

Shares travel in basis points of 10000 routing buckets: percentages in steps of 0.01.
"""

from __future__ import annotations

import adrank._core as core
from adrank.rollout.policy import CanaryPolicy, RolloutPolicy, ShadowPolicy
from adrank.rollout.summary import route_text

BASIS_POINTS_PER_PERCENT = 100


def core_route(stable: int, canary: CanaryPolicy | None, shadow: ShadowPolicy | None) -> core.RolloutRoute:
    return core.RolloutRoute(
        stable,
        canary.version if canary else 0,
        round(canary.percent * BASIS_POINTS_PER_PERCENT) if canary else 0,
        shadow.version if shadow else 0,
        round(shadow.sample_percent * BASIS_POINTS_PER_PERCENT) if shadow else 10000,
    )


def route_for(
    policy: RolloutPolicy, available: list[int], current: int | None, latest_serves: bool = False
) -> core.RolloutRoute:
    """The route a policy asks for among the AVAILABLE versions (ascending, at least one), `current` the stable
    version serving now (None: nothing serves yet).

    Stable is the policy's `stable` if loaded. Otherwise what serves now keeps serving: the policy's stable
    FAILED or is gone, or the policy names none and the model holds new versions back (config.yaml's
    `latest_serves: false`, the default: a new version takes no traffic until promoted). Otherwise, with
    nothing serving (start-up) or `latest_serves`, the newest. A canary or shadow only if loaded and not the
    stable version itself."""
    if policy.stable in available:
        stable = policy.stable
    elif current in available and (policy.stable is not None or not latest_serves):
        stable = current
    else:
        stable = available[-1]
    canary = policy.canary if policy.canary and policy.canary.version in available else None
    shadow = policy.shadow if policy.shadow and policy.shadow.version in available else None
    canary = None if canary is not None and canary.version == stable else canary
    shadow = None if shadow is not None and shadow.version == stable else shadow
    return core_route(stable, canary, shadow)


def same_route(a: core.RolloutRoute, b: core.RolloutRoute) -> bool:
    fields = ("stable", "canary", "canary_basis_points", "shadow", "shadow_basis_points")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def route_role(route: core.RolloutRoute, version: int, with_share: bool = False) -> str:
    """ "stable", "canary" (with its share: "canary 5 %"), "shadow", or "" for a version the route names not."""
    if version == route.stable:
        return "stable"
    if version == route.canary:
        return f"canary {route.canary_basis_points / BASIS_POINTS_PER_PERCENT:g} %" if with_share else "canary"
    if version == route.shadow:
        return "shadow"
    return ""


def describe_route(route: core.RolloutRoute) -> str:
    """One line for logs and errors: "stable 3, canary 4 at 5 %, shadow 5 (100 %)"."""
    return route_text(route_summary(route))


def route_summary(route: core.RolloutRoute) -> dict[str, float]:
    """The route as the admin API's describe reports it, shares in percent."""
    return {
        "stable": route.stable,
        "canary": route.canary,
        "canary_percent": route.canary_basis_points / BASIS_POINTS_PER_PERCENT,
        "shadow": route.shadow,
        "shadow_sample_percent": route.shadow_basis_points / BASIS_POINTS_PER_PERCENT,
    }
