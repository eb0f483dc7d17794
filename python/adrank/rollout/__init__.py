"""Safe rollout: the rollout policy of a model (stable, canary, shadow), the guardrails that compare a
candidate with stable and roll it back, and the audit log of every change (DESIGN.md, Rollout).

The names below are resolved on first use (PEP 562 `__getattr__`): importing a light module of this package
(audit, summary, target_error: what the admin client needs) must not load the policy's pydantic schemas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from adrank.lazy_names import lazy_names

if TYPE_CHECKING:
    from adrank.rollout.audit import AuditEntry, AuditLog
    from adrank.rollout.audit_location import AuditLocation
    from adrank.rollout.policy import (
        CanaryPolicy,
        GuardrailPolicy,
        PolicyError,
        RolloutPolicy,
        ShadowPolicy,
        load_policy,
        save_policy,
    )

# Each public name and the module that defines it.
_HOMES = {
    "AuditEntry": "adrank.rollout.audit",
    "AuditLog": "adrank.rollout.audit",
    "AuditLocation": "adrank.rollout.audit_location",
    **dict.fromkeys(
        (
            "CanaryPolicy",
            "GuardrailPolicy",
            "PolicyError",
            "RolloutPolicy",
            "ShadowPolicy",
            "load_policy",
            "save_policy",
        ),
        "adrank.rollout.policy",
    ),
}

__all__ = [
    "AuditEntry",
    "AuditLocation",
    "AuditLog",
    "CanaryPolicy",
    "GuardrailPolicy",
    "PolicyError",
    "RolloutPolicy",
    "ShadowPolicy",
    "load_policy",
    "save_policy",
]


__getattr__ = lazy_names(__name__, _HOMES)
