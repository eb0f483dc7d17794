"""The rollout changes an engineer asks for, as pure functions from one RolloutPolicy to the next — the
same rules whether the change goes through a server's admin API or straight to a repository's
rollout.yaml:

- canary V P: V takes P % of the routing keys (P = 0 ends the canary); V must not be stable.
- shadow V [S]: V is mirrored S % of the requests (it replaces any shadow); V must not be stable.
  Both pin stable to the version serving now when the policy left it to "the latest": a canary is
  compared with a fixed stable, and publishing it must not make it stable behind the canary's back.
- promote V: V becomes stable; a canary or shadow of V ends (it is now what they were compared with).
- rollback: ends the canary and the shadow; with neither, stable returns to the version the last
  promotion replaced (from the audit log), and a model that was never promoted has nothing to roll back.

Each returns the new policy and the audit action; ChangeError says why a change cannot be made.
"""

from __future__ import annotations

from adrank.rollout.audit import AuditEntry
from adrank.rollout.policy import PolicyError, RolloutPolicy, parse_policy


class ChangeError(ValueError):
    """A change that cannot be made to the current policy."""


def set_canary(
    policy: RolloutPolicy, version: int, percent: float, stable_now: int | None
) -> tuple[RolloutPolicy, str]:
    if percent == 0:
        return policy.model_copy(update={"canary": None}), "canary"
    stable = _pinned_stable(policy, version, stable_now, "canary")
    return _validated(policy, stable=stable, canary={"version": version, "percent": percent}), "canary"


def set_shadow(
    policy: RolloutPolicy, version: int | None, sample_percent: float, stable_now: int | None
) -> tuple[RolloutPolicy, str]:
    if version is None:
        return policy.model_copy(update={"shadow": None}), "shadow"
    stable = _pinned_stable(policy, version, stable_now, "shadow")
    return _validated(policy, stable=stable, shadow={"version": version, "sample_percent": sample_percent}), "shadow"


def _pinned_stable(policy: RolloutPolicy, version: int, stable_now: int | None, role: str) -> int | None:
    stable = policy.stable if policy.stable is not None else stable_now
    if version == stable:
        raise ChangeError(f"version {version} is the stable version: a {role} must be another version")
    return stable


def promote(policy: RolloutPolicy, version: int) -> tuple[RolloutPolicy, str]:
    update: dict[str, object] = {"stable": version}
    if policy.canary is not None and policy.canary.version == version:
        update["canary"] = None
    if policy.shadow is not None and policy.shadow.version == version:
        update["shadow"] = None
    return _validated(policy, **update), "promote"


def rollback(policy: RolloutPolicy, history: list[AuditEntry]) -> tuple[RolloutPolicy, str]:
    if policy.canary is not None or policy.shadow is not None:
        return policy.model_copy(update={"canary": None, "shadow": None}), "rollback"
    for entry in reversed(history):
        if entry.action == "promote" and entry.after and entry.after.get("stable") == policy.stable:
            previous = (entry.before or {}).get("stable")
            return _validated(policy, stable=previous), "rollback"
    if policy.stable is None:
        raise ChangeError("nothing to roll back: no canary or shadow, and rollout.yaml names no stable version")
    raise ChangeError(f"nothing to roll back: no canary or shadow, and stable {policy.stable} was not promoted")


def _validated(policy: RolloutPolicy, **update: object) -> RolloutPolicy:
    # model_copy skips validation; a new policy must pass the same checks as a file, and its error is one
    # line naming the field (parse_policy's), never pydantic's multi-line dump: it reaches a caller as is.
    try:
        return parse_policy({**policy.model_dump(), **update}, "rollout")
    except PolicyError as error:
        raise ChangeError(str(error)) from error
