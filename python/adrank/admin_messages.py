"""The admin API's Rollout message and RolloutPolicy, each made from the other: shared by the admin service
(server/admin_service.py) and its client (admin_client.py), so both read a rollout alike.

Contract: `policy_of(rollout_message(name, p)) == p` for every policy; `policy_of` validates as a rollout.yaml
is validated (a ValueError, pydantic's, names the field). `policy_fields(message)` is the same policy as
`policy_of(message).model_dump(mode="json")`, unvalidated: what a client shows of what the server validated.
Light on purpose: the client imports it, and the admin commands must start fast, so nothing here imports the
server, and pydantic (the policy's schemas: a third of `adrank models --server`'s start) only in `policy_of`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from adrank.v1 import admin_pb2 as pb

if TYPE_CHECKING:
    from adrank.rollout.policy import RolloutPolicy

# The guardrail settings, named alike in admin.proto's Guardrails and in GuardrailPolicy (a test holds
# the two to the same names).
GUARDRAIL_FIELDS = tuple(f.name for f in pb.Guardrails.DESCRIPTOR.fields)


def rollout_message(name: str, policy: RolloutPolicy, routed_stable: int = 0) -> pb.Rollout:
    g = policy.guardrails
    message = pb.Rollout(
        model=name,
        stable=policy.stable or 0,
        guardrails=pb.Guardrails(**{field: getattr(g, field) for field in GUARDRAIL_FIELDS}),
        routed_stable=routed_stable,
    )
    if policy.canary is not None:
        message.canary.CopyFrom(pb.Canary(version=policy.canary.version, percent=policy.canary.percent))
    if policy.shadow is not None:
        message.shadow.CopyFrom(pb.Shadow(version=policy.shadow.version, sample_percent=policy.shadow.sample_percent))
    return message


def policy_fields(message: pb.Rollout) -> dict[str, Any]:
    """The policy a Rollout message holds, in its JSON form (RolloutPolicy's fields), not validated."""
    fields: dict[str, Any] = {"stable": message.stable or None, "canary": None, "shadow": None}
    if message.HasField("canary"):
        fields["canary"] = {"version": message.canary.version, "percent": message.canary.percent}
    if message.HasField("shadow"):
        fields["shadow"] = {"version": message.shadow.version, "sample_percent": message.shadow.sample_percent}
    if message.HasField("guardrails"):
        fields["guardrails"] = {field: getattr(message.guardrails, field) for field in GUARDRAIL_FIELDS}
    return fields


def policy_of(message: pb.Rollout) -> RolloutPolicy:
    """The policy a Rollout message asks for; ValueError (pydantic's) names the field."""
    from adrank.rollout.policy import RolloutPolicy

    return RolloutPolicy.model_validate(policy_fields(message))  # absent guardrails: the defaults
